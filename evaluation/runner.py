"""Run tasks on a backend: read data, predict in chunks with a resumable cache, aggregate metrics (torch-free).

    backend = load_backend("torch", "path/to/model")
    plan = read_tasks(expand_task_list("boolq,copa"), Path("data"), split=None, limit=100)
    results = evaluate(backend, plan, cache_dir=Path("out/.glm-eval-cache"))

``results`` is the dict the command line writes as JSON (model hash, backend, provider, dtype, versions, per-task
metrics and examples/s); :func:`format_table` renders it for a terminal.
"""

from __future__ import annotations

import datetime as _dt
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from evaluation.result_cache import ResultCache, cache_file_name
from evaluation.scoring import Scorer
from evaluation.tasks.base import EvalContext, Example, Task, file_stamp, resolve_seq_length
from glm_core.errors import DataError

EXAMPLES_PER_CHUNK = 32  # examples predicted (and cached) together; bounds what an interrupt can lose


@dataclass
class PlannedTask:
    """A task with its examples already read (so that bad data fails before any model is loaded)."""

    task: Task
    examples: list[Example]
    data_files: list[Path]
    split: str


def read_tasks(tasks: Sequence[Task], data_dir: Path, *, split: str | None, limit: int | None) -> list[PlannedTask]:
    """Read and validate every task's data (DataError on the first problem)."""
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be a positive number of examples, got {limit}")
    plan = []
    for task in tasks:
        task_split = split or task.default_split
        files = task.data_files(data_dir, task_split)
        examples = task.read(data_dir, task_split, limit)
        if not examples:
            raise DataError(f"task {task.name!r}: {files[0]} holds no examples")
        keys = [e.key for e in examples]
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise DataError(f"task {task.name!r}: example id {dup!r} appears twice in {files[0]}; ids must be unique")
        plan.append(PlannedTask(task, examples, files, task_split))
    return plan


def run_task(
    planned: PlannedTask,
    ctx: EvalContext,
    cache: ResultCache | None = None,
    *,
    chunk_size: int | None = None,
    progress: bool = True,
    include_records: bool = False,
) -> dict[str, Any]:
    """Predict every example not yet cached, append the records, return the task's result entry
    (with every example's record under ``"records"`` when ``include_records``)."""
    chunk_size = chunk_size or EXAMPLES_PER_CHUNK
    task, examples = planned.task, planned.examples
    done = cache.load() if cache is not None else {}
    todo = [e for e in examples if e.key not in done]
    resumed = len(examples) - len(todo)
    computed: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    with tqdm(total=len(examples), initial=resumed, desc=task.task_id, disable=not progress, unit="ex") as bar:
        for i in range(0, len(todo), chunk_size):
            chunk = todo[i : i + chunk_size]
            records = task.predict(chunk, ctx)
            if cache is not None:
                cache.append(records)
            computed.update((str(r["key"]), r) for r in records)
            bar.update(len(chunk))
    seconds = time.perf_counter() - start
    records = [done.get(e.key) or computed[e.key] for e in examples]
    metrics = task.aggregate(records)
    entry = {
        "task": task.name,
        "metrics": {k: _json_number(v) for k, v in metrics.items()},
        "primary_metric": task.primary_metric,
        "num_examples": len(examples),
        "computed": len(todo),
        "resumed": resumed,
        "seconds": round(seconds, 3),
        "examples_per_second": round(len(todo) / seconds, 3) if todo and seconds > 0 else None,
        "split": planned.split,
        "data_files": [str(p) for p in planned.data_files],
        "config": task.config(),
    }
    if include_records:
        entry["records"] = records
    return entry


def _json_number(value: float) -> float | str:
    value = float(value)
    return value if math.isfinite(value) else str(value)  # JSON has no inf / nan


def evaluate(
    backend: Any,
    plan: Sequence[PlannedTask],
    *,
    batch_size: int = 8,
    share_part_a: bool = True,
    cache_dir: Path | None = None,
    progress: bool = True,
    verbose: bool = False,
    settings: dict[str, Any] | None = None,
    include_records: bool = False,
    seq_length: int | None = None,
) -> dict[str, Any]:
    """Run every planned task on ``backend``; the results dict (see the module docstring).

    Each task runs at its own sequence length (the original's ``MAX_SEQ_LEN``, :attr:`Task.seq_length`) unless
    ``seq_length`` overrides it; lengths above the model's maximum are capped with a note on stderr and in the
    task's entry.
    """
    info = backend.info()
    scorer = Scorer(backend, batch_size=batch_size, share_part_a=share_part_a)
    gelu = getattr(getattr(backend, "config", None), "gelu", None)  # a --gelu switch changes every record
    tasks: dict[str, Any] = {}
    for planned in plan:
        length, note = resolve_seq_length(planned.task, seq_length, int(backend.max_length))
        if note is not None:
            print(f"glm-eval: note: {note}", file=sys.stderr)
        ctx = EvalContext(backend=backend, scorer=scorer, batch_size=batch_size, verbose=verbose, seq_length=length)
        cache = None
        if cache_dir is not None:
            stamp = "|".join(file_stamp(p) for p in planned.data_files)
            name = cache_file_name(
                f"{planned.task.task_id}-L{length}" + (f"-{gelu}" if gelu else ""),
                str(info["backend"]),
                str(info["dtype"]),
                str(info["model_hash"]),
                stamp,
            )
            header = {
                "task": planned.task.task_id,
                "seq_length": length,
                "gelu": gelu,
                "backend": info["backend"],
                "dtype": info["dtype"],
                "model_hash": info["model_hash"],
                "data": stamp,
            }
            cache = ResultCache(cache_dir / name, header)
        entry = run_task(planned, ctx, cache, progress=progress, include_records=include_records)
        entry["config"] = {"seq_length": length, **entry["config"]}
        if planned.task.protocol_source:
            entry["config"]["protocol_source"] = planned.task.protocol_source
        if note is not None:
            entry["notes"] = [note]
        tasks[planned.task.task_id] = entry
    return {
        "model_hash": info["model_hash"],
        "model_path": info.get("model_path"),
        "backend": info["backend"],
        "provider": info.get("provider"),
        "device": info.get("device"),
        "dtype": info["dtype"],
        "versions": info.get("versions", {}),
        "settings": {
            "batch_size": batch_size,
            "share_part_a": share_part_a,
            "seq_length": seq_length,
            **(settings or {}),
            "model_gelu": gelu,
        },
        "scoring_tokens": {
            "part_a": scorer.stats.part_a_tokens,
            "chunks": scorer.stats.chunk_tokens,
            "full_sequences": scorer.stats.full_tokens,
        },
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tasks": tasks,
    }


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table: one row per task with its metrics, example count and examples/s."""
    header = ["task", "metrics", "n", "ex/s"]
    rows = []
    for task_id, entry in results["tasks"].items():
        metrics = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in entry["metrics"].items())
        speed = entry["examples_per_second"]
        rows.append([task_id, metrics, str(entry["num_examples"]), "cached" if speed is None else f"{speed:.2f}"])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = [
        f"model {results['model_hash']}  backend {results['backend']} ({results.get('provider')}, {results['dtype']})",
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
        line,
    ]
    out.extend("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    return "\n".join(out)
