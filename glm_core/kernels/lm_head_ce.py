"""LM head + cross-entropy on the Part-B rows only, chunked over rows (spec fused_ops §5.1 op 4, §6 item 10).

    loss = mean over rows r with loss_mask[r] > 0 of  logsumexp(hidden[r] @ weight.T) - (hidden[r] @ weight.T)[target[r]]

GLM scores only Part-B tokens (glm_reference §5), so the rows with ``loss_mask > 0`` are gathered first and the
(tied-embedding) LM head runs on those alone. With ``loss_mask`` used as a 0/1 selector this equals the original
``sum(loss * mask) / sum(mask)``; a batch without scored rows gives a loss of 0 (not NaN) and zero gradients.

Triton path (``impl="triton"``): the ``n`` gathered rows are processed in chunks of ``chunk_vocab`` vocabulary
columns, so the only vocabulary-sized buffer is one ``[n, chunk_vocab]`` logits chunk (full logits never exist).
- forward, per chunk: ``logits = hidden_b @ weight[chunk].T`` with torch (cuBLAS) in the input dtype; one Triton
  program per row folds the chunk into the row's running max / sum of exponentials (fp32) and picks up the target
  logit. Saved for backward: the gathered rows, the targets and the per-row logsumexp ``[n]`` — nothing
  vocabulary-sized.
- backward, per chunk: the logits are recomputed (one extra GEMM), a Triton program per row overwrites them with
  ``d loss / d logits = (softmax - onehot(target)) * grad / n``, then ``grad_weight[chunk] = dlogits.T @ hidden_b``
  is written once (no accumulation over chunks, same rounding as eager) and
  ``grad_hidden += dlogits @ weight[chunk]`` accumulates in fp32 (``[n, h]``, small).
Chunking over the vocabulary rather than over rows is deliberate: row chunks must accumulate the ``[V, h]`` weight
gradient across chunks (an fp32 ``[V, h]`` buffer plus a read/write of it per chunk), which measured 1.2x slower
than eager at h=2048, V=50304 on an H200 and needs more memory.

The torch reference (``impl="torch"``) is the eager "gather, then linear + cross-entropy" peer: full logits for the
gathered rows, cross-entropy in fp32 (float64 for float64 inputs).
"""

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

OP_NAME = "partb_lm_head_ce"
DEFAULT_CHUNK_BYTES = 128 * 2**20  # logits buffer per chunk when chunk_vocab is not given
MIN_CHUNK_VOCAB = 2048  # keeps the chunk GEMMs efficient when many rows are scored
CHUNK_VOCAB_MULTIPLE = 256  # chunk widths that keep the [n, chunk] logits rows 16-byte aligned for cuBLAS


