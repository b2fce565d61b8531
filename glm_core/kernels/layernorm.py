"""Fused dropout + residual add + LayerNorm (spec fused_ops §5.1 op 1), Triton forward/backward and torch reference.

    new_residual = (residual if given else 0) + dropout(x)       # dropout only when training and dropout_p > 0
    y            = LayerNorm(new_residual) * weight + bias         # eps 1e-5 in every GLM (glm_reference §1.5)

With ``residual=None`` and no dropout this is a plain LayerNorm and ``new_residual`` is ``x`` itself.

Triton path (``impl="triton"``):
- forward: one program per row, the whole row in registers (``BLOCK_N`` = next power of two >= hidden, masked),
  fp32 statistics; ``new_residual`` is rounded to its storage dtype *before* normalising, so the stored tensor is
  exactly what was normalised (eager semantics, and backward can reuse it).
- dropout: keep(element) = ``tl.rand(seed, row * N + col) >= p`` (Philox, element index as offset), regenerated
  in backward from the same seed — no mask is stored. :func:`dropout_keep_mask` returns the mask a given seed
  produces, so the torch reference can be run with the kernel's own mask (spec §5.3).
- backward: each program walks a contiguous block of rows, writes dx / dresidual per row and accumulates its dW/dB
  partial sums in fp32 registers; the per-program partials are then summed in fp32 (two-stage reduction, spec §6
  item 8) and cast to the parameter dtype.

The torch reference (``impl="torch"``) is plain eager ops in the input dtype; with float64 inputs it is the test
oracle. It accepts an explicit ``dropout_mask``; without one it draws its own (torch RNG, seeded by ``seed``).
"""

import math

import torch
import torch.nn.functional as F

from glm_core.errors import InputError
from glm_core.kernels import resolve_impl
from glm_core.kernels.interpreter import round_bf16_in_interpreter

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch reference still works; resolve_impl refuses "triton"
    triton = None
    tl = None
else:
    from glm_core.kernels.interpreter import rne_bf16

OP_NAME = "add_dropout_layernorm"
MAX_FUSED_HIDDEN = 16384  # one row must fit in registers: BLOCK_N = next_power_of_2(hidden) <= this


def add_dropout_layernorm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
    dropout_p: float = 0.0,
    training: bool = False,
    seed: int | None = None,
    impl: str = "auto",
    dropout_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(y, new_residual)`` with ``new_residual = residual + dropout(x)`` and ``y = LayerNorm(new_residual)``.

    ``x``, ``residual``: ``[..., hidden]``; ``weight``, ``bias``: ``[hidden]``. Dropout runs only when ``training``
    and ``dropout_p > 0``. ``seed`` fixes the dropout mask (Triton: Philox seed; torch: generator seed); ``None``
    draws one from torch's default generator. ``dropout_mask`` (bool, shape of ``x``, True = keep) is honoured by the
    torch reference only. ``impl``: "auto" | "triton" | "torch" (see :func:`glm_core.kernels.resolve_impl`).
    Outputs have dtype ``promote_types(x.dtype, residual.dtype)``.
    """
    _check_inputs(x, residual, weight, bias, dropout_p, dropout_mask)
    hidden = x.shape[-1]
    supported, reason = True, ""
    if hidden > MAX_FUSED_HIDDEN:
        supported, reason = False, f"hidden size {hidden} > {MAX_FUSED_HIDDEN} does not fit one row in registers"
    elif dropout_mask is not None:
        supported, reason = False, "an explicit dropout_mask is only honoured by the torch reference"
    which = resolve_impl(impl, x.device, x.dtype, OP_NAME, supported=supported, reason=reason)
    if which == "torch":
        return add_dropout_layernorm_torch(
            x, residual, weight, bias, eps, dropout_p, training, seed, dropout_mask=dropout_mask
        )
    return add_dropout_layernorm_triton(x, residual, weight, bias, eps, dropout_p, training, seed)


def add_dropout_layernorm_torch(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
    dropout_p: float = 0.0,
    training: bool = False,
    seed: int | None = None,
    dropout_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager reference of :func:`add_dropout_layernorm` in the inputs' dtype (float64 inputs -> the test oracle)."""
    dropped = x
    if training and dropout_p > 0.0:
        if dropout_mask is None:
            generator = None
            if seed is not None:
                generator = torch.Generator(device=x.device)
                generator.manual_seed(seed)
            dropout_mask = torch.rand(x.shape, generator=generator, device=x.device) >= dropout_p
        dropped = x * dropout_mask.to(x.dtype) * (1.0 / (1.0 - dropout_p))
    new_residual = dropped if residual is None else residual + dropped
    y = F.layer_norm(new_residual, (x.shape[-1],), weight.to(new_residual.dtype), bias.to(new_residual.dtype), eps)
    return y, new_residual


