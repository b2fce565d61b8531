"""Per-example result cache: an interrupted evaluation resumes where it stopped (torch-free).

One JSON-lines file per (task, backend, dtype, model hash, data file). The first line is a header naming all of
these; every later line is one example's record. Records are appended as complete lines and fsync'ed, so a killed
run leaves at worst a truncated last line, which :meth:`ResultCache.load` ignores and cuts off before anything new is
appended. A header that does not match (another model, another data file) means the file is not ours: it is
replaced, never mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

FORMAT_VERSION = 2  # 2: the paper protocol per task (references, decoding, lengths); records of 1 are recomputed


def cache_file_name(task_id: str, backend: str, dtype: str, model_hash: str, data_stamp: str) -> str:
    """``<task>-<backend>-<dtype>-<model hash 16>-<data 8>.jsonl``."""
    model = model_hash.split(":")[-1][:16]
    data = hashlib.sha256(data_stamp.encode("utf-8")).hexdigest()[:8]
    return f"{task_id}-{backend}-{dtype}-{model}-{data}.jsonl"


class ResultCache:
    """Append-only cache of per-example records keyed by ``record["key"]``."""

    def __init__(self, path: str | os.PathLike[str], header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.header = {"format": FORMAT_VERSION, **header}

    def load(self) -> dict[str, dict[str, Any]]:
        """Records already computed. Drops a truncated last line (from the file too) and a foreign file."""
        if not self.path.is_file():
            return {}
        with open(self.path, "rb") as fh:
            data = fh.read()
        records: dict[str, dict[str, Any]] = {}
        good_bytes = 0
        offset = 0
        header_ok = False
        for raw in data.splitlines(keepends=True):
            end = offset + len(raw)
            offset = end
            if not raw.endswith(b"\n"):
                break  # an interrupted write: the rest is garbage
            try:
                obj = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            if not header_ok:
                if obj != self.header:
                    self.path.unlink()  # another model / task / data file: start over
                    return {}
                header_ok = True
            elif isinstance(obj, dict) and "key" in obj:
                records[str(obj["key"])] = obj
            else:
                break
            good_bytes = end
        if good_bytes < len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(good_bytes)
                fh.flush()
                os.fsync(fh.fileno())
        if not header_ok:
            self.path.unlink(missing_ok=True)
        return records

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append complete lines and fsync (the header first if the file is new)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        if not self.path.is_file() or self.path.stat().st_size == 0:
            lines.append(json.dumps(self.header, sort_keys=True))
        lines.extend(json.dumps(r, sort_keys=True) for r in records)
        if not lines:
            return
        payload = ("\n".join(lines) + "\n").encode("utf-8")
        with open(self.path, "ab") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
