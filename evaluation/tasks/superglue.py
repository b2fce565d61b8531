"""The eight SuperGLUE tasks with the paper's patterns, verbalizers, scoring and metrics (spec §6.1), torch-free.

Data: the official SuperGLUE ``*.jsonl`` files, ``<data_dir>/<Task>/<split>.jsonl`` (``BoolQ/val.jsonl``, ...) or
``<data_dir>/superglue/<Task>/<split>.jsonl``. Pattern ids follow ``tasks/superglue/pvp.py`` of the original code;
the default is pattern 0 for every task, because the released finetuning script appends ``--pattern-id 0`` after
the task configs (spec §6.1 notes). Choose another with ``task:N`` (e.g. ``boolq:4``). Every task runs at its
config's ``MAX_SEQ_LEN`` (``Task.seq_length``; ``--seq-length`` overrides). ``evaluation/PROTOCOL.md`` has the
whole protocol.

| task    | length | scoring                         | metrics            |
|---------|--------|---------------------------------|--------------------|
| BoolQ   | 256 | single-token, " No"/" Yes"      | acc                |
| CB      | 256 | single-token, " Yes"/" No"/" Maybe" | acc, macro-F1  |
| RTE     | 256 | single-token, " Yes"/" No"      | acc                |
| WiC     | 256 | single-token, " No"/" Yes"      | acc                |
| MultiRC | 512 | single-token per answer option  | F1a, EM, acc       |
| COPA    | 256 | 2 candidates (+eop), summed     | acc                |
| WSC     | 128 | span1 vs the file's candidates (+eop), mean | acc    |
| ReCoRD  | 512 | all passage entities, sorted (+eop) | EM, F1 (max over golds) |
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation import metrics
from evaluation.tasks.base import EvalContext, Example, field_of, file_stamp, find_data_file, read_jsonl
from evaluation.tasks.cloze import (
    MASK,
    ClozeClassificationTask,
    MultipleChoiceTask,
    Pattern,
    candidate_samples,
    encode_candidate,
    lowercase_first,
    remove_final_punctuation,
    shortenable,
    standardize_punctuation,
)
from glm_core.errors import ConfigError, DataError
from glm_core.layout import GLMInput

SPLITS = ("val", "train", "test")


def _superglue_file(data_dir: Path, folder: str, split: str, task: str) -> Path:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; SuperGLUE files are {', '.join(s + '.jsonl' for s in SPLITS)}")
    return find_data_file(data_dir, [f"{folder}/{split}.jsonl", f"superglue/{folder}/{split}.jsonl"], task)


def _bool_label(value: Any, path: Path, line: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return int(value.lower() == "true")
    if isinstance(value, int) and value in (0, 1):
        return value
    raise DataError(f"{path}:{line}: field 'label' must be true or false, got {value!r}")


class _SuperGlueMixin:
    folder = ""
    name = ""

    def data_files(self, data_dir: Path, split: str) -> list[Path]:
        return [_superglue_file(data_dir, self.folder, split, self.name)]

    def _rows(self, data_dir: Path, split: str, limit: int | None) -> tuple[Path, list[tuple[int, dict[str, Any]]]]:
        path = self.data_files(data_dir, split)[0]
        return path, read_jsonl(path, limit)

    def stamp(self, data_dir: Path, split: str) -> str:
        return file_stamp(self.data_files(data_dir, split)[0])


def _idx(obj: dict[str, Any], line: int) -> str:
    return str(obj.get("idx", line))


# ----------------------------------------------------------------------------------------------------------------------
# Single-token classification tasks
# ----------------------------------------------------------------------------------------------------------------------


class _Classification(_SuperGlueMixin, ClozeClassificationTask):
    primary_metric = "acc"

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        preds = [r["pred"][0] for r in records]
        golds = [r["label"][0] for r in records]
        return {"acc": metrics.accuracy(preds, golds)}


class BoolQ(_Classification):
    """BoolQ: passage, question (spec §6.1 row BoolQ; pvp.py BoolQPVP)."""

    name, folder = "boolq", "BoolQ"
    seq_length = 256  # config_tasks/task_boolq.sh: MAX_SEQ_LEN=256
    protocol_source = "scripts/ds_finetune_superglue.sh + config_tasks/task_boolq.sh"
    description = "BoolQ yes/no questions, single-token cloze"
    labels = ("false", "true")
    patterns = (0, 1, 2, 3, 4, 5)

    def read(self, data_dir: Path, split: str, limit: int | None) -> list[Example]:
        path, rows = self._rows(data_dir, split, limit)
        out = []
        for line, obj in rows:
            data = {
                "passage": standardize_punctuation(field_of(obj, "passage", path, line, str)),
                "question": standardize_punctuation(field_of(obj, "question", path, line, str)),
                "label": _bool_label(obj.get("label"), path, line),
            }
            out.append(Example(_idx(obj, line), data))
        return out

    def verbalizers(self) -> list[str]:
        # p0, p2, p4: " No"/" Yes"; p1, p3, p5: " false"/" true"
        return [" No", " Yes"] if self.pattern_id % 2 == 0 else [" false", " true"]

    def units(self, example: Example) -> list[tuple[Pattern, int | None]]:
        passage, question = example.data["passage"], example.data["question"]
        if self.pattern_id < 2:
            parts = [shortenable(passage), " Question:", shortenable(" " + question), "? Answer:", MASK, "."]
        elif self.pattern_id < 4:
            parts = [
                shortenable(passage),
                " Based on the previous passage,",
                shortenable(" " + question),
                "?",
                MASK,
                ".",
            ]
        else:
            parts = [
                "Based on the following passage",  # pvp.py BoolQPVP: no trailing space
                shortenable(" " + question),
                "?",
                MASK,
                ".",
                shortenable(" " + passage),
            ]
        return [((parts, []), example.data["label"])]


class RTE(_Classification):
    """RTE: premise (text_a), hypothesis (text_b) (spec §6.1 row RTE; pvp.py RtePVP)."""

    name, folder = "rte", "RTE"
    seq_length = 256  # config_tasks/task_rte.sh: MAX_SEQ_LEN=256
    protocol_source = "scripts/ds_finetune_superglue.sh + config_tasks/task_rte.sh"
    description = "RTE entailment, single-token cloze"
    labels: tuple[Any, ...] = ("entailment", "not_entailment")
    patterns = (0, 1, 2, 3, 4)

    def read(self, data_dir: Path, split: str, limit: int | None) -> list[Example]:
        path, rows = self._rows(data_dir, split, limit)
        out = []
        for line, obj in rows:
            label = obj.get("label")
            if label is not None and label not in self.labels:
                raise DataError(f"{path}:{line}: field 'label' must be one of {list(self.labels)}, got {label!r}")
            data = {
                "premise": standardize_punctuation(field_of(obj, "premise", path, line, str)),
                "hypothesis": standardize_punctuation(field_of(obj, "hypothesis", path, line, str)),
                "label": None if label is None else self.labels.index(label),
            }
            out.append(Example(_idx(obj, line), data))
        return out

    def verbalizers(self) -> list[str]:
        if self.pattern_id == 4:
            return [" true", " false"]
        return [" Yes", " No"]  # entailment, not_entailment

    def units(self, example: Example) -> list[tuple[Pattern, int | None]]:
        text_a = example.data["premise"]
        text_b = remove_final_punctuation(example.data["hypothesis"])
        p = self.pattern_id
        if p == 0:
            pattern: Pattern = (['"', shortenable(text_b), '" ?'], [MASK, ', "', shortenable(text_a), '"'])
        elif p == 1:
            pattern = ([shortenable(text_b), "?"], [MASK, ",", shortenable(" " + text_a)])
        elif p == 2:
            pattern = (['"', shortenable(text_b), '" ?'], [MASK, '. "', shortenable(text_a), '"'])
        elif p == 3:
            pattern = ([shortenable(text_b), "?"], [MASK, ".", shortenable(" " + text_a)])
        else:
            pattern = (
                [shortenable(text_a), " question:", shortenable(" " + text_b), " True or False?", " answer:", MASK],
                [],
            )
        return [(pattern, example.data["label"])]


class CB(RTE):
    """CommitmentBank: as RTE with a third label (spec §6.1 row CB; pvp.py CbPVP)."""

    name, folder = "cb", "CB"
    seq_length = 256  # config_tasks/task_cb.sh: MAX_SEQ_LEN=256
    protocol_source = "scripts/ds_finetune_superglue.sh + config_tasks/task_cb.sh"
    description = "CommitmentBank, single-token cloze"
    labels = ("entailment", "contradiction", "neutral")
    primary_metric = "acc"

    def verbalizers(self) -> list[str]:
        if self.pattern_id == 4:
            return [" true", " false", " neither"]
        return [" Yes", " No", " Maybe"]

    def units(self, example: Example) -> list[tuple[Pattern, int | None]]:
        if self.pattern_id == 4:
            text_a, text_b = example.data["premise"], example.data["hypothesis"]  # CbPVP p4 keeps the punctuation
            parts = [
                shortenable(text_a),
                " question:",
                shortenable(" " + text_b),
                " true, false or neither?",
                " answer:",
                MASK,
            ]
            return [((parts, []), example.data["label"])]
        return super().units(example)

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        preds = [r["pred"][0] for r in records]
        golds = [r["label"][0] for r in records]
        return {"acc": metrics.accuracy(preds, golds), "f1": metrics.macro_f1(preds, golds)}


class WiC(_Classification):
    """Words in context (spec §6.1 row WiC; pvp.py WicPVP)."""

    name, folder = "wic", "WiC"
    seq_length = 256  # config_tasks/task_wic.sh: MAX_SEQ_LEN=256
    protocol_source = "scripts/ds_finetune_superglue.sh + config_tasks/task_wic.sh"
    description = "WiC word sense, single-token cloze"
    labels = ("false", "true")
    patterns = (0, 1, 2)

    def read(self, data_dir: Path, split: str, limit: int | None) -> list[Example]:
        path, rows = self._rows(data_dir, split, limit)
        out = []
        for line, obj in rows:
            data = {
                "sentence1": standardize_punctuation(field_of(obj, "sentence1", path, line, str)),
                "sentence2": standardize_punctuation(field_of(obj, "sentence2", path, line, str)),
                "word": field_of(obj, "word", path, line, str),
                "label": _bool_label(obj.get("label"), path, line),
            }
            out.append(Example(_idx(obj, line), data))
        return out

    def verbalizers(self) -> list[str]:
        return ["2", "b"] if self.pattern_id == 2 else [" No", " Yes"]

    def units(self, example: Example) -> list[tuple[Pattern, int | None]]:
        s1, s2, word = example.data["sentence1"], example.data["sentence2"], example.data["word"]
        if self.pattern_id == 0:
            parts = [shortenable('"' + s1 + '" / "' + s2 + '"'), ' Similar sense of "' + word + '"?', MASK, "."]
        elif self.pattern_id == 1:
            parts = [
                shortenable(s1),
                shortenable(" " + s2),
                " Does " + word + " have the same meaning in both sentences?",
                MASK,
            ]
        else:
            # pvp.py WicPVP pattern 2, part for part (the quote after s1 is a part of its own)
            parts = [word, " .", ' Sense (1) (a) "', shortenable(s1), '"', " (", MASK, ') "', s2, '"']
        return [((parts, []), example.data["label"])]


class MultiRC(_Classification):
    """MultiRC: one example per question, one single-token cloze per answer option (spec §6.1 row MultiRC)."""

    name, folder = "multirc", "MultiRC"
    seq_length = 512  # config_tasks/task_multirc.sh: MAX_SEQ_LEN=512
    protocol_source = "scripts/ds_finetune_superglue.sh + config_tasks/task_multirc.sh"
    description = "MultiRC answer-option verification, single-token cloze"
    labels = (0, 1)
    patterns = (0, 1, 2, 3, 4)
    primary_metric = "f1a"

    def read(self, data_dir: Path, split: str, limit: int | None) -> list[Example]:
        path, rows = self._rows(data_dir, split, None)
        out: list[Example] = []
        for line, obj in rows:
            passage = standardize_punctuation(field_of(obj, "passage.text", path, line, str))
            questions = field_of(obj, "passage.questions", path, line, list)
            for q in questions:
                if not isinstance(q, dict):
                    raise DataError(f"{path}:{line}: every entry of 'passage.questions' must be an object")
                question = standardize_punctuation(field_of(q, "question", path, line, str))
                answers = []
                for a in field_of(q, "answers", path, line, list):
                    if not isinstance(a, dict):
                        raise DataError(f"{path}:{line}: every answer must be an object with 'text'")
                    label = a.get("label")
                    answers.append(
                        {"text": standardize_punctuation(field_of(a, "text", path, line, str)), "label": label}
                    )
                if not answers:
                    raise DataError(f"{path}:{line}: question {q.get('idx')!r} has no answers")
                key = f"{obj.get('idx', line)}-{q.get('idx', len(out))}"
                out.append(Example(key, {"passage": passage, "question": question, "answers": answers}))
                if limit is not None and len(out) >= limit:
                    return out
        return out

    def verbalizers(self) -> list[str]:
        return [" False", " True"] if self.pattern_id == 3 else [" No", " Yes"]

    def units(self, example: Example) -> list[tuple[Pattern, int | None]]:
        passage = remove_final_punctuation(example.data["passage"].rstrip())
        question = remove_final_punctuation(example.data["question"].rstrip())
        out = []
        for answer in example.data["answers"]:
            a = answer["text"]
            p = self.pattern_id
            # pvp.py MultiRcPVP.get_parts, part for part
            passage_part = shortenable(passage)
            if p == 0:
                parts = [passage_part, ".", " Question:", " " + question + "?", " Is it", " " + a, "?", MASK, "."]
            elif p == 1:
                parts = [passage_part, ".", " Question:", " " + question, "?", ' Is the correct answer "', a, '"?']
                parts += [MASK, "."]
            elif p == 2:
                parts = [passage_part, ". Based on the previous passage,", " " + question, "?", ' Is "', a]
                parts += ['" a correct answer?', MASK, "."]
            elif p == 3:
                parts = [passage_part, " " + question, "- [", MASK, "]", a]
            else:
                parts = [passage_part, ".", " Question:", " " + question, "?", " " + a, "?", MASK, "."]
            out.append(((parts, []), answer["label"]))
        return out

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        qids, preds, golds = [], [], []
        for r in records:
            qids.extend([r["key"]] * len(r["pred"]))
            preds.extend(r["pred"])
            golds.extend(r["label"])
        return metrics.multirc_scores(qids, preds, golds)


# ----------------------------------------------------------------------------------------------------------------------
# Multi-token candidate tasks
# ----------------------------------------------------------------------------------------------------------------------


class COPA(_SuperGlueMixin, MultipleChoiceTask):
    """COPA: the two choices as candidates (spec §6.1 row COPA; pvp.py CopaPVP patterns 0/1)."""

    name, folder = "copa", "COPA"
    seq_length = 256  # config_tasks/task_copa.sh: MAX_SEQ_LEN=256
    protocol_source = "scripts/ds_finetune_superglue.sh + config_tasks/task_copa.sh"
    description = "COPA cause/effect, two multi-token candidates"
    patterns = (0, 1, 2)

    def __init__(self, option: str | None = None) -> None:
        self.pattern_id = 0
        if option is not None:
            if option not in ("0", "1", "2"):
                raise ConfigError(f"task 'copa': unknown pattern {option!r}; expected 0, 1 or 2")
            self.pattern_id = int(option)

    @property
    def task_id(self) -> str:
        return f"copa-p{self.pattern_id}"

    def config(self) -> dict[str, Any]:
        return {"pattern_id": self.pattern_id, **super().config()}

    def read(self, data_dir: Path, split: str, limit: int | None) -> list[Example]:
        path, rows = self._rows(data_dir, split, limit)
        out = []
        for line, obj in rows:
            question = field_of(obj, "question", path, line, str)
            if question not in ("cause", "effect"):
                raise DataError(f"{path}:{line}: field 'question' must be 'cause' or 'effect', got {question!r}")
            label = obj.get("label")
            if label is not None and label not in (0, 1):
                raise DataError(f"{path}:{line}: field 'label' must be 0 or 1, got {label!r}")
            data = {
                "premise": field_of(obj, "premise", path, line, str),  # the original COPA reader keeps the punctuation
                "choice1": field_of(obj, "choice1", path, line, str),
                "choice2": field_of(obj, "choice2", path, line, str),
                "question": question,
                "label": label,
            }
            out.append(Example(_idx(obj, line), data))
        return out

    def candidates(self, example: Example) -> list[str]:
        d = example.data
        return [" " + remove_final_punctuation(lowercase_first(d[c])) for c in ("choice1", "choice2")]

    def samples(self, example: Example, ctx: EvalContext) -> list[GLMInput]:
        """Patterns 0/1: the choices as candidates. Pattern 2 (``pvp.py`` ``CopaPVP.encode``, its own encoder): one
        sequence per choice, ``'"' c1 '" or "' c2 '"?' premise [MASK] " " + choice``, every one scored on the same
        target, the joiner ``" because"`` / ``" so"`` + eop."""
        if self.pattern_id != 2:
            return super().samples(example, ctx)
        d = example.data
        premise = shortenable(remove_final_punctuation(d["premise"]))
        c1 = remove_final_punctuation(lowercase_first(d["choice1"]))
        c2 = remove_final_punctuation(lowercase_first(d["choice2"]))
        joiner = encode_candidate(" because" if d["question"] == "cause" else " so", ctx.tokenizer)
        out: list[GLMInput] = []
        for choice in (c1, c2):
            pattern: Pattern = (['"', c1, '" or "', c2, '"?', premise, MASK, " " + choice], [])
            out.extend(candidate_samples(pattern, [joiner], ctx, append_eop=True))
        return out

    def pattern(self, example: Example) -> Pattern:
        d = example.data
        premise = shortenable(remove_final_punctuation(" " + d["premise"]))
        c1 = remove_final_punctuation(lowercase_first(d["choice1"]))
        c2 = remove_final_punctuation(lowercase_first(d["choice2"]))
        joiner = " because" if d["question"] == "cause" else ", so"
        if self.pattern_id == 0:
            return (['"', c1, '" or "', c2, '"?', premise, joiner, MASK, "."], [])
        return ([c1, " or", " " + c2, "?", premise, joiner, MASK, "."], [])

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        return {"acc": metrics.accuracy([r["pred"] for r in records], [r["label"] for r in records])}


def _fix_wsc_indices(
    words: list[str], span2_index: int, span2_text: str, path: Path, line: int
) -> tuple[list[str], int]:
    """The original reader's repair of off-by-one pronoun indices and pronouns glued to punctuation."""
    if not 0 <= span2_index < len(words):
        raise DataError(f"{path}:{line}: target.span2_index {span2_index} is outside the {len(words)}-word text")
    if words[span2_index] != span2_text:
        for offset in (-1, 1):
            j = span2_index + offset
            if 0 <= j < len(words) and words[j] == span2_text:
                span2_index = j
        w = words[span2_index]
        if w != span2_text and w.startswith(span2_text):
            words = words[:span2_index] + [w[: len(span2_text)], w[len(span2_text) :]] + words[span2_index + 1 :]
    if words[span2_index] != span2_text:
        raise DataError(f"{path}:{line}: target.span2_text {span2_text!r} is not at word {span2_index} of the text")
    return words, span2_index


