"""Generation over the step contract (glm_core.generation), checked against an independent float64 toy GLM.

``ToyGLM`` below is a tiny pure-numpy GLM (pre-LN layers, 2-D position embeddings, the sep visibility rule of
DESIGN.md, a real K/V cache). Without a cache it is the full-recompute reference: every cached decoding step must give
the logits of a fresh forward over the whole sequence fed so far.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest

from glm_core.errors import ConfigError, LayoutError
from glm_core.generation import (
    GenerationConfig,
    banned_ngram_tokens,
    generate,
    generate_batch,
    log_softmax,
    warp_logits,
)
from glm_core.layout import (
    GLMInput,
    build_candidate_sequences,
    build_generation_prompt,
    build_packed_multiple_choice,
    build_shared_prefix_candidates,
    build_single_token_cloze,
)
from glm_core.special_tokens import SpecialTokens

TOKENS = SpecialTokens(pad=0, eos=1, cls=2, sep=3, mask=4, unk=5, sop=6, eop=7, gmask=8, smask=9)
Past = list[tuple[np.ndarray, np.ndarray]] | None


# ----------------------------------------------------------------------------------------------------------------------
# An independent float64 toy GLM with a K/V cache
# ----------------------------------------------------------------------------------------------------------------------


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * g + b


class ToyGLM:
    """Random-weight GLM in float64: ``x = E[tok] + P[pos] + Q[block]``, pre-LN attention + MLP, tied head."""

    def __init__(self, vocab: int = 32, hidden: int = 16, heads: int = 2, layers: int = 2, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.vocab, self.heads, self.d = vocab, heads, hidden // heads

        def w(*shape: int, scale: float = 0.5) -> np.ndarray:
            return rng.normal(0.0, scale, size=shape)

        self.word, self.pos, self.block = w(vocab, hidden), w(65, hidden), w(65, hidden)
        self.layers = [
            dict(
                g1=1 + w(hidden, scale=0.1),
                b1=w(hidden, scale=0.1),
                qkv=w(hidden, 3 * hidden, scale=0.4),
                out=w(hidden, hidden, scale=0.3),
                g2=1 + w(hidden, scale=0.1),
                b2=w(hidden, scale=0.1),
                fc1=w(hidden, 4 * hidden, scale=0.3),
                fc2=w(4 * hidden, hidden, scale=0.2),
            )  # fmt: skip
            for _ in range(layers)
        ]
        self.g_final, self.b_final = 1 + w(hidden, scale=0.1), w(hidden, scale=0.1)

    def _split(self, x: np.ndarray) -> np.ndarray:  # [B, S, h] -> [B, H, S, d]
        b, s, _ = x.shape
        return x.reshape(b, s, self.heads, self.d).transpose(0, 2, 1, 3)

    def forward(
        self, input_ids: np.ndarray, position_ids: np.ndarray, visible: np.ndarray, past: Past
    ) -> tuple[np.ndarray, Past]:
        """``visible [B, S, P+S]`` booleans; returns float64 logits ``[B, S, V]`` and the extended cache."""
        x = self.word[input_ids] + self.pos[position_ids[:, 0]] + self.block[position_ids[:, 1]]  # [B, S, h]
        present = []
        for i, p in enumerate(self.layers):
            h = _layer_norm(x, p["g1"], p["b1"])
            q, k, v = np.split(h @ p["qkv"], 3, axis=-1)
            q, k, v = self._split(q), self._split(k), self._split(v)  # [B, H, S, d]
            if past is not None:
                k = np.concatenate([past[i][0], k], axis=2)  # [B, H, P+S, d]
                v = np.concatenate([past[i][1], v], axis=2)
            present.append((k, v))
            scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(self.d)  # [B, H, S, P+S]
            scores = np.where(visible[:, None], scores, -1e9)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            attn = (probs @ v).transpose(0, 2, 1, 3).reshape(x.shape)  # [B, S, h]
            x = x + attn @ p["out"]
            h2 = _layer_norm(x, p["g2"], p["b2"]) @ p["fc1"]
            x = x + np.tanh(h2) * h2 @ p["fc2"]
        x = _layer_norm(x, self.g_final, self.b_final)
        return x @ self.word.T, present

    # --- the step contract ---------------------------------------------------------------------------------------
    def step(
        self, input_ids: np.ndarray, position_ids: np.ndarray, sep: np.ndarray, past: Past
    ) -> tuple[np.ndarray, Past]:
        b, s = input_ids.shape
        p = self.past_length(past)
        t = np.arange(s)[:, None]
        j = np.arange(p + s)[None, :]
        # DESIGN.md: key j visible to query t iff j < P or (j - P) < sep[b] or (j - P) <= t
        visible = (j < p) | ((j - p) < np.asarray(sep)[:, None, None]) | ((j - p) <= t)  # [B, S, P+S]
        logits, present = self.forward(input_ids, position_ids, np.broadcast_to(visible, (b, s, p + s)), past)
        return logits.astype(np.float32), present

    def reorder_past(self, past: Past, index: np.ndarray) -> Past:
        assert past is not None
        return [(k[index], v[index]) for k, v in past]

    def past_length(self, past: Past) -> int:
        return 0 if past is None else past[0][0].shape[2]


class Recorder:
    """Wraps a backend and keeps every step call: (input_ids, position_ids, sep, past length, logits)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, []

    def step(self, input_ids, position_ids, sep, past):
        logits, present = self.inner.step(input_ids, position_ids, sep, past)
        self.calls.append(
            dict(ids=input_ids.copy(), pos=position_ids.copy(), sep=np.asarray(sep).copy(),
                 past_len=self.inner.past_length(past), logits=logits.copy())
        )  # fmt: skip
        return logits, present

    def reorder_past(self, past, index):
        return self.inner.reorder_past(past, index)

    def past_length(self, past):
        return self.inner.past_length(past)


