"""LM head + cross-entropy on the Part-B rows only, chunked over rows (spec fused_ops §5.1 op 4, §6 item 10).

    loss = mean over rows r with loss_mask[r] > 0 of  logsumexp(hidden[r] @ weight.T) - (hidden[r] @ weight.T)[target[r]]

GLM scores only Part-B tokens (glm_reference §5), so the rows with ``loss_mask > 0`` are gathered first and the
(tied-embedding) LM head runs on those alone. With ``loss_mask`` used as a 0/1 selector this equals the original
``sum(loss * mask) / sum(mask)``; a batch without scored rows gives a loss of 0 (not NaN) and zero gradients.

Triton path (``impl="triton"``), per chunk of ``chunk_rows`` gathered rows:
1. ``logits = hidden_chunk @ weight.T`` with torch (cuBLAS), in the input dtype — ``[chunk, V]``, the only
   vocabulary-sized buffer; full logits for all rows never exist.
2. one Triton program per row: two passes over the vocabulary in ``BLOCK_V`` blocks — running max and sum of
   exponentials in fp32 (logsumexp), the target logit, the row loss; then, if gradients are needed, overwrite the
   logits in place with ``d loss / d logits = (softmax - onehot(target)) / n``.
3. ``grad_hidden[chunk] = dlogits @ weight`` and ``grad_weight += dlogits.T @ hidden_chunk`` (fp32 accumulator).
Gradients are thus computed during the forward (no logits kept for backward); backward only scales them by the
upstream gradient. Without ``requires_grad`` inputs (evaluation) step 3 and the gradient pass are skipped.

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
DEFAULT_CHUNK_BYTES = 64 * 2**20  # logits buffer per chunk when chunk_rows is not given


def partb_lm_head_ce(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    loss_mask: torch.Tensor,
    chunk_rows: int | None = None,
    impl: str = "auto",
    return_count: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, int]:
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets`` over the rows with ``loss_mask > 0``.

    ``hidden``: ``[..., h]``; ``weight``: ``[V, h]`` (the tied word embedding); ``targets``, ``loss_mask``: ``[...]``
    (the leading shape of ``hidden``). ``chunk_rows``: gathered rows per LM-head chunk (Triton path; default: a
    ~64 MiB logits buffer). ``impl``: "auto" | "triton" | "torch". Returns the scalar loss (fp32; float64 for
    float64 inputs), and with ``return_count`` also the number of scored rows.
    """
    _check_inputs(hidden, weight, targets, loss_mask, chunk_rows)
    hidden_size, vocab = hidden.shape[-1], weight.shape[0]
    rows = torch.nonzero(loss_mask.reshape(-1) > 0).squeeze(1)  # [n]; one host sync, needed for the gather
    count = rows.numel()
    hidden_b = hidden.reshape(-1, hidden_size)[rows]  # [n, h] Part-B rows only (spec §6 item 10)
    targets_b = targets.reshape(-1)[rows]  # [n]
    if count > 0 and bool(((targets_b < 0) | (targets_b >= vocab)).any()):
        raise InputError(f"targets of scored rows must lie in [0, {vocab}) (the vocabulary size)")

    which = resolve_impl(impl, hidden.device, hidden.dtype, OP_NAME)
    if count == 0:
        # nothing to score: 0, still attached to the graph so backward gives zero gradients
        loss = hidden_b.sum() * 0.0 + weight.reshape(-1)[:0].sum()
        loss = loss.to(_loss_dtype(hidden.dtype))
    elif which == "torch":
        loss = partb_lm_head_ce_torch_gathered(hidden_b, weight, targets_b)
    else:
        if chunk_rows is None:
            chunk_rows = max(1, DEFAULT_CHUNK_BYTES // (vocab * hidden.element_size()))
        loss = _PartBLMHeadCE.apply(hidden_b, weight, targets_b, int(chunk_rows))
    return (loss, count) if return_count else loss


def partb_lm_head_ce_torch(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    loss_mask: torch.Tensor,
    chunk_rows: int | None = None,
    return_count: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, int]:
    """Eager reference of :func:`partb_lm_head_ce` (gather, full logits of the gathered rows, cross-entropy)."""
    return partb_lm_head_ce(hidden, weight, targets, loss_mask, chunk_rows, impl="torch", return_count=return_count)


def partb_lm_head_ce_torch_gathered(hidden_b: torch.Tensor, weight: torch.Tensor, targets_b: torch.Tensor):
    """Eager LM head + mean cross-entropy on already gathered rows ``hidden_b [n, h]``, ``targets_b [n]``."""
    logits = hidden_b @ weight.T  # [n, V] in the input dtype
    return F.cross_entropy(logits.to(_loss_dtype(logits.dtype)), targets_b)


def _loss_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # fp32, or float64 for float64 inputs


def _check_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    loss_mask: torch.Tensor,
    chunk_rows: int | None,
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
    if chunk_rows is not None and chunk_rows < 1:
        raise InputError(f"chunk_rows must be >= 1, got {chunk_rows}")


def _block_v(vocab: int) -> int:
    return min(triton.next_power_of_2(vocab), 4096)


class _PartBLMHeadCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_b, weight, targets_b, chunk_rows):
        n, _ = hidden_b.shape
        vocab = weight.shape[0]
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        write_grad = need_dh or need_dw
        row_losses = torch.empty(n, dtype=torch.float32, device=hidden_b.device)
        grad_hidden = torch.empty_like(hidden_b) if need_dh else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_dw else None
        block_v = _block_v(vocab)
        targets_b = targets_b.contiguous()
        for start in range(0, n, chunk_rows):
            end = min(start + chunk_rows, n)
            hidden_chunk = hidden_b[start:end]  # [c, h]
            logits = torch.mm(hidden_chunk, weight.T)  # [c, V]; the only vocabulary-sized buffer
            _ce_rows_kernel[(end - start,)](
                logits, targets_b[start:end], row_losses[start:end], vocab, 1.0 / n,
                NUM_BLOCKS=triton.cdiv(vocab, block_v), WRITE_GRAD=write_grad,
                ROUND_BF16=round_bf16_in_interpreter(logits.dtype), BLOCK_V=block_v,
                num_warps=8 if block_v >= 2048 else 4,
            )  # fmt: skip
            # logits now holds d loss / d logits for these rows
            if need_dh:
                torch.mm(logits, weight, out=grad_hidden[start:end])  # [c, h]
            if need_dw:
                grad_weight += torch.mm(logits.T, hidden_chunk)  # [V, h], accumulated in fp32
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return row_losses.sum() / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        # scale in fp32: a loss scale such as 1 / accumulation_steps must not be rounded to bf16 first
        d_hidden = None if grad_hidden is None else (grad_hidden.float() * grad_loss).to(grad_hidden.dtype)
        d_weight = None if grad_weight is None else (grad_weight * grad_loss).to(ctx.weight_dtype)
        return d_hidden, d_weight, None, None


