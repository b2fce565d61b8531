"""Training checkpoints as sharded ``torch.distributed.checkpoint`` (DCP) directories; export to the hub layout.

A checkpoint is ``OUT/checkpoints/step_XXXXXXX/``:

- the DCP files (``.metadata`` + ``__<rank>_<n>.distcp``): model and optimizer state. Every rank writes and reads
  only its own shard (FSDP: its DTensor shards; DDP: the replicated tensors, written once), no rank gathers the
  full state, and DCP reshards on load, so a run resumes on another number of processes;
- ``train_state.json``: step, scheduler, grad scaler, the run's settings (``meta``), the world size it was written by;
- ``rng/rank_XXXXX.pt``: each rank's torch RNG states (plain tensors, read with ``weights_only=True``);
- ``config.json`` and the tokenizer files, so ``glm-train export`` needs nothing else.

Writing is atomic: every rank writes into ``.tmp-step_XXXXXXX-<pid>@<host>`` beside the target (host and process id
of rank 0, the writer), every file is flushed to disk (``fsync``), then rank 0 renames the directory into place once
all ranks are done and only then points ``checkpoints/latest`` at it, so a killed save leaves the previous
checkpoint valid. A staging directory whose writer no longer runs (same host, dead pid; or a name without a pid) is
removed by the next save; one of a live writer is left alone. Rotation (``keep``) never removes the checkpoint
``latest`` names.

Reading never unpickles arbitrary objects: DCP's ``.metadata`` goes through an unpickler that admits only DCP's own
metadata classes and plain containers (:class:`SafeFileSystemReader`), and the non-tensor optimizer entries (learning
rates, betas) are read with ``torch.load(weights_only=True)`` (:class:`SafeLoadPlanner`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from glm_core.atomic import make_staging_dir, move_into_place, write_text_atomically, writer_is_gone, writer_tag
from glm_core.config import GLMConfig
from glm_core.errors import CheckpointError
from glm_core.model import GLMModel
from glm_core.outputs import MARKER, is_model_file, write_marker
from training.distributed import MODEL_PREFIX, DistContext, barrier, unwrap

STATE_FILE = "train_state.json"
RNG_DIR = "rng"
LATEST_FILE = "latest"
STATE_FORMAT_VERSION = 2  # 1: a train_state.pt beside full hub-layout weights (no longer read)
MODEL_KEY, OPTIM_KEY = "model", "optim"

__all__ = [
    "STATE_FILE",
    "SafeFileSystemReader",
    "export_checkpoint",
    "find_latest_checkpoint",
    "load_checkpoint",
    "publish_model",
    "read_train_state",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]


# ==================================================================================================== safe reading
_METADATA_MODULES = (
    "torch.distributed.checkpoint.metadata",
    "torch.distributed.checkpoint.planner",
    "torch.distributed.checkpoint.filesystem",
    "torch.distributed.checkpoint._extension",
)
_METADATA_GLOBALS = {
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a layout by its name, from a fixed table
}


class _MetadataUnpickler(pickle.Unpickler):
    """Admits DCP's metadata dataclasses, dtypes and plain containers; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if module in _METADATA_MODULES or (module, name) in _METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in checkpoint metadata")


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with a restricted unpickler for ``.metadata`` (tensor data is read with weights_only)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        path = Path(self.path) / ".metadata"
        if not path.is_file():
            raise CheckpointError(f"{self.path}: not a training checkpoint (no DCP .metadata)")
        try:
            with open(path, "rb") as fh:
                metadata = _MetadataUnpickler(fh).load()
        except Exception as exc:  # noqa: BLE001 - a refused global or a truncated file: one clear error
            raise CheckpointError(f"{path}: cannot read the checkpoint metadata ({str(exc)[:200]})") from None
        from torch.distributed.checkpoint.metadata import StorageMeta

        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """Non-tensor entries (optimizer hyper-parameters) are read with ``torch.load(weights_only=True)``."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._nested_dict import set_element  # noqa: PLC0415

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


# ==================================================================================================== finding
def find_latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    root = Path(out_dir) / "checkpoints"
    latest = root / LATEST_FILE
    if latest.is_file():
        name = latest.read_text(encoding="utf-8").strip()
        if name and (root / name / STATE_FILE).is_file():
            return root / name
    found = sorted(p for p in root.glob("step_*") if (p / STATE_FILE).is_file()) if root.is_dir() else []
    return found[-1] if found else None


def read_train_state(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """``train_state.json`` of a checkpoint; :class:`CheckpointError` when missing, corrupt or of another format."""
    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        old = Path(checkpoint) / "train_state.pt"
        hint = (
            " (a checkpoint of an older format: train_state.pt; export its weights with glm-convert)"
            if old.is_file()
            else ""
        )
        raise CheckpointError(f"{checkpoint}: not a training checkpoint (no {STATE_FILE}){hint}")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read the training state ({exc})") from None
    if not isinstance(state, dict) or state.get("format_version") != STATE_FORMAT_VERSION:
        raise CheckpointError(f"{path}: unknown training-state format; expected format_version {STATE_FORMAT_VERSION}")
    return state


# ==================================================================================================== RNG
def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)


def _rng_file(directory: Path, rank: int) -> Path:
    return directory / RNG_DIR / f"rank_{rank:05d}.pt"


# ==================================================================================================== save
@contextlib.contextmanager
def _single_process_is_intended() -> Iterator[None]:
    """DCP warns on every single-process save or load; here one process is what the run asked for."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """This rank's model and optimizer state, keyed by parameter name; no gather (FSDP keeps DTensor shards)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    return {MODEL_KEY: model_state, OPTIM_KEY: optim_state}


