#!/usr/bin/env python
"""The single GPU benchmark of the fused training kernels (spec fused_ops §5.2): ceilings, correctness, timings.

    python benchmarks/gpu_kernels.py [--out DIR] [--quick] [--skip-train] [--sections a,b] [--budget-s S]
    python benchmarks/gpu_kernels.py --smoke --out /tmp/smoke     # CPU: tiny shapes under the Triton interpreter

Sections, in order (each guarded: an error or an OOM is recorded and the script goes on; the JSON is rewritten
after every section):

1. ``environment`` / ``ceilings``: device, driver, versions; D2D copy bandwidth (>= 1 GiB, bytes read + written)
   and bf16 8192^3 matmul TFLOP/s — every %BW below is against *this* measured bandwidth (spec §2.1).
2. ``correctness``: every kernel in fp32/fp16/bf16, forward and every gradient against float64, with the spec §5.3
   tolerance table (``tests/kernels/tolerances.py``); pass/fail per (op, dtype); failures are printed loudly.
3. ``layernorm``, ``bias_gelu``, ``attention``, ``lm_head_ce``: ``triton.testing.do_bench`` medians (compilation
   excluded by a warm-up call), >= 4 rotating random input buffers totalling more than the L2 cache.
4. ``train_step``: :func:`benchmarks.gpu_train_step.run` (GLM-Large, B=32, T=512, bf16 autocast, dropout on).
5. A compact ratio table, printed last; the full results in ``DIR/gpu_kernels.json``.

Time budget (spec §5.2: <= 7 minutes): optional peers (``torch.compile``, FlexAttention, the compiled training
step) run only while the remaining time covers their estimated cost plus the essential work still ahead; otherwise
they are recorded as ``"skipped (time budget)"``. A watchdog prints the table and writes the JSON if the run
overshoots (exit status 3). Exit status 0 otherwise, also when a correctness check failed (see the JSON/table).
"""

from __future__ import annotations

import time

_START = time.monotonic()  # the 7-minute budget includes importing torch

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def _enable_interpreter_for_cpu_smoke(argv: list[str]) -> bool:
    """spec §6 item 2: ``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates, so set it before any kernel
    module is imported — only for ``--smoke`` on a machine without CUDA."""
    if "--smoke" not in argv:
        return False
    import torch

    if torch.cuda.is_available():
        return False
    os.environ["TRITON_INTERPRET"] = "1"
    return True


_INTERPRETER_SET_HERE = _enable_interpreter_for_cpu_smoke(sys.argv[1:])

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from glm_core import kernels  # noqa: E402  (cheap, triton-free: the op modules load on first use)
from glm_core.model import gelu_tanh  # noqa: E402

SECTIONS = ("ceilings", "correctness", "layernorm", "bias_gelu", "attention", "lm_head_ce", "train_step")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LN_EPS = 1e-5  # every GLM (glm_reference §1.5)
DROPOUT_P = 0.1  # GLM's hidden and attention dropout (glm_reference)
GIB = 2**30


# ====================================================================================================================
# plan: shapes per mode


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run measures. ``full`` is spec §5.1's benchmark shapes; ``quick`` one shape per op; ``smoke`` tiny."""

    mode: str
    budget_s: float  # planned end of the run; the watchdog fires a little later
    copy_bytes: int  # D2D copy ceiling: bytes of the source tensor
    matmul_n: int
    ln_rows: int
    ln_hidden: tuple[int, ...]
    gelu_rows: int
    gelu_hidden: tuple[int, ...]  # h; the op runs on [rows, 4h]
    attn_shapes: tuple[tuple[int, int, int], ...]  # (B, H, T)
    attn_head_dim: int
    ce_rows: int
    ce_seq: int  # rows are laid out as [rows // seq, seq] samples with a Part-B tail each
    ce_shares: tuple[float, ...]
    ce_dims: tuple[tuple[int, int], ...]  # (h, V)
    # correctness shapes (spec §5.3: non-power-of-2 hidden, T not a multiple of the tile, several sep per sample)
    check_ln_hidden: tuple[int, ...]
    check_ln_rows: int
    check_gelu_cols: tuple[int, ...]
    check_attn_t: tuple[int, ...]
    check_attn_heads: int
    check_ce: tuple[int, int, int]  # (rows, h, V)
    train_preset: str
    train_batch: int
    train_seq: int
    train_steps: int
    train_warmup: int
    compile_sections: frozenset[str]  # where torch.compile / FlexAttention peers are attempted at all
    # essential (non-optional) seconds each section is expected to need: the reserve kept for later sections
    essential_s: dict[str, float]


def make_plan(mode: str, budget_s: float | None) -> Plan:
    essential_gpu = {"ceilings": 10, "correctness": 100, "layernorm": 25, "bias_gelu": 15, "attention": 40,
                     "lm_head_ce": 20, "train_step": 45}  # fmt: skip
    if mode == "smoke":
        return Plan(
            mode=mode, budget_s=budget_s or 80.0, copy_bytes=16 * 2**20, matmul_n=256,
            ln_rows=4, ln_hidden=(96,), gelu_rows=8, gelu_hidden=(24,),
            attn_shapes=((2, 1, 24),), attn_head_dim=64,
            ce_rows=32, ce_seq=16, ce_shares=(0.25,), ce_dims=((32, 100),),
            check_ln_hidden=(1000,), check_ln_rows=6, check_gelu_cols=(1000,),
            check_attn_t=(20,), check_attn_heads=1, check_ce=(24, 40, 300),
            train_preset="glm-tiny", train_batch=2, train_seq=16, train_steps=2, train_warmup=1,
            compile_sections=frozenset(),  # CPU torch.compile costs ~25 s per graph: not in the 90 s smoke
            essential_s={"ceilings": 2, "correctness": 15, "layernorm": 3, "bias_gelu": 3, "attention": 8,
                         "lm_head_ce": 3, "train_step": 25},
        )  # fmt: skip
    full = Plan(
        mode=mode, budget_s=budget_s or 380.0, copy_bytes=GIB, matmul_n=8192,
        ln_rows=16384, ln_hidden=(1024, 2048, 4096), gelu_rows=16384, gelu_hidden=(1024, 2048),
        attn_shapes=((32, 16, 512), (16, 32, 1024), (8, 16, 2048)), attn_head_dim=64,
        ce_rows=16384, ce_seq=512, ce_shares=(0.18, 0.5), ce_dims=((1024, 30592), (2048, 50304)),
        check_ln_hidden=(1000, 3000), check_ln_rows=130, check_gelu_cols=(1000, 3000),
        check_attn_t=(97, 257), check_attn_heads=2, check_ce=(300, 200, 3001),
        train_preset="glm-large", train_batch=32, train_seq=512, train_steps=20, train_warmup=3,
        compile_sections=frozenset(SECTIONS), essential_s=essential_gpu,
    )  # fmt: skip
    if mode == "quick":
        return dataclasses.replace(
            full,
            ln_hidden=(1024,),
            gelu_hidden=(1024,),
            attn_shapes=((32, 16, 512),),
            ce_shares=(0.18,),
            ce_dims=((1024, 30592),),
            check_ln_hidden=(1000,),
            check_attn_t=(97,),
            train_steps=10,
        )
    return full


# ====================================================================================================================
# progress, budget, results file, watchdog


def elapsed_s() -> float:
    return time.monotonic() - _START


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


