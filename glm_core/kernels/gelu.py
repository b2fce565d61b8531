"""Fused bias + GeLU, the fc1 epilogue of GLM's MLP (spec fused_ops §5.1 op 2), Triton forward/backward and reference.

    y = gelu(x + bias)
    tanh (GLM as trained, glm_reference §1.4): 0.5 z (1 + tanh(0.7978845608028654 z (1 + 0.044715 z^2)))
    erf  (HF remote code):                      0.5 z (1 + erf(z / sqrt(2)))

Triton path (``impl="triton"``): the input is viewed as ``[rows, N]`` with ``N = bias.numel()``.
- forward: one ``[BLOCK_M, BLOCK_N]`` tile per program, math in fp32, one rounding to the output dtype
  (eager rounds ``x + bias`` first, so the kernel is at least as close to float64).
- backward: recomputes ``z = x + bias`` from the saved inputs; each program walks ``TILES_PER_PROGRAM`` row tiles
  of one column block (launch shapes in ``launch.py``), writes dx and accumulates its dbias partial in fp32; the
  partials are summed in fp32 and cast (two-stage reduction, spec §6 item 8).
- tanh is written through ``0.5 (1 + tanh(u)) = sigmoid(2u)``: no libdevice call (same code on GPU and in the
  interpreter), no cancellation in ``1 - tanh^2`` near saturation, no overflow (u clamped to +-40).

The torch reference (``impl="torch"``) is ``F.gelu(x + bias, approximate=...)`` in the input dtype — the eager peer
of the benchmark.
"""

import torch
import torch.nn.functional as F

from glm_core.config import GELU_VARIANTS
from glm_core.errors import InputError
from glm_core.kernels import launch, resolve_impl
from glm_core.kernels.interpreter import round_bf16_in_interpreter

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch reference still works; resolve_impl refuses "triton"
    triton = None
    tl = None
else:
    from glm_core.kernels.interpreter import rne_bf16

OP_NAME = "bias_gelu"


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: str = "tanh", impl: str = "auto") -> torch.Tensor:
    """Return ``gelu(x + bias)``; ``x``: ``[..., N]``, ``bias``: ``[N]``; ``approximate``: "tanh" (GLM) or "erf".

    ``impl``: "auto" | "triton" | "torch" (see :func:`glm_core.kernels.resolve_impl`).
    """
    _check_inputs(x, bias, approximate)
    which = resolve_impl(impl, x.device, x.dtype, OP_NAME)
    if which == "torch":
        return bias_gelu_torch(x, bias, approximate)
    return bias_gelu_fwd(x, bias, approximate == "tanh")


def bias_gelu_torch(x: torch.Tensor, bias: torch.Tensor, approximate: str = "tanh") -> torch.Tensor:
    """Eager reference of :func:`bias_gelu` in the inputs' dtype."""
    return F.gelu(x + bias, approximate="tanh" if approximate == "tanh" else "none")


def _check_inputs(x: torch.Tensor, bias: torch.Tensor, approximate: str) -> None:
    if approximate not in GELU_VARIANTS:
        raise InputError(f"approximate must be one of {GELU_VARIANTS}, got {approximate!r}")
    if bias.dim() != 1 or x.dim() == 0 or x.shape[-1] != bias.shape[0]:
        raise InputError(f"bias must have shape (x.shape[-1],) = ({x.shape[-1] if x.dim() else '?'},), "
                         f"got {tuple(bias.shape)}")  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# launch helpers


def _tiles(cols: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) for a ``cols``-wide matrix (launch.py)."""
    block_n = min(triton.next_power_of_2(cols), launch.MAX_BLOCK_N)
    return launch.block_rows(block_n), block_n


# The kernels are registered as torch custom ops (glm_core.kernels.ops): opaque nodes that torch.compile keeps in its
# graph, each with a fake (shape-only) implementation for tracing and the backward op as its autograd formula.
@torch.library.custom_op("glm::bias_gelu_fwd", mutates_args=())
def bias_gelu_fwd(x: torch.Tensor, bias: torch.Tensor, approx_tanh: bool) -> torch.Tensor:
    """``gelu(x + bias)`` by the Triton forward kernel; ``x`` viewed as ``[rows, bias.numel()]``."""
    cols = bias.shape[0]
    x2 = x.reshape(-1, cols).contiguous()  # [M, N]
    rows = x2.shape[0]
    y = torch.empty_like(x2)
    block_m, block_n = _tiles(cols)
    grid = (triton.cdiv(rows, block_m), triton.cdiv(cols, block_n))
    _bias_gelu_fwd_kernel[grid](
        x2, bias, y, rows, cols,
        APPROX_TANH=approx_tanh, ROUND_BF16=round_bf16_in_interpreter(y.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=launch.num_warps(block_m, block_n),
    )  # fmt: skip
    return y.view(x.shape)


@bias_gelu_fwd.register_fake
def _bias_gelu_fwd_fake(x: torch.Tensor, bias: torch.Tensor, approx_tanh: bool) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("glm::bias_gelu_bwd", mutates_args=())
def bias_gelu_bwd(
    x: torch.Tensor, bias: torch.Tensor, dy: torch.Tensor, approx_tanh: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx, dbias)`` by the Triton backward kernel (recomputes ``z = x + bias``; two-stage fp32 dbias)."""
    cols = bias.shape[0]
    x2 = x.reshape(-1, cols).contiguous()
    rows = x2.shape[0]
    dy = dy.reshape(rows, cols).contiguous()
    dx = torch.empty_like(x2)
    block_m, block_n = _tiles(cols)
    row_tiles, col_blocks = triton.cdiv(rows, block_m), triton.cdiv(cols, block_n)
    tiles_per_program = launch.tiles_per_program(row_tiles, col_blocks, x2.device)
    row_groups = triton.cdiv(row_tiles, tiles_per_program)
    dbias_partial = torch.empty((row_groups, cols), dtype=torch.float32, device=x2.device)
    _bias_gelu_bwd_kernel[(row_groups, col_blocks)](
        x2, bias, dy, dx, dbias_partial, rows, cols,
        APPROX_TANH=approx_tanh, ROUND_BF16=round_bf16_in_interpreter(dx.dtype),
        TILES_PER_PROGRAM=tiles_per_program, BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=launch.num_warps(block_m, block_n),
    )  # fmt: skip
    # stage 2 of the fp32 reduction (spec §6 item 8)
    dbias = dbias_partial.sum(dim=0).to(bias.dtype)
    return dx.view(x.shape), dbias


