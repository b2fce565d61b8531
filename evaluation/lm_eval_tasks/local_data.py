"""Datasets for the shipped lm-eval tasks, read from local JSONL (lm-eval's ``custom_dataset`` hook, spec §3).

lm-eval calls ``custom_dataset(**metadata, **dataset_kwargs)``; the task YAML passes the relative ``file`` and the
``split`` name in ``dataset_kwargs``, and the user may pass ``glm_data_dir`` through ``--metadata``. Paths are resolved
from this file, not from the working directory (spec §3: relative ``data_files`` follow the CWD). lm-eval loads this
module by its file path, so it only imports what is importable from anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glm_core import data_files
from glm_core.errors import DataError

_HERE = Path(__file__).resolve().parent
BUNDLED_DATA_DIR = _HERE / "data"
# The demo cloze task about glm-tiny's corpus facts (evaluation/data/demo/README.md).
DEMO_VAL_FILE = _HERE.parent / "data" / "demo" / "val.jsonl"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file (blank lines skipped); :class:`DataError` naming the file and line otherwise."""
    rows = data_files.read_jsonl(path, kind="task data file")
    if not rows:
        raise DataError(f"{path}: no records; expected at least one JSON object")
    return rows


def _as_dataset_dict(rows: list[dict[str, Any]], split: str) -> Any:
    import datasets  # lm-eval's own dependency; only imported when a task is built

    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})


def local_jsonl(
    file: str | None = None, split: str = "validation", glm_data_dir: str | None = None, **_metadata: Any
) -> Any:
    """``DatasetDict({split: records of <data dir>/<file>})``; the data dir is ``glm_data_dir`` or the bundled one."""
    if not file:
        raise DataError("the task config gives no data file; expected dataset_kwargs.file in the task YAML")
    base = Path(glm_data_dir).expanduser() if glm_data_dir else BUNDLED_DATA_DIR
    return _as_dataset_dict(read_jsonl(base / file), split)


def demo_file(glm_demo_file: str | None = None) -> Path:
    """The demo task's file: ``glm_demo_file`` if given, else ``evaluation/data/demo/val.jsonl``."""
    return Path(glm_demo_file).expanduser() if glm_demo_file else DEMO_VAL_FILE


def demo_dataset(split: str = "validation", glm_demo_file: str | None = None, **_metadata: Any) -> Any:
    """The ``glm_demo`` records ``{"text": "... [MASK] ...", "choices": [...], "label": int}``, validated."""
    path = demo_file(glm_demo_file)
    rows = read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        choices, label = row.get("choices"), row.get("label")
        if not isinstance(row.get("text"), str) or not isinstance(choices, list) or len(choices) < 2:
            raise DataError(f"{path}: record {number} needs 'text' (str) and 'choices' (a list of >= 2 strings)")
        if not isinstance(label, int) or not 0 <= label < len(choices):
            raise DataError(
                f"{path}: record {number} has label {label!r}; expected an index into its {len(choices)} choices"
            )
    return _as_dataset_dict(rows, split)
