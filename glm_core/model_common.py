"""What every model of the step contract shares (:class:`glm_core.model.GLMModel`,
:class:`glm_core.chatglm.ChatGLMModel`): the checks of a step's inputs, GLM's ``sep`` visibility rule, the explicit
mask form, the tanh GeLU and the output type. Kept apart so that neither model module imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Union

import torch

from glm_core.config import GLMConfig
from glm_core.errors import InputError

PastKeyValues = tuple[tuple[torch.Tensor, torch.Tensor], ...]
SepLike = Union[int, Sequence[int], torch.Tensor, None]


@dataclass
class GLMOutput:
    logits: torch.Tensor | None  # [B, S, V] float32
    past_key_values: PastKeyValues | None  # per layer (key, value), each [B, H, P+S, D]
    hidden_states: torch.Tensor | None = None  # [B, S, h] after the final LayerNorm
    kernels_used: dict[str, str] = field(default_factory=dict)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # spec §1.4: the original code's tanh approximation (the checkpoints were trained with it)
    return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


def visibility_mask(sep: torch.Tensor, query_len: int, past_len: int) -> torch.Tensor:
    """Boolean ``[B, 1, S, P+S]``: key ``j`` visible to query ``t`` iff ``j < P or j-P < sep or j-P <= t``.

    spec §2.1 / DESIGN.md: ``sep`` is relative to the current chunk; memory columns are always visible.
    """
    device = sep.device
    keys = torch.arange(past_len + query_len, device=device) - past_len  # [P+S], chunk-relative key index
    queries = torch.arange(query_len, device=device)  # [S]
    causal = keys[None, :] <= queries[:, None]  # [S, P+S]; includes every past column (keys < 0)
    prefix = keys[None, None, :] < sep[:, None, None]  # [B, 1, P+S]
    return (causal[None] | prefix)[:, None]  # [B, 1, S, P+S]


def check_step_inputs(
    config: GLMConfig,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor | None,
    sep: SepLike,
    past_len: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate one step's inputs (shapes, dtypes, id and position ranges); returns (position_ids, sep[B]).

    Shared by every model of the step contract (GLM and ChatGLM).
    """
    if input_ids.dim() != 2:
        raise InputError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    B, S = input_ids.shape
    if S == 0:
        raise InputError("input_ids must hold at least one token per row")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise InputError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
    device = input_ids.device
    V = config.vocab_size
    if bool((input_ids < 0).any()) or bool((input_ids >= V).any()):
        raise InputError(f"input_ids must lie in [0, {V}) (vocab_size), got values outside it")
    if position_ids is None:
        # HF default (spec §2.1): positions continue after the past, block positions 0
        pos = torch.arange(past_len, past_len + S, device=device).expand(B, S)
        position_ids = torch.stack([pos, torch.zeros_like(pos)], dim=1)
    if tuple(position_ids.shape) != (B, 2, S):
        raise InputError(f"position_ids must be [batch, 2, seq] = [{B}, 2, {S}], got {tuple(position_ids.shape)}")
    if position_ids.is_floating_point() or position_ids.dtype == torch.bool:
        raise InputError(f"position_ids must be an integer tensor, got {position_ids.dtype}")
    rows = config.num_position_rows
    if bool((position_ids < 0).any()) or bool((position_ids >= rows).any()):
        raise InputError(
            f"position ids must lie in [0, {rows - 1}] (max_sequence_length={config.max_sequence_length}); "
            f"got max {int(position_ids.max())}: the sequence is longer than the position table"
        )
    sep_t = as_sep(sep, B, device)
    if bool((sep_t < 0).any()) or bool((sep_t > S).any()):
        raise InputError(f"sep must lie in [0, {S}] (chunk-relative, spec §2.1), got {sep_t.tolist()}")
    return position_ids.long(), sep_t


def check_past(config: GLMConfig, past: PastKeyValues, batch: int) -> None:
    """Per-layer key/value of shape ``[batch, heads, past, head_dim]``, one pair per layer."""
    cfg = config
    if len(past) != cfg.num_layers:
        raise InputError(f"past_key_values must hold {cfg.num_layers} layers, got {len(past)}")
    P = past[0][0].shape[2]
    expected = (batch, cfg.num_attention_heads, P, cfg.head_dim)
    for i, (k, v) in enumerate(past):
        if tuple(k.shape) != expected or tuple(v.shape) != expected:
            raise InputError(
                f"past_key_values[{i}] must be key/value of shape [batch, heads, past, head_dim] = {expected}, "
                f"got {tuple(k.shape)} / {tuple(v.shape)}"
            )


def as_sep(sep: SepLike, batch: int, device: torch.device) -> torch.Tensor:
    """Normalise ``sep`` to int64 ``[B]``: a scalar is shared by the batch (spec §2.1 forms 1 and 2)."""
    if sep is None:
        return torch.zeros(batch, dtype=torch.long, device=device)
    if isinstance(sep, torch.Tensor):
        t = sep.to(device=device, dtype=torch.long)
    else:
        try:
            t = torch.as_tensor(sep, dtype=torch.long, device=device)
        except (TypeError, ValueError) as exc:
            raise InputError(f"sep must be an int or a sequence of {batch} ints, got {sep!r}") from exc
    if t.dim() == 0:
        return t.expand(batch).clone()
    t = t.reshape(-1)
    if t.numel() != batch:
        raise InputError(f"sep must hold one value per batch row ({batch}), got {t.numel()}")
    return t


def explicit_mask(mask: torch.Tensor, batch: int, seq: int, past_len: int) -> torch.Tensor:
    """An explicit 0/1 mask ``[B|1, 1, S, K]`` -> bool ``[B, 1, S, P+S]`` (last P+S columns, spec §2.1 form 3)."""
    total = past_len + seq
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != seq or mask.shape[-1] < total:
        raise InputError(f"attention_mask must be [batch, 1, {seq}, >= {total}], got {tuple(mask.shape)}")
    if mask.shape[0] not in (1, batch):
        raise InputError(f"attention_mask batch must be 1 or {batch}, got {mask.shape[0]}")
    return mask[..., -total:] > 0.5
