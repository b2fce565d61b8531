"""Section 3b: bias + tanh-GeLU against ``F.gelu``, GLM's unscripted formula and ``torch.compile``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.gpu_kernels.harness import (
    Candidate,
    Ctx,
    InputSet,
    add_bandwidth,
    buffer_count,
    call_with_leaves,
    compile_candidate,
    free_memory,
    log,
    randn,
    summarize_case,
    time_candidates,
)
from glm_core import kernels
from glm_core.model import gelu_tanh


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
        add_bandwidth(ctx, case)
        case["summary"] = summarize_case(case, "fwdbwd")
        ours, formula = case["candidates"]["triton"].get("fwdbwd_ms"), case["candidates"]["formula"].get("fwdbwd_ms")
        if ours and formula:
            case["summary"]["vs_formula"] = formula / ours
        free_memory(ctx)
