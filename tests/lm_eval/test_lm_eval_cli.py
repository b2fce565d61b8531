"""`lm_eval --model glm-onnx|glm-torch` end to end in a fresh interpreter: one CLI call per backend (each ~20-30 s,
mostly lm-eval indexing its built-in tasks), then `evaluation.compare` on the two `--log_samples` outputs.

See conftest.py for how the child interpreter gets the plugin hook (installed .pth, or the checkout's via site).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.compare import compare_runs, load_run
from evaluation.compare import main as compare_main
from evaluation.lm_eval_tasks import task_dir

LIMIT = 20
NUM_CHOICES = 4  # evaluation/data/demo/val.jsonl: four choices per question


def run_cli(lm_eval_cli, out: Path, model: str, pretrained: str) -> Path:
    argv = [
        "--model", model,
        "--model_args", f"pretrained={pretrained}",
        "--device", "cpu",
        "--batch_size", "8",
        "--include_path", task_dir(),
        "--tasks", "glm_demo",
        "--limit", str(LIMIT),
        "--log_samples",
        "--output_path", str(out),
    ]  # fmt: skip
    proc = lm_eval_cli(argv, out.parent)
    assert proc.returncode == 0, f"lm_eval --model {model} failed:\n{proc.stderr[-4000:]}"
    return out


def only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


@pytest.fixture(scope="module")
def onnx_run(lm_eval_cli, tiny_onnx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_cli(lm_eval_cli, tmp_path_factory.mktemp("cli") / "onnx", "glm-onnx", str(tiny_onnx_dir))


@pytest.fixture(scope="module")
def torch_run(lm_eval_cli, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    return run_cli(lm_eval_cli, tmp_path_factory.mktemp("cli") / "torch", "glm-torch", "glm-tiny")


def check_run(out: Path, backend: str) -> None:
    results = json.loads(only(sorted(out.rglob("results_*.json"))).read_text(encoding="utf-8"))
    assert results["config"]["model"] == f"glm-{backend}"
    assert results["config"]["glm_model_info"]["backend"] == backend
    assert results["config"]["glm_model_info"]["device"] == "cpu"
    assert results["n-samples"]["glm_demo"]["effective"] == LIMIT
    samples = [
        json.loads(line) for line in only(sorted(out.rglob("samples_glm_demo_*.jsonl"))).read_text().splitlines()
    ]
    assert len(samples) == LIMIT
    # acc recomputed from the logged per-choice log-likelihoods: argmax == label
    correct = 0
    for sample in samples:
        lls = [float(ll) for ll, _ in sample["filtered_resps"]]
        assert len(lls) == NUM_CHOICES and all(ll < 0 for ll in lls)
        correct += max(range(NUM_CHOICES), key=lambda i: lls[i]) == sample["doc"]["label"]
    assert results["results"]["glm_demo"]["acc,none"] == pytest.approx(correct / LIMIT)


def test_lm_eval_cli_runs_glm_onnx(onnx_run: Path) -> None:
    check_run(onnx_run, "onnx")


def test_lm_eval_cli_runs_glm_torch(torch_run: Path) -> None:
    check_run(torch_run, "torch")


def test_both_cli_runs_agree_within_1e_4_per_sample(onnx_run: Path, torch_run: Path, capsys) -> None:
    report = compare_runs(load_run(torch_run), load_run(onnx_run))
    assert report["ok"], report["failures"]
    (demo,) = report["samples"]
    assert demo["samples"] == LIMIT and demo["loglikelihoods"] == LIMIT * NUM_CHOICES
    assert demo["max_abs_ll_diff"] <= 1e-4
    assert demo["argmax_agreement"] == 1.0
    acc = {m["metric"]: m for m in report["metrics"]}["acc,none"]
    assert acc["a"] == acc["b"]
    assert compare_main([str(torch_run), str(onnx_run), "--max-ll-diff", "1e-4", "-q"]) == 0
