"""GLMModel against the independent float64 reference (spec §1.2-§1.4, §2.1-§2.2) and the step contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glm_core.errors import InputError
from glm_core.model import MASK_VALUE, build_model, gelu_erf, gelu_tanh, visibility_mask
from tests.glm_reference_f64 import glm_forward_f64, sep_mask

MAX_REL = 1e-6  # fp32 model vs float64 reference, max |a-r| / max |r|


def _weights(model):
    return {k: v.detach().double().numpy() for k, v in model.state_dict().items()}


def _rel(a: np.ndarray, r: np.ndarray) -> float:
    return float(np.abs(a - r).max() / np.abs(r).max())


def _inputs(B: int, S: int, V: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, S), generator=g)
    pos = torch.stack([torch.arange(S).expand(B, S), torch.zeros(B, S, dtype=torch.long)], 1).clone()
    return ids, pos


def _reference(model, ids, pos, mask, mems=None):
    cfg = model.config
    return glm_forward_f64(
        _weights(model), cfg.num_layers, cfg.num_attention_heads, ids.numpy(), pos.numpy(), mask, mems, gelu=cfg.gelu
    )


@pytest.mark.parametrize("gelu", ["tanh", "erf"])
@pytest.mark.parametrize("sep", [3, [2, 9, 0], 0, 9], ids=["scalar", "per-sample", "zero", "full"])
def test_logits_match_float64_reference(tiny_config, gelu, sep):
    model = build_model(tiny_config.replace(gelu=gelu), seed=7).eval()
    ids, pos = _inputs(3, 9, tiny_config.vocab_size)
    pos[:, 1, 6:] = torch.arange(1, 4)  # block positions on a Part B, as in blank infilling
    pos[:, 0, 6:] = 5
    with torch.no_grad():
        got = model(ids, pos, sep=sep).logits.numpy()
    sep_arr = np.broadcast_to(np.asarray(sep), (3,))
    ref, _ = _reference(model, ids, pos, sep_mask(sep_arr, 9, 0))
    assert _rel(got, ref) <= MAX_REL


def test_explicit_mask_matches_reference(tiny_model):
    ids, pos = _inputs(2, 8, tiny_model.config.vocab_size, seed=3)
    rng = np.random.default_rng(0)
    mask = (rng.random((2, 8, 8)) < 0.5).astype(np.float64)
    mask[:, np.arange(8), np.arange(8)] = 1.0
    mask[1, 4] = 0.0  # a fully masked row: GLM's -65504 arithmetic gives a uniform softmax, never NaN
    with torch.no_grad():
        got = tiny_model(ids, pos, attention_mask=torch.tensor(mask[:, None], dtype=torch.float32)).logits.numpy()
    ref, _ = _reference(tiny_model, ids, pos, mask)
    assert np.isfinite(got).all()
    assert _rel(got, ref) <= MAX_REL


def test_past_matches_reference_with_mems(tiny_model):
    """A chunk after a cached prefix equals the original hidden-state-mems computation (spec §2.2)."""
    ids, pos = _inputs(2, 10, tiny_model.config.vocab_size, seed=5)
    with torch.no_grad():
        first = tiny_model(ids[:, :6], pos[:, :, :6], sep=[4, 6])
        second = tiny_model(ids[:, 6:], pos[:, :, 6:], sep=[0, 2], past_key_values=first.past_key_values)
    _, mems = _reference(tiny_model, ids[:, :6], pos[:, :, :6], sep_mask(np.array([4, 6]), 6, 0))
    ref, _ = _reference(
        tiny_model, ids[:, 6:], pos[:, :, 6:], sep_mask(np.array([0, 2]), 4, 6), mems=mems[:-1] + [mems[-1]]
    )
    assert _rel(second.logits.numpy(), ref) <= MAX_REL
    assert second.past_key_values[0][0].shape == (2, 2, 10, 64)


def test_forward_mems_equals_kv_cache(tiny_model):
    ids, pos = _inputs(2, 12, tiny_model.config.vocab_size, seed=9)
    with torch.no_grad():
        logits_a, mems = tiny_model.forward_mems(ids[:, :7], pos[:, :, :7], [5, 7])
        logits_b, _ = tiny_model.forward_mems(ids[:, 7:], pos[:, :, 7:], 0, mems)
        out = tiny_model(ids[:, :7], pos[:, :, :7], sep=[5, 7])
        out2 = tiny_model(ids[:, 7:], pos[:, :, 7:], sep=0, past_key_values=out.past_key_values)
    torch.testing.assert_close(logits_b, out2.logits, rtol=1e-5, atol=1e-5)


def test_cached_decoding_equals_full_recompute_batch3_20_steps(tiny_model):
    B, prefix, steps = 3, 8, 20
    ids, pos = _inputs(B, prefix + steps, tiny_model.config.vocab_size, seed=11)
    seps = torch.tensor([3, 8, 5])
    with torch.no_grad():
        out = tiny_model(ids[:, :prefix], pos[:, :, :prefix], sep=seps)
        past = out.past_key_values
        for t in range(prefix, prefix + steps):
            out = tiny_model(ids[:, t : t + 1], pos[:, :, t : t + 1], sep=0, past_key_values=past)
            past = out.past_key_values
            full = tiny_model(ids[:, : t + 1], pos[:, :, : t + 1], sep=seps).logits[:, -1:]
            assert (out.logits - full).abs().max().item() <= 1e-5


def test_gelu_variants_differ_as_spec_says():
    x = torch.linspace(-6, 6, 200001, dtype=torch.float64)
    diff = (gelu_tanh(x) - gelu_erf(x)).abs()
    assert 4.5e-4 < diff.max().item() < 5.0e-4  # spec §1.4: max |erf - tanh| = 4.7e-4 near x = -2.70
    assert abs(abs(x[diff.argmax()].item()) - 2.70) < 0.1  # the difference is symmetric in x


def test_mask_value_is_finite_fp16_max():
    assert MASK_VALUE == -65504.0 == float(torch.finfo(torch.float16).min)


def test_visibility_rule_is_chunk_relative():
    vis = visibility_mask(torch.tensor([2]), query_len=3, past_len=4)[0, 0]
    expected = torch.tensor([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(vis, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_close_to_fp32(tiny_model, dtype):
    ids, pos = _inputs(2, 9, tiny_model.config.vocab_size)
    with torch.no_grad():
        ref = tiny_model(ids, pos, sep=4).logits
        half = build_model(tiny_model.config, seed=1234).to(dtype).eval()(ids, pos, sep=4).logits
    assert half.dtype == torch.float32  # logits are float32 at the boundary whatever the compute dtype
    assert ((half - ref).abs().max() / ref.abs().max()).item() < 3e-2


def test_bad_inputs_raise_input_error(tiny_model):
    ids, pos = _inputs(2, 5, tiny_model.config.vocab_size)
    with pytest.raises(InputError, match="sep must lie in"):
        tiny_model(ids, pos, sep=6)
    with pytest.raises(InputError, match="sep must lie in"):
        tiny_model(ids, pos, sep=[-1, 2])
    with pytest.raises(InputError, match="one value per batch row"):
        tiny_model(ids, pos, sep=[1, 2, 3])
    too_long = torch.full((1, 2, 5), tiny_model.config.max_sequence_length + 1)
    with pytest.raises(InputError, match="longer than the position table"):
        tiny_model(ids[:1], too_long, sep=0)
    with pytest.raises(InputError, match="input_ids must lie in"):
        tiny_model(ids + tiny_model.config.vocab_size, pos, sep=0)
    with pytest.raises(InputError, match="position_ids must be"):
        tiny_model(ids, pos[:, :1], sep=0)


def test_dropout_only_in_training(tiny_config):
    model = build_model(tiny_config, seed=3)
    ids, pos = _inputs(1, 6, tiny_config.vocab_size)
    model.train()
    torch.manual_seed(0)
    a = model(ids, pos, sep=3).logits
    b = model(ids, pos, sep=3).logits
    assert not torch.equal(a, b)
    model.eval()
    assert torch.equal(model(ids, pos, sep=3).logits, model(ids, pos, sep=3).logits)


def test_gradient_checkpointing_gives_same_gradients(tiny_config):
    ids, pos = _inputs(2, 8, tiny_config.vocab_size)
    targets = torch.roll(ids, 1, 1)
    mask = torch.zeros(2, 8)
    mask[:, 4:] = 1
    grads = []
    for ckpt in (False, True):
        model = build_model(
            tiny_config.replace(embedding_dropout_prob=0.0, attention_dropout_prob=0.0, output_dropout_prob=0.0),
            seed=5,
            gradient_checkpointing=ckpt,
        )
        model.train()
        model.loss(ids, pos, 4, targets, mask).backward()
        grads.append(model.transformer.layers[0].attention.query_key_value.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_loss_is_part_b_cross_entropy(tiny_model):
    ids, pos = _inputs(2, 8, tiny_model.config.vocab_size)
    targets = torch.roll(ids, -1, 1)
    mask = torch.zeros(2, 8)
    mask[:, 5:] = 1
    with torch.no_grad():
        loss = tiny_model.loss(ids, pos, 5, targets, mask)
        logp = torch.log_softmax(tiny_model(ids, pos, sep=5).logits.double(), -1)
        ref = -(logp.gather(-1, targets[..., None])[..., 0] * mask).sum() / mask.sum()
    assert abs(loss.item() - ref.item()) < 1e-5
