"""Compare two evaluation runs (torch vs ONNX, before vs after a change) and fail on drift beyond thresholds.

    python -m evaluation.compare out/torch out/onnx --max-ll-diff 1e-4 --format md --output report.md

Each side is either a native results file of ``python -m evaluation`` or lm-eval output (``--output_path`` with
``--log_samples``: the output directory, a ``results_*.json`` file or one ``samples_*.jsonl`` file). Both sides must
be of the same kind. Torch-free.

What is compared (spec lm_eval_integration §4):

- per task and metric: A, B and ``|B - A|``; a metric fails when ``|Δ| > max_metric_diff + metric_rtol * max(|A|, |B|)``;
- per sample, joined on the task and the sample's key (lm-eval: ``doc_id`` and filter; native: ``key``): every
  log-likelihood value (one per choice, or the rolling total); a sample fails when a value's
  ``|Δ| > max_ll_diff + ll_rtol * max(|A|, |B|)``. Also reported: the multiple-choice argmax agreement, the
  greedy-flag agreement and, for generation, the exact-match rate of the generated texts (fails below
  ``min_generation_match``);
- that both runs saw the same inputs: lm-eval ``task_hashes`` and per-sample ``prompt_hash`` must match, and every
  task and sample must be present on both sides.

Exit status: 0 when everything is within the thresholds, 1 when anything is not, 2 on bad input (a missing or
unreadable path, no results in it, or runs of different kinds).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from glm_core.atomic import write_text_atomically
from glm_core.data_files import read_jsonl
from glm_core.errors import DataError, GLMError
from glm_core.outputs import check_output_file

__all__ = [
    "Run",
    "SampleRecord",
    "TaskRun",
    "Thresholds",
    "compare_runs",
    "load_run",
    "main",
    "render_markdown",
]

_RESULTS_FILE = re.compile(r"^results_(?P<stamp>.+)\.json$")
_SAMPLES_FILE = re.compile(r"^samples_(?P<task>.+)_(?P<stamp>\d{4}-\d{2}-\d{2}T[0-9.\-]+)\.jsonl$")


# ----------------------------------------------------------------------------------------------------------------------
# The normalised view of a run
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class SampleRecord:
    """What one sample produced: log-likelihoods (one per choice / the rolling total), greedy flags, generations."""

    loglikelihoods: tuple[float, ...] = ()
    greedy: tuple[bool, ...] = ()
    generations: tuple[str, ...] = ()
    prompt_hash: str | None = None


@dataclass
class TaskRun:
    metrics: dict[str, float] = field(default_factory=dict)
    samples: dict[str, SampleRecord] = field(default_factory=dict)
    task_hash: str | None = None


@dataclass
class Run:
    """One side of the comparison. ``kind`` is ``"native"`` or ``"lm-eval"``; ``model`` describes what ran."""

    path: str
    kind: str
    tasks: dict[str, TaskRun]
    model: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Thresholds:
    """Defaults: log-likelihoods within 1e-4 (absolute), metrics within 1e-4 absolute + 1e-4 relative (perplexities
    are large numbers), every generation identical."""

    max_ll_diff: float = 1e-4
    ll_rtol: float = 0.0
    max_metric_diff: float = 1e-4
    metric_rtol: float = 1e-4
    min_generation_match: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_ll_diff", "ll_rtol", "max_metric_diff", "metric_rtol"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise DataError(f"threshold {name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= self.min_generation_match <= 1.0:
            raise DataError(f"min_generation_match must lie in [0, 1], got {self.min_generation_match!r}")


# ----------------------------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); expected a results file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def _number(value: Any) -> float | None:
    """A finite-or-infinite float from a JSON number or a numeric string (lm-eval stringifies log-likelihoods)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if value in ("True", "False"):
        return value == "True"
    return None


