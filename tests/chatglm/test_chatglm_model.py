"""ChatGLMModel against a float64 re-implementation of the block written from its rules (tests/chatglm/fixtures.py):
every quirk is pinned by showing that the model matches the rule and that the rule's alternative moves the logits."""

from __future__ import annotations

import math

import pytest
import torch

from glm_core.chatglm import (
    CHATGLM_MASK_VALUE,
    RESIDUAL_ALPHA,
    ChatGLMModel,
    chatglm_attention_math,
    rotary_cos_sin,
)
from glm_core.checkpoint import load_model
from glm_core.config import ChatGLMConfig
from glm_core.errors import InputError, KernelUnavailableError
from glm_core.model import build_model
from tests.chatglm.fixtures import (
    GMASK,
    MASK,
    SOP,
    chatglm_layout,
    hub_config,
    random_hub_state,
    reference_logits,
    sep_visibility,
    write_hub_dir,
)

ROWS = [
    [11, 12, 13, 14, 15, GMASK, SOP, 21, 22, 23],  # context of 6
    [31, 32, GMASK, SOP, 41, 42, 43, 44, 45, 46],  # context of 3
    [51, 52, MASK, 53, 54, 55, 56, SOP, 61, 62],  # [MASK] mid-text, no [gMASK]: the position is the [MASK]'s
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_hub_dir(tmp_path_factory.mktemp("chatglm"))


@pytest.fixture(scope="module")
def state():
    return random_hub_state(hub_config())


@pytest.fixture(scope="module")
def model64(ckpt):
    return load_model(ckpt, dtype=torch.float64)


def _batch(rows):
    lay = [chatglm_layout(r) for r in rows]
    return torch.tensor(rows), torch.tensor([[p, b] for p, b, _ in lay]), torch.tensor([s for *_, s in lay])


def _reference(state, rows, **kw):
    out = []
    for r in rows:
        p, b, s = chatglm_layout(r)
        out.append(reference_logits(state, hub_config(), r, p, b, sep_visibility(len(r), s), **kw))
    return torch.stack(out)


def _logits64(model, *args, **kwargs):
    """float64 logits: the model's boundary casts logits to fp32, so the head is applied to the fp64 hidden states."""
    with torch.no_grad():
        out = model(*args, **kwargs)
        return model.lm_head(out.hidden_states), out


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_layout_rule_of_the_fixture():
    # worked example: "a b [gMASK] <sop> x y" -> positions 0 1 2 2 2 2, blocks 0 0 0 1 2 3, sep 3
    assert chatglm_layout([5, 6, GMASK, SOP, 7, 8]) == ([0, 1, 2, 2, 2, 2], [0, 0, 0, 1, 2, 3], 3)
    assert chatglm_layout([5, MASK, 6, SOP, 7]) == ([0, 1, 2, 1, 1], [0, 0, 0, 1, 2], 3)


def test_prefill_matches_the_float64_rules(model64, state):
    ids, pos, sep = _batch(ROWS)
    logits, _ = _logits64(model64, ids, pos, sep=sep)
    # float64 model vs float64 reference: only summation order differs
    assert _rel(logits, _reference(state, ROWS)) < 1e-12


@pytest.mark.parametrize(
    "variant",
    [
        {"fp16_inv_freq": False},  # exact frequencies instead of fp16-rounded ones
        {"alpha": math.sqrt(2 * 2)},  # alpha from the config's depth instead of the block's 28
        {"alpha": 1.0},  # plain residual
        {"per_head_qkv": False},  # Q | K | V blocks instead of per-head q|k|v rows
    ],
)
def test_each_rule_matters(model64, state, variant):
    """The alternatives of the quirks move the logits: the equality above pins each rule."""
    ids, pos, sep = _batch(ROWS)
    logits, _ = _logits64(model64, ids, pos, sep=sep)
    assert _rel(logits, _reference(state, ROWS, **variant)) > 1e-6


def test_alpha_is_sqrt_56_at_every_depth():
    assert RESIDUAL_ALPHA == math.sqrt(2 * 28)
    assert CHATGLM_MASK_VALUE == -10000.0


def test_fp16_inv_freq_moves_fp32_logits(ckpt):
    """In fp32, skipping the fp16 rounding of the rotary frequencies changes the logits well above fp32 noise."""
    import glm_core.chatglm as chatglm

    model = load_model(ckpt)
    ids, pos, sep = _batch(ROWS)
    with torch.no_grad():
        base = model(ids, pos, sep=sep).logits
        original = chatglm.rotary_cos_sin
        try:
            chatglm.rotary_cos_sin = lambda p, r, d: original(p, r, d, exact_inv_freq=True)
            exact = model(ids, pos, sep=sep).logits
        finally:
            chatglm.rotary_cos_sin = original
    assert _rel(exact, base) > 1e-5  # ~1e-5..1e-3 depending on the positions; fp32 noise is ~1e-7


def test_rotary_angles_are_built_in_the_compute_dtype():
    pos = torch.tensor([[0, 1, 7, 63]])
    inv = (1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)).half()
    cos16, sin16 = rotary_cos_sin(pos, 8, torch.float16)
    ang16 = pos.half()[..., None] * inv  # product rounded to fp16, as the fp16 checkpoints ran
    assert cos16.dtype == torch.float16
    assert torch.equal(cos16[0, 0, :, :4], ang16[0].cos())
    cos32, _ = rotary_cos_sin(pos, 8, torch.float32)
    assert torch.equal(cos32[0, 0, :, :4], (pos.float()[..., None] * inv.float())[0].cos())
    assert torch.equal(cos32[..., :4], cos32[..., 4:])  # rotate_half layout: the angle table is repeated


