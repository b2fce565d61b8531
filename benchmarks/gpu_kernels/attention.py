"""Section 3c: GLM prefix-LM attention against eager math, SDPA (dense mask, two-call split), FlexAttention
and ``torch.compile``; TFLOP/s on the visible (query, key) pairs."""

from __future__ import annotations

import functools
import importlib
import math
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
    log,
    randn,
    summarize_case,
    time_candidates,
)
from benchmarks.gpu_kernels.plan import DROPOUT_P


def attention_seps(batch: int, seq: int, gen: torch.Generator, center: float = 0.82, jitter: float = 0.1):
    """Per-sample Part-A lengths: ``sep/T`` uniform in ``center +- jitter`` (as ``gpu_train_step.make_batch``)."""
    frac = center + jitter * (2 * torch.rand(batch, generator=gen) - 1)
    return (frac * seq).long().clamp(1, seq - 1)


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


def _peers_module():
    return importlib.import_module("glm_core.kernels.attention_peers")


def attn_triton(s: InputSet):
    return _attention_module().glm_attention(*s.leaves, s.args["sep"], impl="triton")


def attn_triton_dropout(s: InputSet):
    return _attention_module().glm_attention(*s.leaves, s.args["sep"], dropout_p=DROPOUT_P, training=True,
                                             seed=1234, impl="triton")  # fmt: skip


def attn_eager_math(s: InputSet):
    return _attention_module().glm_attention_reference(*s.leaves, s.args["sep"])


def attn_sdpa_dense(s: InputSet):
    return _peers_module().glm_attention_sdpa(*s.leaves, s.args["sep"], 0.0)


def attn_sdpa_dense_dropout(s: InputSet):
    return _peers_module().glm_attention_sdpa(*s.leaves, s.args["sep"], DROPOUT_P)


def build_attn_flex(sep: torch.Tensor, seq: int) -> Callable[[InputSet], Any]:
    """FlexAttention (compiled once per shape inside ``glm_attention_flex``). The BlockMask is built here, outside
    the timed region: a training step builds it once per batch and reuses it in every layer (spec §4.2.1)."""
    return functools.partial(_attn_flex, _peers_module().glm_flex_block_mask(sep, seq))


def _attn_flex(block_mask: Any, s: InputSet):
    return _peers_module().glm_attention_flex(*s.leaves, s.args["sep"], block_mask=block_mask)


def attn_two_call(s: InputSet):
    return sdpa_two_call_loop(*s.leaves, s.args["sep_list"])


def attn_sdpa_causal(s: InputSet):
    """Causal SDPA at the same T: not GLM's mask; a lower bound on time (spec §5.1 op 3)."""
    return F.scaled_dot_product_attention(*s.leaves, is_causal=True)


def call_attention(fn: Callable, s: InputSet):
    return fn(*s.leaves, s.args["sep"])


ATTENTION_REPEATS = 3  # each fwd / fwd+bwd timing measured 3 times: the median and the spread are reported
# the candidate that times each backend of the model's attention switch (glm_core.attention_backends)
BACKEND_CANDIDATE = {"triton": "triton", "sdpa": "sdpa_dense_mask", "flex": "flex_compiled", "math": "eager_math"}


def auto_verdict(ctx: Ctx, case: dict[str, Any], dropout_p: float) -> dict[str, Any]:
    """Which backend the model's ``attention="auto"`` runs for this training case, and its fwd+bwd speed against
    the best of SDPA and Flex (the acceptance bar: >= 1.0 at every T, dropout on and off)."""
    from glm_core.attention_backends import resolve_attention
    from glm_core.kernels import resolve_impl

    dtype = torch.bfloat16
    backend = resolve_attention(
        "auto", device=ctx.device, dtype=dtype, kernel_impl=resolve_impl("auto", ctx.device, dtype, "glm_attention"),
        sep_layout=True, has_past=False, dropout_p=dropout_p, needs_grad=True,
    )  # fmt: skip
    cands = case.get("candidates", {})
    auto_ms = cands.get(BACKEND_CANDIDATE[backend], {}).get("fwdbwd_ms")
    peers = {
        n: cands[n]["fwdbwd_ms"] for n in ("sdpa_dense_mask", "flex_compiled") if cands.get(n, {}).get("fwdbwd_ms")
    }
    out: dict[str, Any] = {"auto_backend": backend, "auto_fwdbwd_ms": auto_ms}
    if auto_ms and peers:
        best = min(peers, key=peers.get)
        out.update(auto_best_sdpa_flex=best, auto_vs_best_sdpa_flex=peers[best] / auto_ms)
    return out


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
            repeats = ATTENTION_REPEATS if ctx.cuda else 1  # the smoke checks the path, not the spread
            time_candidates(ctx, case, sets, cands, ("fwd", "fwdbwd"), "attention", repeats=repeats)
            for entry in case["candidates"].values():
                for mode in ("fwd", "fwdbwd"):
                    if entry.get(f"{mode}_ms"):
                        entry[f"{mode}_tflops"] = case["flop"][mode] / (entry[f"{mode}_ms"] / 1e3) / 1e12
            case["summary"] = summarize_case(case, "fwdbwd")
            case["summary"].update(auto_verdict(ctx, case, p))
            causal = case["candidates"].get("sdpa_causal", {}).get("fwdbwd_ms")
            ours = case["candidates"].get("triton", {}).get("fwdbwd_ms")
            if causal and ours:
                case["summary"]["vs_sdpa_causal"] = causal / ours
            ctx.report.write()
        del sets
        free_memory(ctx)
