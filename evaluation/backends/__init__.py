"""Evaluation backends: one object per model that serves the GLM step contract (DESIGN.md) plus its tokenizer.

    backend = load_backend("torch", "path/to/checkpoint")      # or load_backend("onnx", "path/to/export")
    logits, present = backend.step(input_ids, position_ids, sep, past)

Everything above (``evaluation.scoring``, ``glm_core.generation``, tasks, the lm-eval adapters) uses only the
:class:`EvalBackend` protocol below, in numpy, so a difference between backends can only come from the forward pass.
This module imports neither torch nor onnxruntime: each backend module is imported when it is asked for.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any, Protocol, runtime_checkable

import numpy as np

from evaluation.backends.info import backend_info
from glm_core.errors import ConfigError
from glm_core.hub import resolve_model_path
from glm_core.special_tokens import SpecialTokens
from glm_core.tokenizer import GLMTokenizer

_DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "None": "fp32"}
BACKENDS = {
    "torch": ("evaluation.backends.torch", "TorchBackend"),
    "onnx": ("evaluation.backends.onnx", "OnnxBackend"),
}


@runtime_checkable
class EvalBackend(Protocol):
    """What evaluation needs from a model. ``TorchBackend`` and ``OnnxBackend`` implement it.

    Attributes:
        name: ``"torch"`` or ``"onnx"``.
        tokenizer: the model directory's :class:`~glm_core.tokenizer.GLMTokenizer`.
        special: ``tokenizer.special`` (ids of sop, eop, [MASK], ...).
        max_length: longest sequence (Part A + Part B) the position tables allow (``max_sequence_length``).
        calls / tokens_seen: counters of ``step`` calls and of tokens that reached the model (``B * S`` summed),
            so tests can prove how much work a scoring strategy did.
    """

    name: str
    tokenizer: GLMTokenizer
    special: SpecialTokens
    max_length: int
    calls: int
    tokens_seen: int

    def step(
        self, input_ids: np.ndarray, position_ids: np.ndarray, sep: np.ndarray, past: Any
    ) -> tuple[np.ndarray, Any]:
        """``input_ids [B,S]``, ``position_ids [B,2,S]``, ``sep [B]`` (int64), ``past`` (None = empty)
        -> ``(logits [B,S,V] float32, present)``."""
        ...

    def reorder_past(self, past: Any, index: np.ndarray) -> Any:
        """Gather the cache along the batch axis (expanding one Part A over candidates, beam reordering)."""
        ...

    def past_length(self, past: Any) -> int: ...

    def info(self) -> dict[str, Any]:
        """``backend, model_path, model_hash, device, provider, dtype, versions`` (see ``backends.info``)."""
        ...


def load_backend(
    kind: str, path: str | os.PathLike[str], device: str = "cpu", dtype: str | None = None, **kwargs: Any
) -> EvalBackend:
    """Open the model at ``path`` with the ``kind`` backend (``"torch"`` or ``"onnx"``).

    ``device``: ``"cpu"`` or ``"cuda"`` / ``"cuda:N"``; ``dtype``: ``None`` (the backend's default, fp32 for torch,
    the exported precision for ONNX), ``"fp32"``, ``"fp16"``, ``"bf16"``. Extra keyword arguments go to the backend
    class (e.g. ``kernels=`` for torch, ``providers=`` for ONNX). Only the chosen backend's runtime is imported.
    """
    if kind not in BACKENDS:
        raise ConfigError(f"unknown backend {kind!r}; expected one of: {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == module_name:
            raise ConfigError(f"the {kind} backend ({module_name}) is not part of this installation") from None
        extra = "torch" if kind == "torch" else "onnx"
        raise ConfigError(
            f"the {kind} backend cannot be imported ({exc}); install it with: pip install 'glm-harness[{extra}]'"
        ) from None
    backend_cls = getattr(module, class_name)
    path = resolve_model_path(path)  # local path > preset > hub id owner/name[@revision] (glm_core.hub)
    params = inspect.signature(backend_cls).parameters
    if "device" in params:
        kwargs["device"] = device
    elif "providers" in params and "providers" not in kwargs:
        # ONNX Runtime names devices by execution provider (spec onnx_export §2): "cuda:N" -> CUDA on device N
        kwargs["providers"] = str(device)
    if "dtype" in params:
        kwargs["dtype"] = dtype
    backend = backend_cls(path, **kwargs)
    return _complete(backend, kind, path, device, dtype)


class _BackendView:
    """Supplies the :class:`EvalBackend` attributes a backend object does not define itself (name, special,
    max_length, info); everything else, counters included, is read from the wrapped backend."""

    def __init__(self, backend: Any, kind: str, path: str | os.PathLike[str], device: str, dtype: str | None) -> None:
        self._backend = backend
        self._kind = kind
        self._path = path
        self._device = device
        self._dtype = dtype
        self._info: dict[str, Any] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    @property
    def name(self) -> str:
        return getattr(self._backend, "name", self._kind)

    @property
    def special(self) -> SpecialTokens:
        return self._backend.tokenizer.special

    @property
    def max_length(self) -> int:
        for attr in ("max_length", "max_position"):
            if hasattr(self._backend, attr):
                return int(getattr(self._backend, attr))
        return int(self._backend.config["max_sequence_length"])

    def step(
        self, input_ids: np.ndarray, position_ids: np.ndarray, sep: np.ndarray, past: Any = None, **options: Any
    ) -> Any:
        return self._backend.step(input_ids, position_ids, sep, past, **options)

    def reorder_past(self, past: Any, index: np.ndarray) -> Any:
        return self._backend.reorder_past(past, index)

    def past_length(self, past: Any) -> int:
        return self._backend.past_length(past)

    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = _describe(self._backend, self._kind, self._path, self._device, self._dtype)
        return dict(self._info)


def _describe(backend: Any, kind: str, path: str | os.PathLike[str], device: str, dtype: str | None) -> dict[str, Any]:
    """``info()`` for a backend that has none: hash of the model directory, provider, dtype, versions."""
    if hasattr(backend, "info"):
        return dict(backend.info())
    providers = list(getattr(backend, "providers", []) or [])
    if getattr(backend, "device_type", None) is not None:  # the device the runtime reports, not the request
        device = "cpu" if backend.device_type == "cpu" else f"{backend.device_type}:{backend.device_id}"
    config = getattr(backend, "config", {})
    exported = config.get("dtype") or config.get("kv_dtype") if isinstance(config, dict) else None
    # the precision that ran: a backend that checks the request (ONNX: fixed at export) says so itself
    recorded = getattr(backend, "dtype", None) or dtype or exported
    return backend_info(
        backend=kind,
        path=path,
        device=device,
        provider=providers[0] if providers else kind,
        dtype=_DTYPE_ALIASES.get(str(recorded), str(recorded or "fp32")),
        packages=("onnxruntime", "onnx") if kind == "onnx" else ("torch",),
    )


def _complete(backend: Any, kind: str, path: str | os.PathLike[str], device: str, dtype: str | None) -> EvalBackend:
    needed = ("name", "special", "max_length", "info")
    if all(hasattr(type(backend), a) or a in getattr(backend, "__dict__", {}) for a in needed):
        return backend  # type: ignore[no-any-return]
    return _BackendView(backend, kind, path, device, dtype)  # type: ignore[return-value]


__all__ = ["BACKENDS", "EvalBackend", "load_backend"]
