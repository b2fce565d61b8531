"""The attention backends of :class:`glm_core.model.GLMModel`, behind one switch ``attention=``.

All backends compute GLM's prefix-LM attention (spec glm_reference §1.3, §2.1): key ``j`` of the chunk is visible to
query ``t`` of sample ``b`` iff ``j < sep[b] or j <= t``; past (K/V cache) columns are always visible.

========  ==========================================  =====================================================
backend   what runs                                   attention dropout (training, p > 0)
========  ==========================================  =====================================================
math      the reference: ``Q·(K/sqrt d)ᵀ``, masked    yes: ``F.dropout`` on the probabilities (torch RNG)
          scores set to -65504, fp32 softmax, ``·V``
          (:func:`glm_core.model.glm_attention_math`)
sdpa      ``F.scaled_dot_product_attention`` with     yes: SDPA's ``dropout_p`` (torch RNG; another random
          the boolean visibility mask ``[B,1,S,K]``   stream than ``math``, same keep rate and 1/(1-p) scale)
flex      ``torch.nn.attention.flex_attention`` with  **no** (FlexAttention has none): training with p > 0
          one ``BlockMask`` per batch built from      raises; ``auto`` never picks it
          ``sep`` (and the past length), shared by
          every layer
triton    the project's fused kernel                  yes: Philox in the kernel, deterministic backward
          (:func:`glm_core.kernels.glm_attention`)
========  ==========================================  =====================================================

Where each runs:

- ``math``: everywhere, every layout (``sep``, K/V cache, explicit ``attention_mask``), any dtype.
- ``sdpa``: everywhere, every layout. With an explicit ``attention_mask`` a row that sees no key gives NaN (``math``
  gives a uniform row), so ``auto`` keeps ``math`` for explicit masks.
- ``flex``: the ``sep`` layout with or without a K/V cache; not with an explicit ``attention_mask``. On the CPU torch
  has no FlexAttention backward (eager or compiled), so there it runs only when no input needs a gradient
  (inference); on CUDA it runs ``torch.compile(flex_attention)``.
- ``triton``: where the model's fused kernel already runs (``glm_core.kernels.resolve_impl``: CUDA, or the CPU under
  ``TRITON_INTERPRET=1``), for the training layout only (``sep``, no cache, no explicit mask); a call with a cache or
  an explicit mask runs ``math`` there, as ``kernels="triton"`` always did.

``auto`` (the default) is conservative and never loses attention dropout:

1. ``triton`` where the model's ``kernels`` setting resolves the attention op to the Triton kernel (training layout);
2. else ``sdpa`` on CUDA for the ``sep`` layout (with or without cache; dropout supported);
3. else ``math``. On the CPU ``auto`` is always ``math``, so CPU numerics are exactly those of the reference path
   (SDPA's CPU kernels differ from it by ~1e-7 in fp32, measured in tests/test_attention_backends.py).

``flex`` is never picked by ``auto`` (no dropout, no CPU backward, compile cost); ask for it by name.
``GLMOutput.kernels_used["attention"]`` reports what ran: ``"torch"`` (``math``), ``"sdpa"``, ``"flex"`` or
``"triton"``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F

from glm_core.errors import InputError, KernelUnavailableError

ATTENTION_CHOICES = ("auto", "math", "sdpa", "flex", "triton")
# what kernels_used["attention"] says for each backend that ran ("torch" is the reference, as for the other ops)
REPORTED = {"math": "torch", "sdpa": "sdpa", "flex": "flex", "triton": "triton"}
DROPOUT_SUPPORTED = {"math": True, "sdpa": True, "flex": False, "triton": True}

__all__ = [
    "ATTENTION_CHOICES",
    "DROPOUT_SUPPORTED",
    "check_attention",
    "flex_block_mask",
    "resolve_attention",
    "run_flex",
    "run_sdpa",
]

_COMPILED_FLEX: Any = None


def check_attention(attention: str) -> str:
    if attention not in ATTENTION_CHOICES:
        raise InputError(f"attention must be one of {ATTENTION_CHOICES}, got {attention!r}")
    return attention


def resolve_attention(
    attention: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    kernel_impl: str,
    sep_layout: bool,
    has_past: bool,
    dropout_p: float,
    needs_grad: bool,
) -> str:
    """Which backend runs one forward: ``"math" | "sdpa" | "flex" | "triton"`` (rules in the module docstring).

    ``kernel_impl``: what ``resolve_impl`` picked for the attention op from the model's ``kernels`` setting;
    ``sep_layout``: no explicit ``attention_mask``; ``dropout_p``: the attention dropout in effect (0 in eval mode);
    ``needs_grad``: autograd will differentiate through the attention.
    """
    training_layout = sep_layout and not has_past
    if attention == "auto":
        if kernel_impl == "triton" and training_layout:
            return "triton"
        if device.type == "cuda" and sep_layout:
            return "sdpa"
        return "math"
    if attention == "triton":
        if not training_layout:
            return "math"  # the kernel covers the training layout only (module docstring)
        if kernel_impl != "triton":
            from glm_core.kernels import resolve_impl

            resolve_impl("triton", device, dtype, "glm_attention")  # raises with the reason it cannot run
        return "triton"
    if attention == "flex":
        if not sep_layout:
            raise KernelUnavailableError(
                "attention='flex' cannot take an explicit attention_mask (expected the sep layout; use 'math' or "
                "'sdpa')"
            )
        if dropout_p > 0.0:
            raise KernelUnavailableError(
                f"attention='flex' has no attention dropout (got p={dropout_p:g} in training); use 'sdpa', 'math' "
                "or 'auto', or set the attention dropout to 0"
            )
        if needs_grad and device.type != "cuda":
            raise KernelUnavailableError(
                "attention='flex' has no backward on the CPU in this torch (forward only, e.g. inference); use "
                "'math' or 'sdpa' to train on the CPU"
            )
    return attention


def run_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor, dropout_p: float
) -> torch.Tensor:
    """SDPA with the boolean visibility mask ``[B|1, 1, S, P+S]`` (True = visible); q ``[B, H, S, D]``."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, dropout_p=dropout_p)


