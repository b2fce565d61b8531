"""The pretraining sampler (spec glm_reference §5): span statistics, Part-B-only loss, determinism, bad corpora.

Every sample is checked against an independent reconstruction: putting each Part-B span back in place of its blank
must give the original window exactly.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import numpy as np
import pytest

from glm_core.errors import ConfigError, DataError
from glm_core.layout import GLMInput
from glm_core.special_tokens import sentencepiece_tokens, special_tokens_for
from training.data import read_corpus, sentence_end_ids, tokenize_documents
from training.sampler import MaskingConfig, PretrainSampler, dblock_id

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


DBLOCK = dblock_id("sentencepiece", TOKENS)  # 110


def _sampler(masking: MaskingConfig | None = None, seq_length: int = 96, seed: int = 3) -> PretrainSampler:
    return PretrainSampler(_stream(), TOKENS, seq_length, masking, seed=seed, sentence_ends=[PERIOD], dblock=DBLOCK)


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


def _reconstruct_suffix(sample: GLMInput) -> tuple[list[int], list[int]]:
    """Text and span of a document-suffix sample, whose Part B has no [eop] (GLM:blocklm_utils.py:415-419):
    inputs ``[sop] + span[:-1]``, targets ``span``, all at the position of the trailing [gMASK]."""
    ids, pos, sep = sample.input_ids, sample.position_ids, sample.sep
    assert ids[sep - 1] == TOKENS.gmask and ids[sep] == TOKENS.sop
    span = sample.targets[sep:].tolist()
    assert ids[sep + 1 :].tolist() == span[:-1], "Part-B inputs are sop then the span without its last token"
    assert TOKENS.eop not in sample.targets.tolist(), "a suffix target has no eop"
    assert (pos[0, sep:] == sep - 1).all() and pos[1, sep:].tolist() == list(range(1, len(span) + 1))
    assert (sample.loss_mask[sep:] == 1).all() and (sample.loss_mask[:sep] == 0).all()
    return [*ids[: sep - 1].tolist(), *span], span


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
            part_a = sample.input_ids[: sample.sep].tolist()
            assert part_a.count(TOKENS.gmask) == 1 and part_a[-1] == TOKENS.gmask, "several documents: suffix"
            text, span = _reconstruct_suffix(sample)
            assert text[1:] == _window(sampler, step, i, 3)[: len(text) - 1]
            n = len(text) - 1
            assert len(span) == min(max(1, math.floor(fraction * n)), n - 1)
            lengths.append(len(span))
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


# ---------------------------------------------------------------------------------------------- 10B-recipe options
def _batch_digest(sampler: PretrainSampler, steps: int = 12, global_batch: int = 4) -> str:
    digest = hashlib.sha256()
    for step in range(steps):
        batch = sampler.batch(step, global_batch)
        for key in sorted(batch):
            digest.update(key.encode())
            digest.update(batch[key].tobytes())
    return digest.hexdigest()


def test_options_at_zero_reproduce_the_batches_of_the_sampler_without_them():
    # Digest of the sampler's batches (same corpus, seed and mixture: token, sentence and document steps all occur in
    # steps 0..11) with the options at 0. It was e1f196e9... before block_mask_prob / short_seq_prob /
    # single_span_prob existed, and changed once since, for the document objective only: the suffix is now taken
    # when the draw is < gpt_infill_prob and its Part B carries no [eop] (GLM:blocklm_utils.py:410, 415-419).
    # Token- and sentence-level batches did not change: see the next test.
    before = "2f0acd8d050dca66c8590cb43ad3990aab9f4d0a80ed47cbf9f6d5b206e15555"
    masking = MaskingConfig(bert_prob=0.4, gap_sentence_prob=0.3)
    assert {_sampler(masking, seed=5).batch_plan(s)[0] for s in range(12)} == {"token", "sentence", "document"}
    assert _batch_digest(_sampler(masking, seed=5)) == before
    explicit = MaskingConfig(
        bert_prob=0.4, gap_sentence_prob=0.3, block_mask_prob=0.0, short_seq_prob=0.0, single_span_prob=0.0
    )
    assert _batch_digest(_sampler(explicit, seed=5)) == before


def test_default_and_token_sentence_batches_are_unchanged_bit_for_bit():
    # Digests taken before the document-objective, single-span and short-sequence fixes: the default recipe
    # (bert_prob 1.0, token objective only) and a token + sentence mixture (with block_mask_prob) still give the
    # same batches.
    assert _batch_digest(_sampler(seed=5)) == "8fde80bf8d3640f3436b080eb89c2b9d969e774984ccde18c5dc2e537f6bfed5"
    mixed = _sampler(MaskingConfig(bert_prob=0.6, gap_sentence_prob=0.4, block_mask_prob=0.1), seed=5)
    assert {mixed.batch_plan(s)[0] for s in range(12)} == {"token", "sentence"}
    assert _batch_digest(mixed) == "2dd129debe59a4b23460eaa28932c9eaf8f340efc1f78aa3c20894baac18bbf9"


def test_block_mask_replaces_half_of_the_span_inputs_after_sop_and_keeps_targets():
    plain = _sampler(seed=7)
    masked = _sampler(MaskingConfig(block_mask_prob=0.5), seed=7)
    replaced = total = 0
    for step in range(12):
        for i in range(4):
            a, b = plain.sample(step, i, 4), masked.sample(step, i, 4)
            # same spans, positions, targets and Part A: only Part-B inputs may differ
            np.testing.assert_array_equal(a.targets, b.targets)
            np.testing.assert_array_equal(a.position_ids, b.position_ids)
            np.testing.assert_array_equal(a.loss_mask, b.loss_mask)
            assert a.sep == b.sep
            np.testing.assert_array_equal(a.input_ids[: a.sep], b.input_ids[: b.sep])
            part_b_a, part_b_b = a.input_ids[a.sep :], b.input_ids[b.sep :]
            is_sop = part_b_a == TOKENS.sop
            np.testing.assert_array_equal(part_b_b[is_sop], part_b_a[is_sop])  # sop is never replaced
            span_a, span_b = part_b_a[~is_sop], part_b_b[~is_sop]
            changed = span_b != span_a
            assert (span_b[changed] == DBLOCK).all()
            replaced += int(changed.sum())
            total += len(span_a)
    # binomial: ~600 span tokens, standard deviation of the fraction <= 0.021; 0.08 is > 3.5 sigma
    assert total > 400
    assert replaced / total == pytest.approx(0.5, abs=0.08)


def test_block_mask_leaves_sentence_and_document_objectives_alone():
    # GLM:blocklm_utils.py:195-198 applies [dBLOCK] to the token-level ('bert') objective only
    for mix in (dict(bert_prob=0.0, gap_sentence_prob=1.0), dict(bert_prob=0.0, gap_sentence_prob=0.0)):
        plain = _sampler(MaskingConfig(**mix)).batch(3, 4)
        masked = _sampler(MaskingConfig(**mix, block_mask_prob=0.5)).batch(3, 4)
        for key in plain:
            np.testing.assert_array_equal(plain[key], masked[key])


def test_block_mask_without_a_dblock_id_is_a_config_error():
    with pytest.raises(ConfigError, match="dBLOCK"):
        PretrainSampler(_stream(), TOKENS, 96, MaskingConfig(block_mask_prob=0.1), sentence_ends=[PERIOD])
    with pytest.raises(ConfigError, match="block_mask_prob"):
        MaskingConfig(block_mask_prob=1.5)


def test_dblock_ids_follow_the_spec_table():
    # spec §3.2 row "dBLOCK (train only)"
    assert dblock_id("gpt2", special_tokens_for("gpt2")) == 50265
    assert dblock_id("sentencepiece", special_tokens_for("sentencepiece", model_name="glm-large-chinese")) == 50010
    assert dblock_id(
        "sentencepiece", special_tokens_for("sentencepiece", "original", model_name="glm-10b-chinese")
    ) == (50009)
    # the hub glm-10b-chinese table uses 50009 for its gMASK: no free dBLOCK id
    assert dblock_id("sentencepiece", special_tokens_for("sentencepiece", "hf", model_name="glm-10b-chinese")) is None
    assert dblock_id("bert", special_tokens_for("bert")) is None
    assert dblock_id("roberta", special_tokens_for("roberta")) is None


def test_short_sequences_are_shorter_sentence_aligned_chunks_of_the_window():
    sampler = _sampler(MaskingConfig(short_seq_prob=1.0), seq_length=128)
    lengths = set()
    for step in range(10):
        chunk_length = sampler.short_length(step)
        assert chunk_length is not None and 32 <= chunk_length <= sampler.window - 1
        per_window = sampler.window // chunk_length  # GLM:blocklm_utils.py:285
        for i in range(4):
            chunk = sampler.sample_text(step, i, 4).tolist()
            window = sampler.window_tokens(step * 4 + i // per_window).tolist()
            lengths.add(len(chunk))
            assert chunk_length // 2 <= len(chunk) <= chunk_length < len(window)
            # a contiguous piece of the window that starts at a sentence start and ends at a sentence end
            starts = [k for k in range(len(window) - len(chunk) + 1) if window[k : k + len(chunk)] == chunk]
            assert any(k == 0 or window[k - 1] in (PERIOD, EOS) for k in starts), "starts a sentence"
            assert chunk[0] != EOS and chunk[-1] in (PERIOD, EOS), "ends a sentence"
            # the sample is built from (a prefix of) the chunk
            text, _ = _reconstruct(sampler.sample(step, i, 4))
            assert text[1:] == chunk[: len(text) - 1]
    assert len(lengths) > 3


def test_short_sequence_batches_occur_at_the_configured_rate():
    sampler = _sampler(MaskingConfig(short_seq_prob=0.3))
    short = sum(sampler.short_length(step) is not None for step in range(1000))
    # binomial standard deviation over 1000 draws is 0.0145: 0.05 is > 3 sigma
    assert short / 1000 == pytest.approx(0.3, abs=0.05)


def test_single_span_gives_exactly_one_poisson_span_per_sample():
    sampler = _sampler(MaskingConfig(single_span_prob=1.0), seq_length=128)
    lengths: Counter[int] = Counter()
    for step in range(60):
        for i in range(4):
            sample = sampler.sample(step, i, 4)
            text, spans = _reconstruct(sample)
            assert text[1:] == _window(sampler, step, i, 4)[: len(text) - 1]
            assert len(spans) == 1 and EOS not in spans[0]
            assert list(sample.input_ids[: sample.sep]).count(TOKENS.mask) == 1
            lengths[len(spans[0])] += 1
    # independent reference: the mean of Poisson(3) restricted to 1..39; 240 spans, standard error ~0.1
    pmf = np.array([math.exp(k * math.log(3.0) - 3.0 - math.lgamma(k + 1)) for k in range(1, 40)])
    expected_mean = float((np.arange(1, 40) * pmf).sum() / pmf.sum())
    observed_mean = sum(k * c for k, c in lengths.items()) / sum(lengths.values())
    assert abs(observed_mean - expected_mean) < 0.4


def test_recipe_options_keep_batches_a_function_of_seed_and_step_for_any_world_size():
    masking = MaskingConfig(
        bert_prob=0.5, gap_sentence_prob=0.3, block_mask_prob=0.1, short_seq_prob=0.5, single_span_prob=0.3
    )
    sampler = _sampler(masking, seed=9)
    for step in (1, 4, 9):
        whole = sampler.batch(step, 8)
        parts = [_sampler(masking, seed=9).batch(step, 8, rank=r, world_size=4) for r in range(4)]
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


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
