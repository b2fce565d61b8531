"""What a run may and may not change when it continues from a checkpoint, and when a run directory is taken.

A resumed run must be the same run: the same architecture, data and objective (``task``) and optimisation settings
(``train``). What may change:

- the bookkeeping (log / save / eval intervals, checkpoints kept, the skip limit);
- the split of the **global batch** into processes x micro-batches x accumulation steps, as long as the product is
  unchanged: step ``k``'s global batch is a pure function of ``(seed, k)`` and of the global batch size, so the
  samples, their order and (with dropout 0) the losses are those of the uninterrupted run. Another global batch is
  refused unless ``--allow-batch-change`` (the samples of the later steps then differ from the uninterrupted run's:
  sample ``g = step * global_batch + i`` is read from another place of the data);
- ``steps``: a finished run can be extended (or a run ended earlier). The learning-rate schedule stays the
  checkpoint's: its decay still ends where it ended (``lr_decay_steps`` is resolved from the checkpoint), later
  steps hold the floor, as the original's resumed ``AnnealingLR`` keeps its ``end_iter``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glm_core.errors import CheckpointError, ConfigError
from glm_core.outputs import check_output
from training.checkpointing import STATE_FILE, find_latest_checkpoint, read_train_state
from training.config import TrainConfig

RESUME_MUST_MATCH = ("model_config", "task", "train")
# bookkeeping, not the run; the split of the global batch into processes x micro-batches x accumulation may change
RESUME_MAY_CHANGE = (
    "log_every", "save_every", "save_every_minutes", "eval_every", "keep_checkpoints", "max_skipped_steps",
    "micro_batch_size", "grad_accum", "steps",
)  # fmt: skip
LOG_FILE = "log.jsonl"

__all__ = ["check_resume", "global_batch", "refuse_existing_run", "resolve_resumed_schedule"]


def global_batch(meta: dict[str, Any]) -> int:
    train = meta.get("train") or {}
    return int(train.get("micro_batch_size", 0)) * int(train.get("grad_accum", 0)) * int(meta.get("world_size", 1))


def _decay_steps(train: dict[str, Any]) -> Any:
    """``lr_decay_steps`` resolved: None (the default, and absent from older checkpoints) means ``steps``."""
    decay = train.get("lr_decay_steps")
    return train.get("steps") if decay is None else decay


def _comparable_train(train: dict[str, Any]) -> dict[str, Any]:
    """A run's ``train`` meta as compared on resume: bookkeeping dropped, ``lr_decay_steps`` resolved, and the
    options older checkpoints lack filled with the values those runs had."""
    out = {k: v for k, v in train.items() if k not in RESUME_MAY_CHANGE}
    out["lr_decay_steps"] = _decay_steps(train)
    out.setdefault("lr_decay_style", "cosine")
    return out


def resolve_resumed_schedule(cfg: TrainConfig, checkpoint: Path, decay_given: bool) -> TrainConfig:
    """``cfg`` with the checkpoint's decay end when ``--lr-decay-iters`` was not given (``steps`` may change)."""
    if decay_given:
        return cfg
    stored = read_train_state(checkpoint)["meta"].get("train") or {}
    decay = _decay_steps(stored)
    if decay is None or decay == cfg.decay_steps:
        return cfg
    return TrainConfig(**{**cfg.to_dict(), "betas": cfg.betas, "lr_decay_steps": int(decay)})


def check_resume(path: Path, meta: dict[str, Any], *, allow_batch_change: bool = False) -> None:
    """The resumed run must be the same run (see the module docstring); one :class:`ConfigError` naming the first
    difference otherwise."""
    state = read_train_state(path)
    stored = state["meta"]
    old_batch, new_batch = global_batch(stored), global_batch(meta)
    if old_batch != new_batch and not allow_batch_change:
        raise ConfigError(
            f"{path}: cannot resume: the global batch was {old_batch} samples ({stored.get('world_size', 1)} "
            f"process(es) x micro-batch x grad-accum), this run has {new_batch}; keep it by choosing --grad-accum "
            "(and --micro-batch-size) for this number of processes, or pass --allow-batch-change"
        )
    steps = int((meta.get("train") or {}).get("steps", 0))
    if steps <= int(state["step"]) and steps != int((stored.get("train") or {}).get("steps", -1)):
        raise ConfigError(f"{path}: cannot resume: the checkpoint is at step {state['step']}, --steps is {steps}")
    for key in RESUME_MUST_MATCH:
        old, new = stored.get(key), meta.get(key)
        if key == "train" and isinstance(old, dict) and isinstance(new, dict):
            old, new = _comparable_train(old), _comparable_train(new)
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


def refuse_existing_run(out: str) -> None:
    """A run directory that already holds a run (``log.jsonl`` or checkpoints) is not reused without ``--resume``:
    nothing in it is truncated or replaced."""
    held = [name for name in (LOG_FILE,) if (Path(out) / name).exists()]
    if find_latest_checkpoint(out) is not None:
        held.append("checkpoints")
    if held:
        raise CheckpointError(
            f"{out} already holds a run ({', '.join(held)}); pass --resume auto to continue it, or choose a new --out"
        )


def packaged_data_dir() -> Path:
    """The evaluation package's own data directory (the demo task, the fixtures): found from the installed package,
    not from the working directory."""
    import evaluation

    return Path(evaluation.__file__).resolve().parent / "data"


def check_run_outputs(args: Any) -> None:
    """Where a run writes, checked before any work: ``--out`` and ``--final-dir`` are not the current directory or
    one of its parents, not files, and can be made. (Whether ``--out`` may hold an earlier run is
    :func:`refuse_existing_run`'s and ``--resume``'s to say; a final directory keeps the files that are not model
    files, see ``export_checkpoint``.)"""
    check_output(args.out, overwrite=True, flag="--out", make_parents=True, error=ConfigError)
    if getattr(args, "final_dir", None):
        check_output(args.final_dir, overwrite=True, flag="--final-dir", make_parents=True, error=ConfigError)


def resume_path(resume: str | None, out: str) -> Path | None:
    """The checkpoint ``--resume`` names: ``auto`` is the newest under ``out`` (``None`` when ``out`` holds no run
    yet: a requeued job's first start), else the directory given, which must be a training checkpoint."""
    if resume is None:
        return None
    if resume == "auto":
        found = find_latest_checkpoint(out)
        if found is None and not (Path(out) / LOG_FILE).exists():
            return None
        if found is None:
            raise CheckpointError(f"--resume auto: {out} holds a run but no checkpoint under its checkpoints/")
        return found
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path}: not a training checkpoint (no {STATE_FILE}); expected OUT/checkpoints/step_N")
    return path
