"""The export wrapper of ChatGLM-6B: one flat ONNX graph with the GLM export's signature, mask and rotary inside.

Same inputs, outputs, names and dynamic shapes as :class:`export.graph.GLMExportModule` (it subclasses it)::

    input_ids [B,S] int64, position_ids [B,2,S] int64, sep [B] int64, (past_length,) past_key_values.{i}.key/.value
    -> logits [B,S,V] float32, present.{i}.key / .value

What differs is the block, computed as :mod:`glm_core.chatglm` computes it: the visibility rule of ``sep`` (and the
past length, or ``past_length`` in the buffer layout) is built once as a boolean mask; each layer rotates the two
halves of q and k by the position and block position (fp16-rounded frequencies, angles in the compute dtype),
scales q by ``1/(sqrt(D)(l+1))``, sets masked scores to -10000, rescales by ``(l+1)`` and softmaxes in fp32; post-LN
residuals with ``alpha = sqrt(56)``; tanh GeLU as one standard ``Gelu`` node; the untied LM head is already a plain
``MatMul`` weight. The cached keys are stored rotated, so a decode step needs only its own positions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from export.graph import GLMExportModule, buffer_visibility, rule_visibility
from glm_core.chatglm import CHATGLM_MASK_VALUE, RESIDUAL_ALPHA, ChatGLMModel, apply_rotary_2d, rotary_cos_sin
from glm_core.errors import ExportError


class ChatGLMExportModule(GLMExportModule):
    """ChatGLM's forward with the GLM export's flat, named K/V-cache signature (``torch.onnx.export(dynamo=True)``)."""

    def __init__(self, model: ChatGLMModel, kv_cache: str = "concat") -> None:
        # the head is untied already: nothing to copy (GLMExportModule's untie_head is for the tied GLM head)
        super().__init__(model, untie_head=False, kv_cache=kv_cache)
        self.rotary_dim = model.config.rotary_dim

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, sep: torch.Tensor, *rest: torch.Tensor):  # noqa: ANN201
        model = self.model
        stack = model.transformer
        dtype = model.lm_head.weight.dtype
        query_len = input_ids.shape[1]
        if self.kv_cache == "buffer":
            past_length, past = rest[0], rest[1:]
            visible = buffer_visibility(sep, query_len, past[0].shape[2], past_length)
        else:
            past = rest
            visible = rule_visibility(sep, query_len, past[0].shape[2])  # [B, 1, S, P+S], once for all layers
        rotary = (
            rotary_cos_sin(position_ids[:, 0], self.rotary_dim, dtype),
            rotary_cos_sin(position_ids[:, 1], self.rotary_dim, dtype),
        )
        x = stack.word_embeddings(input_ids)  # [B, S, h]
        presents: list[torch.Tensor] = []
        for i, layer in enumerate(stack.layers):
            attn_in = layer.input_layernorm(x)
            attn_out, key, value = self._chatglm_attention(
                layer.attention, attn_in, rotary, visible, past[2 * i], past[2 * i + 1], i
            )
            presents += [key, value]
            mlp_in = layer.post_attention_layernorm(attn_in * RESIDUAL_ALPHA + attn_out)
            mlp = layer.mlp
            hidden = F.gelu(mlp.dense_h_to_4h(mlp_in), approximate="tanh")
            x = mlp_in * RESIDUAL_ALPHA + mlp.dense_4h_to_h(hidden)
        logits = model.lm_head(stack.final_layernorm(x))
        return (logits.float(), *presents)

    def _chatglm_attention(
        self,
        attn: torch.nn.Module,
        x: torch.Tensor,  # [B, S, h], input-LayerNormed
        rotary: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        visible: torch.Tensor,  # bool [B, 1, S, P+S] (concat) or [B, 1, S, W+S] (buffer)
        past_key: torch.Tensor,  # [B, H, P|W, D], rotated
        past_value: torch.Tensor,
        layer_id: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, S, h = x.shape
        H, D = self.num_heads, self.head_dim
        mixed = attn.query_key_value(x).view(B, S, H, 3 * D)  # rows per head: q_h | k_h | v_h
        q, k, v = (t.transpose(1, 2) for t in mixed.split(D, dim=-1))  # each [B, H, S, D]
        q = apply_rotary_2d(q, *rotary)
        k = apply_rotary_2d(k, *rotary)
        coeff = float(layer_id + 1)
        q = q / (math.sqrt(D) * coeff)
        if self.kv_cache == "buffer":
            scores = torch.cat([torch.matmul(q, past_key.transpose(-1, -2)), torch.matmul(q, k.transpose(-1, -2))], -1)
            present_key, present_value = k, v  # the chunk's rows; the caller writes them into its buffer
        else:
            present_key = torch.cat([past_key, k], dim=2)  # [B, H, P+S, D]
            present_value = torch.cat([past_value, v], dim=2)
            scores = torch.matmul(q, present_key.transpose(-1, -2))
        masked = torch.full((), CHATGLM_MASK_VALUE, dtype=scores.dtype, device=scores.device)
        scores = torch.where(visible, scores, masked)
        probs = torch.softmax(scores.float() * coeff, dim=-1).to(v.dtype)
        if self.kv_cache == "buffer":
            window = past_key.shape[2]
            ctx = torch.matmul(probs[..., :window], past_value) + torch.matmul(probs[..., window:], v)
        else:
            ctx = torch.matmul(probs, present_value)
        return attn.dense(ctx.transpose(1, 2).reshape(B, S, h)), present_key, present_value


def describe_architecture(glm_config: dict, config: object) -> dict:
    """Record in ``glm_config.json`` that the graph computes ChatGLM's block (and how its mask differs)."""
    if getattr(config, "architecture", "glm") != "chatglm":
        return glm_config
    glm_config["architecture"] = "chatglm"
    glm_config["mask"]["form"] = "scores of q/(sqrt(d)(layer+1)) set where masked, then times (layer+1), fp32 softmax"
    glm_config["mask"]["masked_value"] = CHATGLM_MASK_VALUE
    glm_config["position_ids"] = (
        "row 0 = position, row 1 = block position; rotary encoding of each head's two halves, built in the graph"
    )
    return glm_config


def check_export_options(config: object, optimize: str) -> None:
    """What the ChatGLM graph cannot take: ``--optimize ort`` fuses GLM's attention pattern into MultiHeadAttention,
    which has no place for the rotary encoding, the per-layer scaling or the -10000 masking."""
    if getattr(config, "architecture", "glm") == "chatglm" and optimize == "ort":
        raise ExportError(
            "--optimize ort does not apply to ChatGLM (the fused MultiHeadAttention has no rotary 2-D positions or "
            "layer-scaled -10000 masking); export it with --optimize none"
        )


def export_module(model: object, kv_cache: str = "concat") -> GLMExportModule:
    """The export wrapper of ``model``: ChatGLM's for a ChatGLM config, GLM's otherwise."""
    if getattr(model.config, "architecture", "glm") == "chatglm":  # type: ignore[attr-defined]
        return ChatGLMExportModule(model, kv_cache=kv_cache)  # type: ignore[arg-type]
    return GLMExportModule(model, kv_cache=kv_cache)  # type: ignore[arg-type]
