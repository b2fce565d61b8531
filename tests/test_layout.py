"""glm_core.layout: every builder against the spec's layouts (glm_reference §2.3-§2.4, §3.1, §5, §6.2-§6.4).

Model-level agreement between builders (shared prefix vs one sequence per candidate, packed multiple choice) is
checked through a toy GLM in tests/test_generation.py.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from glm_core.errors import LayoutError
from glm_core.layout import (
    GLMInput,
    blank_token_position,
    build_candidate_sequences,
    build_generation_prompt,
    build_lambada_input,
    build_packed_multiple_choice,
    build_rolling_windows,
    build_scoring_input,
    build_seq2seq_input,
    build_shared_prefix_candidates,
    build_single_token_cloze,
    collate,
    corrupt,
    find_mask_position,
    sample_document_span,
    sample_sentence_spans,
    sample_spans,
    span_length_distribution,
)
from glm_core.special_tokens import SpecialTokens, bert_tokens, gpt2_tokens

REPO_ROOT = Path(__file__).resolve().parents[1]

# Small distinct ids (pad != eos on purpose, to catch one used for the other); text tokens are >= 10.
T = SpecialTokens(pad=0, eos=1, cls=2, sep=3, mask=4, unk=5, sop=6, eop=7, gmask=8, smask=9)
NO_TASK_MASK = SpecialTokens(pad=0, eos=1, cls=2, sep=3, mask=4, unk=5, sop=6, eop=7)


def rows(sample: GLMInput) -> tuple[list[int], list[int], list[int], list[int], list[float]]:
    return (
        sample.input_ids.tolist(),
        sample.position_ids[0].tolist(),
        sample.position_ids[1].tolist(),
        sample.targets.tolist(),
        sample.loss_mask.tolist(),
    )


# ----------------------------------------------------------------------------------------------------------------------
# Pretraining span corruption: the worked example of spec §3.1, exactly
# ----------------------------------------------------------------------------------------------------------------------


def test_corrupt_reproduces_the_spec_worked_example():
    x1, x2, x3, x4, x5, x6 = 11, 12, 13, 14, 15, 16
    M, S, E = T.mask, T.sop, T.eop
    # spans {x3}, {x5, x6}; shuffled order (span2, span1)
    sample = corrupt([x1, x2, x3, x4, x5, x6], spans=[(2, 3), (4, 6)], order=[1, 0], specials=T, mask_id=M)
    ids, pos, block, targets, loss = rows(sample)
    assert ids == [x1, x2, M, x4, M, S, x5, x6, S, x3]
    assert pos == [0, 1, 2, 3, 4, 4, 4, 4, 2, 2]
    assert block == [0, 0, 0, 0, 0, 1, 2, 3, 1, 2]
    assert sample.sep == 5
    assert targets[5:] == [x5, x6, E, x3, E]
    assert targets[:5] == [T.pad] * 5 and loss == [0.0] * 5 + [1.0] * 5  # spec §5: loss on Part B only
    assert sample.mask_positions == (2, 4)
    assert sample.candidate_spans == ((5, 8), (8, 10))


def test_corrupt_with_cls_shifts_everything_by_one():
    sample = corrupt([T.cls, 11, 12, 13, 14, 15, 16], spans=[(3, 4), (5, 7)], order=[1, 0], specials=T, mask_id=T.mask)
    ids, pos, block, _, _ = rows(sample)
    assert ids == [T.cls, 11, 12, T.mask, 14, T.mask, T.sop, 15, 16, T.sop, 13]
    assert pos == [0, 1, 2, 3, 4, 5, 5, 5, 5, 3, 3]
    assert block == [0] * 6 + [1, 2, 3, 1, 2]
    assert sample.sep == 6


def test_corrupt_document_level_suffix_is_prefix_gmask_then_sop_span():
    # spec §3.1 "gpt" objective: [gMASK] at |src|, sop and the suffix at |src|, block ids 1..
    sample = corrupt([T.cls, 11, 12, 13, 14], spans=[(3, 5)], order=[0], specials=T, mask_id=T.gmask)
    ids, pos, block, targets, _ = rows(sample)
    assert ids == [T.cls, 11, 12, T.gmask, T.sop, 13, 14]
    assert pos == [0, 1, 2, 3, 3, 3, 3] and block == [0, 0, 0, 0, 1, 2, 3]
    assert targets[4:] == [13, 14, T.eop]


def test_corrupt_without_eop_is_the_original_document_suffix():
    """GLM:blocklm_utils.py:415-419 (4f61ed7): ``tokens = source + [gMASK, sop] + target[:-1]``, ``targets = source
    + [gMASK] + target``: the suffix blank of the document objective has no [eop]."""
    sample = corrupt([T.cls, 11, 12, 13, 14], spans=[(3, 5)], order=[0], specials=T, mask_id=T.gmask, eop=False)
    ids, pos, block, targets, loss_mask = rows(sample)
    assert ids == [T.cls, 11, 12, T.gmask, T.sop, 13]
    assert pos == [0, 1, 2, 3, 3, 3] and block == [0, 0, 0, 0, 1, 2]
    assert targets[4:] == [13, 14] and loss_mask == [0, 0, 0, 0, 1, 1]
    assert sample.candidate_spans == ((4, 6),)


@pytest.mark.parametrize(
    "spans,order,message",
    [
        ([], [], "at least one span"),
        ([(1, 3), (2, 4)], [0, 1], "overlaps"),
        ([(2, 2)], [0], "empty or outside"),
        ([(4, 9)], [0], "empty or outside"),
        ([(1, 2), (3, 4)], [0, 0], "permutation"),
    ],
)
def test_corrupt_rejects_bad_spans(spans, order, message):
    with pytest.raises(LayoutError, match=message):
        corrupt([11, 12, 13, 14, 15, 16], spans, order, T, T.mask)


# ----------------------------------------------------------------------------------------------------------------------
# Span samplers (spec §5)
# ----------------------------------------------------------------------------------------------------------------------


def test_span_length_distribution_is_renormalised_truncated_poisson():
    p = span_length_distribution(3.0, 39)
    assert p.shape == (39,) and p.sum() == pytest.approx(1.0)
    # P(1) = 3 e^-3 / (1 - e^-3) (the tail beyond 39 is ~1e-30); P(3)/P(2) = lambda / 3 = 1
    assert p[0] == pytest.approx(3 * math.exp(-3) / (1 - math.exp(-3)), rel=1e-12)
    assert p[2] / p[1] == pytest.approx(1.0)
    assert p[1] == pytest.approx(4.5 * math.exp(-3) / (1 - math.exp(-3)), rel=1e-12)


@pytest.mark.parametrize("length", [7, 20, 64, 512])
def test_sample_spans_cover_the_ratio_without_overlap_and_with_gaps(length):
    rng = np.random.default_rng(length)
    for _ in range(200):
        spans = sample_spans(length, rng)
        goal = math.floor(0.15 * length)
        assert sum(e - s for s, e in spans) >= goal
        assert all(1 <= e - s <= 39 for s, e in spans)
        assert all(0 <= s < e <= length for s, e in spans)
        assert all(b[0] >= a[1] + 1 for a, b in zip(spans, spans[1:], strict=False))  # >= 1 free token between


def test_sample_spans_is_deterministic_and_empty_when_nothing_to_mask():
    a = sample_spans(300, np.random.default_rng(5))
    b = sample_spans(300, np.random.default_rng(5))
    assert a == b and a != sample_spans(300, np.random.default_rng(6))
    assert sample_spans(6, np.random.default_rng(0)) == []  # floor(0.15 * 6) = 0


def test_sample_spans_lengths_follow_the_poisson_weights():
    rng = np.random.default_rng(0)
    lengths = [e - s for _ in range(150) for s, e in sample_spans(1000, rng)]
    p = span_length_distribution()
    n = len(lengths)
    for k in (1, 2, 3, 4):
        freq = lengths.count(k) / n
        # 5 standard errors; the one threshold-crossing span per sample biases long lengths by well under that
        assert abs(freq - p[k - 1]) < 5 * math.sqrt(p[k - 1] * (1 - p[k - 1]) / n)


def test_sample_sentence_spans_takes_whole_sentences():
    dot = 99
    tokens = [11, 12, dot, 13, 14, 15, dot, 16, dot, 17, 18, 19, 20, dot]
    sentences = {(0, 3), (3, 7), (7, 9), (9, 14)}
    rng = np.random.default_rng(1)
    for _ in range(50):
        spans = sample_sentence_spans(tokens, [dot], rng, ratio=0.3)
        assert set(spans) <= sentences and spans == sorted(spans)
        assert sum(e - s for s, e in spans) >= math.floor(0.3 * len(tokens))


def test_sample_document_span_ranges():
    rng = np.random.default_rng(2)
    for _ in range(200):
        s, e = sample_document_span(40, rng, min_ratio=0.5)
        assert e == 40 and 20 <= e - s <= 39
        s, e = sample_document_span(40, rng, min_ratio=0.25, suffix=False)
        assert 0 <= s and e <= 40 and 10 <= e - s <= 39


# ----------------------------------------------------------------------------------------------------------------------
# Generation prompt (spec §2.3a)
# ----------------------------------------------------------------------------------------------------------------------


def test_generation_prompt_appends_gmask_without_eos_for_task_mask_models():
    p = build_generation_prompt([11, 12], T)
    assert p.input_ids.tolist() == [T.cls, 11, 12, T.gmask]  # text now ends with [gMASK]: no eos
    assert p.sep == 4 and p.mask_positions == (3,)
    assert p.position_ids.tolist() == [[0, 1, 2, 3], [0, 0, 0, 0]]


def test_generation_prompt_appends_mask_and_eos_without_task_mask():
    p = build_generation_prompt([11, 12], NO_TASK_MASK)
    assert p.input_ids.tolist() == [T.cls, 11, 12, T.mask, T.eos]
    assert p.mask_positions == (3,) and p.sep == 5


def test_generation_prompt_keeps_existing_blanks_left_to_right():
    p = build_generation_prompt([11, T.smask, 12, T.mask, 13], T)
    assert p.input_ids.tolist() == [T.cls, 11, T.smask, 12, T.mask, 13, T.eos]
    assert p.mask_positions == (2, 4)
    ends_gmask = build_generation_prompt([11, T.gmask], T)
    assert ends_gmask.input_ids.tolist() == [T.cls, 11, T.gmask]


def test_generation_prompt_with_real_token_tables():
    gpt2, bert = gpt2_tokens(), bert_tokens()
    assert build_generation_prompt([1000], gpt2).input_ids.tolist() == [50259, 1000, 50263]
    assert build_generation_prompt([1000], bert).input_ids.tolist() == [101, 1000, 103, 0]  # original eos = [PAD]


def test_generation_prompt_too_long():
    with pytest.raises(LayoutError, match=r"has 6 tokens, more than the limit of 5"):
        build_generation_prompt([11, 12, 13, 14], T, max_length=5)


def test_blank_token_position():
    assert blank_token_position(7, 0) == (7, 1)  # sop
    assert blank_token_position(7, 3) == (7, 4)


# ----------------------------------------------------------------------------------------------------------------------
# Cloze inputs (spec §2.4)
# ----------------------------------------------------------------------------------------------------------------------


def test_single_token_cloze_reads_at_sop():
    s = build_single_token_cloze([11, T.mask, 12], T)
    ids, pos, block, _, loss = rows(s)
    assert ids == [T.cls, 11, T.mask, 12, T.eos, T.sop]
    assert s.sep == 5 and s.candidate_spans == ((5, 6),)
    assert pos == [0, 1, 2, 3, 4, 2] and block == [0, 0, 0, 0, 0, 1]
    assert loss == [0.0] * 6


def test_mask_position_last_or_first():
    text = [T.mask, 11, T.mask]
    assert build_single_token_cloze(text, T).position_ids[0, -1] == 3  # original finetune code: last
    assert build_single_token_cloze(text, T, mask_position="first").position_ids[0, -1] == 1  # HF: first
    assert find_mask_position([5, 4, 8, 4], [4, 8], "last") == 3


def test_missing_mask_raises():
    with pytest.raises(LayoutError, match="no mask token"):
        build_single_token_cloze([11, 12], T)
    with pytest.raises(LayoutError, match="no mask token"):
        build_candidate_sequences([11], [[12]], T)


def test_candidate_sequences_layout():
    a, b = build_candidate_sequences([11, T.mask], [[20, 21, 22], [23]], T, append_eop=True)
    ids, pos, block, targets, loss = rows(a)
    # [CLS] 11 M [eos] | [sop] 20 21 22 ; targets 20 21 22 eop (sop predicts the first candidate token)
    assert ids == [T.cls, 11, T.mask, T.eos, T.sop, 20, 21, 22]
    assert a.sep == 4
    assert pos == [0, 1, 2, 3, 2, 2, 2, 2] and block == [0, 0, 0, 0, 1, 2, 3, 4]
    assert targets == [T.pad] * 4 + [20, 21, 22, T.eop] and loss == [0.0] * 4 + [1.0] * 4
    assert a.candidate_spans == ((4, 8),)
    assert b.input_ids.tolist() == [T.cls, 11, T.mask, T.eos, T.sop, 23] and b.targets[-2:].tolist() == [23, T.eop]
    plain = build_candidate_sequences([11, T.mask], [[23]], T)[0]
    assert plain.input_ids.tolist() == [T.cls, 11, T.mask, T.eos, T.sop] and plain.targets[-1] == 23


def test_shared_prefix_candidates_layout():
    prefix, (c0, c1) = build_shared_prefix_candidates([11, T.mask], [[20, 21, 22], [23]], T)
    assert prefix.input_ids.tolist() == [T.cls, 11, T.mask, T.eos] and prefix.sep == 4
    assert c0.sep == 0 and c0.input_ids.tolist() == [T.sop, 20, 21] and c0.targets.tolist() == [20, 21, 22]
    assert c0.position_ids.tolist() == [[2, 2, 2], [1, 2, 3]]
    assert c1.input_ids.tolist() == [T.sop] and c1.targets.tolist() == [23] and c1.candidate_spans == ((0, 1),)


def test_packed_multiple_choice_layout_and_mask():
    s = build_packed_multiple_choice([T.mask, 11], [[20, 21], [22]], T)
    ids, pos, block, targets, loss = rows(s)
    # context [CLS] M 11 [eos], then [sop] 20 | [sop]
    assert ids == [T.cls, T.mask, 11, T.eos, T.sop, 20, T.sop]
    assert pos == [0, 1, 2, 3, 1, 1, 1] and block == [0, 0, 0, 0, 1, 2, 1]
    assert targets[4:] == [20, 21, 22] and loss == [0.0] * 4 + [1.0] * 3
    assert s.candidate_spans == ((4, 6), (6, 7))
    expected = np.array(
        [
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 0, 0],  # choice 1 row 0: context + itself
            [1, 1, 1, 1, 1, 1, 0],  # choice 1 row 1: context + choice 1 causally
            [1, 1, 1, 1, 0, 0, 1],  # choice 2: never sees choice 1
        ]
    )
    np.testing.assert_array_equal(s.attention_mask, expected)


# ----------------------------------------------------------------------------------------------------------------------
# Left-to-right scoring, LAMBADA (spec §2.4-5, §6.2)
# ----------------------------------------------------------------------------------------------------------------------


def test_bidirectional_scoring_and_lambada_layout():
    s = build_lambada_input([11, 12, 13], [20, 21], T)
    ids, pos, block, targets, loss = rows(s)
    assert ids == [T.cls, 11, 12, 13, T.gmask, T.eos, T.sop, 20]
    assert s.sep == 6 and pos[6:] == [4, 4] and block[6:] == [1, 2]
    assert targets[6:] == [20, 21] and loss == [0.0] * 6 + [1.0, 1.0]
    with_mask = build_lambada_input([11], [20], T, mask_id=T.mask)
    assert with_mask.input_ids.tolist() == [T.cls, 11, T.mask, T.eos, T.sop]


def test_unidirectional_scoring_puts_the_context_into_part_b():
    s = build_scoring_input([11, 12, 13], [20, 21], T, unidirectional=True)
    ids, pos, block, targets, loss = rows(s)
    # spec §2.4-5: Part A = [CLS] first_token [gMASK]; the rest causal in Part B, loss on the continuation only
    assert ids == [T.cls, 11, T.gmask, T.sop, 12, 13, 20]
    assert s.sep == 3 and pos == [0, 1, 2, 2, 2, 2, 2] and block == [0, 0, 0, 1, 2, 3, 4]
    assert targets[3:] == [12, 13, 20, 21] and loss == [0.0] * 5 + [1.0, 1.0]
    assert s.candidate_spans == ((5, 7),)


def test_lambada_truncates_the_context_on_the_left():
    s = build_lambada_input(list(range(10, 30)), [40, 41], T, seq_len=10)
    assert len(s) == 10
    assert s.input_ids.tolist() == [T.cls, 25, 26, 27, 28, 29, T.gmask, T.eos, T.sop, 40]
    with pytest.raises(LayoutError, match="more than the limit of 10"):
        build_scoring_input(list(range(10, 30)), [40], T, max_length=10)
    with pytest.raises(LayoutError, match="even without context"):
        build_lambada_input([11], list(range(20, 40)), T, seq_len=10)


# ----------------------------------------------------------------------------------------------------------------------
# Rolling perplexity windows (spec §6.3)
# ----------------------------------------------------------------------------------------------------------------------


def _scored_document_indices(windows: list[GLMInput]) -> list[int]:
    scored = []
    for w in windows:
        start, end = w.scored_range
        positions = np.flatnonzero(w.loss_mask)
        assert len(positions) == end - start
        scored += list(range(start, end))
    return scored


@pytest.mark.parametrize("unidirectional", [False, True])
@pytest.mark.parametrize(
    "n,seq_len,stride", [(1, 8, 3), (2, 8, 3), (7, 8, 3), (8, 8, 3), (30, 8, 3), (31, 9, 8), (50, 17, 5)]
)
def test_rolling_windows_score_every_token_exactly_once(n, seq_len, stride, unidirectional):
    if unidirectional and stride == seq_len - 1:
        stride -= 1  # a unidirectional window's first token sits unscored in Part A: windows must overlap
    doc = list(range(100, 100 + n))
    windows = build_rolling_windows(doc, T, seq_len=seq_len, stride=stride, unidirectional=unidirectional)
    assert _scored_document_indices(windows) == list(range(1, n))  # every token but t0, once, in order
    for w in windows:
        start, end = w.scored_range
        # the scored targets are exactly those document tokens
        assert w.targets[w.loss_mask > 0].tolist() == doc[start:end]
        assert len(w) <= seq_len + 1  # window of seq_len - 1 tokens + [CLS] + [gMASK] + [sop] - 1


def test_rolling_windows_layout_first_and_later_window():
    doc = list(range(100, 112))
    w0, w1, *_ = build_rolling_windows(doc, T, seq_len=8, stride=3)
    # window 0 (7 tokens): Part A = [CLS] t0 [gMASK], all the rest scored in Part B
    assert w0.input_ids.tolist() == [T.cls, 100, T.gmask, T.sop, 101, 102, 103, 104, 105]
    assert w0.sep == 3 and w0.scored_range == (1, 7)
    # window 1 starts at 3: Part A = its first 7 - 3 = 4 tokens, the last 3 scored
    assert w1.input_ids.tolist() == [T.cls, 103, 104, 105, 106, T.gmask, T.sop, 107, 108]
    assert w1.sep == 6 and w1.scored_range == (7, 10)
    assert w1.position_ids[:, 6:].tolist() == [[5, 5, 5], [1, 2, 3]]


def test_rolling_windows_reject_bad_stride():
    with pytest.raises(LayoutError, match="stride"):
        build_rolling_windows([1, 2, 3], T, seq_len=8, stride=8)
    with pytest.raises(LayoutError, match=r"stride must lie in \[1, 6\]"):
        build_rolling_windows([1, 2, 3], T, seq_len=8, stride=7, unidirectional=True)


# ----------------------------------------------------------------------------------------------------------------------
# Seq2seq (spec §6.4)
# ----------------------------------------------------------------------------------------------------------------------


def test_seq2seq_inference_and_training_layouts():
    src = build_seq2seq_input([20, 21, 22, 23], T, prompt_ids=[30], max_source_length=6)
    assert src.input_ids.tolist() == [T.cls, T.smask, 30, 20, 21, 22]  # truncated to 6
    assert src.sep == 6 and src.mask_positions == (1,)
    train = build_seq2seq_input([20, 21], T, target_ids=[40, 41])
    ids, pos, block, targets, loss = rows(train)
    assert ids == [T.cls, T.smask, 20, 21, T.sop, 40, 41]
    assert train.sep == 4 and pos[4:] == [1, 1, 1] and block[4:] == [1, 2, 3]
    assert targets[4:] == [40, 41, T.eop] and loss == [0.0] * 4 + [1.0] * 3
    assert build_seq2seq_input([20], NO_TASK_MASK).input_ids.tolist() == [T.cls, T.mask, 20]


def test_seq2seq_original_padding_inside_part_a_and_target_cut():
    s = build_seq2seq_input([20], T, target_ids=[40, 41, 42], max_source_length=5, max_target_length=2, pad_source=True)
    assert s.input_ids.tolist() == [T.cls, T.smask, 20, T.pad, T.pad, T.sop, 40]
    assert s.sep == 5 and s.targets[5:].tolist() == [40, 41]  # the eop was cut with the target


# ----------------------------------------------------------------------------------------------------------------------
# GLMInput validation and collate
# ----------------------------------------------------------------------------------------------------------------------


def test_glm_input_rejects_sep_out_of_range_and_bad_shapes():
    ids = np.array([2, 11, 12])
    pos = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(LayoutError, match=r"sep must lie in \[0, 3\].*got 4"):
        GLMInput(ids, pos, 4, np.zeros(3), np.zeros(3))
    with pytest.raises(LayoutError, match=r"sep must lie"):
        GLMInput(ids, pos, -1, np.zeros(3), np.zeros(3))
    with pytest.raises(LayoutError, match=r"position_ids must have shape \(2, 3\)"):
        GLMInput(ids, np.zeros((3,)), 3, np.zeros(3), np.zeros(3))


def test_collate_right_pads():
    a = build_candidate_sequences([11, T.mask], [[20, 21]], T)[0]  # 6 tokens
    b = build_generation_prompt([11], T)  # 3 tokens
    batch = collate([a, b], pad_id=T.pad)
    assert batch["input_ids"].shape == (2, 6) and batch["input_ids"].dtype == np.int64
    assert batch["input_ids"][1].tolist() == [T.cls, 11, T.gmask, T.pad, T.pad, T.pad]
    assert batch["position_ids"][1].tolist() == [[0, 1, 2, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
    assert batch["sep"].tolist() == [4, 3] and batch["lengths"].tolist() == [6, 3]
    assert batch["targets"][0].tolist() == [T.pad] * 4 + [20, 21]
    assert batch["loss_mask"].dtype == np.float32 and batch["loss_mask"][1].tolist() == [0.0] * 6
    assert "attention_mask" not in batch
    wide = collate([a, b], pad_id=T.pad, max_len=8)
    assert wide["input_ids"].shape == (2, 8)
    with pytest.raises(LayoutError, match="sample has 6 tokens, more than the limit of 5"):
        collate([a, b], pad_id=T.pad, max_len=5)


def test_collate_builds_matrices_when_a_sample_has_one():
    packed = build_packed_multiple_choice([T.mask], [[20], [21]], T)  # 5 tokens
    plain = build_single_token_cloze([T.mask], T)  # 4 tokens, sep 3
    batch = collate([packed, plain], pad_id=T.pad)
    np.testing.assert_array_equal(batch["attention_mask"][0], packed.attention_mask)
    expected_plain = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]])  # spec §2.1 sep rule
    np.testing.assert_array_equal(batch["attention_mask"][1, :4, :4], expected_plain)
    assert not batch["attention_mask"][1, 4].any() and not batch["attention_mask"][1, :, 4].any()


def test_layout_and_generation_import_without_torch():
    # DESIGN.md: glm_core.layout (and the generation written on it) import no torch; run with torch unimportable.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import glm_core.layout, glm_core.generation\n"
        "assert sys.modules['torch'] is None\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO_ROOT))
    assert done.returncode == 0, done.stderr
