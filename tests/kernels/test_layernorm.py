"""add_dropout_layernorm: Triton kernel vs a float64 torch reference (spec fused_ops §5.3).

Forward outputs and every gradient (x, residual, weight, bias) with random upstream gradients for both outputs;
eager PyTorch in the kernel's dtype sets the fp16/bf16 bar; dW/dB are checked against float64 only.
"""

from __future__ import annotations

import pytest
import torch

from glm_core.errors import InputError
from glm_core.kernels import add_dropout_layernorm
from glm_core.kernels.layernorm import add_dropout_layernorm_torch, dropout_keep_mask
from tests.kernels.tolerances import assert_close_to_reference

pytestmark = pytest.mark.triton

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ROWS = 6  # [2, 3, hidden] inputs: 6 program instances forward


def _inputs(hidden: int, dtype: torch.dtype, device: torch.device, with_residual: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, hidden, generator=g)
    residual = torch.randn(2, 3, hidden, generator=g) if with_residual else None
    weight = 1.0 + 0.2 * torch.randn(hidden, generator=g)
    bias = 0.2 * torch.randn(hidden, generator=g)
    dy = torch.randn(2, 3, hidden, generator=g)
    dres = torch.randn(2, 3, hidden, generator=g)
    leaves = [t if t is None else t.to(device=device, dtype=dtype).requires_grad_() for t in (x, residual)]
    params = [t.to(device=device, dtype=dtype).requires_grad_() for t in (weight, bias)]
    return leaves + params, dy.to(device=device, dtype=dtype), dres.to(device=device, dtype=dtype)


def _run(fn, tensors, dy, dres, **kwargs):
    """Outputs and grads of (y * dy).sum() + (new_residual * dres).sum(), grads in (x, residual, weight, bias) order."""
    x, residual, weight, bias = tensors
    y, new_residual = fn(x, residual, weight, bias, **kwargs)
    loss = (y * dy.to(y.dtype)).sum() + (new_residual * dres.to(y.dtype)).sum()
    names = [name for name, t in zip(("x", "residual", "weight", "bias"), tensors, strict=True) if t is not None]
    grads = torch.autograd.grad(loss, [t for t in tensors if t is not None])
    return {"y": y, "new_residual": new_residual, **{"d" + n: g for n, g in zip(names, grads, strict=True)}}


def _as(tensors, dtype):
    return [None if t is None else t.detach().to(dtype).requires_grad_() for t in tensors]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("hidden", [1000, 1023])
@pytest.mark.parametrize(
    ("with_residual", "dropout_p"),
    [(False, 0.0), (True, 0.0), (True, 0.1), (False, 0.25)],
    ids=["plain_ln", "residual", "residual_dropout", "dropout_only"],
)
def test_matches_float64_reference(dtype, hidden, with_residual, dropout_p, device, poisoned_empty):
    tensors, dy, dres = _inputs(hidden, dtype, device, with_residual)
    seed = 1234
    kernel = _run(
        add_dropout_layernorm, tensors, dy, dres, dropout_p=dropout_p, training=True, seed=seed, impl="triton"
    )
    # the reference runs with the kernel's own dropout mask (spec §5.3, dropout iii)
    mask = dropout_keep_mask(tensors[0].shape, dropout_p, seed, device) if dropout_p > 0 else None
    common = dict(dropout_p=dropout_p, training=True, dropout_mask=mask)
    ref = _run(add_dropout_layernorm_torch, _as(tensors, torch.float64), dy, dres, **common)
    eager = _run(add_dropout_layernorm_torch, _as(tensors, dtype), dy, dres, **common)

    assert set(kernel) == set(ref)
    for name in kernel:
        assert kernel[name].dtype == dtype, name
        kind = "reduced" if name in ("dweight", "dbias") else "output"
        assert_close_to_reference(name, kernel[name], ref[name], kind=kind, eager=eager[name])


def test_plain_layernorm_returns_x_as_new_residual(device):
    (x, _, weight, bias), _, _ = _inputs(1000, torch.float32, device, with_residual=False)
    y, new_residual = add_dropout_layernorm(x, None, weight, bias, impl="triton")
    assert new_residual is x
    expected = torch.nn.functional.layer_norm(x.double(), (1000,), weight.double(), bias.double(), 1e-5)
    assert_close_to_reference("y", y, expected, kind="output")


