"""Training checkpoints: write, find, resume; the final model in the hub layout."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from glm_core.atomic import make_staging_dir, staged_directory, write_text_atomically
from glm_core.config import GLMConfig
from glm_core.errors import CheckpointError
from glm_core.model import GLMModel
from training.distributed import DistContext, barrier, unwrap

TRAIN_STATE_FILE = "train_state.pt"
LATEST_FILE = "latest"
STATE_FORMAT_VERSION = 1


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


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)


def gather_rng_states(ctx: DistContext) -> list[dict[str, torch.Tensor]]:
    mine = rng_state(ctx.device)
    if not ctx.distributed:
        return [mine]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, {k: v.cpu() for k, v in mine.items()})
    return gathered


def _full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Unsharded model and optimizer state (parameter names as keys), on the CPU; a collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def write_checkpoint(
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
    rng_states = gather_rng_states(ctx)
    final = out_dir / "checkpoints" / f"step_{step:07d}"
    if ctx.is_main:
        glm = unwrap(model)
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
    barrier(ctx)
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
        barrier(ctx)
        return None
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_staging_dir(directory)
    try:
        _save_weights(unwrap(model).config, model_state, tmp, dtype, tokenizer)
        if not directory.exists():
            os.replace(tmp, directory)
        else:
            for item in sorted(tmp.iterdir()):
                os.replace(item, directory / item.name)
            tmp.rmdir()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    barrier(ctx)
    return directory


def resume_from(
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
        set_rng_state(rng[ctx.rank], ctx.device)
    else:
        torch.manual_seed(int(state["step"]) * 1000 + ctx.rank)
        if ctx.is_main:
            print(
                f"glm-train: warning: {checkpoint} was written by {len(rng)} process(es), this run has "
                f"{ctx.world_size}: dropout streams are reseeded, the run is not bit-exact",
                file=sys.stderr,
            )
    return int(state["step"])
