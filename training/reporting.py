"""Where a run's scalars go besides ``OUT/log.jsonl``: TensorBoard, Weights & Biases or nowhere (``--report-to``).

``OUT/log.jsonl`` stays the record; a :class:`Reporter` mirrors its step records (loss, lr, grad norm, tokens/s, MFU,
loss scale) and its evaluation records (one scalar per metric, ``eval/<task>/<metric>``). Only rank 0 reports.

Throughput: ``tokens_per_s`` is the loop's count (Part-B tokens when pretraining, examples when fine-tuning) per
second of training since the last logged step; evaluation and checkpoint writing are not counted as training time.
MFU (model FLOPs utilisation) is ``flops_per_token(config, T) * positions_per_s / (peak * world_size)``: every input
position costs the model the same FLOPs whether it carries a loss or not, so it counts the positions the model ran
on (``global_batch_size * seq_length`` a step). It is reported for pretraining only (fine-tuning batches have no
fixed length), and only where the peak is known: ``--peak-tflops``, or the CUDA table :data:`PEAK_TFLOPS`; on a CPU
without ``--peak-tflops`` there is no MFU.
"""

from __future__ import annotations

import importlib.util
import json
import math
import netrc
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from glm_core.config import GLMConfig
from glm_core.errors import ConfigError

REPORT_BACKENDS = ("tensorboard", "wandb", "none")
TENSORBOARD_DIR = "tensorboard"
WANDB_DEFAULT_PROJECT = "glm-harness"
WANDB_NO_KEY_MODES = ("offline", "disabled", "dryrun")

# Dense peak TFLOP/s of one device (datasheets; no sparsity): (name fragment, 16-bit, TF32, FP32 without tensor
# cores). The first fragment found in torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_TFLOPS: tuple[tuple[str, float, float, float], ...] = (
    ("H200 NVL", 835.0, 417.5, 60.0),
    ("H200", 989.0, 494.5, 67.0),
    ("H100 NVL", 835.0, 417.5, 60.0),
    ("H100 PCIe", 756.0, 378.0, 51.0),
    ("H100", 989.0, 494.5, 67.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0, 156.0, 19.5),
)


# ==================================================================================================== FLOPs
def non_embedding_parameters(config: GLMConfig) -> int:
    """N of :func:`flops_per_token`: the transformer layers (``12h^2 + 13h`` each) and the final LayerNorm (``2h``).

    Left out: the word embeddings (also the tied LM head) and the two position tables.
    """
    h = config.hidden_size
    return config.num_layers * (12 * h * h + 13 * h) + 2 * h


def flops_per_token(config: GLMConfig, seq_length: int) -> float:
    """Model FLOPs of training on one input position: ``6 N + 12 L h T`` (forward + backward).

    ``N`` is the **non-embedding** parameter count (:func:`non_embedding_parameters`): each of its weights costs a
    multiply-add (2 FLOPs) forward and twice that backward, hence ``6 N``. ``12 L h T`` is attention over a context
    of ``T = seq_length`` positions: ``Q K^T`` and ``softmax(.) V`` cost ``2 h T`` FLOPs each per layer forward,
    ``4 L h T`` in all, times 3 for forward + backward. Not counted: the tied LM head (``6 V h``), embedding look-ups,
    LayerNorms, softmax and GeLU, and recomputation under gradient checkpointing (MFU counts the model's FLOPs, not
    the hardware's).
    """
    n = non_embedding_parameters(config)
    return float(6 * n + 12 * config.num_layers * config.hidden_size * seq_length)


def _tf32_matmuls() -> bool:
    return bool(torch.backends.cuda.matmul.allow_tf32)


