"""LAMBADA, perplexity, summarisation and blank infilling end to end on the tiny model, against direct references."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.scoring import Scorer
from evaluation.tasks import expand_task_list, get_task, summarization
from evaluation.tasks.base import EvalContext
from evaluation.tasks.blank import BlankInfilling
from glm_core.errors import ConfigError
from glm_core.layout import build_lambada_input

FIXTURES = Path(__file__).resolve().parents[2] / "evaluation" / "data" / "fixtures"


@pytest.fixture
def ctx(torch_backend) -> EvalContext:
    return EvalContext(backend=torch_backend, scorer=Scorer(torch_backend, batch_size=4))


def read(name: str):
    task = get_task(name)
    return task, task.read(FIXTURES, task.default_split, None)


def span_logits(backend, sample) -> torch.Tensor:
    """The model's logits at ``sample.candidate_spans[0]``, from one direct forward pass."""
    with torch.no_grad():
        logits = backend.model(
            torch.as_tensor(sample.input_ids)[None],
            torch.as_tensor(sample.position_ids)[None],
            sep=torch.tensor([sample.sep]),
        ).logits[0]
    start, end = sample.candidate_spans[0]
    return logits[start:end]


def test_lambada_correct_means_argmax_at_every_target_token(ctx, torch_backend) -> None:
    task, examples = read("lambada")
    records = task.predict(examples, ctx)
    tok = torch_backend.tokenizer
    for ex, record in zip(examples, records, strict=True):
        assert ex.data["target"].startswith(" ") and " " not in ex.data["target"][1:]  # the last word, spec §6.2
        sample = build_lambada_input(tok.encode(ex.data["context"]), tok.encode(ex.data["target"]), tok.special)
        logits = span_logits(torch_backend, sample)
        start, end = sample.candidate_spans[0]
        greedy = logits.argmax(-1).numpy() == sample.targets[start:end]
        assert record["correct"] == int(greedy.all())
        assert record["num_tokens"] == end - start
    assert task.aggregate(records)["acc"] == pytest.approx(np.mean([r["correct"] for r in records]))


def test_perplexity_counts_every_token_but_the_first(ctx, torch_backend) -> None:
    task, examples = read("lm:stream")  # the whole file as one token stream
    [record] = task.predict(examples, ctx)
    [text] = examples[0].data["documents"]
    assert record["num_tokens"] == len(torch_backend.tokenizer.encode(text))
    assert record["num_scored"] == record["num_tokens"] - 1
    out = task.aggregate([record])
    assert out["ppl"] == pytest.approx(math.exp(-record["logprob"] / record["num_scored"]))
    assert out["word_ppl"] == pytest.approx(math.exp(-record["logprob"] / (len(text.split()) - 1)))


def test_summarization_settings_are_the_spec_table() -> None:
    s = summarization.SETTINGS
    assert (s["cnndm"].source_length, s["cnndm"].max_target_length, s["cnndm"].min_length) == (608, 160, 55)
    assert (s["cnndm"].num_beams, s["cnndm"].length_penalty, s["cnndm"].no_repeat_ngram_size) == (5, 0.7, 3)
    assert (s["xsum"].source_length, s["xsum"].max_target_length, s["xsum"].min_length) == (608, 60, 10)
    assert (s["xsum"].num_beams, s["xsum"].length_penalty, s["xsum"].no_repeat_ngram_size) == (6, 1.0, 3)


def test_summarization_generates_and_scores_rouge(ctx, monkeypatch) -> None:
    # the paper's lengths take minutes on CPU; the decoding code path is the same with short ones
    small = summarization.DecodingSettings(64, 6, 2, 2, 0.7, 3)
    monkeypatch.setitem(summarization.SETTINGS, "xsum", small)
    task, examples = read("xsum")
    records = task.predict(examples[:2], ctx)
    for ex, r in zip(examples[:2], records, strict=True):
        assert r["reference"] == ex.data["target"] and isinstance(r["prediction"], str)
        assert 2 <= r["generated_tokens"] <= 6  # min_length .. max_target_length
    scores = task.aggregate(records)
    # the original's logged metric by default: its "rouge-l" is rouge-score's rougeLsum over [SEP]-split sentences
    assert set(scores) == {"rouge1", "rouge2", "rougeL"} and all(0 <= v <= 1 for v in scores.values())
    task.configure({"rouge": "sentences"})
    assert set(task.aggregate(records)) == {"rouge1", "rouge2", "rougeLsum"}


def test_blank_infilling_fills_every_mask(ctx, monkeypatch) -> None:
    monkeypatch.setattr("evaluation.tasks.blank.MAX_BLANK_TOKENS", 4)
    task, examples = read("blank")
    assert isinstance(task, BlankInfilling)
    records = task.predict(examples, ctx)
    for ex, r in zip(examples, records, strict=True):
        # one budget of 4 tokens for all blanks (the original's --tgt-seq-length, sop included): later blanks may be empty
        assert 1 <= len(r["fills"]) <= ex.data["text"].count("[MASK]")
        assert "[MASK]" not in r["prediction"]
        assert r["reference"] == ctx.tokenizer.decode(ctx.tokenizer.encode(ex.data["original"])).strip()
    out = task.aggregate(records)
    assert 0 <= out["bleu"] <= 1 and 0 <= out["exact_match"] <= 1


def test_task_lists_groups_and_patterns() -> None:
    names = [t.task_id for t in expand_task_list("superglue, lambada,boolq:5")]
    assert names == [
        "boolq-p0",
        "cb-p0",
        "copa-p0",
        "multirc-p0",
        "record",
        "rte-p0",
        "wic-p0",
        "wsc-p0",
        "lambada",
        "boolq-p5",
    ]
    with pytest.raises(ConfigError, match="unknown pattern"):
        get_task("rte:9")
    with pytest.raises(ConfigError, match="unknown task"):
        get_task("glue")


def test_wsc_and_record_aggregates() -> None:
    wsc = get_task("wsc")
    assert wsc.aggregate(
        [{"pred_true": 1, "label": 1}, {"pred_true": 1, "label": 0}, {"pred_true": 0, "label": 0}]
    ) == {"acc": pytest.approx(2 / 3)}
    record = get_task("record")
    out = record.aggregate([{"prediction": "Bob", "answers": ["Bob"]}, {"prediction": "Paris", "answers": ["London"]}])
    assert out == {"em": 0.5, "f1": 0.5}
