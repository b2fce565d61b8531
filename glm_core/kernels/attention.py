"""Fused GLM attention for training: a Flash-style Triton kernel (forward + deterministic backward,
registered as the torch custom ops ``glm::attention_fwd`` / ``glm::attention_bwd``) and its
plain-torch reference; the peers a benchmark compares it with live in ``attention_peers.py``.

GLM's mask (spec glm_reference §2.1, fused_ops §4.1): key ``j`` is visible to query ``i`` of sample
``b`` iff ``j < sep[b] or j <= i``, i.e. iff ``j < max(sep[b], i + 1)``. Every query row sees a
contiguous key prefix and every key column a contiguous row suffix, so the kernels need only
per-tile loop bounds plus an element mask on the boundary tiles; no ``B*H*T*T`` tensor (scores or
mask) is ever materialised.

Public API
----------
- :func:`glm_attention` — ``impl="auto" | "triton" | "torch"`` through
  :func:`glm_core.kernels.resolve_impl`: the fused kernels (CUDA, or CPU under the Triton
  interpreter) or the eager GLM math of :func:`glm_attention_reference`.
- :func:`glm_attention_reference` — plain torch, any dtype including float64; materialises scores.
- :func:`glm_attention_dropout_mask` — regenerates the kernel's dropout keep-mask in plain torch
  (a bit-exact mirror of Triton's Philox ``tl.randint4x``), so tests and the reference use the
  kernel's own mask; :func:`dropout_threshold` is the 16-bit threshold it compares against.
- :func:`glm_visibility_mask` — the dense ``[B, 1, T, T]`` bool mask (reference and SDPA only).
- :func:`glm_core.kernels.attention_peers.glm_attention_sdpa`, ``glm_attention_flex`` — benchmark
  peers (SDPA with a dense bool mask; FlexAttention with a ``BlockMask``).

Kernel notes
------------
- Softmax scale ``1/sqrt(D)`` (spec glm_reference §1.3; GLM scales K before the matmul, the kernel
  scales the fp32 score, which is the same function). Work is done in base 2 (``exp2``) with the
  scale folded into ``qk_scale_log2``; the saved log-sum-exp ``lse`` is in base-2 units.
- Attention dropout (GLM trains with p = 0.1): Philox-4x32-10 (``tl.randint4x``) keyed by ``seed``,
  one counter per (row, group of 8 keys), each call split into 8 fields of 16 bits; drop iff
  ``field < round(65536 p)`` (realised rate within 7.6e-6 of p), kept probabilities scaled by
  ``1/(1-p)``. The backward regenerates the identical mask from ``seed``;
  :func:`glm_attention_dropout_mask` regenerates it in torch. Random bits dominate the dropout
  cost: on an H200 (bf16, d=64, T=1024) per-element ``tl.rand`` took fwd+bwd from 1.6 to 8.5 ms;
  8 decisions per Philox call bring it to 2.9 ms (no dropout: 1.4 ms).
- Backward: a preprocess kernel ``delta = rowsum(dO * O)``, then two atomic-free kernels: dK/dV (one
  program per key tile, looping over the query tiles that can see it) and dQ (one program per query
  tile, same loop bounds as the forward). No atomics, so the backward is deterministic.
- ``tl.dot`` on fp32 operands uses ``input_precision="ieee"`` by default (spec §5.3: 1e-5 on GPU);
  ``allow_tf32=True`` picks TF32 for speed (measured on an H200: max-rel 8e-4 output, 2e-3 grads).
- Under the Triton interpreter (``TRITON_INTERPRET=1`` at import, spec §3.1, §6.2) bf16 ``tl.dot``
  returns garbage (triton#11584, spec §6.1): the ``UPCAST_DOT`` constexpr casts dot operands to fp32
  (the probabilities are still rounded to the input dtype first, as on the GPU). The interpreter
  casts fp32 -> bf16 by truncation, so under ``ROUND_BF16`` values are rounded to nearest even first
  (``glm_core.kernels.interpreter``), giving the GPU's numerics.
- triton 3.6's interpreter with numpy >= 2.4 cannot use any runtime tensor as a ``range`` bound
  (spec §3.1, §6.3). The kernels keep ``for`` loops (software-pipelined on the GPU) and switch to
  equivalent ``while`` loops through the ``WHILE_LOOPS`` constexpr only in that combination.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from glm_core.errors import InputError
from glm_core.kernels import interpreter_enabled, resolve_impl
from glm_core.kernels.interpreter import round_bf16_in_interpreter

try:  # Triton is optional: the reference path works without it; resolve_impl refuses "triton".
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None
    _HAVE_TRITON = False
else:
    from glm_core.kernels.interpreter import rne_bf16

    _HAVE_TRITON = True

__all__ = [
    "SUPPORTED_HEAD_DIMS",
    "attention_bwd",
    "attention_fwd",
    "glm_attention",
    "glm_attention_dropout_mask",
    "glm_attention_reference",
    "dropout_threshold",
    "glm_visibility_mask",
]

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
_LOG2E = 1.4426950408889634

OP_NAME = "glm_attention"

# spec §3.1 / §6.2: the interpreter is chosen when @triton.jit decorates, i.e. at import time.
_INTERPRET = interpreter_enabled()


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def _interpreter_needs_while_loops() -> bool:
    """spec §3.1: triton < 3.8 interpreter + numpy >= 2.4 crashes on tensor ``range`` bounds."""
    if not (_INTERPRET and _HAVE_TRITON):
        return False
    import numpy

    return _version_tuple(triton.__version__) < (3, 8) and _version_tuple(numpy.__version__) >= (2, 4)


_WHILE_LOOPS = _interpreter_needs_while_loops()


# ---------------------------------------------------------------------------------------------
# Plain-torch pieces: visibility mask, dropout mask mirror, reference
# ---------------------------------------------------------------------------------------------


def glm_visibility_mask(sep: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Dense GLM mask, True = visible: ``j < sep[b] or j <= i`` (spec glm_reference §2.1).

    Returns a bool tensor ``[B, 1, T, T]`` on ``sep``'s device.
    """
    idx = torch.arange(seq_len, device=sep.device)
    query = idx.view(1, 1, seq_len, 1)  # i
    key = idx.view(1, 1, 1, seq_len)  # j
    prefix = key < sep.view(-1, 1, 1, 1).to(torch.long)  # [B, 1, 1, T]
    return prefix | (key <= query)  # [B, 1, T, T]


