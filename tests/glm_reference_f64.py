"""An independent float64 GLM forward in numpy, written from spec glm_reference §1.2-§1.4 and §2.1-§2.2.

It shares no code with glm_core.model: it reads raw weights by their checkpoint names and implements the equations
directly, including the original multiplicative mask ``s*m - 65504*(1-m)`` and the hidden-state mems.
"""

from __future__ import annotations

import math

import numpy as np


def _ln(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x: np.ndarray, variant: str) -> np.ndarray:
    if variant == "tanh":
        return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def sep_mask(sep: np.ndarray, S: int, M: int) -> np.ndarray:
    """0/1 float mask [B, S, M+S]: memory columns all ones, then ``j < sep or j <= i`` (spec §2.1)."""
    B = len(sep)
    m = np.zeros((B, S, M + S))
    for b in range(B):
        for i in range(S):
            m[b, i, :M] = 1.0
            for j in range(S):
                if j < sep[b] or j <= i:
                    m[b, i, M + j] = 1.0
    return m


def glm_forward_f64(
    weights: dict[str, np.ndarray],
    num_layers: int,
    num_heads: int,
    input_ids: np.ndarray,  # [B, S]
    position_ids: np.ndarray,  # [B, 2, S]
    mask: np.ndarray,  # [B, S, M+S] 0/1
    mems: list[np.ndarray] | None = None,  # L+1 of [B, M, h]
    gelu: str = "tanh",
) -> tuple[np.ndarray, list[np.ndarray]]:
    W = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    B, S = input_ids.shape
    h = W["word_embeddings.weight"].shape[1]
    d = h // num_heads
    x = (
        W["word_embeddings.weight"][input_ids]
        + W["transformer.position_embeddings.weight"][position_ids[:, 0]]
        + W["transformer.block_position_embeddings.weight"][position_ids[:, 1]]
    )
    new_mems = [x if mems is None else np.concatenate([mems[0], x], 1)]
    for layer in range(num_layers):
        p = f"transformer.layers.{layer}."
        a = _ln(x, W[p + "input_layernorm.weight"], W[p + "input_layernorm.bias"])
        full = (
            a
            if mems is None
            else np.concatenate(
                [_ln(mems[layer], W[p + "input_layernorm.weight"], W[p + "input_layernorm.bias"]), a], 1
            )
        )
        qkv = full @ W[p + "attention.query_key_value.weight"].T + W[p + "attention.query_key_value.bias"]
        q, k, v = qkv[..., :h], qkv[..., h : 2 * h], qkv[..., 2 * h :]
        q = q[:, -S:]
        heads = lambda t: t.reshape(B, t.shape[1], num_heads, d).transpose(0, 2, 1, 3)  # noqa: E731
        q, k, v = heads(q), heads(k), heads(v)
        scores = q @ (k / math.sqrt(d)).transpose(0, 1, 3, 2)  # [B, H, S, M+S]
        m = mask[:, None]
        scores = scores * m - 65504.0 * (1.0 - m)  # spec §1.3, the original arithmetic
        scores = scores - scores.max(-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(B, S, h)
        x = x + ctx @ W[p + "attention.dense.weight"].T + W[p + "attention.dense.bias"]
        y = _ln(x, W[p + "post_attention_layernorm.weight"], W[p + "post_attention_layernorm.bias"])
        y = _gelu(y @ W[p + "mlp.dense_h_to_4h.weight"].T + W[p + "mlp.dense_h_to_4h.bias"], gelu)
        x = x + y @ W[p + "mlp.dense_4h_to_h.weight"].T + W[p + "mlp.dense_4h_to_h.bias"]
        new_mems.append(x if mems is None else np.concatenate([mems[layer + 1], x], 1))
    hfin = _ln(x, W["transformer.final_layernorm.weight"], W["transformer.final_layernorm.bias"])
    return hfin @ W["word_embeddings.weight"].T, new_mems
