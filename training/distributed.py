"""Process group, collectives and the model wrapper that DDP / FSDP hook into."""

from __future__ import annotations

import datetime
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


DEFAULT_TIMEOUT_MINUTES = 30.0


def init_distributed(device: str = "auto", timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> DistContext:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1), else run as a single process.

    Backend: nccl on CUDA, gloo on CPU. No process is ever launched from here (use ``torchrun``). Every collective
    (barriers included: the other ranks wait at one while rank 0 evaluates or exports) fails after
    ``timeout_minutes`` instead of the backend's own default.
    """
    if not timeout_minutes > 0:
        raise ConfigError(f"the collective timeout must be > 0 minutes, got {timeout_minutes}")
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
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes)
        )
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


class CollectiveDeviceError(RuntimeError):
    """A collective was given a tensor that is not on the process group's device (NCCL accepts CUDA tensors only)."""


def all_reduce_sum(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``value`` over the ranks, in place. ``value`` must live on ``ctx.device``, the model's device.

    NCCL rejects host tensors; the check runs for every backend (gloo accepts both), so a host tensor in a collective
    fails on a CPU run exactly as it would on GPUs, instead of only at step 0 of the first multi-GPU run.
    """
    if value.device != ctx.device:
        raise CollectiveDeviceError(
            f"all_reduce on a tensor on {value.device}, but the process group runs on {ctx.device}: "
            "collectives take tensors on the model's device"
        )
    if ctx.distributed:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def global_sum(values: list[float | torch.Tensor], ctx: DistContext) -> torch.Tensor:
    """One float64 tensor ``[len(values)]`` on ``ctx.device``, summed over the ranks by a single all-reduce."""
    local = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=ctx.device).reshape(()) for v in values])
    return all_reduce_sum(local, ctx)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier(device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def wrap_model(model: GLMModel, ctx: DistContext, fsdp: bool, precision: str = "fp32") -> nn.Module:
    """The module the loop trains: :class:`ModelCall` around ``model``, sharded with FSDP or replicated with DDP.

    ``model`` must already be on ``ctx.device``. FSDP shards every whole layer (:func:`fsdp_units`) and the root; with
    ``precision="bf16"`` the layers compute in bf16 on fp32 master weights and reduce the gradients in fp32
    (:func:`fsdp_mixed_precision`). FSDP2 (``fully_shard``) where torch has it, FSDP1 only where it does not.
    """
    wrapped: nn.Module = ModelCall(model)
    if fsdp:
        wrapped = shard_model(wrapped, precision)
    elif ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(wrapped, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    return wrapped


def fsdp_units(model: GLMModel) -> list[nn.Module]:
    """The modules sharded as one unit each, root excluded: every whole :class:`~glm_core.model.GLMLayer` (its
    weights are gathered once per layer, its gradients reduced once); embeddings and the final LayerNorm stay with
    the root unit."""
    return list(model.transformer.layers)


def fsdp_mixed_precision(precision: str) -> dict[str, torch.dtype] | None:
    """FSDP's dtypes for a run's ``precision``: bf16 parameters for the compute, fp32 gradient reduction; ``None``
    (everything fp32, or autocast alone decides) otherwise."""
    if precision != "bf16":
        return None
    return {"param_dtype": torch.bfloat16, "reduce_dtype": torch.float32}


def shard_model(wrapped: nn.Module, precision: str) -> nn.Module:
    """FSDP2 ``fully_shard`` per layer, then the root; FSDP1 with one unit per layer where FSDP2 is missing."""
    glm = unwrap(wrapped)
    dtypes = fsdp_mixed_precision(precision)
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:  # torch < 2.6: FSDP1 only
        return _shard_fsdp1(wrapped, glm, dtypes)
    kwargs: dict[str, Any] = {}
    if dtypes is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(**dtypes)
    for unit in fsdp_units(glm):
        fully_shard(unit, **kwargs)
    fully_shard(wrapped, **kwargs)
    return wrapped


def _shard_fsdp1(wrapped: nn.Module, glm: GLMModel, dtypes: dict[str, torch.dtype] | None) -> nn.Module:
    from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    layer_type = type(fsdp_units(glm)[0]) if fsdp_units(glm) else nn.Module
    mixed = MixedPrecision(**dtypes) if dtypes is not None else None
    return FullyShardedDataParallel(
        wrapped, auto_wrap_policy=ModuleWrapPolicy({layer_type}), mixed_precision=mixed, use_orig_params=True
    )


MODEL_PREFIX = "glm."  # ModelCall's parameter names: "glm." + the GLMModel's


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
