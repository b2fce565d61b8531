"""partb_lm_head_ce: chunked Triton CE path vs a float64 reference written out from the definition (spec §5.3).

The float64 oracle is ``logsumexp(h W^T) - (h W^T)[target]`` averaged over the rows with ``loss_mask > 0`` (no
``F.cross_entropy``); eager "gather, then linear + CE" (``impl="torch"``) in the kernel's dtype sets the fp16/bf16
bar for the loss and the hidden gradient; the weight gradient (a sum over rows) is checked against float64 only.
"""

from __future__ import annotations

import math

import pytest
import torch

from glm_core.errors import InputError
from glm_core.kernels import partb_lm_head_ce
from tests.kernels.tolerances import assert_close_to_reference

pytestmark = pytest.mark.triton

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HIDDEN = 64


def partb_ce_float64(hidden, weight, targets, loss_mask):
    """Mean over scored rows of logsumexp(logits) - logits[target], written out in float64."""
    h = hidden.reshape(-1, hidden.shape[-1])
    logits = h @ weight.T  # [rows, V]
    row_loss = torch.logsumexp(logits, dim=-1) - logits.gather(1, targets.reshape(-1, 1)).squeeze(1)
    scored = (loss_mask.reshape(-1) > 0).to(logits.dtype)
    return (row_loss * scored).sum() / scored.sum()


def _inputs(vocab: int, dtype: torch.dtype, device: torch.device, seed: int = 0, batch=(2, 12)):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*batch, HIDDEN, generator=g)
    weight = 0.15 * torch.randn(vocab, HIDDEN, generator=g)  # logits with std ~1.2
    targets = torch.randint(0, vocab, batch, generator=g)
    loss_mask = (torch.rand(batch, generator=g) < 0.5).long()
    loss_mask[0, -1] = 1  # at least one scored row
    return (
        hidden.to(device=device, dtype=dtype).requires_grad_(),
        weight.to(device=device, dtype=dtype).requires_grad_(),
        targets.to(device),
        loss_mask.to(device),
    )


def _run(fn, hidden, weight, targets, loss_mask, upstream: float = 1.7):
    loss = fn(hidden, weight, targets, loss_mask)
    d_hidden, d_weight = torch.autograd.grad(loss * upstream, (hidden, weight))
    return {"loss": loss, "d_hidden": d_hidden, "d_weight": d_weight}


