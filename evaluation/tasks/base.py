"""What every evaluation task is made of: reading its data files, predicting, aggregating metrics (torch-free).

A task runs in three stages, so that bad input fails before a model is loaded and an interrupted run can resume:

1. ``read(data_dir, split, limit) -> list[Example]``: parse and validate the data files (no tokenizer needed).
   Errors name the file and line (:class:`~glm_core.errors.DataError`).
2. ``predict(examples, ctx) -> list[dict]``: one JSON-serialisable record per example, holding ``"key"`` and what
   the metrics need (scores, prediction, gold). Records are cached line by line by the command line.
3. ``aggregate(records) -> dict[str, float]``: the task's metrics over all records.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.scoring import Scorer
from glm_core.data_files import iter_jsonl
from glm_core.errors import ConfigError, DataError
from glm_core.layout import GLMInput
from glm_core.special_tokens import SpecialTokens
from glm_core.tokenizer import GLMTokenizer


@dataclass
class Example:
    """One unit of evaluation (cached and resumed as a whole). ``key`` is unique within the task's data."""

    key: str
    data: dict[str, Any]


@dataclass
class EvalContext:
    """What ``predict`` may use: the backend, its tokenizer, the scoring engine, the task's sequence length.

    ``seq_length`` is the length one task is evaluated at (its paper setting or ``--seq-length``, never more than
    the model's ``max_sequence_length``, see :func:`resolve_seq_length`); ``None`` means the model's own maximum.
    """

    backend: Any
    scorer: Scorer
    batch_size: int = 8
    verbose: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    seq_length: int | None = None

    @property
    def tokenizer(self) -> GLMTokenizer:
        return self.backend.tokenizer

    @property
    def special(self) -> SpecialTokens:
        return self.backend.tokenizer.special

    @property
    def max_length(self) -> int:
        """The longest input this task builds: ``seq_length`` when set, else the model's maximum."""
        return int(self.seq_length if self.seq_length is not None else self.backend.max_length)


class Task:
    """Base class. Subclasses set ``name``, ``description`` and implement ``read``, ``predict``, ``aggregate``."""

    name: str = ""
    description: str = ""
    primary_metric: str = "acc"
    default_split: str = "val"  # used when the command line gives no --split
    # the original's MAX_SEQ_LEN for this task (config_tasks/*.sh); None: the model's max_sequence_length
    seq_length: int | None = None
    # the original script/config the defaults reproduce (reported in the results file)
    protocol_source: str = ""

    def __init__(self, option: str | None = None) -> None:
        if option is not None:
            raise DataError(f"task {self.name!r} takes no option, got {self.name}:{option}")

    @property
    def task_id(self) -> str:
        """Name plus every option that changes the records (used to key the result cache)."""
        return self.name

    def config(self) -> dict[str, Any]:
        """Settings reported in the results file (pattern, scoring, decoding)."""
        return {}

    def configure(self, options: dict[str, Any]) -> None:
        """Take the command-line protocol options this task knows (e.g. ``wsc_negatives``); ignore the others."""

    def data_files(self, data_dir: Path, split: str) -> list[Path]:
        """The files ``read`` will open (used to key the cache and to report them)."""
        raise NotImplementedError

    def read(self, data_dir: Path, split: str, limit: int | None) -> list[Example]:
        raise NotImplementedError

    def predict(self, examples: Sequence[Example], ctx: EvalContext) -> list[dict[str, Any]]:
        raise NotImplementedError

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        raise NotImplementedError


def padded_prompt(part_a: Sequence[int], mask_positions: tuple[int, ...], length: int | None, pad: int) -> GLMInput:
    """A generation prompt that is Part A only, right-padded with ``pad`` to ``length`` **inside** Part A (visible
    to the generated tokens, as the original's seq2seq and blank datasets pad their sources); no padding for
    ``None``. Positions ``0..n-1``, block positions 0, ``sep = n``."""
    ids = list(part_a) + [pad] * max((length or 0) - len(part_a), 0)
    n = len(ids)
    return GLMInput(
        input_ids=np.asarray(ids),
        position_ids=np.stack([np.arange(n), np.zeros(n, dtype=np.int64)]),
        sep=n,
        targets=np.full(n, pad),
        loss_mask=np.zeros(n, dtype=np.float32),
        mask_positions=mask_positions,
    )


def resolve_seq_length(task: Task, requested: int | None, model_max: int) -> tuple[int, str | None]:
    """The length ``task`` is evaluated at and, when the model is shorter than asked, a one-line note.

    ``requested`` (``--seq-length``) overrides the task's paper length (``Task.seq_length``, the original's
    ``MAX_SEQ_LEN``); without either, the model's ``max_sequence_length``. A length above the model's maximum is
    capped at it: the position embeddings end there.
    """
    wanted = requested if requested is not None else task.seq_length
    if wanted is None:
        return model_max, None
    if wanted < 8:
        raise ConfigError(f"--seq-length must be at least 8 tokens, got {wanted}")
    if wanted > model_max:
        source = "--seq-length" if requested is not None else f"the paper's length for {task.name}"
        note = (
            f"{task.name}: {source} is {wanted} but the model's max_sequence_length is {model_max}; "
            f"evaluating at {model_max}"
        )
        return model_max, note
    return wanted, None


# ----------------------------------------------------------------------------------------------------------------------
# Reading data files
# ----------------------------------------------------------------------------------------------------------------------


def find_data_file(data_dir: Path, candidates: Sequence[str], task: str) -> Path:
    """The first of ``data_dir / c`` that exists; a DataError naming every place looked at otherwise."""
    for rel in candidates:
        path = data_dir / rel
        if path.is_file():
            return path
    looked = ", ".join(str(data_dir / c) for c in candidates)
    raise DataError(f"task {task!r}: data file not found; looked for {looked}")


def read_jsonl(path: Path, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """All lines of a jsonl file (up to ``limit`` objects); a DataError if the file holds none."""
    rows = []
    for number, obj in iter_jsonl(path):
        rows.append((number, obj))
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DataError(f"{path}: empty data file; expected at least one JSON line")
    return rows


def field_of(obj: dict[str, Any], name: str, path: Path, line: int, kind: type | tuple[type, ...] | None = None) -> Any:
    """``obj[name]`` (dotted names reach into nested objects); DataError naming file, line and field otherwise."""
    value: Any = obj
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DataError(f"{path}:{line}: missing field {name!r}")
        value = value[part]
    if kind is not None and not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{path}:{line}: field {name!r} must be {expected}, got {type(value).__name__}")
    return value


def read_lines(path: Path) -> list[str]:
    """Lines of a text file without their newline; DataError when unreadable or not UTF-8."""
    try:
        with open(path, encoding="utf-8") as fh:
            return [line.rstrip("\n").rstrip("\r") for line in fh]
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def apply_limit(examples: list[Example], limit: int | None) -> list[Example]:
    return examples if limit is None else examples[:limit]


def file_stamp(path: Path) -> str:
    """``path:size:mtime`` - enough to tell two data files apart when keying the cache."""
    st = os.stat(path)
    return f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"
