"""glm_attention: the fused Triton kernel vs a float64 reference (spec fused_ops §4, §5.3).

The float64 oracle is :func:`glm_attention_reference`, itself checked against GLM's math written out here
(glm_reference §1.3/§2.1: ``j < sep or j <= i`` as a 0/1 matrix, ``S*m - 65504*(1-m)``). Eager PyTorch in the
kernel's dtype (the same reference in low precision) sets the fp16/bf16 bar. Under the interpreter the kernels use
16x16 tiles, so T = 37/50 cover partial tiles and the sep values {0, 1, 15, 16, 17, T-1, T} cover every tile-boundary
case of the loop bounds.
"""

from __future__ import annotations

import math

import pytest
import torch

import glm_core.kernels.attention as attention
from glm_core.errors import InputError, KernelUnavailableError
from glm_core.kernels.attention import (
    dropout_threshold,
    glm_attention,
    glm_attention_dropout_mask,
    glm_attention_reference,
    glm_visibility_mask,
)
from glm_core.kernels.attention_peers import glm_attention_flex, glm_attention_sdpa
from tests.kernels.tolerances import assert_close_to_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TILE = 16  # the interpreter's tile size (attention._launch_config)
triton_only = pytest.mark.triton


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def glm_mask_matrix(sep: list[int], seq: int) -> torch.Tensor:
    """GLM's 0/1 mask ``Mk[b, i, j] = 1 if j < sep[b] or j <= i`` (glm_reference §2.1), built element by element."""
    mask = torch.zeros(len(sep), 1, seq, seq, dtype=torch.float64)
    for b, s in enumerate(sep):
        for i in range(seq):
            for j in range(seq):
                if j < s or j <= i:
                    mask[b, 0, i, j] = 1.0
    return mask


def naive_glm_attention(q, k, v, sep: list[int], keep=None, p: float = 0.0) -> torch.Tensor:
    """glm_reference §1.3 as the original code writes it: K scaled first, multiplicative mask, finite -65504."""
    mk = glm_mask_matrix(sep, q.shape[2])
    scores = torch.matmul(q, (k / math.sqrt(q.shape[3])).transpose(-1, -2))
    scores = scores * mk - 65504.0 * (1.0 - mk)
    probs = torch.softmax(scores, dim=-1)
    if keep is not None:
        probs = probs * keep.to(probs.dtype) / (1.0 - p)
    return torch.matmul(probs, v)


def _inputs(batch: int, heads: int, seq: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v, dout = (torch.randn(batch, heads, seq, dim, generator=g) for _ in range(4))
    return q, k, v, dout


def _run(fn, leaves, dout) -> dict[str, torch.Tensor]:
    out = fn(*leaves)
    dq, dk, dv = torch.autograd.grad(out, leaves, dout.to(out.dtype))
    return {"out": out, "dq": dq, "dk": dk, "dv": dv}


def _leaves(tensors, dtype, device):
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in tensors]


def _check_against_reference(batch, heads, seq, dim, sep, dtype, device, *, p=0.0, seed=11, data_seed=0):
    """Kernel fwd + dq/dk/dv vs float64 (and eager in ``dtype``), all given the kernel's own dropout mask."""
    q, k, v, dout = _inputs(batch, heads, seq, dim, data_seed)
    sep_t = torch.tensor(sep, dtype=torch.int64)
    keep = glm_attention_dropout_mask(seed, batch, heads, seq, p) if p > 0 else None

    def kernel_fn(a, b, c):
        return glm_attention(a, b, c, sep_t.to(device), dropout_p=p, training=p > 0, seed=seed, impl="triton")

    def reference_fn(a, b, c):
        mask = keep.to(a.device) if keep is not None else None
        return glm_attention_reference(a, b, c, sep_t.to(a.device), dropout_mask=mask, dropout_p=p)

    kernel = _run(kernel_fn, _leaves((q, k, v), dtype, device), dout.to(device))
    ref = _run(reference_fn, _leaves((q, k, v), torch.float64, "cpu"), dout)
    eager = _run(reference_fn, _leaves((q, k, v), dtype, device), dout.to(device))
    for name in ("out", "dq", "dk", "dv"):
        assert kernel[name].dtype == dtype
        assert_close_to_reference(name, kernel[name], ref[name], kind="output", eager=eager[name])
    return kernel


# ---------------------------------------------------------------------------------------------------------------------
# the reference and the mask (no Triton needed)