def partb_lm_head_ce(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    loss_mask: torch.Tensor,
    chunk_vocab: int | None = None,
    impl: str = "auto",
    return_count: bool = False,
    rows: torch.Tensor | None = None,
    validate: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, int]:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets`` over the rows with ``loss_mask > 0``.

    ``hidden``: ``[..., h]``; ``weight``: ``[V, h]`` (the tied word embedding); ``targets``, ``loss_mask``: ``[...]``
    (the leading shape of ``hidden``). ``chunk_vocab``: vocabulary columns per LM-head chunk (Triton path;
    default: :func:`default_chunk_vocab`, a ~128 MiB ``[n, chunk_vocab]`` logits buffer). ``impl``: "auto" | "triton" | "torch". Returns the scalar loss (fp32; float64 for
    float64 inputs), and with ``return_count`` also the number of scored rows.

    ``rows``: the flat indices of the scored rows, computed on the host with the batch; without it a ``nonzero``
    finds them here (a host sync). ``validate=False`` skips the target range check (a host sync too): the caller
    has checked the batch. With both, the op holds no host sync and ``torch.compile`` keeps it in one graph.
    """
    _check_inputs(hidden, weight, targets, loss_mask, chunk_vocab)
    hidden_size, vocab = hidden.shape[-1], weight.shape[0]
    if rows is None:
        rows = torch.nonzero(loss_mask.reshape(-1) > 0).squeeze(1)  # [n]; a host sync, needed for the gather
    count = rows.numel()
    hidden_b = hidden.reshape(-1, hidden_size).index_select(0, rows)  # [n, h] Part-B rows only (spec §6 item 10)
    targets_b = targets.reshape(-1).index_select(0, rows)  # [n]
    if validate and count > 0 and bool(((targets_b < 0) | (targets_b >= vocab)).any()):
        raise InputError(f"targets of scored rows must lie in [0, {vocab}) (the vocabulary size)")

    compute_dtype = _autocast_dtype(hidden)
    if compute_dtype is not None:
        # Under autocast, eager casts the LM head's matmul inputs to the autocast dtype, and autograd runs the
        # backward matmuls in that dtype too (fp32 accumulation in the GEMM). The custom op below is outside
        # autocast's op table, so the same contract is made explicit: cast hidden rows and weight here (the cast's
        # backward returns fp32 gradients to the fp32 master weights), then run with autocast off so forward and
        # all three backward matmuls use the autocast dtype, as eager's do.
        hidden_b, weight = hidden_b.to(compute_dtype), weight.to(compute_dtype)
    which = resolve_impl(impl, hidden.device, hidden_b.dtype, OP_NAME)
    if count == 0:
        # nothing to score: 0, still attached to the graph so backward gives zero gradients
        loss = hidden_b.sum() * 0.0 + weight.reshape(-1)[:0].sum()
        loss = loss.to(_loss_dtype(hidden_b.dtype))
    elif which == "torch":
        loss = partb_lm_head_ce_torch_gathered(hidden_b, weight, targets_b)
    else:
        if chunk_vocab is None:
            chunk_vocab = default_chunk_vocab(count, hidden.element_size())
        with torch.autocast(hidden.device.type, enabled=False):
            loss = lm_head_ce_fwd(hidden_b, weight, targets_b, min(int(chunk_vocab), vocab))[0]
    return (loss, count) if return_count else loss


def _autocast_dtype(hidden: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast would give this op's matmuls, or ``None`` outside autocast (or for non-fp32 inputs,
    which autocast leaves alone)."""
    device_type = hidden.device.type
    if hidden.dtype != torch.float32 or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def partb_lm_head_ce_torch(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    loss_mask: torch.Tensor,
    chunk_vocab: int | None = None,
    return_count: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, int]:
    """Eager reference of :func:`partb_lm_head_ce` (gather, full logits of the gathered rows, cross-entropy)."""
    return partb_lm_head_ce(hidden, weight, targets, loss_mask, chunk_vocab, impl="torch", return_count=return_count)


def partb_lm_head_ce_torch_gathered(hidden_b: torch.Tensor, weight: torch.Tensor, targets_b: torch.Tensor):
    """Eager LM head + mean cross-entropy on already gathered rows ``hidden_b [n, h]``, ``targets_b [n]``."""
    logits = hidden_b @ weight.T  # [n, V] in the input dtype
    return F.cross_entropy(logits.to(_loss_dtype(logits.dtype)), targets_b)


def default_chunk_vocab(rows: int, element_size: int) -> int:
    """Vocabulary columns per chunk: a ~128 MiB logits buffer, a multiple of 256, at least 2048.

    Measured on an H200 (h=1024, V=30592, 2949 rows): a 11378-column chunk (unaligned rows) ran 1.6x slower than
    8192 columns; more, narrower chunks also cost time (each chunk re-reads hidden_b in three GEMMs).
    """
    columns = DEFAULT_CHUNK_BYTES // (max(rows, 1) * element_size)
    return max(MIN_CHUNK_VOCAB, columns // CHUNK_VOCAB_MULTIPLE * CHUNK_VOCAB_MULTIPLE)


def _loss_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # fp32, or float64 for float64 inputs


def _check_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    loss_mask: torch.Tensor,
    chunk_vocab: int | None,
) -> None:
    if hidden.dim() < 2 or weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise InputError(
            f"expected hidden [..., h] and weight [V, h] with the same h, got {tuple(hidden.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype:
        raise InputError(f"weight dtype {weight.dtype} must equal hidden dtype {hidden.dtype}")
    leading = tuple(hidden.shape[:-1])
    if tuple(targets.shape) != leading or tuple(loss_mask.shape) != leading:
        raise InputError(
            f"targets and loss_mask must have hidden's leading shape {leading}, "
            f"got {tuple(targets.shape)} and {tuple(loss_mask.shape)}"
        )
    if targets.dtype not in (torch.int32, torch.int64):
        raise InputError(f"targets must be int32 or int64 token ids, got {targets.dtype}")
    if chunk_vocab is not None and chunk_vocab < 1:
        raise InputError(f"chunk_vocab must be >= 1, got {chunk_vocab}")


def _block_v(chunk_vocab: int) -> int:
    return min(triton.next_power_of_2(chunk_vocab), 4096)


def _chunks(vocab: int, chunk_vocab: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_vocab, vocab)) for start in range(0, vocab, chunk_vocab)]


