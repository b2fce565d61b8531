"""glm-train's outputs as a user meets them: paths checked before any work, packaged tasks found from any working
directory, a final model directory swapped in whole with the user's own files kept, and files of the umask's mode."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from glm_core.checkpoint import SHIPPED_PRESETS, save_model
from glm_core.config import GLMConfig
from glm_core.model import build_model
from glm_core.outputs import MARKER

ROOT = Path(__file__).resolve().parents[2]


def _train(*args: object, cwd: Path, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "training", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny")
    config = GLMConfig(
        vocab_size=2048, hidden_size=64, num_layers=1, num_attention_heads=1, max_sequence_length=64,
        tokenizer_family="sentencepiece", name="outputs-test",
    )  # fmt: skip
    save_model(build_model(config, seed=0), directory)
    for name in ("spiece.model", "glm_tokenizer.json"):
        shutil.copy(SHIPPED_PRESETS["glm-tiny"] / name, directory / name)
    return directory


def _finetune(model_dir: Path, *extra: object) -> list[object]:
    return ["finetune", "--model", model_dir, "--task", "demo", "--steps", "2", "--micro-batch-size", "2",
            "--max-length", "64", "--quiet", *extra]  # fmt: skip


def test_finetune_on_the_packaged_demo_task_from_any_directory_keeps_the_users_files(
    model_dir: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    final = tmp_path / "published"
    final.mkdir()
    (final / "README.md").write_text("my model card\n")
    (final / "model-00001-of-00002.safetensors").write_bytes(b"stale shard")  # an old model file: must go
    proc = _train(*_finetune(model_dir, "--out", "run", "--final-dir", final), cwd=elsewhere, umask=0o002)
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in final.iterdir())
    assert names == sorted(
        [MARKER, "README.md", "config.json", "glm_tokenizer.json", "model.safetensors", "spiece.model"]
    )
    assert (final / "README.md").read_text() == "my model card\n"
    written = [p for p in final.iterdir() if p.name != "README.md"]  # the user's card keeps its own mode
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o664}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "published"]  # no staging left beside it


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--out", "."], "current directory"),
        (["--out", "run", "--final-dir", "plain.txt"], "not a directory"),
        (["--out", "plain.txt/run"], "is a file"),
    ],
)
def test_finetune_refuses_bad_output_paths_before_any_work(
    model_dir: Path, tmp_path: Path, extra: list[str], needle: str
) -> None:
    (tmp_path / "plain.txt").write_text("keep")
    proc = _train(*_finetune(model_dir, *extra), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt"]
    assert (tmp_path / "plain.txt").read_text() == "keep"


def test_export_of_a_run_refuses_an_existing_out_without_overwrite(model_dir: Path, tmp_path: Path) -> None:
    assert _train(*_finetune(model_dir, "--out", "run"), cwd=tmp_path).returncode == 0
    out = tmp_path / "hub"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused = _train("export", "run", out, cwd=tmp_path)
    assert refused.returncode == 2 and "pass --overwrite" in refused.stderr and refused.stderr.count("\n") == 1
    ok = _train("export", "run", out, "--overwrite", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").is_file()
    assert json.loads((out / MARKER).read_text())["tool"] == "glm-train"