@bias_gelu_bwd.register_fake
def _bias_gelu_bwd_fake(
    x: torch.Tensor, bias: torch.Tensor, dy: torch.Tensor, approx_tanh: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty_like(bias)


def _bias_gelu_setup(ctx, inputs, output) -> None:  # noqa: ANN001 - custom-op autograd protocol
    x, bias, approx_tanh = inputs
    ctx.save_for_backward(x, bias)
    ctx.approx_tanh = approx_tanh


def _bias_gelu_backward(ctx, dy):  # noqa: ANN001, ANN202 - custom-op autograd protocol
    x, bias = ctx.saved_tensors
    dx, dbias = bias_gelu_bwd(x, bias, dy, ctx.approx_tanh)
    return dx, dbias, None


bias_gelu_fwd.register_autograd(_bias_gelu_backward, setup_context=_bias_gelu_setup)


# --------------------------------------------------------------------------------------------------------------------
# Triton kernels (Triton 3.6 subset; only constexpr loop bounds)

if triton is not None:

    @triton.jit
    def _gelu_and_grad(z, APPROX_TANH: tl.constexpr, NEED_GRAD: tl.constexpr):
        """(gelu(z), d gelu / dz) in fp32; the grad is 0.0 when not NEED_GRAD."""
        if APPROX_TANH:  # glm_reference §1.4: 0.7978845608028654 = sqrt(2 / pi), cubic coefficient 0.044715
            z2 = z * z
            u = 0.7978845608028654 * z * (1.0 + 0.044715 * z2)
            # 0.5 (1 + tanh(u)) = sigmoid(2u) = s and 1 - tanh(u)^2 = 4 s (1 - s), written without the cancellation
            # of 1 -+ tanh near +-1; u clamped so exp() stays finite (sigmoid(+-80) is 1 / ~1e-35 in fp32)
            e = tl.exp(-2.0 * tl.minimum(tl.maximum(u, -40.0), 40.0))
            s = 1.0 / (1.0 + e)
            y = z * s
            grad = 0.0 * z
            if NEED_GRAD:
                du_dz = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * z2)
                grad = s + 2.0 * z * s * (e * s) * du_dz
        else:
            cdf = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476))  # Phi(z)
            y = z * cdf
            grad = 0.0 * z
            if NEED_GRAD:
                grad = cdf + z * tl.exp(-0.5 * z * z) * 0.3989422804014327  # Phi(z) + z phi(z)
        return y, grad

    @triton.jit
    def _bias_gelu_fwd_kernel(
        X, BIAS, Y, rows, cols,
        APPROX_TANH: tl.constexpr, ROUND_BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        row_ids = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
        col_ids = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        in_tile = (row_ids[:, None] < rows) & (col_ids[None, :] < cols)  # [BLOCK_M, BLOCK_N]
        offs = row_ids[:, None] * cols + col_ids[None, :]
        b = tl.load(BIAS + col_ids, mask=col_ids < cols, other=0.0).to(tl.float32)
        z = tl.load(X + offs, mask=in_tile, other=0.0).to(tl.float32) + b[None, :]
        y, _ = _gelu_and_grad(z, APPROX_TANH, False)
        if ROUND_BF16:
            y = rne_bf16(y)
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=in_tile)

    @triton.jit
    def _bias_gelu_bwd_kernel(
        X, BIAS, DY, DX, DBIAS_PARTIAL, rows, cols,
        APPROX_TANH: tl.constexpr, ROUND_BF16: tl.constexpr, TILES_PER_PROGRAM: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        group = tl.program_id(0).to(tl.int64)
        col_ids = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        b = tl.load(BIAS + col_ids, mask=col_ids < cols, other=0.0).to(tl.float32)
        dbias_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for i in range(0, TILES_PER_PROGRAM):
            row_ids = (group * TILES_PER_PROGRAM + i) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
            in_tile = (row_ids[:, None] < rows) & (col_ids[None, :] < cols)
            offs = row_ids[:, None] * cols + col_ids[None, :]
            z = tl.load(X + offs, mask=in_tile, other=0.0).to(tl.float32) + b[None, :]
            dy = tl.load(DY + offs, mask=in_tile, other=0.0).to(tl.float32)
            _, grad = _gelu_and_grad(z, APPROX_TANH, True)
            dz = tl.where(in_tile, dy * grad, 0.0)
            dbias_acc += tl.sum(dz, axis=0)
            if ROUND_BF16:
                dz = rne_bf16(dz)
            tl.store(DX + offs, dz.to(DX.dtype.element_ty), mask=in_tile)
        tl.store(DBIAS_PARTIAL + group * cols + col_ids, dbias_acc, mask=col_ids < cols)