class ScriptedBackend:
    """A fake model whose logits depend only on what was fed since the last ``sop``: ``script[mask_pos][k]`` is the
    preferred token after k tokens of the blank at ``mask_pos`` (logit 10), ``second`` the runner-up (logit 5)."""

    def __init__(self, vocab: int, script: dict[int, list[int]], second: int = 10, default: int = 11) -> None:
        self.vocab, self.script, self.second, self.default = vocab, script, second, default

    def _row(self, fed: list[tuple[int, int, int]]) -> np.ndarray:
        row = np.zeros(self.vocab, dtype=np.float32)
        starts = [i for i, (tok, _, block) in enumerate(fed) if tok == TOKENS.sop and block == 1]
        preferred = self.default
        if starts:
            mask_pos = fed[starts[-1]][1]
            k = len(fed) - starts[-1] - 1
            plan = self.script.get(mask_pos, [])
            preferred = plan[k] if k < len(plan) else self.default
        row[self.second] = 5.0
        row[preferred] = 10.0
        return row

    def step(self, input_ids, position_ids, sep, past):
        rows = past if past is not None else [[] for _ in range(input_ids.shape[0])]
        present, logits = [], np.zeros((*input_ids.shape, self.vocab), dtype=np.float32)
        for b, fed in enumerate(rows):
            fed = list(fed)
            for i in range(input_ids.shape[1]):
                fed.append((int(input_ids[b, i]), int(position_ids[b, 0, i]), int(position_ids[b, 1, i])))
                logits[b, i] = self._row(fed)
            present.append(fed)
        return logits, present

    def reorder_past(self, past, index):
        return [list(past[i]) for i in index]

    def past_length(self, past):
        return 0 if past is None else len(past[0])


