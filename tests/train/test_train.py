"""glm-train end to end on a tiny GLM: DDP equivalence, exact resume, atomic checkpoints, bad input (exit 2).

Every run is a real ``python -m training`` / ``torchrun`` process on the CPU (gloo), a few steps long.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from torch.distributed.checkpoint.api import CheckpointException

from glm_core.config import GLMConfig
from glm_core.model import build_model
from tests.train.tiny_setup import make_tiny_run_inputs
from training.checkpointing import SafeFileSystemReader, read_train_state

REPO = Path(__file__).resolve().parents[2]
STEPS = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model directory (glm-tiny's tokenizer, hidden 64, 2 layers) and a small synthetic corpus."""
    return make_tiny_run_inputs(tmp_path_factory.mktemp("train"), "train-test", num_documents=300)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def _args(setup, out: Path, *extra: str) -> list[str]:
    return [
        "pretrain", "--model", str(setup["model"]), "--from-scratch", "--corpus", str(setup["corpus"]),
        "--out", str(out), "--steps", str(STEPS), "--seq-length", "32", "--log-every", "1", "--quiet",
        "--no-eval", "--bert-prob", "0.6", "--gap-sentence-prob", "0.2", *extra,
    ]  # fmt: skip


def _run(
    args: list[str], env: dict[str, str] | None = None, torchrun: int = 0, module: str = "training"
) -> subprocess.CompletedProcess[str]:
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(torchrun),
               "--master-port", "29517", "-m", module, *args]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=240)


def _losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def _checkpoint_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a DCP checkpoint, by flattened name (``model.glm.<param>``, ``optim.state.<param>.exp_avg``)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = SafeFileSystemReader(checkpoint)
    metadata = reader.read_metadata()
    state = {
        name: torch.empty(meta.size, dtype=meta.properties.dtype)
        for name, meta in metadata.state_dict_metadata.items()
        if isinstance(meta, TensorStorageMetadata)
    }
    dcp.load(state, storage_reader=reader, no_dist=True)
    return state


def _tree_digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------------------------ DDP
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(setup):
    root = setup["root"]
    single = root / "single"
    # one process, 2 micro-batches of 2 == two processes, 1 micro-batch of 2 each (global batch 4); dropout off so
    # that the two runs draw no random numbers at all
    one = _run(_args(setup, single, "--micro-batch-size", "2", "--grad-accum", "2", "--dropout", "0"))
    assert one.returncode == 0, one.stderr
    ddp = root / "ddp"
    two = _run(_args(setup, ddp, "--micro-batch-size", "2", "--grad-accum", "1", "--dropout", "0"), torchrun=2)
    assert two.returncode == 0, two.stderr
    a, b = _losses(single), _losses(ddp)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    # float tolerance: gradients are summed in a different order (all-reduce vs accumulation)
    np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-5, atol=1e-6)
    wa, wb = _weights(single / "final"), _weights(ddp / "final")
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-5)
    summary = json.loads(two.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["steps"] == STEPS


def test_two_process_fsdp_matches_one_process(setup):
    root = setup["root"]
    single = root / "single-fsdp-ref"
    one = _run(_args(setup, single, "--micro-batch-size", "2", "--grad-accum", "2", "--dropout", "0", "--steps", "3"))
    assert one.returncode == 0, one.stderr
    sharded = root / "fsdp"
    two = _run(_args(setup, sharded, "--micro-batch-size", "2", "--dropout", "0", "--steps", "3", "--fsdp"), torchrun=2)
    assert two.returncode == 0, two.stderr
    a, b = _losses(single), _losses(sharded)
    # float tolerance: the sharded all-gather / reduce-scatter sums in another order
    np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-5, atol=1e-6)
    wa, wb = _weights(single / "final"), _weights(sharded / "final")
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------ resume
def test_resumed_run_reproduces_the_uninterrupted_run_exactly(setup):
    root = setup["root"]
    full = root / "full"
    # dropout stays on (0.1): the RNG state must be restored for the runs to agree
    extra = ("--micro-batch-size", "2", "--save-every", "3", "--keep-checkpoints", "3")
    done = _run(_args(setup, full, *extra))
    assert done.returncode == 0, done.stderr
    half = full / "checkpoints" / "step_0000003"
    state = read_train_state(half)
    rng = torch.load(half / "rng" / "rank_00000.pt", weights_only=True)  # weights_only: plain tensors
    assert state["step"] == 3 and state["world_size"] == 1 and isinstance(rng["torch_cpu"], torch.Tensor)

    resumed = root / "resumed"
    again = _run(_args(setup, resumed, *extra, "--resume", str(half)))
    assert again.returncode == 0, again.stderr
    a, b = _losses(full), _losses(resumed)
    assert [b[s] for s in (4, 5, 6)] == [a[s] for s in (4, 5, 6)]
    wa, wb = _weights(full / "final"), _weights(resumed / "final")
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "resumed weights differ from the uninterrupted run"
    opt_a = _checkpoint_tensors(full / "checkpoints" / "step_0000006")
    opt_b = _checkpoint_tensors(resumed / "checkpoints" / "step_0000006")
    moments = [k for k in opt_a if k.endswith("exp_avg_sq")]
    assert moments and all(torch.equal(opt_a[k], opt_b[k]) for k in moments)


# ------------------------------------------------------------------------------------------------ bad input
def _assert_one_line_exit_2(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("glm-train: error: ") and fragment in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"", "corpus is empty"), (b"caf\xe9 au lait\n", "not valid UTF-8")],
)
def test_bad_corpus_exits_2_with_one_line_and_writes_nothing(setup, tmp_path, content, fragment):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(content)
    args = _args(setup, tmp_path / "out", "--micro-batch-size", "2")
    args[args.index("--corpus") + 1] = str(corpus)
    _assert_one_line_exit_2(_run(args), fragment)
    assert not (tmp_path / "out").exists()


