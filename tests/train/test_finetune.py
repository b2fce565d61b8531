"""Cloze fine-tuning (spec glm_reference §6.1): scores against a direct computation, learning, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from glm_core.checkpoint import SHIPPED_PRESETS
from glm_core.config import GLMConfig
from glm_core.errors import DataError
from glm_core.finetune import ClozeEvaluator, ClozeExample, ClozeScorer, ClozeTask, encode_examples, read_cloze_jsonl
from glm_core.model import build_model
from glm_core.tokenizer import GLMTokenizer
from glm_core.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "evaluation" / "data" / "demo"


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
    return subprocess.run([sys.executable, "-m", "glm_core.train", *args], cwd=REPO, env=env,
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
    proc = _cli("finetune", "--model", str(model_dir), "--task", "wsc", "--out", str(tmp_path / "out"), "--steps", "1")
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