def test_toy_cache_matches_full_forward():
    # the reference itself: prefill + 3 single-token chunks == one forward over everything (sep per sample)
    toy = ToyGLM(seed=3)
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 32, size=(2, 9))
    pos = np.stack([np.stack([np.arange(9), np.r_[np.zeros(6, int), 1, 2, 3]])] * 2)
    sep = np.array([6, 4])
    full, _ = toy.step(ids, pos, sep, None)
    logits, past = toy.step(ids[:, :6], pos[:, :, :6], sep, None)
    np.testing.assert_allclose(logits, full[:, :6], rtol=1e-6, atol=1e-6)
    for t in range(6, 9):
        logits, past = toy.step(ids[:, t : t + 1], pos[:, :, t : t + 1], np.zeros(2, int), past)
        np.testing.assert_allclose(logits[:, 0], full[:, t], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Cached decoding == full recomputation
# ----------------------------------------------------------------------------------------------------------------------


def _prompts_of_length_10() -> list[GLMInput]:
    two_blanks = build_generation_prompt([10, TOKENS.mask, 11, 12, 13, TOKENS.mask, 14, 15], TOKENS)  # sep = 10
    cloze = build_single_token_cloze([16, 17, TOKENS.mask, 18, 19, 20, 21], TOKENS)  # [CLS] A [eos] [sop], sep 9
    forced = build_candidate_sequences([22, TOKENS.mask, 23, 24, 25], [[26, 27, 28]], TOKENS)[0]  # sep 7
    prompts = [two_blanks, cloze, forced]
    assert [len(p) for p in prompts] == [10, 10, 10] and [p.sep for p in prompts] == [10, 9, 7]
    return prompts


def test_cached_decoding_equals_full_recomputation_batch_of_three():
    toy = ToyGLM(seed=1)
    rec = Recorder(toy)
    config = GenerationConfig(max_new_tokens=21, min_length=21)  # no early stop: >= 20 cached steps per sample
    prompts = _prompts_of_length_10()
    generate_batch(rec, prompts, TOKENS, config)
    assert len(rec.calls) == 1 + 43  # prefill, then blank 1 (sop + 20 + flush of the 21st) and blank 2 (sop + 20)
    assert rec.calls[0]["sep"].tolist() == [10, 9, 7]
    checked_per_sample = []
    for b, prompt in enumerate(prompts):
        ids, pos = list(prompt.input_ids), [list(prompt.position_ids[0]), list(prompt.position_ids[1])]
        checked = 0
        for call in rec.calls[1:]:
            assert call["sep"].tolist() == [0, 0, 0]  # every chunk after the prefill uses sep = 0
            ids.append(int(call["ids"][b, 0]))
            pos[0].append(int(call["pos"][b, 0, 0]))
            pos[1].append(int(call["pos"][b, 1, 0]))
            if call["ids"][b, 0] == TOKENS.pad and call["pos"][b, 1, 0] == 0:
                break  # this sample had finished; its row only carries filler
            full, _ = toy.step(np.asarray([ids]), np.asarray([pos]), np.asarray([prompt.sep]), None)
            np.testing.assert_allclose(call["logits"][b, -1], full[0, -1], rtol=1e-5, atol=1e-5)
            checked += 1
        checked_per_sample.append(checked)
    # two blanks for the Part-A prompt; the two prompts with a started Part B continue one blank (21 predictions,
    # the first from the prefill, the last one's token never fed)
    assert checked_per_sample == [43, 20, 20]


def test_batched_greedy_equals_one_prompt_at_a_time():
    toy = ToyGLM(seed=2)
    config = GenerationConfig(max_new_tokens=6)
    prompts = _prompts_of_length_10()
    together = generate_batch(toy, prompts, TOKENS, config)
    alone = [generate(toy, p, TOKENS, config) for p in prompts]
    assert [r.blanks for r in together] == [r.blanks for r in alone]
    np.testing.assert_allclose([x for r in together for x in r.scores], [x for r in alone for x in r.scores], rtol=1e-5)


def test_unequal_lengths_run_as_separate_batches_without_padding():
    toy = ToyGLM(seed=2)
    rec = Recorder(toy)
    prompts = [build_generation_prompt([10, 11], TOKENS), build_generation_prompt([12, 13, 14], TOKENS)]
    prompts.append(build_generation_prompt([15, 16], TOKENS))
    config = GenerationConfig(max_new_tokens=4)
    results = generate_batch(rec, prompts, TOKENS, config)
    prefills = [c for c in rec.calls if c["past_len"] == 0]
    assert sorted(c["ids"].shape for c in prefills) == [(1, 5), (2, 4)]
    assert not any((c["ids"] == TOKENS.pad).any() for c in prefills)
    assert [r.blanks for r in results] == [generate(toy, p, TOKENS, config).blanks for p in prompts]


# ----------------------------------------------------------------------------------------------------------------------
# Blank filling recipe (spec §2.3a): what reaches step()
# ----------------------------------------------------------------------------------------------------------------------


def test_two_blanks_filled_left_to_right_with_spec_positions():
    prompt = build_generation_prompt([20, TOKENS.mask, 21, TOKENS.mask, 22], TOKENS)  # [CLS] 20 M 21 M 22 [eos]
    assert prompt.mask_positions == (2, 4)
    rec = Recorder(ScriptedBackend(32, {2: [12, 13, TOKENS.eop], 4: [14, TOKENS.eos]}))
    result = generate(rec, prompt, TOKENS, GenerationConfig(max_new_tokens=8))
    fed = [(c["ids"][0].tolist(), c["pos"][0].tolist(), c["sep"].tolist()) for c in rec.calls]
    assert fed == [
        (prompt.input_ids.tolist(), prompt.position_ids.tolist(), [7]),  # prefill: sep = len, positions arange, block 0
        ([TOKENS.sop], [[2], [1]], [0]),  # sop at (mask_pos, 1)
        ([12], [[2], [2]], [0]),  # k-th token at (mask_pos, k + 1)
        ([13], [[2], [3]], [0]),  # -> eop, which is not fed back
        ([TOKENS.sop], [[4], [1]], [0]),  # next blank: same cache, block restarts at 1
        ([14], [[4], [2]], [0]),  # -> eos stops too
    ]
    assert [c["past_len"] for c in rec.calls] == [0, 7, 8, 9, 10, 11]
    assert result.blanks == [[12, 13], [14]]
    assert result.mask_positions == [2, 4]
    assert result.stop_tokens == [TOKENS.eop, TOKENS.eos]
    assert result.sequence == [TOKENS.cls, 20, 12, 13, 21, 14, 22, TOKENS.eos]


def test_length_limit_feeds_the_last_token_before_the_next_blank():
    prompt = build_generation_prompt([TOKENS.mask, 20, TOKENS.mask], TOKENS)
    rec = Recorder(ScriptedBackend(32, {1: [12, 13, 14], 3: [15, 16, 17]}))
    result = generate(rec, prompt, TOKENS, GenerationConfig(max_new_tokens=2))
    fed = [(c["ids"][0, 0], c["pos"][0, 0, 0], c["pos"][0, 1, 0]) for c in rec.calls[1:]]
    # 13 hits the limit; it is still fed (so blank 2 sees it), its prediction unused; blank 2's last token is not fed
    assert fed == [(TOKENS.sop, 1, 1), (12, 1, 2), (13, 1, 3), (TOKENS.sop, 3, 1), (15, 3, 2)]
    assert result.blanks == [[12, 13], [15, 16]] and result.stop_tokens == [None, None]


def test_prompt_with_started_part_b_continues_that_blank():
    prompt = build_candidate_sequences([20, TOKENS.mask, 21], [[12, 13, 99]], TOKENS)[0]  # ... [sop] 12 13, sep at sop
    rec = Recorder(ScriptedBackend(128, {2: [12, 13, 14, TOKENS.eop]}))
    result = generate(rec, prompt, TOKENS, GenerationConfig(max_new_tokens=5))
    assert rec.calls[0]["sep"].tolist() == [prompt.sep]
    assert (rec.calls[1]["ids"][0, 0], *rec.calls[1]["pos"][0, :, 0]) == (14, 2, 4)  # next block after 13 (block 3)
    assert result.blanks == [[14]] and result.sequence == [TOKENS.cls, 20, 12, 13, 14, 21, TOKENS.eos]


def test_prompt_without_blank_is_rejected():
    prompt = build_generation_prompt([20], TOKENS)
    no_blank = GLMInput(prompt.input_ids, prompt.position_ids, prompt.sep, prompt.targets, prompt.loss_mask)
    with pytest.raises(LayoutError, match="no blank"):
        generate(ToyGLM(), no_blank, TOKENS, GenerationConfig())


# ----------------------------------------------------------------------------------------------------------------------
# Logits processing, sampling
# ----------------------------------------------------------------------------------------------------------------------


def test_min_length_forbids_stop_tokens():
    prompt = build_generation_prompt([20], TOKENS)
    backend = ScriptedBackend(32, {}, second=TOKENS.eos, default=TOKENS.eop)  # the model wants to stop at once
    assert generate(backend, prompt, TOKENS, GenerationConfig()).blanks == [[]]
    result = generate(backend, prompt, TOKENS, GenerationConfig(min_length=3))
    assert len(result.blanks[0]) == 3 and result.stop_tokens == [TOKENS.eop]
    assert not {TOKENS.eop, TOKENS.eos} & set(result.blanks[0])
    # length_penalty 0 (plain sum): every extra token costs, so the beam stops as soon as min_length allows
    beam_config = GenerationConfig(strategy="beam", num_beams=2, min_length=2, length_penalty=0.0)
    beam = generate(backend, prompt, TOKENS, beam_config)
    assert len(beam.blanks[0]) == 2


def test_banned_ngram_tokens_rule():
    assert banned_ngram_tokens([1, 2, 3, 1, 2], 3) == {3}
    assert banned_ngram_tokens([1, 2, 3, 1, 2], 2) == {3}
    assert banned_ngram_tokens([1, 2, 1], 2) == {2}
    assert banned_ngram_tokens([1, 2], 3) == set()
    assert banned_ngram_tokens([4, 5], 1) == {4, 5}


def test_no_repeat_ngram_forbids_repeats():
    prompt = build_generation_prompt([20], TOKENS)
    gmask_pos = prompt.mask_positions[0]
    backend = ScriptedBackend(32, {gmask_pos: [12, 13] * 8})  # the model loves "12 13 12 13 ..."
    plain = generate(backend, prompt, TOKENS, GenerationConfig(max_new_tokens=6)).blanks[0]
    assert plain == [12, 13, 12, 13, 12, 13]
    blank = generate(backend, prompt, TOKENS, GenerationConfig(max_new_tokens=6, no_repeat_ngram_size=2)).blanks[0]
    bigrams = [tuple(blank[i : i + 2]) for i in range(len(blank) - 1)]
    assert len(bigrams) == len(set(bigrams))
    assert blank[:3] == [12, 13, 12] and blank[3] != 13  # "12 13" would repeat: the runner-up is taken


def test_bad_words_are_never_generated():
    prompt = build_generation_prompt([20, 21], TOKENS)
    toy = ToyGLM(seed=4)
    first = generate(toy, prompt, TOKENS, GenerationConfig(max_new_tokens=1)).blanks[0][0]
    again = generate(toy, prompt, TOKENS, GenerationConfig(max_new_tokens=5, bad_words=(first,))).blanks[0]
    assert first not in again
    banned_by_table = generate(toy, prompt, TOKENS.replace(bad_words=(first,)), GenerationConfig(max_new_tokens=5))
    assert first not in banned_by_table.blanks[0]


def test_sampling_is_reproducible_with_a_seed():
    toy = ToyGLM(seed=5)
    prompt = build_generation_prompt([20, TOKENS.mask, 21, 22], TOKENS)
    config = GenerationConfig(strategy="sample", max_new_tokens=12, min_length=12, seed=7)
    a = generate(toy, prompt, TOKENS, config)
    b = generate(toy, prompt, TOKENS, config)
    c = generate(toy, prompt, TOKENS, GenerationConfig(strategy="sample", max_new_tokens=12, min_length=12, seed=8))
    assert a.blanks == b.blanks and a.scores == b.scores
    assert a.blanks != c.blanks


def test_top_k_one_equals_greedy():
    toy = ToyGLM(seed=6)
    prompts = _prompts_of_length_10()
    greedy = generate_batch(toy, prompts, TOKENS, GenerationConfig(max_new_tokens=8))
    top1 = generate_batch(
        toy, prompts, TOKENS, GenerationConfig(strategy="sample", top_k=1, temperature=0.7, max_new_tokens=8, seed=3)
    )
    assert [r.blanks for r in top1] == [r.blanks for r in greedy]


def test_warp_logits_top_k_top_p_temperature():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    np.testing.assert_array_equal(np.isfinite(warp_logits(logits, top_k=2)), [True, True, False, False])
    np.testing.assert_array_equal(np.isfinite(warp_logits(logits, top_p=0.7)), [True, True, False, False])
    np.testing.assert_array_equal(np.isfinite(warp_logits(logits, top_p=0.81)), [True, True, True, False])
    np.testing.assert_array_equal(np.isfinite(warp_logits(logits, top_p=0.01)), [True, False, False, False])
    np.testing.assert_allclose(warp_logits(logits, temperature=0.5), logits / 0.5)


def test_sampling_draws_only_from_top_k_with_the_warped_distribution():
    # a one-step sampler run many times: frequencies follow softmax over the two kept tokens
    prompt = build_generation_prompt([20], TOKENS)
    toy = ToyGLM(seed=9)
    _, past = toy.step(prompt.input_ids[None], prompt.position_ids[None], np.array([prompt.sep]), None)
    sop_logits, _ = toy.step(
        np.array([[TOKENS.sop]]), np.array([[[prompt.mask_positions[0]], [1]]]), np.array([0]), past
    )
    row = sop_logits[0, 0].astype(np.float64)
    kept = np.argsort(-row)[:2]
    expected = np.exp(log_softmax(row[kept]))
    counts = {int(k): 0 for k in kept}
    rng_seeds = range(400)
    for seed in rng_seeds:
        out = generate(toy, prompt, TOKENS, GenerationConfig(strategy="sample", top_k=2, max_new_tokens=1, seed=seed))
        token = out.blanks[0][0] if out.blanks[0] else out.stop_tokens[0]
        counts[int(token)] += 1  # KeyError here would mean a token outside the top 2 was drawn
    freq = counts[int(kept[0])] / len(rng_seeds)
    assert abs(freq - expected[0]) < 4 * math.sqrt(expected[0] * expected[1] / len(rng_seeds))


def test_config_validation():
    with pytest.raises(ConfigError, match="strategy"):
        GenerationConfig(strategy="nucleus")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="top_p"):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)