def start_watchdog(report: Report, deadline_s: float, device_label: Callable[[], str]) -> threading.Timer:
    """At ``deadline_s`` after start: print the ratio table of what exists, write the JSON, exit with status 3."""

    def fire() -> None:
        section = report.data.get("current_section", "?")
        banner(f"WATCHDOG: {deadline_s:.0f}s time budget exhausted during section {section!r}; results are partial")
        report.data["aborted"] = f"watchdog at {elapsed_s():.1f}s during section {section!r}"
        for step in (lambda: report.data.__setitem__("ratio_table", build_ratio_rows(report.data)), report.write,
                     lambda: print_ratio_table(report.data, device_label())):  # fmt: skip
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
) -> None:
    """Time every candidate on the rotating ``sets`` in each of ``modes`` ("fwd", "bwd", "fwdbwd"); results go to
    ``case["candidates"][name]`` as ``<mode>_ms``. "bwd" is timed directly (graphs of every buffer kept,
    ``retain_graph``) and falls back to fwdbwd - fwd where that is impossible."""
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
            if measure_memory:
                entry["peak_extra_mem_mb"] = _peak_extra_memory_mb(ctx, fn, sets[0])
            log(f"    {cand.name:<22} " + "  ".join(f"{m} {entry[f'{m}_ms']:.4f} ms" for m in modes))
        except Exception as exc:  # one candidate failing (OOM, missing API on this torch) must not stop the rest
            entry["error"] = short_error(exc)
            log(f"    {cand.name}: ERROR {entry['error']}")
        if "error" in entry:
            _free_memory(ctx)  # outside the except block: its traceback no longer pins the failed call's tensors
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


def _free_memory(ctx: Ctx) -> None:
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
    return out


def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn)`` with static shapes: compiled once per benchmark shape (spec §5.2 item 4)."""
    return torch.compile(fn, dynamic=False)


def _configure_dynamo() -> None:
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
# section 1: environment and ceilings


def describe_environment(ctx: Ctx) -> dict[str, Any]:
    import numpy

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy": numpy.__version__,
        "triton": _version("triton"),
        "liger_kernel": _version("liger-kernel"),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
        "interpreter_set_by_script": _INTERPRETER_SET_HERE,
        "mode": ctx.plan.mode,
        "device": str(ctx.device),
        "git_commit": _git_commit(),
    }
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        info.update(
            device_name=props.name,
            capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
            total_memory_gib=round(props.total_memory / GIB, 1),
            l2_cache_mb=round(getattr(props, "L2_cache_size", 0) / 2**20, 1) or None,
            cudnn=torch.backends.cudnn.version(),
            driver=_nvidia_smi("driver_version"),
            clocks=_nvidia_smi("clocks.sm,clocks.max.sm,power.limit"),
        )
        ctx.l2_bytes = getattr(props, "L2_cache_size", 0) or ctx.l2_bytes
    else:
        info["device_name"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return info


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)  # fmt: skip
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _nvidia_smi(query: str) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False)  # fmt: skip
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def run_ceilings(ctx: Ctx, rec: dict[str, Any]) -> None:
    """spec §2.1: measure both ceilings again in every run and express results as fractions of *these*."""
    n_elem = ctx.plan.copy_bytes // 2
    src = randn((n_elem,), ctx, torch.bfloat16)
    dst = torch.empty_like(src)
    copy_ms = median_ms(ctx, functools.partial(dst.copy_, src))
    ctx.copy_bw_bytes_s = 2 * ctx.plan.copy_bytes / (copy_ms / 1e3)  # bytes read + written
    rec["copy"] = {"bytes_each_way": ctx.plan.copy_bytes, "ms": copy_ms, "bw_gb_s": ctx.copy_bw_bytes_s / 1e9}
    log(f"  D2D copy ({ctx.plan.copy_bytes / GIB:.2f} GiB): {ctx.copy_bw_bytes_s / 1e9:.0f} GB/s (read + written)")
    del src, dst
    n = ctx.plan.matmul_n
    a, b = randn((n, n), ctx, torch.bfloat16), randn((n, n), ctx, torch.bfloat16)
    mm_ms = median_ms(ctx, functools.partial(torch.matmul, a, b))
    ctx.matmul_tflops = 2 * n**3 / (mm_ms / 1e3) / 1e12
    rec["matmul_bf16"] = {"n": n, "ms": mm_ms, "tflops": ctx.matmul_tflops}
    log(f"  bf16 {n}^3 matmul: {ctx.matmul_tflops:.0f} TFLOP/s")


# ====================================================================================================================
# section 2: correctness on the device, against float64 (spec §5.3)


@contextlib.contextmanager
def poisoned_empty():
    """``torch.empty``/``empty_like`` hand out NaN-filled float tensors, so an unwritten output element fails."""
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def _poison(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    torch.empty = lambda *a, **k: _poison(real_empty(*a, **k))
    torch.empty_like = lambda *a, **k: _poison(real_empty_like(*a, **k))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = real_empty, real_empty_like


def compare_to_reference(
    kernel: dict[str, torch.Tensor],
    ref: dict[str, torch.Tensor],
    eager: dict[str, torch.Tensor],
    dtype: torch.dtype,
    reduced: set[str],
    output_cap: float | None = None,
) -> list[dict[str, Any]]:
    """One entry per quantity with the kernel's error, the bar of ``tests/kernels/tolerances.py`` and the verdict.

    ``output_cap`` replaces the "output" cap (fp32 attention on the GPU with TF32 ``tl.dot``, spec §5.3)."""
    from tests.kernels.tolerances import METRICS, tolerance_for

    entries = []
    for name, actual in kernel.items():
        kind = "reduced" if name in reduced else "output"
        tol = tolerance_for(dtype, kind)
        metric = METRICS[tol.metric]
        entry: dict[str, Any] = {"name": name, "kind": kind, "metric": tol.metric}
        if actual is None or ref.get(name) is None:
            entry.update(passed=False, why="missing result")
            entries.append(entry)
            continue
        if tuple(actual.shape) != tuple(ref[name].shape):
            entry.update(passed=False, why=f"shape {tuple(actual.shape)} != {tuple(ref[name].shape)}")
            entries.append(entry)
            continue
        err = metric(actual, ref[name])
        cap = output_cap if (output_cap is not None and kind == "output") else tol.cap
        bar = cap
        if tol.eager_factor is not None and eager.get(name) is not None:
            eager_err = metric(eager[name], ref[name])
            bar = min(cap, tol.eager_factor * eager_err + tol.eager_atol)
            entry["eager_err"] = eager_err
        entry.update(err=err, bar=bar, cap=cap, passed=bool(math.isfinite(err) and err <= bar))
        entries.append(entry)
    return entries


def _grads_of(outs: dict[str, torch.Tensor], upstream: dict[str, torch.Tensor], leaves: dict[str, torch.Tensor]):
    """Forward outputs plus ``d/d leaf`` of ``sum(out * upstream)`` (random upstream gradients, spec §5.3)."""
    names = [n for n in outs if n in upstream]
    total = sum((outs[n].double() * upstream[n].double()).sum() for n in names)
    grads = torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
    result = {n: outs[n].detach() for n in outs}
    result.update({f"d{n}": g for n, g in zip(leaves, grads, strict=True)})
    return result


def _leaf_copies(tensors: dict[str, torch.Tensor | None], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {n: t.detach().to(dtype).requires_grad_() for n, t in tensors.items() if t is not None}


def _kernel_ref_eager(run: Callable[..., dict], base: dict, dtype: torch.dtype, kernel_kw: dict, ref_kw: dict):
    """``run`` with the Triton kernel (outputs poisoned), with the float64 reference, and with eager in ``dtype``."""
    with poisoned_empty():
        kernel = run(_leaf_copies(base, dtype), **kernel_kw)
    ref = run(_leaf_copies(base, torch.float64), **ref_kw)
    eager = run(_leaf_copies(base, dtype), **ref_kw)
    return kernel, ref, eager


def _run_layernorm(leaves: dict, *, fn: Callable, upstream: dict, p: float, **kw: Any) -> dict:
    y, s = fn(leaves["x"], leaves.get("residual"), leaves["weight"], leaves["bias"], eps=LN_EPS, dropout_p=p,
              training=True, **kw)  # fmt: skip
    return _grads_of({"y": y, "new_residual": s}, upstream, leaves)


def check_layernorm(ctx: Ctx, dtype: torch.dtype) -> list[dict[str, Any]]:
    from glm_core.kernels.layernorm import add_dropout_layernorm, add_dropout_layernorm_torch, dropout_keep_mask

    cases = []
    g = torch.Generator().manual_seed(0)
    rows, seed = ctx.plan.check_ln_rows, 1234
    variants = (("plain", False, 0.0), ("residual", True, 0.0), ("residual_dropout", True, DROPOUT_P))
    for hidden in ctx.plan.check_ln_hidden:
        for variant, with_residual, p in variants:
            base = {
                "x": torch.randn(rows, hidden, generator=g),
                "residual": torch.randn(rows, hidden, generator=g) if with_residual else None,
                "weight": 1.0 + 0.2 * torch.randn(hidden, generator=g),
                "bias": 0.2 * torch.randn(hidden, generator=g),
            }
            base = {n: None if t is None else t.to(ctx.device) for n, t in base.items()}
            upstream = {n: torch.randn(rows, hidden, generator=g).to(ctx.device) for n in ("y", "new_residual")}
            # spec §5.3 dropout (iii): the reference runs with the kernel's own mask
            mask = dropout_keep_mask((rows, hidden), p, seed, ctx.device) if p > 0 else None
            run = functools.partial(_run_layernorm, upstream=upstream, p=p)
            kernel, ref, eager = _kernel_ref_eager(
                run, base, dtype,
                kernel_kw={"fn": add_dropout_layernorm, "seed": seed, "impl": "triton"},
                ref_kw={"fn": add_dropout_layernorm_torch, "dropout_mask": mask},
            )  # fmt: skip
            entries = compare_to_reference(kernel, ref, eager, dtype, reduced={"dweight", "dbias"})
            if p > 0:
                entries.append(_kept_fraction_entry(dropout_keep_mask((64, 1000), p, 7, ctx.device), p))
            cases.append({"case": f"{variant} [{rows}, {hidden}]", "quantities": entries})
    return cases


def _kept_fraction_entry(keep: torch.Tensor, p: float) -> dict[str, Any]:
    """spec §5.3 dropout (i): the kept fraction is 1 - p within 5 standard deviations."""
    n = keep.numel()
    frac = keep.double().mean().item()
    bar = 5 * math.sqrt(p * (1 - p) / n)
    err = abs(frac - (1 - p))
    return {"name": "kept_fraction", "kind": "dropout", "value": frac, "err": err, "bar": bar, "passed": err <= bar}


def _run_bias_gelu(leaves: dict, *, fn: Callable, upstream: dict, approximate: str, **kw: Any) -> dict:
    return _grads_of({"y": fn(leaves["x"], leaves["bias"], approximate=approximate, **kw)}, upstream, leaves)


def check_bias_gelu(ctx: Ctx, dtype: torch.dtype) -> list[dict[str, Any]]:
    from glm_core.kernels.gelu import bias_gelu, bias_gelu_torch

    cases = []
    g = torch.Generator().manual_seed(1)
    for cols in ctx.plan.check_gelu_cols:
        for approximate in ("tanh", "erf"):
            base = {"x": 2.0 * torch.randn(3, 7, cols, generator=g), "bias": 0.5 * torch.randn(cols, generator=g)}
            base = {n: t.to(ctx.device) for n, t in base.items()}
            upstream = {"y": torch.randn(3, 7, cols, generator=g).to(ctx.device)}
            run = functools.partial(_run_bias_gelu, upstream=upstream, approximate=approximate)
            kernel, ref, eager = _kernel_ref_eager(run, base, dtype, kernel_kw={"fn": bias_gelu, "impl": "triton"},
                                                   ref_kw={"fn": bias_gelu_torch})  # fmt: skip
            entries = compare_to_reference(kernel, ref, eager, dtype, reduced={"dbias"})
            cases.append({"case": f"{approximate} [3, 7, {cols}]", "quantities": entries})
    return cases


def _run_ce_kernel(leaves: dict, *, targets, loss_mask, upstream: dict, chunking: dict[str, int]) -> dict:
    loss = kernels.partb_lm_head_ce(leaves["hidden"], leaves["weight"], targets, loss_mask, impl="triton", **chunking)
    return _grads_of({"loss": loss}, upstream, leaves)


def _run_ce_gathered(leaves: dict, *, targets, loss_mask, upstream: dict) -> dict:
    """What the model's eager loss computes: gathered Part-B rows, logits upcast to (at least) fp32."""
    rows = loss_mask > 0
    logits = F.linear(leaves["hidden"][rows], leaves["weight"])
    loss = F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets[rows])
    return _grads_of({"loss": loss}, upstream, leaves)


