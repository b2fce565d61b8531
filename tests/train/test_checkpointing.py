"""Sharded training checkpoints (torch.distributed.checkpoint): resume on another number of processes, export to the
hub layout, collectives on the model's device, safe reading, evaluation under FSDP."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from glm_core.checkpoint import load_model
from glm_core.errors import CheckpointError
from tests.train.test_train import _args, _assert_one_line_exit_2, _checkpoint_tensors, _losses, _run, _weights, setup  # noqa: F401
from training import distributed
from training.checkpointing import SafeFileSystemReader, export_checkpoint, read_train_state
from training.distributed import CollectiveDeviceError, DistContext, all_reduce_sum, global_sum

# dropout off: runs on different numbers of processes then draw no random numbers, so their losses can agree
PLAIN = ("--dropout", "0", "--save-every", "3", "--keep-checkpoints", "3")


@pytest.fixture(scope="module")
def uninterrupted(setup):  # noqa: F811
    """One process, global batch 4 (2 micro-batches of 2), 6 steps, checkpoints at 3 and 6."""
    out = setup["root"] / "ckpt-one"
    proc = _run(_args(setup, out, "--micro-batch-size", "2", "--grad-accum", "2", *PLAIN))
    assert proc.returncode == 0, proc.stderr
    return out


def _assert_same_curve(resumed: Path, reference: Path) -> None:
    a, b = _losses(reference), _losses(resumed)
    assert [s for s in sorted(b) if s > 3] == [4, 5, 6]
    # float tolerance: 2 ranks x 1 micro-batch and 1 rank x 2 micro-batches sum the gradients in another order
    np.testing.assert_allclose([b[s] for s in (4, 5, 6)], [a[s] for s in (4, 5, 6)], rtol=1e-5, atol=1e-6)
    wa, wb = _weights(reference / "final"), _weights(resumed / "final")
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-5)


def test_two_process_checkpoint_resumes_in_one_process(setup, uninterrupted):  # noqa: F811
    two = setup["root"] / "ckpt-two"
    # preempted: rank 0 alone gets SIGTERM during step 3; both ranks finish it, write the checkpoint and stop
    args = _args(setup, two, "--micro-batch-size", "2", "--grad-accum", "1", *PLAIN, "--data-workers", "0")
    proc = _run(args, torchrun=2, module="tests.train.preempted_main")
    assert proc.returncode != 0  # torchrun reports the workers' status 128 + 15
    assert proc.stderr.count("glm-train: stopped by SIGTERM after step 3 of 6;") == 1, proc.stderr
    assert not (two / "checkpoints" / "step_0000006").exists()
    half = two / "checkpoints" / "step_0000003"
    state = read_train_state(half)
    assert state["world_size"] == 2 and state["step"] == 3
    assert sorted(p.name for p in (half / "rng").iterdir()) == ["rank_00000.pt", "rank_00001.pt"]
    assert len(list(half.glob("*.distcp"))) == 2  # each rank wrote its own file

    resumed = setup["root"] / "ckpt-two-to-one"
    # the same global batch (4) on one process: two micro-batches of 2
    args = _args(setup, resumed, "--micro-batch-size", "2", "--grad-accum", "2", *PLAIN, "--resume", str(half))
    proc = _run(args)
    assert proc.returncode == 0, proc.stderr
    assert "not bit-exact" in proc.stderr  # RNG streams cannot carry over to another world size: said, not hidden
    _assert_same_curve(resumed, uninterrupted)


def test_one_process_checkpoint_resumes_on_two_processes(setup, uninterrupted):  # noqa: F811
    half = uninterrupted / "checkpoints" / "step_0000003"
    resumed = setup["root"] / "ckpt-one-to-two"
    args = _args(setup, resumed, "--micro-batch-size", "2", "--grad-accum", "1", *PLAIN, "--resume", str(half))
    proc = _run(args, torchrun=2)
    assert proc.returncode == 0, proc.stderr
    _assert_same_curve(resumed, uninterrupted)


def test_resume_with_another_global_batch_names_it_and_exits_2(setup, uninterrupted, tmp_path):  # noqa: F811
    half = uninterrupted / "checkpoints" / "step_0000003"
    args = _args(setup, tmp_path / "r", "--micro-batch-size", "2", "--grad-accum", "1", *PLAIN, "--resume", str(half))
    _assert_one_line_exit_2(_run(args), "the global batch was 4 samples")
    assert not (tmp_path / "r").exists()


def test_export_writes_the_hub_layout_of_any_checkpoint(setup, uninterrupted, tmp_path):  # noqa: F811
    out = tmp_path / "hub"
    proc = _run(["export", str(uninterrupted), str(out)])
    assert proc.returncode == 0, proc.stderr
    exported, final = _weights(out), _weights(uninterrupted / "final")
    assert exported.keys() == final.keys() and all(torch.equal(exported[k], final[k]) for k in final)
    stored = _checkpoint_tensors(uninterrupted / "checkpoints" / "step_0000006")  # read back independently
    assert all(torch.equal(exported[k], stored["model.glm." + k]) for k in exported)
    assert any(stored[k].abs().sum() > 0 for k in stored if k.startswith("model."))
    assert (out / "spiece.model").is_file() and (out / "config.json").is_file()
    model = load_model(out)  # the exported directory is an ordinary hub checkpoint
    assert model.config.num_layers == 2

    half = tmp_path / "hub-step3"
    proc = _run(["export", str(uninterrupted), str(half), "--step", "3", "--dtype", "fp16"])
    assert proc.returncode == 0, proc.stderr
    assert all(t.dtype == torch.float16 for t in _weights(half).values())
    _assert_one_line_exit_2(_run(["export", str(uninterrupted), str(out)]), "already exists")
    _assert_one_line_exit_2(_run(["export", str(tmp_path / "nothing"), str(tmp_path / "x")]), "no training checkpoint")
    assert not (tmp_path / "x").exists()


def test_checkpoint_metadata_that_would_run_code_is_refused(setup, uninterrupted, tmp_path):  # noqa: F811
    import shutil

    evil = tmp_path / "evil"
    shutil.copytree(uninterrupted / "checkpoints" / "step_0000006", evil)
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (evil / ".metadata").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(CheckpointError, match="not allowed in checkpoint metadata"):
        SafeFileSystemReader(evil).read_metadata()
    with pytest.raises(CheckpointError, match="metadata"):
        export_checkpoint(evil, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ collectives
def test_collectives_take_tensors_on_the_model_device(monkeypatch):
    """NCCL accepts only CUDA tensors. The loop's step totals are built on ``ctx.device``; a host tensor handed to a
    collective of a non-CPU process group is refused on every backend (here: a 2-rank group on the meta device, with
    the collective itself stubbed), so the mistake shows on a CPU-only machine."""
    calls = []
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda tensor, op=None: calls.append(tensor.device))
    ctx = DistContext(rank=0, world_size=2, device=torch.device("meta"))
    totals = global_sum([3.0, torch.tensor(2.5, device="meta")], ctx)
    assert totals.device.type == "meta" and totals.shape == (2,) and calls == [torch.device("meta")]
    with pytest.raises(CollectiveDeviceError, match="collectives take tensors on the model's device"):
        all_reduce_sum(torch.tensor(1.0, dtype=torch.float64), ctx)  # what the loop handed NCCL before
    assert len(calls) == 1


def test_the_loop_issues_no_collective_on_host_tensors_of_another_device():
    """Source check: the loop reduces only through ``global_sum``/``all_reduce_sum`` and builds no host tensor for
    them (``torch.tensor(...)`` without ``device=`` handed to a collective)."""
    source = (Path(__file__).resolve().parents[2] / "training" / "loop.py").read_text(encoding="utf-8")
    assert "dist.all_reduce" not in source
    assert ".cpu()" not in source


# ------------------------------------------------------------------------------------------------ FSDP evaluation
def test_evaluation_runs_during_fsdp_training(setup, tmp_path):  # noqa: F811
    out = tmp_path / "fsdp-eval"
    args = _args(setup, out, "--micro-batch-size", "2", "--dropout", "0", "--steps", "2", "--fsdp")
    args.remove("--no-eval")
    args += ["--eval-tasks", "demo", "--eval-limit", "8", "--eval-every", "2"]
    proc = _run(args, torchrun=2)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in records if "eval" in r]
    assert evals and 0.0 <= evals[-1]["demo/acc"] <= 1.0
