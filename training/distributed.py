"""Process group, collectives and the model wrapper that DDP / FSDP hook into."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from glm_core.errors import ConfigError
from glm_core.model import GLMModel


# ==================================================================================================== distributed
@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1), else run as a single process.

    Backend: nccl on CUDA, gloo on CPU. No process is ever launched from here (use ``torchrun``).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device cuda was requested but CUDA is not available")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def all_reduce_sum(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.distributed:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


class ModelCall(nn.Module):
    """Routes every computation on the GLM through ``forward`` so DDP / FSDP hooks see it.

    ``ModelCall(glm)(fn, *args)`` returns ``fn(glm, *args)``. The loop always trains this wrapper (also in a single
    process), so parameter names (``glm.<name>``) and the optimizer state are the same for any number of processes.
    """

    def __init__(self, model: GLMModel) -> None:
        super().__init__()
        self.glm = model

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(self.glm, *args, **kwargs)


def model_call(model: nn.Module, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(glm, *args)`` for a bare :class:`GLMModel` or through its (wrapped) :class:`ModelCall`."""
    if isinstance(model, GLMModel):
        return fn(model, *args, **kwargs)
    return model(fn, *args, **kwargs)


def unwrap(model: nn.Module) -> GLMModel:
    while not isinstance(model, GLMModel):
        if isinstance(model, ModelCall):
            model = model.glm
        elif hasattr(model, "module"):
            model = model.module
        else:
            raise TypeError(f"cannot find the GLMModel inside {type(model).__name__}")
    return model