SMALL_CHUNKS = {"chunk_rows": 7, "chunk_vocab": 128}  # several chunks, the last one partial


def _ce_chunk_variants() -> list[tuple[str, dict[str, int]]]:
    """The default chunking plus, when ``partb_lm_head_ce`` exposes its chunk size, a many-small-chunks run."""
    params = inspect.signature(kernels.partb_lm_head_ce).parameters
    variants: list[tuple[str, dict[str, int]]] = [("default chunks", {})]
    variants += [(f"{name}={size}", {name: size}) for name, size in SMALL_CHUNKS.items() if name in params]
    return variants


def check_lm_head_ce(ctx: Ctx, dtype: torch.dtype) -> list[dict[str, Any]]:
    rows, hidden, vocab = ctx.plan.check_ce
    g = torch.Generator().manual_seed(2)
    base = {"hidden": torch.randn(rows, hidden, generator=g), "weight": 0.1 * torch.randn(vocab, hidden, generator=g)}
    base = {n: t.to(ctx.device) for n, t in base.items()}
    common = {
        "targets": torch.randint(0, vocab, (rows,), generator=g).to(ctx.device),
        "loss_mask": (torch.rand(rows, generator=g) < 0.3).float().to(ctx.device),
        "upstream": {"loss": torch.tensor(1.7, device=ctx.device)},
    }
    n_b = int((common["loss_mask"] > 0).sum())
    ref = _run_ce_gathered(_leaf_copies(base, torch.float64), **common)
    eager = _run_ce_gathered(_leaf_copies(base, dtype), **common)
    cases = []
    for label, chunking in _ce_chunk_variants():
        with poisoned_empty():
            kernel = _run_ce_kernel(_leaf_copies(base, dtype), **common, chunking=chunking)
        entries = compare_to_reference(kernel, ref, eager, dtype, reduced={"dweight"})
        cases.append({"case": f"{label}: [{rows}, {hidden}] x V={vocab}, {n_b} Part-B rows", "quantities": entries})
    return cases


def attention_seps(batch: int, seq: int, gen: torch.Generator, center: float = 0.82, jitter: float = 0.1):
    """Per-sample Part-A lengths: ``sep/T`` uniform in ``center +- jitter`` (as ``gpu_train_step.make_batch``)."""
    frac = center + jitter * (2 * torch.rand(batch, generator=gen) - 1)
    return (frac * seq).long().clamp(1, seq - 1)


def _run_attention(leaves: dict, *, fn: Callable, sep: torch.Tensor, upstream: dict, **kw: Any) -> dict:
    return _grads_of({"out": fn(leaves["q"], leaves["k"], leaves["v"], sep, **kw)}, upstream, leaves)


# tile sizes of glm_core.kernels.attention._launch_config: 16 interpreted; on the GPU 32/64 (d=64), 128 (d>64)
ATTENTION_TILES = {"cpu": (16,), "cuda": (32, 64, 128)}