def add_dropout_layernorm_triton(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
    dropout_p: float = 0.0,
    training: bool = False,
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton path of :func:`add_dropout_layernorm` without dispatch checks (callers use the public function)."""
    p = float(dropout_p) if training else 0.0
    if p > 0.0 and seed is None:
        seed = _draw_seed()
    y, new_residual = _AddDropoutLayerNorm.apply(x, residual, weight, bias, float(eps), p, int(seed or 0))
    if new_residual is None:  # no residual, no dropout: new_residual is x itself (plain LayerNorm)
        new_residual = x
    return y, new_residual


def dropout_keep_mask(shape: torch.Size | tuple[int, ...], dropout_p: float, seed: int, device: torch.device | str):
    """The bool keep-mask (True = kept) the Triton kernel uses for an input of ``shape`` with this ``seed``.

    Same Philox stream as :func:`add_dropout_layernorm` with ``impl="triton"`` (element offset = flat index).
    """
    if triton is None:
        raise ImportError("dropout_keep_mask needs triton")
    shape = tuple(shape)
    hidden = shape[-1]
    rows = math.prod(shape[:-1])
    keep = torch.empty((rows, hidden), dtype=torch.int8, device=device)
    block_n = triton.next_power_of_2(hidden)
    _dropout_keep_kernel[(rows,)](keep, hidden, float(dropout_p), int(seed), BLOCK_N=block_n)
    return keep.view(shape).bool()


# --------------------------------------------------------------------------------------------------------------------
# checks and launch helpers


def _check_inputs(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    dropout_p: float,
    dropout_mask: torch.Tensor | None,
) -> None:
    hidden = x.shape[-1]
    if residual is not None and residual.shape != x.shape:
        raise InputError(f"residual shape {tuple(residual.shape)} must equal x shape {tuple(x.shape)}")
    if weight.shape != (hidden,) or bias.shape != (hidden,):
        raise InputError(
            f"weight and bias must have shape ({hidden},), got {tuple(weight.shape)} and {tuple(bias.shape)}"
        )
    if not 0.0 <= dropout_p < 1.0:
        raise InputError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if dropout_mask is not None and dropout_mask.shape != x.shape:
        raise InputError(f"dropout_mask shape {tuple(dropout_mask.shape)} must equal x shape {tuple(x.shape)}")


def _draw_seed() -> int:
    # from torch's CPU generator, so torch.manual_seed makes runs reproducible; no device sync
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def _num_warps(block_n: int) -> int:
    return min(max(block_n // 256, 1), 16)


def _rows_per_program(rows: int, device: torch.device) -> int:
    """Rows each backward program walks (and sums dW/dB partials over); a power of two.

    It is a constexpr loop bound: triton 3.6's interpreter with numpy >= 2.4 crashes on *any* runtime loop bound,
    kernel int arguments included (spec §6 item 3 names loaded scalars; measured: int arguments too). Powers of
    two keep the number of compiled variants small (<= log2(rows)).
    """
    if device.type == "cuda":
        programs = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        programs = 8  # interpreter: per-program cost dominates, keep the grid tiny
    return triton.next_power_of_2(triton.cdiv(rows, programs))


class _AddDropoutLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps, p, seed):
        hidden = x.shape[-1]
        out_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
        x2 = x.reshape(-1, hidden).contiguous()  # [M, N]
        r2 = None if residual is None else residual.reshape(-1, hidden).contiguous()
        rows = x2.shape[0]
        store_s = residual is not None or p > 0.0 or out_dtype != x.dtype
        y = torch.empty((rows, hidden), dtype=out_dtype, device=x.device)
        s = torch.empty((rows, hidden), dtype=out_dtype, device=x.device) if store_s else x2
        mean = torch.empty(rows, dtype=torch.float32, device=x.device)
        rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
        block_n = triton.next_power_of_2(hidden)
        _ln_fwd_kernel[(rows,)](
            x2, r2 if r2 is not None else x2, weight, bias, y, s, mean, rstd,
            hidden, eps, p, seed,
            HAS_RESIDUAL=r2 is not None, HAS_DROPOUT=p > 0.0, STORE_S=store_s,
            ROUND_BF16=round_bf16_in_interpreter(out_dtype),
            BLOCK_N=block_n, num_warps=_num_warps(block_n),
        )  # fmt: skip
        ctx.save_for_backward(s, weight, mean, rstd)
        ctx.has_residual = residual is not None
        ctx.residual_dtype = None if residual is None else residual.dtype
        ctx.p, ctx.seed, ctx.x_dtype, ctx.x_shape = p, seed, x.dtype, x.shape
        ctx.set_materialize_grads(False)
        y = y.view(x.shape)
        return y, (s.view(x.shape) if store_s else None)

    @staticmethod
    def backward(ctx, dy, ds_out):
        s, weight, mean, rstd = ctx.saved_tensors
        rows, hidden = s.shape
        device = s.device
        if dy is None:
            dy = torch.zeros((rows, hidden), dtype=s.dtype, device=device)
        dy = dy.reshape(rows, hidden).contiguous()
        ds_out = None if ds_out is None else ds_out.reshape(rows, hidden).contiguous()
        dx = torch.empty((rows, hidden), dtype=ctx.x_dtype, device=device)
        dres = torch.empty((rows, hidden), dtype=ctx.residual_dtype, device=device) if ctx.has_residual else None
        rows_per_program = _rows_per_program(rows, device)
        programs = triton.cdiv(rows, rows_per_program)
        dw_partial = torch.empty((programs, hidden), dtype=torch.float32, device=device)
        db_partial = torch.empty((programs, hidden), dtype=torch.float32, device=device)
        block_n = triton.next_power_of_2(hidden)
        _ln_bwd_kernel[(programs,)](
            dy, ds_out if ds_out is not None else dy, s, weight, mean, rstd,
            dx, dres if dres is not None else dx, dw_partial, db_partial,
            rows, hidden, ctx.p, ctx.seed,
            ROWS_PER_PROGRAM=rows_per_program,
            HAS_DS_OUT=ds_out is not None, HAS_RESIDUAL=ctx.has_residual, HAS_DROPOUT=ctx.p > 0.0,
            ROUND_BF16_DX=round_bf16_in_interpreter(dx.dtype),
            ROUND_BF16_DRES=dres is not None and round_bf16_in_interpreter(dres.dtype),
            BLOCK_N=block_n, num_warps=_num_warps(block_n),
        )  # fmt: skip
        # stage 2 of the fp32 reduction: sum the per-program partials, then cast (spec §6 item 8)
        dweight = dw_partial.sum(dim=0).to(weight.dtype)
        dbias = db_partial.sum(dim=0).to(weight.dtype)
        dx = dx.view(ctx.x_shape)
        dres = None if dres is None else dres.view(ctx.x_shape)
        return dx, dres, dweight, dbias, None, None, None


# --------------------------------------------------------------------------------------------------------------------
# Triton kernels (Triton 3.6 subset; only constexpr loop bounds, spec §6 item 3)

if triton is not None:

    @triton.jit
    def _dropout_keep(seed, row, cols, hidden, p):
        """Philox keep-mask for one row; offset = flat element index (int64), so it is independent of BLOCK_N."""
        offsets = row * hidden + cols
        return tl.rand(seed, offsets) >= p

    @triton.jit
    def _dropout_keep_kernel(KEEP, hidden, p, seed, BLOCK_N: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_N)
        keep = _dropout_keep(seed, row, cols, hidden, p)
        tl.store(KEEP + row * hidden + cols, keep.to(tl.int8), mask=cols < hidden)

    @triton.jit
    def _ln_fwd_kernel(
        X, R, W, B, Y, S, MEAN, RSTD,
        hidden, eps, p, seed,
        HAS_RESIDUAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, STORE_S: tl.constexpr, ROUND_BF16: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_N)
        in_row = cols < hidden
        offs = row * hidden + cols
        s = tl.load(X + offs, mask=in_row, other=0.0).to(tl.float32)
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, row, cols, hidden, p)
            s = tl.where(keep, s * (1.0 / (1.0 - p)), 0.0)
        if HAS_RESIDUAL:
            s += tl.load(R + offs, mask=in_row, other=0.0).to(tl.float32)
        if STORE_S:
            if ROUND_BF16:
                s = rne_bf16(s)
            s_stored = s.to(S.dtype.element_ty)
            tl.store(S + offs, s_stored, mask=in_row)
            s = s_stored.to(tl.float32)  # normalise exactly what was stored
        mean = tl.sum(s, axis=0) / hidden
        centered = tl.where(in_row, s - mean, 0.0)
        var = tl.sum(centered * centered, axis=0) / hidden
        rstd = 1.0 / tl.sqrt(var + eps)
        w = tl.load(W + cols, mask=in_row, other=0.0).to(tl.float32)
        b = tl.load(B + cols, mask=in_row, other=0.0).to(tl.float32)
        y = centered * rstd * w + b
        if ROUND_BF16:
            y = rne_bf16(y)
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=in_row)
        tl.store(MEAN + row, mean)
        tl.store(RSTD + row, rstd)

    @triton.jit
    def _ln_bwd_kernel(
        DY, DS_OUT, S, W, MEAN, RSTD, DX, DRES, DW_PARTIAL, DB_PARTIAL,
        rows, hidden, p, seed,
        ROWS_PER_PROGRAM: tl.constexpr,
        HAS_DS_OUT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_DROPOUT: tl.constexpr,
        ROUND_BF16_DX: tl.constexpr, ROUND_BF16_DRES: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_N)
        w = tl.load(W + cols, mask=cols < hidden, other=0.0).to(tl.float32)
        dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for i in range(0, ROWS_PER_PROGRAM):  # constexpr bound: see _rows_per_program
            row = pid * ROWS_PER_PROGRAM + i
            n_valid = tl.where(row < rows, hidden, 0)  # rows past the end: everything masked off
            in_row = cols < n_valid
            offs = row * hidden + cols
            mean = tl.load(MEAN + row, mask=row < rows, other=0.0)
            rstd = tl.load(RSTD + row, mask=row < rows, other=0.0)
            s = tl.load(S + offs, mask=in_row, other=0.0).to(tl.float32)
            dy = tl.load(DY + offs, mask=in_row, other=0.0).to(tl.float32)
            xhat = tl.where(in_row, (s - mean) * rstd, 0.0)
            g = dy * w
            mean_g = tl.sum(g, axis=0) / hidden
            mean_g_xhat = tl.sum(g * xhat, axis=0) / hidden
            ds = (g - mean_g - xhat * mean_g_xhat) * rstd
            if HAS_DS_OUT:
                ds += tl.load(DS_OUT + offs, mask=in_row, other=0.0).to(tl.float32)
            if HAS_RESIDUAL:
                dres = ds
                if ROUND_BF16_DRES:
                    dres = rne_bf16(dres)
                tl.store(DRES + offs, dres.to(DRES.dtype.element_ty), mask=in_row)
            dx = ds
            if HAS_DROPOUT:
                keep = _dropout_keep(seed, row, cols, hidden, p)  # same stream as forward
                dx = tl.where(keep, ds * (1.0 / (1.0 - p)), 0.0)
            if ROUND_BF16_DX:
                dx = rne_bf16(dx)
            tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=in_row)
            dw_acc += dy * xhat
            db_acc += dy
        tl.store(DW_PARTIAL + pid * hidden + cols, dw_acc, mask=cols < hidden)
        tl.store(DB_PARTIAL + pid * hidden + cols, db_acc, mask=cols < hidden)
