"""GLM in PyTorch, read top to bottom like spec glm_reference §1.2-§1.4.

Parameter names are exactly those of the original THUDM checkpoints (spec §4.2), so a state dict loads without
renaming. Forward implements the step contract of DESIGN.md:

    model(input_ids[B,S], position_ids[B,2,S], sep=..., past_key_values=...) -> GLMOutput(logits[B,S,V] fp32, past)

with a K/V cache (per layer ``(key, value)``, each ``[B, H, P, D]``) instead of the original hidden-state mems; the
two are numerically equivalent (spec §2.2) and :meth:`GLMModel.forward_mems` keeps the original form for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from glm_core.attention_backends import (
    REPORTED,
    check_attention,
    flex_block_mask,
    resolve_attention,
    run_flex,
    run_sdpa,
)
from glm_core.config import GLMConfig
from glm_core.errors import InputError
from glm_core.model_common import (
    GLMOutput,
    PastKeyValues,
    SepLike,
    as_sep,
    check_past,
    check_step_inputs,
    gelu_tanh,
    visibility_mask,
)
from glm_core.model_common import explicit_mask as _explicit_mask

MASK_VALUE = -65504.0  # spec §1.3: masked scores are set to exactly -65504 (finite, fp16-safe), never -inf
KERNEL_CHOICES = ("auto", "triton", "torch")


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    # spec §1.4: exact erf GeLU, what the hub remote code computes (transformers' GELUActivation)
    return F.gelu(x)


def glm_attention_math(
    q: torch.Tensor,  # [B, H, S, D]
    k: torch.Tensor,  # [B, H, P+S, D]
    v: torch.Tensor,  # [B, H, P+S, D]
    visible: torch.Tensor,  # bool [B|1, 1, S, P+S]
    dropout_p: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """spec §1.3: scores = Q·(K/sqrt(d))ᵀ, masked scores set to exactly -65504, softmax (fp32), dropout, ·V."""
    scores = torch.matmul(q, (k / math.sqrt(q.shape[-1])).transpose(-1, -2))  # [B, H, S, P+S]
    scores = torch.where(visible, scores, torch.full((), MASK_VALUE, dtype=scores.dtype, device=scores.device))
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    probs = F.dropout(probs, p=dropout_p, training=training)
    return torch.matmul(probs, v)  # [B, H, S, D]


class GLMAttention(nn.Module):
    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query_key_value = nn.Linear(h, 3 * h)  # rows Q | K | V (spec §1.3)
        self.dense = nn.Linear(h, h)
        self.attention_dropout = config.attention_dropout_prob

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, S, _ = x.shape
        return x.view(B, S, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, S, D]

    def forward(
        self,
        x: torch.Tensor,  # [B, S, h], already input-LayerNormed
        visible: object,  # bool [B|1, 1, S, P+S] (math, sdpa), a flex BlockMask (flex), None (triton: uses `sep`)
        sep: torch.Tensor,  # [B]
        past: tuple[torch.Tensor, torch.Tensor] | None,
        impl: str,  # attention backend: "math" | "sdpa" | "flex" | "triton" (glm_core.attention_backends)
        use_cache: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        q, k, v = self.query_key_value(x).chunk(3, dim=-1)  # each [B, S, h]
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)  # [B, H, S, D]
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # [B, H, P+S, D]
            v = torch.cat([past[1], v], dim=2)
        present = (k, v) if use_cache else None
        p = self.attention_dropout if self.training else 0.0
        if impl == "triton":
            from glm_core.kernels.attention import glm_attention

            ctx = glm_attention(q, k, v, sep, dropout_p=p, training=self.training, impl="triton")
        elif impl == "sdpa":
            ctx = run_sdpa(q, k, v, visible, dropout_p=p)
        elif impl == "flex":
            ctx = run_flex(q, k, v, visible)
        else:
            ctx = glm_attention_math(q, k, v, visible, dropout_p=p, training=self.training)  # [B, H, S, D]
        B, H, S, D = ctx.shape
        ctx = ctx.transpose(1, 2).reshape(B, S, H * D)  # [B, S, h]
        return self.dense(ctx), present


class GLMMLP(nn.Module):
    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.dense_h_to_4h = nn.Linear(h, 4 * h)
        self.dense_4h_to_h = nn.Linear(4 * h, h)
        self.gelu = config.gelu

    def forward(self, x: torch.Tensor, impl: str) -> torch.Tensor:
        if impl == "triton" and self.gelu == "tanh":
            from glm_core.kernels import bias_gelu

            hidden = bias_gelu(F.linear(x, self.dense_h_to_4h.weight), self.dense_h_to_4h.bias, impl="triton")
        else:
            hidden = self.dense_h_to_4h(x)  # [B, S, 4h]
            hidden = gelu_tanh(hidden) if self.gelu == "tanh" else gelu_erf(hidden)
        return self.dense_4h_to_h(hidden)


class GLMLayer(nn.Module):
    """Pre-LN block (spec §1.2): x' = x + Attn(LN_in(x)); y = x' + MLP(LN_post(x'))."""

    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        h, eps = config.hidden_size, config.layernorm_epsilon
        self.input_layernorm = nn.LayerNorm(h, eps=eps)
        self.attention = GLMAttention(config)
        self.post_attention_layernorm = nn.LayerNorm(h, eps=eps)
        self.mlp = GLMMLP(config)
        self.output_dropout = config.output_dropout_prob

    def forward(
        self,
        x: torch.Tensor,  # [B, S, h]
        visible: object,  # what the attention backend needs (see GLMAttention.forward)
        sep: torch.Tensor,  # [B]
        past: tuple[torch.Tensor, torch.Tensor] | None,
        impl_attn: str,
        impl_ln: str,
        impl_mlp: str,
        use_cache: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """One whole layer through ``__call__``, so a layer is the unit that FSDP shards, ``torch.compile`` compiles
        (regional compilation: one graph reused by every layer) and activation checkpointing recomputes."""
        p_out = self.output_dropout if self.training else 0.0
        attn_in = _layernorm(x, self.input_layernorm, impl_ln)
        attn_out, present = self.attention(attn_in, visible, sep, past, impl_attn, use_cache)
        ln = self.post_attention_layernorm
        if impl_ln == "triton":
            from glm_core.kernels import add_dropout_layernorm

            # fused: x' = x + dropout(attn_out); mlp_in = LN_post(x')
            mlp_in, x = add_dropout_layernorm(
                attn_out, x, ln.weight, ln.bias, eps=ln.eps, dropout_p=p_out, training=self.training, impl="triton"
            )
        else:
            x = x + F.dropout(attn_out, p=p_out, training=self.training)
            mlp_in = ln(x)
        mlp_out = self.mlp(mlp_in, impl_mlp)
        x = x + F.dropout(mlp_out, p=p_out, training=self.training)
        return x, present


def _layernorm(x: torch.Tensor, ln: nn.LayerNorm, impl: str) -> torch.Tensor:
    if impl == "triton":
        from glm_core.kernels import add_dropout_layernorm

        return add_dropout_layernorm(x, None, ln.weight, ln.bias, eps=ln.eps, impl="triton")[0]
    return ln(x)


class GLMStack(nn.Module):
    def __init__(self, config: GLMConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.position_embeddings = nn.Embedding(config.num_position_rows, h)  # [P+1, h]
        self.block_position_embeddings = nn.Embedding(config.num_position_rows, h)
        self.layers = nn.ModuleList(GLMLayer(config) for _ in range(config.num_layers))
        self.final_layernorm = nn.LayerNorm(h, eps=config.layernorm_epsilon)


class GLMModel(nn.Module):
    """The GLM language model: embeddings, ``L`` pre-LN layers, final LayerNorm, LM head tied to the embeddings."""

    def __init__(
        self,
        config: GLMConfig,
        kernels: str = "torch",
        gradient_checkpointing: bool | Iterable[int] = False,
        attention: str = "auto",
    ) -> None:
        super().__init__()
        if kernels not in KERNEL_CHOICES:
            raise InputError(f"kernels must be one of {KERNEL_CHOICES}, got {kernels!r}")
        self.config = config
        self.kernels = kernels
        self.attention = check_attention(attention)
        self.checkpoint_layers: frozenset[int] = frozenset()
        self.set_activation_checkpointing(gradient_checkpointing)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)  # [V, h], also the LM head
        self.transformer = GLMStack(config)
        self.kernels_used: dict[str, str] = {}
        self.reset_parameters()

    # ----------------------------------------------------------------- init
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """spec §1.5: N(0, 0.02) for embeddings and input-side linears, N(0, 0.02/sqrt(2L)) for output linears."""
        std = self.config.initializer_range
        out_std = std / math.sqrt(2.0 * self.config.num_layers)
        with torch.no_grad():
            for name, param in self.named_parameters():
                if "layernorm" in name:
                    param.fill_(1.0 if name.endswith("weight") else 0.0)
                elif name.endswith("bias"):
                    param.zero_()
                elif name.endswith("attention.dense.weight") or name.endswith("dense_4h_to_h.weight"):
                    param.normal_(0.0, out_std, generator=generator)
                else:
                    param.normal_(0.0, std, generator=generator)

    # -------------------------------------------------------------- kernels
    def _impl(self, op: str, device: torch.device, dtype: torch.dtype) -> str:
        """Which implementation of a fused op runs here (``glm_core.kernels.resolve_impl`` decides); the choice is
        reported per op in ``GLMOutput.kernels_used`` / ``model.kernels_used``."""
        if self.kernels == "torch":
            return "torch"
        from glm_core.kernels import resolve_impl

        return resolve_impl(self.kernels, device, dtype, op)

    def set_kernels(self, kernels: str) -> None:
        if kernels not in KERNEL_CHOICES:
            raise InputError(f"kernels must be one of {KERNEL_CHOICES}, got {kernels!r}")
        self.kernels = kernels

    def set_attention(self, attention: str) -> None:
        """Pick the attention backend: ``auto | math | sdpa | flex | triton`` (glm_core.attention_backends)."""
        self.attention = check_attention(attention)

    def set_activation_checkpointing(self, layers: bool | Iterable[int]) -> None:
        """Which layers recompute their activations in the backward instead of keeping them (training only).

        ``True``: every layer, ``False``: none, else the layer indices (0-based), e.g. every other layer to trade
        half the recomputation for half the activation memory.
        """
        count = self.config.num_layers
        if layers is True:
            chosen: Iterable[int] = range(count)
        elif layers is False or layers is None:
            chosen = ()
        else:
            chosen = list(layers)
            bad = [i for i in chosen if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < count]
            if bad:
                raise InputError(f"activation checkpointing layers must lie in [0, {count}), got {bad}")
        self.checkpoint_layers = frozenset(chosen)

    @property
    def gradient_checkpointing(self) -> bool:
        """True when at least one layer is checkpointed (:meth:`set_activation_checkpointing`)."""
        return bool(self.checkpoint_layers)

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool | Iterable[int]) -> None:
        self.set_activation_checkpointing(value)

    # ------------------------------------------------------------ validation
    def check_batch(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None,
        sep: SepLike,
        loss_mask: torch.Tensor | None = None,
        past_len: int = 0,
    ) -> None:
        """Validate a batch where it lives before the step (host tensors: no device sync), so the step itself can
        run with ``validate=False`` and hold no data-dependent branch: nothing for ``torch.compile`` to break on.

        Raises :class:`~glm_core.errors.InputError` for what :meth:`forward` and :meth:`loss` would refuse.
        """
        self._check_inputs(input_ids, position_ids, sep, past_len)
        if loss_mask is not None and not bool((loss_mask > 0).any()):
            raise InputError("loss_mask selects no token: nothing to train on (Part B is empty)")

    def _check_inputs(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None,
        sep: SepLike,
        past_len: int,
        validate: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalise ``position_ids`` and ``sep``; with ``validate`` also check shapes, dtypes and value ranges.

        The value checks read the tensors (``bool(x.any())``): a host sync on an accelerator and a graph break
        under ``torch.compile``. ``validate=False`` skips every check; the caller has run :meth:`check_batch`.
        """
        if not validate:
            B, S = input_ids.shape
            if position_ids is None:
                pos = torch.arange(past_len, past_len + S, device=input_ids.device).expand(B, S)
                position_ids = torch.stack([pos, torch.zeros_like(pos)], dim=1)
            return position_ids.long(), as_sep(sep, B, input_ids.device)
        return check_step_inputs(self.config, input_ids, position_ids, sep, past_len)

    def _check_past(self, past: PastKeyValues, batch: int) -> None:
        check_past(self.config, past, batch)

    # --------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        sep: SepLike = None,
        past_key_values: PastKeyValues | None = None,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = True,
        return_logits: bool = True,
        validate: bool = True,
    ) -> GLMOutput:
        """One GLM step. ``sep=None`` means 0 (pure causal, the HF default of spec §2.1).

        ``attention_mask``: optional explicit 0/1 matrix ``[B, 1, S, K]`` (K >= P+S; its last P+S columns are used,
        spec §2.1 form 3) for layouts the ``sep`` rule cannot express, e.g. packed multiple choice (spec §2.4-4).
        ``validate=False``: skip the input checks (the caller ran :meth:`check_batch`); the training step does, so
        it holds no host sync and ``torch.compile`` takes it whole.
        """
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        if past_key_values is not None:
            self._check_past(past_key_values, input_ids.shape[0])
        position_ids, sep_t = self._check_inputs(input_ids, position_ids, sep, past_len, validate)
        B, S = input_ids.shape
        param = self.word_embeddings.weight
        device, dtype = param.device, param.dtype
        # a parametrized weight (an upcast copy: export.weights.computed_in_fp32) is not held through the layers
        del param

        # The attention backend (glm_core.attention_backends): the fused kernel covers the training layout only.
        plain_layout = attention_mask is None and past_len == 0
        kernel_impl = self._impl("glm_attention", device, dtype) if plain_layout else "torch"
        p_attn = self.config.attention_dropout_prob if self.training else 0.0
        backend = resolve_attention(
            self.attention,
            device=device,
            dtype=dtype,
            kernel_impl=kernel_impl,
            sep_layout=attention_mask is None,
            has_past=past_len > 0,
            dropout_p=p_attn,
            needs_grad=torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()),
        )
        impl_ln = self._impl("add_dropout_layernorm", device, dtype)
        # the erf GeLU variant has no Triton kernel: it always runs in torch
        impl_mlp = self._impl("bias_gelu", device, dtype) if self.config.gelu == "tanh" else "torch"
        self.kernels_used = {"attention": REPORTED[backend], "layernorm": impl_ln, "bias_gelu": impl_mlp}

        visible: object = None  # what the backend needs to know who sees whom, built once for all layers
        if backend in ("math", "sdpa"):
            if attention_mask is not None:
                visible = _explicit_mask(attention_mask, B, S, past_len).to(device)
            else:
                visible = visibility_mask(sep_t, S, past_len)
        elif backend == "flex":
            visible = flex_block_mask(sep_t, S, past_len)

        # spec §1.2 step 1: word + position + block-position embeddings, then embedding dropout
        x = (
            self.word_embeddings(input_ids)
            + self.transformer.position_embeddings(position_ids[:, 0])
            + self.transformer.block_position_embeddings(position_ids[:, 1])
        )  # [B, S, h]
        x = F.dropout(x, p=self.config.embedding_dropout_prob, training=self.training)

        presents: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, layer in enumerate(self.transformer.layers):
            past = None if past_key_values is None else past_key_values[i]
            args = (x, visible, sep_t, past, backend, impl_ln, impl_mlp, use_cache)
            if self.training and i in self.checkpoint_layers:
                x, present = checkpoint(layer, *args, use_reentrant=False)
            else:
                x, present = layer(*args)
            if present is not None:
                presents.append(present)

        ln = self.transformer.final_layernorm
        hidden = _layernorm(x, ln, impl_ln)  # [B, S, h]
        logits = self.lm_logits(hidden) if return_logits else None
        return GLMOutput(
            logits=logits,
            past_key_values=tuple(presents) if use_cache else None,
            hidden_states=hidden,
            kernels_used=dict(self.kernels_used),
        )

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """spec §1.2 step 3: logits = H · Eᵀ (tied, no bias), float32 at the boundary."""
        return F.linear(hidden, self.word_embeddings.weight).float()

    # ------------------------------------------------------------------ loss
    def loss(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        sep: SepLike,
        targets: torch.Tensor,
        loss_mask: torch.Tensor,
        rows: torch.Tensor | None = None,
        validate: bool = True,
    ) -> torch.Tensor:
        """Mean token cross-entropy over Part-B rows (``loss_mask > 0``) only (spec §5).

        Only the scored rows go through the tied LM head, so full logits are never built for Part A. ``rows``: the
        flat indices (into ``B*S``) of those rows, computed on the host with the batch (the training tasks do);
        without it they are found here with a data-dependent ``nonzero`` (a host sync, a graph break).
        ``validate=False``: the caller ran :meth:`check_batch`; with ``rows`` the loss then holds no host sync.
        """
        out = self.forward(input_ids, position_ids, sep=sep, use_cache=False, return_logits=False, validate=validate)
        hidden = out.hidden_states.reshape(-1, self.config.hidden_size)  # [B*S, h]
        impl = self._impl("partb_lm_head_ce", hidden.device, hidden.dtype)
        self.kernels_used["lm_head_ce"] = impl
        flat_targets = targets.reshape(-1)
        flat_mask = loss_mask.reshape(-1)
        if impl == "triton":
            from glm_core.kernels import partb_lm_head_ce

            return partb_lm_head_ce(
                hidden,
                self.word_embeddings.weight,
                flat_targets,
                flat_mask,
                impl="triton",
                rows=rows,
                validate=validate,
            )
        if rows is None:
            selected = flat_mask > 0
            if validate and not bool(selected.any()):
                raise InputError("loss_mask selects no token: nothing to train on (Part B is empty)")
            rows = selected.nonzero().squeeze(1)
        rows = rows.to(device=hidden.device, dtype=torch.long)
        logits = self.lm_logits(hidden.index_select(0, rows))  # [N_B, V] float32
        return F.cross_entropy(logits, flat_targets.index_select(0, rows))

    # ------------------------------------------------ original hidden-state mems
    @torch.no_grad()
    def forward_mems(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        sep: SepLike,
        mems: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The original code's cache (spec §2.2): ``L+1`` hidden states ``[B, M, h]``, K/V recomputed every step.

        Kept as an independent path for tests and for the K/V-cache benchmark; inference only.
        """
        mem_len = 0 if mems is None else mems[0].shape[1]
        position_ids, sep_t = self._check_inputs(input_ids, position_ids, sep, mem_len)
        B, S = input_ids.shape
        visible = visibility_mask(sep_t, S, mem_len)
        x = (
            self.word_embeddings(input_ids)
            + self.transformer.position_embeddings(position_ids[:, 0])
            + self.transformer.block_position_embeddings(position_ids[:, 1])
        )
        new_mems = [x if mems is None else torch.cat([mems[0], x], dim=1)]
        for i, layer in enumerate(self.transformer.layers):
            attn = layer.attention
            a = layer.input_layernorm(x)
            if mems is not None:
                full = torch.cat([layer.input_layernorm(mems[i]), a], dim=1)  # LN_in applied to the memory too
            else:
                full = a
            qkv = attn.query_key_value(full)  # recomputed over memory + current, [B, M+S, 3h]
            q, k, v = qkv.chunk(3, dim=-1)
            q = attn._split_heads(q[:, mem_len:])
            k, v = attn._split_heads(k), attn._split_heads(v)
            ctx = glm_attention_math(q, k, v, visible)
            ctx = ctx.transpose(1, 2).reshape(B, S, -1)
            x = x + attn.dense(ctx)
            x = x + layer.mlp(layer.post_attention_layernorm(x), "torch")
            new_mems.append(x if mems is None else torch.cat([mems[i + 1], x], dim=1))
        logits = self.lm_logits(self.transformer.final_layernorm(x))
        return logits, new_mems


def model_class(config: GLMConfig) -> type[nn.Module]:
    """The module class of ``config.architecture``: :class:`GLMModel` or :class:`glm_core.chatglm.ChatGLMModel`."""
    if config.architecture == "chatglm":
        from glm_core.chatglm import ChatGLMModel

        return ChatGLMModel
    return GLMModel


def build_model(config: GLMConfig, seed: int | None = None, **kwargs: object) -> GLMModel:
    """A randomly initialised model; with ``seed`` the weights are reproducible across machines.

    Dispatches on ``config.architecture`` (a ChatGLM config builds a :class:`glm_core.chatglm.ChatGLMModel`, which
    serves the same step contract).
    """
    model = model_class(config)(config, **kwargs)  # type: ignore[call-arg]
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
        model.reset_parameters(generator=gen)
    return model
