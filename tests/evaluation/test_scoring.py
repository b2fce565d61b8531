"""The scoring engine against an independent reference: one full forward per sample, float64 log-softmax in torch.

Also: Part A runs once per example when candidates share it (counted at the step boundary), sharing changes no score
(1e-5), single-token cloze reads the logits at sop, rolling windows score every token once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.scoring import Scorer, split_at_sep
from evaluation.tasks import GROUPS, get_task
from evaluation.tasks.base import EvalContext
from glm_core.layout import (
    build_candidate_sequences,
    build_rolling_windows,
    build_scoring_input,
    build_single_token_cloze,
)
from tests.evaluation.test_tasks import span_logits
from tests.evaluation.vocab import MASK, WORD_IDS

FIXTURES = Path(__file__).resolve().parents[2] / "evaluation" / "data" / "fixtures"


def words(text: str) -> list[int]:
    return [MASK if w == "[MASK]" else WORD_IDS[w] for w in text.split()]


def reference_logprobs(model, sample) -> np.ndarray:
    """log p(targets) over the sample's span from one unbatched full forward, log-softmax in float64."""
    ids = torch.as_tensor(sample.input_ids)[None]
    pos = torch.as_tensor(sample.position_ids)[None]
    with torch.no_grad():
        logits = model(ids, pos, sep=torch.tensor([sample.sep])).logits[0].double()
    start, end = sample.candidate_spans[0]
    logp = torch.log_softmax(logits[start:end], dim=-1)
    return logp[torch.arange(end - start), torch.as_tensor(sample.targets[start:end])].numpy()


class RecordingBackend:
    """Wraps a backend and records every step's rows (ids, sep, past length)."""

    def __init__(self, backend) -> None:
        self.inner = backend
        self.tokenizer = backend.tokenizer
        self.max_length = backend.max_length
        self.rows: list[tuple[tuple[int, ...], int, int]] = []
        self.tokens = 0

    def step(self, input_ids, position_ids, sep, past=None):
        p = self.inner.past_length(past)
        for row, s in zip(input_ids.tolist(), sep.tolist(), strict=True):
            self.rows.append((tuple(row), int(s), p))
        self.tokens += input_ids.size
        return self.inner.step(input_ids, position_ids, sep, past)

    def reorder_past(self, past, index):
        return self.inner.reorder_past(past, index)

    def past_length(self, past):
        return self.inner.past_length(past)


def candidate_examples(special) -> list[tuple[list[int], list[list[int]]]]:
    return [
        (words("the cat sat on the [MASK] ."), [words("mat"), words("dog ran"), words("big red house")]),
        (words("bob visited [MASK] , the capital of france ."), [words("paris"), words("london")]),
        (
            words("the [MASK] flew in the blue sky over the tree ."),
            [words("bird"), words("man"), words("sun"), words("car")],
        ),
    ]


def test_candidate_scores_match_full_forward_reference(torch_backend) -> None:
    special = torch_backend.special
    samples = [
        s
        for text, cands in candidate_examples(special)
        for s in build_candidate_sequences(text, cands, special, append_eop=True)
    ]
    for share in (True, False):
        scores = Scorer(torch_backend, batch_size=3, share_part_a=share).score_samples(samples)
        for sample, score in zip(samples, scores, strict=True):
            np.testing.assert_allclose(
                score.logprobs, reference_logprobs(torch_backend.model, sample), rtol=0, atol=1e-5
            )


