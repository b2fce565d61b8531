"""Blank infilling: fill every ``[MASK]`` of a text, compare with the original (spec §2.3c, §6.4 "Yahoo blank").

File: ``<data_dir>/blank/<split>.jsonl`` (``test`` by default), one ``{"text": "... [MASK] ...", "original": "..."}``
per line. Inputs and decoding as ``config_tasks/seq_blank.sh`` (``BlankLMDataset`` / ``BlankLMEvaluater`` of the
original's ``tasks/seq2seq``): Part A = ``EncodeAsIds(" " + text)`` with **no** ``[CLS]`` and no ``[eos]``, cut or
right-padded with ``[PAD]`` to 256 tokens (``--src-seq-length 256``, pads visible); greedy decoding, blanks filled
left to right with the same cache, ``eop`` alone ends a blank, and **one budget of 200 generated
tokens across all blanks** (``--tgt-seq-length 200``; the ``sop`` that opens each later blank counts), so blanks past
the budget stay empty. Metrics: exact match and corpus BLEU-4 of the filled text against the original; both sides
pass through the tokenizer (``decode(encode(x))``) so case and spacing conventions match (the original computes no
in-code metric for this task).

Repeated 3-grams are banned over the whole generated stream ``b0 [sop] b1 ...`` as the original's processors see
it. Not copied: its output file drops the last token of every filled text (``DecodeIds(output_tokens[:-1])``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation import metrics
from evaluation.tasks.base import EvalContext, Example, Task, field_of, find_data_file, padded_prompt, read_jsonl
from glm_core.errors import DataError
from glm_core.generation import GenerationConfig, generate_batch
from glm_core.layout import GLMInput

SOURCE_LENGTH = 256  # seq_blank.sh: --src-seq-length 256
MAX_BLANK_TOKENS = 200  # seq_blank.sh: --tgt-seq-length 200, for all blanks together
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
            "strategy": "greedy, multi-blank, stop on eop",
            "source_length": SOURCE_LENGTH,
            "max_tokens_all_blanks": MAX_BLANK_TOKENS,
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

    def prompt(self, example: Example, ctx: EvalContext) -> GLMInput:
        """``BlankLMDataset.__getitem__`` (test split): ``pad_to(EncodeAsIds(" " + text), 256)``, no [CLS] / [eos]."""
        length = min(SOURCE_LENGTH, ctx.max_length)
        ids = ctx.tokenizer.encode(" " + example.data["text"])[:length]
        masks = tuple(i for i, t in enumerate(ids) if t == ctx.special.mask)
        if not masks:
            raise DataError(f"blank/{example.key}: no [MASK] within the first {length} tokens")
        return padded_prompt(ids, masks, length, ctx.special.pad)

    def predict(self, examples: Sequence[Example], ctx: EvalContext) -> list[dict[str, Any]]:
        tok, special = ctx.tokenizer, ctx.special
        budget = min(MAX_BLANK_TOKENS, ctx.max_length - 1)
        config = GenerationConfig(
            max_new_tokens=budget,
            strategy="greedy",
            no_repeat_ngram_size=NO_REPEAT_NGRAM,
            vocab_size=len(tok),
            stop_on_eos=False,  # BlankLMEvaluater: end_token = eop
            no_repeat_across_blanks=True,  # its NoRepeatNGramLogitsProcessor sees the whole generated stream
        )
        records = []
        for ex in examples:
            prompt = self.prompt(ex, ctx)
            [result] = generate_batch(ctx.backend, [prompt], special, config)
            blanks = within_budget(result.blanks, special.sop, budget)
            filled = fill_blanks(prompt.input_ids.tolist(), blanks, special.mask, special.pad)
            records.append(
                {
                    "key": ex.key,
                    "prediction": tok.decode(filled).strip(),
                    "reference": tok.decode(tok.encode(ex.data["original"])).strip(),
                    "fills": [tok.decode(b).strip() for b in blanks],
                }
            )
        return records

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        preds = [r["prediction"] for r in records]
        refs = [r["reference"] for r in records]
        return {"exact_match": metrics.exact_match(preds, refs), "bleu": metrics.bleu(preds, refs)}


def within_budget(blanks: Sequence[Sequence[int]], sop: int, budget: int) -> list[list[int]]:
    """The blanks as the original's one-stream budget leaves them: the stream ``b0 [sop] b1 [sop] ...`` cut to
    ``budget`` tokens and split at ``sop`` again (``BlankLMEvaluater.evaluate``)."""
    stream: list[int] = []
    for k, blank in enumerate(blanks):
        stream += ([sop] if k else []) + list(blank)
    out: list[list[int]] = [[]]
    for token in stream[:budget]:
        if token == sop:
            out.append([])
        else:
            out[-1].append(token)
    return out


def fill_blanks(source: Sequence[int], blanks: Sequence[Sequence[int]], mask: int, pad: int) -> list[int]:
    """The source with its k-th mask replaced by blank k (nothing when the budget left none), pads dropped."""
    out: list[int] = []
    k = 0
    for token in source:
        if token == mask:
            out += list(blanks[k]) if k < len(blanks) else []
            k += 1
        elif token != pad:
            out.append(token)
    return out