def test_sequence_longer_than_the_model_exits_2(setup, tmp_path):
    args = _args(setup, tmp_path / "out", "--micro-batch-size", "2")
    args[args.index("--seq-length") + 1] = "200"
    _assert_one_line_exit_2(_run(args), "does not fit the model")
    assert not (tmp_path / "out").exists()


def test_triton_kernels_on_a_machine_without_them_exit_2(setup, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the Triton kernels can run here")
    # the interpreter is what lets Triton run on a CPU; without it --kernels triton cannot run
    env = _env(TRITON_INTERPRET="0")
    proc = _run(_args(setup, tmp_path / "out", "--micro-batch-size", "2", "--kernels", "triton"), env=env)
    _assert_one_line_exit_2(proc, "Triton kernel cannot run")
    assert not (tmp_path / "out").exists()


def test_resume_with_a_mismatched_config_exits_2_and_leaves_the_checkpoint_untouched(setup, tmp_path):
    out = tmp_path / "run"
    first = _run(_args(setup, out, "--micro-batch-size", "2"))
    assert first.returncode == 0, first.stderr
    before = _tree_digest(out)
    args = _args(setup, out, "--micro-batch-size", "2", "--resume", "auto")
    args[args.index("--seq-length") + 1] = "48"
    _assert_one_line_exit_2(_run(args), "task.seq_length was 32")
    # a plain rerun into the same directory would overwrite the run: refused as well
    _assert_one_line_exit_2(
        _run(_args(setup, out, "--micro-batch-size", "2")), "already holds a run (log.jsonl, checkpoints)"
    )
    assert _tree_digest(out) == before


def test_failed_checkpoint_write_leaves_no_partial_directory(setup, tmp_path, monkeypatch):
    from glm_core.tokenizer import GLMTokenizer
    from training import checkpointing as checkpoint_io
    from training.config import TrainConfig
    from training.data import read_corpus, sentence_end_ids, tokenize_documents
    from training.loop import train
    from training.sampler import PretrainSampler
    from training.tasks import PretrainTask

    tokenizer = GLMTokenizer.from_pretrained(setup["model"])
    stream = tokenize_documents(read_corpus(setup["corpus"]), tokenizer)
    sampler = PretrainSampler(stream, tokenizer.special, 32, seed=0, sentence_ends=sentence_end_ids(tokenizer))
    config = GLMConfig.from_hf_config(setup["model"])
    out = tmp_path / "run"
    cfg = TrainConfig(steps=2, micro_batch_size=2, save_every=1, log_every=1)
    train(build_model(config, seed=0), PretrainTask(sampler, 2, 1, 1), cfg, out_dir=out,
                       progress=False)  # fmt: skip
    good = _tree_digest(out / "checkpoints")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_io.torch, "save", broken_save)
    longer = TrainConfig(steps=3, micro_batch_size=2, save_every=1, log_every=1, lr_decay_steps=2)
    with pytest.raises((OSError, CheckpointException), match="disk full"):
        train(build_model(config, seed=0), PretrainTask(sampler, 2, 1, 1), longer, out_dir=out, progress=False,
              resume=out / "checkpoints" / "step_0000002")  # fmt: skip
    # the earlier checkpoints are intact, nothing half-written was left beside them
    assert _tree_digest(out / "checkpoints") == good
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


def test_cosine_schedule_warms_up_then_decays_to_the_floor():
    from training.config import CosineWithWarmup

    schedule = CosineWithWarmup(warmup=10, total=110, min_ratio=0.1)
    assert schedule(0) == pytest.approx(0.1) and schedule(9) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert schedule(110) == pytest.approx(0.1) and schedule(500) == pytest.approx(0.1)


def _in_process_losses(setup, tmp_path, name: str, precision: str = "fp32", checkpointing: bool = False) -> list[float]:
    from glm_core.tokenizer import GLMTokenizer
    from training.config import TrainConfig
    from training.data import read_corpus, sentence_end_ids, tokenize_documents
    from training.loop import train
    from training.sampler import PretrainSampler
    from training.tasks import PretrainTask

    tokenizer = GLMTokenizer.from_pretrained(setup["model"])
    stream = tokenize_documents(read_corpus(setup["corpus"]), tokenizer)
    sampler = PretrainSampler(stream, tokenizer.special, 32, seed=0, sentence_ends=sentence_end_ids(tokenizer))
    config = GLMConfig.from_hf_config(setup["model"]).replace(
        embedding_dropout_prob=0.0, attention_dropout_prob=0.0, output_dropout_prob=0.0
    )
    model = build_model(config, seed=0, gradient_checkpointing=checkpointing)
    cfg = TrainConfig(steps=3, micro_batch_size=2, precision=precision)
    task = PretrainTask(sampler, 2, 1, 1)
    return train(model, task, cfg, out_dir=tmp_path / name, progress=False).losses


def test_gradient_checkpointing_changes_no_number(setup, tmp_path):
    plain = _in_process_losses(setup, tmp_path, "plain")
    recomputed = _in_process_losses(setup, tmp_path, "gc", checkpointing=True)
    assert recomputed == plain


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_tracks_fp32(setup, tmp_path, precision):
    reference = _in_process_losses(setup, tmp_path, "fp32")
    mixed = _in_process_losses(setup, tmp_path, precision, precision=precision)
    # bf16 keeps 8 mantissa bits, fp16 11: per-step losses of a 3-step run stay within a few percent of fp32
    np.testing.assert_allclose(mixed, reference, rtol=0.03)
