"""What keeps a long run alive and recoverable: non-finite steps skipped, stop signals turned into a checkpoint.

- **Non-finite steps.** A step whose loss or gradient norm is not finite on any rank (a NaN in the data, an fp16
  overflow) skips the optimizer *and* the learning-rate schedule, as the original does (GLM:train_utils.py:345-381:
  "Found NaN loss, skip backward"; the scheduler steps only ``if not (args.fp16 and optimizer.overflow)``). The loop
  counts it, logs it as ``"skipped": true`` and stops the run (:class:`NonFiniteStepsError`, one line) after
  ``max_skipped_steps`` consecutive ones. The flag is reduced over the ranks together with the step's loss, so every
  rank takes the same decision.
- **Stop signals.** SIGTERM (preemption, ``scancel``, ``docker stop``) and SIGINT (Ctrl-C) set a flag
  (:class:`StopSignals`); the loop finishes the step it is in, every rank agrees on stopping through the same
  reduction, a checkpoint is written and the run ends with :class:`RunInterrupted` (one line, exit status
  ``128 + signal``). A second SIGINT interrupts at once.
- **Valid JSON.** :func:`finite_or_none` turns NaN / inf into ``null``: ``log.jsonl`` never holds ``NaN`` literals.
"""

from __future__ import annotations

import math
import signal
import threading
from types import FrameType
from typing import Any

import torch
from torch import nn

from glm_core.errors import GLMError

DEFAULT_MAX_SKIPPED_STEPS = 10
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

__all__ = [
    "DEFAULT_MAX_SKIPPED_STEPS",
    "NonFiniteStepsError",
    "RunInterrupted",
    "StopSignals",
    "finite_or_none",
    "json_safe",
    "parameters_finite",
]


class NonFiniteStepsError(GLMError):
    """Too many consecutive steps had a non-finite loss or gradient norm: the run diverged."""

    exit_code = 1


class RunInterrupted(GLMError):
    """The run stopped on a signal after writing a checkpoint; ``exit_code`` is ``128 + signal``."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class StopSignals:
    """Within ``with StopSignals() as stop:``, SIGTERM and SIGINT set ``stop.signum`` instead of ending the process.

    Installed only in the main thread (Python delivers signals there); elsewhere it does nothing. The previous
    handlers come back on exit. A second SIGINT raises :class:`KeyboardInterrupt` at once.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


def finite_or_none(value: float | None) -> float | None:
    """``value``, or ``None`` (JSON ``null``) when it is NaN or infinite."""
    if value is None or not math.isfinite(value):
        return None
    return value


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float inside (dicts, lists, tuples) replaced by ``None``."""
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def parameters_finite(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> torch.Tensor:
    """A 0-d float64 tensor on the parameters' device: 1.0 when every local parameter (shard) and, given
    ``optimizer``, every tensor of its state (Adam moments) is finite, else 0.0."""
    tensors = list(model.parameters())
    if optimizer is not None:
        tensors += [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    flags = []
    for tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # FSDP2 DTensor: this rank's shard
        if local.is_floating_point():
            flags.append(torch.isfinite(local.detach()).all().to(tensors[0].device))
    return torch.stack(flags).all().double() if flags else torch.ones((), dtype=torch.float64)