@pytest.mark.parametrize("sep", [[0, 1, 5], [12, 12, 3], [7, 0, 20]])
def test_visibility_mask_is_glms_rule(sep):
    # spec §4.1: visible iff j < max(sep, i + 1); values past T behave like T
    seq = 12
    expected = glm_mask_matrix([min(s, seq) for s in sep], seq).bool()
    assert torch.equal(glm_visibility_mask(torch.tensor(sep), seq), expected)


def test_reference_equals_glm_math_with_the_finite_mask_in_float64():
    sep = [0, 1, 9, 16]
    q, k, v, _ = (t.double() for t in _inputs(4, 2, 16, 8, seed=5))
    expected = naive_glm_attention(q, k, v, sep)
    actual = glm_attention_reference(q, k, v, torch.tensor(sep))
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-13)


def test_reference_applies_the_given_dropout_mask_with_inverse_keep_scaling():
    sep, p = [3, 10], 0.25
    q, k, v, _ = (t.double() for t in _inputs(2, 2, 10, 8, seed=6))
    keep = torch.rand(2, 2, 10, 10, generator=torch.Generator().manual_seed(1)) >= p
    expected = naive_glm_attention(q, k, v, sep, keep=keep, p=p)
    actual = glm_attention_reference(q, k, v, torch.tensor(sep), dropout_mask=keep, dropout_p=p)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-13)


def test_torch_impl_and_auto_on_cpu_run_the_reference():
    q, k, v, _ = _inputs(2, 2, 9, 16)
    sep = torch.tensor([2, 9])
    expected = glm_attention_reference(q, k, v, sep)
    assert torch.equal(glm_attention(q, k, v, sep, impl="torch"), expected)
    assert torch.equal(glm_attention(q, k, v, sep, impl="auto"), expected)  # "auto" never interprets on the CPU


def test_sdpa_peer_matches_the_reference():
    q, k, v, _ = _inputs(3, 2, 20, 16, seed=2)
    sep = torch.tensor([0, 7, 20])
    torch.testing.assert_close(glm_attention_sdpa(q, k, v, sep), glm_attention_reference(q, k, v, sep))


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_peer_uses_glms_strict_prefix_rule():
    # spec §4.2.1: the prefix mask_mod is kv_idx < sep (the blog's <= would let row 0 see key sep)
    pytest.importorskip("torch.nn.attention.flex_attention")
    q, k, v, _ = _inputs(3, 2, 24, 16, seed=3)
    sep = torch.tensor([0, 5, 24])
    with torch.no_grad():
        actual = glm_attention_flex(q, k, v, sep)
    torch.testing.assert_close(actual, glm_attention_reference(q, k, v, sep), rtol=1e-5, atol=1e-5)


def test_dropout_threshold_is_the_16_bit_rounding_of_p():
    assert dropout_threshold(0.0) == 0
    assert dropout_threshold(0.1) == 6554  # realised drop rate 0.100006
    assert dropout_threshold(0.5) == 32768
    assert dropout_threshold(0.9999999) == 65535  # never "drop everything" for p < 1


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_regenerated_dropout_mask_keeps_one_minus_p(p):
    keep = glm_attention_dropout_mask(1234, 2, 2, 90, p)  # 32400 decisions; T % 8 != 0
    sigma = math.sqrt(p * (1 - p) / keep.numel())
    assert abs(keep.double().mean().item() - (1 - p)) < 5 * sigma


def test_regenerated_dropout_mask_depends_on_seed_only():
    a = glm_attention_dropout_mask(7, 1, 2, 20, 0.3)
    assert torch.equal(a, glm_attention_dropout_mask(7, 1, 2, 20, 0.3))
    assert not torch.equal(a, glm_attention_dropout_mask(8, 1, 2, 20, 0.3))
    assert not torch.equal(a[0, 0], a[0, 1])  # heads draw different numbers


def test_rejects_bad_inputs():
    q, k, v, _ = _inputs(2, 2, 8, 16)
    sep = torch.tensor([1, 2])
    with pytest.raises(InputError, match="share one shape"):
        glm_attention(q, k[:, :, :4], v, sep)
    with pytest.raises(InputError, match=r"1-D integer tensor \[B=2\]"):
        glm_attention(q, k, v, torch.tensor([1, 2, 3]))
    with pytest.raises(InputError, match="integers"):
        glm_attention(q, k, v, torch.tensor([1.0, 2.0]))
    with pytest.raises(InputError, match="4-D tensor"):
        glm_attention(q[0], k[0], v[0], sep)
    with pytest.raises(InputError, match="dropout_p must be in"):
        glm_attention(q, k, v, sep, dropout_p=1.0, training=True)
    with pytest.raises(InputError, match="seed"):
        glm_attention(q, k, v, sep, dropout_p=0.1, training=True, seed=-1)