# --------------------------------------------------------------------------------------------------------------------
# Triton kernel (Triton 3.6 subset; only constexpr loop bounds)

if triton is not None:

    @triton.jit
    def _ce_rows_kernel(
        LOGITS, TARGETS, LOSSES, vocab, grad_scale,
        NUM_BLOCKS: tl.constexpr, WRITE_GRAD: tl.constexpr, ROUND_BF16: tl.constexpr, BLOCK_V: tl.constexpr,
    ):  # fmt: skip
        """One row of ``LOGITS [rows, vocab]``: loss = logsumexp - logit[target]; optionally logits <- d loss."""
        row = tl.program_id(0).to(tl.int64)
        row_ptr = LOGITS + row * vocab
        target = tl.load(TARGETS + row)
        cols = tl.arange(0, BLOCK_V)

        # pass 1: running max / sum of exp (fp32) and the target logit; block 0 peeled so no -inf arithmetic
        x = tl.load(row_ptr + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
        running_max = tl.max(x, axis=0)
        running_sum = tl.sum(tl.exp(x - running_max), axis=0)
        target_logit = tl.sum(tl.where(cols == target, x, 0.0), axis=0)
        for b in range(1, NUM_BLOCKS):
            v = b * BLOCK_V + cols
            x = tl.load(row_ptr + v, mask=v < vocab, other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(running_max, tl.max(x, axis=0))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
            running_max = new_max
            target_logit += tl.sum(tl.where(v == target, x, 0.0), axis=0)
        lse = running_max + tl.log(running_sum)
        tl.store(LOSSES + row, lse - target_logit)

        # pass 2: d loss / d logits = (softmax - onehot(target)) * grad_scale, written over the logits
        if WRITE_GRAD:
            for b in range(0, NUM_BLOCKS):
                v = b * BLOCK_V + cols
                x = tl.load(row_ptr + v, mask=v < vocab, other=0.0).to(tl.float32)
                g = (tl.exp(x - lse) - tl.where(v == target, 1.0, 0.0)) * grad_scale
                if ROUND_BF16:
                    g = rne_bf16(g)
                tl.store(row_ptr + v, g.to(LOGITS.dtype.element_ty), mask=v < vocab)
