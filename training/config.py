"""Optimisation settings of a training run and the learning-rate schedule (spec glm_reference §5)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from glm_core.errors import ConfigError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DECAY_STYLES = ("cosine", "linear")


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
    save_every: int = 1000  # steps between checkpoints (0: by time / at the end only)
    save_every_minutes: float = 30.0  # minutes between checkpoints (0: by steps only); the first that is due
    eval_every: int = 0  # 0: only at the end (when an evaluate callback is given)
    keep_checkpoints: int = 2
    lr_decay_steps: int | None = None  # the decay ends here (then the floor); None: at ``steps``
    lr_decay_style: str = "cosine"  # cosine (pretraining) or linear (the original's fine-tuning)
    max_skipped_steps: int = 10  # consecutive non-finite steps that stop the run

    def __post_init__(self) -> None:
        for name in ("steps", "micro_batch_size", "grad_accum", "log_every", "keep_checkpoints", "max_skipped_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("save_every", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        decay = self.lr_decay_steps
        if decay is not None and (isinstance(decay, bool) or not isinstance(decay, int) or decay < 1):
            raise ConfigError(f"lr_decay_steps must be a positive integer (or None: steps), got {decay!r}")
        if self.lr_decay_style not in DECAY_STYLES:
            raise ConfigError(f"lr_decay_style must be one of {DECAY_STYLES}, got {self.lr_decay_style!r}")
        if not self.save_every_minutes >= 0 or not self.eps > 0:
            raise ConfigError(f"save_every_minutes must be >= 0 and eps > 0, got {self.save_every_minutes}, {self.eps}")
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
    def decay_steps(self) -> int:
        """The step at which the cosine decay reaches the floor: ``lr_decay_steps``, by default ``steps``.

        As the original's ``--lr-decay-iters`` (GLM:train_utils.py:223-226: ``lr_decay_iters`` if given, else
        ``train_iters``); the decay may end before the run does, and the rate then stays at the floor.
        """
        return self.steps if self.lr_decay_steps is None else self.lr_decay_steps

    @property
    def warmup_steps(self) -> int:
        """``warmup_ratio`` of :attr:`decay_steps`, as the original's ``warmup_iter = args.warmup * num_iters`` with
        ``num_iters`` the decay iterations (GLM:train_utils.py:231); with the default that is ``steps``."""
        return int(round(self.warmup_ratio * self.decay_steps))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out


@dataclass
class CosineWithWarmup:
    """LR multiplier: linear warmup to 1 over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``.

    ``total`` is where the decay ends (:attr:`TrainConfig.decay_steps`, ``--lr-decay-iters``), which may come before
    the last training step: later steps stay at ``min_ratio``, as the original's cosine clamps its progress with
    ``min(1.0, ...)`` (GLM:learning_rates.py:48-51, ``end_iter = num_iters - warmup_iter`` from
    GLM:train_utils.py:231-235). A dataclass (not a closure) so ``LambdaLR.state_dict`` stores its plain fields.

    ``style="linear"`` decays linearly to ``min_ratio`` at ``total`` instead (the original's ``--lr-decay-style
    linear`` of every SuperGLUE recipe, GLM:learning_rates.py:44-46 with ``decay_ratio = 1 / --lr-decay-ratio``:
    ``lr * (1 - (1 - min_ratio) * progress)``); the original does not clamp it past ``total``, this one holds the
    floor as the cosine does.
    """

    warmup: int
    total: int
    min_ratio: float
    style: str = "cosine"

    @classmethod
    def for_config(cls, cfg: TrainConfig) -> CosineWithWarmup:
        """The schedule of a run: warmup ``cfg.warmup_steps``, decay ending at ``cfg.decay_steps``."""
        return cls(cfg.warmup_steps, cfg.decay_steps, cfg.min_lr_ratio, cfg.lr_decay_style)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        if self.style == "linear":
            return 1.0 - (1.0 - self.min_ratio) * progress
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
