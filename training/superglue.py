"""SuperGLUE tasks of the evaluation package as cloze fine-tuning data (spec §6.1)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glm_core.errors import ConfigError

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
    patterns, verbalizers and candidates (spec §6.1), as a :class:`~training.finetune.ClozeSplit`. Called from
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
    from training.finetune import ClozeItem, ClozeSplit

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
