"""Section 4: the training step per engine (eager, Triton kernels, ``torch.compile``): on the GPU through
:mod:`benchmarks.gpu_train_step`, on the CPU (smoke) a tiny GLM."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from benchmarks.gpu_kernels.harness import Ctx, free_memory, log, short_error
from benchmarks.gpu_kernels.plan import Plan

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
        free_memory(ctx)
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
    triton = engine == "triton"  # the other engines keep the reference attention (math)
    model = build_model(
        config, seed=0, kernels="triton" if triton else "torch", attention="auto" if triton else "math"
    ).train()
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