# ---------------------------------------------------------------------------------------------------------------------
# the Triton kernels (interpreted on CPU, compiled with TRITON_INTERPRET=0 on a GPU)


@triton_only
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_kernel_matches_float64_reference(dtype, device, poisoned_empty):
    # T = 50: four 16-row tiles, the last one partial; sep 7 ends inside a tile, 30 straddles two
    _check_against_reference(2, 2, 50, 32, [7, 30], dtype, device)


@triton_only
def test_kernel_sep_on_every_tile_boundary_per_sample(device, poisoned_empty):
    # spec §5.3: sep in {0, 1, tile-1, tile, tile+1, T-1, T}, a different one per sample of one batch
    seq = 37
    sep = [0, 1, TILE - 1, TILE, TILE + 1, seq - 1, seq]
    _check_against_reference(len(sep), 1, seq, 16, sep, torch.float32, device)


@triton_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d).removeprefix("torch."))
def test_kernel_head_dim_64(dtype, device, poisoned_empty):
    _check_against_reference(2, 1, 40, 64, [1, 39], dtype, device)


@triton_only
def test_kernel_head_dim_128_and_out_of_range_sep(device, poisoned_empty):
    # sep > T acts as T (fully bidirectional), sep < 0 as 0 (causal)
    q, k, v, _ = _inputs(2, 1, 20, 128, seed=4)
    args = [t.to(device) for t in (q, k, v)]
    out = glm_attention(*args, torch.tensor([-3, 99], device=device), impl="triton")
    ref = glm_attention_reference(q.double(), k.double(), v.double(), torch.tensor([0, 20]))
    assert_close_to_reference("out", out, ref, kind="output")


@triton_only
def test_kernel_reads_strided_inputs_and_gradients(device, poisoned_empty):
    # q, k, v as the model makes them: a fused [B, T, 3*H*D] projection split and transposed (not contiguous)
    batch, heads, seq, dim = 2, 2, 24, 16
    g = torch.Generator().manual_seed(8)
    qkv = torch.randn(batch, seq, 3 * heads * dim, generator=g)
    dout = torch.randn(batch, seq, heads, dim, generator=g)
    sep = torch.tensor([5, 20])

    def split(x):
        return [t.view(batch, seq, heads, dim).transpose(1, 2) for t in x.chunk(3, dim=-1)]

    leaf = qkv.to(device).requires_grad_()
    out = glm_attention(*split(leaf), sep.to(device), impl="triton")
    assert not split(leaf)[0].is_contiguous()
    (grad,) = torch.autograd.grad(out, leaf, dout.to(device).transpose(1, 2))  # strided upstream gradient
    leaf64 = qkv.double().requires_grad_()
    ref = glm_attention_reference(*split(leaf64), sep)
    (grad64,) = torch.autograd.grad(ref, leaf64, dout.double().transpose(1, 2))
    assert_close_to_reference("out", out, ref, kind="output")
    assert_close_to_reference("dqkv", grad, grad64, kind="output")


@triton_only
def test_kernel_while_loop_variant_matches_for_loops(device, monkeypatch):
    # triton 3.6's interpreter with numpy >= 2.4 runs the while-loop form (spec §3.1); both forms must agree exactly
    if device.type != "cpu":
        pytest.skip("the while-loop form is used only by the interpreter")
    if attention._WHILE_LOOPS:
        pytest.skip("this triton/numpy pair cannot interpret the for-loop form (spec §3.1)")
    q, k, v, dout = _inputs(2, 1, 40, 16, seed=9)
    sep = torch.tensor([3, 21])

    def run():
        return _run(
            lambda a, b, c: glm_attention(a, b, c, sep, impl="triton"), _leaves((q, k, v), torch.float32, "cpu"), dout
        )

    expected = run()
    monkeypatch.setattr(attention, "_WHILE_LOOPS", not attention._WHILE_LOOPS)
    actual = run()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


@triton_only
def test_kernel_rejects_unsupported_head_dim(device):
    q, k, v, _ = _inputs(1, 1, 8, 48)
    with pytest.raises(KernelUnavailableError, match="head dim 48"):
        glm_attention(q.to(device), k.to(device), v.to(device), torch.tensor([2], device=device), impl="triton")


