"""Fused training kernels and the one place that decides whether a Triton kernel or plain torch runs.

Each op lives in its own module with a Triton forward + backward registered as torch custom ops
(``torch.library.custom_op`` named ``glm::<op>_fwd`` / ``glm::<op>_bwd``, each with a fake implementation, the
backward op registered as the forward's autograd formula: ``torch.compile`` keeps them as nodes of its graph instead
of breaking on them) and a plain-torch reference of the same signature (DESIGN.md, spec fused_ops §5.1):

- :func:`add_dropout_layernorm` (``layernorm.py``): ``r' = r + dropout(x)``, ``y = LayerNorm(r')``.
- :func:`bias_gelu` (``gelu.py``): ``gelu_tanh(x + b)``, the fc1 epilogue.
- :func:`partb_lm_head_ce` (``lm_head_ce.py``): LM head + cross-entropy on the Part-B rows only, chunked.
- :func:`glm_attention` (``attention.py``): prefix-LM attention with a per-sample ``sep``.

Every op takes ``impl`` in ``{"auto", "triton", "torch"}`` and asks :func:`resolve_impl` which one runs:
``"auto"`` picks Triton only on CUDA with a supported dtype and shape (and not listed in :data:`AUTO_DISABLED`),
``"triton"`` insists and raises :class:`~glm_core.errors.KernelUnavailableError` where it cannot run, ``"torch"``
always runs the reference. On a CPU-only machine Triton kernels run through the interpreter when
``TRITON_INTERPRET=1`` is set *before* the op modules are imported (spec §3.1, §6 item 2); ``"auto"`` never picks the
interpreter (it is ~1000x slower than eager).

Importing this package imports neither triton nor any kernel module: the ops are loaded on first attribute access.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import TYPE_CHECKING, Any

import torch

from glm_core.errors import ConfigError, KernelUnavailableError

if TYPE_CHECKING:  # for readers and type checkers only; runtime loading is lazy (see __getattr__)
    from glm_core.kernels.attention import glm_attention
    from glm_core.kernels.gelu import bias_gelu
    from glm_core.kernels.layernorm import add_dropout_layernorm
    from glm_core.kernels.lm_head_ce import partb_lm_head_ce

__all__ = [
    "AUTO_DISABLED",
    "IMPLS",
    "OPS",
    "SUPPORTED_DTYPES",
    "add_dropout_layernorm",
    "bias_gelu",
    "glm_attention",
    "interpreter_enabled",
    "partb_lm_head_ce",
    "resolve_impl",
    "triton_available",
]

IMPLS = ("auto", "triton", "torch")
OPS = ("add_dropout_layernorm", "bias_gelu", "partb_lm_head_ce", "glm_attention")
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# (op, dtype) -> why "auto" must not pick Triton for it, e.g. a GPU benchmark found it slower than torch or wrong.
# Only "auto" consults this table; an explicit impl="triton" still runs the kernel (benchmarks need that).
_LN_SLOWER = (
    "H200, bf16, 16384 rows: fwd+bwd slower than eager dropout + add + F.layer_norm (0.41x at N=1024, 0.66x at "
    "2048, 0.93x at 4096; plain LN 0.36x-0.74x), backward-bound; re-measure after tuning launch.py"
)
AUTO_DISABLED: dict[tuple[str, torch.dtype], str] = {
    ("add_dropout_layernorm", torch.bfloat16): _LN_SLOWER,
    ("add_dropout_layernorm", torch.float16): _LN_SLOWER,  # same kernel, same bytes per element
    ("add_dropout_layernorm", torch.float32): _LN_SLOWER,
}
_GELU_SLOWER = (
    "H200, bf16, [16384, 4096], python -m benchmarks.gpu_kernels --quick (do_bench medians): fwd+bwd slower, 0.729 ms vs 0.397 ms "
    "for F.gelu(x + b, approximate='tanh') (0.54x; fwd alone 2.5x faster, the dbias reduction dominates the backward)"
)
AUTO_DISABLED.update({("bias_gelu", dtype): _GELU_SLOWER for dtype in (torch.bfloat16, torch.float16, torch.float32)})

_LAZY_OPS = {
    "add_dropout_layernorm": "glm_core.kernels.layernorm",
    "bias_gelu": "glm_core.kernels.gelu",
    "partb_lm_head_ce": "glm_core.kernels.lm_head_ce",
    "glm_attention": "glm_core.kernels.attention",
}


def __getattr__(name: str) -> Any:
    """Load an op's module on first use, so ``import glm_core.kernels`` stays cheap and triton-free."""
    module_name = _LAZY_OPS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_OPS))


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET`` asks Triton to interpret kernels on the CPU (same spellings triton accepts)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on", "y")


def triton_available() -> bool:
    """True when triton imports and can run somewhere: a CUDA device, or the interpreter (``TRITON_INTERPRET=1``)."""
    return _triton_importable() and (torch.cuda.is_available() or interpreter_enabled())


def _why_triton_cannot_run(device: torch.device, dtype: torch.dtype, op: str, supported: bool, reason: str) -> str:
    """Empty string when a Triton kernel can run for these inputs, else the reason it cannot."""
    if not _triton_importable():
        return "triton is not installed (pip install triton)"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "the inputs are on a CUDA device but CUDA is not available"
    elif device.type == "cpu":
        if not interpreter_enabled():
            return (
                "the inputs are on the CPU and the Triton interpreter is off "
                "(set TRITON_INTERPRET=1 before importing glm_core.kernels ops, or move the inputs to CUDA)"
            )
    else:
        return f"device type {device.type!r} is not supported (expected 'cuda', or 'cpu' with TRITON_INTERPRET=1)"
    if dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
        return f"dtype {str(dtype).removeprefix('torch.')} is not supported (expected one of {names})"
    if not supported:
        return reason or "these inputs are not supported by the kernel"
    return ""


def resolve_impl(
    kernels: str,
    device: torch.device | str,
    dtype: torch.dtype,
    op: str,
    *,
    supported: bool = True,
    reason: str = "",
) -> str:
    """Return ``"triton"`` or ``"torch"``: which implementation of ``op`` runs for these inputs.

    ``kernels``: "auto" (Triton only on CUDA, supported dtype/shape, not in :data:`AUTO_DISABLED`, else torch),
    "triton" (raise :class:`KernelUnavailableError` if it cannot run), or "torch".
    ``supported`` / ``reason``: the op's own verdict on its inputs (shape, variant), e.g. ``supported=False,
    reason="approximate='none' has no Triton kernel"``.
    """
    if kernels not in IMPLS:
        raise ConfigError(f"kernels/impl must be one of {IMPLS}, got {kernels!r}")
    if op not in OPS:
        raise ConfigError(f"unknown fused op {op!r}; expected one of {OPS}")
    if kernels == "torch":
        return "torch"
    device = torch.device(device)
    why_not = _why_triton_cannot_run(device, dtype, op, supported, reason)
    if kernels == "triton":
        if why_not:
            raise KernelUnavailableError(f"{op}: the Triton kernel cannot run: {why_not}")
        return "triton"
    # "auto": never the interpreter (CPU), never a combination a GPU run found wanting.
    if why_not or device.type != "cuda" or (op, dtype) in AUTO_DISABLED:
        return "torch"
    return "triton"
