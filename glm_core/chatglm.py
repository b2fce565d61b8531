"""ChatGLM-6B (the GLM-130B block) in PyTorch, under the same step contract as :class:`glm_core.model.GLMModel`.

ChatGLM is a GLM in the paper's sense: context ``A [gMASK] <sop> B ...`` with ``sep`` = the index of ``<sop>``,
positions ``0..`` over the context and the mask's position from ``<sop>`` on, block positions 0 over the context and
``1, 2, ...`` from ``<sop>`` (exactly :mod:`glm_core.layout`'s generation layout). What differs is the block; every
rule below is what the hub remote code (``modeling_chatglm.py``, final v1 revision) computes, reproduced by default:

- **Rotary 2-D positions** instead of position tables: each head of size ``D`` is split in two halves; the first half
  is rotated by the position id, the second by the block position id, each with the ``rotate_half`` layout
  (``x * cos + cat(-x2, x1) * sin``) over ``D / 2`` dims. ``inv_freq = 1 / 10000 ** (arange(0, D/2, 2) / (D/2))`` is
  **rounded to fp16** and the angles ``t * inv_freq`` are built **in the compute dtype** (fp16 in fp16, fp32 with
  fp16-rounded frequencies in fp32). A checkpoint's ``rotary_emb.inv_freq`` buffers are ignored.
- ``query_key_value`` rows are laid out **per head** as ``q_h | k_h | v_h`` (not all Q, then all K, then all V).
- Attention of layer ``l`` (0-based): ``q / (sqrt(D) * (l + 1))``, ``Q·Kᵀ``, masked scores set to **-10000** (in the
  compute dtype), cast to fp32, **times (l + 1)**, softmax, cast back, ``·V``.
- **Post-LN residuals** with ``alpha = sqrt(2 * 28)`` at every depth (the block's default ``num_layers=28`` is never
  overridden), added to the LayerNorm *output*: ``a = LN_in(x); h = a * alpha + Attn(a); m = LN_post(h);
  y = m * alpha + MLP(m)``.
- Tanh GeLU, plain MLP (``inner_hidden_size``), final LayerNorm, **untied** LM head without bias. No dropout.

Attention backends (``attention=``): ``math`` reproduces every rule above bit for bit (``auto`` is always ``math``);
``sdpa`` and ``flex`` compute the same function with one ``1/sqrt(D)`` scale and ``-inf`` masking, which agrees
with ``math`` to rounding (~1e-7 relative in fp32) but not bit for bit in fp16, and differs on rows that see no
key (explicit masks with padded rows); ``triton`` (the GLM kernel) does not apply. Parameter names are exactly the
hub checkpoint's (``transformer.word_embeddings``, ``transformer.layers.N...``, ``lm_head``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from glm_core.attention_backends import REPORTED, check_attention, flex_block_mask, run_flex, run_sdpa
from glm_core.config import ChatGLMConfig
from glm_core.errors import InputError, KernelUnavailableError
from glm_core.model_common import (
    GLMOutput,
    PastKeyValues,
    SepLike,
    check_past,
    check_step_inputs,
    explicit_mask,
    gelu_tanh,
    visibility_mask,
)

CHATGLM_MASK_VALUE = -10000.0  # masked scores, set before the fp32 cast and the (layer + 1) rescale
CHATGLM_BLOCK_LAYERS = 28  # the block's default num_layers, never overridden: alpha is sqrt(2 * 28) at every depth
RESIDUAL_ALPHA = math.sqrt(2 * CHATGLM_BLOCK_LAYERS)
ROTARY_BASE = 10000
CHATGLM_ATTENTION = ("auto", "math", "sdpa", "flex")


def rotary_inv_freq(rotary_dim: int) -> torch.Tensor:
    """``1 / base ** (arange(0, dim, 2) / dim)`` computed in fp32 and rounded to fp16, as the checkpoints ran."""
    inv = 1.0 / (ROTARY_BASE ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
    return inv.half()


def rotary_cos_sin(
    positions: torch.Tensor, rotary_dim: int, dtype: torch.dtype, exact_inv_freq: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin ``[B, 1, S, rotary_dim]`` for integer ``positions [B, S]``, angles built in ``dtype``.

    ``exact_inv_freq=True`` skips the fp16 rounding of the frequencies (not what the checkpoints ran; kept so tests
    can show that the rounding matters).
    """
    if exact_inv_freq:
        inv = 1.0 / (ROTARY_BASE ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    else:
        inv = rotary_inv_freq(rotary_dim)
    inv = inv.to(device=positions.device, dtype=dtype)
    freqs = positions.to(dtype)[..., None] * inv  # [B, S, rotary_dim / 2], rounded in dtype like the einsum
    emb = torch.cat([freqs, freqs], dim=-1)  # [B, S, rotary_dim]
    return emb.cos()[:, None], emb.sin()[:, None]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary_2d(
    x: torch.Tensor, pos: tuple[torch.Tensor, torch.Tensor], block: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Rotate the first half of each head ``x [B, H, S, D]`` by the position, the second by the block position."""
    x1, x2 = x.chunk(2, dim=-1)
    x1 = x1 * pos[0] + rotate_half(x1) * pos[1]
    x2 = x2 * block[0] + rotate_half(x2) * block[1]
    return torch.cat([x1, x2], dim=-1)


def chatglm_attention_math(
    q: torch.Tensor,  # [B, H, S, D], rotated
    k: torch.Tensor,  # [B, H, P+S, D], rotated
    v: torch.Tensor,  # [B, H, P+S, D]
    visible: torch.Tensor,  # bool [B|1, 1, S, P+S]
    layer_id: int,
) -> torch.Tensor:
    """The remote code's attention, in its order: scale q by ``1/(sqrt(D)(l+1))``, mask to -10000, fp32 (or wider), ``*(l+1)``."""
    coeff = float(layer_id + 1)
    q = q / (math.sqrt(q.shape[-1]) * coeff)
    scores = torch.matmul(q, k.transpose(-1, -2))  # [B, H, S, P+S]
    scores = scores.masked_fill(~visible, CHATGLM_MASK_VALUE)
    # fp32 softmax for fp16/bf16/fp32 (the remote code's .float()); float64 stays float64 for the reference tests
    wide = torch.promote_types(scores.dtype, torch.float32)
    probs = torch.softmax(scores.to(wide) * coeff, dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


class ChatGLMAttention(nn.Module):
    def __init__(self, config: ChatGLMConfig, layer_id: int) -> None:
        super().__init__()
        h = config.hidden_size
        self.layer_id = layer_id
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query_key_value = nn.Linear(h, 3 * h)  # rows per head: q_h | k_h | v_h
        self.dense = nn.Linear(h, h)

    def forward(
        self,
        x: torch.Tensor,  # [B, S, h], the input LayerNorm's output
        rotary: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        visible: object,  # bool [B|1, 1, S, P+S] (math, sdpa) or a flex BlockMask
        past: tuple[torch.Tensor, torch.Tensor] | None,
        impl: str,
        use_cache: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        B, S, _ = x.shape
        mixed = self.query_key_value(x).view(B, S, self.num_heads, 3 * self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in mixed.split(self.head_dim, dim=-1))  # each [B, H, S, D]
        q = apply_rotary_2d(q, *rotary)
        k = apply_rotary_2d(k, *rotary)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        present = (k, v) if use_cache else None
        if impl == "sdpa":
            ctx = run_sdpa(q, k, v, visible, dropout_p=0.0)  # type: ignore[arg-type]
        elif impl == "flex":
            ctx = run_flex(q, k, v, visible)
        else:
            ctx = chatglm_attention_math(q, k, v, visible, self.layer_id)  # type: ignore[arg-type]
        ctx = ctx.transpose(1, 2).reshape(B, S, -1)
        return self.dense(ctx), present


class ChatGLMMLP(nn.Module):
    def __init__(self, config: ChatGLMConfig) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.ffn_hidden_size)
        self.dense_4h_to_h = nn.Linear(config.ffn_hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(gelu_tanh(self.dense_h_to_4h(x)))


class ChatGLMLayer(nn.Module):
    """Post-LN block: ``a = LN_in(x); h = a*alpha + Attn(a); m = LN_post(h); y = m*alpha + MLP(m)``."""

    def __init__(self, config: ChatGLMConfig, layer_id: int) -> None:
        super().__init__()
        h, eps = config.hidden_size, config.layernorm_epsilon
        self.input_layernorm = nn.LayerNorm(h, eps=eps)
        self.attention = ChatGLMAttention(config, layer_id)
        self.post_attention_layernorm = nn.LayerNorm(h, eps=eps)
        self.mlp = ChatGLMMLP(config)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        visible: object,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        impl: str,
        use_cache: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        attn_in = self.input_layernorm(x)
        attn_out, present = self.attention(attn_in, rotary, visible, past, impl, use_cache)
        hidden = attn_in * RESIDUAL_ALPHA + attn_out
        mlp_in = self.post_attention_layernorm(hidden)
        return mlp_in * RESIDUAL_ALPHA + self.mlp(mlp_in), present


class ChatGLMStack(nn.Module):
    def __init__(self, config: ChatGLMConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(ChatGLMLayer(config, i) for i in range(config.num_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)


class ChatGLMModel(nn.Module):
    """ChatGLM-6B: word embeddings, ``L`` post-LN GLM-130B layers with rotary 2-D positions, untied LM head.

    ``forward`` has :class:`glm_core.model.GLMModel`'s signature and return (step contract of DESIGN.md).
    """

    def __init__(
        self,
        config: ChatGLMConfig,
        kernels: str = "torch",
        gradient_checkpointing: bool = False,
        attention: str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(config, ChatGLMConfig):
            raise InputError(f"ChatGLMModel needs a ChatGLMConfig, got {type(config).__name__}")
        self.config = config
        self.set_kernels(kernels)
        self.set_attention(attention)
        self.gradient_checkpointing = gradient_checkpointing
        self.transformer = ChatGLMStack(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.kernels_used: dict[str, str] = {}
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """N(0, initializer_range) for every matrix and embedding, LayerNorms at (1, 0), biases 0.

        The remote code leaves initialisation to the checkpoint; this only gives seeded random models.
        """
        std = self.config.initializer_range
        with torch.no_grad():
            for name, param in self.named_parameters():
                if "layernorm" in name:
                    param.fill_(1.0 if name.endswith("weight") else 0.0)
                elif name.endswith("bias"):
                    param.zero_()
                else:
                    param.normal_(0.0, std, generator=generator)

    def set_kernels(self, kernels: str) -> None:
        """``torch`` and ``auto`` run plain torch; the Triton kernels implement GLM's block, not this one."""
        if kernels == "triton":
            raise KernelUnavailableError(
                "kernels='triton' has no ChatGLM block (rotary 2-D positions, post-LN residuals); expected 'torch' or "
                "'auto'"
            )
        if kernels not in ("auto", "torch"):
            raise InputError(f"kernels must be one of ('auto', 'torch', 'triton'), got {kernels!r}")
        self.kernels = kernels

    def set_attention(self, attention: str) -> None:
        """``auto | math | sdpa | flex`` (module docstring); ``auto`` is ``math``, the faithful path."""
        check_attention(attention)
        if attention not in CHATGLM_ATTENTION:
            raise KernelUnavailableError(
                f"attention={attention!r} does not apply to ChatGLM (the fused GLM kernel has no rotary positions or "
                f"layer scaling); expected one of {CHATGLM_ATTENTION}"
            )
        self.attention = attention

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.transformer.word_embeddings

    def _backend(self, explicit_mask: bool) -> str:
        backend = "math" if self.attention == "auto" else self.attention
        if backend == "flex" and explicit_mask:
            raise KernelUnavailableError(
                "attention='flex' cannot take an explicit attention_mask (expected the sep layout; use 'math' or "
                "'sdpa')"
            )
        return backend

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        sep: SepLike = None,
        past_key_values: PastKeyValues | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = True,
        return_logits: bool = True,
    ) -> GLMOutput:
        """One step: ``sep`` rule (or an explicit 0/1 ``attention_mask [B, 1, S, K]``), K/V cache, fp32 logits.

        The cached keys are stored after the rotary encoding, so a later chunk needs only its own positions.
        """
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        if past_key_values is not None:
            check_past(self.config, past_key_values, input_ids.shape[0])
        position_ids, sep_t = check_step_inputs(self.config, input_ids, position_ids, sep, past_len)
        B, S = input_ids.shape
        dtype = self.lm_head.weight.dtype
        backend = self._backend(attention_mask is not None)
        self.kernels_used = {"attention": REPORTED[backend], "layernorm": "torch", "bias_gelu": "torch"}

        visible: object
        if attention_mask is not None:
            visible = explicit_mask(attention_mask, B, S, past_len).to(input_ids.device)
        elif backend == "flex":
            visible = flex_block_mask(sep_t, S, past_len)
        else:
            visible = visibility_mask(sep_t, S, past_len)

        rd = self.config.rotary_dim
        rotary = (rotary_cos_sin(position_ids[:, 0], rd, dtype), rotary_cos_sin(position_ids[:, 1], rd, dtype))
        x = self.transformer.word_embeddings(input_ids)  # [B, S, h]
        presents: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, layer in enumerate(self.transformer.layers):
            past = None if past_key_values is None else past_key_values[i]
            if self.gradient_checkpointing and self.training:
                from torch.utils.checkpoint import checkpoint

                x, present = checkpoint(layer, x, rotary, visible, past, backend, use_cache, use_reentrant=False)
            else:
                x, present = layer(x, rotary, visible, past, backend, use_cache)
            if present is not None:
                presents.append(present)
        hidden = self.transformer.final_layernorm(x)
        return GLMOutput(
            logits=self.lm_logits(hidden) if return_logits else None,
            past_key_values=tuple(presents) if use_cache else None,
            hidden_states=hidden,
            kernels_used=dict(self.kernels_used),
        )

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The untied head (no bias), float32 at the boundary."""
        return self.lm_head(hidden).float()

    def loss(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        sep: SepLike,
        targets: torch.Tensor,
        loss_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Mean token cross-entropy over the rows with ``loss_mask > 0`` (as :meth:`GLMModel.loss`)."""
        out = self.forward(input_ids, position_ids, sep=sep, use_cache=False, return_logits=False)
        hidden = out.hidden_states.reshape(-1, self.config.hidden_size)
        rows = loss_mask.reshape(-1) > 0
        if not bool(rows.any()):
            raise InputError("loss_mask selects no token: nothing to train on (Part B is empty)")
        return F.cross_entropy(self.lm_logits(hidden[rows]), targets.reshape(-1)[rows])