def test_masked_scores_are_minus_10000_before_the_layer_rescale():
    """Visible scores of -15000 (after scaling): with -10000 set *before* the (l+1) rescale, layer 0 prefers the
    masked key (-10000 > -15000) and layer 1 does not (-20000 < -15000). Written from the rule in float64."""
    D = 4
    q = torch.zeros(1, 1, 1, D, dtype=torch.float64)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, 2, D, dtype=torch.float64)
    k[0, 0, :, 0] = -15000.0 * math.sqrt(D)  # raw q.k / sqrt(D) = -15000 for both keys
    v = torch.tensor([[[[1.0, 0, 0, 0], [0, 1.0, 0, 0]]]], dtype=torch.float64)
    visible = torch.tensor([[[[True, False]]]])
    for layer, expect in ((0, [0.0, 1.0]), (1, [1.0, 0.0])):
        out = chatglm_attention_math(q, k, v, visible, layer)
        c = layer + 1
        scores = torch.tensor([-15000.0 / c, -10000.0], dtype=torch.float64) * c  # the rule: scaled, masked, rescaled
        ref = torch.softmax(scores, 0)
        assert torch.allclose(out[0, 0, 0, :2], ref, atol=1e-12)
        assert torch.allclose(out[0, 0, 0, :2], torch.tensor(expect, dtype=torch.float64), atol=1e-12)


def test_layer_scaling_is_exact_in_fp16_order():
    """fp16: q / (sqrt(D)(l+1)) then x(l+1) in fp32 is what the model computes (not one 1/sqrt(D) scale)."""
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(1, 2, 5, 8, generator=g) * 8).half()
    k = (torch.randn(1, 2, 5, 8, generator=g) * 8).half()
    v = torch.randn(1, 2, 5, 8, generator=g).half()
    visible = sep_visibility(5, 2)[None, None]
    layer = 5
    out = chatglm_attention_math(q, k, v, visible, layer)
    s = torch.matmul(q / (math.sqrt(8) * 6), k.transpose(-1, -2)).masked_fill(~visible, -10000.0)
    ref = torch.matmul(torch.softmax(s.float() * 6, -1).half(), v)
    assert torch.equal(out, ref)


def test_cached_decode_equals_the_full_sequence(model64):
    rows = [ROWS[0], ROWS[1]]
    ids, pos, sep = _batch(rows)
    full, _ = _logits64(model64, ids, pos, sep=sep)
    cut = 7  # prefill the first 7 tokens, then one token at a time with sep = 0
    first, out = _logits64(model64, ids[:, :cut], pos[..., :cut], sep=torch.minimum(sep, torch.tensor(cut)))
    past, steps = out.past_key_values, [first]
    for t in range(cut, ids.shape[1]):
        logits, o = _logits64(model64, ids[:, t : t + 1], pos[..., t : t + 1], sep=0, past_key_values=past)
        past = o.past_key_values
        steps.append(logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-11, rtol=0)


