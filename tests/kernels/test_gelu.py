"""bias_gelu: Triton kernel vs a float64 reference written from GLM's own formula (spec fused_ops §5.3).

The float64 oracle is the tanh expression of glm_reference §1.4 (and 0.5 z (1 + erf(z / sqrt 2)) for "erf"),
independent of ``F.gelu``; eager ``F.gelu`` in the kernel's dtype sets the fp16/bf16 bar.
"""

from __future__ import annotations

import math

import pytest
import torch

from glm_core.errors import InputError
from glm_core.kernels import bias_gelu
from glm_core.kernels.gelu import bias_gelu_torch
from tests.kernels.tolerances import assert_close_to_reference

pytestmark = pytest.mark.triton

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def glm_gelu_float64(z: torch.Tensor, approximate: str) -> torch.Tensor:
    """glm_reference §1.4, written out: the original code's tanh formula, or the exact erf GeLU."""
    if approximate == "tanh":
        return 0.5 * z * (1.0 + torch.tanh(0.7978845608028654 * z * (1.0 + 0.044715 * z * z)))
    return 0.5 * z * (1.0 + torch.erf(z / math.sqrt(2.0)))


def _inputs(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(shape, generator=g)  # wide enough to reach both tails of the GeLU
    bias = 0.5 * torch.randn(shape[-1], generator=g)
    dy = torch.randn(shape, generator=g)
    return (
        x.to(device=device, dtype=dtype).requires_grad_(),
        bias.to(device=device, dtype=dtype).requires_grad_(),
        dy.to(device=device, dtype=dtype),
    )


def _run(fn, x, bias, dy):
    y = fn(x, bias)
    dx, dbias = torch.autograd.grad((y * dy.to(y.dtype)).sum(), (x, bias))
    return {"y": y, "dx": dx, "dbias": dbias}


def _leaf(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.detach().to(dtype).requires_grad_()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("hidden", [1000, 1023])
@pytest.mark.parametrize("approximate", ["tanh", "erf"])
def test_matches_float64_reference(dtype, hidden, approximate, device, poisoned_empty):
    # 40 rows: 10 row tiles forward; backward reduces dbias over 5 programs x 2 tiles (both reduction stages)
    x, bias, dy = _inputs((4, 10, hidden), dtype, device)
    kernel = _run(lambda a, b: bias_gelu(a, b, approximate, impl="triton"), x, bias, dy)
    ref = _run(
        lambda a, b: glm_gelu_float64(a + b, approximate), _leaf(x, torch.float64), _leaf(bias, torch.float64), dy
    )
    eager = _run(lambda a, b: bias_gelu_torch(a, b, approximate), _leaf(x, dtype), _leaf(bias, dtype), dy)
    for name in ("y", "dx", "dbias"):
        assert kernel[name].dtype == dtype and kernel[name].shape == ref[name].shape, name
        kind = "reduced" if name == "dbias" else "output"
        assert_close_to_reference(name, kernel[name], ref[name], kind=kind, eager=eager[name])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d).removeprefix("torch."))
def test_saturates_without_nan_for_large_inputs(dtype, device):
    # exp() overflow territory for a naive tanh: gelu(z) -> z for z >> 0 and -> 0 for z << 0, gradient -> 1 / 0
    x = torch.tensor([[-1e4, -100.0, -12.0, 12.0, 100.0, 1e4]], dtype=dtype, device=device, requires_grad=True)
    bias = torch.zeros(6, dtype=dtype, device=device, requires_grad=True)
    y = bias_gelu(x, bias, impl="triton")
    (dx,) = torch.autograd.grad(y.sum(), (x,))
    expected_y = torch.tensor([[0.0, 0.0, 0.0, 12.0, 100.0, 1e4]], dtype=dtype)
    torch.testing.assert_close(y.cpu(), expected_y, rtol=0, atol=1e-6)
    torch.testing.assert_close(dx.cpu(), torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]], dtype=dtype), rtol=0, atol=1e-6)


def test_torch_reference_is_glms_tanh_formula():
    z = torch.linspace(-8, 8, 2001, dtype=torch.float64)
    y = bias_gelu_torch(z, torch.zeros((), dtype=torch.float64).expand(1), "tanh")
    torch.testing.assert_close(y, glm_gelu_float64(z, "tanh"), rtol=1e-15, atol=1e-15)
    # glm_reference §1.4: the variants differ by at most ~4.7e-4, at x ~ -2.70 (and +2.70: gelu(x) - gelu(-x) = x)
    gap = (glm_gelu_float64(z, "tanh") - glm_gelu_float64(z, "erf")).abs()
    assert 4.6e-4 < gap.max().item() < 4.8e-4
    assert abs(abs(z[gap.argmax()].item()) - 2.70) < 0.05


def test_keeps_input_shape_and_dtype(device):
    x, bias, _ = _inputs((2, 3, 5, 16), torch.float16, device)
    y = bias_gelu(x, bias, impl="triton")
    assert y.shape == x.shape and y.dtype == torch.float16


def test_rejects_bad_variant_and_bias_shape():
    x = torch.randn(2, 8)
    with pytest.raises(InputError, match="approximate"):
        bias_gelu(x, torch.zeros(8), approximate="none", impl="torch")
    with pytest.raises(InputError, match="bias must have shape"):
        bias_gelu(x, torch.zeros(7), impl="torch")
