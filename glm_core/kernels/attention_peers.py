"""The stock-torch peers of the GLM attention kernel (spec fused_ops §4.2, §5.1 item 3): SDPA with a dense mask and
FlexAttention with a ``BlockMask``, under the kernel's signature, for its tests and benchmarks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glm_core.attention_backends import flex_block_mask, run_flex
from glm_core.kernels.attention import _check_qkv, glm_visibility_mask

__all__ = ["glm_attention_flex", "glm_attention_sdpa", "glm_flex_block_mask"]


def glm_attention_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sep: torch.Tensor, dropout_p: float = 0.0
) -> torch.Tensor:
    """SDPA with a dense ``[B, 1, T, T]`` bool mask: the "eager-ish" peer (spec §4.2).

    ``dropout_p`` is applied as given (pass 0.0 for evaluation); torch's RNG, not the kernel's mask.
    """
    _check_qkv(q, k, v, sep)
    visible = glm_visibility_mask(sep.to(q.device), q.shape[2])  # [B, 1, T, T]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, dropout_p=dropout_p)


def glm_flex_block_mask(sep: torch.Tensor, seq_len: int, block_size: int = 128):  # noqa: ANN201
    """FlexAttention BlockMask for GLM (spec §4.2.1): causal or prefix (``kv_idx < sep[b]``), no past.

    The model's own builder (:func:`glm_core.attention_backends.flex_block_mask`); build once per batch and reuse
    it for every layer.
    """
    return flex_block_mask(sep, seq_len, 0, block_size)


def glm_attention_flex(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sep: torch.Tensor, block_mask=None
) -> torch.Tensor:  # noqa: ANN001
    """FlexAttention peer (no dropout: FlexAttention has none, spec §4.2.1, §6.5).

    On CUDA it runs ``torch.compile(flex_attention)`` (compiled once per process, per shape). On CPU
    it runs the eager forward only (no CPU backward in torch, spec §3.3) — for checking the mask.
    Pass ``block_mask`` from :func:`glm_flex_block_mask` to reuse it across layers.
    """
    _check_qkv(q, k, v, sep)
    if block_mask is None:
        block_mask = glm_flex_block_mask(sep.to(q.device), q.shape[2])
    return run_flex(q, k, v, block_mask)
