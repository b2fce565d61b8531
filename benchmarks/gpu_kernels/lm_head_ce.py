"""Section 3d: the Part-B LM head + cross-entropy against full-logits and gathered eager, ``torch.compile`` and
Liger; time and peak extra memory."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.gpu_kernels.harness import (
    Candidate,
    Ctx,
    InputSet,
    buffer_count,
    compile_candidate,
    free_memory,
    installed_peer,
    log,
    randn,
    summarize_case,
    time_candidates,
)
from glm_core import kernels


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
            free_memory(ctx)
        del weight
        free_memory(ctx)


def liger_flce_candidate() -> Candidate:
    """Liger's fused linear + cross-entropy on the gathered rows, when its wheel is installed."""
    return installed_peer("liger_flce_gathered", "liger_kernel", _build_liger_flce)


def _build_liger_flce() -> Callable[[InputSet], Any]:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss_fn = LigerFusedLinearCrossEntropyLoss()

    def liger_flce(hidden_b, weight, targets_b):
        return loss_fn(weight, hidden_b, targets_b)  # Liger's argument order: (lin_weight, input, target)

    return functools.partial(call_on_gathered_rows, liger_flce)
