"""GLM evaluation harness: backends (torch / ONNX Runtime) behind the step contract, a numpy scoring engine,
the paper's tasks and metrics, and the ``python -m evaluation`` command line. Imports no torch.

Kept import-light: the lm-eval bootstrap (a ``.pth`` file) imports this package at every interpreter start-up, so
``load_backend`` is resolved lazily.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_backend"]


def __getattr__(name: str) -> Any:
    if name == "load_backend":
        from evaluation.backends import load_backend

        return load_backend
    raise AttributeError(f"module 'evaluation' has no attribute {name!r}")
