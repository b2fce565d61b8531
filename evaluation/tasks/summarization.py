"""Abstractive summarisation: CNN/DailyMail and XSum (spec §6.4), torch-free.

Files: line-aligned ``test.source`` / ``test.target`` (one article / one reference summary per line) under
``<data_dir>/summarization/<cnndm|xsum>/`` or ``<data_dir>/<cnndm|xsum>/``; ``--split`` picks ``val`` / ``test``.
Part A = ``[CLS] [sMASK] " Content:" " " + article`` cut to the source length (``[MASK]`` for models without sMASK),
generation fills the blank with beam search under the settings of the spec §6.4 table. ROUGE-1/2/Lsum F-measure via
``rouge-score`` with ``use_stemmer=True``.

Source pads: the original pads the source inside Part A (visible, issue #70); here the source is not padded (beam
search runs one prompt at a time, so nothing needs padding) - the numbers of a checkpoint finetuned with visible pads
can differ slightly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation import metrics
from evaluation.tasks.base import EvalContext, Example, Task, find_data_file, read_lines
from glm_core.errors import DataError
from glm_core.generation import GenerationConfig, generate_batch
from glm_core.layout import build_seq2seq_input


@dataclass(frozen=True)
class DecodingSettings:
    """One row of the spec §6.4 table."""

    source_length: int
    max_target_length: int
    min_length: int
    num_beams: int
    length_penalty: float
    no_repeat_ngram_size: int


SETTINGS = {
    "cnndm": DecodingSettings(608, 160, 55, 5, 0.7, 3),  # seq_cnndm_org.sh
    "xsum": DecodingSettings(608, 60, 10, 6, 1.0, 3),  # seq_xsum.sh
}


class Summarization(Task):
    primary_metric = "rouge1"
    default_split = "test"
    corpus = ""

    @property
    def settings(self) -> DecodingSettings:
        return SETTINGS[self.corpus]

    def config(self) -> dict[str, Any]:
        s = self.settings
        return {
            "source_length": s.source_length,
            "max_target_length": s.max_target_length,
            "min_length": s.min_length,
            "num_beams": s.num_beams,
            "length_penalty": s.length_penalty,
            "no_repeat_ngram_size": s.no_repeat_ngram_size,
            "rouge": "rouge-score, use_stemmer=True, rougeLsum over newline-split sentences",
        }

    def data_files(self, data_dir: Path, split: str) -> list[Path]:
        folders = [f"summarization/{self.corpus}", self.corpus]
        source = find_data_file(data_dir, [f"{f}/{split}.source" for f in folders], self.name)
        target = source.with_suffix(".target")
        if not target.is_file():
            raise DataError(f"{target}: reference file missing beside {source.name}")
        return [source, target]

    def read(self, data_dir: Path, split: str, limit: int | None) -> list[Example]:
        source_path, target_path = self.data_files(data_dir, split)
        sources, targets = read_lines(source_path), read_lines(target_path)
        if len(sources) != len(targets):
            raise DataError(
                f"{source_path}: {len(sources)} lines but {target_path.name} has {len(targets)}; expected line-aligned files"
            )
        out = []
        for n, (src, tgt) in enumerate(zip(sources, targets, strict=True), start=1):
            if not src.strip():
                raise DataError(f"{source_path}:{n}: empty article")
            out.append(Example(str(n), {"source": src.strip(), "target": tgt.strip()}))
            if limit is not None and len(out) >= limit:
                break
        if not out:
            raise DataError(f"{source_path}: empty data file; expected one article per line")
        return out

    def predict(self, examples: Sequence[Example], ctx: EvalContext) -> list[dict[str, Any]]:
        s = self.settings
        max_new = min(s.max_target_length, ctx.max_length - 1)
        source_length = min(s.source_length, ctx.max_length)
        mask = ctx.special.smask if ctx.special.smask is not None else ctx.special.mask
        prompts = [
            build_seq2seq_input(
                ctx.tokenizer.encode(" " + ex.data["source"]),
                ctx.special,
                prompt_ids=ctx.tokenizer.encode(" Content:"),
                max_source_length=source_length,
                mask_id=mask,
            )
            for ex in examples
        ]
        config = GenerationConfig(
            max_new_tokens=max_new,
            strategy="beam",
            num_beams=s.num_beams,
            length_penalty=s.length_penalty,
            min_length=min(s.min_length, max_new),
            no_repeat_ngram_size=s.no_repeat_ngram_size,
            vocab_size=len(ctx.tokenizer),
        )
        results = generate_batch(ctx.backend, prompts, ctx.special, config)
        return [
            {
                "key": ex.key,
                "prediction": ctx.tokenizer.decode(r.blanks[0]).strip(),
                "reference": ex.data["target"],
                "generated_tokens": len(r.blanks[0]),
            }
            for ex, r in zip(examples, results, strict=True)
        ]

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        return metrics.rouge([r["prediction"] for r in records], [r["reference"] for r in records])


class CNNDM(Summarization):
    name = corpus = "cnndm"
    description = "CNN/DailyMail summarisation, beam 5 (spec §6.4)"


class XSum(Summarization):
    name = corpus = "xsum"
    description = "XSum summarisation, beam 6 (spec §6.4)"