@triton_only
def test_kernel_without_dropout_is_deterministic_and_eval_ignores_p(device):
    q, k, v, dout = _inputs(1, 2, 33, 16, seed=10)
    sep = torch.tensor([12], device=device)

    def run(**kw):
        return _run(
            lambda a, b, c: glm_attention(a, b, c, sep, impl="triton", **kw),
            _leaves((q, k, v), torch.float32, device),
            dout.to(device),
        )

    first, second = run(), run()
    eval_mode = run(dropout_p=0.3, training=False)
    for name in first:
        assert torch.equal(first[name], second[name]), name  # bitwise: no atomics in the backward
        assert torch.equal(first[name], eval_mode[name]), name


@triton_only
def test_kernel_dropout_mask_is_the_regenerated_one(device):
    # With V = identity (T <= D) the output row i is P[i, :] * keep[i, :] / (1 - p): every dropped visible
    # probability shows up as an exact zero, so the kernel's mask can be read off and compared.
    batch, heads, seq, dim, p, seed = 2, 1, 40, 64, 0.3, 99
    q, k, _, _ = _inputs(batch, heads, seq, dim, seed=12)
    v = torch.zeros(batch, heads, seq, dim)
    v[:, :, :, :seq] = torch.eye(seq)
    sep = torch.tensor([9, 25])
    out = glm_attention(
        q.to(device), k.to(device), v.to(device), sep.to(device), dropout_p=p, training=True, seed=seed, impl="triton"
    )
    probs = out[..., :seq].cpu()  # [B, H, T, T]
    visible = glm_visibility_mask(sep, seq).expand_as(probs)
    keep = glm_attention_dropout_mask(seed, batch, heads, seq, p)
    assert torch.equal((probs != 0) & visible, keep & visible)
    assert torch.all(probs[~visible] == 0)
    kept_fraction = keep[visible].double().mean().item()
    assert abs(kept_fraction - (1 - p)) < 0.05  # ~1500 visible decisions: 5 sigma ~ 0.06
    assert torch.all(out[..., seq:] == 0)


@triton_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d).removeprefix("torch."))
def test_kernel_dropout_forward_and_backward_use_the_same_mask(dtype, device, poisoned_empty):
    # grads equal the reference's given the regenerated mask: the backward redraws exactly the forward's mask
    _check_against_reference(2, 2, 37, 16, [5, 20], dtype, device, p=0.2, seed=2024)


@triton_only
def test_kernel_dropout_seed_controls_the_mask(device):
    q, k, v, _ = _inputs(1, 1, 24, 16, seed=13)
    args = [t.to(device) for t in (q, k, v)] + [torch.tensor([6], device=device)]

    def run(seed):
        return glm_attention(*args, dropout_p=0.5, training=True, seed=seed, impl="triton")

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))
    # torch impl with a seed regenerates the same mask: same function of the inputs
    torch.testing.assert_close(glm_attention(*args, dropout_p=0.5, training=True, seed=5, impl="torch"), run(5))


@triton_only
def test_philox_mirror_matches_triton_randint4x_on_64_bit_counters_and_seeds(device):
    import triton
    import triton.language as tl

    @triton.jit
    def randint4x_kernel(counters_ptr, out_ptr, seed, N: tl.constexpr):
        offs = tl.arange(0, N)
        r0, r1, r2, r3 = tl.randint4x(seed, tl.load(counters_ptr + offs))
        tl.store(out_ptr + offs * 4 + 0, r0.to(tl.int64) & 0xFFFFFFFF)
        tl.store(out_ptr + offs * 4 + 1, r1.to(tl.int64) & 0xFFFFFFFF)
        tl.store(out_ptr + offs * 4 + 2, r2.to(tl.int64) & 0xFFFFFFFF)
        tl.store(out_ptr + offs * 4 + 3, r3.to(tl.int64) & 0xFFFFFFFF)

    counters = torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40 + 12345, 2**62 + 7], dtype=torch.int64)
    for seed in (0, 1234, 2**32 + 5):
        out = torch.zeros(len(counters), 4, dtype=torch.int64, device=device)
        randint4x_kernel[(1,)](counters.to(device), out, seed, N=len(counters))
        expected = torch.stack(attention._philox_4x32(seed, counters), dim=-1)
        assert torch.equal(out.cpu(), expected), seed
