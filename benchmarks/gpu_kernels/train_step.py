"""Section 4: the training step per variant (eager, Triton kernels, compiled, compiled with the best attention, that
with FSDP2 on one GPU) through :mod:`benchmarks.gpu_train_step`; on the CPU (smoke) a tiny GLM."""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks.gpu_kernels.harness import Ctx, free_memory, log, short_error
from benchmarks.gpu_train_step import DEFAULT_ENGINES, VARIANTS

# estimated seconds per variant on an H100 for GLM-Large (the compiled ones: inductor's compile of one layer)
ENGINE_COST_S = {"eager": 25.0, "triton": 35.0, "compile": 90.0, "compile_best": 90.0, "fsdp2_compile_best": 100.0}


SMOKE_SKIP = "skipped (CPU smoke: python -m benchmarks.gpu_train_step --smoke runs the compiled variants)"


def best_attention(ctx: Ctx, seq: int) -> str:
    """The training attention the attention section measured fastest at ``seq`` with dropout on (fwd+bwd):
    ``triton`` or ``sdpa``; ``auto`` when that section has no such figure."""
    attention = ctx.report.section("attention")
    for case in attention.values():
        if not isinstance(case, dict) or case.get("T") != seq or not case.get("dropout_p"):
            continue
        timed = {
            backend: case.get("candidates", {}).get(name, {}).get("fwdbwd_ms")
            for backend, name in (("triton", "triton"), ("sdpa", "sdpa_dense_mask"))
        }
        timed = {k: v for k, v in timed.items() if v}
        if timed:
            return min(timed, key=timed.get)
    return "auto"


def run_train_step(ctx: Ctx, rec: dict[str, Any]) -> None:
    """:func:`benchmarks.gpu_train_step.run` once per variant (so the budget can drop the compiled ones). GPU: the
    plan's preset; CPU smoke: a tiny GLM, 2 steps, eager and Triton (interpreted) only: the compiled variants would
    not fit the smoke's 90 s, ``python -m benchmarks.gpu_train_step --smoke`` runs them."""
    from benchmarks.gpu_train_step import run as run_train_variants
    from benchmarks.gpu_train_step import smoke_config

    plan = ctx.plan
    attention = best_attention(ctx, plan.train_seq)
    rec.update(preset=plan.train_preset, batch=plan.train_batch, seq=plan.train_seq, best_attention=attention)
    results = rec.setdefault("results", {})
    engines = DEFAULT_ENGINES
    for engine in engines:
        compiled = VARIANTS[engine].compile
        if compiled and not ctx.cuda:
            results[engine] = {"engine": engine, "skipped": SMOKE_SKIP}
            continue
        remaining = ctx.budget.remaining_s()
        later = sum(ENGINE_COST_S[e] for e in engines[engines.index(engine) + 1 :] if not VARIANTS[e].compile)
        # eager and triton are the baseline and the result: they run unless nothing is left (the watchdog guards
        # the end); a compiled variant only when its whole estimated cost fits
        need = ENGINE_COST_S[engine] if (compiled and ctx.cuda) else 10.0
        if compiled:  # optional: never at the expense of the later sections' essential time
            need += ctx.budget.reserve_after("train_step", ctx.sections)
        if remaining < need:
            results[engine] = {"engine": engine, "skipped": "skipped (time budget)"}
            log(f"  train step {engine}: skipped (time budget; {remaining:.0f}s left)")
            continue
        steps = plan.train_steps
        if ctx.cuda and not compiled and remaining - later < 2 * ENGINE_COST_S[engine]:
            steps = max(5, steps // 2)  # short on time: fewer timed steps rather than none
        log(f"  train step {engine}: {plan.train_preset} B={plan.train_batch} T={plan.train_seq}, {steps} steps")
        t0 = time.monotonic()
        try:
            if ctx.cuda:
                out = run_train_variants(plan.train_preset, plan.train_batch, plan.train_seq, steps,
                                         plan.train_warmup, (engine,), attention)  # fmt: skip
            else:
                out = run_train_variants(plan.train_preset, plan.train_batch, plan.train_seq, steps,
                                         plan.train_warmup, (engine,), attention, config=smoke_config(),
                                         device=torch.device("cpu"))  # fmt: skip
                out["results"][engine]["note"] = "CPU smoke: tiny model, Triton interpreted; timings meaningless"
            results[engine] = out["results"][engine]
        except Exception as exc:
            results[engine] = {"engine": engine, "error": short_error(exc)}
        results[engine]["seconds"] = round(time.monotonic() - t0, 1)
        r = results[engine]
        if "error" in r:
            log(f"  train step {engine}: ERROR {r['error']}")
        else:
            mfu = (
                f", MFU {100 * r['mfu_6n']:.1f}% (6N) {100 * r['mfu_executed']:.1f}% (executed)" if r.get("mfu") else ""
            )
            log(f"  train step {engine}: {r['tokens_per_s']:.0f} tokens/s{mfu}, kernels {r.get('kernels_used')}")
        free_memory(ctx)
        ctx.report.write()
    for name in ("eager", "compile"):
        base = results.get(name, {}).get("tokens_per_s")
        for r in results.values():
            if base and r.get("tokens_per_s"):
                r[f"speedup_vs_{name}"] = r["tokens_per_s"] / base
