"""What the loop trains on: the :class:`TrainingTask` protocol and blank-infilling pretraining (spec §5)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from glm_core.model import GLMModel
from training.distributed import model_call, unwrap


# ==================================================================================================== tasks
class TrainingTask(Protocol):
    """What the loop trains on: this rank's micro-batches of a step, and the loss of one micro-batch."""

    def micro_batches(self, step: int, rank: int, world_size: int) -> list[dict[str, Any]]: ...

    def count(self, batch: dict[str, Any]) -> float:
        """What the loss of ``batch`` sums over (Part-B tokens, examples)."""
        ...

    def loss_sum(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        """Summed loss over the micro-batch; ``model`` is called through :func:`model_call`."""
        ...

    def describe(self) -> dict[str, Any]: ...


def part_b_loss(glm: GLMModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The step's loss on a batch :func:`host_checked` has validated: no host sync, nothing to break a graph."""
    return glm.loss(
        batch["input_ids"],
        batch["position_ids"],
        batch["sep"],
        batch["targets"],
        batch["loss_mask"],
        rows=batch["rows"],
        validate=False,
    )


def part_b_rows(loss_mask: Any) -> np.ndarray:
    """Flat indices (into ``B*S``) of the Part-B rows the loss scores, from the sampler's ``loss_mask`` on the host:
    the model then gathers them with a fixed-shape ``index_select`` instead of a data-dependent ``nonzero``."""
    return np.flatnonzero(np.asarray(loss_mask).reshape(-1) > 0).astype(np.int64)


def host_checked(glm: GLMModel, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The batch as host tensors, validated once on the host (:meth:`GLMModel.check_batch`), Part-B rows added."""
    tensors = {k: torch.as_tensor(v) for k, v in batch.items() if k != "lengths"}
    if "rows" not in tensors:
        tensors["rows"] = torch.from_numpy(part_b_rows(tensors["loss_mask"]))
    glm.check_batch(tensors["input_ids"], tensors["position_ids"], tensors["sep"], tensors["loss_mask"])
    return tensors


class PretrainTask:
    """Blank-infilling pretraining on a :class:`~training.sampler.PretrainSampler` (spec §5)."""

    def __init__(self, sampler: Any, micro_batch_size: int, grad_accum: int, world_size: int) -> None:
        self.sampler = sampler
        self.micro_batch_size = micro_batch_size
        self.grad_accum = grad_accum
        self.global_batch_size = micro_batch_size * grad_accum * world_size

    def micro_batches(self, step: int, rank: int, world_size: int) -> list[dict[str, Any]]:
        mine = self.sampler.batch(step, self.global_batch_size, rank, world_size)  # [B_rank, S] arrays
        size = self.micro_batch_size
        micro = [{k: v[i * size : (i + 1) * size] for k, v in mine.items()} for i in range(self.grad_accum)]
        for batch in micro:  # with the batch, where it is built (DataLoader workers too): no nonzero in the step
            batch["rows"] = part_b_rows(batch["loss_mask"])
        return micro

    def count(self, batch: dict[str, Any]) -> float:
        return float(batch["loss_mask"].sum())

    def loss_sum(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        # numpy arrays (built in the loop) or tensors (from DataLoader workers, pinned on CUDA), checked on the host
        host = host_checked(unwrap(model), batch)
        tensors = {k: v.to(device, non_blocking=True) for k, v in host.items()}
        mean = model_call(model, part_b_loss, tensors)
        return mean * self.count(batch)  # spec §5: token CE over Part B; summed here, normalised by the global count

    def describe(self) -> dict[str, Any]:
        return {
            "task": "pretrain",
            "seq_length": self.sampler.seq_length,
            "masking": self.sampler.masking.to_dict(),
            "corpus_tokens": int(len(self.sampler.stream)),
            "seed": self.sampler.seed,
            "objective_group": self.sampler.objective_group,
        }
