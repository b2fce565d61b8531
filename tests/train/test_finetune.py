"""Cloze fine-tuning (spec glm_reference §6.1): scores against a direct computation, learning, the CLI."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glm_core.checkpoint import SHIPPED_PRESETS
from glm_core.config import GLMConfig
from glm_core.errors import DataError
from glm_core.model import build_model
from glm_core.tokenizer import GLMTokenizer
from training.config import TrainConfig
from training.finetune import ClozeEvaluator, ClozeExample, ClozeScorer, ClozeTask, encode_examples, read_cloze_jsonl
from training.loop import train
from training.superglue import RECORD_TRAIN_CANDIDATES, evaluation_task_loader

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "evaluation" / "data" / "demo"
FIXTURES = REPO / "evaluation" / "data" / "fixtures"


@pytest.fixture(scope="module")
def tokenizer():
    return GLMTokenizer.from_pretrained(SHIPPED_PRESETS["glm-tiny"])


def _model(seed: int = 0):
    config = GLMConfig(
        vocab_size=2048, hidden_size=64, num_layers=2, num_attention_heads=1, max_sequence_length=64,
        tokenizer_family="sentencepiece", name="finetune-test", embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0, output_dropout_prob=0.0,
    )  # fmt: skip
    return build_model(config, seed=seed)


EXAMPLES = [
    ClozeExample("The capital of Pamtrulia is [MASK].", ("Kasmulton", "Solton", "twenty"), 0),
    ClozeExample("After nineteen comes [MASK].", ("twenty", "Monday"), 0),
]


def test_multi_token_scores_equal_summed_log_probs_from_full_logits(tokenizer):
    model = _model().eval()
    items = encode_examples(EXAMPLES, tokenizer)  # "twenty" is two pieces: multi-token scoring, eop appended
    assert not items[0].single_token and items[0].samples[0].targets[-1] == tokenizer.eop_id
    with torch.no_grad():
        scores = ClozeScorer(tokenizer).scores(model, items, torch.device("cpu"))
    for i, item in enumerate(items):
        for c, sample in enumerate(item.samples):
            ids = torch.from_numpy(sample.input_ids)[None]
            pos = torch.from_numpy(sample.position_ids)[None]
            with torch.no_grad():
                logits = model(ids, pos, sep=sample.sep, use_cache=False).logits[0].double()  # [S, V]
            logp = F.log_softmax(logits, dim=-1)
            expected = sum(float(logp[t, sample.targets[t]]) for t in range(len(sample)) if sample.loss_mask[t] > 0)
            assert float(scores[i, c]) == pytest.approx(expected, abs=1e-4)
    assert float(scores[1, 2]) == -10000.0, "a missing third choice is padded with -10000 (spec §2.4-2)"


def test_single_token_scores_are_the_raw_logits_at_sop(tokenizer):
    model = _model().eval()
    examples = [ClozeExample("The banana is [MASK].", ("yellow", "red", "blue"), 0)]
    items = encode_examples(examples, tokenizer)
    assert items[0].single_token
    sample = items[0].samples[0]
    with torch.no_grad():
        scores = ClozeScorer(tokenizer).scores(model, items, torch.device("cpu"))[0]
    with torch.no_grad():
        logits = model(torch.from_numpy(sample.input_ids)[None], torch.from_numpy(sample.position_ids)[None],
                       sep=sample.sep, use_cache=False).logits[0, sample.sep]  # fmt: skip
    ids = [tokenizer.encode(" " + c)[0] for c in examples[0].choices]
    torch.testing.assert_close(scores, logits[ids], rtol=1e-5, atol=1e-5)


def test_fine_tuning_fits_a_handful_of_demo_questions(tokenizer, tmp_path):
    examples = read_cloze_jsonl(DEMO / "train.jsonl")[:8]
    items = encode_examples(examples, tokenizer)
    evaluate = ClozeEvaluator(items, tokenizer, name="fit")
    model = _model(seed=3)
    before = evaluate(model.eval())["fit_accuracy"]
    task = ClozeTask(items, tokenizer, micro_batch_size=4, grad_accum=2, world_size=1, seed=0)
    cfg = TrainConfig(steps=40, micro_batch_size=4, grad_accum=2, lr=3e-3, warmup_ratio=0.1, weight_decay=0.0)
    result = train(model, task, cfg, out_dir=tmp_path / "ft", evaluate=evaluate, progress=False)
    assert result.final_loss < result.losses[0] / 4
    assert result.evaluations[-1]["fit_accuracy"] == 1.0 > before


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import shutil

    from glm_core.checkpoint import save_model

    directory = tmp_path_factory.mktemp("ft-model")
    save_model(_model(), directory)
    for name in ("spiece.model", "glm_tokenizer.json"):
        shutil.copy(SHIPPED_PRESETS["glm-tiny"] / name, directory / name)
    return directory


@pytest.mark.parametrize(
    ("task", "extra", "metric"),
    [
        ("demo", [], "demo_accuracy"),
        ("rte", ["--data-dir", str(REPO / "evaluation/data/fixtures"), "--train-split", "val"], "rte_accuracy"),
        ("copa", ["--data-dir", str(REPO / "evaluation/data/fixtures"), "--train-split", "val"], "copa_accuracy"),
        ("wsc", ["--data-dir", str(REPO / "evaluation/data/fixtures"), "--train-split", "val"], "wsc_accuracy"),
        ("record", ["--data-dir", str(REPO / "evaluation/data/fixtures"), "--train-split", "val"], "record_f1"),
    ],
)
def test_finetune_command_trains_and_reports_validation_accuracy(model_dir, tmp_path, task, extra, metric):
    proc = _cli("finetune", "--model", str(model_dir), "--task", task, "--out", str(tmp_path / "out"),
                "--steps", "3", "--micro-batch-size", "2", "--max-length", "64", "--quiet", *extra)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["command"] == "finetune" and summary["steps"] == 3
    assert 0.0 <= summary["evaluation"][metric] <= 1.0
    assert (tmp_path / "out" / "final" / "model.safetensors").is_file()


def test_finetune_refuses_tasks_it_cannot_train(model_dir, tmp_path):
    proc = _cli("finetune", "--model", str(model_dir), "--task", "lambada", "--out", str(tmp_path / "out"),
                "--steps", "1")  # fmt: skip
    assert proc.returncode == 2 and "not supported" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "no blank", "choices": ["a", "b"], "label": 0}', "holding \\[MASK\\]"),
        ('{"text": "x [MASK]", "choices": ["a"], "label": 0}', "at least two"),
        ('{"text": "x [MASK]", "choices": ["a", "b"], "label": 2}', "index into choices"),
        ("not json", "not valid JSON"),
    ],
)
def test_malformed_task_lines_raise_data_error_naming_the_line(tmp_path, line, message):
    path = tmp_path / "task.jsonl"
    path.write_text('{"text": "ok [MASK]", "choices": ["a", "b"], "label": 1}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=f":2: .*{message}"):
        read_cloze_jsonl(path)


# ---------------------------------------------------------------------------------- SuperGLUE: COPA, WSC, ReCoRD
def _superglue(task: str, tokenizer, training: bool, data_dir: Path = FIXTURES, seed: int = 0):
    args = argparse.Namespace(command="finetune", task=task, data_dir=str(data_dir), seed=seed)
    return evaluation_task_loader(args)("val", tokenizer, 64, training)


def _candidate_text(tokenizer, sample) -> str:
    ids = [int(t) for t, m in zip(sample.targets, sample.loss_mask, strict=True) if m > 0 and t != tokenizer.eop_id]
    return tokenizer.decode(ids).strip()


def test_copa_swapped_copies_exist_only_in_training_with_flipped_labels(tokenizer):
    train_split = _superglue("copa", tokenizer, training=True)
    val_split = _superglue("copa", tokenizer, training=False)
    rows = [json.loads(line) for line in (FIXTURES / "superglue/COPA/val.jsonl").read_text().splitlines()]
    n = len(rows)
    assert len(val_split.items) == n and len(train_split.items) == 2 * n  # spec §6.1: one copy per example
    assert [item.label for item in val_split.items] == [r["label"] for r in rows]
    for i, row in enumerate(rows):
        original, swapped = train_split.items[i], train_split.items[n + i]
        assert original.label == row["label"] and swapped.label == 1 - row["label"]
        assert swapped.choice_ids == original.choice_ids[::-1]
        # the candidate scored as the gold is the same sentence in both copies
        gold = _candidate_text(tokenizer, original.samples[original.label])
        assert _candidate_text(tokenizer, swapped.samples[swapped.label]) == gold
        assert gold.lower().rstrip(".") == row["choice1" if row["label"] == 0 else "choice2"].lower().rstrip(".")
        # pattern 0 names both choices in the question, so the swapped copy's Part A lists them in the other order
        assert not np.array_equal(original.samples[0].input_ids, swapped.samples[0].input_ids)


def _mean_log_prob(model, sample) -> float:
    """spec §6.1, WSC length penalty 1: mean over the scored tokens (incl. eop) of log p(target), float64."""
    ids = torch.from_numpy(sample.input_ids)[None]
    pos = torch.from_numpy(sample.position_ids)[None]
    with torch.no_grad():
        logits = model(ids, pos, sep=sample.sep, use_cache=False).logits[0].double()  # [S, V]
    logp = F.log_softmax(logits, dim=-1)
    scored = [float(logp[t, sample.targets[t]]) for t in range(len(sample)) if sample.loss_mask[t] > 0]
    return sum(scored) / len(scored)


def test_wsc_mix_loss_equals_a_hand_computation_from_full_forward_passes(tokenizer):
    train_split = _superglue("wsc", tokenizer, training=True)
    assert train_split.loss == "mix"
    # training keeps the label-true examples only: candidate 0 (span1) is the gold, the other span1 the negative
    assert len(train_split.items) == 2 and all(
        item.label == 0 and item.meta["label"] == 1 for item in train_split.items
    )
    assert [_candidate_text(tokenizer, s) for s in train_split.items[0].samples] == [
        "The city council",
        "the demonstrators",
    ]
    model = _model(seed=5).eval()
    task = ClozeTask(train_split.items, tokenizer, micro_batch_size=2, grad_accum=1, world_size=1, loss="mix")
    with torch.no_grad():
        got = float(task.loss_sum(model, {"index": np.array([0, 1])}, torch.device("cpu")))
    expected = 0.0
    for item in train_split.items:
        scores = [_mean_log_prob(model, sample) for sample in item.samples]
        log_z = math.log(sum(math.exp(x) for x in scores))
        expected += -scores[item.label] + (log_z - scores[item.label])  # -score(gold) + CE (GLM:finetune_glm.py)
    assert got == pytest.approx(expected, abs=1e-4)


def test_wsc_evaluation_predicts_true_iff_candidate_zero_wins(tokenizer):
    val_split = _superglue("wsc", tokenizer, training=False)
    assert [item.meta["label"] for item in val_split.items] == [1, 0, 1, 0]
    evaluate = ClozeEvaluator(val_split.items, tokenizer, name="wsc", metric=val_split.metric)
    model = _model(seed=5).eval()
    predictions = evaluate.predictions(model)
    expected = sum(int(p == 0) == item.meta["label"] for p, item in zip(predictions, val_split.items, strict=True))
    assert evaluate(model) == {"wsc_accuracy": expected / 4, "wsc_items": 4}


def _many_entity_record(directory: Path) -> Path:
    names = ["Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf", "Hotel", "India", "Juliet", "Kilo",
             "Lima", "Mike", "November", "Oscar"]  # fmt: skip
    text = " and ".join(names) + " met."
    entities, start = [], 0
    for name in names:
        entities.append({"start": start, "end": start + len(name) - 1})
        start += len(name) + len(" and ")
    answers = [{"start": 0, "end": 4, "text": "Alpha"}, {"start": 10, "end": 14, "text": "Bravo"}]
    row = {"idx": 0, "passage": {"text": text, "entities": entities},
           "qas": [{"query": "@placeholder met.", "idx": 0, "answers": answers}]}  # fmt: skip
    (directory / "ReCoRD").mkdir(parents=True)
    (directory / "ReCoRD" / "val.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    return directory


def test_record_training_uses_the_gold_and_at_most_nine_sampled_negatives(tokenizer, tmp_path):
    data_dir = _many_entity_record(tmp_path)
    split = _superglue("record", tokenizer, training=True, data_dir=data_dir)
    assert len(split.items) == 2  # one training example per gold answer
    for item, gold in zip(split.items, ["Alpha", "Bravo"], strict=True):
        candidates = item.meta["candidates"]
        assert len(item.samples) == len(candidates) == RECORD_TRAIN_CANDIDATES  # 13 negatives available, 9 kept
        assert candidates[0] == gold and item.label == 0
        assert "Alpha" not in candidates[1:] and "Bravo" not in candidates[1:]  # no gold among the negatives
        assert _candidate_text(tokenizer, item.samples[0]) == gold
    again = _superglue("record", tokenizer, training=True, data_dir=data_dir)
    assert [i.meta["candidates"] for i in again.items] == [i.meta["candidates"] for i in split.items]  # seeded
    other = _superglue("record", tokenizer, training=True, data_dir=data_dir, seed=1)
    assert [i.meta["candidates"] for i in other.items] != [i.meta["candidates"] for i in split.items]
    # evaluation scores every passage entity
    assert len(_superglue("record", tokenizer, training=False, data_dir=data_dir).items[0].samples) == 15


def test_record_evaluation_reports_em_and_f1_of_the_argmax_entity(tokenizer):
    val_split = _superglue("record", tokenizer, training=False)
    evaluate = ClozeEvaluator(val_split.items, tokenizer, name="record", metric=val_split.metric)
    model = _model(seed=2).eval()
    predictions = evaluate.predictions(model)
    hits = [
        item.meta["candidates"][p] in item.meta["answers"] for p, item in zip(predictions, val_split.items, strict=True)
    ]
    result = evaluate(model)
    # single-word entities: EM and F1 are both 1 for the gold entity and 0 for any other
    assert result["record_em"] == result["record_f1"] == pytest.approx(sum(hits) / len(hits))
    assert result["record_items"] == 3


@pytest.mark.parametrize("task_name", ["wsc", "record"])
def test_a_few_fine_tuning_steps_lower_the_loss(tokenizer, tmp_path, task_name):
    split = _superglue(task_name, tokenizer, training=True)
    model = _model(seed=7)
    task = ClozeTask(split.items, tokenizer, micro_batch_size=len(split.items), grad_accum=1, world_size=1,
                     loss=split.loss)  # fmt: skip
    cfg = TrainConfig(steps=16, micro_batch_size=len(split.items), grad_accum=1, lr=3e-3, warmup_ratio=0.0,
                      weight_decay=0.0)  # fmt: skip
    result = train(model, task, cfg, out_dir=tmp_path / "ft", progress=False)
    assert all(math.isfinite(x) for x in result.losses)
    # full-batch steps on 2-3 items: ReCoRD's CE nearly vanishes; WSC's mix keeps -mean log p(span1), which a tiny
    # random model only starts to fit, so its bound is looser
    assert result.final_loss < 0.7 * result.losses[0]
    assert result.losses[-1] < min(result.losses[:4])