# The kernel as torch custom ops, kept whole by torch.compile (fake implementations give the shapes; the backward
# op is the forward op's autograd formula).
@torch.library.custom_op("glm::partb_lm_head_ce_fwd", mutates_args=())
def lm_head_ce_fwd(
    hidden_b: torch.Tensor, weight: torch.Tensor, targets_b: torch.Tensor, chunk_vocab: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean loss fp32 [], lse [n] fp32)`` over the gathered rows, one ``[n, chunk_vocab]`` logits chunk at a time."""
    n = hidden_b.shape[0]
    vocab = weight.shape[0]
    device = hidden_b.device
    targets_b = targets_b.contiguous()
    running_max = torch.empty(n, dtype=torch.float32, device=device)
    running_sum = torch.empty(n, dtype=torch.float32, device=device)
    target_logit = torch.zeros(n, dtype=torch.float32, device=device)
    block_v = _block_v(chunk_vocab)
    for index, (start, end) in enumerate(_chunks(vocab, chunk_vocab)):
        logits = torch.mm(hidden_b, weight[start:end].T)  # [n, c]: the only vocabulary-sized buffer
        _ce_lse_chunk_kernel[(n,)](
            logits, targets_b, running_max, running_sum, target_logit, start, end - start,
            FIRST_CHUNK=index == 0, NUM_BLOCKS=triton.cdiv(chunk_vocab, block_v), BLOCK_V=block_v,
            num_warps=8 if block_v >= 2048 else 4,
        )  # fmt: skip
    lse = running_max + torch.log(running_sum)  # [n]
    return (lse - target_logit).sum() / n, lse


@lm_head_ce_fwd.register_fake
def _lm_head_ce_fwd_fake(hidden_b, weight, targets_b, chunk_vocab):  # noqa: ANN001, ANN202
    n = hidden_b.shape[0]
    return hidden_b.new_empty((), dtype=torch.float32), hidden_b.new_empty((n,), dtype=torch.float32)


@torch.library.custom_op("glm::partb_lm_head_ce_bwd", mutates_args=())
def lm_head_ce_bwd(
    hidden_b: torch.Tensor,
    weight: torch.Tensor,
    targets_b: torch.Tensor,
    lse: torch.Tensor,
    grad_loss: torch.Tensor,
    chunk_vocab: int,
    need_dh: bool,
    need_dw: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d hidden_b, d weight)``, logits recomputed chunk by chunk; a gradient not needed is an empty ``[0]``."""
    n = hidden_b.shape[0]
    vocab = weight.shape[0]
    grad_scale = (grad_loss.float() / n).reshape(1)  # stays on the device: no host sync
    grad_hidden = torch.zeros(hidden_b.shape, dtype=torch.float32, device=hidden_b.device) if need_dh else None
    grad_weight = torch.empty_like(weight) if need_dw else weight.new_empty((0,))
    block_v = _block_v(chunk_vocab)
    for start, end in _chunks(vocab, chunk_vocab):
        logits = torch.mm(hidden_b, weight[start:end].T)  # [n, c], recomputed
        _ce_grad_chunk_kernel[(n,)](
            logits, targets_b, lse, grad_scale, start, end - start,
            NUM_BLOCKS=triton.cdiv(chunk_vocab, block_v),
            ROUND_BF16=round_bf16_in_interpreter(logits.dtype), BLOCK_V=block_v,
            num_warps=8 if block_v >= 2048 else 4,
        )  # fmt: skip
        # logits now holds d loss / d logits of this chunk
        if need_dw:
            torch.mm(logits.T, hidden_b, out=grad_weight[start:end])  # [c, h], written once
        if grad_hidden is not None:
            grad_hidden += torch.mm(logits, weight[start:end])  # [n, h], fp32 accumulation
    d_hidden = hidden_b.new_empty((0,)) if grad_hidden is None else grad_hidden.to(hidden_b.dtype)
    return d_hidden, grad_weight


@lm_head_ce_bwd.register_fake
def _lm_head_ce_bwd_fake(hidden_b, weight, targets_b, lse, grad_loss, chunk_vocab, need_dh, need_dw):  # noqa: ANN001, ANN202
    d_hidden = hidden_b.new_empty(hidden_b.shape) if need_dh else hidden_b.new_empty((0,))
    return d_hidden, (weight.new_empty(weight.shape) if need_dw else weight.new_empty((0,)))


def _lm_head_ce_setup(ctx, inputs, output) -> None:  # noqa: ANN001 - custom-op autograd protocol
    hidden_b, weight, targets_b, chunk_vocab = inputs
    ctx.save_for_backward(hidden_b, weight, targets_b, output[1])
    ctx.chunk_vocab = chunk_vocab