def check_attention(ctx: Ctx, dtype: torch.dtype) -> list[dict[str, Any]]:
    from glm_core.kernels.attention import glm_attention, glm_attention_dropout_mask, glm_attention_reference

    cases = []
    g = torch.Generator().manual_seed(3)
    d, heads, seed = ctx.plan.attn_head_dim, ctx.plan.check_attn_heads, 4321
    for i, seq in enumerate(ctx.plan.check_attn_t):
        # spec §5.3: sep in {0, 1, tile-1, tile, tile+1, T-1, T}, a different one per sample
        tile_edges = {t + o for t in ATTENTION_TILES[ctx.device.type] for o in (-1, 0, 1)}
        seps = sorted(({0, 1, seq // 2, seq - 1, seq} | tile_edges) & set(range(seq + 1)))
        batch = len(seps)
        sep = torch.tensor(seps, dtype=torch.int64, device=ctx.device)
        base = {n: torch.randn(batch, heads, seq, d, generator=g).to(ctx.device) for n in ("q", "k", "v")}
        upstream = {"out": torch.randn(batch, heads, seq, d, generator=g).to(ctx.device)}
        run = functools.partial(_run_attention, sep=sep, upstream=upstream)
        shape = f"[B={batch}, H={heads}, T={seq}, d={d}] sep={seps}"
        kernel, ref, eager = _kernel_ref_eager(run, base, dtype, kernel_kw={"fn": glm_attention, "impl": "triton"},
                                               ref_kw={"fn": glm_attention_reference})  # fmt: skip
        entries = compare_to_reference(kernel, ref, eager, dtype, reduced=set())
        cases.append({"case": f"p=0 {shape}", "quantities": entries})
        if i == 0:  # spec §5.3 dropout: kept fraction, and equality with the reference given the kernel's own mask
            mask = glm_attention_dropout_mask(seed, batch, heads, seq, DROPOUT_P, ctx.device)
            kernel_kw = {"fn": glm_attention, "impl": "triton", "dropout_p": DROPOUT_P, "training": True, "seed": seed}
            ref_kw = {"fn": glm_attention_reference, "dropout_mask": mask, "dropout_p": DROPOUT_P}
            kernel, ref, eager = _kernel_ref_eager(run, base, dtype, kernel_kw=kernel_kw, ref_kw=ref_kw)
            entries = compare_to_reference(kernel, ref, eager, dtype, reduced=set())
            entries.append(_kept_fraction_entry(mask, DROPOUT_P))
            cases.append({"case": f"p={DROPOUT_P} {shape}", "quantities": entries})
    return cases


CORRECTNESS_CHECKS: dict[str, Callable[[Ctx, torch.dtype], list[dict[str, Any]]]] = {
    "add_dropout_layernorm": check_layernorm,
    "bias_gelu": check_bias_gelu,
    "glm_attention": check_attention,
    "partb_lm_head_ce": check_lm_head_ce,
}


def run_correctness(ctx: Ctx, rec: dict[str, Any]) -> None:
    """Every (op, dtype): forward and gradients vs float64; a failure is recorded and printed, never fatal."""
    entries = rec.setdefault("results", [])
    for op, check in CORRECTNESS_CHECKS.items():
        for dtype in DTYPES:
            dname = str(dtype).removeprefix("torch.")
            entry: dict[str, Any] = {"op": op, "dtype": dname}
            entries.append(entry)
            t0 = time.monotonic()
            try:
                entry["cases"] = check(ctx, dtype)
                failed = [
                    f"{c['case']}: {q['name']} err {q.get('err', float('nan')):.2e} > bar {q.get('bar', 0):.2e}"
                    + (f" ({q['why']})" if q.get("why") else "")
                    for c in entry["cases"]
                    for q in c["quantities"]
                    if not q["passed"]
                ]
                entry["passed"] = not failed
                entry["failures"] = failed
                worst = max((q.get("err", 0.0) / q["bar"] for c in entry["cases"] for q in c["quantities"]
                             if q.get("bar")), default=0.0)  # fmt: skip
                entry["worst_err_over_bar"] = worst
            except Exception as exc:
                entry["passed"] = False
                entry["error"] = short_error(exc)
                failed = [entry["error"]]
                if not _cuda_alive(ctx):
                    raise
            entry["seconds"] = round(time.monotonic() - t0, 2)
            if entry["passed"]:
                log(f"  PASS {op:<22} {dname:<8} worst err/bar {entry['worst_err_over_bar']:.2f} ({entry['seconds']}s)")
            else:
                banner(f"CORRECTNESS FAILURE: {op} {dname}: " + "; ".join(failed)[:1500])
    rec["passed"] = sum(e.get("passed", False) for e in entries)
    rec["total"] = len(entries)
    rec["all_passed"] = rec["passed"] == rec["total"]


def _cuda_alive(ctx: Ctx) -> bool:
    """False when the CUDA context is broken (an illegal access is sticky: every later CUDA call fails)."""
    if not ctx.cuda:
        return True
    try:
        torch.cuda.synchronize(ctx.device)
        torch.zeros(1, device=ctx.device).add_(1).item()
        return True
    except Exception:
        return False


# ====================================================================================================================
# section 3a: add_dropout_layernorm


def eager_add_dropout_layernorm(x, residual, weight, bias):
    """What GLM's eager block does (spec §5.1 op 1): dropout, add, LayerNorm — three kernels forward."""
    new_residual = residual + F.dropout(x, p=DROPOUT_P, training=True)
    return F.layer_norm(new_residual, (x.shape[-1],), weight, bias, LN_EPS), new_residual


def eager_layernorm(x, weight, bias):
    return F.layer_norm(x, (x.shape[-1],), weight, bias, LN_EPS)


def ln_fused_triton(s: InputSet):
    return kernels.add_dropout_layernorm(*s.leaves, eps=LN_EPS, dropout_p=DROPOUT_P, training=True, seed=1234,
                                         impl="triton")  # fmt: skip


def ln_fused_eager(s: InputSet):
    return eager_add_dropout_layernorm(*s.leaves)


def ln_plain_triton(s: InputSet):
    x, weight, bias = s.leaves
    return kernels.add_dropout_layernorm(x, None, weight, bias, eps=LN_EPS, impl="triton")[0]


def ln_plain_eager(s: InputSet):
    return eager_layernorm(*s.leaves)


def call_with_leaves(fn: Callable, s: InputSet):
    return fn(*s.leaves)


def run_layernorm(ctx: Ctx, rec: dict[str, Any]) -> None:
    dtype = torch.bfloat16
    rows = ctx.plan.ln_rows
    for hidden in ctx.plan.ln_hidden:
        weight = randn((hidden,), ctx, dtype, 0.1, 1.0).requires_grad_()
        bias = randn((hidden,), ctx, dtype, 0.1).requires_grad_()
        e_bytes = rows * hidden * 2  # one bf16 [rows, hidden] tensor

        # (1) the training case: r' = r + dropout(x), y = LN(r'); both outputs carry gradients
        key = f"add_dropout_ln M={rows} N={hidden}"
        case = rec.setdefault(key, {"rows": rows, "hidden": hidden, "dropout_p": DROPOUT_P, "dtype": "bf16"})
        # ideal bytes: fwd reads x, r and writes y, r' (4E); bwd reads dy, dr', r' and writes dx, dr (5E)
        case["bytes"] = {"fwd": 4 * e_bytes, "bwd": 5 * e_bytes, "fwdbwd": 9 * e_bytes}
        log(f"  add_dropout_layernorm [{rows}, {hidden}] bf16, p={DROPOUT_P}")
        sets = [
            InputSet(leaves=[randn((rows, hidden), ctx, dtype).requires_grad_(),
                             randn((rows, hidden), ctx, dtype).requires_grad_(), weight, bias],
                     grads=[randn((rows, hidden), ctx, dtype), randn((rows, hidden), ctx, dtype)])
            for _ in range(buffer_count(ctx, 4 * e_bytes))
        ]  # fmt: skip
        case["buffers"] = len(sets)
        cands = [
            Candidate("triton", ln_fused_triton, role="ours"),
            Candidate("eager", ln_fused_eager, role="eager"),
            compile_candidate("torch_compile", eager_add_dropout_layernorm, call_with_leaves, ctx, "layernorm"),
        ]
        time_candidates(ctx, case, sets, cands, ("fwd", "bwd", "fwdbwd"), "layernorm")
        del sets
        _add_bandwidth(ctx, case)
        case["summary"] = summarize_case(case, "fwdbwd")
        case["summary_fwd"] = summarize_case(case, "fwd")

        # (2) plain LayerNorm (no residual, no dropout): the %BW bars of spec §5.1 op 1
        key = f"plain_ln M={rows} N={hidden}"
        plain = rec.setdefault(key, {"rows": rows, "hidden": hidden, "dtype": "bf16"})
        plain["bytes"] = {"fwd": 2 * e_bytes, "fwdbwd": 5 * e_bytes}  # fwd: x -> y; bwd: x, dy -> dx
        log(f"  plain LayerNorm [{rows}, {hidden}] bf16")
        sets = [
            InputSet(leaves=[randn((rows, hidden), ctx, dtype).requires_grad_(), weight, bias],
                     grads=[randn((rows, hidden), ctx, dtype)])
            for _ in range(buffer_count(ctx, 3 * e_bytes))
        ]  # fmt: skip
        plain["buffers"] = len(sets)
        cands = [
            Candidate("triton", ln_plain_triton, role="ours"),
            Candidate("F.layer_norm", ln_plain_eager, role="eager"),
            liger_layernorm_candidate(),
        ]
        time_candidates(ctx, plain, sets, cands, ("fwd", "fwdbwd"), "layernorm")
        del sets, weight, bias
        _add_bandwidth(ctx, plain)
        plain["summary"] = summarize_case(plain, "fwdbwd")
        plain["summary_fwd"] = summarize_case(plain, "fwd")
        _free_memory(ctx)


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


def liger_layernorm_candidate() -> Candidate:
    """Liger's LayerNorm (spec §5.1 peer for plain LN) when its wheel is installed."""
    if importlib.util.find_spec("liger_kernel") is None:
        return Candidate("liger_layernorm", skip_reason="skipped (liger_kernel not installed)")
    return Candidate("liger_layernorm", build=_build_liger_layernorm)


def _build_liger_layernorm() -> Callable[[InputSet], Any]:
    from liger_kernel.ops.layer_norm import LigerLayerNormFunction

    def liger_layernorm(s: InputSet):
        x, weight, bias = s.leaves
        return LigerLayerNormFunction.apply(x, weight, bias, LN_EPS)

    return liger_layernorm


def _add_bandwidth(ctx: Ctx, case: dict[str, Any]) -> None:
    """%BW per candidate and mode: ideal bytes / time / measured D2D copy bandwidth (spec §2.2)."""
    if not ctx.copy_bw_bytes_s:
        return
    for entry in case.get("candidates", {}).values():
        for mode, nbytes in case.get("bytes", {}).items():
            ms = entry.get(f"{mode}_ms")
            if ms:
                entry[f"{mode}_pct_bw"] = 100.0 * nbytes / (ms / 1e3) / ctx.copy_bw_bytes_s


# ====================================================================================================================
# section 3b: bias + tanh-GeLU


def gelu_formula(x, bias):
    """GLM's unscripted tanh-GeLU formula on x + bias (glm_core.model.gelu_tanh): ~8 eager kernels."""
    return gelu_tanh(x + bias)


def gelu_triton(s: InputSet):
    return kernels.bias_gelu(*s.leaves, approximate="tanh", impl="triton")


def gelu_f_gelu(s: InputSet):
    x, bias = s.leaves
    return F.gelu(x + bias, approximate="tanh")


def gelu_unscripted(s: InputSet):
    return gelu_formula(*s.leaves)


def run_bias_gelu(ctx: Ctx, rec: dict[str, Any]) -> None:
    dtype = torch.bfloat16
    rows = ctx.plan.gelu_rows
    for h in ctx.plan.gelu_hidden:
        cols = 4 * h
        e_bytes = rows * cols * 2
        bias = randn((cols,), ctx, dtype, 0.5).requires_grad_()
        case = rec.setdefault(f"bias_gelu [{rows}, {cols}]", {"rows": rows, "cols": cols, "h": h, "dtype": "bf16"})
        case["bytes"] = {"fwd": 2 * e_bytes, "bwd": 3 * e_bytes, "fwdbwd": 5 * e_bytes}  # x -> y; x, dy -> dx
        log(f"  bias_gelu [{rows}, {cols}] bf16")
        sets = [
            InputSet(leaves=[randn((rows, cols), ctx, dtype, 2.0).requires_grad_(), bias],
                     grads=[randn((rows, cols), ctx, dtype)])
            for _ in range(buffer_count(ctx, 3 * e_bytes))
        ]  # fmt: skip
        case["buffers"] = len(sets)
        cands = [
            Candidate("triton", gelu_triton, role="ours"),
            Candidate("F.gelu", gelu_f_gelu, role="eager"),
            Candidate("formula", gelu_unscripted),
            compile_candidate("torch_compile", gelu_formula, call_with_leaves, ctx, "bias_gelu"),
        ]
        time_candidates(ctx, case, sets, cands, ("fwd", "bwd", "fwdbwd"), "bias_gelu")
        del sets, bias
        _add_bandwidth(ctx, case)
        case["summary"] = summarize_case(case, "fwdbwd")
        ours, formula = case["candidates"]["triton"].get("fwdbwd_ms"), case["candidates"]["formula"].get("fwdbwd_ms")
        if ours and formula:
            case["summary"]["vs_formula"] = formula / ours
        _free_memory(ctx)


# ====================================================================================================================
# section 3c: GLM prefix-LM attention


def visible_pairs(sep: list[int], seq: int) -> int:
    """Number of visible (query, key) pairs: query i sees keys j < max(sep, i + 1) (spec §4.1)."""
    total = 0
    for s in sep:
        s = min(max(s, 0), seq)
        total += s * s + (seq * (seq + 1) - s * (s + 1)) // 2  # Part-A rows see s keys; row i >= s sees i + 1
    return total


def sdpa_two_call_loop(q, k, v, sep_list: list[int]):
    """The verified two-call split (spec §0 item 2), looped per sample: Part-A rows non-causal over keys < sep,
    Part-B rows bottom-right causal over all keys. A per-sample Python loop stands in for varlen packing."""
    from torch.nn.attention.bias import causal_lower_right

    seq = q.shape[2]
    outs = []
    for b, s in enumerate(sep_list):
        parts = []
        if s > 0:
            parts.append(F.scaled_dot_product_attention(q[b : b + 1, :, :s], k[b : b + 1, :, :s], v[b : b + 1, :, :s]))
        if s < seq:
            mask = causal_lower_right(seq - s, seq)
            parts.append(F.scaled_dot_product_attention(q[b : b + 1, :, s:], k[b : b + 1], v[b : b + 1],
                                                        attn_mask=mask))  # fmt: skip
        outs.append(torch.cat(parts, dim=2))
    return torch.cat(outs, dim=0)  # [B, H, T, D]


def _attention_module():
    return importlib.import_module("glm_core.kernels.attention")


def attn_triton(s: InputSet):
    return _attention_module().glm_attention(*s.leaves, s.args["sep"], impl="triton")


def attn_triton_dropout(s: InputSet):
    return _attention_module().glm_attention(*s.leaves, s.args["sep"], dropout_p=DROPOUT_P, training=True,
                                             seed=1234, impl="triton")  # fmt: skip


def attn_eager_math(s: InputSet):
    return _attention_module().glm_attention_reference(*s.leaves, s.args["sep"])


def attn_sdpa_dense(s: InputSet):
    return _attention_module().glm_attention_sdpa(*s.leaves, s.args["sep"], 0.0)


def attn_sdpa_dense_dropout(s: InputSet):
    return _attention_module().glm_attention_sdpa(*s.leaves, s.args["sep"], DROPOUT_P)


def build_attn_flex(sep: torch.Tensor, seq: int) -> Callable[[InputSet], Any]:
    """FlexAttention (compiled once per shape inside ``glm_attention_flex``). The BlockMask is built here, outside
    the timed region: a training step builds it once per batch and reuses it in every layer (spec §4.2.1)."""
    attn = _attention_module()
    return functools.partial(_attn_flex, attn.glm_flex_block_mask(sep, seq))


def _attn_flex(block_mask: Any, s: InputSet):
    return _attention_module().glm_attention_flex(*s.leaves, s.args["sep"], block_mask=block_mask)


def attn_two_call(s: InputSet):
    return sdpa_two_call_loop(*s.leaves, s.args["sep_list"])


def attn_sdpa_causal(s: InputSet):
    """Causal SDPA at the same T: not GLM's mask; a lower bound on time (spec §5.1 op 3)."""
    return F.scaled_dot_product_attention(*s.leaves, is_causal=True)


def call_attention(fn: Callable, s: InputSet):
    return fn(*s.leaves, s.args["sep"])


def run_attention(ctx: Ctx, rec: dict[str, Any]) -> None:
    dtype = torch.bfloat16
    d = ctx.plan.attn_head_dim
    flex_skip = ""
    if "attention" not in ctx.plan.compile_sections:
        flex_skip = f"skipped ({ctx.plan.mode} run: FlexAttention/torch.compile peers not attempted)"
    elif not ctx.cuda:
        flex_skip = "skipped (FlexAttention has no backward on the CPU, spec §3.3)"
    gen = torch.Generator().manual_seed(4)
    for batch, heads, seq in ctx.plan.attn_shapes:
        sep_cpu = attention_seps(batch, seq, gen)
        sep_list = [int(s) for s in sep_cpu]
        sep = sep_cpu.to(ctx.device)
        vis = visible_pairs(sep_list, seq)
        fwd_flop = 4 * heads * vis * d  # visible FLOPs = 4·B·H·T²·f·d (spec §5.1 op 3); bwd 2.5x
        shape = (batch, heads, seq, d)
        sets = [
            InputSet(leaves=[randn(shape, ctx, dtype).requires_grad_() for _ in range(3)],
                     grads=[randn(shape, ctx, dtype)], args={"sep": sep, "sep_list": sep_list})
            for _ in range(buffer_count(ctx, 4 * math.prod(shape) * 2))
        ]  # fmt: skip
        for p in (0.0, DROPOUT_P):
            key = f"attention p={p} B={batch} H={heads} T={seq} d={d}"
            case = rec.setdefault(key, {
                "B": batch, "H": heads, "T": seq, "d": d, "dropout_p": p, "dtype": "bf16", "buffers": len(sets),
                "sep_over_T_mean": float(sep_cpu.float().mean()) / seq, "visible_fraction": vis / (batch * seq * seq),
                "flop": {"fwd": fwd_flop, "bwd": 2.5 * fwd_flop, "fwdbwd": 3.5 * fwd_flop},
            })  # fmt: skip
            log(f"  attention p={p} [B={batch}, H={heads}, T={seq}, d={d}] bf16, visible {vis / (batch * seq**2):.3f}")
            if p == 0.0:
                cands = [
                    Candidate("triton", attn_triton, role="ours"),
                    Candidate("eager_math", attn_eager_math, role="eager"),
                    Candidate("sdpa_dense_mask", attn_sdpa_dense),
                    Candidate("sdpa_two_call_loop", attn_two_call),
                    Candidate("flex_compiled", build=functools.partial(build_attn_flex, sep, seq), optional=True,
                              family="flex", cost_s=30.0, skip_reason=flex_skip),
                    compile_candidate("torch_compile_math", "glm_core.kernels.attention:glm_attention_reference",
                                      call_attention, ctx, "attention"),
                    Candidate("sdpa_causal", attn_sdpa_causal, role="info"),
                ]  # fmt: skip
            else:
                cands = [
                    Candidate("triton", attn_triton_dropout, role="ours"),
                    Candidate("sdpa_dense_mask", attn_sdpa_dense_dropout, role="eager"),
                ]
            time_candidates(ctx, case, sets, cands, ("fwd", "fwdbwd"), "attention")
            for entry in case["candidates"].values():
                for mode in ("fwd", "fwdbwd"):
                    if entry.get(f"{mode}_ms"):
                        entry[f"{mode}_tflops"] = case["flop"][mode] / (entry[f"{mode}_ms"] / 1e3) / 1e12
            case["summary"] = summarize_case(case, "fwdbwd")
            causal = case["candidates"].get("sdpa_causal", {}).get("fwdbwd_ms")
            ours = case["candidates"].get("triton", {}).get("fwdbwd_ms")
            if causal and ours:
                case["summary"]["vs_sdpa_causal"] = causal / ours
            ctx.report.write()
        del sets
        _free_memory(ctx)


# ====================================================================================================================
# section 3d: Part-B LM head + cross-entropy


def full_logits_ce(hidden, weight, targets, loss_mask):
    """The original GLM: logits for every token, masked mean of the per-token loss."""
    logits = F.linear(hidden, weight).float()  # [N, V] fp32
    loss = F.cross_entropy(logits, targets, reduction="none")
    return (loss * loss_mask).sum() / loss_mask.sum()


def gathered_ce(hidden, weight, targets, loss_mask):
    """What GLMModel.loss does in eager: gather the Part-B rows, then LM head + cross-entropy in fp32."""
    rows = loss_mask > 0
    return F.cross_entropy(F.linear(hidden[rows], weight).float(), targets[rows])


def linear_ce(hidden_b, weight, targets_b):
    return F.cross_entropy(F.linear(hidden_b, weight).float(), targets_b)


def ce_triton(s: InputSet):
    return kernels.partb_lm_head_ce(*s.leaves, s.args["targets"], s.args["loss_mask"], impl="triton")


def ce_full_logits(s: InputSet):
    return full_logits_ce(*s.leaves, s.args["targets"], s.args["loss_mask"])


def ce_gathered(s: InputSet):
    return gathered_ce(*s.leaves, s.args["targets"], s.args["loss_mask"])


def call_on_gathered_rows(fn: Callable, s: InputSet):
    """``fn(hidden_b, weight, targets_b)`` on the Part-B rows (gathered in eager, outside ``fn``)."""
    hidden, weight = s.leaves
    index_b = s.args["index_b"]
    return fn(hidden.index_select(0, index_b), weight, s.args["targets"].index_select(0, index_b))


def run_lm_head_ce(ctx: Ctx, rec: dict[str, Any]) -> None:
    dtype = torch.bfloat16
    n_rows, seq = ctx.plan.ce_rows, ctx.plan.ce_seq
    for h, vocab in ctx.plan.ce_dims:
        weight = randn((vocab, h), ctx, dtype, 0.02).requires_grad_()
        for share in ctx.plan.ce_shares:
            part_b = max(1, round(share * seq))  # Part B = the tail of each sample, as in GLM batches
            loss_mask = torch.zeros(n_rows // seq, seq, device=ctx.device)
            loss_mask[:, seq - part_b :] = 1.0
            loss_mask = loss_mask.reshape(-1)  # [N]
            index_b = torch.nonzero(loss_mask > 0).squeeze(1)
            sets = [
                InputSet(leaves=[randn((n_rows, h), ctx, dtype).requires_grad_(), weight], grads=None,
                         args={"targets": torch.randint(0, vocab, (n_rows,), device=ctx.device),
                               "loss_mask": loss_mask, "index_b": index_b})
                for _ in range(buffer_count(ctx, n_rows * h * 2))
            ]  # fmt: skip
            key = f"lm_head_ce N={n_rows} share={share} h={h} V={vocab}"
            case = rec.setdefault(key, {"N": n_rows, "part_b_rows": int(index_b.numel()), "share": share, "h": h,
                                        "V": vocab, "dtype": "bf16", "buffers": len(sets)})  # fmt: skip
            log(f"  partb_lm_head_ce N={n_rows}, Part-B {index_b.numel()} rows, h={h}, V={vocab} bf16")
            cands = [
                Candidate("triton", ce_triton, role="ours"),
                Candidate("full_logits_eager", ce_full_logits, role="eager"),
                Candidate("gathered_eager", ce_gathered),
                compile_candidate("torch_compile_gathered", linear_ce, call_on_gathered_rows, ctx, "lm_head_ce"),
                liger_flce_candidate(),
            ]
            time_candidates(ctx, case, sets, cands, ("fwdbwd",), "lm_head_ce", measure_memory=True)
            del sets
            case["summary"] = summary = summarize_case(case, "fwdbwd")
            ours = case["candidates"].get("triton", {})
            gathered = case["candidates"].get("gathered_eager", {})
            if ours.get("peak_extra_mem_mb") and gathered.get("peak_extra_mem_mb"):
                summary["mem_vs_gathered"] = ours["peak_extra_mem_mb"] / gathered["peak_extra_mem_mb"]
            if ours.get("fwdbwd_ms") and gathered.get("fwdbwd_ms"):
                summary["vs_gathered"] = gathered["fwdbwd_ms"] / ours["fwdbwd_ms"]
            _free_memory(ctx)
        del weight
        _free_memory(ctx)


def liger_flce_candidate() -> Candidate:
    """Liger's fused linear + cross-entropy on the gathered rows, when its wheel is installed."""
    if importlib.util.find_spec("liger_kernel") is None:
        return Candidate("liger_flce_gathered", skip_reason="skipped (liger_kernel not installed)")
    return Candidate("liger_flce_gathered", build=_build_liger_flce)


def _build_liger_flce() -> Callable[[InputSet], Any]:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss_fn = LigerFusedLinearCrossEntropyLoss()

    def liger_flce(hidden_b, weight, targets_b):
        return loss_fn(weight, hidden_b, targets_b)  # Liger's argument order: (lin_weight, input, target)

    return functools.partial(call_on_gathered_rows, liger_flce)


# ====================================================================================================================
# section 4: the training step


ENGINE_COST_S = {"eager": 25.0, "triton": 35.0, "compile": 150.0}


def run_train_step(ctx: Ctx, rec: dict[str, Any]) -> None:
    """GPU: :func:`benchmarks.gpu_train_step.run` once per engine (so the budget can drop the compiled one);
    CPU smoke: a tiny GLM, 1-2 steps per engine, Triton kernels under the interpreter."""
    plan = ctx.plan
    rec.update(preset=plan.train_preset, batch=plan.train_batch, seq=plan.train_seq)
    results = rec.setdefault("results", {})
    engines = ("eager", "triton", "compile")
    for engine in engines:
        if not ctx.cuda and engine == "compile":
            results[engine] = {"engine": engine, "skipped": "skipped (smoke on CPU: compiling a model takes minutes)"}
            continue
        remaining = ctx.budget.remaining_s()
        later = sum(ENGINE_COST_S[e] for e in engines[engines.index(engine) + 1 :] if e != "compile")
        # eager and triton are the baseline and the result: they run unless nothing is left (the watchdog guards
        # the end); the compiled engine only when its whole estimated cost fits
        need = ENGINE_COST_S["compile"] if engine == "compile" else 10.0
        if remaining < need:
            results[engine] = {"engine": engine, "skipped": "skipped (time budget)"}
            log(f"  train step {engine}: skipped (time budget; {remaining:.0f}s left)")
            continue
        steps = plan.train_steps
        if ctx.cuda and engine != "compile" and remaining - later < 2 * ENGINE_COST_S[engine]:
            steps = max(5, steps // 2)  # short on time: fewer timed steps rather than none
        log(f"  train step {engine}: {plan.train_preset} B={plan.train_batch} T={plan.train_seq}, {steps} steps")
        t0 = time.monotonic()
        try:
            if ctx.cuda:
                from benchmarks.gpu_train_step import run as run_gpu_train_step

                out = run_gpu_train_step(plan.train_preset, plan.train_batch, plan.train_seq, steps,
                                         plan.train_warmup, (engine,))  # fmt: skip
                results[engine] = out["results"][engine]
            else:
                results[engine] = tiny_train_step_cpu(engine, plan)
        except Exception as exc:
            results[engine] = {"engine": engine, "error": short_error(exc)}
        results[engine]["seconds"] = round(time.monotonic() - t0, 1)
        r = results[engine]
        if "error" in r:
            log(f"  train step {engine}: ERROR {r['error']}")
        else:
            mfu = f", MFU {100 * r['mfu']:.1f}%" if r.get("mfu") else ""
            log(f"  train step {engine}: {r['tokens_per_s']:.0f} tokens/s{mfu}, kernels {r.get('kernels_used')}")
        _free_memory(ctx)
        ctx.report.write()
    for name in ("eager", "compile"):
        base = results.get(name, {}).get("tokens_per_s")
        for r in results.values():
            if base and r.get("tokens_per_s"):
                r[f"speedup_vs_{name}"] = r["tokens_per_s"] / base


def tiny_train_step_cpu(engine: str, plan: Plan) -> dict[str, Any]:
    """A glm-tiny-shaped GLM (2 layers, h=128, d=64) on the CPU: the smoke version of the step benchmark."""
    from benchmarks.gpu_train_step import make_batch
    from glm_core.config import GLMConfig
    from glm_core.model import build_model

    config = GLMConfig.from_preset(plan.train_preset, num_layers=2, hidden_size=128, num_attention_heads=2,
                                   vocab_size=512, max_sequence_length=64)  # fmt: skip
    model = build_model(config, seed=0, kernels="triton" if engine == "triton" else "torch").train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = make_batch(config, plan.train_batch, plan.train_seq, torch.device("cpu"), seed=0)
    times, losses = [], []
    for _ in range(plan.train_steps):
        t0 = time.perf_counter()
        loss = model.loss(batch["input_ids"], batch["position_ids"], batch["sep"], batch["targets"], batch["loss_mask"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    step_s = statistics.median(times)
    return {
        "engine": engine,
        "kernels_used": dict(model.kernels_used),
        "step_s_median": step_s,
        "tokens_per_s": plan.train_batch * plan.train_seq / step_s,
        "mfu": None,
        "loss_first_last": [losses[0], losses[-1]],
        "params": sum(p.numel() for p in model.parameters()),
        "note": "CPU smoke: tiny model, Triton interpreted; timings meaningless",
    }


# ====================================================================================================================
# ratio table


def build_ratio_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per benchmark case: our time, speedups vs eager and the best peer, %BW or TFLOP/s."""
    rows: list[dict[str, Any]] = []
    sections = data.get("sections", {})
    for section in ("layernorm", "bias_gelu", "attention", "lm_head_ce"):
        for key, case in sections.get(section, {}).items():
            if not isinstance(case, dict) or "candidates" not in case:
                continue
            summ = case.get("summary") or summarize_case(case, "fwdbwd")
            ours = case["candidates"].get("triton", {})
            row: dict[str, Any] = {"case": key, "ours_ms": summ.get("ours_ms"), "vs_eager": summ.get("vs_eager"),
                                   "eager": summ.get("eager"), "vs_best_peer": summ.get("vs_best_peer"),
                                   "best_peer": summ.get("best_peer")}  # fmt: skip
            notes = []
            if "error" in ours:
                notes.append("OURS FAILED: " + ours["error"][:80])
            for mode in ("fwd", "bwd", "fwdbwd"):
                if ours.get(f"{mode}_pct_bw") is not None:
                    notes.append(f"{mode} {ours[f'{mode}_pct_bw']:.0f}%BW")
            if ours.get("fwdbwd_tflops"):
                notes.append(f"{ours['fwd_tflops']:.0f}/{ours['fwdbwd_tflops']:.0f} TFLOP/s fwd/fwdbwd (visible)")
            fwd = case.get("summary_fwd", {})
            if fwd.get("vs_eager"):
                notes.append(f"fwd {fwd['vs_eager']:.2f}x eager")
            if summ.get("vs_formula"):
                notes.append(f"vs formula {summ['vs_formula']:.2f}x")
            if summ.get("vs_sdpa_causal"):
                notes.append(f"vs causal SDPA {summ['vs_sdpa_causal']:.2f}x")
            if summ.get("vs_gathered"):
                notes.append(f"vs gathered {summ['vs_gathered']:.2f}x")
            if summ.get("mem_vs_gathered"):
                notes.append(f"mem {summ['mem_vs_gathered']:.2f}x gathered ({ours.get('peak_extra_mem_mb')} MiB)")
            skipped = [n for n, c in case["candidates"].items() if "skipped" in c and "time budget" in c["skipped"]]
            if skipped:
                notes.append("skipped (time budget): " + ",".join(skipped))
            failed = [n for n, c in case["candidates"].items() if "error" in c and n != "triton"]
            if failed:
                notes.append("peer errors: " + ",".join(failed))
            row["notes"] = "; ".join(notes)
            rows.append(row)
    train = sections.get("train_step", {}).get("results", {})
    for engine, r in train.items():
        if r.get("tokens_per_s"):
            mfu = f"MFU {100 * r['mfu']:.1f}%" if r.get("mfu") else "MFU n/a"
            notes = f"{r['tokens_per_s']:.0f} tokens/s, {mfu}"
            if r.get("speedup_vs_compile"):
                notes += f", vs compile {r['speedup_vs_compile']:.2f}x"
            rows.append({"case": f"train_step {engine}", "ours_ms": 1e3 * r["step_s_median"],
                         "vs_eager": r.get("speedup_vs_eager"), "notes": notes})  # fmt: skip
        else:
            rows.append({"case": f"train_step {engine}", "notes": r.get("error") or r.get("skipped", "?")})
    return rows


def print_ratio_table(data: dict[str, Any], device_label: str) -> None:
    rows = data.get("ratio_table") or build_ratio_rows(data)
    ceil = data.get("sections", {}).get("ceilings", {})
    bw = ceil.get("copy", {}).get("bw_gb_s")
    tf = ceil.get("matmul_bf16", {}).get("tflops")
    corr = data.get("sections", {}).get("correctness", {})
    print("=" * 132)
    print(f"RATIO TABLE  device: {device_label}   measured BW {bw or float('nan'):.0f} GB/s, "
          f"bf16 matmul {tf or float('nan'):.0f} TFLOP/s   (speedups: > 1 = ours faster; fwd+bwd unless noted)")  # fmt: skip
    if corr.get("results"):
        done = [e for e in corr["results"] if "passed" in e]  # the watchdog may print mid-entry
        fails = [f"{e['op']}/{e['dtype']}" for e in done if not e["passed"]]
        verdict = "all passed" if not fails else "FAILED: " + ", ".join(fails)
        if len(done) < len(CORRECTNESS_CHECKS) * len(DTYPES):
            verdict += f" (only {len(done)} of {len(CORRECTNESS_CHECKS) * len(DTYPES)} checked)"
        print(f"correctness: {len(done) - len(fails)}/{len(done)} (op, dtype) passed; {verdict}")
    print(f"{'case':<46} {'ours ms':>9} {'vs eager':>9} {'vs best peer':>24}  notes")
    print("-" * 132)
    for r in rows:
        ours = f"{r['ours_ms']:.3f}" if r.get("ours_ms") else "-"
        eager = f"{r['vs_eager']:.2f}x" if r.get("vs_eager") else "-"
        peer = f"{r['vs_best_peer']:.2f}x {r.get('best_peer', '')}" if r.get("vs_best_peer") else "-"
        print(f"{r['case'][:46]:<46} {ours:>9} {eager:>9} {peer[:24]:>24}  {r.get('notes', '')}")
    print("=" * 132, flush=True)


# ====================================================================================================================
# main


SECTION_RUNNERS: dict[str, Callable[[Ctx, dict[str, Any]], None]] = {
    "ceilings": run_ceilings,
    "correctness": run_correctness,
    "layernorm": run_layernorm,
    "bias_gelu": run_bias_gelu,
    "attention": run_attention,
    "lm_head_ce": run_lm_head_ce,
    "train_step": run_train_step,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_results", help="output directory for gpu_kernels.json")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes; on a CPU-only machine under the interpreter")
    parser.add_argument("--quick", action="store_true", help="one shape per op, 10 training steps")
    parser.add_argument("--skip-train", action="store_true", help="leave out the training-step section")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list out of {','.join(SECTIONS)}")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="planned run time in seconds from start (default 380; smoke 80); a watchdog ends "
                             "the run 25 s later with the table printed and the JSON written")  # fmt: skip
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; expected names out of {','.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    plan = make_plan(mode, args.budget_s)
    sections = tuple(
        s for s in SECTIONS if s in args.sections.split(",") and not (args.skip_train and s == "train_step")
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.smoke:
        print("gpu_kernels.py: no CUDA device; run with --smoke for the CPU version (Triton interpreter)", flush=True)
        return 2
    report = Report(Path(args.out))
    budget = Budget(plan.budget_s, {s: plan.essential_s.get(s, 0.0) for s in sections})
    ctx = Ctx(device=device, plan=plan, budget=budget, report=report, sections=sections)
    torch.manual_seed(0)
    _configure_dynamo()

    env = describe_environment(ctx)
    report.data["environment"] = env
    report.data["plan"] = dataclasses.asdict(plan)
    device_label = (
        f"{env.get('device_name')} | torch {env['torch']} | triton {env['triton']} | CUDA {env['torch_cuda']}"
    )
    log(f"gpu_kernels.py ({mode}): {device_label} | driver {env.get('driver')} | Python {env['python']}")
    log(f"  sections {','.join(sections)}; budget {plan.budget_s:.0f}s (watchdog at {plan.budget_s + 25:.0f}s)")
    if device.type == "cuda" and env["TRITON_INTERPRET"] not in (None, "", "0"):
        banner("TRITON_INTERPRET is set on a CUDA machine: Triton kernels would be interpreted; unset it")
    report.write()
    start_watchdog(report, plan.budget_s + 25.0, lambda: device_label)

    cuda_broken_after = ""
    for name in sections:
        rec = report.section(name)
        report.data["current_section"] = name
        if cuda_broken_after:
            rec["skipped"] = f"skipped (CUDA context broken during section {cuda_broken_after!r})"
            continue
        log(f"== {name} ({budget.remaining_s():.0f}s of budget left)")
        t0 = time.monotonic()
        try:
            SECTION_RUNNERS[name](ctx, rec)
        except Exception as exc:  # a section failing is recorded; the next one still runs
            rec["error"] = short_error(exc)
            rec["traceback"] = traceback.format_exc()[-3000:]
            banner(f"SECTION {name} FAILED: {rec['error']}")
            if not _cuda_alive(ctx):
                cuda_broken_after = name
                banner("the CUDA context is broken (sticky error): the remaining sections are skipped")
        rec["section_s"] = round(time.monotonic() - t0, 1)
        _free_memory(ctx)
        report.write()

    report.data["current_section"] = "done"
    report.data["completed"] = True
    report.data["elapsed_s"] = round(elapsed_s(), 1)
    report.data["ratio_table"] = build_ratio_rows(report.data)
    report.write()
    log(f"wrote {report.path} ({elapsed_s():.0f}s total)")
    print_ratio_table(report.data, device_label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