def test_explicit_mask_equals_the_sep_rule(model64):
    ids, pos, sep = _batch(ROWS)
    n = ids.shape[1]
    mask = torch.stack([sep_visibility(n, int(s)) for s in sep])[:, None].double()
    a, _ = _logits64(model64, ids, pos, sep=sep)
    b, _ = _logits64(model64, ids, pos, attention_mask=mask)
    assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_sdpa_and_flex_agree_with_math_in_fp32(ckpt, backend):
    model = load_model(ckpt)
    ids, pos, sep = _batch(ROWS)
    with torch.no_grad():
        ref = model(ids, pos, sep=sep).logits
        model.set_attention(backend)
        out = model(ids, pos, sep=sep)
    assert out.kernels_used["attention"] == backend
    # one 1/sqrt(D) scale and -inf masking instead of the layer-scaled, -10000 path: equal up to fp32 rounding
    assert _rel(out.logits, ref) < 1e-5


def test_triton_does_not_apply(ckpt):
    model = load_model(ckpt)
    with pytest.raises(KernelUnavailableError, match="ChatGLM"):
        model.set_attention("triton")
    with pytest.raises(KernelUnavailableError, match="ChatGLM"):
        model.set_kernels("triton")


def test_loss_is_the_cross_entropy_of_the_scored_rows(model64):
    ids, pos, sep = _batch(ROWS[:2])
    targets = torch.roll(ids, -1, dims=1)
    mask = (torch.arange(ids.shape[1])[None] >= sep[:, None]).float()
    with torch.no_grad():
        loss = model64.loss(ids, pos, sep, targets, mask)
    logits, _ = _logits64(model64, ids, pos, sep=sep)
    rows = mask.reshape(-1) > 0
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1])[rows], targets.reshape(-1)[rows])
    # the loss runs on the fp32 boundary logits; the reference on float64 ones: fp32 rounding apart
    assert torch.allclose(loss.double(), ref, atol=1e-6)


def test_build_model_dispatches_on_the_config():
    config = ChatGLMConfig.from_dict(hub_config())
    model = build_model(config, seed=0)
    assert isinstance(model, ChatGLMModel)
    out = model(torch.tensor([[1, 2, GMASK, SOP]]), torch.tensor([[[0, 1, 2, 2], [0, 0, 0, 1]]]), sep=3)
    assert out.logits.dtype == torch.float32 and out.logits.shape == (1, 4, config.vocab_size)
    assert out.past_key_values[0][0].shape == (1, 4, 4, 16)  # [B, H, P+S, D]


def test_bad_inputs_are_one_clear_error(model64):
    with pytest.raises(InputError, match="position ids must lie"):
        model64(torch.tensor([[1, 2]]), torch.tensor([[[0, 99], [0, 0]]]), sep=1)
    with pytest.raises(InputError, match="vocab_size"):
        model64(torch.tensor([[1, 999]]), torch.tensor([[[0, 1], [0, 0]]]), sep=1)


def test_left_padding_with_an_explicit_mask_leaves_the_real_tokens_unchanged(model64):
    """The tokenizer's left padding: pads masked as rows and columns, position 0; real tokens keep their positions
    (counted from the first real token), so their logits equal those of the unpadded row."""
    row, pad = ROWS[1][:7], 3
    p, b, s = chatglm_layout(row)
    n, d = len(row), 4
    ids = torch.tensor([[pad] * d + row])
    pos = torch.tensor([[[0] * d + p, [0] * d + b]])
    mask = torch.zeros(1, 1, n + d, n + d, dtype=torch.float64)
    mask[0, 0, d:, d:] = sep_visibility(n, s).double()
    padded, _ = _logits64(model64, ids, pos, attention_mask=mask)
    plain, _ = _logits64(model64, torch.tensor([row]), torch.tensor([[p, b]]), sep=s)
    assert torch.allclose(padded[0, d:], plain[0], atol=1e-12, rtol=0)
