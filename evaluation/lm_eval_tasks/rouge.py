"""ROUGE for lm-eval ``generate_until`` tasks, computed offline with ``rouge-score`` (spec lm_eval_integration §3).

``metric: rouge`` in a task YAML falls back to the Hugging Face ``evaluate`` hub and fails offline, so the shipped
generation task scores each sample here (``process_results``) and lm-eval averages the per-sample F-measures. As in
GLM's own seq2seq evaluation (spec glm_reference §6.4): Google's ``rouge_score`` with ``use_stemmer=True``, reporting
ROUGE-1, ROUGE-2 and ROUGE-Lsum over newline-separated sentences.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

ROUGE_TYPES = ("rouge1", "rouge2", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@lru_cache(maxsize=1)
def _scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def sentences_per_line(text: str) -> str:
    """rougeLsum expects one sentence per line (spec §6.4: sentences joined by newlines)."""
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def rouge_f(prediction: str, reference: str) -> dict[str, float]:
    """F-measures of ROUGE-1, ROUGE-2 and ROUGE-Lsum, each in [0, 1]."""
    scores = _scorer().score(sentences_per_line(reference), sentences_per_line(prediction))
    return {name: float(scores[name].fmeasure) for name in ROUGE_TYPES}


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """lm-eval hook: ``results[0]`` is the generated summary, ``doc["summary"]`` the reference."""
    return rouge_f(results[0], str(doc["summary"]))
