"""Reading JSON-lines data files (task data, fine-tuning examples, evaluation samples); torch-free.

One JSON object per line; blank lines are skipped. Anything wrong raises :class:`~glm_core.errors.DataError` naming
the file and, where there is one, the line. Callers add their own checks (required fields, an empty file).

Lines end at ``\\n``, ``\\r\\n`` or ``\\r`` only (as Python's text files read them): U+2028 and U+0085 may stand
unescaped inside JSON strings, so they do not end a line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from glm_core.errors import DataError

__all__ = ["iter_jsonl", "read_jsonl"]


def _read_bytes(name: str, kind: str, record: str) -> bytes:
    try:
        with open(name, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise DataError(f"{name}: {kind} not found; expected a JSON-lines file, {record} per line") from None
    except OSError as exc:
        raise DataError(f"{name}: cannot read {kind} ({exc.strerror})") from None


def iter_jsonl(
    path: str | os.PathLike[str], *, kind: str = "data file", record: str = "a JSON object"
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of ``path``.

    ``kind`` names the file in the not-found message ("task file"); ``record`` says what one line must hold
    ("a JSON object with text, choices, label"). Raises :class:`DataError` for a missing or unreadable file, a line
    that is not UTF-8, not valid JSON, or not a JSON object. Lines after the last one asked for are not checked.
    """
    name = os.fspath(path)
    data = _read_bytes(name, kind, record)
    offset = 0  # byte offset of the current line in the file
    # bytes.splitlines splits at \n, \r\n and \r only; a UTF-8 sequence never holds those bytes.
    for number, raw in enumerate(data.splitlines(keepends=True), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{name}:{number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {offset + exc.start})"
            ) from None
        offset += len(raw)
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{name}:{number}: not valid JSON (malformed JSON line: {exc.msg} at column {exc.colno}); "
                f"expected {record} per line"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{name}:{number}: expected {record}, got {type(obj).__name__}")
        yield number, obj


def read_jsonl(
    path: str | os.PathLike[str], *, kind: str = "data file", record: str = "a JSON object"
) -> list[dict[str, Any]]:
    """Every object of a JSON-lines file, in order (none for an empty file); errors as :func:`iter_jsonl`."""
    return [obj for _, obj in iter_jsonl(path, kind=kind, record=record)]