# ----------------------------------------------------------------------------------------------------------------------
# Beam search
# ----------------------------------------------------------------------------------------------------------------------

SMALL = SpecialTokens(pad=0, eos=0, cls=1, sep=0, mask=2, unk=0, sop=3, eop=4)  # a 5-token vocabulary


def _exhaustive_best(toy: ToyGLM, prompt: GLMInput, steps: int, length_penalty: float) -> tuple[list[int], float]:
    """Score every blank content of <= ``steps`` tokens by full recomputation, with the HF hypothesis rule:
    stopped sequences score (sum logp incl. the stop) / max(len, 1)^lp, sequences cut at ``steps`` sum / steps^lp."""
    mask_pos = prompt.mask_positions[0]
    words = [t for t in range(5) if t not in (SMALL.eop, SMALL.eos)]
    best: tuple[float, list[int]] = (-math.inf, [])

    def logp_next(prefix: list[int]) -> np.ndarray:
        ids = [*prompt.input_ids.tolist(), SMALL.sop, *prefix]
        n_b = len(prefix) + 1
        pos = [[*range(prompt.sep), *[mask_pos] * n_b], [0] * prompt.sep + list(range(1, n_b + 1))]
        logits, _ = toy.step(np.asarray([ids]), np.asarray([pos]), np.asarray([prompt.sep]), None)
        return log_softmax(logits[0, -1])

    for length in range(steps + 1):
        for seq in itertools.product(words, repeat=length):
            total = sum(logp_next(list(seq[:i]))[seq[i]] for i in range(length))
            if length == steps:
                candidates = [total / steps**length_penalty]
            else:
                lp = logp_next(list(seq))
                candidates = [(total + lp[s]) / max(length, 1) ** length_penalty for s in (SMALL.eop, SMALL.eos)]
            for score in candidates:
                if score > best[0]:
                    best = (score, list(seq))
    return best[1], best[0]


