"""An export killed at any moment leaves the old output or the new one, never a half one, and at most one stale
staging directory, which the next run removes: SIGKILL before the final swap, right after it, and inside the
two-rename window of file systems without an atomic exchange; SIGTERM handled like Ctrl-C (exit 143)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from evaluation.backends.info import model_hash

ROOT = Path(__file__).resolve().parents[2]

# Runs the export CLI in-process after arming one fault; the faults kill the process at a chosen instant.
DRIVER = textwrap.dedent(
    """
    import os, signal, sys, time
    import glm_core.atomic as atomic
    import export.model_dir as md
    import export.onnx as cli

    fault = sys.argv[1]
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if fault == "before-swap":
        md.move_into_place = lambda staging, out: die()
    elif fault == "after-exchange":
        real = atomic._exchange
        atomic._exchange = lambda a, b: (real(a, b), die())[0]
    elif fault == "between-renames":
        atomic._exchange = lambda a, b: False
        real_replace = os.replace
        def replace(src, dst):
            real_replace(src, dst)
            if ".old-" in str(dst):  # the old output is aside, the new one not yet in place
                die()
        atomic.os.replace = replace
    elif fault == "sigterm":
        def load(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        cli.load_checkpoint = load
    sys.exit(cli.main(sys.argv[2:]))
    """
)


def _export(fault: str, out: Path) -> subprocess.CompletedProcess[str]:
    args = [
        sys.executable,
        "-c",
        DRIVER,
        fault,
        "--ckpt",
        "glm-tiny",
        "--out",
        str(out),
        "--no-validate",
        "--overwrite",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def _complete(out: Path) -> bool:
    names = {p.name for p in out.iterdir()}
    return {"model.onnx", "glm_config.json", "export_report.json", ".glm-harness-output.json"} <= names


def _staging(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name != "out")


def test_an_export_killed_anywhere_leaves_old_or_new_and_the_next_run_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "out"
    killed = _export("before-swap", out)  # nothing there yet: the finished staging dir is all that is left
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists() and len(_staging(tmp_path)) == 1 and _staging(tmp_path)[0].startswith(".tmp-out-")

    first = _export("none", out)
    assert first.returncode == 0, first.stderr
    assert "removed 1 staging directory" in first.stderr and _staging(tmp_path) == [] and _complete(out)
    old_report = (out / "export_report.json").read_bytes()

    first_hash = model_hash(out)
    swapped = _export("after-exchange", out)  # the new export is in place; the old one is left in the staging dir
    assert swapped.returncode == -signal.SIGKILL and _complete(out)
    assert model_hash(out) == first_hash  # the same weights re-exported: the evaluation cache key is kept
    assert (out / "export_report.json").read_bytes() != old_report
    assert len(_staging(tmp_path)) == 1
    new_report = (out / "export_report.json").read_bytes()

    window = _export("between-renames", out)  # the previous output waits in .old-out-*, the new one in .tmp-out-*
    assert window.returncode == -signal.SIGKILL
    assert "removed 1 staging directory" in window.stderr
    assert not out.exists() and [n[:9] for n in _staging(tmp_path)] == [".old-out-", ".tmp-out-"]

    term = _export("sigterm", out)  # the rerun first puts the old output back, then is terminated while loading
    assert term.returncode == 128 + signal.SIGTERM
    assert term.stderr.strip().splitlines()[-1] == "error: interrupted; nothing was written"
    assert "restored" in term.stderr
    assert _staging(tmp_path) == [] and _complete(out)
    assert (out / "export_report.json").read_bytes() == new_report


def test_export_overwrite_refuses_a_directory_it_did_not_write_before_loading_anything(tmp_path: Path) -> None:
    m = tmp_path / "m"
    (m / "other").mkdir(parents=True)
    (m / "other" / "w.bin").write_bytes(b"x")
    refused = _export("sigterm", m)  # were the model loaded, the process would be terminated (exit 143)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "is not an ONNX export directory" in refused.stderr and "other" in refused.stderr
    assert (m / "other" / "w.bin").read_bytes() == b"x" and sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    here = subprocess.run(
        [sys.executable, "-m", "export.onnx", "--ckpt", "glm-tiny", "--out", ".", "--overwrite"],
        capture_output=True,
        text=True,
        cwd=m,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert here.returncode == 2 and "current directory" in here.stderr and (m / "other" / "w.bin").exists()
