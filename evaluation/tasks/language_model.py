"""Language-model perplexity on raw text with rolling windows (spec §6.3), torch-free.

Files: every ``*.txt`` under ``<data_dir>/lm/`` (e.g. ``wiki.txt``), each scored as one token stream. Windows of
``seq_len - 1`` tokens with stride 256 (``--overlapping-eval``): the first window's Part A is ``[CLS] t0 [gMASK]``,
later windows keep their first ``seq_len - 1 - stride`` tokens as bidirectional Part A and score the rest in Part B,
so every token but the first is scored once (``glm_core.layout.build_rolling_windows``). ``seq_len`` is the model's
``max_sequence_length``.

Metrics: token perplexity ``exp(NLL / (N_tok - 1))`` and the word-level "adjusted" perplexity
``exp(NLL / (N_words - 1))`` (``N_words`` = whitespace words of the raw text, Megatron convention), over all files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.tasks.base import EvalContext, Example, Task
from glm_core.errors import DataError

STRIDE = 256  # spec §6.3: overlapping_eval


class LanguageModel(Task):
    name = "lm"
    description = "rolling-window perplexity on raw text (spec §6.3)"
    primary_metric = "ppl"

    def data_files(self, data_dir: Path, split: str) -> list[Path]:
        folder = data_dir / "lm"
        files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
        if not files:
            raise DataError(f"task 'lm': no *.txt file in {folder}")
        return files

    def config(self) -> dict[str, Any]:
        return {"stride": STRIDE, "seq_len": "max_sequence_length"}

    def read(self, data_dir: Path, split: str, limit: int | None) -> list[Example]:
        out = []
        for path in self.data_files(data_dir, split)[:limit]:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            if not text.strip():
                raise DataError(f"{path}: empty data file; expected raw text")
            out.append(Example(path.name, {"text": text}))
        return out

    def predict(self, examples: Sequence[Example], ctx: EvalContext) -> list[dict[str, Any]]:
        seq_len = ctx.max_length
        stride = min(STRIDE, seq_len // 2)
        records = []
        for ex in examples:
            text = ex.data["text"]
            ids = ctx.tokenizer.encode(text)
            if len(ids) < 2:
                raise DataError(f"lm/{ex.key}: fewer than two tokens; nothing to score")
            [score] = ctx.scorer.loglikelihood_rolling([ids], seq_len=seq_len, stride=stride, desc=f"lm {ex.key}")
            records.append(
                {
                    "key": ex.key,
                    "logprob": score.total,
                    "num_scored": score.num_tokens,
                    "num_tokens": len(ids),
                    "num_words": len(text.split()),
                }
            )
        return records

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        nll = -sum(r["logprob"] for r in records)
        scored = sum(r["num_scored"] for r in records)  # = N_tok - 1 per file
        words = sum(r["num_words"] - 1 for r in records)
        return {
            "ppl": math.exp(nll / scored) if scored else math.inf,
            "word_ppl": math.exp(nll / words) if words > 0 else math.inf,
            "loss": nll / scored if scored else math.inf,
            "tokens": float(scored),
        }
