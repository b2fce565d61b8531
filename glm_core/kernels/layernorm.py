"""Fused dropout + residual add + LayerNorm (spec fused_ops §5.1 op 1), Triton forward/backward and torch reference.

    new_residual = (residual if given else 0) + dropout(x)       # dropout only when training and dropout_p > 0
    y            = LayerNorm(new_residual) * weight + bias         # eps 1e-5 in every GLM (glm_reference §1.5)

With ``residual=None`` and no dropout this is a plain LayerNorm and ``new_residual`` is ``x`` itself.

Triton path (``impl="triton"``):
- forward: each program normalises a ``[BLOCK_M, BLOCK_N]`` tile of whole rows (``BLOCK_N`` = next power of two
  >= hidden, masked; launch shapes in ``launch.py``), fp32 statistics; ``new_residual`` is rounded to its storage
  dtype *before* normalising, so the stored tensor is exactly what was normalised (eager semantics, and backward
  can reuse it).
- dropout: an element is kept when its uint32 Philox draw (seed, flat element index) is >= p * 2**32 — four
  elements per Philox call when hidden % 4 == 0 — and the mask is regenerated in backward from the same seed: no
  mask is stored. :func:`dropout_keep_mask` returns the mask a given seed produces, so the torch reference can be
  run with the kernel's own mask (spec §5.3).
- backward: each program walks ``TILES_PER_PROGRAM`` consecutive row tiles, writes dx / dresidual and accumulates
  its dW/dB partial sums in fp32 registers; the per-program partials are then summed in fp32 (two-stage
  reduction, spec §6 item 8) and cast to the parameter dtype.

The torch reference (``impl="torch"``) is plain eager ops in the input dtype; with float64 inputs it is the test
oracle. It accepts an explicit ``dropout_mask``; without one it draws its own (torch RNG, seeded by ``seed``).
"""

import math

import torch
import torch.nn.functional as F

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

OP_NAME = "add_dropout_layernorm"
MAX_FUSED_HIDDEN = 16384  # one row must fit in registers: BLOCK_N = next_power_of_2(hidden) <= this
# 4 dropout draws per Philox call when hidden % 4 == 0 (tl.join/tl.reshape); False: one call per element.
# The two settings give different (each self-consistent) masks.
PHILOX_4_DRAWS_PER_CALL = True


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
    if p > 0.0 and seed is None:  # the device's generator: no host sync, the same draw when recomputed
        seed_t = torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64, device=x.device)
    else:
        seed_t = torch.tensor([int(seed or 0)], dtype=torch.int64, device=x.device)
    y, new_residual, _, _ = layernorm_fwd(x, residual, weight, bias, float(eps), p, seed_t)
    if not _stores_s(x, residual, p):  # no residual, no dropout: new_residual is x itself (plain LayerNorm)
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
    _dropout_keep_kernel[(rows,)](
        keep, hidden, _drop_threshold(dropout_p), int(seed), VEC4=_vec4(hidden), BLOCK_N=block_n
    )
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


def _drop_threshold(p: float) -> int:
    """An element is dropped when its uint32 Philox draw is below this: P(drop) = threshold / 2**32 ~ p."""
    return min(int(p * 2**32), 2**32 - 1)


def _vec4(hidden: int) -> bool:
    return PHILOX_4_DRAWS_PER_CALL and hidden % 4 == 0


