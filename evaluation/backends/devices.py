"""``--device`` values, checked before anything is loaded (torch-free unless the torch backend is asked for)."""

from __future__ import annotations

import re

from glm_core.errors import ConfigError

_DEVICE = re.compile(r"(cpu|cuda)(?::(\d+))?")


def parse_device(device: str) -> tuple[str, int | None]:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> ``(kind, index)``; anything else is one :class:`ConfigError`."""
    match = _DEVICE.fullmatch(str(device).strip().lower())
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise ConfigError(f"device {device!r} is not one this project runs on; expected cpu, cuda or cuda:N")
    return match.group(1), None if match.group(2) is None else int(match.group(2))


def check_device(backend: str, device: str) -> str:
    """Refuse a device this installation cannot use, before a model is loaded; return it normalised."""
    kind, index = parse_device(device)
    if kind == "cpu":
        return "cpu"
    if backend == "torch":
        import torch

        if not torch.cuda.is_available():
            build = "has no CUDA support" if torch.version.cuda is None else "sees no GPU"
            raise ConfigError(
                f"device {device!r} asked for, but this torch build ({torch.__version__}) {build}; use --device cpu"
            )
        count = torch.cuda.device_count()
        if index is not None and index >= count:
            raise ConfigError(
                f"device {device!r} asked for, but only {count} GPU(s) are visible (cuda:0..cuda:{count - 1})"
            )
    else:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(
                f"device {device!r} asked for, but this onnxruntime has no CUDAExecutionProvider "
                f"({', '.join(ort.get_available_providers())}); install glm-harness[onnx-gpu] or use --device cpu"
            )
    return kind if index is None else f"{kind}:{index}"
