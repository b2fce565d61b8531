"""What a user meets at the edges of the core tools, run as the user runs them (subprocesses): one line and exit 2,
the disk as it was (nothing lost, nothing extra), files readable by others, and no guesses made silently."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from glm_core import checkpoint as ck
from glm_core.errors import CheckpointError, GLMWarning
from glm_core.model import build_model

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: object, cwd: Path = ROOT, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    pre = None if umask is None else (lambda: os.umask(umask))
    return subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, preexec_fn=pre
    )


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


# --------------------------------------------------------------------------------------------------- --overwrite
def test_convert_overwrite_never_deletes_a_directory_it_did_not_write(tmp_path: Path) -> None:
    m = tmp_path / "m"
    (m / "other").mkdir(parents=True)
    (m / "other" / "w.bin").write_bytes(b"x")
    before = _tree(tmp_path)
    proc = _run("-m", "glm_core.convert", "glm-tiny", m, "--overwrite")
    _one_error_line(proc, "is not a converted checkpoint", "nothing was touched")
    assert _tree(tmp_path) == before


def test_convert_overwrite_replaces_its_own_output_but_not_files_a_user_added(tmp_path: Path) -> None:
    out = tmp_path / "hub"
    assert _run("-m", "glm_core.convert", "glm-tiny", out).returncode == 0
    first = _tree(out)
    again = _run("-m", "glm_core.convert", "glm-tiny", out, "--overwrite", "--dtype", "fp32")
    assert again.returncode == 0, again.stderr
    assert _tree(out).keys() == first.keys() and _tree(out) != first  # replaced whole
    (out / "notes.txt").write_text("mine")
    refused = _run("-m", "glm_core.convert", "glm-tiny", out, "--overwrite")
    _one_error_line(refused, "notes.txt")
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub"]


@pytest.mark.parametrize("dst", [".", ".."])
def test_convert_refuses_the_current_directory_and_its_parents(tmp_path: Path, dst: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("keep")
    proc = _run("-m", "glm_core.convert", "glm-tiny", dst, "--overwrite", cwd=work)
    _one_error_line(proc, "current directory or one of its parents")
    assert (work / "keep.txt").read_text() == "keep"


def test_convert_refuses_a_file_as_destination_and_bad_shard_sizes(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("keep")
    _one_error_line(_run("-m", "glm_core.convert", "glm-tiny", target, "--overwrite"), "not a directory")
    assert target.read_text() == "keep"
    for size in ("0", "-1", "nan"):
        proc = _run("-m", "glm_core.convert", "glm-tiny", tmp_path / "x", "--max-shard-gb", size)
        assert proc.returncode == 2 and "greater than 0" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


# ---------------------------------------------------------------------------------------------------- file modes
def test_every_converted_file_gets_the_umask_mode(tmp_path: Path) -> None:
    umask = 0o002  # not the usual 0o022, so a mode fixed in the code cannot pass by chance
    out = tmp_path / "hub"
    assert _run("-m", "glm_core.convert", "glm-tiny", out, "--max-shard-gb", "0.004", umask=umask).returncode == 0
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert any(name.endswith(".safetensors") for name in modes) and len(modes) > 4
    assert set(modes.values()) == {0o666 & ~umask}, modes
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask


# ----------------------------------------------------------------------------------------------------- no guesses
def _custom_original(tmp_path: Path, heads: int) -> tuple[Path, torch.nn.Module]:
    config = ck.GLMConfig(
        vocab_size=320, hidden_size=128, num_layers=2, num_attention_heads=heads, max_sequence_length=64
    )
    model = build_model(config.replace(gelu="tanh"), seed=7).eval()
    return ck.save_original(model, tmp_path / "orig", dtype=None), model


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    pos = torch.stack([torch.arange(6), torch.zeros(6, dtype=torch.long)])[None]
    with torch.no_grad():
        return model(ids, pos, torch.tensor([3])).logits


def test_an_original_checkpoint_of_unknown_shape_needs_its_head_count(tmp_path: Path) -> None:
    # 128 hidden with 4 heads: hidden // 64 would give 2 heads and logits 14 % off, so the loader must not guess
    path, model = _custom_original(tmp_path, heads=4)
    with pytest.raises(CheckpointError, match="number of attention heads is unknown"):
        ck.load_model(path)
    with pytest.warns(GLMWarning, match=r"no config.json; inferred custom .* 4 heads.* with tanh GeLU"):
        loaded = ck.load_model(path, num_attention_heads=4)
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=0)


def test_a_hub_checkpoint_without_config_json_says_which_gelu_it_chose(tmp_path: Path) -> None:
    out = tmp_path / "hub"
    assert _run("-m", "glm_core.convert", "glm-tiny", out).returncode == 0
    (out / "config.json").unlink()
    with pytest.warns(GLMWarning, match=r"inferred glm-tiny .* with erf GeLU \(the default for hub-layout"):
        assert ck.load_model(out).config.gelu == "erf"


# ---------------------------------------------------------------------------------------------- messages, signals
def test_a_refused_pickle_is_one_whole_sentence(tmp_path: Path) -> None:
    evil = tmp_path / "evil.bin"
    script = textwrap.dedent(
        f"""
        import os, torch
        class Evil:
            def __reduce__(self):
                return (os.system, ("touch {tmp_path / "ran"}",))
        torch.save({{"module": {{"w": Evil()}}}}, {str(evil)!r})
        """
    )
    assert _run("-c", script).returncode == 0
    proc = _run("-m", "glm_core.convert", evil, tmp_path / "out", "--num-attention-heads", "2")
    _one_error_line(proc, "refused to load", "system", "(prefer safetensors)")
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()


def test_generate_refuses_an_empty_text_before_loading() -> None:
    proc = _run("-m", "glm_core.cli", "--model", "glm-tiny", "  ")
    _one_error_line(proc, "text 1 is empty")


def test_sigterm_runs_the_interrupt_clean_up_and_exits_143(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from pathlib import Path
        from glm_core.atomic import staged_directory
        from glm_core.outputs import interrupt_exit_code, terminate_as_interrupt
        try:
            with terminate_as_interrupt(), staged_directory(Path({str(tmp_path / "out")!r})) as tmp:
                (tmp / "half.bin").write_bytes(b"x")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
        except KeyboardInterrupt as exc:
            print("error: interrupted; nothing was written", file=sys.stderr)
            sys.exit(interrupt_exit_code(exc))
        """
    )
    proc = _run("-c", script)
    assert proc.returncode == 128 + signal.SIGTERM and proc.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
