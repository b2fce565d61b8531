"""Generation (greedy, sampling, beam) on a ChatGLM through the step contract (TorchStep): ``<sop>`` opens Part B
at (mask position, 1), ``<eop>`` ends it. Checked against a plain loop that recomputes the whole ChatGLM sequence
``A [gMASK] <sop> x1 ...`` every step (no cache), laid out by ChatGLM's rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glm_core.checkpoint import load_model
from glm_core.generation import GenerationConfig, generate
from glm_core.layout import GLMInput
from glm_core.special_tokens import SpecialTokens
from glm_core.step import TorchStep
from tests.chatglm.fixtures import EOP, GMASK, MASK, PAD, SMASK, SOP, chatglm_layout, write_hub_dir

# ChatGLM has no [CLS]/[SEP]; generation never uses them, any unused ids do
TOKENS = SpecialTokens(pad=PAD, eos=EOP, cls=146, sep=147, mask=MASK, unk=0, sop=SOP, eop=EOP, gmask=GMASK, smask=SMASK)
CONTEXT = [21, 22, 23, 24, 25, GMASK]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(write_hub_dir(tmp_path_factory.mktemp("gen"), seed=3))


def _prompt(context):
    n = len(context)
    return GLMInput(
        input_ids=np.asarray(context),
        position_ids=np.stack([np.arange(n), np.zeros(n, dtype=np.int64)]),
        sep=n,
        targets=np.full(n, PAD),
        loss_mask=np.zeros(n, dtype=np.float32),
        mask_positions=(context.index(GMASK),),
    )


def _full_logprobs(model, seq):
    """Log-probabilities of the next token after ``seq`` (a whole ChatGLM sequence), recomputed without a cache."""
    p, b, s = chatglm_layout(seq)
    with torch.no_grad():
        logits = model(torch.tensor([seq]), torch.tensor([[p, b]]), sep=s).logits[0, -1].double()
    return torch.log_softmax(logits, -1)


def _greedy_reference(model, context, steps):
    seq, out = [*context, SOP], []
    for _ in range(steps):
        nxt = int(_full_logprobs(model, seq).argmax())
        if nxt == EOP:
            return out, EOP
        out.append(nxt)
        seq.append(nxt)
    return out, None


def test_greedy_equals_the_full_recompute(model):
    result = generate(TorchStep(model), _prompt(CONTEXT), TOKENS, GenerationConfig(max_new_tokens=8))
    blank, stop = _greedy_reference(model, CONTEXT, 8)
    assert result.blanks == [blank] and result.stop_tokens == [stop]
    assert result.mask_positions == [CONTEXT.index(GMASK)]


def test_sampling_with_top_k_1_is_greedy_and_seeded_sampling_repeats(model):
    greedy = generate(TorchStep(model), _prompt(CONTEXT), TOKENS, GenerationConfig(max_new_tokens=6))
    top1 = GenerationConfig(max_new_tokens=6, strategy="sample", top_k=1, seed=1)
    assert generate(TorchStep(model), _prompt(CONTEXT), TOKENS, top1).blanks == greedy.blanks
    cfg = GenerationConfig(max_new_tokens=6, strategy="sample", temperature=1.5, seed=7)
    first = generate(TorchStep(model), _prompt(CONTEXT), TOKENS, cfg)
    assert generate(TorchStep(model), _prompt(CONTEXT), TOKENS, cfg).blanks == first.blanks
    assert all(0 <= t < model.config.vocab_size for t in first.blanks[0])


def test_beam_score_is_the_recomputed_sum_of_log_probabilities(model):
    cfg = GenerationConfig(max_new_tokens=5, strategy="beam", num_beams=3, length_penalty=1.0)
    result = generate(TorchStep(model), _prompt(CONTEXT), TOKENS, cfg)
    blank, stop = result.blanks[0], result.stop_tokens[0]
    seq, total = [*CONTEXT, SOP], 0.0
    for t in blank + ([stop] if stop is not None else []):
        total += float(_full_logprobs(model, seq)[t])
        seq.append(t)
    # cached fp32 steps versus full fp32 recomputes: equal up to fp32 rounding of the logits
    assert result.scores[0] == pytest.approx(total / max(len(blank), 1), abs=1e-4)
    greedy = generate(TorchStep(model), _prompt(CONTEXT), TOKENS, GenerationConfig(max_new_tokens=5))
    g_blank = greedy.blanks[0]
    g_total = greedy.scores[0]
    assert result.scores[0] >= g_total / max(len(g_blank), 1) - 1e-6  # the beam is at least as good as greedy
