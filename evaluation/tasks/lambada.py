"""LAMBADA zero-shot last-word prediction (spec §6.2), torch-free.

File: the official ``lambada_test.jsonl`` (one ``{"text": ...}`` per line), as ``<data_dir>/lambada/test.jsonl`` or
``<data_dir>/lambada/lambada_test.jsonl``. As ``tasks/language_model/dataset.py`` ``LambadaDataset.get_tokens``
(strict): target = ``text.split()[-1]`` (the last word after any whitespace: space, tab, newline), tokenized as
``" " + word``; context = ``text[:text.rfind(word)].strip()``. Part A = ``[CLS] context [gMASK|MASK] [eos]`` (gMASK
for task-mask models), Part B = ``[sop] target[:-1]``; the context is cut from the left to fit the task's length,
512 (``config_tasks/zero_lambada.sh``). ``lambada_uni`` (``zero_lambada_uni.sh``, ``--unidirectional``): Part A =
``[CLS] context[0] [gMASK] [eos]``, the rest of the context and the target causal in Part B, only the target scored.
An example is correct iff the argmax is the target at every target position. Also reported: the mean target
log-likelihood.
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
    seq_length = 512  # zero_lambada.sh: --seq-length 512
    protocol_source = "scripts/evaluate_lm.sh + config_tasks/zero_lambada.sh"
    unidirectional = False

    def data_files(self, data_dir: Path, split: str) -> list[Path]:
        names = ["lambada/test.jsonl", "lambada/lambada_test.jsonl", "lambada_test.jsonl"]
        return [find_data_file(data_dir, names, self.name)]

    def config(self) -> dict[str, Any]:
        layout = (
            "[CLS] context[0] [gMASK] [eos] | [sop] (context[1:] + target)[:-1]"
            if self.unidirectional
            else "[CLS] context [gMASK] [eos] | [sop] target[:-1]"
        )
        return {"layout": layout, "correct": "argmax at every target token"}

    def read(self, data_dir: Path, split: str, limit: int | None) -> list[Example]:
        path = self.data_files(data_dir, split)[0]
        out = []
        for line, obj in read_jsonl(path, limit):
            text = field_of(obj, "text", path, line, str)
            words = text.split()
            if len(words) < 2:
                raise DataError(f"{path}:{line}: field 'text' needs a context and a last word")
            context = text[: text.rfind(words[-1])].strip()
            out.append(Example(str(line), {"context": context, "target": " " + words[-1]}))
        return out

    def predict(self, examples: Sequence[Example], ctx: EvalContext) -> list[dict[str, Any]]:
        samples = [
            build_lambada_input(
                ctx.tokenizer.encode(ex.data["context"]),
                encode_candidate(ex.data["target"], ctx.tokenizer),
                ctx.special,
                seq_len=ctx.max_length,
                unidirectional=self.unidirectional,
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


class LambadaUni(Lambada):
    name = "lambada_uni"
    description = "LAMBADA last word, unidirectional context (zero_lambada_uni.sh)"
    protocol_source = "scripts/evaluate_lm.sh + config_tasks/zero_lambada_uni.sh"
    unidirectional = True
