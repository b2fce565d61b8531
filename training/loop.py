"""The training loop: one loop for pretraining and fine-tuning (see :mod:`training`)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glm_core.atomic import write_text_atomically
from glm_core.errors import ConfigError
from glm_core.model import GLMModel
from training.batches import step_batches
from training.checkpointing import load_checkpoint, publish_model, rng_state, save_checkpoint, set_rng_state
from training.config import PRECISIONS, CosineWithWarmup, TrainConfig
from training.distributed import MODEL_PREFIX, DistContext, all_reduce_sum, barrier, global_sum, wrap_model
from training.reporting import ReportConfig, open_report
from training.tasks import TrainingTask

LOG_FILE = "log.jsonl"
Evaluate = Callable[[GLMModel], dict[str, Any]]


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
    report: ReportConfig | None = None,
    data_workers: int = 0,
) -> TrainResult:
    """Run ``cfg.steps`` optimisation steps of ``task`` on ``model``; see the module docstring.

    ``evaluate(model)`` runs on rank 0 every ``cfg.eval_every`` steps and at the end, in eval mode under
    ``torch.no_grad``, with the training RNG state saved and restored around it (so it cannot change the run).
    ``report`` picks where rank 0 also sends the logged scalars (:mod:`training.reporting`; default: nowhere).
    ``data_workers > 0`` builds the micro-batches in that many DataLoader worker processes, ahead of the loop
    (:mod:`training.batches`); the batches, and so the run, are the same as with 0.
    """
    ctx = ctx or DistContext()
    out = Path(out_dir)
    meta = dict(meta or {})
    meta.update({"train": cfg.to_dict(), "task": task.describe(), "model_config": model.config.to_dict()})
    model.to(ctx.device)
    model.train()

    if ctx.device.type == "cuda":
        # TF32 for the fp32 matmuls and convolutions of training (the bf16/fp16 ones are unaffected)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    wrapped = wrap_model(model, ctx, fsdp)

    optimizer = build_optimizer(wrapped, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, CosineWithWarmup.for_config(cfg))
    scaler = torch.amp.GradScaler(ctx.device.type) if cfg.precision == "fp16" else None

    start_step = 0
    if resume is not None:
        start_step = load_checkpoint(Path(resume), wrapped, optimizer, scheduler, scaler, ctx, cfg.seed)
    else:
        torch.manual_seed(cfg.seed + ctx.rank)  # dropout streams differ per rank, reproducibly

    log_path = out / LOG_FILE
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            _restore_log(log_path, start_step)
        elif log_path.exists():
            log_path.unlink()
    barrier(ctx)
    reporting = open_report(
        report, out, is_main=ctx.is_main, world_size=ctx.world_size, device=ctx.device, model_config=model.config,
        task=task, precision=cfg.precision, start_step=start_step, resumed=resume is not None, meta=meta,
    )  # fmt: skip

    losses: list[float] = []
    evaluations: list[dict[str, Any]] = []
    tokens_seen = 0.0
    started = time.perf_counter()
    checkpoint: Path | None = None
    kernels_used: dict[str, str] = {}
    bar = _progress(start_step, cfg.steps, progress and ctx.is_main)
    batches = step_batches(task, start_step, cfg.steps, ctx, data_workers, seed=cfg.seed)
    for step, micro in zip(range(start_step, cfg.steps), batches, strict=True):
        reporting.start_step()
        local_count = sum(task.count(b) for b in micro)
        global_count = float(global_sum([local_count], ctx)[0])  # on the model's device (NCCL takes no host tensor)
        if global_count <= 0:
            raise ConfigError(f"step {step}: the global batch has nothing to train on (no Part-B tokens)")
        loss_total = torch.zeros((), dtype=torch.float64, device=ctx.device)
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
            loss_total += loss_sum.detach().double()
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
        step_loss = float(all_reduce_sum(loss_total, ctx)) / global_count  # one host sync per step
        losses.append(step_loss)
        tokens_seen += global_count
        reporting.end_step(global_count)
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
            record.update(reporting.rates())  # tokens_per_s, mfu
            append_log(log_path, record)
            reporting.log_step(record)
        if evaluate is not None and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps):
            result = _run_evaluation(model, wrapped, evaluate, ctx, fsdp)
            if result is not None:
                evaluations.append({"step": done, **result})
                append_log(log_path, {"step": done, "eval": result})
                reporting.log_eval(done, result)
        if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.steps:
            meta_now = {**meta, "step": done}
            checkpoint = save_checkpoint(
                out, done, wrapped, optimizer, scheduler, scaler, meta_now, tokenizer, ctx, cfg.keep_checkpoints
            )
    batches.close()
    if bar is not None:
        bar.close()
    reporting.close()
    if final_dir is not None and checkpoint is not None:
        publish_model(checkpoint, Path(final_dir), final_dtype, ctx)
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


def append_log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")


def _run_evaluation(
    model: GLMModel, wrapped: nn.Module, evaluate: Evaluate, ctx: DistContext, fsdp: bool
) -> dict[str, Any] | None:
    """``evaluate`` on rank 0, with the training RNG state saved and restored around it.

    Under FSDP the parameters are sharded across ranks: every rank takes part in gathering the full weights (to the
    host), and rank 0 evaluates an unsharded copy of the model on its device, then frees it.
    """
    subject: GLMModel | None = model
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        subject = None
        if ctx.is_main:
            with torch.device("meta"):
                subject = GLMModel(model.config, kernels=model.kernels)
            subject.load_state_dict(
                {k.removeprefix(MODEL_PREFIX): v for k, v in full.items()}, strict=True, assign=True
            )
            subject.to(ctx.device)
        del full
    result = None
    if ctx.is_main and subject is not None:
        saved = rng_state(ctx.device)
        was_training = subject.training
        subject.eval()
        try:
            with torch.no_grad():
                result = dict(evaluate(subject))
        finally:
            subject.train(was_training)
            set_rng_state(saved, ctx.device)
    barrier(ctx)
    return result
