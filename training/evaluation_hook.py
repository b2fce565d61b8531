"""The evaluation package's tasks as the training loop's ``evaluate(model)`` callback (DESIGN.md layers)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glm_core.model import GLMModel
from training.loop import Evaluate
from training.resume import packaged_data_dir

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

    # the package's own data by default: not a path relative to the working directory
    data_dir = Path(args.eval_data_dir) if args.eval_data_dir else packaged_data_dir()
    plan = read_tasks(expand_task_list(specs), data_dir, split=None, limit=args.eval_limit)

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