# The kernel as torch custom ops, kept whole by torch.compile (fake implementations give the shapes; the backward
# op is the forward op's autograd formula). The dropout seed is an int64 tensor [1] on the inputs' device, read by the
# kernels (see attention.py).
@torch.library.custom_op("glm::add_dropout_layernorm_fwd", mutates_args=())
def layernorm_fwd(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    p: float,
    seed: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, s, mean, rstd)``: ``s = residual + dropout(x)`` (an empty ``[0]`` when it is ``x`` itself: no residual,
    no dropout, no dtype change), ``mean``/``rstd`` fp32 per row for the backward."""
    hidden = x.shape[-1]
    out_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    x2 = x.reshape(-1, hidden).contiguous()  # [M, N]
    r2 = None if residual is None else residual.reshape(-1, hidden).contiguous()
    rows = x2.shape[0]
    store_s = _stores_s(x, residual, p)
    y = torch.empty((rows, hidden), dtype=out_dtype, device=x.device)
    s = torch.empty((rows, hidden), dtype=out_dtype, device=x.device) if store_s else x2
    mean = torch.empty(rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
    block_n = triton.next_power_of_2(hidden)  # whole rows: the statistics need every column
    block_m = launch.block_rows(block_n)
    _ln_fwd_kernel[(triton.cdiv(rows, block_m),)](
        x2, r2 if r2 is not None else x2, weight, bias, y, s, mean, rstd,
        rows, hidden, eps, p, _drop_threshold(p), seed.reshape(1),
        HAS_RESIDUAL=r2 is not None, HAS_DROPOUT=p > 0.0, VEC4=_vec4(hidden), STORE_S=store_s,
        ROUND_BF16=round_bf16_in_interpreter(out_dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=launch.num_warps(block_m, block_n),
    )  # fmt: skip
    return y.view(x.shape), (s.view(x.shape) if store_s else x.new_empty((0,))), mean, rstd


def _stores_s(x: torch.Tensor, residual: torch.Tensor | None, p: float) -> bool:
    """Whether the forward writes ``s``; otherwise ``s`` is ``x`` (plain LayerNorm) and is not returned."""
    return residual is not None or p > 0.0


@layernorm_fwd.register_fake
def _layernorm_fwd_fake(x, residual, weight, bias, eps, p, seed):  # noqa: ANN001, ANN202
    out_dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    rows = x.numel() // x.shape[-1]
    s_shape = tuple(x.shape) if _stores_s(x, residual, p) else (0,)
    stats = x.new_empty((rows,), dtype=torch.float32)
    return x.new_empty(x.shape, dtype=out_dtype), x.new_empty(s_shape, dtype=out_dtype), stats, stats.new_empty(rows)


@torch.library.custom_op("glm::add_dropout_layernorm_bwd", mutates_args=())
def layernorm_bwd(
    dy: torch.Tensor,
    ds_out: torch.Tensor | None,
    s: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    p: float,
    seed: torch.Tensor,
    has_residual: bool,
    x_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dresidual, dweight, dbias)``; ``dresidual`` is an empty ``[0]`` without a residual."""
    shape = s.shape
    hidden = shape[-1]
    s = s.reshape(-1, hidden)
    rows = s.shape[0]
    device = s.device
    dy = dy.reshape(rows, hidden).contiguous()
    ds_out = None if ds_out is None else ds_out.reshape(rows, hidden).contiguous()
    dx = torch.empty((rows, hidden), dtype=x_dtype, device=device)
    dres = torch.empty((rows, hidden), dtype=s.dtype, device=device) if has_residual else None
    block_n = triton.next_power_of_2(hidden)
    block_m = launch.block_rows(block_n)
    tiles_per_program = launch.tiles_per_program(triton.cdiv(rows, block_m), 1, device)
    programs = triton.cdiv(rows, block_m * tiles_per_program)
    partials = torch.empty((2, programs, hidden), dtype=torch.float32, device=device)  # dW, dB per program
    _ln_bwd_kernel[(programs,)](
        dy, ds_out if ds_out is not None else dy, s, weight, mean, rstd,
        dx, dres if dres is not None else dx, partials[0], partials[1],
        rows, hidden, p, _drop_threshold(p), seed.reshape(1),
        TILES_PER_PROGRAM=tiles_per_program,
        HAS_DS_OUT=ds_out is not None, HAS_RESIDUAL=has_residual,
        HAS_DROPOUT=p > 0.0, VEC4=_vec4(hidden),
        ROUND_BF16_DX=round_bf16_in_interpreter(dx.dtype),
        ROUND_BF16_DRES=dres is not None and round_bf16_in_interpreter(dres.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=launch.num_warps(block_m, block_n),
    )  # fmt: skip
    # stage 2 of the fp32 reduction: sum the per-program partials, then cast (spec §6 item 8)
    dweight, dbias = (partials[0].sum(dim=0).to(weight.dtype), partials[1].sum(dim=0).to(weight.dtype))
    dres_out = s.new_empty((0,)) if dres is None else dres.view(shape)
    return dx.view(shape), dres_out, dweight, dbias


@layernorm_bwd.register_fake
def _layernorm_bwd_fake(dy, ds_out, s, weight, mean, rstd, p, seed, has_residual, x_dtype):  # noqa: ANN001, ANN202
    dres = s.new_empty(s.shape) if has_residual else s.new_empty((0,))
    return s.new_empty(s.shape, dtype=x_dtype), dres, weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _layernorm_setup(ctx, inputs, output) -> None:  # noqa: ANN001 - custom-op autograd protocol
    x, residual, weight, bias, eps, p, seed = inputs
    _, s, mean, rstd = output
    store_s = _stores_s(x, residual, p)
    ctx.save_for_backward(s if store_s else x, weight, mean, rstd, seed)
    ctx.store_s, ctx.has_residual, ctx.p, ctx.x_dtype = store_s, residual is not None, p, x.dtype
    ctx.set_materialize_grads(False)


def _layernorm_backward(ctx, dy, ds_out, dmean, drstd):  # noqa: ANN001, ANN202 - custom-op autograd protocol
    s, weight, mean, rstd, seed = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(s)
    ds_out = ds_out if ctx.store_s else None  # without s the residual stream is x itself: autograd routes it
    dx, dres, dweight, dbias = layernorm_bwd(
        dy, ds_out, s, weight, mean, rstd, ctx.p, seed, ctx.has_residual, ctx.x_dtype
    )
    return dx, (dres if ctx.has_residual else None), dweight, dbias, None, None, None


layernorm_fwd.register_autograd(_layernorm_backward, setup_context=_layernorm_setup)


# --------------------------------------------------------------------------------------------------------------------
# Triton kernels (Triton 3.6 subset; only constexpr loop bounds, spec §6 item 3)

if triton is not None:

    @triton.jit
    def _dropout_keep(seed, drop_threshold, row_ids, hidden, VEC4: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr):  # fmt: skip
        """Keep-mask ``[BLOCK_M, BLOCK_N]`` for rows ``row_ids`` and columns ``0..BLOCK_N-1``; depends only on
        (seed, flat element index), never on the tiling.

        Element ``e = row * hidden + col`` is dropped when its uint32 Philox draw is below ``drop_threshold``. With
        ``VEC4`` (hidden % 4 == 0) one Philox call (counter ``e // 4``) yields the draws of 4 consecutive elements
        (output ``e % 4``) — a quarter of the Philox work; otherwise counter ``e``, first output.
        """
        if VEC4:
            quarter = tl.arange(0, BLOCK_N // 4)
            counters = row_ids[:, None] * (hidden // 4) + quarter[None, :]  # [BLOCK_M, BLOCK_N // 4], int64
            r0, r1, r2, r3 = tl.randint4x(seed, counters)
            draws = tl.reshape(tl.join(tl.join(r0, r1), tl.join(r2, r3)), [BLOCK_M, BLOCK_N])  # column 4q + k
        else:
            draws = tl.randint(seed, row_ids[:, None] * hidden + tl.arange(0, BLOCK_N)[None, :])
        return draws.to(tl.uint32, bitcast=True).to(tl.int64) >= drop_threshold

    @triton.jit
    def _dropout_keep_kernel(KEEP, hidden, drop_threshold, seed, VEC4: tl.constexpr, BLOCK_N: tl.constexpr):
        row_ids = tl.program_id(0).to(tl.int64) + tl.arange(0, 1)  # [1]
        cols = tl.arange(0, BLOCK_N)
        keep = _dropout_keep(seed, drop_threshold, row_ids, hidden, VEC4, 1, BLOCK_N)
        offs = row_ids[:, None] * hidden + cols[None, :]
        tl.store(KEEP + offs, keep.to(tl.int8), mask=cols[None, :] < hidden)

    @triton.jit
    def _ln_fwd_kernel(
        X, R, W, B, Y, S, MEAN, RSTD,
        rows, hidden, eps, p, drop_threshold, SEED,
        HAS_RESIDUAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, VEC4: tl.constexpr, STORE_S: tl.constexpr,
        ROUND_BF16: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        seed = tl.load(SEED)  # int64 on the device: no host round trip for the dropout seed
        row_ids = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
        cols = tl.arange(0, BLOCK_N)  # [BLOCK_N]
        in_rows = row_ids < rows
        in_tile = in_rows[:, None] & (cols[None, :] < hidden)  # [BLOCK_M, BLOCK_N]
        offs = row_ids[:, None] * hidden + cols[None, :]
        s = tl.load(X + offs, mask=in_tile, other=0.0).to(tl.float32)
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, drop_threshold, row_ids, hidden, VEC4, BLOCK_M, BLOCK_N)
            s = tl.where(keep, s * (1.0 / (1.0 - p)), 0.0)
        if HAS_RESIDUAL:
            s += tl.load(R + offs, mask=in_tile, other=0.0).to(tl.float32)
        if STORE_S:
            if ROUND_BF16:
                s = rne_bf16(s)
            s_stored = s.to(S.dtype.element_ty)
            tl.store(S + offs, s_stored, mask=in_tile)
            s = s_stored.to(tl.float32)  # normalise exactly what was stored
        mean = tl.sum(s, axis=1) / hidden  # [BLOCK_M]
        centered = tl.where(in_tile, s - mean[:, None], 0.0)
        var = tl.sum(centered * centered, axis=1) / hidden
        rstd = 1.0 / tl.sqrt(var + eps)  # [BLOCK_M]
        w = tl.load(W + cols, mask=cols < hidden, other=0.0).to(tl.float32)
        b = tl.load(B + cols, mask=cols < hidden, other=0.0).to(tl.float32)
        y = centered * rstd[:, None] * w[None, :] + b[None, :]
        if ROUND_BF16:
            y = rne_bf16(y)
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=in_tile)
        tl.store(MEAN + row_ids, mean, mask=in_rows)
        tl.store(RSTD + row_ids, rstd, mask=in_rows)

    @triton.jit
    def _ln_bwd_kernel(
        DY, DS_OUT, S, W, MEAN, RSTD, DX, DRES, DW_PARTIAL, DB_PARTIAL,
        rows, hidden, p, drop_threshold, SEED,
        TILES_PER_PROGRAM: tl.constexpr,
        HAS_DS_OUT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_DROPOUT: tl.constexpr, VEC4: tl.constexpr,
        ROUND_BF16_DX: tl.constexpr, ROUND_BF16_DRES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):  # fmt: skip
        seed = tl.load(SEED)  # int64 on the device: no host round trip for the dropout seed
        pid = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_N)
        w = tl.load(W + cols, mask=cols < hidden, other=0.0).to(tl.float32)
        dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for i in range(0, TILES_PER_PROGRAM):  # constexpr bound (launch.py)
            row_ids = (pid * TILES_PER_PROGRAM + i) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
            in_rows = row_ids < rows
            in_tile = in_rows[:, None] & (cols[None, :] < hidden)  # [BLOCK_M, BLOCK_N]; rows past the end: off
            offs = row_ids[:, None] * hidden + cols[None, :]
            mean = tl.load(MEAN + row_ids, mask=in_rows, other=0.0)
            rstd = tl.load(RSTD + row_ids, mask=in_rows, other=0.0)
            s = tl.load(S + offs, mask=in_tile, other=0.0).to(tl.float32)
            dy = tl.load(DY + offs, mask=in_tile, other=0.0).to(tl.float32)
            xhat = tl.where(in_tile, (s - mean[:, None]) * rstd[:, None], 0.0)
            g = dy * w[None, :]
            mean_g = tl.sum(g, axis=1) / hidden  # [BLOCK_M]
            mean_g_xhat = tl.sum(g * xhat, axis=1) / hidden
            ds = (g - mean_g[:, None] - xhat * mean_g_xhat[:, None]) * rstd[:, None]
            if HAS_DS_OUT:
                ds += tl.load(DS_OUT + offs, mask=in_tile, other=0.0).to(tl.float32)
            if HAS_RESIDUAL:
                dres = ds
                if ROUND_BF16_DRES:
                    dres = rne_bf16(dres)
                tl.store(DRES + offs, dres.to(DRES.dtype.element_ty), mask=in_tile)
            dx = ds
            if HAS_DROPOUT:
                keep = _dropout_keep(seed, drop_threshold, row_ids, hidden, VEC4, BLOCK_M, BLOCK_N)  # forward's mask
                dx = tl.where(keep, ds * (1.0 / (1.0 - p)), 0.0)
            if ROUND_BF16_DX:
                dx = rne_bf16(dx)
            tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=in_tile)
            dw_acc += tl.sum(dy * xhat, axis=0)
            db_acc += tl.sum(dy, axis=0)
        tl.store(DW_PARTIAL + pid * hidden + cols, dw_acc, mask=cols < hidden)
        tl.store(DB_PARTIAL + pid * hidden + cols, db_acc, mask=cols < hidden)