def peak_flops(device: torch.device, precision: str, peak_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device for ``precision``: ``peak_tflops`` when given, else the :data:`PEAK_TFLOPS` entry of
    the CUDA card (16-bit for bf16/fp16; fp32 is TF32 when ``torch.backends.cuda.matmul.allow_tf32``, else plain
    FP32); ``None`` (no MFU) on a CPU or an unknown card."""
    if peak_tflops is not None:
        return peak_tflops * 1e12
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, half, tf32, fp32 in PEAK_TFLOPS:
        if fragment in name:
            if precision in ("bf16", "fp16"):
                return half * 1e12
            return (tf32 if _tf32_matmuls() else fp32) * 1e12
    return None


# ==================================================================================================== backends
def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def default_backend() -> str:
    """``tensorboard`` when the package is installed, else ``none``."""
    return "tensorboard" if _installed("tensorboard") else "none"


def _wandb_login_on_file() -> bool:
    """``wandb login`` stores the key in ``~/.netrc`` under the API host."""
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def check_backend(backend: str) -> None:
    """Raise :class:`ConfigError` unless ``backend`` can run here (package installed; wandb also configured)."""
    if backend not in REPORT_BACKENDS:
        raise ConfigError(f"--report-to must be one of {', '.join(REPORT_BACKENDS)}, got {backend!r}")
    if backend == "tensorboard":
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                f"--report-to tensorboard: the tensorboard package is not installed ({exc}); "
                "pip install 'glm-harness[train]', or pass --report-to none"
            ) from None
    elif backend == "wandb":
        if not _installed("wandb"):
            raise ConfigError("--report-to wandb: the wandb package is not installed; pip install wandb")
        mode = os.environ.get("WANDB_MODE", "").strip().lower()
        if mode not in WANDB_NO_KEY_MODES and not os.environ.get("WANDB_API_KEY") and not _wandb_login_on_file():
            raise ConfigError(
                "--report-to wandb: wandb is not configured; set WANDB_API_KEY (or run `wandb login`), "
                "or WANDB_MODE=offline"
            )


@dataclass(frozen=True)
class ReportConfig:
    """What ``--report-to`` and its options ask for; constructing one checks that the backend can run here."""

    backend: str = "none"
    peak_tflops: float | None = None  # peak of one device, for MFU
    project: str | None = None  # wandb project (default $WANDB_PROJECT, else glm-harness)
    run_name: str | None = None  # wandb run name (default $WANDB_NAME, else the name of OUT)

    def __post_init__(self) -> None:
        check_backend(self.backend)
        if self.peak_tflops is not None and not (math.isfinite(self.peak_tflops) and self.peak_tflops > 0):
            raise ConfigError(f"--peak-tflops must be a positive number, got {self.peak_tflops}")


class Reporter:
    """A sink for scalars keyed by step; this base class drops them (``--report-to none``, ranks other than 0)."""

    def scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardReporter(Reporter):
    """Event files under ``OUT/tensorboard/``; a resumed run purges the events after its starting step."""

    def __init__(self, out: Path, start_step: int, resumed: bool, meta: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / TENSORBOARD_DIR), purge_step=start_step + 1 if resumed else None)
        if not resumed:
            self.writer.add_text("run/config", "```\n" + json.dumps(meta, indent=2, sort_keys=True) + "\n```", 0)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # as durable as log.jsonl: a crashed run keeps what it logged

    def close(self) -> None:
        self.writer.close()


class WandbReporter(Reporter):
    """A Weights & Biases run whose files live under ``OUT/wandb/`` (offline runs included: ``wandb sync`` them)."""

    def __init__(self, out: Path, config: ReportConfig, meta: dict[str, Any]) -> None:
        import wandb

        self.run = wandb.init(
            project=config.project or os.environ.get("WANDB_PROJECT") or WANDB_DEFAULT_PROJECT,
            name=config.run_name or os.environ.get("WANDB_NAME") or out.resolve().name,
            dir=str(out),
            config=meta,
        )

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


# ==================================================================================================== the loop's side
STEP_SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "loss_scale")


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}/{key}", item, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        out[prefix] = float(value)


class TrainingReport:
    """What :func:`training.loop.train` reports through: the throughput meter and the rank's :class:`Reporter`."""

    def __init__(
        self,
        reporter: Reporter,
        *,
        positions_per_step: float | None = None,
        flops_per_position: float | None = None,
        peak: float | None = None,
    ) -> None:
        self.reporter = reporter
        self.positions_per_step = positions_per_step
        self.flops_per_position = flops_per_position
        self.peak = peak
        self._count = 0.0
        self._steps = 0
        self._seconds = 0.0
        self._started: float | None = None

    def start_step(self) -> None:
        self._started = time.perf_counter()

    def end_step(self, count: float) -> None:
        if self._started is not None:
            self._seconds += time.perf_counter() - self._started
            self._started = None
        self._count += count
        self._steps += 1

    def rates(self) -> dict[str, float]:
        """``tokens_per_s`` and (where known) ``mfu`` since the last call; starts the next interval."""
        seconds = max(self._seconds, 1e-9)
        out = {"tokens_per_s": round(self._count / seconds, 3)}
        if self.positions_per_step and self.flops_per_position and self.peak:
            achieved = self._steps * self.positions_per_step * self.flops_per_position / seconds
            out["mfu"] = float(f"{achieved / self.peak:.6g}")
        self._count, self._steps, self._seconds = 0.0, 0, 0.0
        return out

    def log_step(self, record: dict[str, Any]) -> None:
        values = {f"train/{k}": float(record[k]) for k in STEP_SCALARS if record.get(k) is not None}
        self.reporter.scalars(values, int(record["step"]))

    def log_eval(self, step: int, result: dict[str, Any]) -> None:
        values: dict[str, float] = {}
        _flatten("eval", result, values)
        if values:
            self.reporter.scalars(values, step)

    def close(self) -> None:
        self.reporter.close()


def open_report(
    config: ReportConfig | None,
    out: Path,
    *,
    is_main: bool,
    world_size: int,
    device: torch.device,
    model_config: GLMConfig,
    task: Any,
    precision: str,
    start_step: int,
    resumed: bool,
    meta: dict[str, Any],
) -> TrainingReport:
    """The run's :class:`TrainingReport`: the backend of ``config`` on rank 0 (a silent one elsewhere), and MFU's
    terms when the task runs fixed-length batches (``seq_length`` in ``task.describe()``, ``global_batch_size``)."""
    config = config or ReportConfig()
    reporter: Reporter = Reporter()
    if is_main and config.backend == "tensorboard":
        reporter = TensorBoardReporter(out, start_step, resumed, meta)
    elif is_main and config.backend == "wandb":
        reporter = WandbReporter(out, config, meta)
    seq_length = task.describe().get("seq_length")
    batch = getattr(task, "global_batch_size", None)
    peak = peak_flops(device, precision, config.peak_tflops)
    if not (seq_length and batch and peak):
        return TrainingReport(reporter)
    return TrainingReport(
        reporter,
        positions_per_step=float(batch * seq_length),
        flops_per_position=flops_per_token(model_config, seq_length),
        peak=peak * world_size,
    )
