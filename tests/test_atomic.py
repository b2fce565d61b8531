"""``glm_core.atomic``: a file or directory written beside its target replaces it whole, or not at all."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from glm_core import atomic
from glm_core.atomic import (
    make_staging_dir,
    move_into_place,
    staged_directory,
    write_bytes_atomically,
    write_text_atomically,
)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_staged_directory_becomes_the_target(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with staged_directory(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-out-")
        (tmp / "a.txt").write_text("new")
    assert _tree(out) == {"a.txt": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staged_directory_replaces_an_existing_one_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with staged_directory(out) as tmp:
        (tmp / "a.txt").write_text("new")
    assert _tree(out) == {"a.txt": b"new"}  # nothing of the old directory is left in it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_write_leaves_the_target_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OSError, match="disk full"), staged_directory(out) as tmp:
        (tmp / "half.txt").write_text("half")
        raise OSError("disk full")
    assert _tree(out) == {"old.txt": b"old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staging_dir_has_the_permissions_of_a_new_directory(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        staging = make_staging_dir(tmp_path / "out")
        plain = tmp_path / "plain"
        plain.mkdir()
    finally:
        os.umask(umask)
    assert stat.S_IMODE(staging.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o755


def test_a_file_or_a_dangling_link_at_the_target_is_replaced(tmp_path: Path) -> None:
    for name, make in (("file", lambda p: p.write_text("x")), ("link", lambda p: p.symlink_to(tmp_path / "gone"))):
        out = tmp_path / name
        make(out)
        staging = make_staging_dir(out)
        (staging / "a.txt").write_text("new")
        move_into_place(staging, out)
        assert out.is_dir() and not out.is_symlink() and _tree(out) == {"a.txt": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "link"]


def test_the_old_target_is_put_back_when_the_new_one_cannot_be_moved_in(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    staging = make_staging_dir(out)
    real_replace = os.replace

    def replace(src, dst):
        if Path(src) == staging:
            raise OSError("rename refused")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # the two-rename path of file systems without it
    with pytest.raises(OSError, match="rename refused"):
        move_into_place(staging, out)
    assert _tree(out) == {"old.txt": b"old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", staging.name])


# ---------------------------------------------------------------------------------------------------------- files
def test_write_text_atomically_makes_parents_and_keeps_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.txt"
    write_text_atomically(path, "caf\u00e9\nline two\n")
    assert path.read_bytes() == "caf\u00e9\nline two\n".encode()  # UTF-8, "\n" written as "\n"
    write_bytes_atomically(str(path), b"\x00\xff")
    assert path.read_bytes() == b"\x00\xff"
    assert [p.name for p in path.parent.iterdir()] == ["out.txt"]


def test_a_failed_file_write_keeps_the_old_content_and_leaves_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "out.json"
    path.write_text("old")

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomically(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_written_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from glm_core.atomic import write_text_atomically

    umask = os.umask(0o022)
    try:
        write_text_atomically(tmp_path / "f.json", "{}")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o644


# ------------------------------------------------------------------------------------------ swaps and leftovers
def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_an_existing_target_is_swapped_atomically_and_nothing_is_left_beside_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    staging = make_staging_dir(out)
    assert staging.name.startswith(f".tmp-out-{os.getpid()}@{atomic._HOST}-")  # the writer can be told apart
    (staging / "new.txt").write_text("new")
    move_into_place(staging, out)
    assert _tree(out) == {"new.txt": b"new"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_new_run_removes_the_staging_dirs_of_dead_writers_only(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    dead, host = _dead_pid(), atomic._HOST
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "dead": f".tmp-out-{dead}@{host}-abc",
            "alive": f".tmp-out-{sleeper.pid}@{host}-def",
            "other host": f".tmp-out-{dead}@elsewhere-ghi",
            "unnamed writer": ".tmp-out-jkl",
            "other target": f".tmp-outer-{dead}@{host}-mno",
        }
        for name in names.values():
            (tmp_path / name).mkdir()
            (tmp_path / name / "w.bin").write_bytes(b"x" * 10)
        staging = make_staging_dir(out)
        left = sorted(p.name for p in tmp_path.iterdir())
    finally:
        sleeper.kill()
        sleeper.wait()
    assert names["dead"] not in left
    assert sorted(set(names.values()) - {names["dead"]} | {staging.name}) == left
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and names["dead"] in err and "did not finish" in err


def test_a_writer_killed_between_the_two_renames_gets_its_old_output_back(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    aside = tmp_path / f".old-out-{_dead_pid()}@{atomic._HOST}-xyz"
    (aside / "out").mkdir(parents=True)
    (aside / "out" / "w.bin").write_bytes(b"old")
    removed = atomic.remove_stale_staging(out)
    assert removed == [aside] and _tree(out) == {"w.bin": b"old"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert "restored" in capsys.readouterr().err
