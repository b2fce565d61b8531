"""This rank's micro-batches, step after step: built in the loop, or ahead of it in DataLoader worker processes.

A task's batches are a pure function of ``(seed, step)`` (:mod:`training.sampler`), so which process builds step
``k`` changes nothing: :func:`step_batches` with ``workers=0`` calls ``task.micro_batches`` in the loop, with
``workers > 0`` a :class:`torch.utils.data.DataLoader` over the steps ``start .. stop - 1`` has its workers build them
(each step once, handed back in step order, ``prefetch`` steps ahead per worker) as tensors, pinned when the run is on
CUDA. A resumed run starts the steps at its checkpoint's step; no data-loader state is saved.

Workers are forked (where the platform can), so they share the parent's memory-mapped token stream instead of
receiving a pickled copy. The DataLoader draws its worker seed from a private generator: the run's global torch RNG
(dropout) is the same with and without workers.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Generator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from glm_core.errors import ConfigError
from training.distributed import DistContext
from training.tasks import TrainingTask

__all__ = ["StepDataset", "step_batches"]

DEFAULT_PREFETCH = 2  # steps built ahead per worker


class StepDataset(Dataset[list[dict[str, Any]]]):
    """Item ``step``: rank ``rank``'s micro-batches of that step, their arrays as tensors."""

    def __init__(self, task: TrainingTask, rank: int, world_size: int) -> None:
        self.task = task
        self.rank = rank
        self.world_size = world_size

    def __getitem__(self, step: int) -> list[dict[str, Any]]:
        micro = self.task.micro_batches(int(step), self.rank, self.world_size)
        return [{k: _as_tensor(v) for k, v in batch.items()} for batch in micro]


def _as_tensor(value: Any) -> Any:
    return torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value


def _as_is(item: Any) -> Any:
    return item


def _ignore_stop_signals(worker_id: int) -> None:
    """Workers leave SIGTERM / SIGINT to the main process, which finishes its step and saves a checkpoint
    (:mod:`training.guard`): ``torchrun``, ``scancel`` and Ctrl-C signal the whole process group, and a worker dying
    on it would fail the main process's next batch first. The main process stops its workers itself; a worker whose
    parent is gone exits on its own (DataLoader's watchdog)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def step_batches(
    task: TrainingTask,
    start: int,
    stop: int,
    ctx: DistContext,
    workers: int = 0,
    *,
    seed: int = 0,
    prefetch: int = DEFAULT_PREFETCH,
) -> Generator[list[dict[str, Any]], None, None]:
    """The micro-batches of steps ``start .. stop - 1`` for ``ctx``'s rank, in order (see the module docstring).

    Close the generator (``.close()``) when stopping early: that stops the workers.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"data workers must be an integer >= 0, got {workers!r}")
    if workers == 0:
        return (task.micro_batches(step, ctx.rank, ctx.world_size) for step in range(start, stop))
    loader = DataLoader(
        StepDataset(task, ctx.rank, ctx.world_size),
        batch_size=None,
        sampler=range(start, stop),
        num_workers=workers,
        collate_fn=_as_is,
        pin_memory=ctx.device.type == "cuda" and torch.cuda.is_available(),
        prefetch_factor=prefetch,
        generator=torch.Generator().manual_seed(seed),  # not the global RNG: dropout draws stay those of workers=0
        multiprocessing_context="fork" if "fork" in multiprocessing.get_all_start_methods() else None,
        worker_init_fn=_ignore_stop_signals,
    )
    return _from_loader(loader)


def _from_loader(loader: DataLoader[Any]) -> Generator[list[dict[str, Any]], None, None]:
    iterator = iter(loader)  # the workers start here, at the first step asked for
    try:
        yield from iterator
    finally:
        del iterator  # stops the workers
