"""Writing files and directories that are never seen half-written: write beside the target, then rename (torch-free).

A rename within one directory is atomic, so a reader (or a rerun after a crash or a full disk) finds either the old
content or the new one, never a mix. Temporary names start with a dot and sit beside the target; they are removed
when writing fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "make_staging_dir",
    "move_into_place",
    "staged_directory",
    "write_bytes_atomically",
    "write_text_atomically",
]


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """``path`` holds ``data``, or what it held before if writing fails; missing parent directories are made.

    The temporary file is ``.<name>.<random>.tmp`` (a ``.tmp`` file is ignored by model hashing), flushed to disk
    before the rename. The file gets ordinary permissions (``0o666`` less the umask), not ``mkstemp``'s private
    ``0o600``: model directories are shared artefacts.
    """
    target = Path(path)
    directory = target.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    """:func:`write_bytes_atomically` of ``text`` as UTF-8, line ends written as given (``\\n`` stays ``\\n``)."""
    write_bytes_atomically(path, text.encode("utf-8"))


def make_staging_dir(target: Path) -> Path:
    """A new empty directory ``.tmp-<name>-<random>`` beside ``target``, to be filled and then moved into place.

    It gets the permissions of any new directory (``0o777`` less the umask): ``mkdtemp`` makes it private, and the
    directory it becomes is an ordinary one.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    return staging


def move_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``. An existing ``target`` (directory, file or link) is first renamed aside and
    removed once the new one is in place, so ``target`` is never a mix of old and new files."""
    if not (target.exists() or target.is_symlink()):
        os.replace(staging, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
    try:
        os.replace(target, aside / target.name)
    except BaseException:
        os.rmdir(aside)
        raise
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(aside / target.name, target)  # put the old one back
        os.rmdir(aside)
        raise
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """``with staged_directory(out) as tmp:`` write into ``tmp``; on leaving, ``tmp`` replaces ``out``
    (:func:`move_into_place`). If the block raises, ``tmp`` is removed and ``out`` is left as it was."""
    staging = make_staging_dir(target)
    try:
        yield staging
        move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