class WSC(_SuperGlueMixin, MultipleChoiceTask):
    """WSC as multi-token candidates (spec §6.1 row WSC: ``--wsc-negative``, length penalty 1).

    Candidates: ``" " + span1_text`` first, then ``" " + c`` for the file's ``candidates`` (a list of
    ``{"text": ...}`` objects, as the original's WSC-negative data, or of strings), exact duplicates removed and the
    first occurrence kept (``tasks/superglue/dataset.py`` ``WscProcessor._create_examples``: ``if not cand in
    candidates[:i]``) - a candidate that differs from ``span1_text`` only in case stays. The paper's protocol
    (``config_tasks/task_wsc.sh``: ``DATA_PATH=.../WSC-negative``) needs that field, so a file without it is refused
    under the default ``--wsc-negatives file``. ``--wsc-negatives annotations`` (not the paper's protocol) takes the
    negatives from the other ``span1_text`` values annotated for the same text and pronoun in the official files.
    Prediction = True iff candidate 0 scores highest (spec §6.1, ``eval_utils.py``).
    """

    name, folder = "wsc", "WSC"
    seq_length = 128  # config_tasks/task_wsc.sh: MAX_SEQ_LEN=128
    protocol_source = "scripts/ds_finetune_superglue.sh + config_tasks/task_wsc.sh"
    description = "WSC coreference, span1 vs negative candidates"
    length_penalty = 1.0
    patterns = (0, 1, 2)
    negatives_from = "file"

    def __init__(self, option: str | None = None) -> None:
        self.pattern_id = 0
        if option is not None:
            if option not in ("0", "1", "2"):
                raise ConfigError(f"task 'wsc': unknown pattern {option!r}; expected 0, 1 or 2")
            self.pattern_id = int(option)

    def configure(self, options: dict[str, Any]) -> None:
        source = options.get("wsc_negatives", "file")
        if source not in ("file", "annotations"):
            raise ConfigError(f"--wsc-negatives must be 'file' or 'annotations', got {source!r}")
        self.negatives_from = source

    @property
    def task_id(self) -> str:
        suffix = "-annotations" if self.negatives_from == "annotations" else ""
        return f"wsc-p{self.pattern_id}{suffix}"

    def config(self) -> dict[str, Any]:
        return {"pattern_id": self.pattern_id, "negatives": self.negatives_from, **super().config()}

    def read(self, data_dir: Path, split: str, limit: int | None) -> list[Example]:
        path, rows = self._rows(data_dir, split, None)
        parsed = []
        for line, obj in rows:
            text = standardize_punctuation(field_of(obj, "text", path, line, str))
            span1 = field_of(obj, "target.span1_text", path, line, str)
            span2 = field_of(obj, "target.span2_text", path, line, str)
            span2_index = field_of(obj, "target.span2_index", path, line, int)
            words, span2_index = _fix_wsc_indices(text.split(), span2_index, span2, path, line)
            given = obj.get("candidates")
            negatives = None
            if given is not None and self.negatives_from == "file":
                if not isinstance(given, list) or not all(
                    isinstance(c, str) or (isinstance(c, dict) and isinstance(c.get("text"), str)) for c in given
                ):
                    raise DataError(
                        f"{path}:{line}: field 'candidates' must be a list of strings or of {{'text': str}}"
                    )
                negatives = [c["text"] if isinstance(c, dict) else c for c in given]
                negatives = [c for i, c in enumerate(negatives) if c not in negatives[:i]]  # exact duplicates only
            elif self.negatives_from == "file":
                raise DataError(
                    f"{path}:{line}: WSC needs a 'candidates' field (the original's WSC-negative data) under the "
                    "paper's protocol; add it or pass --wsc-negatives annotations"
                )
            parsed.append((line, obj, words, span1, span2, span2_index, negatives))
        # --wsc-negatives annotations: the other span1 annotations of the same sentence and pronoun are the negatives
        by_sentence: dict[tuple[str, int], list[str]] = {}
        for _, _, words, span1, _, span2_index, _ in parsed:
            by_sentence.setdefault((" ".join(words), span2_index), []).append(span1)
        out = []
        for line, obj, words, span1, span2, span2_index, negatives in parsed:
            if negatives is None:
                annotated = by_sentence[(" ".join(words), span2_index)]
                negatives = []
                for c in annotated:  # distinct, span1 itself (up to case) left out
                    if c not in negatives and c.lower() != span1.lower():
                        negatives.append(c)
            data = {
                "words": words,
                "span1_text": span1,
                "span2_text": span2,
                "span2_index": span2_index,
                "negatives": negatives,
                "label": _bool_label(obj.get("label"), path, line),
            }
            out.append(Example(_idx(obj, line), data))
            if limit is not None and len(out) >= limit:
                break
        return out

    def candidates(self, example: Example) -> list[str]:
        return [" " + example.data["span1_text"]] + [" " + c for c in example.data["negatives"]]

    def pattern(self, example: Example) -> Pattern:
        d = example.data
        words = list(d["words"])
        words[d["span2_index"]] = "*" + words[d["span2_index"]] + "*"
        text = shortenable(" ".join(words))
        pronoun = d["span2_text"]
        if self.pattern_id == 0:
            return ([text, " The pronoun '*" + pronoun + "*' refers to", MASK, "."], [])
        if self.pattern_id == 1:
            return ([text, " In the previous sentence, the pronoun '*" + pronoun + "*' refers to", MASK, "."], [])
        return (
            [
                text,
                " Question: In the passage above, what does the pronoun '*" + pronoun + "*' refer to?",
                " Answer:",
                MASK,
                ".",
            ],
            [],
        )

    def record_extra(self, example: Example, record: dict[str, Any]) -> dict[str, Any]:
        return {"label": example.data["label"], "pred_true": int(record["pred"] == 0)}

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        return {"acc": metrics.accuracy([r["pred_true"] for r in records], [r["label"] for r in records])}


