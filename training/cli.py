"""Train GLM: blank-infilling pretraining (spec glm_reference §5) and cloze fine-tuning (spec §6.1).

    python -m glm_core.train pretrain --model glm-tiny --from-scratch --corpus corpus.txt --out runs/tiny --steps 1000
    torchrun --nproc-per-node 2 -m glm_core.train pretrain ...      # DDP (gloo on CPU, nccl on CUDA); --fsdp shards
    python -m glm_core.train finetune --model runs/tiny/final --task demo --data-dir evaluation/data --out runs/ft

One loop serves both: AdamW (no weight decay on biases and LayerNorms), linear warmup + cosine decay, gradient
clipping, gradient accumulation, bf16/fp16 autocast (fp16 with a ``torch.amp.GradScaler``), gradient checkpointing,
``--kernels auto|triton|torch``. The loss of a step is normalised by the **global** count (Part-B tokens, or
examples), so 1 process x 2 micro-batches and 2 processes x 1 micro-batch compute the same update.

Checkpoints (``OUT/checkpoints/step_XXXXXXX``) are hub-layout model directories (``save_model``: fp32 safetensors +
``config.json`` + tokenizer files) plus ``train_state.pt`` (optimizer, scheduler, scaler, per-rank RNG states as
tensors, the run's settings; readable with ``torch.load(weights_only=True)``). Each is written to a temporary directory
and renamed into place, so a checkpoint directory is either complete or absent; ``OUT/checkpoints/latest`` names the
newest. ``--resume auto|PATH`` continues exactly: the data of step ``k`` is a pure function of ``(seed, k)``.

Logs: ``OUT/log.jsonl`` (one JSON object per logged step / evaluation) and a tqdm bar. The evaluation hook is a
callback ``evaluate(model) -> dict``; :func:`main` builds it (importing ``evaluation`` only there, DESIGN.md layers).
Errors a user can cause print one line and exit with status 2 before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from glm_core.atomic import make_staging_dir, staged_directory, write_text_atomically
from glm_core.config import PRESETS, GLMConfig
from glm_core.errors import CheckpointError, ConfigError, GLMError
from glm_core.model import KERNEL_CHOICES, GLMModel, build_model

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TRAIN_STATE_FILE = "train_state.pt"
LATEST_FILE = "latest"
LOG_FILE = "log.jsonl"
STATE_FORMAT_VERSION = 1

Evaluate = Callable[[GLMModel], dict[str, Any]]

__all__ = [
    "CosineWithWarmup",
    "DistContext",
    "TrainConfig",
    "TrainResult",
    "TrainingTask",
    "PretrainTask",
    "find_latest_checkpoint",
    "init_distributed",
    "load_train_state",
    "main",
    "train",
]


# ==================================================================================================== settings
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


def _all_reduce_sum(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.distributed:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def _barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


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


def _unwrap(model: nn.Module) -> GLMModel:
    while not isinstance(model, GLMModel):
        if isinstance(model, ModelCall):
            model = model.glm
        elif hasattr(model, "module"):
            model = model.module
        else:
            raise TypeError(f"cannot find the GLMModel inside {type(model).__name__}")
    return model


def _part_b_loss(glm: GLMModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return glm.loss(batch["input_ids"], batch["position_ids"], batch["sep"], batch["targets"], batch["loss_mask"])


class PretrainTask:
    """Blank-infilling pretraining on a :class:`~glm_core.pretrain_data.PretrainSampler` (spec §5)."""

    def __init__(self, sampler: Any, micro_batch_size: int, grad_accum: int, world_size: int) -> None:
        self.sampler = sampler
        self.micro_batch_size = micro_batch_size
        self.grad_accum = grad_accum
        self.global_batch_size = micro_batch_size * grad_accum * world_size

    def micro_batches(self, step: int, rank: int, world_size: int) -> list[dict[str, Any]]:
        mine = self.sampler.batch(step, self.global_batch_size, rank, world_size)  # [B_rank, S] arrays
        size = self.micro_batch_size
        return [{k: v[i * size : (i + 1) * size] for k, v in mine.items()} for i in range(self.grad_accum)]

    def count(self, batch: dict[str, Any]) -> float:
        return float(batch["loss_mask"].sum())

    def loss_sum(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        tensors = {k: torch.from_numpy(v).to(device) for k, v in batch.items() if k != "lengths"}
        mean = model_call(model, _part_b_loss, tensors)
        return mean * self.count(batch)  # spec §5: token CE over Part B; summed here, normalised by the global count

    def describe(self) -> dict[str, Any]:
        return {
            "task": "pretrain",
            "seq_length": self.sampler.seq_length,
            "masking": self.sampler.masking.to_dict(),
            "corpus_tokens": int(len(self.sampler.stream)),
            "seed": self.sampler.seed,
        }


# ==================================================================================================== checkpoints
def find_latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    root = Path(out_dir) / "checkpoints"
    latest = root / LATEST_FILE
    if latest.is_file():
        name = latest.read_text(encoding="utf-8").strip()
        if name and (root / name / TRAIN_STATE_FILE).is_file():
            return root / name
    found = sorted(p for p in root.glob("step_*") if (p / TRAIN_STATE_FILE).is_file()) if root.is_dir() else []
    return found[-1] if found else None


def load_train_state(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(checkpoint) / TRAIN_STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{checkpoint}: not a training checkpoint (no {TRAIN_STATE_FILE})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt or unsafe file
        raise CheckpointError(f"{path}: cannot read the training state ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or state.get("format_version") != STATE_FORMAT_VERSION:
        raise CheckpointError(f"{path}: unknown training-state format; expected format_version {STATE_FORMAT_VERSION}")
    return state


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)


def _gather_rng_states(ctx: DistContext) -> list[dict[str, torch.Tensor]]:
    mine = _rng_state(ctx.device)
    if not ctx.distributed:
        return [mine]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, {k: v.cpu() for k, v in mine.items()})
    return gathered


def _full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Unsharded model and optimizer state (parameter names as keys), on the CPU; a collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _write_checkpoint(
    out_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    meta: dict[str, Any],
    tokenizer: Any,
    ctx: DistContext,
    keep: int,
) -> Path | None:
    """Write ``checkpoints/step_XXXXXXX`` atomically (temp dir + rename); rank 0 writes, every rank takes part."""
    model_state, optim_state = _full_state_dicts(model, optimizer)
    rng_states = _gather_rng_states(ctx)
    final = out_dir / "checkpoints" / f"step_{step:07d}"
    if ctx.is_main:
        glm = _unwrap(model)
        root = final.parent
        root.mkdir(parents=True, exist_ok=True)
        with staged_directory(final) as tmp:  # a rerun of the same step swaps, never leaves a partial directory
            _save_weights(glm.config, model_state, tmp, torch.float32, tokenizer)
            torch.save(
                {
                    "format_version": STATE_FORMAT_VERSION,
                    "step": step,
                    "optimizer": optim_state,
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else {},
                    "rng": rng_states,
                    "world_size": ctx.world_size,
                    "meta_json": json.dumps(meta, sort_keys=True),
                },
                tmp / TRAIN_STATE_FILE,
            )
        write_text_atomically(root / LATEST_FILE, final.name + "\n")
        _prune_checkpoints(root, keep)
    _barrier(ctx)
    return final if ctx.is_main else None


def _save_weights(
    config: GLMConfig, state: dict[str, torch.Tensor], directory: Path, dtype: torch.dtype, tokenizer: Any
) -> None:
    """Hub layout through ``glm_core.checkpoint.save_model`` (+ tokenizer files)."""
    from glm_core.checkpoint import save_model

    with torch.device("meta"):
        holder = GLMModel(config)
    weights = {k.removeprefix("glm."): v.detach().to("cpu") for k, v in state.items()}  # ModelCall's prefix
    holder.load_state_dict(weights, strict=True, assign=True)
    save_model(holder, directory, dtype=dtype)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def _prune_checkpoints(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def publish_model(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    directory: Path,
    dtype: torch.dtype,
    tokenizer: Any,
    ctx: DistContext,
) -> Path | None:
    """Write the final model (hub layout + tokenizer) to ``directory``: files go to a temp dir, then are moved in
    one by one (other files already there, e.g. a model card, stay)."""
    model_state, _ = _full_state_dicts(model, optimizer)
    if not ctx.is_main:
        _barrier(ctx)
        return None
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_staging_dir(directory)
    try:
        _save_weights(_unwrap(model).config, model_state, tmp, dtype, tokenizer)
        if not directory.exists():
            os.replace(tmp, directory)
        else:
            for item in sorted(tmp.iterdir()):
                os.replace(item, directory / item.name)
            tmp.rmdir()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier(ctx)
    return directory


# ==================================================================================================== the loop
@dataclass
class TrainResult:
    steps: int
    final_loss: float
    losses: list[float]
    tokens: float
    wall_s: float
    evaluations: list[dict[str, Any]]
    checkpoint: str | None
    kernels: dict[str, str] = field(default_factory=dict)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; biases and LayerNorm parameters get no weight decay (as the original ``get_params_for_weight_decay``)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith("bias") or "layernorm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def _restore_log(log_path: Path, step: int) -> None:
    """Drop log records written after ``step`` (a resumed run rewrites them)."""
    if not log_path.is_file():
        return
    kept = []
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    write_text_atomically(log_path, "".join(k + "\n" for k in kept))


def train(
    model: GLMModel,
    task: TrainingTask,
    cfg: TrainConfig,
    *,
    out_dir: str | os.PathLike[str],
    ctx: DistContext | None = None,
    evaluate: Evaluate | None = None,
    resume: str | os.PathLike[str] | None = None,
    meta: dict[str, Any] | None = None,
    tokenizer: Any = None,
    fsdp: bool = False,
    final_dir: str | os.PathLike[str] | None = None,
    final_dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> TrainResult:
    """Run ``cfg.steps`` optimisation steps of ``task`` on ``model``; see the module docstring.

    ``evaluate(model)`` runs on rank 0 every ``cfg.eval_every`` steps and at the end, in eval mode under
    ``torch.no_grad``, with the training RNG state saved and restored around it (so it cannot change the run).
    """
    ctx = ctx or DistContext()
    out = Path(out_dir)
    meta = dict(meta or {})
    meta.update({"train": cfg.to_dict(), "task": task.describe(), "model_config": model.config.to_dict()})
    model.to(ctx.device)
    model.train()

    wrapped: nn.Module = ModelCall(model)
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        # GLMModel runs a layer through _layer_forward (never GLMLayer.__call__), so the units FSDP can hook are the
        # attention and MLP modules; LayerNorms, embeddings and position tables belong to the root unit.
        for layer in model.transformer.layers:
            fully_shard(layer.attention)
            fully_shard(layer.mlp)
        fully_shard(wrapped)
    elif ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(wrapped, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)

    optimizer = build_optimizer(wrapped, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, CosineWithWarmup(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    )
    scaler = torch.amp.GradScaler(ctx.device.type) if cfg.precision == "fp16" else None

    start_step = 0
    if resume is not None:
        start_step = _resume(Path(resume), wrapped, optimizer, scheduler, scaler, ctx)
    else:
        torch.manual_seed(cfg.seed + ctx.rank)  # dropout streams differ per rank, reproducibly

    log_path = out / LOG_FILE
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            _restore_log(log_path, start_step)
        elif log_path.exists():
            log_path.unlink()
    _barrier(ctx)

    losses: list[float] = []
    evaluations: list[dict[str, Any]] = []
    tokens_seen = 0.0
    started = time.perf_counter()
    checkpoint: Path | None = None
    kernels_used: dict[str, str] = {}
    bar = _progress(start_step, cfg.steps, progress and ctx.is_main)
    for step in range(start_step, cfg.steps):
        micro = task.micro_batches(step, ctx.rank, ctx.world_size)
        local_count = sum(task.count(b) for b in micro)
        global_count = float(_all_reduce_sum(torch.tensor(local_count, dtype=torch.float64), ctx))
        if global_count <= 0:
            raise ConfigError(f"step {step}: the global batch has nothing to train on (no Part-B tokens)")
        loss_total = torch.zeros((), dtype=torch.float64)
        optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(micro):
            sync = i == len(micro) - 1
            no_sync = wrapped.no_sync() if (not sync and hasattr(wrapped, "no_sync")) else contextlib.nullcontext()
            with no_sync:
                with _autocast(ctx.device, cfg.precision):
                    loss_sum = task.loss_sum(wrapped, batch, ctx.device)
                # DDP averages gradients over ranks: scale by world_size so the update is sum / global count
                scaled = loss_sum * (ctx.world_size / global_count)
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            loss_total += loss_sum.detach().double().cpu()
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = _clip(wrapped, cfg.clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        kernels_used = dict(model.kernels_used)
        step_loss = float(_all_reduce_sum(loss_total, ctx)) / global_count
        losses.append(step_loss)
        tokens_seen += global_count
        done = step + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
        if ctx.is_main and (done % cfg.log_every == 0 or done == cfg.steps or done == start_step + 1):
            record = {
                "step": done,
                "loss": round(step_loss, 6),
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": round(grad_norm, 6),
                "count": global_count,
                "elapsed_s": round(time.perf_counter() - started, 3),
            }
            if scaler is not None:
                record["loss_scale"] = float(scaler.get_scale())
            _append_log(log_path, record)
        if evaluate is not None and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps):
            result = _run_evaluation(model, evaluate, ctx, fsdp)
            if result is not None:
                evaluations.append({"step": done, **result})
                _append_log(log_path, {"step": done, "eval": result})
        if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.steps:
            meta_now = {**meta, "step": done}
            checkpoint = _write_checkpoint(
                out, done, wrapped, optimizer, scheduler, scaler, meta_now, tokenizer, ctx, cfg.keep_checkpoints
            )
    if bar is not None:
        bar.close()
    if final_dir is not None:
        publish_model(wrapped, optimizer, Path(final_dir), final_dtype, tokenizer, ctx)
    return TrainResult(
        steps=cfg.steps,
        final_loss=losses[-1] if losses else float("nan"),
        losses=losses,
        tokens=tokens_seen,
        wall_s=time.perf_counter() - started,
        evaluations=evaluations,
        checkpoint=str(checkpoint) if checkpoint else None,
        kernels=kernels_used,
    )


def _clip(model: nn.Module, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP2 DTensor
        norm = norm.full_tensor()
    return float(norm)


def _progress(start: int, total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)


def _append_log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")


def _run_evaluation(model: GLMModel, evaluate: Evaluate, ctx: DistContext, fsdp: bool) -> dict[str, Any] | None:
    if fsdp:
        return None  # parameters are sharded: evaluate the published model instead
    result = None
    if ctx.is_main:
        saved = _rng_state(ctx.device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                result = dict(evaluate(model))
        finally:
            model.train(was_training)
            _set_rng_state(saved, ctx.device)
    _barrier(ctx)
    return result


def _resume(
    checkpoint: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    ctx: DistContext,
) -> int:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    from glm_core.checkpoint import read_hub_state_dict

    state = load_train_state(checkpoint)
    weights = {"glm." + k: v for k, v in read_hub_state_dict(checkpoint).items()}  # ModelCall's parameter names
    set_state_dict(
        model,
        optimizer,
        model_state_dict=weights,
        optim_state_dict=state["optimizer"],
        options=StateDictOptions(full_state_dict=True, strict=True),
    )
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    if len(rng) == ctx.world_size:
        _set_rng_state(rng[ctx.rank], ctx.device)
    else:
        torch.manual_seed(int(state["step"]) * 1000 + ctx.rank)
        if ctx.is_main:
            print(
                f"glm-train: warning: {checkpoint} was written by {len(rng)} process(es), this run has "
                f"{ctx.world_size}: dropout streams are reseeded, the run is not bit-exact",
                file=sys.stderr,
            )
    return int(state["step"])


# ==================================================================================================== CLI
def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="glm-tiny", help="preset name or checkpoint directory (default glm-tiny)")
    p.add_argument(
        "--from-scratch", action="store_true", help="seeded random weights (spec §1.5), not the checkpoint's"
    )
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    p.add_argument("--out", required=True, help="run directory: log.jsonl, checkpoints/, final/")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup-ratio", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.98))
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32")
    p.add_argument("--dropout", type=float, default=None, help="override the three dropout probabilities")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--kernels", choices=KERNEL_CHOICES, default="auto")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--fsdp", action="store_true", help="shard parameters with FSDP (under torchrun)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--keep-checkpoints", type=int, default=2)
    p.add_argument("--resume", default=None, help="'auto' (newest checkpoint in --out) or a checkpoint directory")
    p.add_argument("--final-dir", default=None, help="where the final model goes (default OUT/final)")
    p.add_argument("--final-dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    p.add_argument("--no-eval", action="store_true", help="do not evaluate during or after training")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glm-train",
        description="Pretrain GLM with blank infilling (spec §5) or fine-tune it on cloze tasks (spec §6.1).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python -m glm_core.corpus corpus --out runs/corpus.txt\n"
            "  glm-train pretrain --model glm-tiny --from-scratch --corpus runs/corpus.txt --out runs/tiny \\\n"
            "      --steps 1000 --seq-length 128 --micro-batch-size 16\n"
            "  torchrun --nproc-per-node 2 -m glm_core.train pretrain ...   (DDP; gloo on CPU, nccl on CUDA)\n"
            "  glm-train finetune --model runs/tiny/final --task demo --data-dir evaluation/data --out runs/ft --steps 200"
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("pretrain", help="blank-infilling pretraining on a UTF-8 text corpus")
    _add_common(pre)
    pre.add_argument("--corpus", required=True, help="UTF-8 text, documents separated by blank lines")
    pre.add_argument("--seq-length", type=int, default=512)
    pre.add_argument("--bert-prob", type=float, default=1.0, help="share of token-level [MASK] batches")
    pre.add_argument("--gap-sentence-prob", type=float, default=0.0, help="share of sentence-level [sMASK] batches")
    pre.add_argument("--bert-ratio", type=float, default=0.15)
    pre.add_argument("--gap-sentence-ratio", type=float, default=0.15)
    pre.add_argument("--gpt-min-ratio", type=float, default=0.5)
    pre.add_argument("--gpt-infill-prob", type=float, default=0.5)
    pre.add_argument("--no-shuffle-spans", action="store_true")
    pre.add_argument("--no-task-mask", action="store_true", help="[MASK] for every objective (GLM-Base/Large)")
    pre.add_argument(
        "--block-mask-prob", type=float, default=0.0, help="token objective: Part-B inputs -> [dBLOCK] (10B: 0.1)"
    )
    pre.add_argument(
        "--short-seq-prob", type=float, default=0.0, help="share of batches of shorter sentence-aligned chunks"
    )
    pre.add_argument("--single-span-prob", type=float, default=0.0, help="token objective: one Poisson span per sample")
    pre.add_argument("--eval-tasks", default="demo", help="evaluation tasks run by the eval hook ('' for none)")
    pre.add_argument("--eval-data-dir", default="evaluation/data")
    pre.add_argument("--eval-limit", type=int, default=None, help="examples per evaluation task")
    ft = sub.add_parser(
        "finetune",
        help="cloze fine-tuning: CE over verbalizer / candidate scores (spec §6.1)",
        description=(
            "Cloze fine-tuning (spec §6.1). Tasks: demo; a cloze .jsonl ({text, choices, label}); the SuperGLUE "
            "tasks boolq, cb, multirc, rte, wic (single-token verbalizers, CE), copa (two candidates +eop, CE; "
            "training adds swapped-choice copies), wsc (span1 vs negatives +eop, mean log-prob, loss -score(gold) "
            "+ CE; trains on the label-true examples) and record (passage entities +eop, CE; training: gold plus "
            "at most 9 sampled negatives; evaluation EM/F1), with the evaluation package's patterns."
        ),
    )
    _add_common(ft)
    ft.add_argument(
        "--task",
        required=True,
        help="demo, boolq|cb|copa|multirc|record|rte|wic|wsc (optionally :PATTERN), or a .jsonl",
    )
    ft.add_argument("--data-dir", default="evaluation/data")
    ft.add_argument(
        "--val-file", default=None, help="validation .jsonl for a .jsonl --task (demo: DATA/demo/val.jsonl)"
    )
    ft.add_argument("--train-split", default="train", help="split trained on, for evaluation-package tasks")
    ft.add_argument("--val-split", default="val", help="split evaluated on, for evaluation-package tasks")
    ft.add_argument("--max-length", type=int, default=256)
    ft.add_argument(
        "--append-eop",
        choices=("auto", "yes", "no"),
        default="auto",
        help="end multi-token candidates with eop (SuperGLUE PVPs do, spec §2.4-2)",
    )
    return parser


def _train_config(args: argparse.Namespace, world_size: int, default_lr: float) -> TrainConfig:
    return TrainConfig(
        steps=args.steps,
        micro_batch_size=args.micro_batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr if args.lr is not None else default_lr,
        min_lr_ratio=args.min_lr_ratio,
        warmup_ratio=args.warmup_ratio
        if args.warmup_ratio is not None
        else (0.05 if args.command == "pretrain" else 0.1),
        weight_decay=args.weight_decay,
        betas=tuple(args.betas),
        clip_grad=args.clip_grad,
        precision=args.precision,
        seed=args.seed,
        log_every=args.log_every,
        save_every=args.save_every,
        eval_every=args.eval_every,
        keep_checkpoints=args.keep_checkpoints,
    )


def _model_config(args: argparse.Namespace) -> tuple[GLMConfig, str | None]:
    """The architecture and, unless training from scratch, the checkpoint directory to load."""
    from glm_core.checkpoint import SHIPPED_PRESETS

    name = args.model
    if os.path.isdir(name):
        config = GLMConfig.from_hf_config(name) if os.path.isfile(os.path.join(name, "config.json")) else None
        if config is None:
            raise ConfigError(f"{name}: no config.json; expected a hub-layout checkpoint directory")
        path: str | None = name
    elif name in SHIPPED_PRESETS:
        path = str(SHIPPED_PRESETS[name])
        config = GLMConfig.from_hf_config(path)
    elif name in PRESETS:
        config, path = GLMConfig.from_preset(name, gelu="tanh"), None
        if not args.from_scratch:
            raise ConfigError(
                f"preset {name!r} has no weights in this package; pass --from-scratch or a checkpoint directory"
            )
    else:
        raise ConfigError(
            f"--model {name!r} is neither a checkpoint directory nor a preset ({', '.join(sorted(PRESETS))})"
        )
    if args.dropout is not None:
        if not 0.0 <= args.dropout < 1.0:
            raise ConfigError(f"--dropout must lie in [0, 1), got {args.dropout}")
        config = config.replace(
            embedding_dropout_prob=args.dropout, attention_dropout_prob=args.dropout, output_dropout_prob=args.dropout
        )
    return config, (None if args.from_scratch else path)


def _load_tokenizer(args: argparse.Namespace, weights_dir: str | None) -> Any:
    from glm_core.checkpoint import SHIPPED_PRESETS
    from glm_core.tokenizer import GLMTokenizer

    directory = args.tokenizer or weights_dir
    if directory is None and args.model in SHIPPED_PRESETS:
        directory = str(SHIPPED_PRESETS[args.model])
    if directory is None and os.path.isdir(args.model):
        directory = args.model
    if directory is None:
        raise ConfigError(f"--model {args.model!r} ships no tokenizer; pass --tokenizer DIR")
    return GLMTokenizer.from_pretrained(directory)


def _check_fit(config: GLMConfig, tokenizer: Any, seq_length: int) -> None:
    """A config that does not fit the model is a user error (exit 2), caught before any work."""
    if tokenizer.vocab_size > config.vocab_size:
        raise ConfigError(
            f"tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is {config.vocab_size}; "
            "expected a tokenizer that fits the embedding table"
        )
    if seq_length > config.num_position_rows:
        raise ConfigError(
            f"--seq-length {seq_length} does not fit the model: max_sequence_length is {config.max_sequence_length} "
            f"(positions 0..{config.max_sequence_length}); expected at most {config.num_position_rows}"
        )


def _check_kernels(kernels: str, device: torch.device, precision: str) -> None:
    if kernels != "triton":
        return
    from glm_core.kernels import OPS, resolve_impl

    dtype = PRECISIONS[precision]
    for op in OPS:
        resolve_impl("triton", device, dtype, op)  # raises KernelUnavailableError with the reason


def _resume_path(args: argparse.Namespace) -> Path | None:
    if args.resume is None:
        return None
    if args.resume == "auto":
        found = find_latest_checkpoint(args.out)
        if found is None:
            raise CheckpointError(f"--resume auto: no checkpoint under {args.out}/checkpoints")
        return found
    path = Path(args.resume)
    if not (path / TRAIN_STATE_FILE).is_file():
        raise CheckpointError(
            f"{path}: not a training checkpoint (no {TRAIN_STATE_FILE}); expected OUT/checkpoints/step_N"
        )
    return path


RESUME_MUST_MATCH = ("model_config", "task", "train")
RESUME_MAY_CHANGE = ("log_every", "save_every", "eval_every", "keep_checkpoints")  # bookkeeping, not the run


def _check_resume(path: Path, meta: dict[str, Any]) -> None:
    """The resumed run must be the same run: architecture, data/objective and optimisation settings."""
    stored = json.loads(load_train_state(path)["meta_json"])
    for key in RESUME_MUST_MATCH:
        old, new = stored.get(key), meta.get(key)
        if key == "train" and isinstance(old, dict) and isinstance(new, dict):
            old = {k: v for k, v in old.items() if k not in RESUME_MAY_CHANGE}
            new = {k: v for k, v in new.items() if k not in RESUME_MAY_CHANGE}
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            first = diff[0]
            raise ConfigError(
                f"{path}: cannot resume: {key}.{first} was {old.get(first)!r} in the checkpoint, this run has "
                f"{new.get(first)!r} (differs in: {', '.join(diff[:6])})"
            )
        raise ConfigError(f"{path}: cannot resume: {key} differs from the checkpoint")


EvaluateFactory = Callable[[Any], "Evaluate | None"]


def evaluation_factory(args: argparse.Namespace) -> EvaluateFactory:
    """``tokenizer -> evaluate(model)``: the evaluation package's tasks (``--eval-tasks``) on the model in memory.

    Called from :func:`main` only: ``glm_core`` imports ``evaluation`` nowhere else (DESIGN.md layers). Tasks are read
    once, up front, so bad task data fails before training starts.
    """
    specs = getattr(args, "eval_tasks", "")
    if args.no_eval or not specs:
        return lambda tokenizer: None
    from evaluation.backends.torch import TorchBackend
    from evaluation.runner import evaluate as run_evaluation
    from evaluation.runner import read_tasks
    from evaluation.tasks import expand_task_list

    plan = read_tasks(expand_task_list(specs), Path(args.eval_data_dir), split=None, limit=args.eval_limit)

    def factory(tokenizer: Any) -> Evaluate:
        def evaluate(model: GLMModel) -> dict[str, Any]:
            backend = TorchBackend.from_model(model, tokenizer)
            results = run_evaluation(backend, plan, progress=False)
            return {
                f"{task_id}/{name}": value
                for task_id, entry in results["tasks"].items()
                for name, value in entry["metrics"].items()
            }

        return evaluate

    return factory


TaskLoader = Callable[[str, Any, int, bool], Any]  # (split, tokenizer, max_length, training) -> ClozeSplit
FINETUNE_EVALUATION_TASKS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc")
RECORD_TRAIN_CANDIDATES = 10  # spec §6.1: the gold plus at most 9 negatives per correct answer (dataset.py:806-861)
WSC_TRAIN_NEGATIVES = 9  # the original WSC reader splits longer negative lists into lists of 9 (training only)


def copa_training_examples(examples: Sequence[Any]) -> list[Any]:
    """spec §6.1: the COPA training examples, then a copy of each with ``choice1``/``choice2`` swapped and the label
    flipped (GLM:tasks/superglue/dataset.py:608-620). Training only: evaluation scores the examples as given."""
    mirrored = []
    for ex in examples:
        d = ex.data
        data = {**d, "choice1": d["choice2"], "choice2": d["choice1"], "label": 1 - int(d["label"])}
        mirrored.append(dataclasses.replace(ex, key=f"{ex.key}-swapped", data=data))
    return [*examples, *mirrored]


def wsc_training_examples(examples: Sequence[Any]) -> list[Any]:
    """The original WSC training set under ``--wsc-negative`` (spec §6.1): only the examples whose span1 is the
    pronoun's referent (label true), so that candidate 0 is the gold; more than 9 negatives are split into lists of 9,
    the last one filled up from the start of the list."""
    out = []
    for ex in examples:
        if ex.data["label"] != 1:
            continue
        negatives = list(ex.data["negatives"])
        if len(negatives) <= WSC_TRAIN_NEGATIVES:
            out.append(ex)
            continue
        for i in range(0, len(negatives), WSC_TRAIN_NEGATIVES):
            chunk = negatives[i : i + WSC_TRAIN_NEGATIVES]
            chunk += negatives[: WSC_TRAIN_NEGATIVES - len(chunk)]
            out.append(dataclasses.replace(ex, key=f"{ex.key}-n{i}", data={**ex.data, "negatives": chunk}))
    return out


def record_training_examples(examples: Sequence[Any], rng: np.random.Generator) -> list[Any]:
    """ReCoRD training (spec §6.1, GLM:tasks/superglue/dataset.py:806-861): one example per gold answer whose
    candidates are that answer first, then the passage entities that are no gold answer, cut to
    :data:`RECORD_TRAIN_CANDIDATES` - 1 after a shuffle by ``rng`` when there are more."""
    out = []
    for ex in examples:
        answers = ex.data["answers"]
        others = [e for e in ex.data["entities"] if e not in answers]
        for a, answer in enumerate(answers):
            negatives = list(others)
            if len(negatives) > RECORD_TRAIN_CANDIDATES - 1:
                rng.shuffle(negatives)
                negatives = negatives[: RECORD_TRAIN_CANDIDATES - 1]
            data = {**ex.data, "entities": [answer, *negatives]}
            out.append(dataclasses.replace(ex, key=f"{ex.key}-a{a}", data=data))
    return out


def evaluation_task_loader(args: argparse.Namespace) -> TaskLoader | None:
    """For ``finetune --task NAME`` with a task of the evaluation package: its examples laid out by its own
    patterns, verbalizers and candidates (spec §6.1), as a :class:`~glm_core.finetune.ClozeSplit`. Called from
    :func:`main` only (DESIGN.md layers).

    Single-token tasks give one item per scored unit (MultiRC: per answer option) with the verbalizer ids as
    choices. COPA, WSC and ReCoRD give one sequence per candidate (+eop), built by the task's ``samples``:

    - COPA: CE over the two summed scores; training adds the swapped-choice copies (:func:`copa_training_examples`);
    - WSC: candidate 0 is span1, then the negatives, scored by their mean log-prob (length penalty 1); loss ``mix``;
      training keeps the label-true examples (:func:`wsc_training_examples`); evaluation: accuracy of
      "candidate 0 wins" against the label;
    - ReCoRD: CE over summed scores; training candidates per :func:`record_training_examples` (seeded by
      ``--seed``); evaluation over all passage entities, EM/F1 against the gold answers.
    """
    if getattr(args, "command", "") != "finetune" or args.task == "demo" or args.task.endswith(".jsonl"):
        return None
    from types import SimpleNamespace

    from evaluation import metrics
    from evaluation.tasks import get_task
    from evaluation.tasks.cloze import ClozeClassificationTask, MultipleChoiceTask, encode_candidate
    from glm_core.errors import DataError
    from glm_core.finetune import ClozeItem, ClozeSplit

    task = get_task(args.task)
    if task.name not in FINETUNE_EVALUATION_TASKS:
        raise ConfigError(
            f"fine-tuning task {task.name!r} is not supported; expected demo, a .jsonl file or one of "
            f"{', '.join(FINETUNE_EVALUATION_TASKS)}"
        )

    def wsc_accuracy(items: Sequence[Any], predictions: Sequence[int]) -> dict[str, float]:
        # spec §6.1: the prediction is True iff candidate 0 (span1) wins (GLM:tasks/eval_utils.py:189-190)
        preds = [int(p == 0) for p in predictions]
        return {"accuracy": metrics.accuracy(preds, [item.meta["label"] for item in items])}

    def record_em_f1(items: Sequence[Any], predictions: Sequence[int]) -> dict[str, float]:
        texts = [item.meta["candidates"][p] for item, p in zip(items, predictions, strict=True)]
        return metrics.record_scores(texts, [item.meta["answers"] for item in items])

    def no_label(split: str, key: str) -> DataError:
        return DataError(f"task {task.name!r}, split {split!r}: example {key!r} has no label")

    def candidate_item(ex: Any, ctx: Any, training: bool) -> Any:
        samples = task.samples(ex, ctx)
        choices = [encode_candidate(c, ctx.tokenizer) for c in task.candidates(ex)]
        meta: dict[str, Any] = {}
        if task.name == "wsc":
            label, meta = 0, {"label": int(ex.data["label"])}  # candidate 0 = span1, the gold of training examples
        elif task.name == "record":
            entities, answers = ex.data["entities"], ex.data["answers"]
            # training: the gold answer is candidate 0; evaluation: the first entity that is a gold answer
            label = 0 if training else next((i for i, e in enumerate(entities) if e in answers), 0)
            meta = {"candidates": list(entities), "answers": list(answers)}
        else:
            label = int(ex.data["label"])
        return ClozeItem(samples, choices, label, length_penalty=float(task.length_penalty), meta=meta)

    def load(split: str, tokenizer: Any, max_length: int, training: bool) -> ClozeSplit:
        examples = task.read(Path(args.data_dir), split, None)
        for ex in examples:
            if task.name == "record":
                if not ex.data["answers"]:
                    raise DataError(f"task 'record', split {split!r}: query {ex.key!r} has no gold answers")
            elif isinstance(task, MultipleChoiceTask) and ex.data.get("label") is None:
                raise no_label(split, ex.key)
        if training and task.name == "copa":
            examples = copa_training_examples(examples)
        elif training and task.name == "wsc":
            examples = wsc_training_examples(examples)
        elif training and task.name == "record":
            examples = record_training_examples(examples, np.random.default_rng([args.seed, 0x5EC0]))
        ctx = SimpleNamespace(tokenizer=tokenizer, special=tokenizer.special, max_length=max_length)
        items = []
        for ex in examples:
            if isinstance(task, ClozeClassificationTask):
                samples = task.samples(ex, ctx)
                verbalizers = task.verbalizer_ids(tokenizer)
                per_unit = 1 if all(len(v) == 1 for v in verbalizers) else len(verbalizers)
                for u, (_, gold) in enumerate(task.units(ex)):
                    if gold is None:
                        raise no_label(split, ex.key)
                    items.append(ClozeItem(samples[u * per_unit : (u + 1) * per_unit], verbalizers, int(gold)))
            elif isinstance(task, MultipleChoiceTask):
                items.append(candidate_item(ex, ctx, training))
        loss = "mix" if task.name == "wsc" else "ce"  # spec §6.1: WSC --loss-func mix
        metric = {"wsc": wsc_accuracy, "record": record_em_f1}.get(task.name)
        return ClozeSplit(items, loss=loss, metric=metric)

    return load


def run(
    args: argparse.Namespace,
    evaluate_factory: EvaluateFactory | None = None,
    task_loader: TaskLoader | None = None,
) -> dict[str, Any]:
    ctx = init_distributed(args.device)
    config, weights_dir = _model_config(args)
    tokenizer = _load_tokenizer(args, weights_dir)
    seq_length = args.seq_length if args.command == "pretrain" else args.max_length
    _check_fit(config, tokenizer, seq_length)
    _check_kernels(args.kernels, ctx.device, args.precision)
    if args.micro_batch_size < 1 or args.grad_accum < 1:
        raise ConfigError("--micro-batch-size and --grad-accum must be positive")
    cfg = _train_config(args, ctx.world_size, default_lr=4e-4 if args.command == "pretrain" else 1e-5)

    if args.command == "pretrain":
        from glm_core.pretrain_data import (
            MaskingConfig,
            PretrainSampler,
            dblock_id,
            read_corpus,
            sentence_end_ids,
            tokenize_documents,
        )

        masking = MaskingConfig(
            bert_prob=args.bert_prob,
            gap_sentence_prob=args.gap_sentence_prob,
            bert_ratio=args.bert_ratio,
            gap_sentence_ratio=args.gap_sentence_ratio,
            gpt_min_ratio=args.gpt_min_ratio,
            gpt_infill_prob=args.gpt_infill_prob,
            shuffle_spans=not args.no_shuffle_spans,
            task_mask=not args.no_task_mask,
            block_mask_prob=args.block_mask_prob,
            short_seq_prob=args.short_seq_prob,
            single_span_prob=args.single_span_prob,
        )
        dblock = dblock_id(tokenizer.family, tokenizer.special)
        if masking.block_mask_prob > 0 and dblock is not None and dblock >= config.vocab_size:
            raise ConfigError(
                f"--block-mask-prob needs the [dBLOCK] row {dblock}, but the model's vocab_size is {config.vocab_size}; "
                "expected a model whose embedding table holds it (spec §3.2)"
            )
        stream = tokenize_documents(read_corpus(args.corpus), tokenizer, source=args.corpus)
        sampler = PretrainSampler(
            stream,
            tokenizer.special,
            seq_length,
            masking,
            seed=args.seed,
            sentence_ends=sentence_end_ids(tokenizer),
            dblock=dblock,
        )
        task: TrainingTask = PretrainTask(sampler, args.micro_batch_size, args.grad_accum, ctx.world_size)
        evaluate = evaluate_factory(tokenizer) if evaluate_factory is not None else None
    else:
        from glm_core.finetune import ClozeEvaluator, ClozeTask, encode_examples, load_task_examples

        loss, metric = "ce", None
        if task_loader is not None:  # a task of the evaluation package (SuperGLUE), laid out by its patterns
            train_split = task_loader(args.train_split, tokenizer, seq_length, True)
            train_items, loss = train_split.items, train_split.loss
            val_items = []
            if not args.no_eval:
                val_split = task_loader(args.val_split, tokenizer, seq_length, False)
                val_items, metric = val_split.items, val_split.metric
        else:
            train_examples, val_examples = load_task_examples(args.task, args.data_dir, args.val_file)
            # one scoring mode for train and val (single-token only if every choice of both is one token)
            items = encode_examples(
                [*train_examples, *val_examples], tokenizer, max_length=seq_length, append_eop=args.append_eop
            )
            train_items, val_items = items[: len(train_examples)], items[len(train_examples) :]
        name = Path(args.task).stem if args.task.endswith(".jsonl") else args.task
        task = ClozeTask(
            train_items,
            tokenizer,
            args.micro_batch_size,
            args.grad_accum,
            ctx.world_size,
            seed=args.seed,
            name=name,
            loss=loss,
        )
        evaluate = (
            None if (args.no_eval or not val_items) else ClozeEvaluator(val_items, tokenizer, name=name, metric=metric)
        )

    resume = _resume_path(args)
    meta = {
        "train": cfg.to_dict(),
        "task": task.describe(),
        "model_config": config.to_dict(),
        "world_size": ctx.world_size,
    }
    if resume is not None:
        _check_resume(resume, meta)
    elif find_latest_checkpoint(args.out) is not None:
        raise CheckpointError(
            f"{args.out} already holds checkpoints; pass --resume auto to continue, or choose a new --out"
        )

    model = build_model(
        config, seed=args.seed, kernels=args.kernels, gradient_checkpointing=args.gradient_checkpointing
    )
    if weights_dir is not None and resume is None:
        from glm_core.checkpoint import load_model

        loaded = load_model(weights_dir, config=config, kernels=args.kernels)
        model.load_state_dict(loaded.state_dict())
    final_dir = Path(args.final_dir) if args.final_dir else Path(args.out) / "final"
    result = train(
        model,
        task,
        cfg,
        out_dir=args.out,
        ctx=ctx,
        evaluate=evaluate,
        resume=resume,
        meta=meta,
        tokenizer=tokenizer,
        fsdp=args.fsdp,
        final_dir=final_dir,
        final_dtype={"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.final_dtype],
        progress=not args.quiet,
    )
    summary = {
        "command": args.command,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "first_loss": result.losses[0] if result.losses else None,
        "count": result.tokens,
        "wall_s": round(result.wall_s, 2),
        "world_size": ctx.world_size,
        "kernels": result.kernels,
        "evaluation": result.evaluations[-1] if result.evaluations else None,
        "checkpoint": result.checkpoint,
        "final_dir": str(final_dir),
    }
    if ctx.is_main:
        _append_log(Path(args.out) / LOG_FILE, {"step": result.steps, "summary": summary})
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(args, evaluation_factory(args), evaluation_task_loader(args))
    except GLMError as exc:
        print(f"glm-train: error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
