"""Pattern-verbalizer pairs (PVPs) and the two cloze scoring modes of the paper (spec §2.4, §6.1), torch-free.

A pattern is two lists of parts, ``parts_a`` then ``parts_b`` (concatenated, no ``[SEP]``); a part is text or
:data:`MASK`, optionally *shortenable*. Every part is tokenized on its own and the ids are concatenated
(spec §3.2: "every PVP part is tokenized separately"). When the input is too long, tokens are removed one at a time
from the end of the last non-empty shortenable part of whichever side has more shortenable tokens (the original
``PVP.truncate``). ``glm_core.layout`` then adds ``[CLS]`` ... ``[eos]`` and Part B.

Scoring modes:

- :class:`ClozeClassificationTask` (BoolQ, CB, RTE, WiC, MultiRC): single-token cloze, the raw logits at the ``sop``
  position over the verbalizer ids (spec §2.4-1). If a verbalizer is not a single token in the model's vocabulary
  (small vocabularies), the labels are scored as multi-token candidates instead (sum of log-probs, no eop) and the
  results file says so.
- :class:`MultipleChoiceTask` (COPA, WSC, ReCoRD, demo): one sequence per candidate, ``[sop] + c[:-1]`` with
  targets ``c + [eop]`` (spec §2.4-2); score = sum of log-probs (incl. eop) / ``len**length_penalty``. Part A is
  truncated for each candidate on its own (the original ``PVP.encode``); candidates whose Part A comes out the same
  (every candidate, when nothing is cut) share it, and the scoring engine computes it once.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluation.tasks.base import EvalContext, Example, Task
from glm_core.errors import ConfigError, LayoutError
from glm_core.layout import GLMInput, build_candidate_sequences, build_single_token_cloze
from glm_core.tokenizer import GLMTokenizer


class _Mask:
    def __repr__(self) -> str:
        return "MASK"


MASK = _Mask()


@dataclass(frozen=True)
class Part:
    text: str | _Mask
    shortenable: bool = False


Pattern = tuple[list[Part | str | _Mask], list[Part | str | _Mask]]


def shortenable(text: str) -> Part:
    return Part(text, True)


# ------------------------------------------------------------------------------------------------ text helpers
_PUNCTUATION_MAP = {"\u201c": '"', "\u201d": '"', "\u2019": "'", "\u2018": "'", "\u2013": "-"}


def standardize_punctuation(text: str) -> str:
    """Curly quotes and en dashes to ASCII, as the original SuperGLUE readers do before building patterns."""
    for key, value in _PUNCTUATION_MAP.items():
        text = text.replace(key, value)
    return text


def remove_final_punctuation(text: str) -> str:
    return text.rstrip(string.punctuation)


def lowercase_first(text: str) -> str:
    return text[:1].lower() + text[1:]


# ------------------------------------------------------------------------------------------------ encoding
def _as_part(p: Part | str | _Mask) -> Part:
    return p if isinstance(p, Part) else Part(p, False)


def _encode_parts(parts: Sequence[Part | str | _Mask], tokenizer: GLMTokenizer) -> list[tuple[list[int], bool]]:
    out = []
    for p in map(_as_part, parts):
        ids = [tokenizer.special.mask] if isinstance(p.text, _Mask) else tokenizer.encode(p.text)
        out.append((ids, p.shortenable))
    return out


def _shortenable_length(parts: list[tuple[list[int], bool]]) -> int:
    return sum(len(ids) for ids, s in parts if s)


def _remove_last(parts: list[tuple[list[int], bool]]) -> None:
    candidates = [i for i, (ids, s) in enumerate(parts) if s and ids]
    if not candidates:
        raise LayoutError("the pattern does not fit the model's maximum length even with its shortenable text removed")
    i = candidates[-1]
    parts[i] = (parts[i][0][:-1], True)


def encode_pattern(pattern: Pattern, tokenizer: GLMTokenizer, budget: int) -> list[int]:
    """Token ids of ``parts_a + parts_b``, truncated to at most ``budget`` ids (the original ``PVP.truncate``)."""
    parts_a = _encode_parts(pattern[0], tokenizer)
    parts_b = _encode_parts(pattern[1], tokenizer)
    excess = sum(len(ids) for ids, _ in parts_a + parts_b) - budget
    for _ in range(max(excess, 0)):
        if _shortenable_length(parts_a) > _shortenable_length(parts_b):
            _remove_last(parts_a)
        else:
            _remove_last(parts_b)
    return [t for ids, _ in parts_a + parts_b for t in ids]


def encode_candidate(text: str, tokenizer: GLMTokenizer) -> list[int]:
    """A verbalizer / answer candidate: GPT-2 and RoBERTa candidates carry a leading space (spec §3.2)."""
    ids = tokenizer.encode(text, add_prefix_space=text.startswith(" "))
    if not ids:
        raise LayoutError(f"candidate {text!r} encodes to no tokens")
    return ids


def candidate_samples(
    pattern: Pattern, candidates: Sequence[list[int]], ctx: EvalContext, *, append_eop: bool
) -> list[GLMInput]:
    """``[CLS] A_c [eos] [sop] c[:-1]`` per candidate ``c``, where ``A_c`` is the pattern truncated to leave room for
    ``c`` (+ eop) within ``ctx.max_length``: the original truncates a fresh copy of the parts for every answer
    (``tasks/superglue/pvp.py`` ``PVP.encode``: ``this_parts_a = copy.deepcopy(parts_a)`` then ``self.truncate(...,
    answer_ids, max_length=self.max_seq_length)``, with ``[CLS]`` and ``[eos]`` counted by
    ``num_special_tokens_to_add``). Candidates that leave the same Part A still share it in the scoring engine."""
    out: list[GLMInput] = []
    for cand in candidates:
        ids = encode_pattern(pattern, ctx.tokenizer, ctx.max_length - 2 - len(cand) - int(append_eop))
        out.extend(
            build_candidate_sequences(ids, [cand], ctx.special, append_eop=append_eop, max_length=ctx.max_length)
        )
    return out


# ------------------------------------------------------------------------------------------------ single-token cloze
class ClozeClassificationTask(Task):
    """Single-token cloze classification (spec §2.4-1). Subclasses define the labels, verbalizers and patterns.

    ``units(example)`` lists the scored items of one example (one for most tasks, one per answer option for
    MultiRC) as ``(pattern, gold label index or None)``.
    """

    labels: tuple[Any, ...] = ()
    patterns: tuple[int, ...] = (0,)
    default_pattern = 0

    def __init__(self, option: str | None = None) -> None:
        self.pattern_id = self.default_pattern
        if option is not None:
            if not option.isdigit() or int(option) not in self.patterns:
                raise ConfigError(
                    f"task {self.name!r}: unknown pattern {option!r}; expected one of {', '.join(map(str, self.patterns))}"
                )
            self.pattern_id = int(option)

    @property
    def task_id(self) -> str:
        return f"{self.name}-p{self.pattern_id}"

    def verbalizers(self) -> list[str]:
        raise NotImplementedError

    def units(self, example: Example) -> list[tuple[Pattern, int | None]]:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {
            "pattern_id": self.pattern_id,
            "verbalizers": self.verbalizers(),
            "scoring": "single-token cloze (spec §2.4-1)",
        }

    # ---------------------------------------------------------------- layout
    def verbalizer_ids(self, tokenizer: GLMTokenizer) -> list[list[int]]:
        return [encode_candidate(v, tokenizer) for v in self.verbalizers()]

    def samples(self, example: Example, ctx: EvalContext) -> list[GLMInput]:
        """The GLM inputs scored for ``example``: one ``[CLS] pattern [eos] [sop]`` per unit (single-token
        verbalizers), or one sequence per unit and label (multi-token fallback)."""
        verbalizers = self.verbalizer_ids(ctx.tokenizer)
        single = all(len(v) == 1 for v in verbalizers)
        out: list[GLMInput] = []
        for pattern, _ in self.units(example):
            if single:
                ids = encode_pattern(pattern, ctx.tokenizer, ctx.max_length - 3)  # [CLS], eos, sop
                out.append(build_single_token_cloze(ids, ctx.special, max_length=ctx.max_length))
            else:
                out.extend(candidate_samples(pattern, verbalizers, ctx, append_eop=False))
        return out

    # ---------------------------------------------------------------- predict / metrics
    def predict(self, examples: Sequence[Example], ctx: EvalContext) -> list[dict[str, Any]]:
        verbalizers = self.verbalizer_ids(ctx.tokenizer)
        single = all(len(v) == 1 for v in verbalizers)
        samples: list[GLMInput] = []
        for ex in examples:
            samples.extend(self.samples(ex, ctx))
        if single:
            scores = ctx.scorer.score_samples(samples, select_ids=[v[0] for v in verbalizers], desc=self.name)
            unit_scores = [s.selected[0].astype(np.float64) for s in scores]  # type: ignore[index]
        else:
            flat = ctx.scorer.score_samples(samples, desc=self.name)
            k = len(verbalizers)
            unit_scores = [np.asarray([s.total for s in flat[i : i + k]]) for i in range(0, len(flat), k)]
        records = []
        cursor = 0
        for ex in examples:
            units = self.units(ex)
            ex_scores = unit_scores[cursor : cursor + len(units)]
            cursor += len(units)
            records.append(
                {
                    "key": ex.key,
                    "scores": [[float(x) for x in s] for s in ex_scores],
                    "pred": [int(np.argmax(s)) for s in ex_scores],
                    "label": [gold for _, gold in units],
                    "single_token": single,
                    **self.record_extra(ex),
                }
            )
        return records

    def record_extra(self, example: Example) -> dict[str, Any]:
        return {}


# ------------------------------------------------------------------------------------------------ multi-token candidates
class MultipleChoiceTask(Task):
    """Multi-token cloze over candidates (spec §2.4-2). Subclasses give ``pattern`` and ``candidates``."""

    length_penalty = 0.0  # spec §6.1: sum of log-probs; WSC divides by the length (penalty 1)
    append_eop = True  # spec §2.4-2: SuperGLUE PVPs end every candidate with eop

    def pattern(self, example: Example) -> Pattern:
        raise NotImplementedError

    def candidates(self, example: Example) -> list[str]:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {
            "scoring": "multi-token candidates, Part A shared (spec §2.4-2/3)",
            "append_eop": self.append_eop,
            "length_penalty": self.length_penalty,
        }

    def samples(self, example: Example, ctx: EvalContext) -> list[GLMInput]:
        """One ``[CLS] pattern [eos] [sop] c[:-1]`` sequence per candidate, Part A truncated for each candidate."""
        cands = [encode_candidate(c, ctx.tokenizer) for c in self.candidates(example)]
        return candidate_samples(self.pattern(example), cands, ctx, append_eop=self.append_eop)

    def predict(self, examples: Sequence[Example], ctx: EvalContext) -> list[dict[str, Any]]:
        samples: list[GLMInput] = []
        counts = []
        for ex in examples:
            built = self.samples(ex, ctx)
            samples.extend(built)
            counts.append(len(built))
        flat = ctx.scorer.score_samples(samples, desc=self.name)
        records = []
        cursor = 0
        for ex, n in zip(examples, counts, strict=True):
            scores = [s.normalised(self.length_penalty) for s in flat[cursor : cursor + n]]
            cursor += n
            record = {"key": ex.key, "scores": scores, "pred": int(np.argmax(scores))}
            record.update(self.record_extra(ex, record))
            records.append(record)
        return records

    def record_extra(self, example: Example, record: dict[str, Any]) -> dict[str, Any]:
        return {"label": example.data.get("label")}