def _leaf(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.detach().to(dtype).requires_grad_()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("vocab", [1000, 1023])
def test_matches_float64_reference(dtype, vocab, device, poisoned_empty):
    hidden, weight, targets, loss_mask = _inputs(vocab, dtype, device)
    # chunk_vocab=300: three full vocabulary chunks and a partial one
    kernel = _run(lambda *a: partb_lm_head_ce(*a, chunk_vocab=300, impl="triton"), hidden, weight, targets, loss_mask)
    ref = _run(partb_ce_float64, _leaf(hidden, torch.float64), _leaf(weight, torch.float64), targets, loss_mask)
    eager = _run(lambda *a: partb_lm_head_ce(*a, impl="torch"), _leaf(hidden, dtype), _leaf(weight, dtype),
                 targets, loss_mask)  # fmt: skip
    assert kernel["loss"].dtype == torch.float32 and kernel["loss"].dim() == 0
    assert kernel["d_hidden"].dtype == kernel["d_weight"].dtype == dtype
    # the loss is a float32 scalar computed from `dtype` logits: it gets the `dtype` bar
    assert_close_to_reference("loss", kernel["loss"], ref["loss"], kind="output", eager=eager["loss"], dtype=dtype)
    assert_close_to_reference("d_hidden", kernel["d_hidden"], ref["d_hidden"], kind="output", eager=eager["d_hidden"])
    assert_close_to_reference("d_weight", kernel["d_weight"], ref["d_weight"], kind="reduced")
    # rows outside the loss mask get exactly zero gradient
    unscored = loss_mask == 0
    assert torch.all(kernel["d_hidden"][unscored] == 0)


def test_uniform_logits_give_log_vocab(device):
    # zero weights: every logit is 0, softmax is uniform, the loss is log(V) whatever the targets
    vocab = 1000
    hidden, _, targets, loss_mask = _inputs(vocab, torch.float32, device)
    weight = torch.zeros(vocab, HIDDEN, device=device)
    loss, count = partb_lm_head_ce(
        hidden, weight, targets, loss_mask, chunk_vocab=256, impl="triton", return_count=True
    )
    assert count == int((loss_mask > 0).sum())
    assert abs(loss.item() - math.log(vocab)) < 1e-6


def test_chunk_size_does_not_change_the_result(device):
    hidden, weight, targets, loss_mask = _inputs(513, torch.float32, device)
    results = [
        _run(lambda *a, c=c: partb_lm_head_ce(*a, chunk_vocab=c, impl="triton"), hidden, weight, targets, loss_mask)
        for c in (64, 100, 513)  # 9, 6 and 1 chunks
    ]
    for other in results[1:]:
        for name in ("loss", "d_hidden", "d_weight"):
            torch.testing.assert_close(other[name], results[0][name], rtol=1e-6, atol=1e-7)


def test_never_builds_logits_wider_than_one_chunk(device, monkeypatch):
    hidden, weight, targets, loss_mask = _inputs(700, torch.float32, device, batch=(4, 16))
    scored = int((loss_mask > 0).sum())
    real_mm, shapes = torch.mm, []

    def recording_mm(a, b, *args, **kwargs):
        shapes.append((a.shape[0], b.shape[1]))
        return real_mm(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "mm", recording_mm)
    partb_lm_head_ce(hidden, weight, targets, loss_mask, chunk_vocab=256, impl="triton").backward()
    logits_shapes = [s for s in shapes if s[0] == scored and s[1] != HIDDEN]  # hidden_b @ weight[chunk].T
    # 3 chunks (256, 256, 188) in the forward, recomputed once in the backward
    assert logits_shapes == [(scored, 256), (scored, 256), (scored, 188)] * 2
    assert all(cols <= 256 for _, cols in shapes)


def test_target_in_a_later_chunk_is_not_read_from_the_block_padding(device):
    # chunk_vocab=300 runs 512-wide blocks: target 350 sits at column 350 of chunk 0's padded block (masked there)
    hidden, weight, _, loss_mask = _inputs(600, torch.float32, device)
    targets = torch.full(loss_mask.shape, 350, device=device)
    out = _run(lambda *a: partb_lm_head_ce(*a, chunk_vocab=300, impl="triton"), hidden, weight, targets, loss_mask)
    ref = _run(partb_ce_float64, _leaf(hidden, torch.float64), _leaf(weight, torch.float64), targets, loss_mask)
    for name, kind in (("loss", "output"), ("d_hidden", "output"), ("d_weight", "reduced")):
        assert_close_to_reference(name, out[name], ref[name], kind=kind)


def test_no_scored_rows_gives_zero_loss_and_zero_grads(device):
    hidden, weight, targets, loss_mask = _inputs(300, torch.float32, device)
    out = _run(lambda *a: partb_lm_head_ce(*a, impl="triton"), hidden, weight, targets, torch.zeros_like(loss_mask))
    assert out["loss"].item() == 0.0
    assert torch.all(out["d_hidden"] == 0) and torch.all(out["d_weight"] == 0)


def test_forward_only_when_nothing_requires_grad(device):
    hidden, weight, targets, loss_mask = _inputs(1000, torch.float32, device)
    with torch.no_grad():
        loss = partb_lm_head_ce(hidden, weight, targets, loss_mask, chunk_vocab=300, impl="triton")
    expected = partb_ce_float64(hidden.double(), weight.double(), targets, loss_mask)
    assert_close_to_reference("loss", loss, expected, kind="output")


def test_rejects_bad_targets_and_shapes():
    hidden, weight = torch.randn(2, 3, 8), torch.randn(10, 8)
    mask = torch.ones(2, 3)
    with pytest.raises(InputError, match=r"targets of scored rows must lie in \[0, 10\)"):
        partb_lm_head_ce(hidden, weight, torch.full((2, 3), 10), mask, impl="torch")
    with pytest.raises(InputError, match="leading shape"):
        partb_lm_head_ce(hidden, weight, torch.zeros(2, 4, dtype=torch.long), mask, impl="torch")
    with pytest.raises(InputError, match="same h"):
        partb_lm_head_ce(hidden, torch.randn(10, 7), torch.zeros(2, 3, dtype=torch.long), mask, impl="torch")


# ------------------------------------------------------------------------------------------------ autocast
class _MatmulDtypes(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the input dtypes of every matmul (mm / addmm / bmm) dispatched while active, and of the operands
    (hidden rows, weight) of the fused op's custom ops, whose matmuls run inside them in those operands' dtype."""

    MATMULS = ("aten.mm", "aten.addmm", "aten.bmm")
    FUSED = ("glm.partb_lm_head_ce_fwd", "glm.partb_lm_head_ce_bwd")

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in self.MATMULS:
            self.seen.append((name, args[-1].dtype))
        elif name in self.FUSED:
            self.seen.extend((name, operand.dtype) for operand in args[:2])
        return func(*args, **(kwargs or {}))


def _autocast_run(impl: str, hidden, weight, targets, loss_mask, dtype: torch.dtype):
    recorder = _MatmulDtypes()
    with recorder:
        with torch.autocast(hidden.device.type, dtype=dtype):
            loss = partb_lm_head_ce(hidden, weight, targets, loss_mask, impl=impl, chunk_vocab=256)
        d_hidden, d_weight = torch.autograd.grad(loss, (hidden, weight))
    return loss, d_hidden, d_weight, [d for _, d in recorder.seen]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_runs_the_fused_op_matmuls_in_the_autocast_dtype_as_eager(device, dtype):
    """Under autocast the fused op's forward and its three backward matmuls (recomputed logits, d weight,
    d hidden) take the autocast dtype, as eager's matmuls do; gradients come back in fp32 for fp32 master weights
    and track the fp32 reference as closely as eager's."""
    if device.type == "cpu" and dtype == torch.float16:
        pytest.skip("CPU autocast has no fp16 matmul policy")
    hidden, weight, targets, loss_mask = _inputs(1000, torch.float32, device)
    eager = _autocast_run(
        "torch", _leaf(hidden, torch.float32), _leaf(weight, torch.float32), targets, loss_mask, dtype
    )
    fused = _autocast_run(
        "triton", _leaf(hidden, torch.float32), _leaf(weight, torch.float32), targets, loss_mask, dtype
    )
    assert eager[3] and set(eager[3]) == {dtype}  # eager: forward + 2 backward matmuls in the autocast dtype
    assert len(fused[3]) >= 3 and set(fused[3]) == {dtype}  # fused: forward chunk(s) + recompute + 2 backward
    assert fused[1].dtype == fused[2].dtype == torch.float32  # fp32 master gradients, as eager's

    ref = _run(partb_ce_float64, _leaf(hidden, torch.float64), _leaf(weight, torch.float64), targets, loss_mask, 1.0)
    for k, key in ((0, "loss"), (1, "d_hidden"), (2, "d_weight")):
        err_eager = (eager[k].double() - ref[key]).abs().max().item()
        err_fused = (fused[k].double() - ref[key]).abs().max().item()
        scale = ref[key].abs().max().item()
        # the fused op rounds like eager (same dtype at the same matmuls): within 2x of eager's own error
        assert err_fused <= 2.0 * err_eager + 1e-3 * scale, (key, err_fused, err_eager)
