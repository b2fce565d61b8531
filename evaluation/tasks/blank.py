"""Blank infilling: fill every ``[MASK]`` of a text, compare with the original (spec §2.3c, §6.4 "Yahoo blank").

File: ``<data_dir>/blank/<split>.jsonl`` (``test`` by default), one ``{"text": "... [MASK] ...", "original": "..."}``
per line. Decoding = multi-blank greedy, blanks filled left to right with the same cache, no-repeat 3-grams, at most
200 tokens per blank (the seq_blank.sh row). Metrics: exact match and corpus BLEU-4 of the filled text against the
original; both sides pass through the tokenizer (``decode(encode(x))``) so case and spacing conventions match.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation import metrics
from evaluation.tasks.base import EvalContext, Example, Task, field_of, find_data_file, read_jsonl
from glm_core.errors import DataError
from glm_core.generation import GenerationConfig, generate_batch
from glm_core.layout import build_generation_prompt

MAX_BLANK_TOKENS = 200
NO_REPEAT_NGRAM = 3


class BlankInfilling(Task):
    name = "blank"
    description = "multi-blank infilling, greedy; exact match and BLEU vs the original text"
    primary_metric = "bleu"
    default_split = "test"

    def data_files(self, data_dir: Path, split: str) -> list[Path]:
        return [find_data_file(data_dir, [f"blank/{split}.jsonl"], self.name)]

    def config(self) -> dict[str, Any]:
        return {
            "strategy": "greedy, multi-blank",
            "max_tokens_per_blank": MAX_BLANK_TOKENS,
            "no_repeat_ngram_size": NO_REPEAT_NGRAM,
        }

    def read(self, data_dir: Path, split: str, limit: int | None) -> list[Example]:
        path = self.data_files(data_dir, split)[0]
        out = []
        for line, obj in read_jsonl(path, limit):
            text = field_of(obj, "text", path, line, str)
            if "[MASK]" not in text:
                raise DataError(f"{path}:{line}: field 'text' must contain at least one [MASK]")
            out.append(
                Example(
                    str(obj.get("id", line)), {"text": text, "original": field_of(obj, "original", path, line, str)}
                )
            )
        return out

    def predict(self, examples: Sequence[Example], ctx: EvalContext) -> list[dict[str, Any]]:
        tok = ctx.tokenizer
        prompts = [
            build_generation_prompt(tok.encode(ex.data["text"]), ctx.special, max_length=ctx.max_length)
            for ex in examples
        ]
        records = []
        for ex, prompt in zip(examples, prompts, strict=True):
            budget = max(1, (ctx.max_length - len(prompt)) // max(len(prompt.mask_positions), 1))
            config = GenerationConfig(
                max_new_tokens=min(MAX_BLANK_TOKENS, budget),
                strategy="greedy",
                no_repeat_ngram_size=NO_REPEAT_NGRAM,
                vocab_size=len(tok),
            )
            [result] = generate_batch(ctx.backend, [prompt], ctx.special, config)
            records.append(
                {
                    "key": ex.key,
                    "prediction": tok.decode(result.sequence).strip(),
                    "reference": tok.decode(tok.encode(ex.data["original"])).strip(),
                    "fills": [tok.decode(b).strip() for b in result.blanks],
                }
            )
        return records

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        preds = [r["prediction"] for r in records]
        refs = [r["reference"] for r in records]
        return {"exact_match": metrics.exact_match(preds, refs), "bleu": metrics.bleu(preds, refs)}