# seeds picked so that the winners differ: [3, 2, 2], [2, 2, 1], [] (stop at once), [2, 2, 2] (cut at 3 tokens)
@pytest.mark.parametrize("length_penalty,seed", [(1.0, 2), (1.0, 3), (1.0, 0), (0.5, 2), (2.0, 0)])
def test_beam_search_equals_exhaustive_search(length_penalty, seed):
    toy = ToyGLM(vocab=5, seed=seed)
    prompt = build_generation_prompt([SMALL.mask], SMALL)  # [CLS] [MASK] [eos]
    # 64 beams > every live continuation (3^2 x 5 candidates at the last step): nothing is pruned, so HF beam search
    # must find the exhaustive optimum.
    config = GenerationConfig(strategy="beam", num_beams=64, max_new_tokens=3, length_penalty=length_penalty)
    result = generate(toy, prompt, SMALL, config)
    tokens, score = _exhaustive_best(toy, prompt, 3, length_penalty)
    assert result.blanks[0] == tokens
    assert result.scores[0] == pytest.approx(score, rel=1e-5)  # float32 logits: cached vs full differ in the last ulp


def test_beam_search_scores_hypotheses_like_hf():
    # Hand-checkable two-beam case with the scripted model: after sop the best token is 12 (logit 10), then 10 (5).
    prompt = build_generation_prompt([20], TOKENS)
    m = prompt.mask_positions[0]
    backend = ScriptedBackend(32, {m: [12, TOKENS.eop]})
    result = generate(backend, prompt, TOKENS, GenerationConfig(strategy="beam", num_beams=2, max_new_tokens=4))
    assert result.blanks == [[12]] and result.stop_tokens == [TOKENS.eop]
    row = backend._row([(TOKENS.sop, m, 1), (12, m, 2)]).astype(np.float64)
    first = backend._row([(TOKENS.sop, m, 1)]).astype(np.float64)
    expected = (log_softmax(first)[12] + log_softmax(row)[TOKENS.eop]) / 1.0
    assert result.scores[0] == pytest.approx(expected)


