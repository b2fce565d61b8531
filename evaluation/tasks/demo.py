"""``demo``: a generic multiple-choice cloze in one jsonl file (torch-free).

Each line: ``{"text": "... [MASK] ...", "choices": ["...", ...], "label": int}``. Every choice is scored as a
multi-token candidate in the blank, ``[sop] + choice`` with ``eop`` at the end (the blank-infilling objective ends
every span with eop, spec §2.4-2), summed log-probs; the best choice is the prediction. All choices share one Part A.
File: ``<data_dir>/demo/<split>.jsonl`` (the package ships ``evaluation/data/demo/val.jsonl``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation import metrics
from evaluation.tasks.base import Example, field_of, find_data_file, read_jsonl
from evaluation.tasks.cloze import MultipleChoiceTask, Pattern
from glm_core.errors import DataError


class Demo(MultipleChoiceTask):
    name = "demo"
    description = "multiple-choice cloze, generic jsonl (text with [MASK], choices, label)"

    def data_files(self, data_dir: Path, split: str) -> list[Path]:
        return [find_data_file(data_dir, [f"demo/{split}.jsonl", f"{split}.jsonl"], self.name)]

    def read(self, data_dir: Path, split: str, limit: int | None) -> list[Example]:
        path = self.data_files(data_dir, split)[0]
        out = []
        for line, obj in read_jsonl(path, limit):
            text = field_of(obj, "text", path, line, str)
            if "[MASK]" not in text:
                raise DataError(f"{path}:{line}: field 'text' must contain a [MASK] blank")
            choices = field_of(obj, "choices", path, line, list)
            if len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
                raise DataError(f"{path}:{line}: field 'choices' must list at least two non-empty strings")
            label = obj.get("label")
            if label is not None and (
                isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices)
            ):
                raise DataError(f"{path}:{line}: field 'label' must be an index into 'choices', got {label!r}")
            out.append(Example(str(obj.get("id", line)), {"text": text, "choices": choices, "label": label}))
        return out

    def pattern(self, example: Example) -> Pattern:
        return ([example.data["text"]], [])  # the tokenizer turns the "[MASK]" string into the mask id

    def candidates(self, example: Example) -> list[str]:
        return [" " + c.strip() for c in example.data["choices"]]

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        return {"acc": metrics.accuracy([r["pred"] for r in records], [r["label"] for r in records])}
