"""Data parallelism for the lm-eval models: rank, world size, the device of each process, and lm-eval's collectives.

lm-eval (0.4.13) shards the documents of every task by ``lm.rank`` / ``lm.world_size`` (``Task.build_all_requests``),
pads the ranks to an equal number of requests with ``lm.all_gather``, lets every process score only its own requests,
then collects the per-sample results on rank 0 with ``lm.gather_object`` (``evaluator.py:568-700``). Its ``HFLM`` gets
these from ``accelerate``; the GLM models get them here, from whichever launcher started the processes:

    accelerate launch --num_processes 8 -m lm_eval --model glm-torch --model_args pretrained=glm-tiny ...
    torchrun --nproc_per_node 8 -m lm_eval --model glm-onnx --model_args pretrained=out/glm-tiny-onnx ...

Both set ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``. With ``WORLD_SIZE > 1`` the process group is joined (through
``accelerate.PartialState`` when accelerate is installed, else ``torch.distributed.init_process_group``; NCCL on CUDA,
gloo on CPU; left again at exit) and every process runs on ``cuda:{LOCAL_RANK}`` (for ONNX: the CUDA execution provider's ``device_id``).
torch is reached through the torch backend's module, the only one in this package that imports it. lm-eval's
evaluator itself builds torch tensors for the padding count, so data parallelism needs torch installed, for
``glm-onnx`` too; a single process needs neither torch nor this module's collectives.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

from evaluation.backends.devices import torch_module
from glm_core.errors import ConfigError


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the evaluation processes (``world_size == 1``: a single process, no collectives)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    collective_device: str = "cpu"  # where lm-eval's gather tensors live: the process's GPU under NCCL, else CPU

    @classmethod
    def from_environment(cls, on_cuda: bool) -> ProcessGroup:
        """Join the process group the launcher describes (``WORLD_SIZE`` > 1), or a single process.

        ``on_cuda``: the model runs on CUDA. The collectives use NCCL on the process's GPU when torch itself has
        CUDA, else gloo on the CPU (e.g. ``glm-onnx`` on onnxruntime-gpu beside a CPU build of torch).
        """
        world_size = _env_int("WORLD_SIZE", 1)
        if world_size <= 1:
            return cls()
        local_rank = _env_int("LOCAL_RANK", 0)
        try:
            torch = torch_module()
        except ImportError:
            raise ConfigError(
                f"WORLD_SIZE={world_size}: data-parallel lm-eval needs torch (lm-eval gathers results with "
                "torch.distributed); install torch or run one process"
            ) from None
        dist = torch.distributed
        nccl = on_cuda and torch.cuda.is_available()
        if not dist.is_initialized():
            if nccl:
                torch.cuda.set_device(local_rank)
            try:
                from accelerate import PartialState  # HFLM's route: accelerate picks backend and timeouts
            except ImportError:
                dist.init_process_group(backend="nccl" if nccl else "gloo")
            else:
                PartialState(cpu=not nccl)
            atexit.register(_leave_process_group)
        nccl = dist.get_backend() == "nccl"
        return cls(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=local_rank,
            collective_device=f"cuda:{local_rank}" if nccl else "cpu",
        )

    def device(self, requested: str) -> str:
        """``cuda:{local_rank}`` for a CUDA request when several processes share the machine; else ``requested``."""
        if self.world_size > 1 and requested.startswith("cuda"):
            return f"cuda:{self.local_rank}"
        return requested

    # ------------------------------------------------------------------ lm-eval's collectives (LM API)
    def all_gather(self, tensor: Any) -> Any:
        """Every rank's ``tensor`` concatenated along dim 0 (0-d tensors become one row each), as accelerate does."""
        if self.world_size <= 1:
            return tensor
        torch = torch_module()
        dist = torch.distributed

        local = tensor.reshape(1) if tensor.dim() == 0 else tensor
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts, dim=0)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        """Every rank's ``obj`` on ``dst`` (in rank order), ``None`` elsewhere."""
        if self.world_size <= 1:
            return [obj]
        dist = torch_module().distributed

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)  # works on gloo and NCCL alike
        return gathered if self.rank == dst else None

    def barrier(self) -> None:
        if self.world_size > 1:
            torch_module().distributed.barrier()


def _leave_process_group() -> None:
    """At exit, leave the process group this module joined: a gloo group left to the interpreter's teardown can
    abort the process ("terminate called without an active exception") after every result is written."""
    dist = torch_module().distributed
    if dist.is_initialized():
        dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise ConfigError(f"environment variable {name}={value!r}; expected a non-negative integer")
    return int(value)