# Triton's Philox-4x32 constants (triton.language.random.philox_impl, identical in triton 3.6-3.9).
_PHILOX_KEY_A = 0x9E3779B9
_PHILOX_KEY_B = 0xBB67AE85
_PHILOX_ROUND_A = 0xD2511F53
_PHILOX_ROUND_B = 0xCD9E8D57
_PHILOX_ROUNDS = 10
_MASK32 = 0xFFFFFFFF
DROPOUT_FIELDS_PER_COUNTER = 8  # one Philox call = 4 x 32 random bits = 8 dropout decisions of 16 bits
_DROPOUT_LEVELS = 1 << 16


def dropout_threshold(dropout_p: float) -> int:
    """The kernel drops a probability iff its 16-bit random field is below this (0 = keep all).

    ``round(p * 65536)``: the realised drop rate differs from ``p`` by at most 2**-17 (7.6e-6); kept
    values are still scaled by ``1/(1-p)``.
    """
    return min(round(dropout_p * _DROPOUT_LEVELS), _DROPOUT_LEVELS - 1)


def _mul_hi_lo_32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of the 64-bit product of two uint32 values held in int64.

    Split into 16-bit limbs so no intermediate leaves the int64 range.
    """
    a_hi, a_lo = a >> 16, a & 0xFFFF
    upper = a_hi * b  # < 2**48
    lower = a_lo * b  # < 2**48
    hi = (upper + (lower >> 16)) >> 16
    lo = ((upper << 16) + lower) & _MASK32
    return hi & _MASK32, lo


def _philox_4x32(seed: int, counters: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Plain-torch mirror of ``tl.randint4x(seed, counters)`` for int64 counters: four uint32 words
    (held in int64). Counter (lo, hi, 0, 0), key (seed_lo, seed_hi), 10 rounds."""
    c0 = counters & _MASK32
    c1 = (counters >> 32) & _MASK32
    c2 = torch.zeros_like(counters)
    c3 = torch.zeros_like(counters)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(_PHILOX_ROUNDS):
        hi_b, lo_b = _mul_hi_lo_32(_PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo_32(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _PHILOX_KEY_A) & _MASK32
        k1 = (k1 + _PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def _interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``tl.interleave``: ``out[..., 2k] = a[..., k]``, ``out[..., 2k + 1] = b[..., k]``."""
    return torch.stack((a, b), dim=-1).flatten(-2)


def glm_attention_dropout_mask(
    seed: int,
    batch: int,
    heads: int,
    seq_len: int,
    dropout_p: float,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The Triton kernel's attention-dropout keep-mask, regenerated in plain torch.

    Scheme (shared with ``_dropout_keep`` in the kernels): keys are grouped by 8; the Philox counter of
    (row ``r = (b*H + h)*T + i``, key group ``g = j // 8``) is ``r * ceil(T/8) + g``, whose 4 x 32
    random bits give 8 fields of 16 bits, laid out over the group's keys by the same
    ``interleave`` tree as the kernel. Keep iff ``field >= dropout_threshold(dropout_p)``.
    Returns a bool tensor ``[B, H, T, T]``; for tests and small shapes (it is materialised).
    """
    _check_seed(seed)
    groups = -(-seq_len // DROPOUT_FIELDS_PER_COUNTER)
    rows = torch.arange(batch * heads * seq_len, dtype=torch.int64, device=device)
    counters = rows[:, None] * groups + torch.arange(groups, dtype=torch.int64, device=device)[None, :]
    fields = _dropout_fields(*_philox_4x32(seed, counters))  # [B*H*T, 8 * groups]
    keep = fields[:, :seq_len] >= dropout_threshold(dropout_p)
    return keep.view(batch, heads, seq_len, seq_len)


def _dropout_fields(r0: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor, r3: torch.Tensor) -> torch.Tensor:
    """Eight 16-bit fields per Philox word quadruple, in the kernel's column order."""
    a0, a1, a2, a3 = (_interleave(r & 0xFFFF, r >> 16) for r in (r0, r1, r2, r3))
    return _interleave(_interleave(a0, a2), _interleave(a1, a3))


def glm_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sep: torch.Tensor,
    dropout_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """GLM attention in plain torch ops, in the inputs' dtype (float64 works): the eager GLM math.

    ``S = Q (K / sqrt(D))^T``, masked with ``-inf`` where ``not (j < sep or j <= i)`` (equal to
    GLM's finite ``-65504`` fill: every row sees key 0, spec fused_ops §1 notes), softmax over keys,
    dropout, ``P V`` (spec glm_reference §1.3). Dropout: ``dropout_mask`` (bool keep-mask
    ``[B, H, T, T]``, e.g. :func:`glm_attention_dropout_mask`) applied with scale ``1/(1-p)``; with
    no mask and ``dropout_p > 0`` torch's own dropout RNG is used (GLM's original behaviour).
    Materialises ``[B, H, T, T]`` scores.
    """
    _check_qkv(q, k, v, sep)
    seq_len, head_dim = q.shape[2], q.shape[3]
    k_scaled = k / math.sqrt(head_dim)  # spec §1.3: 1/sqrt(d) applied to K
    scores = torch.matmul(q, k_scaled.transpose(-1, -2))  # [B, H, T, T]
    visible = glm_visibility_mask(sep.to(q.device), seq_len)  # [B, 1, T, T]
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # [B, H, T, T]
    if dropout_mask is not None:
        if dropout_mask.shape != probs.shape:
            raise InputError(f"dropout_mask has shape {tuple(dropout_mask.shape)}, expected {tuple(probs.shape)}")
        if dropout_p >= 1.0:
            raise InputError(f"dropout_p must be < 1 when a dropout mask is given, got {dropout_p}")
        probs = probs * dropout_mask.to(probs.dtype) / (1.0 - dropout_p)
    elif dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs, v)  # [B, H, T, D]


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sep: torch.Tensor) -> None:
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4:
            raise InputError(f"{name} must be a 4-D tensor [B, H, T, D], got {_describe(tensor)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise InputError(
            f"q, k, v must share one shape [B, H, T, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise InputError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not isinstance(sep, torch.Tensor) or sep.dim() != 1 or sep.shape[0] != q.shape[0]:
        raise InputError(f"sep must be a 1-D integer tensor [B={q.shape[0]}], got {_describe(sep)}")
    if sep.dtype.is_floating_point or sep.dtype == torch.bool or sep.is_complex():
        raise InputError(f"sep must hold integers (int64), got dtype {sep.dtype}")
    if q.shape[2] < 1:
        raise InputError("sequence length T must be >= 1")


def _check_seed(seed: int) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise InputError(f"dropout seed must be an int in [0, 2**63), got {seed!r}")


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__


# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LaunchConfig:
    """Tile sizes and launch parameters; one choice per (head_dim, interpreter)."""

    fwd_block_m: int
    fwd_block_n: int
    bwd_kv_block_m: int  # query tile of the dK/dV kernel
    bwd_kv_block_n: int  # key tile owned by one dK/dV program
    bwd_q_block_m: int  # query tile owned by one dQ program
    bwd_q_block_n: int  # key tile of the dQ kernel
    num_warps: int
    num_stages: int


def _launch_config(head_dim: int, block: int | None) -> _LaunchConfig:
    if block is not None or _INTERPRET:
        # Interpreter: every program costs ms of Python, so small tiles keep grids and tests tiny.
        size = block or 16
        return _LaunchConfig(size, size, size, size, size, size, num_warps=4, num_stages=1)
    # GPU defaults: best of a small sweep on an H200 (bf16, d=64, B=16, H=32, T=1024, sep/T ~ 0.82).
    if head_dim <= 64:
        return _LaunchConfig(64, 64, 32, 64, 64, 32, num_warps=4, num_stages=3)
    return _LaunchConfig(128, 32, 32, 64, 64, 32, num_warps=8, num_stages=2)


if _HAVE_TRITON:

    @triton.jit
    def _dot(a, b, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr):
        """fp32-accumulating dot; upcasts operands under the interpreter (spec §6.1)."""
        if UPCAST_DOT:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        return tl.dot(a, b, input_precision=DOT_PRECISION)

    @triton.jit
    def _rne(x, ROUND_BF16: tl.constexpr):
        """Under the interpreter, round fp32 to the nearest bf16 before a bf16 cast (it truncates)."""
        if ROUND_BF16:
            x = rne_bf16(x)
        return x

    @triton.jit
    def _dropout_keep(seed, bh, T, offs_m, n0, threshold, BLOCK_N: tl.constexpr):
        """Keep-mask [len(offs_m), BLOCK_N] for rows offs_m and keys n0 .. n0 + BLOCK_N of head bh.

        One ``randint4x`` (Philox-4x32-10) per 8 keys gives 8 fields of 16 bits (mirrored in torch by
        ``glm_attention_dropout_mask``): 8x fewer Philox rounds than ``tl.rand`` per element.
        """
        GROUPS: tl.constexpr = BLOCK_N // 8
        groups_per_row = (T + 7) // 8
        rows = bh.to(tl.int64) * T + offs_m.to(tl.int64)
        counters = rows[:, None] * groups_per_row + (n0 // 8 + tl.arange(0, GROUPS))[None, :]
        r0, r1, r2, r3 = tl.randint4x(seed, counters)
        a0 = tl.interleave(r0 & 0xFFFF, r0 >> 16)
        a1 = tl.interleave(r1 & 0xFFFF, r1 >> 16)
        a2 = tl.interleave(r2 & 0xFFFF, r2 >> 16)
        a3 = tl.interleave(r3 & 0xFFFF, r3 >> 16)
        fields = tl.interleave(tl.interleave(a0, a2), tl.interleave(a1, a3))  # [BM, BLOCK_N]
        return fields >= threshold

    @triton.jit
    def _fwd_tile(
        acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
        n0, offs_m, offs_d, sep, T, bh, qk_scale_log2, dropout_threshold, seed,
        BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DROPOUT: tl.constexpr,
        UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, ROUND_BF16: tl.constexpr,
    ):  # fmt: skip
        """One key tile of the online softmax (Flash-Attention-2 forward inner step)."""
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kt_ptrs = k_base + offs_n[None, :] * stride_kt + offs_d[:, None] * stride_kd  # [D, BN]
        v_ptrs = v_base + offs_n[:, None] * stride_vt + offs_d[None, :] * stride_vd  # [BN, D]
        if MASKED:
            kt = tl.load(kt_ptrs, mask=offs_n[None, :] < T, other=0.0)
            v = tl.load(v_ptrs, mask=offs_n[:, None] < T, other=0.0)
        else:
            kt = tl.load(kt_ptrs)
            v = tl.load(v_ptrs)
        s = _dot(q, kt, UPCAST_DOT, DOT_PRECISION) * qk_scale_log2  # [BM, BN], log2 units
        if MASKED:
            # spec §4.1: j < max(sep, i + 1), plus the sequence end
            limit = tl.maximum(offs_m[:, None] + 1, sep)
            visible = (offs_n[None, :] < limit) & (offs_n[None, :] < T)
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: key 0 is in the first tile
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            keep = _dropout_keep(seed, bh, T, offs_m, n0, dropout_threshold, BLOCK_N)
            p = tl.where(keep, p, 0.0)  # 1/(1-p) is applied once in the epilogue
        p_in = _rne(p, ROUND_BF16).to(v.dtype)  # probabilities rounded to the input dtype, as on the GPU
        acc = acc * alpha[:, None] + _dot(p_in, v, UPCAST_DOT, DOT_PRECISION)
        return acc, l_i, m_new

    @triton.jit
    def _glm_attn_fwd_kernel(
        Q, K, V, SEP, OUT, LSE,
        stride_qb, stride_qh, stride_qt, stride_qd,
        stride_kb, stride_kh, stride_kt, stride_kd,
        stride_vb, stride_vh, stride_vt, stride_vd,
        stride_ob, stride_oh, stride_ot, stride_od,
        H, T, qk_scale_log2, dropout_threshold, dropout_scale, SEED,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        DROPOUT: tl.constexpr, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
        ROUND_BF16: tl.constexpr, WHILE_LOOPS: tl.constexpr,
    ):  # fmt: skip
        seed = tl.load(SEED)  # int64 on the device: no host round trip for the dropout seed
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        sep = tl.load(SEP + b).to(tl.int32)
        sep = tl.minimum(tl.maximum(sep, 0), T)  # sep outside [0, T] means the same as the clamp

        m0 = pid_m * BLOCK_M
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
        v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
        q_ptrs = q_base + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd
        q = tl.load(q_ptrs, mask=offs_m[:, None] < T, other=0.0)  # [BM, D]

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

        # spec §4.1 loop bounds: every row of the tile sees keys < max(sep, m0 + 1) (no element mask
        # on whole tiles below that), the tile as a whole sees keys < max(sep, last row + 1).
        row_end = tl.minimum(m0 + BLOCK_M, T)
        full_end = (tl.minimum(tl.maximum(sep, m0 + 1), T) // BLOCK_N) * BLOCK_N
        key_end = tl.minimum(tl.maximum(sep, row_end), T)

        if WHILE_LOOPS:
            n0 = 0
            while n0 < full_end:
                acc, l_i, m_i = _fwd_tile(
                    acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
                    n0, offs_m, offs_d, sep, T, bh, qk_scale_log2, dropout_threshold, seed,
                    BLOCK_N, False, DROPOUT, UPCAST_DOT, DOT_PRECISION, ROUND_BF16,
                )  # fmt: skip
                n0 += BLOCK_N
            while n0 < key_end:
                acc, l_i, m_i = _fwd_tile(
                    acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
                    n0, offs_m, offs_d, sep, T, bh, qk_scale_log2, dropout_threshold, seed,
                    BLOCK_N, True, DROPOUT, UPCAST_DOT, DOT_PRECISION, ROUND_BF16,
                )  # fmt: skip
                n0 += BLOCK_N
        else:
            for n0 in range(0, full_end, BLOCK_N):
                acc, l_i, m_i = _fwd_tile(
                    acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
                    n0, offs_m, offs_d, sep, T, bh, qk_scale_log2, dropout_threshold, seed,
                    BLOCK_N, False, DROPOUT, UPCAST_DOT, DOT_PRECISION, ROUND_BF16,
                )  # fmt: skip
            for n0 in range(full_end, key_end, BLOCK_N):
                acc, l_i, m_i = _fwd_tile(
                    acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
                    n0, offs_m, offs_d, sep, T, bh, qk_scale_log2, dropout_threshold, seed,
                    BLOCK_N, True, DROPOUT, UPCAST_DOT, DOT_PRECISION, ROUND_BF16,
                )  # fmt: skip

        out = acc / l_i[:, None]
        if DROPOUT:
            out = out * dropout_scale
        row_ok = offs_m < T
        o_base = OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
        o_ptrs = o_base + offs_m[:, None] * stride_ot + offs_d[None, :] * stride_od
        tl.store(o_ptrs, _rne(out, ROUND_BF16).to(OUT.dtype.element_ty), mask=row_ok[:, None])
        lse = m_i + tl.math.log2(l_i)  # base-2 log-sum-exp of the scaled scores
        tl.store(LSE + bh.to(tl.int64) * T + offs_m, lse, mask=row_ok)

    @triton.jit
    def _glm_attn_bwd_preprocess_kernel(
        OUT, DO, DELTA,
        stride_ob, stride_oh, stride_ot, stride_od,
        stride_dob, stride_doh, stride_dot, stride_dod,
        H, T, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    ):  # fmt: skip
        """delta[i] = rowsum(dO * O); valid with dropout since O already holds the dropped P."""
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < T
        o_ptrs = (
            OUT + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
            + offs_m[:, None] * stride_ot + offs_d[None, :] * stride_od
        )  # fmt: skip
        do_ptrs = (
            DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
            + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod
        )  # fmt: skip
        o = tl.load(o_ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
        do = tl.load(do_ptrs, mask=row_ok[:, None], other=0.0).to(tl.float32)
        delta = tl.sum(o * do, axis=1)
        tl.store(DELTA + bh.to(tl.int64) * T + offs_m, delta, mask=row_ok)

    @triton.jit
    def _bwd_kv_tile(
        dk, dv, k, v, q_base, do_base, lse_base, delta_base,
        stride_qt, stride_qd, stride_dot, stride_dod,
        m0, n0, offs_n, offs_d, sep, T, bh, qk_scale_log2, dropout_threshold, dropout_scale, seed,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DROPOUT: tl.constexpr,
        UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, ROUND_BF16: tl.constexpr,
    ):  # fmt: skip
        """Accumulate dK, dV of one key tile over one query tile (scores kept transposed)."""
        offs_m = m0 + tl.arange(0, BLOCK_M)
        row_ok = offs_m < T
        qt = tl.load(
            q_base + offs_m[None, :] * stride_qt + offs_d[:, None] * stride_qd,
            mask=row_ok[None, :],
            other=0.0,
        )  # [D, BM]
        do = tl.load(
            do_base + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod,
            mask=row_ok[:, None],
            other=0.0,
        )  # [BM, D]
        # Rows past T load zeros everywhere, so their P = 1 meets dO = 0 and delta = 0: no effect.
        lse = tl.load(lse_base + offs_m, mask=row_ok, other=0.0)
        delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        st = _dot(k, qt, UPCAST_DOT, DOT_PRECISION) * qk_scale_log2  # [BN, BM]
        pt = tl.math.exp2(st - lse[None, :])  # softmax probabilities, transposed
        if MASKED:
            # spec §4.1 column view: key j is seen by every row if j < sep, else by rows i >= j
            visible = (offs_n[:, None] < sep) | (offs_m[None, :] >= offs_n[:, None])
            pt = tl.where(visible, pt, 0.0)
        dpt = _dot(v, tl.trans(do), UPCAST_DOT, DOT_PRECISION)  # [BN, BM] = dP~^T
        if DROPOUT:
            keep_t = tl.trans(_dropout_keep(seed, bh, T, offs_m, n0, dropout_threshold, BLOCK_N))
            pt_drop = tl.where(keep_t, pt * dropout_scale, 0.0)
            dpt = tl.where(keep_t, dpt * dropout_scale, 0.0)  # dP = dP~ * Z
        else:
            pt_drop = pt
        dv += _dot(_rne(pt_drop, ROUND_BF16).to(do.dtype), do, UPCAST_DOT, DOT_PRECISION)
        dst = pt * (dpt - delta[None, :])  # dS^T
        dk += _dot(_rne(dst, ROUND_BF16).to(qt.dtype), tl.trans(qt), UPCAST_DOT, DOT_PRECISION)
        return dk, dv

    @triton.jit
    def _glm_attn_bwd_kv_kernel(
        Q, K, V, SEP, DO, LSE, DELTA, DK, DV,
        stride_qb, stride_qh, stride_qt, stride_qd,
        stride_kb, stride_kh, stride_kt, stride_kd,
        stride_vb, stride_vh, stride_vt, stride_vd,
        stride_dob, stride_doh, stride_dot, stride_dod,
        stride_dkb, stride_dkh, stride_dkt, stride_dkd,
        stride_dvb, stride_dvh, stride_dvt, stride_dvd,
        H, T, qk_scale_log2, sm_scale, dropout_threshold, dropout_scale, SEED,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        DROPOUT: tl.constexpr, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
        ROUND_BF16: tl.constexpr, WHILE_LOOPS: tl.constexpr,
    ):  # fmt: skip
        seed = tl.load(SEED)  # int64 on the device: no host round trip for the dropout seed
        pid_n = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        sep = tl.load(SEP + b).to(tl.int32)
        sep = tl.minimum(tl.maximum(sep, 0), T)

        n0 = pid_n * BLOCK_N
        offs_n = n0 + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        key_ok = offs_n < T
        k = tl.load(
            K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
            + offs_n[:, None] * stride_kt + offs_d[None, :] * stride_kd,
            mask=key_ok[:, None], other=0.0,
        )  # [BN, D]  # fmt: skip
        v = tl.load(
            V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
            + offs_n[:, None] * stride_vt + offs_d[None, :] * stride_vd,
            mask=key_ok[:, None], other=0.0,
        )  # [BN, D]  # fmt: skip
        q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        do_base = DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
        lse_base = LSE + bh.to(tl.int64) * T
        delta_base = DELTA + bh.to(tl.int64) * T

        dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

        # spec §4.1 column view. Rows [mask_start, mask_end) can contain invisible (i, j) pairs and
        # get the element mask; rows from mask_end on see the whole key tile (i >= n0 + BN - 1, or
        # the tile lies inside Part A). Part-B key tiles start at their own diagonal, not at row 0.
        tile_end = n0 + BLOCK_N
        in_part_a = tile_end <= sep
        diag_end = ((tile_end - 1 + BLOCK_M - 1) // BLOCK_M) * BLOCK_M  # first tile with i >= n0+BN-1
        mask_start = tl.where(n0 < sep, 0, (n0 // BLOCK_M) * BLOCK_M)
        mask_end = tl.where(in_part_a, 0, tl.minimum(diag_end, T))  # in Part A: no masked rows at all

        if WHILE_LOOPS:
            m0 = mask_start
            while m0 < mask_end:
                dk, dv = _bwd_kv_tile(
                    dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                    stride_qt, stride_qd, stride_dot, stride_dod,
                    m0, n0, offs_n, offs_d, sep, T, bh, qk_scale_log2, dropout_threshold, dropout_scale, seed,
                    BLOCK_M, BLOCK_N, True, DROPOUT, UPCAST_DOT, DOT_PRECISION, ROUND_BF16,
                )  # fmt: skip
                m0 += BLOCK_M
            m0 = mask_end
            while m0 < T:
                dk, dv = _bwd_kv_tile(
                    dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                    stride_qt, stride_qd, stride_dot, stride_dod,
                    m0, n0, offs_n, offs_d, sep, T, bh, qk_scale_log2, dropout_threshold, dropout_scale, seed,
                    BLOCK_M, BLOCK_N, False, DROPOUT, UPCAST_DOT, DOT_PRECISION, ROUND_BF16,
                )  # fmt: skip
                m0 += BLOCK_M
        else:
            for m0 in range(mask_start, mask_end, BLOCK_M):
                dk, dv = _bwd_kv_tile(
                    dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                    stride_qt, stride_qd, stride_dot, stride_dod,
                    m0, n0, offs_n, offs_d, sep, T, bh, qk_scale_log2, dropout_threshold, dropout_scale, seed,
                    BLOCK_M, BLOCK_N, True, DROPOUT, UPCAST_DOT, DOT_PRECISION, ROUND_BF16,
                )  # fmt: skip
            for m0 in range(mask_end, T, BLOCK_M):
                dk, dv = _bwd_kv_tile(
                    dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                    stride_qt, stride_qd, stride_dot, stride_dod,
                    m0, n0, offs_n, offs_d, sep, T, bh, qk_scale_log2, dropout_threshold, dropout_scale, seed,
                    BLOCK_M, BLOCK_N, False, DROPOUT, UPCAST_DOT, DOT_PRECISION, ROUND_BF16,
                )  # fmt: skip

        dk = dk * sm_scale  # dS/dK = scale * Q
        dk_ptrs = (
            DK + b.to(tl.int64) * stride_dkb + h.to(tl.int64) * stride_dkh
            + offs_n[:, None] * stride_dkt + offs_d[None, :] * stride_dkd
        )  # fmt: skip
        dv_ptrs = (
            DV + b.to(tl.int64) * stride_dvb + h.to(tl.int64) * stride_dvh
            + offs_n[:, None] * stride_dvt + offs_d[None, :] * stride_dvd
        )  # fmt: skip
        tl.store(dk_ptrs, _rne(dk, ROUND_BF16).to(DK.dtype.element_ty), mask=key_ok[:, None])
        tl.store(dv_ptrs, _rne(dv, ROUND_BF16).to(DV.dtype.element_ty), mask=key_ok[:, None])

    @triton.jit
    def _bwd_q_tile(
        dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
        n0, offs_m, offs_d, sep, T, bh, qk_scale_log2, dropout_threshold, dropout_scale, seed,
        BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DROPOUT: tl.constexpr,
        UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, ROUND_BF16: tl.constexpr,
    ):  # fmt: skip
        """Accumulate dQ of one query tile over one key tile."""
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kt_ptrs = k_base + offs_n[None, :] * stride_kt + offs_d[:, None] * stride_kd  # [D, BN]
        vt_ptrs = v_base + offs_n[None, :] * stride_vt + offs_d[:, None] * stride_vd  # [D, BN]
        if MASKED:
            kt = tl.load(kt_ptrs, mask=offs_n[None, :] < T, other=0.0)
            vt = tl.load(vt_ptrs, mask=offs_n[None, :] < T, other=0.0)
        else:
            kt = tl.load(kt_ptrs)
            vt = tl.load(vt_ptrs)
        s = _dot(q, kt, UPCAST_DOT, DOT_PRECISION) * qk_scale_log2  # [BM, BN]
        p = tl.math.exp2(s - lse[:, None])
        if MASKED:
            limit = tl.maximum(offs_m[:, None] + 1, sep)
            visible = (offs_n[None, :] < limit) & (offs_n[None, :] < T)
            p = tl.where(visible, p, 0.0)
        dp = _dot(do, vt, UPCAST_DOT, DOT_PRECISION)  # [BM, BN] = dP~
        if DROPOUT:
            keep = _dropout_keep(seed, bh, T, offs_m, n0, dropout_threshold, BLOCK_N)
            dp = tl.where(keep, dp * dropout_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq += _dot(_rne(ds, ROUND_BF16).to(kt.dtype), tl.trans(kt), UPCAST_DOT, DOT_PRECISION)
        return dq

    @triton.jit
    def _glm_attn_bwd_q_kernel(
        Q, K, V, SEP, DO, LSE, DELTA, DQ,
        stride_qb, stride_qh, stride_qt, stride_qd,
        stride_kb, stride_kh, stride_kt, stride_kd,
        stride_vb, stride_vh, stride_vt, stride_vd,
        stride_dob, stride_doh, stride_dot, stride_dod,
        stride_dqb, stride_dqh, stride_dqt, stride_dqd,
        H, T, qk_scale_log2, sm_scale, dropout_threshold, dropout_scale, SEED,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        DROPOUT: tl.constexpr, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
        ROUND_BF16: tl.constexpr, WHILE_LOOPS: tl.constexpr,
    ):  # fmt: skip
        seed = tl.load(SEED)  # int64 on the device: no host round trip for the dropout seed
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        sep = tl.load(SEP + b).to(tl.int32)
        sep = tl.minimum(tl.maximum(sep, 0), T)

        m0 = pid_m * BLOCK_M
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < T
        q = tl.load(
            Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
            + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd,
            mask=row_ok[:, None], other=0.0,
        )  # [BM, D]  # fmt: skip
        do = tl.load(
            DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
            + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod,
            mask=row_ok[:, None], other=0.0,
        )  # [BM, D]  # fmt: skip
        lse = tl.load(LSE + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0)
        k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
        v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh

        dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        # Same key range as the forward (spec §4.1 row view).
        row_end = tl.minimum(m0 + BLOCK_M, T)
        full_end = (tl.minimum(tl.maximum(sep, m0 + 1), T) // BLOCK_N) * BLOCK_N
        key_end = tl.minimum(tl.maximum(sep, row_end), T)

        if WHILE_LOOPS:
            n0 = 0
            while n0 < full_end:
                dq = _bwd_q_tile(
                    dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_kd, stride_vt,
                    stride_vd, n0, offs_m, offs_d, sep, T, bh, qk_scale_log2, dropout_threshold,
                    dropout_scale, seed, BLOCK_N, False, DROPOUT, UPCAST_DOT, DOT_PRECISION, ROUND_BF16,
                )  # fmt: skip
                n0 += BLOCK_N
            while n0 < key_end:
                dq = _bwd_q_tile(
                    dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_kd, stride_vt,
                    stride_vd, n0, offs_m, offs_d, sep, T, bh, qk_scale_log2, dropout_threshold,
                    dropout_scale, seed, BLOCK_N, True, DROPOUT, UPCAST_DOT, DOT_PRECISION, ROUND_BF16,
                )  # fmt: skip
                n0 += BLOCK_N
        else:
            for n0 in range(0, full_end, BLOCK_N):
                dq = _bwd_q_tile(
                    dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_kd, stride_vt,
                    stride_vd, n0, offs_m, offs_d, sep, T, bh, qk_scale_log2, dropout_threshold,
                    dropout_scale, seed, BLOCK_N, False, DROPOUT, UPCAST_DOT, DOT_PRECISION, ROUND_BF16,
                )  # fmt: skip
            for n0 in range(full_end, key_end, BLOCK_N):
                dq = _bwd_q_tile(
                    dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_kd, stride_vt,
                    stride_vd, n0, offs_m, offs_d, sep, T, bh, qk_scale_log2, dropout_threshold,
                    dropout_scale, seed, BLOCK_N, True, DROPOUT, UPCAST_DOT, DOT_PRECISION, ROUND_BF16,
                )  # fmt: skip

        dq = dq * sm_scale
        dq_ptrs = (
            DQ + b.to(tl.int64) * stride_dqb + h.to(tl.int64) * stride_dqh
            + offs_m[:, None] * stride_dqt + offs_d[None, :] * stride_dqd
        )  # fmt: skip
        tl.store(dq_ptrs, _rne(dq, ROUND_BF16).to(DQ.dtype.element_ty), mask=row_ok[:, None])


# ---------------------------------------------------------------------------------------------
# Launch wrappers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _KernelArgs:
    """Scalars shared by the forward and backward launches of one call."""

    dropout_p: float  # 0.0 when dropout is off
    seed: torch.Tensor  # int64 [1] on the inputs' device (read by the kernels, never by the host)
    allow_tf32: bool
    block: int | None  # tile size override (tests); None = _launch_config's choice

    @property
    def dropout(self) -> bool:
        return self.dropout_p > 0.0

    @property
    def threshold(self) -> int:
        return dropout_threshold(self.dropout_p) if self.dropout else 0

    @property
    def dropout_scale(self) -> float:
        return 1.0 / (1.0 - self.dropout_p) if self.dropout else 1.0


def _dot_precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    # spec §5.3 / §6.4: exact fp32 products unless TF32 is asked for; ignored for 16-bit operands.
    if dtype == torch.float32 and not allow_tf32:
        return "ieee"
    return "tf32"


def _triton_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sep: torch.Tensor, args: _KernelArgs
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, seq_len, head_dim = q.shape
    cfg = _launch_config(head_dim, args.block)
    out = torch.empty((batch, heads, seq_len, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch * heads, seq_len), dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(seq_len, cfg.fwd_block_m), batch * heads)
    _glm_attn_fwd_kernel[grid](
        q, k, v, sep, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        heads, seq_len, _LOG2E / math.sqrt(head_dim), args.threshold, args.dropout_scale, args.seed,
        HEAD_DIM=head_dim, BLOCK_M=cfg.fwd_block_m, BLOCK_N=cfg.fwd_block_n,
        DROPOUT=args.dropout, UPCAST_DOT=_INTERPRET,
        DOT_PRECISION=_dot_precision(q.dtype, args.allow_tf32),
        ROUND_BF16=round_bf16_in_interpreter(q.dtype), WHILE_LOOPS=_WHILE_LOOPS,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out, lse


def _triton_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sep: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
    args: _KernelArgs,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, heads, seq_len, head_dim = q.shape
    cfg = _launch_config(head_dim, args.block)
    precision = _dot_precision(q.dtype, args.allow_tf32)
    qk_scale_log2 = _LOG2E / math.sqrt(head_dim)
    sm_scale = 1.0 / math.sqrt(head_dim)

    delta = torch.empty((batch * heads, seq_len), dtype=torch.float32, device=q.device)
    pre_block = cfg.bwd_q_block_m
    _glm_attn_bwd_preprocess_kernel[(triton.cdiv(seq_len, pre_block), batch * heads)](
        out, dout, delta, *out.stride(), *dout.stride(), heads, seq_len,
        HEAD_DIM=head_dim, BLOCK_M=pre_block,
    )  # fmt: skip

    dq = torch.empty((batch, heads, seq_len, head_dim), dtype=q.dtype, device=q.device)
    dk = torch.empty_like(dq)
    dv = torch.empty_like(dq)
    common = dict(
        HEAD_DIM=head_dim, DROPOUT=args.dropout, UPCAST_DOT=_INTERPRET, DOT_PRECISION=precision,
        ROUND_BF16=round_bf16_in_interpreter(q.dtype), WHILE_LOOPS=_WHILE_LOOPS, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    _glm_attn_bwd_kv_kernel[(triton.cdiv(seq_len, cfg.bwd_kv_block_n), batch * heads)](
        q, k, v, sep, dout, lse, delta, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dk.stride(), *dv.stride(),
        heads, seq_len, qk_scale_log2, sm_scale, args.threshold, args.dropout_scale, args.seed,
        BLOCK_M=cfg.bwd_kv_block_m, BLOCK_N=cfg.bwd_kv_block_n, **common,
    )  # fmt: skip
    _glm_attn_bwd_q_kernel[(triton.cdiv(seq_len, cfg.bwd_q_block_m), batch * heads)](
        q, k, v, sep, dout, lse, delta, dq,
        *q.stride(), *k.stride(), *v.stride(), *dout.stride(), *dq.stride(),
        heads, seq_len, qk_scale_log2, sm_scale, args.threshold, args.dropout_scale, args.seed,
        BLOCK_M=cfg.bwd_q_block_m, BLOCK_N=cfg.bwd_q_block_n, **common,
    )  # fmt: skip
    return dq, dk, dv


# The kernel as torch custom ops: torch.compile keeps them as opaque nodes of its graph (shapes from the fake
# implementations), and the backward op is the forward op's autograd formula. The dropout seed is an int64 tensor [1]
# on the inputs' device, drawn there by torch's generator and read by the kernels themselves: never an ``.item()``,
# never a host sync, and checkpointed recomputation (which restores the RNG state) draws the same seed again.
@torch.library.custom_op("glm::attention_fwd", mutates_args=())
def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sep: torch.Tensor,
    seed: torch.Tensor,
    dropout_p: float,
    allow_tf32: bool,
    block: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out [B, H, T, D], lse [B*H, T] fp32)``; ``block`` 0: the launch configuration's own tiles."""
    return _triton_forward(q, k, v, sep, _op_args(seed, dropout_p, allow_tf32, block))


@attention_fwd.register_fake
def _attention_fwd_fake(q, k, v, sep, seed, dropout_p, allow_tf32, block):  # noqa: ANN001, ANN202
    batch, heads, seq_len, head_dim = q.shape
    out = q.new_empty((batch, heads, seq_len, head_dim))
    return out, q.new_empty((batch * heads, seq_len), dtype=torch.float32)


@torch.library.custom_op("glm::attention_bwd", mutates_args=())
def attention_bwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sep: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
    seed: torch.Tensor,
    dropout_p: float,
    allow_tf32: bool,
    block: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)``, deterministic; the dropout mask regenerated from ``seed``."""
    return _triton_backward(q, k, v, sep, out, lse, dout, _op_args(seed, dropout_p, allow_tf32, block))


@attention_bwd.register_fake
def _attention_bwd_fake(q, k, v, sep, out, lse, dout, seed, dropout_p, allow_tf32, block):  # noqa: ANN001, ANN202
    shape = tuple(q.shape)
    return q.new_empty(shape), q.new_empty(shape), q.new_empty(shape)


def _op_args(seed: torch.Tensor, dropout_p: float, allow_tf32: bool, block: int) -> _KernelArgs:
    return _KernelArgs(dropout_p=dropout_p, seed=seed.reshape(1), allow_tf32=allow_tf32, block=block or None)


def _attention_setup(ctx, inputs, output) -> None:  # noqa: ANN001 - custom-op autograd protocol
    q, k, v, sep, seed, dropout_p, allow_tf32, block = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, sep, seed, out, lse)
    ctx.scalars = (dropout_p, allow_tf32, block)


def _attention_backward(ctx, dout, dlse):  # noqa: ANN001, ANN202 - custom-op autograd protocol
    q, k, v, sep, seed, out, lse = ctx.saved_tensors
    dq, dk, dv = attention_bwd(q, k, v, sep, out, lse, dout.contiguous(), seed, *ctx.scalars)
    return dq, dk, dv, None, None, None, None, None


attention_fwd.register_autograd(_attention_backward, setup_context=_attention_setup)


def _kernel_support(q: torch.Tensor) -> tuple[bool, str]:
    """The kernel's own verdict on these inputs, for :func:`resolve_impl`."""
    if q.shape[3] not in SUPPORTED_HEAD_DIMS:
        return False, f"head dim {q.shape[3]} is not supported (expected one of {SUPPORTED_HEAD_DIMS})"
    if q.device.type == "cpu" and _HAVE_TRITON and not _INTERPRET:
        # spec §6.2: TRITON_INTERPRET counts when this module is imported, not at call time.
        return False, "glm_core.kernels.attention was imported before TRITON_INTERPRET=1 was set"
    return True, ""


def glm_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sep: torch.Tensor,
    dropout_p: float = 0.0,
    training: bool = False,
    seed: int | None = None,
    impl: str = "auto",
    *,
    allow_tf32: bool = False,
    block: int | None = None,
) -> torch.Tensor:
    """GLM self-attention ``softmax(mask(Q K^T / sqrt(D))) V`` with per-sample ``sep``.

    q, k, v: ``[B, H, T, D]`` (any strides); sep: integer ``[B]``, key ``j`` visible to query ``i``
    iff ``j < max(sep[b], i + 1)`` (values outside ``[0, T]`` act as the nearest end). Dropout on the
    probabilities only when ``training and dropout_p > 0``. Returns ``[B, H, T, D]`` in q's dtype.

    impl: "auto" | "triton" | "torch", resolved by :func:`glm_core.kernels.resolve_impl` ("auto"
    picks the kernel on CUDA only).

    Triton: fp16/bf16/fp32, D in :data:`SUPPORTED_HEAD_DIMS`, differentiable through
    :func:`attention_fwd` / :func:`attention_bwd` (torch custom ops) with a deterministic backward. The dropout mask is a function of
    ``seed`` (drawn from torch's generator of the inputs' device when None) and equals
    :func:`glm_attention_dropout_mask`. ``allow_tf32`` lets fp32 dots use TF32 (GPU; ~2e-3 error);
    ``block`` overrides every tile size (tests).

    Torch: :func:`glm_attention_reference` (eager GLM math) with torch's dropout RNG, or with the
    kernel's mask regenerated from ``seed`` when one is given.
    """
    _check_qkv(q, k, v, sep)
    if not 0.0 <= dropout_p < 1.0:
        raise InputError(f"dropout_p must be in [0, 1), got {dropout_p}")
    use_dropout = training and dropout_p > 0.0
    if seed is not None:
        _check_seed(seed)
    supported, reason = _kernel_support(q)
    which = resolve_impl(impl, q.device, q.dtype, OP_NAME, supported=supported, reason=reason)

    if which == "torch":
        if use_dropout and seed is not None:
            batch, heads, seq_len, _ = q.shape
            mask = glm_attention_dropout_mask(seed, batch, heads, seq_len, dropout_p, q.device)
            return glm_attention_reference(q, k, v, sep, dropout_mask=mask, dropout_p=dropout_p)
        return glm_attention_reference(q, k, v, sep, dropout_p=dropout_p if use_dropout else 0.0)

    sep = sep.to(device=q.device)  # the kernels read one sep per program
    if not use_dropout:
        seed_t = torch.zeros(1, dtype=torch.int64, device=q.device)
    elif seed is None:
        seed_t = torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64, device=q.device)  # the device's generator
    else:
        seed_t = torch.tensor([seed], dtype=torch.int64, device=q.device)
    out, _ = attention_fwd(q, k, v, sep, seed_t, dropout_p if use_dropout else 0.0, allow_tf32, block or 0)
    return out
