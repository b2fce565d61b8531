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

``multichoice_uni`` is the script with ``--unidirectional`` (the same ``__getitem__``, ``dataset.py:102-118``):
``[gMASK]`` is the mask and none is appended; the same left cut; one ``build_uni_input_from_ids``
(``tasks/data_utils.py:106-141``) sequence per choice: Part A = ``[CLS] [gMASK]`` (``sep = 2``), Part B = ``[sop]
inputs choice[:-1]`` causal at position 1 (the mask's) with block positions ``1, 2, ...``; only the choice is
scored. Models without a ``[gMASK]`` token cannot run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation import metrics
from evaluation.tasks.base import EvalContext, Example, Task, field_of, find_data_file, read_jsonl
from glm_core.errors import ConfigError, DataError
from glm_core.layout import GLMInput, build_candidate_sequences
from glm_core.special_tokens import SpecialTokens


class MultiChoice(Task):
    name = "multichoice"
    description = "zero-shot multiple choice, T0-style jsonl (evaluate_multichoice.sh)"
    primary_metric = "acc"
    default_split = "test"  # evaluate_multichoice.sh: --test-data
    seq_length = 512  # evaluate_multichoice.sh: MAX_SEQ_LEN=512
    protocol_source = "scripts/evaluate_multichoice.sh"
    unidirectional = False  # MultiChoiceDataset: args.unidirectional

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
        if self.unidirectional and ctx.special.gmask is None:
            raise ConfigError(f"task {self.name!r} needs a [gMASK] token; the model's tokenizer has none")
        if not self.unidirectional and ctx.special.mask not in inputs:
            inputs.append(ctx.special.mask)
        choices = [tok.encode(c) for c in example.data["choices"]]
        if any(not c for c in choices):
            raise DataError(f"multichoice/{example.key}: a choice encodes to no tokens")
        longest = max(map(len, choices))
        if len(inputs) + longest + 2 > ctx.max_length:
            inputs = inputs[-(ctx.max_length - longest - 2) :]
        if self.unidirectional:
            return [uni_choice_input(inputs, choice, ctx.special) for choice in choices]
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


class MultiChoiceUni(MultiChoice):
    name = "multichoice_uni"
    description = "zero-shot multiple choice, unidirectional (evaluate_multichoice.sh with --unidirectional)"
    protocol_source = "scripts/evaluate_multichoice.sh + --unidirectional"
    unidirectional = True

    def config(self) -> dict[str, Any]:
        return {**super().config(), "layout": "[CLS] [gMASK] | [sop] inputs choice[:-1], causal"}


def uni_choice_input(inputs: Sequence[int], choice: Sequence[int], special: SpecialTokens) -> GLMInput:
    """``build_uni_input_from_ids(inputs, choice, add_cls=True, mask_id=gMASK)`` without its trailing pads: ids
    ``[CLS] [gMASK] [sop] inputs choice[:-1]``, positions ``0, 1, 1, ...``, block positions ``0, 0, 1, 2, ...``,
    ``sep = 2``; targets ``choice`` on the last ``len(choice)`` tokens (the last input token predicts choice[0])."""
    if special.cls is None or special.gmask is None:
        raise ConfigError(
            "multichoice_uni reproduces GLM's [CLS] [gMASK] [sop] layout; this model has no [CLS]/[gMASK]"
        )
    ids = [special.cls, special.gmask, special.sop, *inputs, *choice[:-1]]
    n, start = len(ids), len(ids) - len(choice)
    positions = [0, 1] + [1] * (n - 2)
    blocks = [0, 0, *range(1, n - 1)]
    targets = np.full(n, special.pad, dtype=np.int64)
    targets[start:] = choice
    loss_mask = np.zeros(n, dtype=np.float32)
    loss_mask[start:] = 1.0
    return GLMInput(
        input_ids=np.asarray(ids),
        position_ids=np.asarray([positions, blocks]),
        sep=2,
        targets=targets,
        loss_mask=loss_mask,
        mask_positions=(1,),
        candidate_spans=((start, n),),
    )
