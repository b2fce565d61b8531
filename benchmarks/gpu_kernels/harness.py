"""The timing harness every section shares: progress output, the wall-clock budget, the results file, the
watchdog, and the timing of candidate implementations on rotating input buffers."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import importlib
import importlib.util
import json
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu_kernels import START
from benchmarks.gpu_kernels.plan import GIB, Plan

# ====================================================================================================================
# progress, budget, results file, watchdog


def elapsed_s() -> float:
    return time.monotonic() - START


def log(message: str) -> None:
    print(f"[{elapsed_s():6.1f}s] {message}", flush=True)


def banner(message: str) -> None:
    line = "!" * 100
    print(f"{line}\n!!! {message}\n{line}", flush=True)


def short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 600 else text[:600] + " ..."


class Budget:
    """Wall-clock budget from process start: optional work runs only if it fits before the planned end, keeping
    the estimated essential time of the sections still ahead in reserve."""

    def __init__(self, total_s: float, essential_s: dict[str, float]) -> None:
        self.total_s = total_s
        self.essential_s = dict(essential_s)
        self.observed_s: dict[str, float] = {}  # family of optional work -> seconds its last run took

    def remaining_s(self) -> float:
        return self.total_s - elapsed_s()

    def reserve_after(self, section: str, sections: tuple[str, ...]) -> float:
        later = sections[sections.index(section) + 1 :] if section in sections else ()
        return sum(self.essential_s.get(s, 0.0) for s in later)

    def allows(self, family: str, default_cost_s: float, reserve_s: float) -> bool:
        cost = self.observed_s.get(family, default_cost_s)
        return self.remaining_s() - reserve_s >= cost

    def observe(self, family: str, seconds: float) -> None:
        self.observed_s[family] = seconds


class Report:
    """The results dict, written atomically to ``out_dir/gpu_kernels.json`` after every section."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.path = out_dir / "gpu_kernels.json"
        self.data: dict[str, Any] = {"completed": False, "sections": {}}
        self.lock = threading.Lock()

    def section(self, name: str) -> dict[str, Any]:
        return self.data["sections"].setdefault(name, {})

    def write(self) -> None:
        with self.lock:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for _ in range(5):  # the watchdog may serialise while the main thread is adding entries
                try:
                    text = json.dumps(self.data, indent=1, default=_json_default)
                    break
                except RuntimeError:
                    time.sleep(0.05)
            else:
                text = json.dumps({"completed": False, "error": "results could not be serialised"})
            tmp = self.path.with_suffix(".json.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


def start_watchdog(
    report: Report,
    deadline_s: float,
    device_label: Callable[[], str],
    build_rows: Callable[[dict[str, Any]], list[dict[str, Any]]],
    print_table: Callable[[dict[str, Any], str], None],
) -> threading.Timer:
    """At ``deadline_s`` after start: print the ratio table of what exists, write the JSON, exit with status 3.
    ``build_rows`` and ``print_table`` are the ratio-table functions of the driver (``cli``)."""

    def fire() -> None:
        section = report.data.get("current_section", "?")
        banner(f"WATCHDOG: {deadline_s:.0f}s time budget exhausted during section {section!r}; results are partial")
        report.data["aborted"] = f"watchdog at {elapsed_s():.1f}s during section {section!r}"
        for step in (lambda: report.data.__setitem__("ratio_table", build_rows(report.data)), report.write,
                     lambda: print_table(report.data, device_label())):  # fmt: skip
            try:  # the main thread may be mutating the results: each step on its own
                step()
            except Exception as exc:
                print(f"watchdog: {short_error(exc)}", flush=True)
        sys.stdout.flush()
        os._exit(3)

    timer = threading.Timer(max(1.0, deadline_s - elapsed_s()), fire)
    timer.daemon = True
    timer.start()
    return timer


# ====================================================================================================================
# timing machinery


@dataclasses.dataclass
class Ctx:
    device: torch.device
    plan: Plan
    budget: Budget
    report: Report
    sections: tuple[str, ...]
    copy_bw_bytes_s: float | None = None  # measured ceiling (bytes read + written per second)
    matmul_tflops: float | None = None
    l2_bytes: int = 50 * 2**20

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def median_ms(ctx: Ctx, fn: Callable[[], Any]) -> float:
    """Median time of ``fn`` in ms: ``triton.testing.do_bench`` (CUDA events, L2 flushed between calls) on the
    GPU; a few wall-clock repetitions on the CPU (smoke runs only: the numbers mean nothing there)."""
    if ctx.cuda:
        from triton.testing import do_bench

        rep = 50 if ctx.plan.mode == "quick" else 100
        return float(do_bench(fn, warmup=25, rep=rep, return_mode="median"))
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@dataclasses.dataclass
class InputSet:
    """One buffer of benchmark inputs: ``leaves`` get gradients, ``grads`` are the upstream gradients of the
    outputs (``None`` for a scalar loss), ``args`` anything else the candidates need."""

    leaves: list[torch.Tensor]
    grads: list[torch.Tensor] | None
    args: dict[str, Any] = dataclasses.field(default_factory=dict)


class Rotation:
    """Cycles through input buffers so no timed call finds its inputs in L2 (spec §5.2 item 3)."""

    def __init__(self, sets: list[InputSet]) -> None:
        self.sets = sets
        self.i = -1

    def next(self) -> InputSet:
        self.i = (self.i + 1) % len(self.sets)
        return self.sets[self.i]


def buffer_count(ctx: Ctx, bytes_per_set: int) -> int:
    """>= 4 buffers totalling > 1.5x L2; fewer never. Capped so the buffers stay below ~6 GiB."""
    need = max(4, math.ceil(1.5 * ctx.l2_bytes / max(1, bytes_per_set)))
    cap = max(4, int(6 * GIB // max(1, bytes_per_set)))
    return min(need, cap, 64)


@dataclasses.dataclass
class Candidate:
    """One implementation timed on a case. ``role``: "ours", "eager" (what the op replaces), "peer" (counts for
    the best-peer ratio) or "info" (a different computation shown for context, e.g. causal SDPA)."""

    name: str
    fn: Callable[[InputSet], Any] | None = None  # fn(inputs) -> output tensor or tuple of outputs
    build: Callable[[], Callable[[InputSet], Any]] | None = None  # or built lazily (torch.compile) right before use
    role: str = "peer"
    optional: bool = False  # torch.compile / FlexAttention: skipped when the budget is short
    family: str = ""  # budget family of an optional candidate (its observed cost predicts the next one)
    cost_s: float = 20.0  # estimated seconds (compile + timing) of an optional candidate before one was observed
    skip_reason: str = ""  # set when the candidate cannot run here at all


def installed_peer(name: str, module: str, build: Callable[[], Callable[[InputSet], Any]]) -> Candidate:
    """A peer from an optional wheel (Liger): built when ``module`` is installed, else listed as skipped."""
    if importlib.util.find_spec(module) is None:
        return Candidate(name, skip_reason=f"skipped ({module} not installed)")
    return Candidate(name, build=build)


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _backward(outs: tuple[torch.Tensor, ...], inputs: InputSet, retain: bool = False) -> Any:
    grads = inputs.grads[: len(outs)] if inputs.grads is not None else None
    return torch.autograd.grad(outs, inputs.leaves, grads, retain_graph=retain, allow_unused=True)


def time_candidates(
    ctx: Ctx,
    case: dict[str, Any],
    sets: list[InputSet],
    candidates: list[Candidate],
    modes: tuple[str, ...],
    section: str,
    measure_memory: bool = False,
    repeats: int = 1,
) -> None:
    """Time every candidate on the rotating ``sets`` in each of ``modes`` ("fwd", "bwd", "fwdbwd"); results go to
    ``case["candidates"][name]`` as ``<mode>_ms``. "bwd" is timed directly (graphs of every buffer kept,
    ``retain_graph``) and falls back to fwdbwd - fwd where that is impossible. ``repeats`` > 1 measures each mode
    that many times: ``<mode>_ms`` is then their median, ``<mode>_runs_ms`` the runs and ``<mode>_spread`` their
    (max - min) / median."""
    rotation = Rotation(sets)
    results = case.setdefault("candidates", {})
    reserve = ctx.budget.reserve_after(section, ctx.sections)
    for cand in candidates:
        entry: dict[str, Any] = {"role": cand.role}
        results[cand.name] = entry
        if cand.skip_reason:
            entry["skipped"] = cand.skip_reason
            continue
        if cand.optional and not ctx.budget.allows(cand.family, cand.cost_s, reserve):
            entry["skipped"] = "skipped (time budget)"
            log(
                f"    {cand.name}: skipped (time budget; {ctx.budget.remaining_s():.0f}s left, {reserve:.0f}s reserved)"
            )
            continue
        t_start = time.monotonic()
        try:
            fn = cand.build() if cand.build is not None else cand.fn
            t0 = time.monotonic()
            warm_inputs = sets[0]
            outs = _as_tuple(fn(warm_inputs))  # compiles (Triton JIT, torch.compile): outside the timed region
            if "bwd" in modes or "fwdbwd" in modes:
                _backward(outs, warm_inputs)
            del outs
            ctx.sync()
            entry["first_call_s"] = round(time.monotonic() - t0, 3)
            for mode in modes:
                if f"{mode}_ms" not in entry:  # a bwd fallback (fwdbwd - fwd) may have measured fwdbwd already
                    entry[f"{mode}_ms"] = _time_mode(ctx, fn, rotation, sets, mode, entry)
                if repeats > 1:
                    runs = [entry[f"{mode}_ms"]]
                    runs += [_time_mode(ctx, fn, rotation, sets, mode, entry) for _ in range(repeats - 1)]
                    entry[f"{mode}_runs_ms"] = runs
                    entry[f"{mode}_ms"] = statistics.median(runs)
                    entry[f"{mode}_spread"] = (max(runs) - min(runs)) / entry[f"{mode}_ms"]
            if measure_memory:
                entry["peak_extra_mem_mb"] = _peak_extra_memory_mb(ctx, fn, sets[0])
            log(f"    {cand.name:<22} " + "  ".join(f"{m} {entry[f'{m}_ms']:.4f} ms" for m in modes))
        except Exception as exc:  # one candidate failing (OOM, missing API on this torch) must not stop the rest
            entry["error"] = short_error(exc)
            log(f"    {cand.name}: ERROR {entry['error']}")
        if "error" in entry:
            free_memory(ctx)  # outside the except block: its traceback no longer pins the failed call's tensors
        if cand.optional:
            ctx.budget.observe(cand.family, time.monotonic() - t_start)
    ctx.report.write()


def _time_mode(ctx: Ctx, fn: Callable, rotation: Rotation, sets: list[InputSet], mode: str, entry: dict) -> float:
    if mode == "fwd":
        return median_ms(ctx, lambda: fn(rotation.next()))
    if mode == "fwdbwd":

        def fwdbwd() -> None:
            inputs = rotation.next()
            _backward(_as_tuple(fn(inputs)), inputs)

        return median_ms(ctx, fwdbwd)
    if mode == "bwd":
        value = _time_bwd_direct(ctx, fn, sets, entry)
        if value is not None:
            return value
        for needed in ("fwd", "fwdbwd"):
            if f"{needed}_ms" not in entry:
                entry[f"{needed}_ms"] = _time_mode(ctx, fn, rotation, sets, needed, entry)
        return max(entry["fwdbwd_ms"] - entry["fwd_ms"], 0.0)
    raise ValueError(f"unknown timing mode {mode!r}")


def _time_bwd_direct(ctx: Ctx, fn: Callable, sets: list[InputSet], entry: dict) -> float | None:
    """Backward alone: one retained graph per buffer, ``retain_graph=True``; None where that is refused (compiled
    graphs with donated buffers), and the caller falls back to fwdbwd - fwd."""
    try:
        graphs = [(_as_tuple(fn(s)), s) for s in sets]
        turn = [-1]

        def bwd() -> None:
            turn[0] = (turn[0] + 1) % len(graphs)
            outs, inputs = graphs[turn[0]]
            _backward(outs, inputs, retain=True)

        bwd()
        value = median_ms(ctx, bwd)
        entry["bwd_method"] = "direct (retain_graph)"
        return value
    except Exception as exc:
        entry["bwd_method"] = f"fwdbwd - fwd ({type(exc).__name__} on retain_graph)"
        return None


def _peak_extra_memory_mb(ctx: Ctx, fn: Callable, inputs: InputSet) -> float | None:
    """Peak memory one fwd+bwd allocates beyond what is live before it (inputs, parameters), in MiB; GPU only."""
    if not ctx.cuda:
        return None
    ctx.sync()
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(ctx.device)
    torch.cuda.reset_peak_memory_stats(ctx.device)
    grads = _backward(_as_tuple(fn(inputs)), inputs)
    ctx.sync()
    peak = torch.cuda.max_memory_allocated(ctx.device)
    del grads
    return round((peak - base) / 2**20, 1)


def free_memory(ctx: Ctx) -> None:
    gc.collect()
    if ctx.cuda:
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()


def summarize_case(case: dict[str, Any], mode: str, ours: str = "triton") -> dict[str, Any]:
    """Speedups of ``ours`` in ``mode``: vs the eager candidate and vs the fastest peer (eager included)."""
    cands = case.get("candidates", {})
    key = f"{mode}_ms"
    mine = cands.get(ours, {}).get(key)
    out: dict[str, Any] = {"mode": mode, "ours_ms": mine}
    timed = {n: c[key] for n, c in cands.items() if n != ours and c.get(key) and c.get("role") != "info"}
    eager = [n for n, c in cands.items() if c.get("role") == "eager" and c.get(key)]
    if mine and eager:
        out["eager"] = eager[0]
        out["vs_eager"] = cands[eager[0]][key] / mine
    if mine and timed:
        best = min(timed, key=timed.get)
        out["best_peer"] = best
        out["vs_best_peer"] = timed[best] / mine
    compiled_ms = cands.get("torch_compile", {}).get(key)
    if mine and compiled_ms:
        # what decides whether a kernel stays in ``auto``: it must beat what torch.compile generates from eager
        out["vs_torch_compile"] = compiled_ms / mine
        out["kernel_wins_over_compiled"] = compiled_ms > mine
    return out


def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn)`` with static shapes: compiled once per benchmark shape (spec §5.2 item 4)."""
    return torch.compile(fn, dynamic=False)


def configure_dynamo() -> None:
    # every shape compiles its own graph; the default recompile limit (8) would silently fall back to eager
    with contextlib.suppress(Exception):
        import torch._dynamo

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)


def randn(shape: tuple[int, ...], ctx: Ctx, dtype: torch.dtype, scale: float = 1.0, shift: float = 0.0):
    """Random benchmark data on the device (spec §6 item 9: never zeros)."""
    return torch.randn(shape, device=ctx.device, dtype=torch.float32).mul_(scale).add_(shift).to(dtype)


# ====================================================================================================================
# shared by the timing sections: candidate helpers, %BW, the CUDA context's health


def call_with_leaves(fn: Callable, s: InputSet):
    return fn(*s.leaves)


COMPILE_COST_S = {"layernorm": 15.0, "bias_gelu": 15.0, "attention": 35.0, "lm_head_ce": 25.0}


def compile_candidate(name: str, fn: Callable | str, call: Callable, ctx: Ctx, section: str) -> Candidate:
    """``torch.compile(fn)`` as a peer, called as ``call(compiled_fn, inputs)``; optional (budget). ``fn`` may be
    ``"module:attribute"``, imported only when the candidate runs."""

    def build() -> Callable[[InputSet], Any]:
        target = fn
        if isinstance(target, str):
            module, attribute = target.split(":")
            target = getattr(importlib.import_module(module), attribute)
        return functools.partial(call, compiled(target))

    skip = ""
    if section not in ctx.plan.compile_sections:
        skip = f"skipped ({ctx.plan.mode} run: torch.compile peers not attempted)"
    return Candidate(name, build=build, optional=True, family=f"compile_{section}", cost_s=COMPILE_COST_S[section],
                     skip_reason=skip)  # fmt: skip


def add_bandwidth(ctx: Ctx, case: dict[str, Any]) -> None:
    """%BW per candidate and mode: ideal bytes / time / measured D2D copy bandwidth (spec §2.2)."""
    if not ctx.copy_bw_bytes_s:
        return
    for entry in case.get("candidates", {}).values():
        for mode, nbytes in case.get("bytes", {}).items():
            ms = entry.get(f"{mode}_ms")
            if ms:
                entry[f"{mode}_pct_bw"] = 100.0 * nbytes / (ms / 1e3) / ctx.copy_bw_bytes_s


def cuda_alive(ctx: Ctx) -> bool:
    """False when the CUDA context is broken (an illegal access is sticky: every later CUDA call fails)."""
    if not ctx.cuda:
        return True
    try:
        torch.cuda.synchronize(ctx.device)
        torch.zeros(1, device=ctx.device).add_(1).item()
        return True
    except Exception:
        return False
