"""LAMBADA zero-shot last-word prediction (spec §6.2), torch-free.

File: the official ``lambada_test.jsonl`` (one ``{"text": ...}`` per line), as ``<data_dir>/lambada/test.jsonl`` or
``<data_dir>/lambada/lambada_test.jsonl``. Target = the last whitespace-separated word, tokenized as ``" " + word``;
context = the text before it, stripped. Part A = ``[CLS] context [gMASK|MASK] [eos]`` (gMASK for task-mask models),
Part B = ``[sop] target[:-1]``; the context is cut from the left to fit. An example is correct iff the argmax is the
target at every target position. Also reported: the mean target log-likelihood.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.tasks.base import EvalContext, Example, Task, field_of, find_data_file, read_jsonl
from evaluation.tasks.cloze import encode_candidate
from glm_core.errors import DataError
from glm_core.layout import build_lambada_input


class Lambada(Task):
    name = "lambada"
    description = "LAMBADA last word, bidirectional context (spec §6.2)"
    primary_metric = "acc"
    default_split = "test"

    def data_files(self, data_dir: Path, split: str) -> list[Path]:
        names = ["lambada/test.jsonl", "lambada/lambada_test.jsonl", "lambada_test.jsonl"]
        return [find_data_file(data_dir, names, self.name)]

    def config(self) -> dict[str, Any]:
        return {"layout": "[CLS] context [gMASK] [eos] | [sop] target[:-1]", "correct": "argmax at every target token"}

    def read(self, data_dir: Path, split: str, limit: int | None) -> list[Example]:
        path = self.data_files(data_dir, split)[0]
        out = []
        for line, obj in read_jsonl(path, limit):
            text = field_of(obj, "text", path, line, str).strip()
            if " " not in text:
                raise DataError(f"{path}:{line}: field 'text' needs a context and a last word")
            context, word = text.rsplit(" ", 1)
            out.append(Example(str(line), {"context": context.strip(), "target": " " + word}))
        return out

    def predict(self, examples: Sequence[Example], ctx: EvalContext) -> list[dict[str, Any]]:
        samples = [
            build_lambada_input(
                ctx.tokenizer.encode(ex.data["context"]),
                encode_candidate(ex.data["target"], ctx.tokenizer),
                ctx.special,
                seq_len=ctx.max_length,
            )
            for ex in examples
        ]
        scores = ctx.scorer.score_samples(samples, desc=self.name)
        return [
            {"key": ex.key, "correct": int(s.is_greedy), "logprob": s.total, "num_tokens": len(s)}
            for ex, s in zip(examples, scores, strict=True)
        ]

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        n = max(len(records), 1)
        return {
            "acc": sum(r["correct"] for r in records) / n,
            "mean_logprob": sum(r["logprob"] for r in records) / n,
        }
