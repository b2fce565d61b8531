"""Writing files and directories that are never seen half-written: write beside the target, then rename (torch-free).

A rename within one directory is atomic, so a reader (or a rerun after a crash or a full disk) finds either the old
content or the new one, never a mix. Temporary names start with a dot and sit beside the target; they are removed
when writing fails.

Staging directories are named ``.tmp-<name>-<pid>@<host>-<random>``: a writer killed outright (SIGKILL, a lost node)
leaves one behind, and the next :func:`make_staging_dir` for the same target removes those whose writer no longer
runs on this host, saying so on stderr. :func:`move_into_place` swaps an existing target out with one atomic
``renameat2(RENAME_EXCHANGE)`` where the kernel and file system support it; elsewhere it uses two renames, and a run
killed between them leaves the old output in an ``.old-`` directory that the next run puts back.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "chmod_default",
    "make_staging_dir",
    "move_into_place",
    "remove_stale_staging",
    "writer_is_gone",
    "writer_tag",
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
    """A new empty directory ``.tmp-<name>-<pid>@<host>-<random>`` beside ``target``, to be filled and then moved
    into place; stale ones of earlier, dead writers of the same target are removed first.

    It gets the permissions of any new directory (``0o777`` less the umask): ``mkdtemp`` makes it private, and the
    directory it becomes is an ordinary one.
    """
    remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(target), dir=target.parent))
    chmod_default(staging, 0o777)
    return staging


def move_into_place(staging: Path, target: Path) -> None:
    """Put the finished ``staging`` at ``target``. An existing target (directory, file or link) is swapped out
    atomically where possible and then removed: at every instant ``target`` is the old output or the new one, never a
    mix (on file systems without an atomic exchange it is briefly absent, the old one kept in an ``.old-`` directory
    that :func:`remove_stale_staging` restores if the writer dies there)."""
    if not (target.exists() or target.is_symlink()):
        os.replace(staging, target)
        return
    if _exchange(staging, target):
        _remove(staging)  # it now holds the old output
        return
    aside = Path(tempfile.mkdtemp(prefix=staging_prefix(target, "old"), dir=target.parent))
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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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


_HOST = socket.gethostname().split(".")[0].replace("-", "_") or "localhost"


def writer_tag() -> str:
    """``<pid>@<host>``: who writes a staging directory, so a later run can tell a dead writer's leftovers."""
    return f"{os.getpid()}@{_HOST}"


def writer_is_gone(tag: str) -> bool:
    """Whether the writer ``<pid>@<host>`` of a staging directory no longer runs.

    Only a writer on this host can be asked (another host's is never judged gone); this process's own tag counts
    as gone (a leftover of its own failed attempt); a tag that is not ``<pid>@<host>`` is not ours to judge.
    """
    pid_text, at, host = tag.partition("@")
    if not at or not pid_text.isdigit() or host != _HOST:
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


def staging_prefix(target: Path, kind: str = "tmp") -> str:
    """``.tmp-<name>-<pid>@<host>-``."""
    return f".{kind}-{target.name}-{writer_tag()}-"


def _writer_is_gone(entry: Path, target: Path, kind: str) -> bool:
    owner = entry.name[len(f".{kind}-{target.name}-") :].partition("-")[0]
    return writer_is_gone(owner)


def remove_stale_staging(target: str | os.PathLike[str], *, say: Callable[[str], None] | None = None) -> list[Path]:
    """Remove ``target``'s staging directories left by writers that no longer run; return what was removed.

    An ``.old-`` directory holds a previous output renamed aside during a non-atomic swap: if the target is missing
    (the writer died between the two renames) the old output is put back rather than deleted.
    """
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        return []
    removed: list[Path] = []
    for kind in ("old", "tmp"):  # "old" first: restoring a target must happen before anything else looks at it
        for entry in sorted(parent.glob(f".{kind}-{glob_escape(target.name)}-*")):
            if not entry.is_dir() or not _writer_is_gone(entry, target, kind):
                continue
            inner = entry / target.name
            if kind == "old" and inner.exists() and not (target.exists() or target.is_symlink()):
                os.replace(inner, target)
                (say or _stderr)(f"note: restored {target} from an interrupted replacement ({entry.name})")
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    if removed:
        names = ", ".join(p.name for p in removed)
        (say or _stderr)(
            f"note: removed {len(removed)} staging director{'y' if len(removed) == 1 else 'ies'} "
            f"of an earlier run that did not finish: {names}"
        )
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def chmod_default(path: Path, base: int) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, base & ~umask)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically; False when the platform or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))