def _lm_head_ce_backward(ctx, grad_loss, grad_lse):  # noqa: ANN001, ANN202 - custom-op autograd protocol
    hidden_b, weight, targets_b, lse = ctx.saved_tensors
    need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    d_hidden, d_weight = lm_head_ce_bwd(hidden_b, weight, targets_b, lse, grad_loss, ctx.chunk_vocab, need_dh, need_dw)
    return (d_hidden if need_dh else None), (d_weight if need_dw else None), None, None


lm_head_ce_fwd.register_autograd(_lm_head_ce_backward, setup_context=_lm_head_ce_setup)


# --------------------------------------------------------------------------------------------------------------------
# Triton kernels (Triton 3.6 subset; only constexpr loop bounds)

if triton is not None:

    @triton.jit
    def _ce_lse_chunk_kernel(
        LOGITS, TARGETS, RUNNING_MAX, RUNNING_SUM, TARGET_LOGIT, col_start, chunk_cols,
        FIRST_CHUNK: tl.constexpr, NUM_BLOCKS: tl.constexpr, BLOCK_V: tl.constexpr,
    ):  # fmt: skip
        """Fold one row of a ``[n, chunk_cols]`` logits chunk into the row's running max / sum of exp (fp32)."""
        row = tl.program_id(0).to(tl.int64)
        row_ptr = LOGITS + row * chunk_cols
        target = tl.load(TARGETS + row) - col_start  # target's column inside this chunk ...
        target = tl.where((target >= 0) & (target < chunk_cols), target, -1)  # ... or -1: not in this chunk
        cols = tl.arange(0, BLOCK_V)
        # block 0 peeled so the running max starts finite (no -inf - -inf); chunk_cols >= 1
        x = tl.load(row_ptr + cols, mask=cols < chunk_cols, other=float("-inf")).to(tl.float32)
        chunk_max = tl.max(x, axis=0)
        chunk_sum = tl.sum(tl.exp(x - chunk_max), axis=0)
        chunk_target = tl.sum(tl.where(cols == target, x, 0.0), axis=0)
        for b in range(1, NUM_BLOCKS):  # blocks past chunk_cols are fully masked and add exp(-inf) = 0
            v = b * BLOCK_V + cols
            x = tl.load(row_ptr + v, mask=v < chunk_cols, other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(chunk_max, tl.max(x, axis=0))
            chunk_sum = chunk_sum * tl.exp(chunk_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
            chunk_max = new_max
            chunk_target += tl.sum(tl.where(v == target, x, 0.0), axis=0)
        if FIRST_CHUNK:
            tl.store(RUNNING_MAX + row, chunk_max)
            tl.store(RUNNING_SUM + row, chunk_sum)
        else:
            old_max = tl.load(RUNNING_MAX + row)
            old_sum = tl.load(RUNNING_SUM + row)
            new_max = tl.maximum(old_max, chunk_max)
            tl.store(RUNNING_MAX + row, new_max)
            tl.store(RUNNING_SUM + row, old_sum * tl.exp(old_max - new_max) + chunk_sum * tl.exp(chunk_max - new_max))
        tl.store(TARGET_LOGIT + row, tl.load(TARGET_LOGIT + row) + chunk_target)  # one chunk holds the target

    @triton.jit
    def _ce_grad_chunk_kernel(
        LOGITS, TARGETS, LSE, GRAD_SCALE, col_start, chunk_cols,
        NUM_BLOCKS: tl.constexpr, ROUND_BF16: tl.constexpr, BLOCK_V: tl.constexpr,
    ):  # fmt: skip
        """Overwrite one row of a logits chunk with ``(softmax - onehot(target)) * GRAD_SCALE``."""
        row = tl.program_id(0).to(tl.int64)
        row_ptr = LOGITS + row * chunk_cols
        target = tl.load(TARGETS + row) - col_start
        target = tl.where((target >= 0) & (target < chunk_cols), target, -1)  # -1: not in this chunk
        lse = tl.load(LSE + row)
        scale = tl.load(GRAD_SCALE)
        cols = tl.arange(0, BLOCK_V)
        for b in range(0, NUM_BLOCKS):
            v = b * BLOCK_V + cols
            x = tl.load(row_ptr + v, mask=v < chunk_cols, other=0.0).to(tl.float32)
            g = (tl.exp(x - lse) - tl.where(v == target, 1.0, 0.0)) * scale
            if ROUND_BF16:
                g = rne_bf16(g)
            tl.store(row_ptr + v, g.to(LOGITS.dtype.element_ty), mask=v < chunk_cols)
