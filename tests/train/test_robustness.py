"""What long runs meet: non-finite steps, stop signals, reruns into a run directory, stale staging directories,
extended and elastic resumes, the run record of ``log.jsonl``.

The loop runs in process (a tiny GLM, a few steps) except where a real process is the point (signals).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from glm_core import atomic
from glm_core.config import GLMConfig
from glm_core.model import build_model
from glm_core.tokenizer import GLMTokenizer
from tests.train.test_train import REPO, _args, _checkpoint_tensors, _env, _losses, _tree_digest, setup  # noqa: F401
from training import cli
from training.checkpointing import find_latest_checkpoint, read_train_state, remove_stale_staging
from training.config import CosineWithWarmup, TrainConfig
from training.data import read_corpus, sentence_end_ids, tokenize_documents
from training.guard import NonFiniteStepsError
from training.loop import train
from training.sampler import PretrainSampler
from training.tasks import PretrainTask


def _records(out: Path) -> list[dict]:
    """``log.jsonl`` parsed strictly: a ``NaN`` / ``Infinity`` literal (not JSON) fails the test."""

    def refuse(name: str) -> None:
        raise AssertionError(f"log.jsonl holds the non-JSON literal {name}")

    return [json.loads(line, parse_constant=refuse) for line in (out / "log.jsonl").read_text().splitlines()]


class PoisonedTask(PretrainTask):
    """Pretraining whose loss is multiplied by ``value`` (NaN, inf) at the given 0-based steps."""

    def __init__(self, *args, steps: set[int], value: float = float("nan"), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.poisoned, self.value = steps, value

    def micro_batches(self, step, rank, world_size):
        return [
            {**b, "poison": np.asarray(step in self.poisoned)} for b in super().micro_batches(step, rank, world_size)
        ]

    def loss_sum(self, model, batch, device):
        poison = bool(batch["poison"])
        loss = super().loss_sum(model, {k: v for k, v in batch.items() if k != "poison"}, device)
        return loss * self.value if poison else loss


@pytest.fixture(scope="module")
def pieces(setup):  # noqa: F811
    tokenizer = GLMTokenizer.from_pretrained(setup["model"])
    stream = tokenize_documents(read_corpus(setup["corpus"]), tokenizer)
    sampler = PretrainSampler(stream, tokenizer.special, 32, seed=0, sentence_ends=sentence_end_ids(tokenizer))
    config = GLMConfig.from_hf_config(setup["model"]).replace(
        embedding_dropout_prob=0.0, attention_dropout_prob=0.0, output_dropout_prob=0.0
    )
    return {"sampler": sampler, "config": config, "stream": stream}


def _poisoned_run(pieces, out: Path, poisoned: set[int], value: float = float("nan"), **cfg_kwargs):
    cfg = TrainConfig(**{"steps": 6, "micro_batch_size": 2, "save_every": 1, "log_every": 1, "keep_checkpoints": 10,
                         **cfg_kwargs})  # fmt: skip
    task = PoisonedTask(pieces["sampler"], 2, 1, 1, steps=poisoned, value=value)
    return cfg, train(build_model(pieces["config"], seed=0), task, cfg, out_dir=out, progress=False)


# ------------------------------------------------------------------------------------------------ non-finite steps
def test_a_nan_step_is_skipped_counted_logged_as_json_and_never_checkpointed(pieces, tmp_path):
    out = tmp_path / "nan"
    cfg, result = _poisoned_run(pieces, out, poisoned={2})  # the third step's loss is NaN
    assert result.skipped_steps == 1 and len(result.losses) == 6  # the run went on to the end
    records = _records(out)
    steps = {r["step"]: r for r in records if "loss" in r}
    assert steps[3]["skipped"] is True and steps[3]["loss"] is None and steps[3]["grad_norm"] is None
    assert steps[6]["skipped_steps"] == 1 and "skipped" not in steps[4]
    # the skipped step moved neither the weights nor the schedule (GLM:train_utils.py:345-381)
    ckpt = out / "checkpoints"
    before, after = _checkpoint_tensors(ckpt / "step_0000002"), _checkpoint_tensors(ckpt / "step_0000003")
    assert all(torch.equal(before[k], after[k]) for k in before)
    schedule = CosineWithWarmup.for_config(cfg)
    assert steps[3]["lr"] == steps[4]["lr"] == pytest.approx(cfg.lr * schedule(2))  # the LR the step used
    assert steps[6]["lr"] == pytest.approx(cfg.lr * schedule(4))  # 5 scheduler steps before step 6, not 6
    assert read_train_state(ckpt / "step_0000006")["scheduler"]["last_epoch"] == 5
    assert read_train_state(ckpt / "step_0000006")["skipped_steps"] == 1
    for checkpoint in sorted(ckpt.glob("step_*")):
        tensors = _checkpoint_tensors(checkpoint)
        assert tensors and all(torch.isfinite(t).all() for t in tensors.values()), checkpoint.name


def test_consecutive_non_finite_steps_stop_the_run_with_one_line_and_keep_a_good_checkpoint(pieces, tmp_path):
    out = tmp_path / "diverged"
    with pytest.raises(NonFiniteStepsError) as info:
        _poisoned_run(pieces, out, poisoned={2, 3, 4, 5}, max_skipped_steps=3, keep_checkpoints=1)
    message = str(info.value)
    assert "\n" not in message and "3 consecutive steps" in message and "step 5" in message
    latest = find_latest_checkpoint(out)
    assert latest is not None and latest.name == "step_0000004"  # saved before the limit, weights of step 2
    assert all(torch.isfinite(t).all() for t in _checkpoint_tensors(latest).values())


def test_non_finite_weights_are_never_checkpointed(pieces, tmp_path, capsys):
    model = build_model(pieces["config"], seed=0)
    with torch.no_grad():
        model.transformer.final_layernorm.weight[0] = float("nan")
    cfg = TrainConfig(steps=2, micro_batch_size=2, save_every=1, max_skipped_steps=5)
    result = train(model, PretrainTask(pieces["sampler"], 2, 1, 1), cfg, out_dir=tmp_path / "w", progress=False)
    assert result.skipped_steps == 2 and result.checkpoint is None
    assert find_latest_checkpoint(tmp_path / "w") is None
    assert "non-finite weights, no checkpoint written" in capsys.readouterr().err


def test_checkpoints_fall_due_by_time_as_well_as_by_steps(pieces, tmp_path):
    cfg = TrainConfig(steps=3, micro_batch_size=2, save_every=0, save_every_minutes=1e-9, keep_checkpoints=5)
    train(build_model(pieces["config"], seed=0), PretrainTask(pieces["sampler"], 2, 1, 1), cfg, out_dir=tmp_path / "t",
          progress=False)  # fmt: skip
    # every step is past the (tiny) interval: a checkpoint after each, none by step count
    assert sorted(p.name for p in (tmp_path / "t" / "checkpoints").glob("step_*")) == [
        "step_0000001", "step_0000002", "step_0000003",
    ]  # fmt: skip


def test_an_fp16_overflow_takes_the_same_path_and_lowers_the_logged_loss_scale(pieces, tmp_path):
    out = tmp_path / "fp16"
    cfg, result = _poisoned_run(pieces, out, poisoned={1}, value=float("inf"), precision="fp16", steps=3)
    steps = {r["step"]: r for r in _records(out) if "loss" in r}
    assert result.skipped_steps == 1 and steps[2]["skipped"] is True
    assert steps[2]["loss_scale"] == steps[1]["loss_scale"] / 2  # GradScaler backoff 0.5 after the overflow
    assert steps[3]["lr"] == steps[2]["lr"]  # the schedule did not advance over the overflow step


def test_log_records_turn_any_non_finite_number_into_null(tmp_path):
    from training.loop import append_log

    append_log(tmp_path / "log.jsonl", {"step": 1, "eval": {"f1": float("nan"), "acc": 0.5}, "x": [float("inf")]})
    assert _records(tmp_path) == [{"step": 1, "eval": {"f1": None, "acc": 0.5}, "x": [None]}]


# ------------------------------------------------------------------------------------------------ run directory
def _main(*argv: str) -> int:
    return cli.main(list(argv))


def test_a_rerun_into_an_existing_run_directory_is_refused_and_leaves_its_log_intact(setup, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    assert _main(*_args(setup, out, "--micro-batch-size", "2", "--steps", "2")) == 0
    before = _tree_digest(out)
    capsys.readouterr()
    assert _main(*_args(setup, out, "--micro-batch-size", "2", "--steps", "2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a run" in err[0] and "--resume auto" in err[0]
    assert _tree_digest(out) == before  # log.jsonl (and every other file) untouched


def test_stale_staging_directories_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    host = atomic._HOST
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    dead = tmp_path / f".tmp-step_0000003-{dead_pid}@{host}"
    live = tmp_path / f".tmp-step_0000004-{os.getppid()}@{host}"  # the test runner's parent: running
    legacy = tmp_path / ".tmp-step_0000002"  # no writer recorded
    other_host = tmp_path / f".tmp-step_0000005-{dead_pid}@{host}x"  # cannot be checked from here: kept
    for d in (dead, live, legacy, other_host):
        (d / "rng").mkdir(parents=True)
    removed = remove_stale_staging(tmp_path)
    assert sorted(removed) == sorted([dead, legacy])
    assert live.is_dir() and other_host.is_dir() and not dead.exists() and not legacy.exists()


# ------------------------------------------------------------------------------------------------ signals
def test_sigterm_saves_a_checkpoint_and_exits_then_resume_equals_the_uninterrupted_run(
    setup,  # noqa: F811
    tmp_path,
    capsys,
    monkeypatch,
):
    # a real SIGTERM, sent to this process while step 3 builds its batch: the step completes, a checkpoint is written
    # and glm-train ends with one line and status 128 + 15
    # one command line for every start, as a requeued job has: --resume auto starts afresh in an empty directory
    extra = ("--micro-batch-size", "2", "--save-every", "0", "--save-every-minutes", "0", "--data-workers", "0",
             "--resume", "auto")  # fmt: skip
    original = PretrainTask.micro_batches

    def preempted(self, step, rank, world_size):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step, rank, world_size)

    out = tmp_path / "interrupted"
    monkeypatch.setattr(PretrainTask, "micro_batches", preempted)
    assert _main(*_args(setup, out, *extra)) == 128 + signal.SIGTERM
    monkeypatch.setattr(PretrainTask, "micro_batches", original)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "stopped by SIGTERM after step 3 of 6" in lines[0] and "--resume auto" in lines[0]
    stopped = find_latest_checkpoint(out)
    assert stopped is not None and read_train_state(stopped)["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the run

    assert _main(*_args(setup, out, *extra)) == 0
    reference = tmp_path / "reference"
    assert _main(*_args(setup, reference, *extra)) == 0
    a, b = _losses(reference), _losses(out)
    assert sorted(b) == sorted(a) == list(range(1, 7))
    assert [b[s] for s in sorted(b)] == [a[s] for s in sorted(a)]  # dropout on: the RNG state carried over exactly


# ------------------------------------------------------------------------------------------------ resume
def test_a_finished_run_can_be_extended_and_changes_its_global_batch_only_when_allowed(setup, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "extend"
    assert _main(*_args(setup, out, "--micro-batch-size", "2", "--steps", "4")) == 0
    capsys.readouterr()
    longer = _args(setup, out, "--micro-batch-size", "4", "--steps", "6", "--resume", "auto")
    assert _main(*longer) == 2  # global batch 2 -> 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the global batch was 2 samples" in err[0] and "--allow-batch-change" in err[0]
    assert _main(*longer, "--allow-batch-change") == 0
    records = _records(out)
    steps = {r["step"]: r for r in records if "loss" in r}
    assert sorted(steps) == [1, 2, 3, 4, 5, 6] and steps[5]["count"] > steps[4]["count"]  # twice the samples
    # the decay ended at step 4 as the checkpoint's schedule says; the extension holds the floor (0.1 x lr)
    assert steps[5]["lr"] == pytest.approx(4e-4 * 0.1) and steps[6]["lr"] == pytest.approx(4e-4 * 0.1)
    assert [r["resume"]["argv"][-1] for r in records if "resume" in r] == ["--allow-batch-change"]


# ------------------------------------------------------------------------------------------------ run record
def test_the_first_record_reproduces_the_run_and_logs_hold_the_lr_used_and_the_interval_mean(
    setup,  # noqa: F811
    pieces,
    tmp_path,
):
    every = tmp_path / "every"
    assert _main(*_args(setup, every, "--micro-batch-size", "2", "--dropout", "0")) == 0
    records = _records(every)
    run = records[0]["run"]
    assert records[0]["step"] == 0
    assert run["seed"] == 1234 and run["world_size"] == 1 and run["argv"][-1] == "0"
    assert run["config"]["train"]["steps"] == 6 and run["config"]["model_config"]["hidden_size"] == 64
    assert run["versions"]["torch"] == torch.__version__ and run["versions"]["python"]
    if (REPO / ".git").exists():  # run from a checkout: its commit
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert run["source"]["commit"] == head.strip() and isinstance(run["source"]["dirty"], bool)
    stream = np.ascontiguousarray(pieces["stream"], dtype=np.int64)
    assert run["data_fingerprint"] == "sha256:" + hashlib.sha256(stream.tobytes()).hexdigest()
    steps = {r["step"]: r for r in records if "loss" in r}
    cfg = TrainConfig(steps=6, micro_batch_size=2, **{k: run["config"]["train"][k] for k in ("lr", "warmup_ratio")})
    schedule = CosineWithWarmup.for_config(cfg)
    for step, record in steps.items():
        assert record["lr"] == pytest.approx(cfg.lr * schedule(step - 1))  # the rate of the update, not the next

    interval = tmp_path / "interval"
    assert _main(*_args(setup, interval, "--micro-batch-size", "2", "--dropout", "0", "--log-every", "3")) == 0
    logged = {r["step"]: r["loss"] for r in _records(interval) if "loss" in r}
    assert logged[1] == pytest.approx(steps[1]["loss"])
    assert logged[3] == pytest.approx(np.mean([steps[s]["loss"] for s in (2, 3)]), abs=2e-6)
    assert logged[6] == pytest.approx(np.mean([steps[s]["loss"] for s in (4, 5, 6)]), abs=2e-6)
