"""Device names (``cpu``, ``cuda``, ``cuda:N``): the one parser, and the check that this installation can use one,
made before anything is loaded. Torch-free: torch (through the torch backend's module) or onnxruntime is imported only when CUDA is asked of it."""

from __future__ import annotations

import importlib
import re
from typing import Any

from glm_core.errors import ConfigError

_DEVICE = re.compile(r"(cpu|cuda)(?::(\d+))?")


def parse_device(device: str) -> tuple[str, int]:
    """``"cpu"`` -> ``("cpu", 0)``; ``"cuda"`` / ``"cuda:N"`` -> ``("cuda", N)`` (case and spaces ignored); anything
    else is one :class:`ConfigError`."""
    match = _DEVICE.fullmatch(str(device).strip().lower())
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise ConfigError(f"device {device!r} is not supported; expected 'cpu', 'cuda' or 'cuda:N'")
    return match.group(1), int(match.group(2) or 0)


def cuda_available(backend: str) -> bool:
    """Whether the ``backend`` (``"torch"`` or ``"onnx"``) of this installation can run on CUDA."""
    if backend == "torch":
        return bool(torch_module().cuda.is_available())
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def check_device(backend: str, device: str) -> str:
    """Refuse a device this installation cannot use, before a model is loaded; return it normalised."""
    kind, index = parse_device(device)
    if kind == "cpu":
        return "cpu"
    if backend == "torch":
        torch = torch_module()
        if not torch.cuda.is_available():
            build = "has no CUDA support" if torch.version.cuda is None else "sees no GPU"
            raise ConfigError(
                f"device {device!r} asked for, but this torch build ({torch.__version__}) {build}; use --device cpu"
            )
        count = torch.cuda.device_count()
        if index >= count:
            raise ConfigError(
                f"device {device!r} asked for, but only {count} GPU(s) are visible (cuda:0..cuda:{count - 1})"
            )
    elif not cuda_available(backend):
        import onnxruntime as ort

        raise ConfigError(
            f"device {device!r} asked for, but this onnxruntime has no CUDAExecutionProvider "
            f"({', '.join(ort.get_available_providers())}); install onnxruntime-gpu (pip install 'glm-harness[onnx-gpu]') or use --device cpu"
        )
    return str(device).strip().lower()


def torch_module() -> Any:
    """torch, as the torch backend imports it (only that backend brings torch into the evaluation package)."""
    return importlib.import_module("evaluation.backends.torch").torch