# ---------------------------------------------------------------------------------------------------------- lm-eval
def _lm_eval_sample(row: dict[str, Any], path: Path) -> tuple[str, SampleRecord]:
    if "doc_id" not in row or "filtered_resps" not in row:
        raise DataError(f"{path}: a sample without 'doc_id' / 'filtered_resps'; expected lm-eval --log_samples output")
    key = f"{row['doc_id']}|{row.get('filter', 'none')}"
    responses = row["filtered_resps"]
    arguments = row.get("arguments") or {}
    first = next(iter(arguments.values()), {}) if isinstance(arguments, dict) else {}
    is_generation = isinstance(first, dict) and isinstance(first.get("arg_1"), dict)  # (context, gen_kwargs)
    record = SampleRecord(prompt_hash=row.get("prompt_hash"))
    if not isinstance(responses, list):
        responses = [responses]
    if is_generation:
        record.generations = tuple(str(r) for r in responses)
        return key, record
    # loglikelihood: [ll, greedy] or a list of them (multiple choice); rolling: [ll]
    if len(responses) == 2 and _number(responses[0]) is not None and _flag(responses[1]) is not None:
        responses = [responses]
    lls: list[float] = []
    flags: list[bool] = []
    for response in responses:
        if isinstance(response, (list, tuple)) and len(response) == 2 and _flag(response[1]) is not None:
            value, flag = _number(response[0]), _flag(response[1])
            if value is None:
                raise DataError(f"{path}: doc_id {row['doc_id']}: log-likelihood {response[0]!r} is not a number")
            lls.append(value)
            flags.append(bool(flag))
        elif _number(response) is not None:
            lls.append(_number(response))  # type: ignore[arg-type]
        else:
            record.generations += (str(response),)
    record.loglikelihoods, record.greedy = tuple(lls), tuple(flags)
    return key, record