def test_beam_search_fills_two_blanks_and_refeeds_the_winner():
    prompt = build_generation_prompt([TOKENS.mask, 20, TOKENS.mask], TOKENS)
    rec = Recorder(ScriptedBackend(32, {1: [12, 13, TOKENS.eop], 3: [14, TOKENS.eop]}))
    result = generate(rec, prompt, TOKENS, GenerationConfig(strategy="beam", num_beams=3, max_new_tokens=5))
    assert result.blanks == [[12, 13], [14]]
    assert result.sequence == [TOKENS.cls, 12, 13, 20, 14, TOKENS.eos]
    chunks = [(c["ids"][0].tolist(), c["pos"][0].tolist()) for c in rec.calls if c["ids"].shape[0] == 1][1:]
    # the winner of blank 1 is re-fed as one causal chunk after its sop, then blank 2 opens with sop at (3, 1)
    assert ([12, 13], [[1, 1], [2, 3]]) in chunks
    assert chunks[-1] == ([TOKENS.sop], [[3], [1]])


# ----------------------------------------------------------------------------------------------------------------------
# Layouts through the step contract: the builders agree with each other on a real (toy) model
# ----------------------------------------------------------------------------------------------------------------------


def _sequence_logprob(logits: np.ndarray, targets: np.ndarray, start: int, end: int) -> float:
    logp = log_softmax(logits[start:end])
    return float(logp[np.arange(end - start), targets[start:end]].sum())


