"""Figures of a validation: elementwise comparison under a :class:`Tolerance`, top-1 agreement (all rows and the
decided ones) and perplexity, each computed a block of rows at a time so a batch-8 case's logits never become
whole float64 temporaries (export.validate uses them; export/README.md, Memory)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    norm: float  # bound on max|Δ| / max|ref|
    # atol in units of the logits' scale max(1, max|ref|) instead of absolute: half-precision and quantized error of
    # a logit follows the magnitude of the products summed into it (the row's scale), not the logit's own value, so
    # an absolute atol fails near-zero logits of a model whose logits reach 10-30 (a ChatGLM-shaped random model at
    # fp16: max|Δ| 5.8e-4 at normalised 5e-5) while saying nothing more about the cache or the mask
    scaled_atol: bool = False


COMPARE_ROWS = 64  # rows of the last axis compared at a time: float64 temporaries of 64 x V, not of the whole case


def compare(ref: np.ndarray, got: np.ndarray, tol: Tolerance | None) -> dict[str, Any]:
    """Elementwise figures of ``got`` against ``ref`` (in float64), block by block of :data:`COMPARE_ROWS` rows, so a
    batch-8 decode's logits (8 x 74 x V) do not take a dozen whole float64 temporaries (1.4 GB at glm-2b dims)."""
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.shape != got.shape:
        return {"ok": False, "error": f"shape {got.shape} != reference {ref.shape}"}
    if ref.size == 0:
        out: dict[str, Any] = {"max_abs": 0.0, "max_rel": 0.0, "normalised": 0.0, "max_ref": 0.0, "finite": True}
        if tol is not None:
            out["ok"] = True
        return out
    ref2 = ref.reshape(-1, ref.shape[-1]) if ref.ndim else ref.reshape(1, 1)
    got2 = got.reshape(ref2.shape)
    blocks = range(0, ref2.shape[0], COMPARE_ROWS)
    scale = max(float(np.abs(ref2[i : i + COMPARE_ROWS].astype(np.float64)).max()) for i in blocks)
    atol = None if tol is None else (tol.atol * max(1.0, scale) if tol.scaled_atol else tol.atol)
    max_abs, max_rel, finite, within = 0.0, 0.0, True, True
    for i in blocks:
        r64 = ref2[i : i + COMPARE_ROWS].astype(np.float64)
        g64 = got2[i : i + COMPARE_ROWS].astype(np.float64)
        finite = finite and bool(np.isfinite(g64).all())
        diff = np.abs(r64 - g64)
        absref = np.abs(r64)
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float((diff / np.maximum(absref, 1e-12)).max()))
        if tol is not None:
            within = within and bool((diff <= atol + tol.rtol * absref).all())
    out = {
        "max_abs": max_abs,
        "max_rel": max_rel,
        "normalised": max_abs / scale if scale > 0 else max_abs,
        "max_ref": scale,
        "finite": finite,
    }
    if tol is not None:
        out["ok"] = finite and within and out["normalised"] <= tol.norm
    return out


def top1_agreement(ref: np.ndarray, got: np.ndarray) -> float:
    ref2, got2 = ref.reshape(-1, ref.shape[-1]), got.reshape(-1, got.shape[-1])
    return float((ref2.argmax(-1) == got2.argmax(-1)).mean())


CONFIDENT_MARGIN = 0.1  # top-1 minus runner-up probability


def confident_top1(ref: np.ndarray, got: np.ndarray, margin: float = CONFIDENT_MARGIN) -> tuple[float, int]:
    """Top-1 agreement over the rows where the reference's top-1 probability leads the runner-up by ``margin``.

    Computed :data:`COMPARE_ROWS` rows at a time with the two largest probabilities found by partition, not by
    sorting every row in float64 (the grid and perplexity rows of a 50k vocabulary: ~1.3 GB of temporaries)."""
    ref2, got2 = ref.reshape(-1, ref.shape[-1]), got.reshape(-1, got.shape[-1])
    agree, count = 0, 0
    for i in range(0, ref2.shape[0], COMPARE_ROWS):
        x = ref2[i : i + COMPARE_ROWS].astype(np.float64)
        p = np.exp(x - x.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        top2 = np.partition(p, p.shape[-1] - 2, axis=-1)[:, -2:] if p.shape[-1] > 1 else np.concatenate([p * 0, p], -1)
        rows = (top2[:, 1] - top2[:, 0]) >= margin
        agree += int((x[rows].argmax(-1) == got2[i : i + COMPARE_ROWS][rows].argmax(-1)).sum())
        count += int(rows.sum())
    if count == 0:
        return 1.0, 0
    return agree / count, count


def perplexity(logits: np.ndarray, ids: np.ndarray) -> float:
    """Left-to-right perplexity of ``ids[0, 1:]`` under ``logits[0, :-1]``."""
    x = np.asarray(logits[0, :-1], np.float64)  # [T-1, V]
    x = x - x.max(-1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    nll = -logp[np.arange(x.shape[0]), ids[0, 1:]]
    return float(np.exp(nll.mean()))
