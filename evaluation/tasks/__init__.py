"""Task registry: ``get_task("boolq")``, ``get_task("boolq:4")`` (pattern 4), ``expand_task_list("superglue,lambada")``.

| name | family | module |
|---|---|---|
| boolq, cb, copa, multirc, record, rte, wic, wsc (group ``superglue``) | SuperGLUE cloze (spec §6.1) | ``superglue`` |
| lambada, lambada_uni | LAMBADA last word, bidirectional / unidirectional context (spec §6.2) | ``lambada`` |
| lm, lm_uni, wikitext, wikitext_uni | rolling-window perplexity: per-line documents, uni windows, Wikitext-103 (spec §6.3) | ``language_model`` |
| cnndm, xsum, gigaword, squad_qg | seq2seq: summarisation, question generation; beam search + ROUGE (spec §6.4) | ``summarization`` |
| multichoice | zero-shot multiple choice, T0-style jsonl (``evaluate_multichoice.sh``) | ``multichoice`` |
| blank | multi-blank infilling, exact match + BLEU | ``blank`` |
| demo | generic multiple-choice cloze jsonl | ``demo`` |
"""

from __future__ import annotations

from typing import Any

from evaluation.tasks.base import EvalContext, Example, Task
from evaluation.tasks.blank import BlankInfilling
from evaluation.tasks.demo import Demo
from evaluation.tasks.lambada import Lambada, LambadaUni
from evaluation.tasks.language_model import LanguageModel, LanguageModelUni, Wikitext, WikitextUni
from evaluation.tasks.multichoice import MultiChoice
from evaluation.tasks.summarization import CNNDM, Gigaword, SQuADQuestionGeneration, XSum
from evaluation.tasks.superglue import SUPERGLUE_TASKS
from glm_core.errors import ConfigError

TASKS: dict[str, type[Task]] = {
    **SUPERGLUE_TASKS,
    "lambada": Lambada,
    "lambada_uni": LambadaUni,
    "lm": LanguageModel,
    "lm_uni": LanguageModelUni,
    "wikitext": Wikitext,
    "wikitext_uni": WikitextUni,
    "cnndm": CNNDM,
    "xsum": XSum,
    "gigaword": Gigaword,
    "squad_qg": SQuADQuestionGeneration,
    "multichoice": MultiChoice,
    "blank": BlankInfilling,
    "demo": Demo,
}
GROUPS = {"superglue": ["boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc"]}


def task_names() -> list[str]:
    return sorted(TASKS)


def get_task(spec: str) -> Task:
    """The task for ``name`` or ``name:option`` (the option is the pattern id for the SuperGLUE tasks)."""
    name, _, option = spec.strip().partition(":")
    name = name.lower()
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; expected one of: {', '.join(task_names() + sorted(GROUPS))}")
    return TASKS[name](option or None)


def expand_task_list(specs: str, options: dict[str, Any] | None = None) -> list[Task]:
    """Tasks of a comma-separated list; groups (``superglue``) expand to their members. ``options`` are the
    command line's protocol settings, handed to every task's :meth:`Task.configure`."""
    names = [s.strip() for s in specs.split(",") if s.strip()]
    if not names:
        raise ConfigError("no task given; expected a comma-separated list such as 'boolq,copa' or 'superglue'")
    out: list[Task] = []
    for spec in names:
        if spec.lower() in GROUPS:
            out.extend(get_task(n) for n in GROUPS[spec.lower()])
        else:
            out.append(get_task(spec))
    for task in out:
        task.configure(options or {})
    return out


__all__ = ["GROUPS", "TASKS", "EvalContext", "Example", "Task", "expand_task_list", "get_task", "task_names"]