@pytest.mark.parametrize("append_eop", [False, True])
def test_shared_prefix_candidates_equal_one_sequence_per_candidate(append_eop):
    toy = ToyGLM(seed=11)
    text = [20, 21, TOKENS.mask, 22]
    candidates = [[23], [24, 25], [26, 27, 28]]
    per_candidate = build_candidate_sequences(text, candidates, TOKENS, append_eop=append_eop)
    expected = []
    for s in per_candidate:
        logits, _ = toy.step(s.input_ids[None], s.position_ids[None], np.array([s.sep]), None)
        expected.append(_sequence_logprob(logits[0], s.targets, *s.candidate_spans[0]))

    prefix, chunks = build_shared_prefix_candidates(text, candidates, TOKENS, append_eop=append_eop)
    _, past = toy.step(prefix.input_ids[None], prefix.position_ids[None], np.array([prefix.sep]), None)
    past_c = toy.reorder_past(past, np.zeros(len(chunks), dtype=np.int64))  # one cached Part A over C candidates
    width = max(len(c) for c in chunks)
    ids = np.full((len(chunks), width), TOKENS.pad)
    pos = np.zeros((len(chunks), 2, width), dtype=np.int64)
    for i, c in enumerate(chunks):  # right padding after the chunk is hidden by causality
        ids[i, : len(c)], pos[i, :, : len(c)] = c.input_ids, c.position_ids
    logits, _ = toy.step(ids, pos, np.zeros(len(chunks), dtype=np.int64), past_c)
    got = [_sequence_logprob(logits[i], c.targets, *c.candidate_spans[0]) for i, c in enumerate(chunks)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_packed_multiple_choice_equals_one_sequence_per_choice():
    toy = ToyGLM(seed=12)
    text = [20, TOKENS.mask, 21, TOKENS.mask]
    choices = [[23, 24], [25], [26, 27, 28]]
    packed = build_packed_multiple_choice(text, choices, TOKENS)  # HF: first [MASK], no eop
    logits, _ = toy.forward(packed.input_ids[None], packed.position_ids[None], packed.attention_mask[None] > 0, None)
    got = [_sequence_logprob(logits[0], packed.targets, *span) for span in packed.candidate_spans]
    expected = []
    for s in build_candidate_sequences(text, choices, TOKENS, mask_position="first"):
        single, _ = toy.forward(s.input_ids[None], s.position_ids[None], _sep_visible(s), None)
        expected.append(_sequence_logprob(single[0], s.targets, *s.candidate_spans[0]))
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def _sep_visible(s: GLMInput) -> np.ndarray:
    n = len(s)
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    return ((j < s.sep) | (j <= i))[None]


def test_padding_rows_above_the_vocabulary_are_never_generated():
    """Embedding tables are padded to a multiple of 128 (spec §1.6); those rows are no tokens."""
    from glm_core.generation import GenerationConfig, process_logits

    scores = np.zeros(10)
    scores[8] = 5.0  # the best logit sits in a padding row
    config = GenerationConfig(vocab_size=8)
    out = process_logits(scores, [], 0, config, stop_ids=[], banned=[])
    assert np.isneginf(out[8:]).all() and np.isfinite(out[:8]).all()
    assert int(np.argmax(out)) < 8
