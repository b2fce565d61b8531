"""Optimisation settings of a training run and the learning-rate schedule (spec glm_reference §5)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from glm_core.errors import ConfigError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    """Optimisation settings of one run. ``global_batch_size = micro_batch_size * grad_accum * world_size``."""

    steps: int
    micro_batch_size: int = 8
    grad_accum: int = 1
    lr: float = 4e-4  # spec §5: GLM-Base
    min_lr_ratio: float = 0.1
    warmup_ratio: float = 0.05  # spec §5: warmup 5 % (base) / 4 % (large)
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    clip_grad: float = 1.0
    precision: str = "fp32"
    seed: int = 1234
    log_every: int = 10
    save_every: int = 0  # 0: only at the end
    eval_every: int = 0  # 0: only at the end (when an evaluate callback is given)
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        for name in ("steps", "micro_batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("save_every", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {tuple(PRECISIONS)}, got {self.precision!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0 or not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(
                f"min_lr_ratio must lie in [0, 1] and warmup_ratio in [0, 1), got {self.min_lr_ratio}, {self.warmup_ratio}"
            )
        if self.clip_grad < 0 or self.weight_decay < 0:
            raise ConfigError("clip_grad and weight_decay must be >= 0")

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_ratio * self.steps))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out


@dataclass
class CosineWithWarmup:
    """LR multiplier: linear warmup to 1 over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``.

    A dataclass (not a closure) so ``LambdaLR.state_dict`` stores its plain fields.
    """

    warmup: int
    total: int
    min_ratio: float

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