def test_part_a_is_computed_once_per_example(torch_backend) -> None:
    special = torch_backend.special
    examples = candidate_examples(special)
    samples = [s for text, cands in examples for s in build_candidate_sequences(text, cands, special, append_eop=True)]
    recorder = RecordingBackend(torch_backend)
    before = torch_backend.tokens_seen
    scorer = Scorer(recorder, batch_size=8, share_part_a=True)
    scorer.score_samples(samples)

    part_a_rows = [(row, sep) for row, sep, past in recorder.rows if past == 0]
    chunk_rows = [(row, sep) for row, sep, past in recorder.rows if past > 0]
    # every example's Part A ([CLS] text [eos]) reached the model exactly once, bidirectional (sep = its length)
    distinct = sorted({tuple(split_at_sep(s)[0].input_ids.tolist()) for s in samples})
    assert len(distinct) == len(examples)
    assert sorted(row for row, _ in part_a_rows) == distinct
    assert all(sep == len(row) for row, sep in part_a_rows)
    # every candidate ran once as a later chunk with sep = 0, on a cache as long as its example's Part A
    assert len(chunk_rows) == len(samples) and all(sep == 0 for _, sep in chunk_rows)
    # token counts: the backend's own counter agrees with the engine's; sharing beats one sequence per candidate
    assert torch_backend.tokens_seen - before == recorder.tokens == scorer.stats.total_tokens
    assert scorer.stats.part_a_tokens == sum(len(a) for a in distinct)
    unshared = Scorer(RecordingBackend(torch_backend), batch_size=8, share_part_a=False)
    unshared.score_samples(samples)
    assert unshared.stats.full_tokens >= sum(len(s) for s in samples) > scorer.stats.total_tokens


def test_sharing_and_no_sharing_give_the_same_task_scores(torch_backend) -> None:
    for name in [*GROUPS["superglue"], "demo", "lambada"]:
        task = get_task(name)
        examples = task.read(FIXTURES, task.default_split, None)
        records = {}
        for share in (True, False):
            ctx = EvalContext(backend=torch_backend, scorer=Scorer(torch_backend, batch_size=4, share_part_a=share))
            records[share] = task.predict(examples, ctx)
        for a, b in zip(records[True], records[False], strict=True):
            sa = np.asarray(a.get("scores", a.get("logprob")), dtype=np.float64)
            sb = np.asarray(b.get("scores", b.get("logprob")), dtype=np.float64)
            np.testing.assert_allclose(sa, sb, rtol=0, atol=1e-5, err_msg=name)


def test_single_token_cloze_reads_the_logits_at_sop(torch_backend) -> None:
    special = torch_backend.special
    texts = [words("is the sun hot ? [MASK] ."), words("the cat sat on the mat ? [MASK]")]
    verbalizers = words("no yes maybe")
    logits = Scorer(torch_backend, batch_size=2).single_token_cloze(texts, verbalizers)
    for text, row in zip(texts, logits, strict=True):
        sample = build_single_token_cloze(text, special)
        assert sample.candidate_spans == ((sample.sep, sample.sep + 1),)  # the logits at sop
        out = span_logits(torch_backend, sample)[0]
        np.testing.assert_allclose(row, out[verbalizers].numpy(), rtol=0, atol=1e-5)


def test_loglikelihood_shares_a_context_and_matches_the_reference(torch_backend) -> None:
    context = words("the cat sat on the")
    continuations = [words("mat"), words("dog ran fast"), words("sun")]
    scorer = Scorer(torch_backend, batch_size=4)
    results = scorer.loglikelihood([(context, c) for c in continuations] + [([], words("bob"))])
    assert scorer.stats.part_a_tokens == len(context) + 2  # [CLS] context [MASK] once (no gMASK in BERT vocab)
    for (total, greedy), cont in zip(results, continuations, strict=False):
        sample = build_scoring_input(context, cont, torch_backend.special)
        ref = reference_logprobs(torch_backend.model, sample)
        assert total == pytest.approx(float(ref.sum()), abs=1e-5)
        assert isinstance(greedy, bool)


def test_rolling_windows_score_every_token_but_the_first_once(torch_backend) -> None:
    doc = words("the cat sat on the mat . the dog ran fast to the house . the sun is hot and the water is wet .") * 3
    scorer = Scorer(torch_backend, batch_size=4)
    [score] = scorer.loglikelihood_rolling([doc], seq_len=24, stride=8)
    assert score.num_tokens == len(doc) - 1
    windows = build_rolling_windows(doc, torch_backend.special, seq_len=24, stride=8)
    reference = sum(float(reference_logprobs(torch_backend.model, w).sum()) for w in windows)
    assert score.total == pytest.approx(reference, abs=1e-4)  # summed over ~70 tokens of 1e-6 float32 noise each
    [one_window] = scorer.loglikelihood_rolling([doc[:20]], seq_len=24, stride=8)
    assert one_window.num_tokens == 19
    assert np.isfinite(score.total) and score.total < 0
