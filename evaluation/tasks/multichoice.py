"""``multichoice``: zero-shot multiple choice as the original's ``scripts/evaluate_multichoice.sh`` (torch-free).

File: ``<data_dir>/multichoice/<split>.jsonl`` (or ``<data_dir>/<split>.jsonl`` under ``--data-dir``), one
``{"inputs_pretokenized": str, "choices_pretokenized": [str, ...], "label": int}`` per line (the T0 / P3 layout the
original reads, ``tasks/superglue/dataset.py`` ``MultiChoiceDataset``). As its ``__getitem__`` (bidirectional):

- ``inputs = EncodeAsIds(inputs_pretokenized)``, ``[MASK]`` appended unless the text holds one;
- every choice is ``EncodeAsIds(choice)`` as written (no space added, no eop);
- if ``len(inputs) + longest choice + 2 > seq_length`` the inputs keep their last ``seq_length - longest - 2``
  tokens (one cut for all choices);
- one ``[CLS] inputs [eos] [sop] choice[:-1]`` sequence per choice, its tokens at the last mask's position
  (``build_input_from_ids``); score = sum of the choice's log-probabilities (``--length-penalty`` 0), prediction =
  the best choice; metric accuracy. ``seq_length`` 512 (``MAX_SEQ_LEN=512``).

The script's ``--unidirectional`` variant (``build_uni_input_from_ids``) is not provided.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation import metrics
from evaluation.tasks.base import EvalContext, Example, Task, field_of, find_data_file, read_jsonl
from glm_core.errors import DataError
from glm_core.layout import GLMInput, build_candidate_sequences


class MultiChoice(Task):
    name = "multichoice"
    description = "zero-shot multiple choice, T0-style jsonl (evaluate_multichoice.sh)"
    primary_metric = "acc"
    default_split = "test"  # evaluate_multichoice.sh: --test-data
    seq_length = 512  # evaluate_multichoice.sh: MAX_SEQ_LEN=512
    protocol_source = "scripts/evaluate_multichoice.sh"

    def data_files(self, data_dir: Path, split: str) -> list[Path]:
        return [find_data_file(data_dir, [f"multichoice/{split}.jsonl", f"{split}.jsonl"], self.name)]

    def config(self) -> dict[str, Any]:
        return {"scoring": "sum of choice log-probs, no eop", "truncation": "inputs from the left"}

    def read(self, data_dir: Path, split: str, limit: int | None) -> list[Example]:
        path = self.data_files(data_dir, split)[0]
        out = []
        for line, obj in read_jsonl(path, limit):
            text = field_of(obj, "inputs_pretokenized", path, line, str)
            choices = field_of(obj, "choices_pretokenized", path, line, list)
            if len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
                raise DataError(f"{path}:{line}: field 'choices_pretokenized' must list at least two non-empty strings")
            label = obj.get("label", 0)  # the original defaults a missing label to 0
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
                raise DataError(f"{path}:{line}: field 'label' must be an index into the choices, got {label!r}")
            out.append(Example(str(line - 1), {"inputs": text, "choices": choices, "label": label}))
        return out

    def samples(self, example: Example, ctx: EvalContext) -> list[GLMInput]:
        tok = ctx.tokenizer
        inputs = tok.encode(example.data["inputs"])
        if ctx.special.mask not in inputs:
            inputs.append(ctx.special.mask)
        choices = [tok.encode(c) for c in example.data["choices"]]
        if any(not c for c in choices):
            raise DataError(f"multichoice/{example.key}: a choice encodes to no tokens")
        longest = max(map(len, choices))
        if len(inputs) + longest + 2 > ctx.max_length:
            inputs = inputs[-(ctx.max_length - longest - 2) :]
        return build_candidate_sequences(inputs, choices, ctx.special, mask_position="last", max_length=ctx.max_length)

    def predict(self, examples: Sequence[Example], ctx: EvalContext) -> list[dict[str, Any]]:
        built = [self.samples(ex, ctx) for ex in examples]
        flat = ctx.scorer.score_samples([s for group in built for s in group], desc=self.name)
        records, cursor = [], 0
        for ex, group in zip(examples, built, strict=True):
            scores = [s.total for s in flat[cursor : cursor + len(group)]]
            cursor += len(group)
            records.append({"key": ex.key, "scores": scores, "pred": int(np.argmax(scores)), "label": ex.data["label"]})
        return records

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        return {"acc": metrics.accuracy([r["pred"] for r in records], [r["label"] for r in records])}
