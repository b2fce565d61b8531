"""Section 3a: add_dropout_layernorm (the training case) and plain LayerNorm against eager and peers."""

from __future__ import annotations

from collections.abc import Callable
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
    installed_peer,
    log,
    randn,
    summarize_case,
    time_candidates,
)
from benchmarks.gpu_kernels.plan import DROPOUT_P, LN_EPS
from glm_core import kernels


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
        add_bandwidth(ctx, case)
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
        add_bandwidth(ctx, plain)
        plain["summary"] = summarize_case(plain, "fwdbwd")
        plain["summary_fwd"] = summarize_case(plain, "fwd")
        free_memory(ctx)


def liger_layernorm_candidate() -> Candidate:
    """Liger's LayerNorm (spec §5.1 peer for plain LN) when its wheel is installed."""
    return installed_peer("liger_layernorm", "liger_kernel", _build_liger_layernorm)


def _build_liger_layernorm() -> Callable[[InputSet], Any]:
    from liger_kernel.ops.layer_norm import LigerLayerNormFunction

    def liger_layernorm(s: InputSet):
        x, weight, bias = s.leaves
        return LigerLayerNormFunction.apply(x, weight, bias, LN_EPS)

    return liger_layernorm
