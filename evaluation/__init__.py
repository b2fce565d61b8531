"""GLM evaluation harness: backends (torch / ONNX Runtime) behind the step contract, a numpy scoring engine,
the paper's tasks and metrics, and the ``python -m evaluation`` command line. Imports no torch."""

from evaluation.backends import load_backend

__all__ = ["load_backend"]