class ReCoRD(_SuperGlueMixin, MultipleChoiceTask):
    """ReCoRD: every distinct passage entity is a candidate (spec §6.1 row ReCoRD; pvp.py RecordPVP)."""

    name, folder = "record", "ReCoRD"
    seq_length = 512  # config_tasks/task_record.sh: MAX_SEQ_LEN=512
    protocol_source = "scripts/ds_finetune_superglue.sh + config_tasks/task_record.sh"
    description = "ReCoRD cloze over passage entities"
    primary_metric = "f1"

    def read(self, data_dir: Path, split: str, limit: int | None) -> list[Example]:
        path, rows = self._rows(data_dir, split, None)
        out: list[Example] = []
        for line, obj in rows:
            raw = field_of(obj, "passage.text", path, line, str)
            entities: list[str] = []
            for ent in field_of(obj, "passage.entities", path, line, list):
                if (
                    not isinstance(ent, dict)
                    or not isinstance(ent.get("start"), int)
                    or not isinstance(ent.get("end"), int)
                ):
                    raise DataError(f"{path}:{line}: every entity needs integer 'start' and 'end'")
                text = standardize_punctuation(raw[ent["start"] : ent["end"] + 1])  # 'end' is inclusive
                if text not in entities:
                    entities.append(text)
            if not entities:
                raise DataError(f"{path}:{line}: the passage has no entities to choose from")
            entities.sort()  # tasks/superglue/dataset.py RecordProcessor: entities = list(set); entities.sort()
            # spec §6.1: "@highlight\n" -> "- " (as the GPT-3 paper)
            passage = standardize_punctuation(raw).replace("@highlight\n", "- ")
            for q in field_of(obj, "qas", path, line, list):
                query = standardize_punctuation(field_of(q, "query", path, line, str))
                if "@placeholder" not in query:
                    raise DataError(f"{path}:{line}: query {query!r} has no @placeholder")
                answers = []
                for a in q.get("answers", []):
                    t = standardize_punctuation(field_of(a, "text", path, line, str))
                    if t not in answers:
                        answers.append(t)
                key = f"{obj.get('idx', line)}-{q.get('idx', len(out))}"
                out.append(Example(key, {"passage": passage, "query": query, "entities": entities, "answers": answers}))
                if limit is not None and len(out) >= limit:
                    return out
        return out

    def candidates(self, example: Example) -> list[str]:
        return [" " + e for e in example.data["entities"]]

    def pattern(self, example: Example) -> Pattern:
        left, right = example.data["query"].split("@placeholder", 1)
        return ([shortenable(example.data["passage"]), " " + left.rstrip(), MASK, right], [])

    def record_extra(self, example: Example, record: dict[str, Any]) -> dict[str, Any]:
        return {"prediction": example.data["entities"][record["pred"]], "answers": example.data["answers"]}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "answer_normalisation": "unidecode" if metrics.UNIDECODE else "as written"}

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        return metrics.record_scores([r["prediction"] for r in records], [r["answers"] for r in records])


SUPERGLUE_TASKS = {cls.name: cls for cls in (BoolQ, CB, COPA, MultiRC, ReCoRD, RTE, WiC, WSC)}
