"""Tiny ChatGLM fixtures made by the tests: a config with the hub's fields, random weights under the hub's key
names, written in the hub layout (fp16 ``pytorch_model-0000N-of-0000M.bin`` + index, ``rotary_emb.inv_freq``
buffers included), and a float64 re-implementation of the block written from its rules (glm_core.chatglm's
docstring), independent of the model code."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

# special ids inside a small vocabulary (the real ones are 130000+); the id rules are config fields
MASK, GMASK, SMASK, SOP, EOP, PAD = 140, 141, 142, 144, 145, 3
VOCAB = 150


def hub_config(**overrides: Any) -> dict[str, Any]:
    """A ChatGLM-6B config.json with tiny sizes."""
    cfg = {
        "architectures": ["ChatGLMModel"],
        "model_type": "chatglm",
        "bos_token_id": SOP,
        "eos_token_id": EOP,
        "mask_token_id": MASK,
        "gmask_token_id": GMASK,
        "pad_token_id": PAD,
        "hidden_size": 64,
        "inner_hidden_size": 80,
        "layernorm_epsilon": 1e-05,
        "max_sequence_length": 64,
        "num_attention_heads": 4,
        "num_layers": 2,
        "position_encoding_2d": True,
        "quantization_bit": 0,
        "pre_seq_len": None,
        "prefix_projection": False,
        "torch_dtype": "float16",
        "use_cache": True,
        "vocab_size": VOCAB,
    }
    cfg.update(overrides)
    return cfg


def random_hub_state(cfg: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """fp16 weights under the hub's names; LayerNorms and biases random too, so that every term is exercised."""
    g = torch.Generator().manual_seed(seed)
    h, f, V = cfg["hidden_size"], cfg["inner_hidden_size"], cfg["vocab_size"]
    d = h // cfg["num_attention_heads"]

    def rnd(*shape: int, std: float = 0.1, mean: float = 0.0) -> torch.Tensor:
        return (mean + std * torch.randn(*shape, generator=g)).half()

    inv_freq = (1.0 / 10000 ** (torch.arange(0, d // 2, 2).float() / (d // 2))).half()
    state = {"transformer.word_embeddings.weight": rnd(V, h, std=1.0)}
    for i in range(cfg["num_layers"]):
        p = f"transformer.layers.{i}."
        state.update(
            {
                p + "input_layernorm.weight": rnd(h, mean=1.0),
                p + "input_layernorm.bias": rnd(h),
                p + "attention.query_key_value.weight": rnd(3 * h, h, std=0.3),
                p + "attention.query_key_value.bias": rnd(3 * h),
                p + "attention.rotary_emb.inv_freq": inv_freq.clone(),
                p + "attention.dense.weight": rnd(h, h),
                p + "attention.dense.bias": rnd(h),
                p + "post_attention_layernorm.weight": rnd(h, mean=1.0),
                p + "post_attention_layernorm.bias": rnd(h),
                p + "mlp.dense_h_to_4h.weight": rnd(f, h),
                p + "mlp.dense_h_to_4h.bias": rnd(f),
                p + "mlp.dense_4h_to_h.weight": rnd(h, f),
                p + "mlp.dense_4h_to_h.bias": rnd(h),
            }
        )
    state["transformer.final_layernorm.weight"] = rnd(h, mean=1.0)
    state["transformer.final_layernorm.bias"] = rnd(h)
    state["lm_head.weight"] = rnd(V, h, std=0.3)
    return state


def write_hub_dir(directory: Path, cfg: dict[str, Any] | None = None, seed: int = 0, shards: int = 3) -> Path:
    """The hub layout: ``pytorch_model-0000N-of-0000M.bin`` + ``pytorch_model.bin.index.json`` + config.json."""
    cfg = cfg or hub_config()
    directory.mkdir(parents=True, exist_ok=True)
    state = random_hub_state(cfg, seed)
    keys = list(state)
    per = -(-len(keys) // shards)
    weight_map = {}
    for n in range(shards):
        name = f"pytorch_model-{n + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[n * per : (n + 1) * per]}
        torch.save(part, directory / name)
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": sum(t.numel() * 2 for t in state.values())}, "weight_map": weight_map}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index), encoding="utf-8")
    (directory / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return directory


def chatglm_layout(ids: list[int]) -> tuple[list[int], list[int], int]:
    """ChatGLM's rule: sep = index of <sop>; positions 0.. then the mask's ([gMASK] if present, else [MASK]);
    block positions 0 over the context, then 1, 2, ..."""
    sep = ids.index(SOP)
    mask_pos = ids.index(GMASK if GMASK in ids else MASK)
    return (
        [i if i < sep else mask_pos for i in range(len(ids))],
        [0 if i < sep else i - sep + 1 for i in range(len(ids))],
        sep,
    )


# --------------------------------------------------------------------------------------------- float64 reference
def _ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _rot(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """x [S, D'] rotated by integer pos [S]: pairs (i, i + D'/2) turned by pos * inv_freq[i]."""
    half = x.shape[-1] // 2
    ang = pos[:, None].double() * inv_freq[None, :]  # [S, D'/2]
    c, s = torch.cos(ang), torch.sin(ang)
    a, b = x[:, :half], x[:, half:]
    return torch.cat([a * c - b * s, b * c + a * s], dim=-1)


def reference_logits(
    state: dict[str, torch.Tensor],
    cfg: dict[str, Any],
    ids: list[int],
    positions: list[int],
    blocks: list[int],
    visible: torch.Tensor,  # bool [S, S]
    *,
    alpha: float = math.sqrt(56.0),
    fp16_inv_freq: bool = True,
    mask_value: float = -10000.0,
    layer_scaling: bool = True,
    per_head_qkv: bool = True,
) -> torch.Tensor:
    """One sequence through the block, float64, every rule written out from its statement. Returns [S, V]."""
    W = {k: v.double() for k, v in state.items()}
    H = cfg["num_attention_heads"]
    h = cfg["hidden_size"]
    D = h // H
    eps = cfg["layernorm_epsilon"]
    rd = D // 2
    inv = 1.0 / 10000 ** (torch.arange(0, rd, 2, dtype=torch.float64) / rd)
    if fp16_inv_freq:
        inv = inv.half().double()
    pos, blk = torch.tensor(positions), torch.tensor(blocks)
    x = W["transformer.word_embeddings.weight"][torch.tensor(ids)]  # [S, h]
    for layer in range(cfg["num_layers"]):
        p = f"transformer.layers.{layer}."
        a = _ln(x, W[p + "input_layernorm.weight"], W[p + "input_layernorm.bias"], eps)
        qkv = a @ W[p + "attention.query_key_value.weight"].T + W[p + "attention.query_key_value.bias"]
        heads = []
        for n in range(H):
            if per_head_qkv:  # rows of head n: [q_n | k_n | v_n], each D wide
                q, k, v = (qkv[:, n * 3 * D + j * D : n * 3 * D + (j + 1) * D] for j in range(3))
            else:
                q, k, v = (qkv[:, j * h + n * D : j * h + (n + 1) * D] for j in range(3))
            q = torch.cat([_rot(q[:, :rd], pos, inv), _rot(q[:, rd:], blk, inv)], dim=-1)
            k = torch.cat([_rot(k[:, :rd], pos, inv), _rot(k[:, rd:], blk, inv)], dim=-1)
            coeff = float(layer + 1) if layer_scaling else 1.0
            scores = (q / (math.sqrt(D) * coeff)) @ k.T
            scores = torch.where(visible, scores, torch.full_like(scores, mask_value)) * coeff
            heads.append(torch.softmax(scores, dim=-1) @ v)
        attn = torch.cat(heads, dim=-1) @ W[p + "attention.dense.weight"].T + W[p + "attention.dense.bias"]
        hid = a * alpha + attn
        m = _ln(hid, W[p + "post_attention_layernorm.weight"], W[p + "post_attention_layernorm.bias"], eps)
        u = m @ W[p + "mlp.dense_h_to_4h.weight"].T + W[p + "mlp.dense_h_to_4h.bias"]
        u = 0.5 * u * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u**3)))
        x = m * alpha + u @ W[p + "mlp.dense_4h_to_h.weight"].T + W[p + "mlp.dense_4h_to_h.bias"]
    x = _ln(x, W["transformer.final_layernorm.weight"], W["transformer.final_layernorm.bias"], eps)
    return x @ W["lm_head.weight"].T


def sep_visibility(n: int, sep: int) -> torch.Tensor:
    """Every row sees the columns before sep; causal from sep on."""
    j = torch.arange(n)
    return (j[None, :] < sep) | (j[None, :] <= j[:, None])