def test_eval_mode_ignores_dropout_p(device):
    (x, residual, weight, bias), _, _ = _inputs(1023, torch.float32, device, with_residual=True)
    y_eval, s_eval = add_dropout_layernorm(x, residual, weight, bias, dropout_p=0.5, training=False, impl="triton")
    y_plain, s_plain = add_dropout_layernorm(x, residual, weight, bias, dropout_p=0.0, impl="triton")
    assert torch.equal(y_eval, y_plain) and torch.equal(s_eval, s_plain)


@pytest.mark.parametrize("hidden", [1000, 1023], ids=["4_draws_per_philox_call", "1_draw_per_call"])
def test_dropout_keeps_one_minus_p_and_forward_uses_the_reported_mask(hidden, device):
    # 64 rows x ~1000: std of the kept fraction ~ sqrt(p (1 - p) / n) = 1.2e-3
    p, seed = 0.1, 99
    x = (torch.rand(64, hidden) + 0.5).to(device).requires_grad_()  # no zeros: a zero in s means "dropped"
    weight = torch.ones(hidden, device=device, requires_grad=True)
    bias = torch.zeros(hidden, device=device, requires_grad=True)
    _, dropped = add_dropout_layernorm(x, None, weight, bias, dropout_p=p, training=True, seed=seed, impl="triton")
    kept = dropped != 0
    assert abs(kept.double().mean().item() - (1 - p)) < 6e-3
    assert torch.equal(kept, dropout_keep_mask(x.shape, p, seed, device))
    torch.testing.assert_close(dropped[kept], x[kept] / (1 - p), rtol=1e-6, atol=0)


def test_backward_drops_exactly_the_forward_mask(device):
    p, seed = 0.3, 5
    (x, residual, weight, bias), dy, dres = _inputs(1000, torch.float32, device, with_residual=True)
    out = _run(add_dropout_layernorm, (x, residual, weight, bias), dy, dres,
               dropout_p=p, training=True, seed=seed, impl="triton")  # fmt: skip
    forward_kept = (out["new_residual"] - residual) != 0
    assert torch.equal(out["dx"] != 0, forward_kept)
    assert torch.equal(forward_kept, dropout_keep_mask(x.shape, p, seed, device))


def test_dropout_mask_depends_on_seed_and_element_index_only(device):
    a = dropout_keep_mask((4, 1000), 0.5, seed=1, device=device)
    assert torch.equal(a, dropout_keep_mask((4, 1000), 0.5, seed=1, device=device))
    assert not torch.equal(a, dropout_keep_mask((4, 1000), 0.5, seed=2, device=device))
    # flat element offsets: a [2, 1000] input sees the first two rows of a [4, 1000] input's mask
    assert torch.equal(a[:2], dropout_keep_mask((2, 1000), 0.5, seed=1, device=device))


def test_fp32_residual_with_bf16_x_promotes_like_eager(device):
    (x, residual, weight, bias), dy, dres = _inputs(1000, torch.bfloat16, device, with_residual=True)
    residual32 = residual.detach().float().requires_grad_()
    out = _run(add_dropout_layernorm, (x, residual32, weight, bias), dy, dres, impl="triton")
    ref = _run(add_dropout_layernorm_torch, _as((x, residual32, weight, bias), torch.float64), dy, dres)
    eager = _run(add_dropout_layernorm_torch, [t.detach().clone().requires_grad_() for t in (x, residual32, weight, bias)],
                 dy, dres)  # fmt: skip
    assert out["y"].dtype == out["new_residual"].dtype == torch.float32
    assert out["dx"].dtype == torch.bfloat16 and out["dresidual"].dtype == torch.float32
    for name in ("y", "new_residual", "dresidual"):  # computed and stored in fp32: the fp32 bar
        assert_close_to_reference(name, out[name], ref[name], kind="output", dtype=torch.float32)
    assert_close_to_reference("dx", out["dx"], ref["dx"], kind="output", eager=eager["dx"])


def test_rejects_mismatched_shapes():
    x = torch.randn(2, 8)
    with pytest.raises(InputError, match="weight and bias"):
        add_dropout_layernorm(x, None, torch.ones(7), torch.zeros(7), impl="torch")
    with pytest.raises(InputError, match="residual shape"):
        add_dropout_layernorm(x, torch.randn(2, 7), torch.ones(8), torch.zeros(8), impl="torch")
    with pytest.raises(InputError, match="dropout_p"):
        add_dropout_layernorm(x, None, torch.ones(8), torch.zeros(8), dropout_p=1.0, training=True, impl="torch")
