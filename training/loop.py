"""The training loop: one loop for pretraining and fine-tuning (see :mod:`training`)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glm_core.atomic import write_text_atomically
from glm_core.errors import CheckpointError, ConfigError
from glm_core.model import GLMModel
from training.batches import step_batches
from training.checkpointing import load_checkpoint, publish_model, rng_state, save_checkpoint, set_rng_state
from training.config import PRECISIONS, CosineWithWarmup, TrainConfig
from training.distributed import MODEL_PREFIX, DistContext, all_reduce_sum, barrier, global_sum, wrap_model
from training.guard import (
    NonFiniteStepsError,
    RunInterrupted,
    StopSignals,
    finite_or_none,
    json_safe,
    parameters_finite,
)
from training.reporting import ReportConfig, open_report
from training.tasks import TrainingTask

LOG_FILE = "log.jsonl"
Evaluate = Callable[[GLMModel], dict[str, Any]]
OnEvaluation = Callable[[int, dict[str, Any], GLMModel], None]


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
    skipped_steps: int = 0


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; biases and LayerNorm parameters get no weight decay (as the original ``get_params_for_weight_decay``).

    The update runs as one fused kernel per dtype on CUDA (``fused=True``), as multi-tensor ``foreach`` kernels
    elsewhere: the same AdamW, without a launch (or a Python loop) per parameter.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith("bias") or "layernorm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    on_cuda = all(p.device.type == "cuda" for p in decay + no_decay) and bool(decay + no_decay)
    speed = {"fused": True} if on_cuda else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **speed)


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
    record: dict[str, Any] | None = None,
    on_evaluation: OnEvaluation | None = None,
) -> TrainResult:
    """Run ``cfg.steps`` optimisation steps of ``task`` on ``model``; see the module docstring.

    ``evaluate(model)`` runs on rank 0 every ``cfg.eval_every`` steps and at the end, in eval mode under
    ``torch.no_grad``, with the training RNG state saved and restored around it (so it cannot change the run).
    ``report`` picks where rank 0 also sends the logged scalars (:mod:`training.reporting`; default: nowhere).
    ``data_workers > 0`` builds the micro-batches in that many DataLoader worker processes, ahead of the loop
    (:mod:`training.batches`); the batches, and so the run, are the same as with 0.

    ``record`` (:func:`training.run_record.run_record`) becomes the first line of ``log.jsonl`` (``"run"``, or
    ``"resume"`` when resuming). ``on_evaluation(step, result, model)`` is called on rank 0 after each evaluation.
    A non-finite step is skipped, a stop signal ends the run after a checkpoint (:mod:`training.guard`); an existing
    ``log.jsonl`` in ``out_dir`` without ``resume`` is refused (:class:`CheckpointError`), never truncated.
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
    wrapped = wrap_model(model, ctx, fsdp, cfg.precision)

    optimizer = build_optimizer(wrapped, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, CosineWithWarmup.for_config(cfg))
    scaler = torch.amp.GradScaler(ctx.device.type) if cfg.precision == "fp16" else None

    start_step, skipped_total = 0, 0
    if resume is not None:
        start_step, skipped_total = load_checkpoint(Path(resume), wrapped, optimizer, scheduler, scaler, ctx, cfg.seed)
    else:
        torch.manual_seed(cfg.seed + ctx.rank)  # dropout streams differ per rank, reproducibly

    log_path = out / LOG_FILE
    taken = resume is None and log_path.exists()
    barrier(ctx)  # every rank has looked before rank 0 writes: all see the same directory, all refuse or none
    if taken:
        raise CheckpointError(f"{log_path} exists: {out} holds another run; resume it or choose a new run directory")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            _restore_log(log_path, start_step)
        if record is not None:
            append_log(log_path, {"step": start_step, ("resume" if resume is not None else "run"): record})
    barrier(ctx)
    reporting = open_report(
        report, out, is_main=ctx.is_main, world_size=ctx.world_size, device=ctx.device, model_config=model.config,
        task=task, precision=cfg.precision, start_step=start_step, resumed=resume is not None, meta=meta,
    )  # fmt: skip

    losses: list[float] = []
    evaluations: list[dict[str, Any]] = []
    tokens_seen = 0.0
    started = last_save = time.perf_counter()
    checkpoint: Path | None = Path(resume) if resume is not None else None  # the newest good one so far
    saved_step = start_step if resume is not None else -1
    kernels_used: dict[str, str] = {}
    interval = _Interval()
    consecutive_skips = 0
    bar = _progress(start_step, cfg.steps, progress and ctx.is_main)
    batches = step_batches(task, start_step, cfg.steps, ctx, data_workers, seed=cfg.seed)

    def save(done: int) -> Path | None:
        nonlocal last_save, saved_step
        finite = all_reduce_sum(parameters_finite(wrapped, optimizer).to(ctx.device), ctx)
        if int(finite.item()) != ctx.world_size:  # never write (nor rotate out a good one for) non-finite weights
            if ctx.is_main:
                print(f"glm-train: warning: step {done}: non-finite weights, no checkpoint written", file=sys.stderr)
            return checkpoint
        meta_now = {**meta, "step": done}
        path = save_checkpoint(
            out, done, wrapped, optimizer, scheduler, scaler, meta_now, tokenizer, ctx, cfg.keep_checkpoints,
            skipped_steps=skipped_total,
        )  # fmt: skip
        last_save, saved_step = time.perf_counter(), done
        return path

    with StopSignals() as signals:
        for step, micro in zip(range(start_step, cfg.steps), batches, strict=True):
            reporting.start_step()
            local_count = sum(task.count(b) for b in micro)
            global_count = float(global_sum([local_count], ctx)[0])  # on the model's device (NCCL: no host tensor)
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
            norm = _clip(wrapped, cfg.clip_grad)
            lr_used = float(optimizer.param_groups[0]["lr"])
            done = step + 1
            due = (
                ctx.is_main
                and cfg.save_every_minutes > 0
                and time.perf_counter() - last_save >= 60 * cfg.save_every_minutes
            )
            # one reduction (one host sync) per step: the loss, and whether any rank saw a non-finite value, a stop
            # signal, or (rank 0's clock) a checkpoint that is due
            flags = torch.stack([
                loss_total,
                (~torch.isfinite(loss_total) | ~torch.isfinite(norm)).double(),
                torch.tensor(float(signals.signum is not None), dtype=torch.float64, device=ctx.device),
                torch.tensor(float(due), dtype=torch.float64, device=ctx.device),
                norm if ctx.is_main else torch.zeros_like(norm),  # the norm is global: rank 0's is the one read
            ])  # fmt: skip
            reduced = all_reduce_sum(flags, ctx).tolist()
            step_loss, skipped, stop, timed = reduced[0] / global_count, reduced[1] > 0, reduced[2] > 0, reduced[3] > 0
            grad_norm = reduced[4]
            if skipped:  # the original skips the update and the schedule (GLM:train_utils.py:345-381)
                if scaler is not None:
                    scaler.update()  # lowers the loss scale: unscale_ recorded the overflow
                skipped_total += 1
                consecutive_skips += 1
            else:
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                consecutive_skips = 0
                interval.add(step_loss)
            kernels_used = dict(model.kernels_used)
            losses.append(step_loss if not skipped else float("nan"))
            tokens_seen += global_count
            reporting.end_step(global_count)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}")
            if ctx.is_main and (skipped or done % cfg.log_every == 0 or done == cfg.steps or done == start_step + 1):
                record = {
                    "step": done,
                    "loss": interval.mean() if not skipped else finite_or_none(step_loss),
                    "lr": lr_used,
                    "grad_norm": finite_or_none(round(grad_norm, 6)),
                    "count": global_count,
                    "elapsed_s": round(time.perf_counter() - started, 3),
                    "skipped_steps": skipped_total,
                }
                if skipped:
                    record["skipped"] = True
                if scaler is not None:
                    record["loss_scale"] = float(scaler.get_scale())
                record.update(reporting.rates())  # tokens_per_s, mfu
                append_log(log_path, record)
                if not skipped:
                    interval.reset()
                    reporting.log_step(record)
            if consecutive_skips >= cfg.max_skipped_steps:
                raise NonFiniteStepsError(
                    f"step {done}: {consecutive_skips} consecutive steps had a non-finite loss or gradient norm "
                    f"(limit {cfg.max_skipped_steps}); the newest finite checkpoint is {checkpoint or 'none'}"
                )
            if evaluate is not None and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps):
                result = _run_evaluation(model, wrapped, evaluate, ctx, fsdp, done, on_evaluation)
                if result is not None:
                    evaluations.append({"step": done, **result})
                    append_log(log_path, {"step": done, "eval": result})
                    reporting.log_eval(done, result)
            if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.steps or timed or stop:
                checkpoint = save(done) if saved_step != done else checkpoint
            if stop and done < cfg.steps:  # a signal during the last step: the run simply ends
                batches.close()
                reporting.close()
                raise RunInterrupted(
                    f"stopped by {signals.name or 'a signal'} after step {done} of {cfg.steps}; checkpoint "
                    f"{checkpoint}; continue with --resume auto",
                    signals.signum or signal.SIGTERM,
                )
    batches.close()
    if bar is not None:
        bar.close()
    reporting.close()
    if final_dir is not None and checkpoint is not None:
        publish_model(checkpoint, Path(final_dir), final_dtype, ctx)
    return TrainResult(
        steps=cfg.steps,
        final_loss=next((x for x in reversed(losses) if math.isfinite(x)), float("nan")),
        losses=losses,
        tokens=tokens_seen,
        wall_s=time.perf_counter() - started,
        evaluations=evaluations,
        checkpoint=str(checkpoint) if checkpoint else None,
        kernels=kernels_used,
        skipped_steps=skipped_total,
    )


def _clip(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the gradients to ``max_norm`` (0: no clipping); the total norm before clipping, a 0-d tensor.

    A non-finite norm leaves NaN gradients behind: the step is then skipped (:mod:`training.guard`).
    """
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP2 DTensor
        norm = norm.full_tensor()
    return norm.double()


class _Interval:
    """The mean loss of the steps taken since the last log record (skipped steps excluded)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, loss: float) -> None:
        self.total += loss
        self.count += 1

    def mean(self) -> float | None:
        return round(self.total / self.count, 6) if self.count else None


def _progress(start: int, total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)


def append_log(path: Path, record: dict[str, Any]) -> None:
    """One JSON line; NaN and infinities become ``null``: the log stays valid JSON."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(json_safe(record), sort_keys=True, allow_nan=False) + "\n")


def _run_evaluation(
    model: GLMModel,
    wrapped: nn.Module,
    evaluate: Evaluate,
    ctx: DistContext,
    fsdp: bool,
    step: int = 0,
    on_evaluation: OnEvaluation | None = None,
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
                subject = GLMModel(model.config, kernels=model.kernels, attention=model.attention)
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
        if on_evaluation is not None:
            on_evaluation(step, result, subject)
    barrier(ctx)
    return result