def save_checkpoint(
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
    *,
    skipped_steps: int = 0,
) -> Path:
    """Write ``checkpoints/step_XXXXXXX`` (see the module docstring); every rank calls it."""
    root = out_dir / "checkpoints"
    final = root / f"step_{step:07d}"
    staging = root / _staging_name(final.name, ctx)
    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(root)
        staging.mkdir()
    barrier(ctx)
    try:
        with _single_process_is_intended():
            dcp.save(_sharded_state(model, optimizer), checkpoint_id=staging, no_dist=not ctx.distributed)
        rng_path = _rng_file(staging, ctx.rank)
        rng_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.cpu() for k, v in rng_state(ctx.device).items()}, rng_path)
        _fsync_file(rng_path)
        barrier(ctx)
        if ctx.is_main:
            glm = unwrap(model)
            glm.config.save(staging)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
            state = {
                "format_version": STATE_FORMAT_VERSION,
                "step": step,
                "skipped_steps": skipped_steps,
                "world_size": ctx.world_size,
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "meta": meta,
            }
            write_text_atomically(staging / STATE_FILE, json.dumps(state, sort_keys=True, indent=1) + "\n")
            _fsync_tree(staging)  # the data is on disk before the rename makes it the checkpoint
            move_into_place(staging, final)  # a rerun of the same step swaps, never leaves a partial directory
    except BaseException:
        if ctx.is_main:  # the previous checkpoint stays the newest; no partial directory is left
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if ctx.is_main:
        write_text_atomically(root / LATEST_FILE, final.name + "\n")
        _prune_checkpoints(root, keep)
    barrier(ctx)
    return final


def _prune_checkpoints(root: Path, keep: int) -> None:
    latest = (root / LATEST_FILE).read_text(encoding="utf-8").strip() if (root / LATEST_FILE).is_file() else ""
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[:-keep]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)


def _staging_name(name: str, ctx: DistContext) -> str:
    """``.tmp-<name>-<pid>@<host>`` of rank 0, the same on every rank (rank 0 tells the others)."""
    shared = [f".tmp-{name}-{writer_tag()}"]
    if ctx.distributed:
        import torch.distributed as dist

        dist.broadcast_object_list(shared, src=0)
    return shared[0]


def _writer_alive(name: str) -> bool:
    """Whether the writer of staging directory ``name`` (``.tmp-step_N-<pid>@<host>``) may still be running; a name
    of an older release records no writer and counts as dead."""
    tag = name.rsplit("-", 1)[-1]
    return "@" in tag and not writer_is_gone(tag)


def remove_stale_staging(root: Path) -> list[Path]:
    """Remove the ``.tmp-step_*`` staging directories under ``root`` whose writer is dead; returns them."""
    removed = []
    for stale in sorted(root.glob(".tmp-step_*")):
        if not _writer_alive(stale.name):
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    """Flush every file under ``directory``, then the directories themselves (their entries), to disk."""
    for path in sorted(directory.rglob("*"), reverse=True):
        if path.is_file():
            _fsync_file(path)
    for path in [*sorted(p for p in directory.rglob("*") if p.is_dir()), directory]:
        _fsync_file(path)


