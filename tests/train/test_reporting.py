"""glm-train --report-to: TensorBoard scalars mirror log.jsonl, wandb (offline) or a one-line exit 2, none writes
nothing; tokens/s and MFU (the FLOPs formula against a hand computation, the peak table)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glm_core.config import GLMConfig
from glm_core.errors import ConfigError
from glm_core.model import build_model
from tests.train.tiny_setup import make_tiny_run_inputs

REPO = Path(__file__).resolve().parents[2]
STEPS = 4
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
HAS_WANDB = importlib.util.find_spec("wandb") is not None


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model directory (glm-tiny's tokenizer, hidden 64, 2 layers) and a small synthetic corpus."""
    return make_tiny_run_inputs(tmp_path_factory.mktemp("report"), "report-test", num_documents=200)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def _run(setup, out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    args = [
        "pretrain", "--model", str(setup["model"]), "--from-scratch", "--corpus", str(setup["corpus"]),
        "--out", str(out), "--steps", str(STEPS), "--seq-length", "32", "--micro-batch-size", "2",
        "--log-every", "1", "--quiet", *extra,
    ]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=REPO, env=env or _env(), capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _assert_one_line_exit_2(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("glm-train: error: ") and fragment in lines[0]


# ------------------------------------------------------------------------------------------------ tensorboard
@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed (pip install 'glm-harness[train]')")
def test_tensorboard_scalars_mirror_the_log(setup):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = setup["root"] / "tb"
    proc = _run(
        setup, out, "--report-to", "tensorboard", "--peak-tflops", "1", "--eval-tasks", "demo",
        "--eval-every", "2", "--eval-limit", "8",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = _records(out)
    steps = {r["step"]: r for r in records if "loss" in r}
    evals = {r["step"]: r["eval"] for r in records if "eval" in r}
    assert sorted(steps) == list(range(1, STEPS + 1)) and sorted(evals) == [2, 4]
    for r in steps.values():
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1

    events = sorted((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no event file under OUT/tensorboard"
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])

    def series(tag: str) -> dict[int, float]:
        return {e.step: e.value for e in acc.Scalars(tag)}

    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
        got = series(f"train/{key}")
        assert sorted(got) == sorted(steps), key
        for step, value in got.items():  # event files hold float32
            assert value == pytest.approx(steps[step][key], rel=1e-6, abs=1e-12), (key, step)
    assert all(v > 0 for v in series("train/tokens_per_s").values())
    eval_tags = {t for t in tags if t.startswith("eval/")}
    assert "eval/demo/acc" in eval_tags, tags
    for tag in eval_tags:
        key = tag[len("eval/") :]
        assert series(tag) == {s: pytest.approx(e[key], rel=1e-6) for s, e in evals.items()}


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed")
def test_tensorboard_is_the_default_and_a_resumed_run_replaces_the_later_steps(setup):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = setup["root"] / "tb-resume"
    extra = ("--no-eval", "--save-every", "2", "--keep-checkpoints", "3")  # no --report-to: the default
    assert _run(setup, out, *extra).returncode == 0
    again = _run(setup, out, *extra, "--resume", str(out / "checkpoints" / "step_0000002"))
    assert again.returncode == 0, again.stderr
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()  # the resumed writer purged steps 3..4 of the first run: one value a step
    logged = {r["step"]: r["loss"] for r in _records(out) if "loss" in r}
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars("train/loss")] == sorted(logged.items())


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed")
def test_in_process_run_reports_without_mfu_on_a_cpu_without_a_peak(setup, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from glm_core.tokenizer import GLMTokenizer
    from training.config import TrainConfig
    from training.data import read_corpus, sentence_end_ids, tokenize_documents
    from training.loop import train
    from training.reporting import ReportConfig
    from training.sampler import PretrainSampler
    from training.tasks import PretrainTask

    tokenizer = GLMTokenizer.from_pretrained(setup["model"])
    stream = tokenize_documents(read_corpus(setup["corpus"]), tokenizer)
    sampler = PretrainSampler(stream, tokenizer.special, 32, seed=0, sentence_ends=sentence_end_ids(tokenizer))
    model = build_model(GLMConfig.from_hf_config(setup["model"]), seed=0)
    cfg = TrainConfig(steps=3, micro_batch_size=2, log_every=1)
    out = tmp_path / "run"
    result = train(
        model, PretrainTask(sampler, 2, 1, 1), cfg, out_dir=out, progress=False,
        evaluate=lambda m: {"toy": {"score": 0.25}, "label": "text is not a scalar"},
        report=ReportConfig("tensorboard"),
    )  # fmt: skip
    records = _records(out)
    steps = [r for r in records if "loss" in r]
    assert [r["loss"] for r in steps] == [round(x, 6) for x in result.losses]
    assert all(r["tokens_per_s"] > 0 and "mfu" not in r for r in steps)  # CPU, no --peak-tflops: no MFU
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert "train/mfu" not in tags and "eval/label" not in tags
    assert [e.value for e in acc.Scalars("eval/toy/score")] == [0.25]


# ------------------------------------------------------------------------------------------------ none / wandb
def test_report_to_none_writes_no_tensorboard_directory(setup):
    out = setup["root"] / "none"
    proc = _run(setup, out, "--report-to", "none", "--no-eval", "--steps", "2")
    assert proc.returncode == 0, proc.stderr
    assert not (out / "tensorboard").exists() and not (out / "wandb").exists()
    assert all(r["tokens_per_s"] > 0 for r in _records(out) if "loss" in r)  # log.jsonl carries it regardless


@pytest.mark.skipif(HAS_WANDB, reason="wandb is installed")
def test_report_to_wandb_without_the_package_exits_2_before_training(setup):
    out = setup["root"] / "no-wandb"
    proc = _run(setup, out, "--report-to", "wandb", "--no-eval", env=_env(WANDB_MODE="offline"))
    _assert_one_line_exit_2(proc, "wandb package is not installed")
    assert not out.exists()


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed")
def test_report_to_wandb_needs_a_key_or_an_offline_mode(setup, tmp_path):
    out = setup["root"] / "wandb-unconfigured"
    proc = _run(setup, out, "--report-to", "wandb", "--no-eval", env=_env(HOME=str(tmp_path)))  # no ~/.netrc
    _assert_one_line_exit_2(proc, "wandb is not configured")
    assert not out.exists()


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed")
def test_report_to_wandb_offline_keeps_the_run_under_out(setup, tmp_path):
    out = setup["root"] / "wandb-offline"
    env = _env(WANDB_MODE="offline", HOME=str(tmp_path), WANDB_SILENT="true")
    proc = _run(setup, out, "--report-to", "wandb", "--no-eval", "--run-name", "tiny", env=env)
    assert proc.returncode == 0, proc.stderr
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    data = sorted(runs[0].glob("run-*.wandb"))
    assert data and data[0].stat().st_size > 0
    # the history stream holds the logged keys
    assert b"train/loss" in data[0].read_bytes() and b"train/tokens_per_s" in data[0].read_bytes()


def test_unavailable_backends_are_config_errors(monkeypatch):
    from training.reporting import ReportConfig

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import -> ImportError
    with pytest.raises(ConfigError, match="tensorboard package is not installed"):
        ReportConfig("tensorboard")
    monkeypatch.setattr("training.reporting._installed", lambda name: True)
    monkeypatch.setattr("training.reporting._wandb_login_on_file", lambda: False)
    for key in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigError, match="wandb is not configured"):
        ReportConfig("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    ReportConfig("wandb")
    with pytest.raises(ConfigError, match="--peak-tflops must be a positive number"):
        ReportConfig("none", peak_tflops=0.0)


# ------------------------------------------------------------------------------------------------ FLOPs, MFU
def test_flops_per_token_for_glm_large_by_hand():
    from training.reporting import flops_per_token, non_embedding_parameters

    config = GLMConfig.from_preset("glm-large")  # L = 24, h = 1024
    L, h, T = 24, 1024, 512
    assert (config.num_layers, config.hidden_size) == (L, h)
    n = 24 * (12 * 1024 * 1024 + 13 * 1024) + 2 * 1024  # layers (QKV, dense, MLP, 2 LayerNorms) + final LayerNorm
    assert n == 302_311_424 == non_embedding_parameters(config)
    assert flops_per_token(config, T) == 6 * 302_311_424 + 12 * 24 * 1024 * 512 == 1_964_863_488


def test_non_embedding_parameters_count_the_model(tiny_config):
    from training.reporting import non_embedding_parameters

    model = build_model(tiny_config, seed=0)
    counted = sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name)
    assert non_embedding_parameters(tiny_config) == counted


@pytest.mark.parametrize(
    ("name", "precision", "tf32", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", False, 989e12),
        ("NVIDIA H100 80GB HBM3", "fp32", True, 494.5e12),
        ("NVIDIA H100 PCIe", "fp16", False, 756e12),
        ("NVIDIA H200", "bf16", False, 989e12),
        ("NVIDIA A100-SXM4-80GB", "bf16", False, 312e12),
        ("NVIDIA A100-SXM4-80GB", "fp32", True, 156e12),
        ("NVIDIA A100-SXM4-80GB", "fp32", False, 19.5e12),
        ("Some Unknown GPU", "bf16", False, None),
    ],
)
def test_peak_flops_table(monkeypatch, name, precision, tf32, peak):
    from training import reporting

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(reporting, "_tf32_matmuls", lambda: tf32)
    assert reporting.peak_flops(torch.device("cuda", 0), precision) == peak
    assert reporting.peak_flops(torch.device("cuda", 0), precision, peak_tflops=100.0) == 100e12


def test_peak_flops_on_a_cpu_only_when_given():
    from training.reporting import peak_flops

    assert peak_flops(torch.device("cpu"), "fp32") is None
    assert peak_flops(torch.device("cpu"), "fp32", peak_tflops=2.5) == 2.5e12


def test_rates_are_per_interval_of_training_time(monkeypatch):
    from training import reporting

    clock = iter([10.0, 12.0, 100.0, 101.0, 200.0, 203.0])  # start/end of three steps
    monkeypatch.setattr(reporting.time, "perf_counter", lambda: next(clock))
    report = reporting.TrainingReport(reporting.Reporter(), positions_per_step=64, flops_per_position=1e6, peak=1e9)
    report.start_step()
    report.end_step(10.0)
    # 10 tokens in 2 s; 64 positions x 1e6 FLOPs in 2 s against 1e9 FLOP/s
    assert report.rates() == {"tokens_per_s": 5.0, "mfu": pytest.approx(0.032)}
    report.start_step()
    report.end_step(6.0)
    report.start_step()  # the time between steps (evaluation, checkpoints) is not training time
    report.end_step(6.0)
    assert report.rates() == {"tokens_per_s": 3.0, "mfu": pytest.approx(2 * 64 * 1e6 / 4 / 1e9)}