def _sample_metric_means(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Means of the per-sample metric values (used when only a samples file is given)."""
    sums: dict[str, list[float]] = {}
    for row in rows:
        for name in row.get("metrics") or []:
            value = _number(row.get(name))
            if value is not None:
                sums.setdefault(f"{name},{row.get('filter', 'none')}", []).append(value)
    return {name: sum(values) / len(values) for name, values in sums.items()}


def _lm_eval_samples(path: Path) -> dict[str, SampleRecord]:
    samples: dict[str, SampleRecord] = {}
    for row in read_jsonl(path):
        key, record = _lm_eval_sample(row, path)
        samples[key] = record
    return samples


def _results_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("results_*.json") if _RESULTS_FILE.match(p.name))


def _is_lm_eval_results(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and isinstance(data.get("results"), dict)
        and ("lm_eval_version" in data or "n-samples" in data)
    )


def _load_lm_eval_results(results_path: Path, data: Any = None) -> Run:
    """An lm-eval results file, with the ``samples_<task>_<timestamp>.jsonl`` files written beside it."""
    data = _read_json(results_path) if data is None else data
    if not _is_lm_eval_results(data):
        raise DataError(f"{results_path}: no 'results' object; expected an lm-eval results file")
    match = _RESULTS_FILE.match(results_path.name)
    stamp = match.group("stamp") if match else None  # a renamed file: metrics only, its samples cannot be found
    subtasks = data.get("group_subtasks") or {}
    groups = {g for g, members in subtasks.items() if members}
    hashes = data.get("task_hashes") or {}
    tasks: dict[str, TaskRun] = {}
    for name, values in data["results"].items():
        if not isinstance(values, dict):
            raise DataError(f"{results_path}: results[{name!r}] is not an object")
        metrics = {}
        for metric, value in values.items():
            number = _number(value)
            if "," in metric and "_stderr," not in metric and number is not None:
                metrics[metric] = number
        run = TaskRun(metrics=metrics, task_hash=hashes.get(name))
        samples_file = results_path.parent / f"samples_{name}_{stamp}.jsonl"
        if stamp is not None and samples_file.is_file():
            run.samples = _lm_eval_samples(samples_file)
        elif stamp is not None and name not in groups and hashes:
            raise DataError(f"{samples_file}: missing, although the run was made with --log_samples")
        tasks[name] = run
    config = data.get("config") or {}
    model = {
        "model": config.get("model"),
        "model_args": config.get("model_args"),
        "lm_eval_version": data.get("lm_eval_version"),
    }
    info = config.get("glm_model_info")
    if isinstance(info, dict):
        model.update({k: info.get(k) for k in ("backend", "model_hash", "device", "provider", "dtype")})
    return Run(path=str(results_path), kind="lm-eval", tasks=tasks, model=model)


def _load_lm_eval(path: Path) -> Run:
    if path.is_file() and _SAMPLES_FILE.match(path.name):
        rows = read_jsonl(path)
        task = _SAMPLES_FILE.match(path.name).group("task")  # type: ignore[union-attr]
        samples = {}
        for row in rows:
            key, record = _lm_eval_sample(row, path)
            samples[key] = record
        return Run(path=str(path), kind="lm-eval", tasks={task: TaskRun(_sample_metric_means(rows), samples)})
    if path.is_file():
        return _load_lm_eval_results(path)
    files = _results_files(path)
    if not files:
        raise DataError(f"{path}: no lm-eval results_*.json inside; expected an lm-eval --output_path directory")
    directories = sorted({str(f.parent) for f in files})
    if len(directories) > 1:
        raise DataError(
            f"{path}: holds results of several models ({', '.join(directories)}); pass one of these directories"
        )
    return _load_lm_eval_results(max(files, key=lambda f: f.name))  # ISO timestamps sort by time


# ----------------------------------------------------------------------------------------------------------- native
def _native_record(record: dict[str, Any], path: Path, task: str, index: int) -> tuple[str, SampleRecord]:
    """One record of a native task: ``scores`` (cloze: per candidate, or per unit and candidate) or ``logprob``
    (LAMBADA, language modelling); ``correct`` (LAMBADA's greedy flag); ``prediction`` (generation tasks)."""
    key = str(record.get("key", index))
    out = SampleRecord(prompt_hash=record.get("prompt_hash"))
    for name in ("scores", "logprob"):
        if name in record:
            out.loglikelihoods = tuple(_flatten_numbers(record[name], f"{path}: task {task!r}, record {key!r}, {name}"))
            break
    for name in ("greedy", "correct"):
        if name in record:
            value = record[name]
            out.greedy = tuple(bool(v) for v in (value if isinstance(value, list) else [value]))
            break
    if "prediction" in record:
        value = record["prediction"]
        out.generations = tuple(str(v) for v in (value if isinstance(value, list) else [value]))
    return key, out


def _flatten_numbers(value: Any, where: str) -> list[float]:
    if isinstance(value, list):
        out: list[float] = []
        for item in value:
            out.extend(_flatten_numbers(item, where))
        return out
    number = _number(value)
    if number is None:
        raise DataError(f"{where}: {value!r} is not a number")
    return [number]


def _cached_records(path: Path, data: dict[str, Any], task_id: str) -> list[dict[str, Any]] | None:
    """The per-example records of ``task_id`` from the result cache ``.glm-eval-cache/`` beside a native results file
    (evaluation/result_cache.py: a header line naming task, backend, dtype and model hash, then one record a line)."""
    cache_dir = path.parent / ".glm-eval-cache"
    if not cache_dir.is_dir():
        return None
    wanted = {
        "task": task_id,
        "backend": data.get("backend"),
        "dtype": data.get("dtype"),
        "model_hash": data.get("model_hash"),
    }
    found = []
    for candidate in sorted(cache_dir.glob("*.jsonl")):
        rows = read_jsonl(candidate)
        if rows and all(rows[0].get(k) == v for k, v in wanted.items()):
            found.append((candidate.stat().st_mtime, rows[1:]))
    return max(found, key=lambda f: f[0])[1] if found else None


def _load_native(path: Path, data: dict[str, Any]) -> Run:
    """A results file of ``python -m evaluation``: ``tasks[task_id]`` holds ``metrics`` and, when written, ``records``
    (else they are read from the run's ``.glm-eval-cache/``)."""
    tasks_obj = data.get("tasks")
    if not isinstance(tasks_obj, dict):
        raise DataError(f"{path}: no 'tasks' object; expected a results file of `python -m evaluation`")
    tasks: dict[str, TaskRun] = {}
    for name, entry in tasks_obj.items():
        if not isinstance(entry, dict):
            raise DataError(f"{path}: tasks[{name!r}] is not an object")
        metrics_obj = entry.get("metrics", {})
        if not isinstance(metrics_obj, dict):
            raise DataError(f"{path}: tasks[{name!r}].metrics is not an object")
        metrics = {m: v for m, raw in metrics_obj.items() if (v := _number(raw)) is not None}
        records = entry.get("records")
        if records is None:
            records = _cached_records(path, data, name) or []
        if not isinstance(records, list):
            raise DataError(f"{path}: tasks[{name!r}].records is not a list")
        samples = {}
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise DataError(f"{path}: task {name!r}: record {index} is not an object")
            key, sample = _native_record(record, path, name, index)
            samples[key] = sample
        tasks[name] = TaskRun(metrics=metrics, samples=samples)
    model = {k: data.get(k) for k in ("backend", "model_hash", "device", "provider", "dtype") if k in data}
    return Run(path=str(path), kind="native", tasks=tasks, model=model)


def load_run(path: str | os.PathLike[str]) -> Run:
    """Read one side: a native results JSON, or lm-eval output (directory, ``results_*.json``, ``samples_*.jsonl``)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory; expected a results file or an lm-eval output directory")
    if p.is_dir():
        return _load_lm_eval(p)
    if _SAMPLES_FILE.match(p.name):
        return _load_lm_eval(p)
    data = _read_json(p)
    if _is_lm_eval_results(data):
        return _load_lm_eval_results(p, data)
    if not isinstance(data, dict):
        raise DataError(f"{p}: expected a JSON object (a results file), got {type(data).__name__}")
    return _load_native(p, data)


# ----------------------------------------------------------------------------------------------------------------------
# Comparing
# ----------------------------------------------------------------------------------------------------------------------


def _within(a: float, b: float, atol: float, rtol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= atol + rtol * max(abs(a), abs(b))


def _diff(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(b - a)


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def _compare_samples(task: str, a: TaskRun, b: TaskRun, th: Thresholds) -> dict[str, Any]:
    keys_a, keys_b = set(a.samples), set(b.samples)
    common = sorted(keys_a & keys_b, key=_natural_key)
    out: dict[str, Any] = {
        "task": task,
        "samples": len(common),
        "only_in_a": len(keys_a - keys_b),
        "only_in_b": len(keys_b - keys_a),
        "prompt_mismatches": 0,
        "loglikelihoods": 0,
        "max_abs_ll_diff": None,
        "worst_sample": None,
        "ll_failures": 0,
        "argmax_compared": 0,
        "argmax_agreement": None,
        "greedy_compared": 0,
        "greedy_agreement": None,
        "generations": 0,
        "generation_match": None,
        "failures": [],
    }
    max_diff, worst = 0.0, None
    argmax_same = greedy_same = greedy_total = gen_same = gen_total = mc = 0
    for key in common:
        sa, sb = a.samples[key], b.samples[key]
        if sa.prompt_hash and sb.prompt_hash and sa.prompt_hash != sb.prompt_hash:
            out["prompt_mismatches"] += 1
            continue
        if len(sa.loglikelihoods) != len(sb.loglikelihoods):
            out["ll_failures"] += 1
            out["failures"].append(
                f"sample {key}: {len(sa.loglikelihoods)} vs {len(sb.loglikelihoods)} log-likelihoods"
            )
            continue
        sample_ok = True
        for x, y in zip(sa.loglikelihoods, sb.loglikelihoods, strict=True):
            out["loglikelihoods"] += 1
            d = _diff(x, y)
            if not math.isnan(d) and (worst is None or d > max_diff):
                max_diff, worst = d, key
            if not _within(x, y, th.max_ll_diff, th.ll_rtol):
                sample_ok = False
        if not sample_ok:
            out["ll_failures"] += 1
        if len(sa.loglikelihoods) > 1:
            mc += 1
            argmax_same += _argmax(sa.loglikelihoods) == _argmax(sb.loglikelihoods)
        if sa.greedy and len(sa.greedy) == len(sb.greedy):
            greedy_total += len(sa.greedy)
            greedy_same += sum(x == y for x, y in zip(sa.greedy, sb.greedy, strict=True))
        if sa.generations or sb.generations:
            gen_total += 1
            gen_same += sa.generations == sb.generations
    if out["loglikelihoods"]:
        out["max_abs_ll_diff"], out["worst_sample"] = max_diff, worst
    if mc:
        out["argmax_compared"], out["argmax_agreement"] = mc, argmax_same / mc
    if greedy_total:
        out["greedy_compared"], out["greedy_agreement"] = greedy_total, greedy_same / greedy_total
    if gen_total:
        out["generations"], out["generation_match"] = gen_total, gen_same / gen_total
    failures = out["failures"]
    if out["only_in_a"] or out["only_in_b"]:
        failures.append(f"samples present on one side only: {out['only_in_a']} in A, {out['only_in_b']} in B")
    if out["prompt_mismatches"]:
        failures.append(f"{out['prompt_mismatches']} samples saw different prompts (prompt_hash differs)")
    if out["ll_failures"]:
        failures.append(
            f"{out['ll_failures']} samples with a log-likelihood |diff| above {th.max_ll_diff:g}"
            + (f" + {th.ll_rtol:g}*|value|" if th.ll_rtol else "")
            + f" (max {max_diff:.3g} at sample {worst})"
        )
    if out["generation_match"] is not None and out["generation_match"] < th.min_generation_match:
        failures.append(f"generation exact match {out['generation_match']:.1%} is below {th.min_generation_match:.1%}")
    out["ok"] = not failures
    return out


def _natural_key(key: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key))


def compare_runs(a: Run, b: Run, thresholds: Thresholds | None = None) -> dict[str, Any]:
    """The comparison report (a JSON-serialisable dict); ``report["ok"]`` is False when a threshold is crossed."""
    th = thresholds or Thresholds()
    if a.kind != b.kind:
        raise DataError(
            f"cannot compare a {a.kind} run ({a.path}) with a {b.kind} run ({b.path}); expected two of a kind"
        )
    names_a, names_b = set(a.tasks), set(b.tasks)
    common = sorted(names_a & names_b)
    if not common:
        raise DataError(f"the runs share no task ({a.path}: {sorted(names_a)}; {b.path}: {sorted(names_b)})")
    metrics: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    failures: list[str] = []
    for name in sorted(names_a - names_b):
        failures.append(f"task {name}: only in A")
    for name in sorted(names_b - names_a):
        failures.append(f"task {name}: only in B")
    for name in common:
        ta, tb = a.tasks[name], b.tasks[name]
        if ta.task_hash and tb.task_hash and ta.task_hash != tb.task_hash:
            failures.append(f"task {name}: the runs saw different inputs (task hash differs)")
        for metric in sorted(set(ta.metrics) | set(tb.metrics)):
            va, vb = ta.metrics.get(metric), tb.metrics.get(metric)
            row = {"task": name, "metric": metric, "a": va, "b": vb, "abs_diff": None, "ok": False}
            if va is None or vb is None:
                failures.append(f"task {name}: metric {metric} only in {'B' if va is None else 'A'}")
            else:
                row["abs_diff"] = _diff(va, vb)
                row["ok"] = _within(va, vb, th.max_metric_diff, th.metric_rtol)
                if not row["ok"]:
                    failures.append(f"task {name}: {metric} differs by {row['abs_diff']:.3g} ({va!r} vs {vb!r})")
            metrics.append(row)
        if ta.samples or tb.samples:
            sample_report = _compare_samples(name, ta, tb, th)
            samples.append(sample_report)
            failures.extend(f"task {name}: {f}" for f in sample_report["failures"])
    lls = [s["max_abs_ll_diff"] for s in samples if s["max_abs_ll_diff"] is not None]
    gens = [(s["generation_match"], s["generations"]) for s in samples if s["generation_match"] is not None]
    return {
        "a": {"path": a.path, "kind": a.kind, "model": a.model},
        "b": {"path": b.path, "kind": b.kind, "model": b.model},
        "thresholds": asdict(th),
        "metrics": metrics,
        "samples": samples,
        "summary": {
            "tasks": len(common),
            "max_abs_ll_diff": max(lls) if lls else None,
            "generation_match": (sum(m * n for m, n in gens) / sum(n for _, n in gens)) if gens else None,
            "metrics_compared": sum(1 for m in metrics if m["abs_diff"] is not None),
        },
        "failures": failures,
        "ok": not failures,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _describe(side: dict[str, Any]) -> str:
    model = {k: v for k, v in side["model"].items() if v not in (None, "", {})}
    if isinstance(model.get("model_hash"), str):
        model["model_hash"] = model["model_hash"][:19]  # "sha256:" + 12 hex digits identify the weights
    details = ", ".join(f"{k} {v}" for k, v in model.items() if not isinstance(v, dict))
    return f"`{side['path']}` ({side['kind']}{', ' + details if details else ''})"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    th = report["thresholds"]
    lines = [
        "# Run comparison",
        "",
        f"- A: {_describe(report['a'])}",
        f"- B: {_describe(report['b'])}",
        f"- thresholds: log-likelihood |Δ| ≤ {th['max_ll_diff']:g}"
        + (f" + {th['ll_rtol']:g}·|value|" if th["ll_rtol"] else "")
        + f"; metric |Δ| ≤ {th['max_metric_diff']:g} + {th['metric_rtol']:g}·|value|"
        + f"; generation exact match ≥ {th['min_generation_match']:.0%}",
        "",
        "## Metrics",
        "",
    ]
    lines += _table(
        ["task", "metric", "A", "B", "|Δ|", "ok"],
        (
            [m["task"], m["metric"], _fmt(m["a"]), _fmt(m["b"]), _fmt(m["abs_diff"]), "yes" if m["ok"] else "**NO**"]
            for m in report["metrics"]
        ),
    )
    if report["samples"]:
        lines += ["", "## Per sample", ""]
        lines += _table(
            [
                "task",
                "samples",
                "log-likelihoods",
                "max |Δ ll|",
                "argmax agree",
                "greedy agree",
                "generations equal",
                "ok",
            ],
            (
                [
                    s["task"],
                    str(s["samples"]),
                    str(s["loglikelihoods"]),
                    _fmt(s["max_abs_ll_diff"]),
                    _pct(s["argmax_agreement"]),
                    _pct(s["greedy_agreement"]),
                    _pct(s["generation_match"]),
                    "yes" if s["ok"] else "**NO**",
                ]
                for s in report["samples"]
            ),
        )
    lines += ["", "## Verdict", ""]
    if report["ok"]:
        lines.append("**PASS**: every metric and sample is within the thresholds.")
    else:
        lines.append(f"**FAIL**: {len(report['failures'])} problem(s).")
        lines += [""] + [f"- {f}" for f in report["failures"]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.compare",
        description="Compare two evaluation runs (native results files or lm-eval --log_samples output) and exit "
        "with status 1 when they drift apart beyond the thresholds (2 on bad input).",
        epilog="example: python -m evaluation.compare out/lm-eval/torch out/lm-eval/onnx --max-ll-diff 1e-4 "
        "--format md --output compare.md",
    )
    parser.add_argument(
        "a", help="run A: native results JSON, or lm-eval output dir / results_*.json / samples_*.jsonl"
    )
    parser.add_argument("b", help="run B, of the same kind as A")
    parser.add_argument(
        "--max-ll-diff",
        type=float,
        default=Thresholds.max_ll_diff,
        help="largest allowed |Δ| of a per-sample log-likelihood (default %(default)g)",
    )
    parser.add_argument(
        "--ll-rtol",
        type=float,
        default=Thresholds.ll_rtol,
        help="plus this fraction of |value| (for long rolling sums; default %(default)g)",
    )
    parser.add_argument(
        "--max-metric-diff",
        type=float,
        default=Thresholds.max_metric_diff,
        help="largest allowed |Δ| of a task metric (default %(default)g)",
    )
    parser.add_argument(
        "--metric-rtol",
        type=float,
        default=Thresholds.metric_rtol,
        help="plus this fraction of |value| (perplexities; default %(default)g)",
    )
    parser.add_argument(
        "--min-generation-match",
        type=float,
        default=Thresholds.min_generation_match,
        help="smallest allowed fraction of identical generations (default %(default)g)",
    )
    parser.add_argument("--format", choices=("md", "json"), default="md", help="report format (default md)")
    parser.add_argument("--output", help="write the report to this file instead of stdout (a new file)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output (only a report of this tool)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing; only the exit status tells")
    return parser


def _not_a_report(path: Path) -> str | None:
    """Why ``path`` is not a report this tool wrote (``None``: it is one)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return "not a UTF-8 text file"
    if text.startswith("# Run comparison\n"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return "neither a Markdown nor a JSON comparison report"
    ok = isinstance(data, dict) and {"ok", "thresholds", "a", "b"} <= data.keys()
    return None if ok else "a JSON file without the report keys ok, thresholds, a, b"


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 the runs agree, 1 they drift apart, 2 bad input or usage (argparse's own status too)."""
    args = _parser().parse_args(argv)
    try:
        if args.output:
            check_output_file(args.output, overwrite=args.overwrite, foreign=_not_a_report, what="a comparison report")
        thresholds = Thresholds(
            max_ll_diff=args.max_ll_diff,
            ll_rtol=args.ll_rtol,
            max_metric_diff=args.max_metric_diff,
            metric_rtol=args.metric_rtol,
            min_generation_match=args.min_generation_match,
        )
        report = compare_runs(load_run(args.a), load_run(args.b), thresholds)
    except GLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    text = json.dumps(report, indent=2, sort_keys=True) + "\n" if args.format == "json" else render_markdown(report)
    if args.output:
        try:
            write_text_atomically(Path(args.output), text)
        except OSError as exc:
            print(f"error: --output {args.output}: could not be written ({exc.strerror or exc})", file=sys.stderr)
            return 2
    elif not args.quiet:
        sys.stdout.write(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
