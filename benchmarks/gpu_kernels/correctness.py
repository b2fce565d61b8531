"""Section 2: correctness on the device, every op in fp32/fp16/bf16 against float64 (spec §5.3)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.gpu_kernels.harness import Ctx, banner, cuda_alive, log, short_error
from benchmarks.gpu_kernels.plan import DROPOUT_P, DTYPES, LN_EPS
from glm_core import kernels


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
                if not cuda_alive(ctx):
                    raise
            entry["seconds"] = round(time.monotonic() - t0, 2)
            if entry["passed"]:
                log(f"  PASS {op:<22} {dname:<8} worst err/bar {entry['worst_err_over_bar']:.2f} ({entry['seconds']}s)")
            else:
                banner(f"CORRECTNESS FAILURE: {op} {dname}: " + "; ".join(failed)[:1500])
    rec["passed"] = sum(e.get("passed", False) for e in entries)
    rec["total"] = len(entries)
    rec["all_passed"] = rec["passed"] == rec["total"]
