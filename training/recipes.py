"""The paper's training recipes as presets: ``glm-train finetune --recipe superglue --task T``, and the defaults of
each command.

SuperGLUE (GLM:config_tasks/task_<task>.sh, launched by GLM:scripts/finetune_superglue.sh with ``--fp16`` and the
defaults of GLM:arguments.py): per task the learning rate ``LR_SINGLE``, the epochs ``EPOCH_SINGLE``, the global
batch ``BATCH_SIZE`` (``--batch-size $BATCH_SIZE / N_GPU`` per GPU), the maximum length ``MAX_SEQ_LEN`` and the
``TRAIN_ARGS`` (``--lr-decay-style linear --warmup 0.1 --weight-decay 0.1``); from GLM:arguments.py the Adam betas
(0.9, 0.999) and eps 1e-8 (:379-381), gradient clipping 1.0 (:129), dropout 0.1 (hidden, attention, output: :39,
:52, :54) and the decay floor ``--lr-decay-ratio 0.1`` (:152). Training runs ``epochs x ceil(examples / batch)``
steps (GLM:finetune_glm.py:178-181, ``drop_last=False``), evaluates on the validation split after every epoch and
keeps the best epoch's model (GLM:finetune_glm.py:256-277).

Any option given on the command line wins over the recipe. Without a recipe, fine-tuning uses the same optimiser
defaults (betas, eps, linear decay, warmup 0.1) and dropout 0.1 whatever the checkpoint's ``config.json`` says (the
original sets dropout from its arguments, not from the pretrained checkpoint); pretraining uses GLM-Base's
(GLM:config/config_block_base.json: lr 4e-4, betas (0.9, 0.98), eps 1e-6, weight decay 0.1; cosine decay) and
the model's own dropout.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from glm_core.errors import ConfigError

RECIPES = ("superglue",)


@dataclass(frozen=True)
class Recipe:
    lr: float
    epochs: int
    batch_size: int  # global
    max_length: int
    warmup_ratio: float = 0.1
    weight_decay: float = 0.1
    dropout: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr_decay_style: str = "linear"
    min_lr_ratio: float = 0.1
    clip_grad: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["betas"] = list(self.betas)
        return out


# GLM:config_tasks/task_<task>.sh: LR_SINGLE, EPOCH_SINGLE, BATCH_SIZE, MAX_SEQ_LEN
SUPERGLUE: dict[str, Recipe] = {
    "boolq": Recipe(lr=1e-5, epochs=20, batch_size=16, max_length=256),
    "cb": Recipe(lr=1e-5, epochs=50, batch_size=16, max_length=256),
    "copa": Recipe(lr=1e-5, epochs=50, batch_size=16, max_length=256),
    "multirc": Recipe(lr=1e-5, epochs=15, batch_size=64, max_length=512),
    "record": Recipe(lr=1e-5, epochs=5, batch_size=64, max_length=512),
    "rte": Recipe(lr=1e-5, epochs=50, batch_size=16, max_length=256),
    "wic": Recipe(lr=1e-5, epochs=30, batch_size=16, max_length=256),
    "wsc": Recipe(lr=1e-5, epochs=50, batch_size=16, max_length=128),
}

# the command defaults (no recipe); dropout None: the model's own
DEFAULTS: dict[str, dict[str, Any]] = {
    "pretrain": {
        "lr": 4e-4, "warmup_ratio": 0.05, "weight_decay": 0.1, "betas": (0.9, 0.98), "eps": 1e-6,
        "lr_decay_style": "cosine", "min_lr_ratio": 0.1, "clip_grad": 1.0, "micro_batch_size": 8, "dropout": None,
    },
    "finetune": {
        "lr": 1e-5, "warmup_ratio": 0.1, "weight_decay": 0.1, "betas": (0.9, 0.999), "eps": 1e-8,
        "lr_decay_style": "linear", "min_lr_ratio": 0.1, "clip_grad": 1.0, "micro_batch_size": 8,
        "max_length": 256, "dropout": 0.1,
    },
}  # fmt: skip
RESOLVED = ("lr", "warmup_ratio", "weight_decay", "betas", "eps", "lr_decay_style", "min_lr_ratio", "clip_grad",
            "max_length", "dropout")  # fmt: skip

__all__ = ["RECIPES", "SUPERGLUE", "BestModel", "Recipe", "add_recipe_arguments", "resolve_recipe", "steps_for_epochs"]


def superglue_recipe(task: str) -> Recipe:
    name = task.split(":", 1)[0].lower()
    if name not in SUPERGLUE:
        raise ConfigError(f"--recipe superglue: no recipe for task {task!r}; expected one of {', '.join(SUPERGLUE)}")
    return SUPERGLUE[name]


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recipe",
        choices=RECIPES,
        default=None,
        help="the paper's per-task settings (lr, epochs, batch, length, warmup, weight decay, dropout, betas, eps, "
        "linear decay; GLM:config_tasks/task_*.sh); options given explicitly win",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="train for this many passes over the training split (steps = epochs x ceil(examples / global batch)); "
        "evaluates after each epoch and keeps the best one in OUT/best",
    )


def resolve_recipe(args: argparse.Namespace, world_size: int) -> dict[str, Any]:
    """Fill the options left at ``None`` in ``args`` from the recipe (or the command defaults); returns what was
    resolved, with its ``source`` (``recipe:superglue/<task>`` or ``defaults``)."""
    recipe = superglue_recipe(args.task) if getattr(args, "recipe", None) == "superglue" else None
    values = DEFAULTS[args.command]
    if recipe is not None:
        values = {**values, **recipe.to_dict()}
        values["betas"] = tuple(values["betas"])
        if getattr(args, "epochs", None) is None and args.steps is None:
            args.epochs = recipe.epochs
        if args.micro_batch_size is None:
            accum = args.grad_accum
            if recipe.batch_size % (world_size * accum):
                raise ConfigError(
                    f"--recipe superglue: the global batch {recipe.batch_size} does not split over {world_size} "
                    f"process(es) x --grad-accum {accum}; expected a divisor"
                )
            args.micro_batch_size = recipe.batch_size // (world_size * accum)
    if args.micro_batch_size is None:
        args.micro_batch_size = values["micro_batch_size"]
    resolved = {}
    for name in RESOLVED:
        if not hasattr(args, name):
            continue
        if getattr(args, name) is None:
            setattr(args, name, values[name])
        resolved[name] = getattr(args, name)
    resolved["betas"] = list(resolved["betas"])
    resolved["source"] = f"recipe:{args.recipe}/{args.task}" if recipe is not None else "defaults"
    return resolved


def steps_for_epochs(epochs: int, examples: int, global_batch: int) -> int:
    """``epochs x ceil(examples / global_batch)``: the original's loader keeps the last, smaller batch
    (GLM:finetune_glm.py:178-181); here every step has the full global batch (the epoch permutation wraps)."""
    if epochs < 1:
        raise ConfigError(f"--epochs must be a positive integer, got {epochs}")
    return epochs * math.ceil(examples / global_batch)


class BestModel:
    """``on_evaluation`` hook of a run by epochs: keeps the model of the best validation score in ``directory``
    (hub layout, written atomically), as the original keeps its ``best`` checkpoint (GLM:finetune_glm.py:262-277).

    The score is the evaluation's first metric (``<task>_accuracy``, ``<task>_f1`` ...); ties keep the earlier epoch.
    ``best_score.json`` beside the weights records it, so a resumed run keeps comparing against it.
    """

    RECORD = "best_score.json"

    def __init__(self, directory: Path, tokenizer: Any) -> None:
        self.directory = directory
        self.tokenizer = tokenizer
        self.metric: str | None = None
        self.score: float | None = None
        self.step: int | None = None
        record = directory / self.RECORD
        if record.is_file():  # a resumed run: the best so far
            saved = json.loads(record.read_text(encoding="utf-8"))
            self.metric, self.score, self.step = saved["metric"], float(saved["score"]), int(saved["step"])

    def __call__(self, step: int, result: dict[str, Any], model: Any) -> None:
        from glm_core.atomic import make_staging_dir, move_into_place
        from glm_core.checkpoint import save_model

        metric = self.metric or next((k for k in result if not k.endswith("_items")), None)
        if metric is None or not isinstance(result.get(metric), (int, float)):
            return
        score = float(result[metric])
        if self.score is not None and not score > self.score:
            return
        self.metric, self.score, self.step = metric, score, step
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        staging = make_staging_dir(self.directory)
        try:
            save_model(model, staging)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(staging)
            record = {"metric": metric, "score": score, "step": step}
            (staging / self.RECORD).write_text(json.dumps(record, sort_keys=True) + "\n", encoding="utf-8")
            move_into_place(staging, self.directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def summary(self) -> dict[str, Any] | None:
        if self.step is None:
            return None
        return {"metric": self.metric, "score": self.score, "step": self.step, "dir": str(self.directory)}
