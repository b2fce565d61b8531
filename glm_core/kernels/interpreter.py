"""What the fused kernels do differently when Triton interprets them on the CPU (``TRITON_INTERPRET=1``).

The interpreter converts fp32 -> bf16 by truncating the low 16 bits; the GPU rounds to nearest even. Kernels that
store bf16 round explicitly under a constexpr flag (``round_bf16_in_interpreter``), so an interpreted run has the
GPU's numerics and the CPU tests measure the kernel, not the interpreter (spec fused_ops §3.1 lists the
interpreter's other bf16 gaps: ``tl.dot`` and ``tl.sum`` on bf16 operands — upcast before either).

Importing this module does not fail without triton; :func:`rne_bf16` then does not exist.
"""

import torch

from glm_core.kernels import interpreter_enabled

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None
    tl = None


def round_bf16_in_interpreter(dtype: torch.dtype) -> bool:
    """True when a kernel storing ``dtype`` must round to nearest even itself (bf16 under the interpreter)."""
    return dtype == torch.bfloat16 and interpreter_enabled()


if triton is not None:

    @triton.jit
    def rne_bf16(x):
        """Round fp32 ``x`` to the nearest bf16 value (ties to even), returned as fp32: a later cast is exact."""
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
