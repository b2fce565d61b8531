"""The driver: arguments, the sections in order (each guarded), the watchdog, the JSON and the ratio table."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import benchmarks.gpu_kernels as package
from benchmarks.gpu_kernels.attention import run_attention
from benchmarks.gpu_kernels.bias_gelu import run_bias_gelu
from benchmarks.gpu_kernels.correctness import CORRECTNESS_CHECKS, run_correctness
from benchmarks.gpu_kernels.environment import describe_environment, run_ceilings
from benchmarks.gpu_kernels.harness import (
    Budget,
    Ctx,
    Report,
    banner,
    configure_dynamo,
    cuda_alive,
    elapsed_s,
    free_memory,
    log,
    short_error,
    start_watchdog,
    summarize_case,
)
from benchmarks.gpu_kernels.layernorm import run_layernorm
from benchmarks.gpu_kernels.lm_head_ce import run_lm_head_ce
from benchmarks.gpu_kernels.plan import DTYPES, SECTIONS, make_plan
from benchmarks.gpu_kernels.train_step import run_train_step

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
            mfu = "MFU n/a"
            if r.get("mfu"):
                mfu = f"MFU {100 * r['mfu']:.1f}% (6N), {100 * (r.get('mfu_executed') or 0):.1f}% (executed)"
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
# main: arguments and the section driver


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
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_kernels", description=package.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
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
        print("gpu_kernels: no CUDA device; run with --smoke for the CPU version (Triton interpreter)", flush=True)
        return 2
    report = Report(Path(args.out))
    budget = Budget(plan.budget_s, {s: plan.essential_s.get(s, 0.0) for s in sections})
    ctx = Ctx(device=device, plan=plan, budget=budget, report=report, sections=sections)
    torch.manual_seed(0)
    configure_dynamo()

    env = describe_environment(ctx)
    report.data["environment"] = env
    report.data["plan"] = dataclasses.asdict(plan)
    device_label = (
        f"{env.get('device_name')} | torch {env['torch']} | triton {env['triton']} | CUDA {env['torch_cuda']}"
    )
    log(f"gpu_kernels ({mode}): {device_label} | driver {env.get('driver')} | Python {env['python']}")
    log(f"  sections {','.join(sections)}; budget {plan.budget_s:.0f}s (watchdog at {plan.budget_s + 25:.0f}s)")
    if device.type == "cuda" and env["TRITON_INTERPRET"] not in (None, "", "0"):
        banner("TRITON_INTERPRET is set on a CUDA machine: Triton kernels would be interpreted; unset it")
    report.write()
    start_watchdog(report, plan.budget_s + 25.0, lambda: device_label, build_ratio_rows, print_ratio_table)

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
            if not cuda_alive(ctx):
                cuda_broken_after = name
                banner("the CUDA context is broken (sticky error): the remaining sections are skipped")
        rec["section_s"] = round(time.monotonic() - t0, 1)
        free_memory(ctx)
        report.write()

    report.data["current_section"] = "done"
    report.data["completed"] = True
    report.data["elapsed_s"] = round(elapsed_s(), 1)
    report.data["ratio_table"] = build_ratio_rows(report.data)
    report.write()
    log(f"wrote {report.path} ({elapsed_s():.0f}s total)")
    print_ratio_table(report.data, device_label)
    return 0
