"""One output discipline for every tool that writes (torch-free).

- The output path is checked before any work: not the current directory or one of its parents, not a file where a
  directory is needed (or the reverse), a writable parent, and an existing target only with ``--overwrite``.
- ``--overwrite`` replaces only what a tool of this project wrote before: a directory is recognised by its marker
  file (:data:`MARKER`, written by :func:`write_marker`) or by the files the tool always writes; anything else is
  refused with one line, never deleted.
- New output is written into a staging directory beside the target, ``.tmp-<name>-<pid>@<host>-<random>``, and swapped
  in atomically (``renameat2(RENAME_EXCHANGE)`` where the kernel and file system have it, else two renames whose
  window a later run repairs). A staging directory whose writer is gone (same host, pid no longer running) is
  removed by the next run for the same target, which says so on stderr.
- SIGTERM is handled like SIGINT (:func:`terminate_as_interrupt`): the ``KeyboardInterrupt`` clean-up paths run, and
  the CLI exits 143 (SIGTERM) or 130 (SIGINT) with one line.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from glm_core.atomic import chmod_default
from glm_core.errors import GLMError

__all__ = [
    "MARKER",
    "Terminated",
    "check_output",
    "check_output_file",
    "check_writable_dir",
    "interrupt_exit_code",
    "foreign_to",
    "is_model_file",
    "terminate_as_interrupt",
    "write_marker",
]

MARKER = ".glm-harness-output.json"
# The files that define a model's numbers: weights (safetensors, .bin, the original layout's .pt shards and its
# iteration file), the ONNX graph and its external data, configs, tokenizer files. Everything else in a model
# directory -- the export report (timings, paths), results or caches written beside the weights, model cards, the
# output marker -- is left out, so re-exporting the same weights keeps the hash (and the evaluation cache).
MODEL_FILE_PATTERNS = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.onnx",
    "*.onnx.data",
    "*.onnx_data",
    "config.json",
    "glm_config.json",
    "*.index.json",
    "latest_checkpointed_iteration.txt",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",
    "*tokenizer*.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


def is_model_file(name: str) -> bool:
    """Whether a file of this name defines a model's numbers (weights, graph, configs, tokenizer)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in MODEL_FILE_PATTERNS)


def write_marker(directory: str | os.PathLike[str], tool: str, **fields: object) -> None:
    """Mark ``directory`` as ``tool``'s output, so a later ``--overwrite`` may replace it."""
    path = Path(directory) / MARKER
    path.write_text(json.dumps({"tool": tool, **fields}, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    chmod_default(path, 0o666)


def foreign_to(
    directory: Path, tools: Iterable[str], signature: Iterable[str] = (), expected: Callable[[str], bool] | None = None
) -> str | None:
    """Why ``directory`` is *not* the output of one of ``tools`` (``None``: it is, ``--overwrite`` may replace it).

    It is when it carries one of ``tools``' marker, or (outputs written before markers existed) every file of
    ``signature``; and, with ``expected``, when every entry in it is a name the tool writes, so that files a user
    put there are never deleted with it.
    """
    tools = set(tools)
    marker = directory / MARKER
    if marker.is_file():
        try:
            tool = json.loads(marker.read_text(encoding="utf-8")).get("tool")
        except (OSError, ValueError, AttributeError):
            tool = None
        if tool not in tools:
            return f"its {MARKER} names {tool!r}, not {' or '.join(sorted(tools))}"
    else:
        required = list(signature)
        missing = [name for name in required if not (directory / name).exists()]
        if not required or missing:
            return f"it has no {MARKER}" + (f" and no {missing[0]}" if missing else "")
    if expected is not None:
        foreign = sorted(p.name for p in directory.iterdir() if p.name != MARKER and not expected(p.name))
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            return f"it holds files this tool does not write ({shown})"
    return None


def check_output(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    flag: str,
    directory: bool = True,
    foreign: Callable[[Path], str | None] | None = None,
    what: str = "an output of this tool",
    make_parents: bool = False,
    error: type[GLMError] = GLMError,
) -> Path:
    """Check ``path`` before any work; return it. Each problem raises ``error`` with one line.

    ``foreign(path)`` says why an existing target is not this tool's own output, or ``None`` when it is (e.g.
    :func:`foreign_to`); without it, ``--overwrite`` may replace any existing target of the right kind. ``make_parents``: missing parent directories will be made, so the nearest existing one must be
    writable.
    """
    out = Path(path)
    if str(path) == "":
        raise error(f"{flag}: empty path; expected a {'directory' if directory else 'file'} to write")
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise error(f"{flag} {path}: is the current directory or one of its parents; expected a path below it")
    if out.exists() or out.is_symlink():
        if directory and not out.is_dir():
            raise error(f"{flag} {path}: exists and is not a directory; expected a directory (or a new path)")
        if not directory and out.is_dir():
            raise error(f"{flag} {path}: is a directory; expected a file path")
        if not overwrite:
            raise error(f"{flag} {path}: already exists; pass --overwrite to replace it")
        reason = None if foreign is None else foreign(out)
        if reason is not None:
            raise error(
                f"{flag} {path}: exists and is not {what} ({reason}); --overwrite replaces only that, so nothing was "
                "touched: remove it yourself or choose another path"
            )
    if not resolved.parent.is_dir() and not make_parents:
        raise error(f"{flag} {path}: parent directory {resolved.parent} does not exist")
    _check_writable_place(resolved.parent, f"{flag} {path}", error)
    return out


def check_writable_dir(path: str | os.PathLike[str], *, flag: str, error: type[GLMError] = GLMError) -> Path:
    """A directory the run adds files to (a cache): an existing directory, or one that can be made."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise error(f"{flag} {path}: exists and is not a directory; expected a directory")
    _check_writable_place(out.resolve(), f"{flag} {path}", error)
    return out


def _check_writable_place(directory: Path, what: str, error: type[GLMError]) -> None:
    """``directory`` exists and is writable, or the nearest directory that exists on the way to it is."""
    nearest = directory
    while not nearest.exists():
        nearest = nearest.parent
    if not nearest.is_dir():
        raise error(f"{what}: {nearest} is a file; expected a directory on the way to the output")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise error(f"{what}: {nearest} is not writable; choose another path")


def check_output_file(
    path: str | os.PathLike[str], *, overwrite: bool, foreign: Callable[[Path], str | None], what: str
) -> Path:
    """:func:`check_output` for an ``--output`` file (a results file, a report) whose missing parents are made."""
    return check_output(
        path, overwrite=overwrite, flag="--output", directory=False, foreign=foreign, what=what, make_parents=True
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM delivered as an interrupt, so the clean-up that SIGINT gets runs for it too."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


def interrupt_exit_code(exc: BaseException) -> int:
    """128 + the signal: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + (exc.signum if isinstance(exc, Terminated) else signal.SIGINT)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``) in the main thread."""
    if not hasattr(signal, "SIGTERM") or _not_main_thread():
        yield
        return

    def raise_terminated(signum: int, _frame: object) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _not_main_thread() -> bool:
    import threading

    return threading.current_thread() is not threading.main_thread()