def flex_block_mask(sep: torch.Tensor, query_len: int, past_len: int, block_size: int = 128) -> Any:
    """One ``BlockMask`` for a batch: key ``j`` (``P+S`` keys) visible to query ``t`` iff ``j < P`` (past) or
    ``j - P < sep[b]`` (prefix; GLM's ``<``, the PyTorch blog's ``<=`` is off by one) or ``j - P <= t`` (causal).
    Build once per forward; every layer shares it."""
    from torch.nn.attention.flex_attention import create_block_mask

    sep_rel = sep.to(torch.int64) + past_len  # in absolute key indices: visible iff kv < P + sep or kv <= P + t

    def glm_mask(b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202 - mask_mod protocol
        return (kv_idx < sep_rel[b]) | (kv_idx <= q_idx + past_len)

    return create_block_mask(
        glm_mask,
        B=sep.shape[0],
        H=None,
        Q_LEN=query_len,
        KV_LEN=past_len + query_len,
        device=sep.device,
        BLOCK_SIZE=block_size,
    )


def run_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: Any) -> torch.Tensor:
    """FlexAttention with ``block_mask``; compiled on CUDA (once per process), eager on the CPU (forward only)."""
    global _COMPILED_FLEX
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type != "cuda":
        with warnings.catch_warnings():  # eager on the CPU is the documented choice: no advice to compile it
            warnings.filterwarnings(
                "ignore", message="flex_attention called without torch.compile", category=UserWarning
            )
            return flex_attention(q, k, v, block_mask=block_mask)
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX(q, k, v, block_mask=block_mask)
