"""The pretraining sampler (spec glm_reference §5): span statistics, Part-B-only loss, determinism, bad corpora.

Every sample is checked against an independent reconstruction: putting each Part-B span back in place of its blank
must give the original window exactly.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from glm_core.errors import ConfigError, DataError
from glm_core.layout import GLMInput
from glm_core.pretrain_data import MaskingConfig, PretrainSampler, read_corpus, sentence_end_ids, tokenize_documents
from glm_core.special_tokens import sentencepiece_tokens

TOKENS = sentencepiece_tokens(100)  # command tokens at 100..109, text ids below 100
EOS = TOKENS.eos
PERIOD = 7  # our "." for the sentence-level objective


def _stream(num_docs: int = 400, seed: int = 0) -> np.ndarray:
    """Documents of random text ids in 10..99, sentences of 4..12 tokens ending with PERIOD, each doc then eos."""
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for _ in range(num_docs):
        for _ in range(int(rng.integers(2, 6))):
            out += rng.integers(10, 100, size=int(rng.integers(3, 12))).tolist() + [PERIOD]
        out.append(EOS)
    return np.asarray(out)


def _sampler(masking: MaskingConfig | None = None, seq_length: int = 96, seed: int = 3) -> PretrainSampler:
    return PretrainSampler(_stream(), TOKENS, seq_length, masking, seed=seed, sentence_ends=[PERIOD])


def _reconstruct(sample: GLMInput) -> tuple[list[int], list[list[int]]]:
    """Original text from Part A + Part B (independent of the sampler): each blank gets back the tokens of the
    Part-B block at its position. Returns the text and the spans in Part-B order."""
    ids, pos = sample.input_ids, sample.position_ids
    n, sep = len(sample), sample.sep
    blocks: dict[int, list[int]] = {}
    order: list[list[int]] = []
    i = sep
    while i < n:
        assert ids[i] == TOKENS.sop and pos[1, i] == 1, "every Part-B block starts with sop at block position 1"
        j = i + 1
        while j < n and ids[j] != TOKENS.sop:
            j += 1
        span = ids[i + 1 : j].tolist()
        assert (pos[0, i:j] == pos[0, i]).all(), "a block's tokens share the position of its blank"
        assert pos[1, i:j].tolist() == list(range(1, j - i + 1)), "block positions count 1.. inside the block"
        assert sample.targets[i:j].tolist() == [*span, TOKENS.eop], "targets are the span then eop"
        blocks[int(pos[0, i])] = span
        order.append(span)
        i = j
    text: list[int] = []
    for k in range(sep):
        text += blocks[k] if k in blocks else [int(ids[k])]
    assert len(blocks) == sum(1 for t in ids[:sep] if t in TOKENS.mask_ids()), "one block per blank"
    return text, order


def _window(sampler: PretrainSampler, step: int, index: int, global_batch: int) -> list[int]:
    return sampler.window_tokens(step * global_batch + index).tolist()


def test_token_level_sample_reconstructs_its_window_and_fits_the_sequence():
    sampler = _sampler()
    for step in range(6):
        for i in range(4):
            sample = sampler.sample(step, i, 4)
            text, spans = _reconstruct(sample)
            window = _window(sampler, step, i, 4)
            assert text[0] == TOKENS.cls
            assert text[1:] == window[: len(text) - 1], "Part A + Part B give back (a prefix of) the window"
            assert len(sample) <= sampler.seq_length
            assert all(1 <= len(s) <= 39 for s in spans)
            assert TOKENS.mask in sample.input_ids[: sample.sep]
            assert TOKENS.smask not in sample.input_ids and TOKENS.gmask not in sample.input_ids


def test_loss_mask_covers_part_b_only_and_pads_carry_no_loss():
    sampler = _sampler()
    batch = sampler.batch(step=2, global_batch_size=8)
    for b in range(8):
        sep, length = int(batch["sep"][b]), int(batch["lengths"][b])
        mask = batch["loss_mask"][b]
        assert (mask[:sep] == 0).all()
        assert (mask[sep:length] == 1).all()
        assert (mask[length:] == 0).all()
        assert (batch["input_ids"][b, length:] == TOKENS.pad).all()
    assert batch["input_ids"].shape == (8, sampler.seq_length)


def test_token_spans_follow_the_truncated_poisson_and_cover_15_percent_of_each_document():
    sampler = _sampler(seq_length=256)
    lengths: Counter[int] = Counter()
    for step in range(40):
        for i in range(4):
            sample = sampler.sample(step, i, 4)
            text, spans = _reconstruct(sample)
            lengths.update(len(s) for s in spans)
            part_a = sample.input_ids[: sample.sep].tolist()
            # >= 1 unmasked token between two spans: never two blanks side by side in Part A
            assert all(not (a == TOKENS.mask and b == TOKENS.mask) for a, b in zip(part_a, part_a[1:], strict=False))
            # spans stay inside documents: no span holds eos
            assert all(EOS not in s for s in spans)
            # per document: masked tokens >= floor(0.15 * its tokens) (documents that end inside the window)
            blank_lengths = _blank_lengths(sample)
            doc_masked, doc_len = 0, 0
            for k in range(1, sample.sep):
                tok = part_a[k]
                if tok == EOS:
                    assert doc_masked >= math.floor(0.15 * doc_len)
                    doc_masked, doc_len = 0, 0
                elif tok == TOKENS.mask:
                    doc_masked += blank_lengths[k]
                    doc_len += blank_lengths[k]
                else:
                    doc_len += 1
    total = sum(lengths.values())
    # independent reference: Poisson(3) pmf on 1..39, renormalised (spec §5)
    pmf = np.array([math.exp(k * math.log(3.0) - 3.0 - math.lgamma(k + 1)) for k in range(1, 40)])
    pmf /= pmf.sum()
    expected_mean = float((np.arange(1, 40) * pmf).sum())
    observed_mean = sum(k * c for k, c in lengths.items()) / total
    # 1.5k+ spans: the mean's standard error is ~0.04 (variance ~2.6); the goal-reaching draw biases toward more short
    # spans only slightly, so 0.25 is a loose but meaningful bound.
    assert total > 1000
    assert abs(observed_mean - expected_mean) < 0.25
    assert lengths[1] / total == pytest.approx(pmf[0], abs=0.05)
    assert lengths[3] / total == pytest.approx(pmf[2], abs=0.05)


def _blank_lengths(sample: GLMInput) -> dict[int, int]:
    """Part-A position of each blank -> number of tokens in its Part-B block (sop excluded)."""
    pos = sample.position_ids
    lengths: dict[int, int] = {}
    for i in range(sample.sep, len(sample)):
        if sample.input_ids[i] != TOKENS.sop:
            lengths[int(pos[0, i])] = lengths.get(int(pos[0, i]), 0) + 1
        else:
            lengths.setdefault(int(pos[0, i]), 0)
    return lengths


def test_sentence_level_blanks_are_whole_sentences_with_smask():
    sampler = _sampler(MaskingConfig(bert_prob=0.0, gap_sentence_prob=1.0))
    for step in range(10):
        sample = sampler.sample(step, 0, 2)
        assert sampler.batch_plan(step)[0] == "sentence"
        text, spans = _reconstruct(sample)
        assert text[1:] == _window(sampler, step, 0, 2)[: len(text) - 1]
        blanks = [i for i, t in enumerate(sample.input_ids[: sample.sep]) if t == TOKENS.smask]
        assert blanks and TOKENS.mask not in sample.input_ids
        for span in spans:
            # a sentence ends with PERIOD, except one cut by the end of the window
            assert span[-1] == PERIOD or span is spans[-1] or len(text) - 1 < len(_window(sampler, step, 0, 2))
            assert PERIOD not in span[:-1], "a blank never holds the end of one sentence inside it"


def test_document_level_blank_is_one_gmask_suffix_of_at_least_half_the_window():
    sampler = _sampler(MaskingConfig(bert_prob=0.0, gap_sentence_prob=0.0))
    for step in range(8):
        objective, fraction = sampler.batch_plan(step)
        assert objective == "document" and 0.5 <= fraction <= 1.0
        lengths = []
        for i in range(3):
            sample = sampler.sample(step, i, 3)
            text, spans = _reconstruct(sample)
            assert len(spans) == 1
            part_a = sample.input_ids[: sample.sep].tolist()
            assert part_a.count(TOKENS.gmask) == 1 and part_a[-1] == TOKENS.gmask, "several documents: suffix"
            n = len(text) - 1
            assert len(spans[0]) == min(max(1, math.floor(fraction * n)), n - 1)
            lengths.append(len(spans[0]))
        assert len(set(lengths)) == 1, "the batch shares one document-span length (spec §5)"


def test_objectives_are_mixed_in_the_configured_ratio():
    sampler = _sampler(MaskingConfig(bert_prob=0.5, gap_sentence_prob=0.3))
    counts = Counter(sampler.batch_plan(step)[0] for step in range(2000))
    # binomial standard deviation over 2000 draws is <= 0.012: 0.04 is > 3 sigma
    assert counts["token"] / 2000 == pytest.approx(0.5, abs=0.04)
    assert counts["sentence"] / 2000 == pytest.approx(0.3, abs=0.04)
    assert counts["document"] / 2000 == pytest.approx(0.2, abs=0.04)


def test_batches_are_a_pure_function_of_seed_and_step():
    a, b = _sampler(seed=11), _sampler(seed=11)
    for step in (0, 5, 123):
        x, y = a.batch(step, 4), b.batch(step, 4)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    other = _sampler(seed=12).batch(5, 4)
    assert not np.array_equal(other["input_ids"], a.batch(5, 4)["input_ids"])
    # visiting steps out of order (a resumed run) changes nothing
    late_first = _sampler(seed=11)
    np.testing.assert_array_equal(late_first.batch(123, 4)["input_ids"], a.batch(123, 4)["input_ids"])


def test_rank_slices_concatenate_to_the_single_process_global_batch():
    sampler = _sampler()
    whole = sampler.batch(7, 8)
    parts = [sampler.batch(7, 8, rank=r, world_size=2) for r in range(2)]
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    with pytest.raises(ConfigError):
        sampler.batch(7, 9, rank=0, world_size=2)


def test_windows_cover_the_stream_once_per_epoch():
    sampler = _sampler()
    seen = {tuple(sampler.window_tokens(g)[:8]) for g in range(sampler.num_windows)}
    assert len(seen) == sampler.num_windows


def test_masking_config_rejects_impossible_ratios():
    with pytest.raises(ConfigError, match="bert_prob \\+ gap_sentence_prob"):
        MaskingConfig(bert_prob=0.8, gap_sentence_prob=0.4)
    with pytest.raises(ConfigError, match="bert_ratio"):
        MaskingConfig(bert_ratio=0.0)


# ---------------------------------------------------------------------------------------------- corpus files
class _FakeTokenizer:
    special = TOKENS
    base_vocab_size = 100

    def encode(self, text: str) -> list[int]:
        return [10 + (ord(c) % 80) for c in text if not c.isspace()]

    def convert_ids_to_tokens(self, i: int) -> str:
        return "." if i == PERIOD else "x"


def test_read_corpus_splits_documents_at_blank_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("first doc.\nstill first.\n\n\nsecond doc.\n", encoding="utf-8")
    assert read_corpus(path) == ["first doc.\nstill first.", "second doc."]
    stream = tokenize_documents(read_corpus(path), _FakeTokenizer())
    assert (stream == EOS).sum() == 2 and stream[-1] == EOS
    assert sentence_end_ids(_FakeTokenizer()) == [PERIOD, EOS]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "corpus is empty"), (b"\n\n  \n", "corpus is empty"), (b"ok text \xff\xfe here", "not valid UTF-8")],
)
def test_bad_corpus_raises_data_error(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_corpus(path)


def test_missing_corpus_and_too_short_corpus_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_corpus(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="fewer than one training window"):
        PretrainSampler(np.arange(10, 30), TOKENS, 64)