# ==================================================================================================== load
def _read_into(state: dict[str, Any], checkpoint: Path, *, no_dist: bool) -> None:
    """Fill ``state`` (tensors, in place) from a DCP checkpoint; one :class:`CheckpointError` for what can go wrong."""
    reader = SafeFileSystemReader(checkpoint)
    reader.read_metadata()  # a refused or corrupt .metadata: its own clear error, before DCP wraps it
    try:
        with _single_process_is_intended():
            dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner(), no_dist=no_dist)
    except Exception as exc:  # noqa: BLE001 - missing shard files, shapes of another model
        raise CheckpointError(f"{checkpoint}: cannot load the checkpoint ({str(exc).splitlines()[0][:300]})") from None


def load_checkpoint(
    checkpoint: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    ctx: DistContext,
    seed: int,
) -> tuple[int, int]:
    """Restore a checkpoint into the (wrapped) model and optimizer of this run; returns the step to continue from
    and the number of non-finite steps skipped before it.

    Each rank reads only what its own shard needs; the checkpoint may come from another number of processes. RNG
    states are restored per rank when the world size is unchanged; otherwise the dropout streams are reseeded from
    ``(seed, step, rank)`` and the run says that it is not bit-exact.
    """
    state = read_train_state(checkpoint)
    sharded = _sharded_state(model, optimizer)
    _read_into(sharded, checkpoint, no_dist=not ctx.distributed)
    set_state_dict(model, optimizer, model_state_dict=sharded[MODEL_KEY], optim_state_dict=sharded[OPTIM_KEY])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    step = int(state["step"])
    rng_path = _rng_file(checkpoint, ctx.rank)
    if int(state["world_size"]) == ctx.world_size and rng_path.is_file():
        set_rng_state(torch.load(rng_path, map_location="cpu", weights_only=True), ctx.device)
    else:
        torch.manual_seed(seed + 1_000_003 * step + ctx.rank)
        if ctx.is_main:
            print(
                f"glm-train: warning: {checkpoint} was written by {state['world_size']} process(es), this run has "
                f"{ctx.world_size}: dropout streams are reseeded from --seed, the run is not bit-exact",
                file=sys.stderr,
            )
    return step, int(state.get("skipped_steps", 0))


# ==================================================================================================== export
TOOL = "glm-train"  # the output marker's tool name of the model directories a run or `glm-train export` writes


def export_checkpoint(
    checkpoint: str | os.PathLike[str], directory: str | os.PathLike[str], dtype: torch.dtype = torch.float32
) -> Path:
    """Write a training checkpoint's model as a hub-layout directory (safetensors + config.json + tokenizer).

    Runs in one process whatever the number of processes that wrote the checkpoint (DCP reads every shard). The new
    directory is completed in a staging directory and swapped in whole (:func:`glm_core.atomic.move_into_place`):
    the old one stays intact until then. Files in an existing ``directory`` that are not model files (a model card,
    notes) are carried over; its old model files are replaced, none is left to shadow the new weights.
    """
    from glm_core.checkpoint import save_model

    source = Path(checkpoint)
    read_train_state(source)
    config = GLMConfig.from_hf_config(str(source))
    with torch.device("meta"):
        glm = GLMModel(config)
    glm.to_empty(device="cpu")
    # the model's own tensors under ModelCall's parameter names: DCP fills them in place
    _read_into({MODEL_KEY: {MODEL_PREFIX + k: v for k, v in glm.state_dict().items()}}, source, no_dist=True)
    out = Path(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_staging_dir(out)
    try:
        save_model(glm, tmp, dtype=dtype)
        for item in sorted(source.iterdir()):
            if (
                item.is_file()
                and item.name not in (STATE_FILE, "config.json", ".metadata")
                and not item.name.endswith(".distcp")
            ):
                shutil.copy2(item, tmp / item.name)  # tokenizer files
        if out.is_dir():
            for item in sorted(out.iterdir()):
                if item.name == MARKER or is_model_file(item.name) or (tmp / item.name).exists():
                    continue
                if item.is_dir() and not item.is_symlink():
                    shutil.copytree(item, tmp / item.name, symlinks=True)
                else:
                    shutil.copy2(item, tmp / item.name, follow_symlinks=False)
        write_marker(tmp, TOOL)
        move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def publish_model(checkpoint: Path, directory: Path, dtype: torch.dtype, ctx: DistContext) -> Path | None:
    """The end of a run: rank 0 exports the final checkpoint to ``directory`` (read back from disk, no gather)."""
    result = export_checkpoint(checkpoint, directory, dtype) if ctx.is_main else None
    barrier(ctx)
    return result
