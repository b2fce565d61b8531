"""Correctness bars for the fused kernels, as data (spec fused_ops §5.3), and the comparison that applies them.

Every kernel test compares the kernel's result and the eager PyTorch result (same low precision) against a
float64 reference:

- ``"output"`` covers forward outputs and dx-type gradients (one value per input element). Metric: max-rel,
  ``max|a - r| / max|r|``. Bar: ``err(kernel) <= eager_factor * err(eager) + eager_atol`` **and**
  ``err(kernel) <= cap``. For fp32 the eager term is not used (``eager_factor = None``): the cap alone applies.
- ``"reduced"`` covers gradients that sum over many rows (dW, dB of LayerNorm, dbias, the LM-head weight grad).
  Metric: norm-rel, ``||a - r||_2 / ||r||_2``, against float64 only — never against eager bf16, whose reductions
  are far worse than an fp32-accumulating kernel (spec §5.3, §6 item 8).

A NaN or inf anywhere in the result never passes.

Usage::

    from tests.kernels.tolerances import assert_close_to_reference
    assert_close_to_reference("dx", kernel_dx, ref64_dx, eager=eager_dx, kind="output")
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    """One row of the spec §5.3 table for one dtype and quantity kind."""

    metric: str  # "max_rel" or "norm_rel"
    cap: float  # absolute bar on the kernel's error vs float64
    eager_factor: float | None = None  # kernel error may be at most eager_factor x eager error ...
    eager_atol: float = 0.0  # ... plus this


# spec fused_ops §5.3 "Tolerances" table.
TOLERANCES: dict[tuple[torch.dtype, str], Tolerance] = {
    (torch.float32, "output"): Tolerance(metric="max_rel", cap=1e-5),
    (torch.float32, "reduced"): Tolerance(metric="norm_rel", cap=1e-5),
    (torch.float16, "output"): Tolerance(metric="max_rel", cap=2e-3, eager_factor=2.0, eager_atol=1e-4),
    (torch.float16, "reduced"): Tolerance(metric="norm_rel", cap=1e-3),
    (torch.bfloat16, "output"): Tolerance(metric="max_rel", cap=1.5e-2, eager_factor=2.0, eager_atol=1e-3),
    (torch.bfloat16, "reduced"): Tolerance(metric="norm_rel", cap=5e-3),
}

# spec §5.3: fp32 attention on the GPU when tl.dot runs in TF32 (no input_precision="ieee").
ATTENTION_FP32_TF32_GPU_CAP = 5e-4

KINDS = ("output", "reduced")


def max_rel_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """``max|a - r| / max|r|`` in float64; inf when ``actual`` holds a NaN or inf."""
    a = actual.detach().to(torch.float64).cpu()
    r = reference.detach().to(torch.float64).cpu()
    if not torch.isfinite(a).all():
        return float("inf")
    scale = r.abs().max().item()
    diff = (a - r).abs().max().item()
    return diff / scale if scale > 0 else diff


def norm_rel_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """``||a - r||_2 / ||r||_2`` in float64; inf when ``actual`` holds a NaN or inf."""
    a = actual.detach().to(torch.float64).cpu()
    r = reference.detach().to(torch.float64).cpu()
    if not torch.isfinite(a).all():
        return float("inf")
    scale = torch.linalg.vector_norm(r).item()
    diff = torch.linalg.vector_norm(a - r).item()
    return diff / scale if scale > 0 else diff


METRICS = {"max_rel": max_rel_error, "norm_rel": norm_rel_error}


def tolerance_for(dtype: torch.dtype, kind: str) -> Tolerance:
    """The spec §5.3 bar for ``dtype`` and ``kind`` ("output" or "reduced")."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return TOLERANCES[(dtype, kind)]


def assert_close_to_reference(
    name: str,
    actual: torch.Tensor,
    reference: torch.Tensor,
    *,
    kind: str,
    eager: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> float:
    """Assert ``actual`` (kernel, low precision) meets the §5.3 bar against ``reference`` (float64).

    ``eager`` is the same quantity from eager PyTorch in the kernel's dtype; it is required for "output"
    quantities in fp16/bf16 (the bar is relative to eager's own error). ``dtype`` defaults to ``actual.dtype``.
    Returns the kernel's error so callers can print or compare it.
    """
    dtype = dtype if dtype is not None else actual.dtype
    assert actual.shape == reference.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    tol = tolerance_for(dtype, kind)
    metric = METRICS[tol.metric]
    err = metric(actual, reference)
    assert err == err and err != float("inf"), f"{name}: result holds NaN/inf"
    bar = tol.cap
    detail = f"cap {tol.cap:.1e}"
    if tol.eager_factor is not None:
        assert eager is not None, f"{name}: {dtype} {kind} bar needs the eager result"
        eager_err = metric(eager, reference)
        relative_bar = tol.eager_factor * eager_err + tol.eager_atol
        bar = min(bar, relative_bar)
        detail += f", eager err {eager_err:.2e} -> {relative_bar:.2e}"
    assert err <= bar, f"{name} ({dtype}, {kind}): {tol.metric} error {err:.3e} > bar {bar:.3e} ({detail})"
    return err
