"""The scoring engine: log-probabilities and logits of scored spans over the GLM step contract, in numpy.

Inputs are :class:`glm_core.layout.GLMInput` samples built by ``glm_core.layout`` (Part A / Part B, 2-D positions,
``sep``). A sample's scored span is ``candidate_spans[0]``: ``logits[t]`` for ``t`` in that span predict
``targets[t]``. The engine returns, per sample, the log-probability of every target token (float64), whether it
is the argmax (the "greedy" flag), and optionally the raw logits at the span over a few requested ids (single-token
cloze verbalizers, spec §2.4-1).

Part A sharing (the original ``--fast-decode``, spec §2.4-3). Samples whose Part A is identical (same ids and
positions: every candidate of one example, every continuation of one lm-eval context) are grouped. Each group's
Part A is run **once**, with ``sep = len(A)`` (bidirectional); its K/V cache is expanded over the group's members
with ``reorder_past``, and each member's Part B runs as a later chunk with ``sep = 0``. By the visibility rule of the
step contract (key ``j < P`` always visible, then causal) this gives the same logits as one full sequence per
member. Chunks of different lengths are right-padded: pads sit after every real token, so causality hides them.
Part A's of different lengths are never padded into one batch (cached pads would be visible to Part B, spec §2.1);
groups with equal Part A length are batched together. ``share_part_a=False`` runs one full sequence per sample
(used by the benchmark and by the equality test); singletons always run as full sequences.

    scorer = Scorer(backend, batch_size=8)
    scorer.loglikelihood([(context_ids, continuation_ids), ...])  # -> [(sum logprob, is_greedy), ...]
    scorer.score_samples(samples, select_ids=verbalizer_ids)      # -> [SpanScore, ...]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from glm_core.errors import LayoutError
from glm_core.layout import (
    GLMInput,
    build_candidate_sequences,
    build_rolling_windows,
    build_scoring_input,
    build_single_token_cloze,
    collate,
)

__all__ = ["RollingScore", "Scorer", "ScoringStats", "SpanScore", "log_softmax_rows", "split_at_sep"]


# ----------------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class SpanScore:
    """Scores of one sample's span.

    logprobs: float64 ``[n]``, ``log p(targets[t])`` at each scored position (log-softmax over the full vocabulary).
    greedy: bool ``[n]``, whether ``targets[t]`` is the argmax at that position.
    selected: float32 ``[n, K]`` raw logits at the span for the ids passed as ``select_ids`` (``None`` otherwise).
    """

    logprobs: np.ndarray
    greedy: np.ndarray
    selected: np.ndarray | None = None

    @property
    def total(self) -> float:
        return float(np.sum(self.logprobs))

    @property
    def is_greedy(self) -> bool:
        return bool(np.all(self.greedy))

    def __len__(self) -> int:
        return int(self.logprobs.shape[0])

    def normalised(self, length_penalty: float) -> float:
        """``sum / len**length_penalty`` (spec §6.1: 0 = plain sum, WSC uses 1 = mean)."""
        return self.total / (len(self) ** length_penalty) if length_penalty else self.total


@dataclass
class RollingScore:
    """Rolling-window log-likelihood of one document: ``total`` over ``num_tokens`` scored tokens (all but t0)."""

    total: float
    num_tokens: int


@dataclass
class ScoringStats:
    """Tokens the engine sent to the backend, by kind (the backend's own counters see the same total)."""

    part_a_tokens: int = 0  # shared Part A prefills
    chunk_tokens: int = 0  # Part B chunks after a cached Part A (padded)
    full_tokens: int = 0  # full sequences (padded)
    steps: int = 0
    groups_shared: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.part_a_tokens + self.chunk_tokens + self.full_tokens


# ----------------------------------------------------------------------------------------------------------------------
# Small numpy pieces
# ----------------------------------------------------------------------------------------------------------------------


def log_softmax_rows(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(log p(target), target == argmax)`` for rows ``logits [n, V]`` (float64 log-sum-exp)."""
    x = np.asarray(logits, dtype=np.float64)  # [n, V]
    m = x.max(axis=-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=-1))
    rows = np.arange(x.shape[0])
    return x[rows, targets] - lse, np.argmax(x, axis=-1) == targets


def _span(sample: GLMInput) -> tuple[int, int]:
    if sample.attention_mask is not None:
        raise LayoutError(
            "this sample needs an explicit attention matrix (packed multiple choice, spec §2.4-4); the step "
            "contract expresses only the sep rule: build one sequence per candidate instead"
        )
    if len(sample.candidate_spans) != 1:
        raise LayoutError(f"a scored sample needs exactly one candidate span, got {len(sample.candidate_spans)}")
    start, end = sample.candidate_spans[0]
    if not 0 <= start < end <= len(sample):
        raise LayoutError(f"candidate span {start}:{end} does not lie inside the {len(sample)}-token sample")
    return start, end


def split_at_sep(sample: GLMInput) -> tuple[GLMInput, GLMInput]:
    """``(part_a, chunk)``: the sample's Part A (``sep = len``) and its Part B as a later chunk (``sep = 0``).

    Slices of the built sample, not a new layout: positions, block ids and targets are kept as built, so
    running ``part_a`` and then ``chunk`` on its cache is the same computation as the full sample (DESIGN.md rule).
    """
    sep = sample.sep
    if not 0 < sep < len(sample):
        raise LayoutError(f"cannot split a sample with sep={sep} and {len(sample)} tokens into Part A and Part B")
    start, end = _span(sample)
    if start < sep:
        raise LayoutError("the scored span starts inside Part A; it cannot be scored from a cached Part A")
    part_a = GLMInput(
        input_ids=sample.input_ids[:sep],
        position_ids=sample.position_ids[:, :sep],
        sep=sep,
        targets=sample.targets[:sep],
        loss_mask=sample.loss_mask[:sep],
        mask_positions=sample.mask_positions,
    )
    chunk = GLMInput(
        input_ids=sample.input_ids[sep:],
        position_ids=sample.position_ids[:, sep:],
        sep=0,  # DESIGN.md: every chunk after a cached Part A uses sep = 0
        targets=sample.targets[sep:],
        loss_mask=sample.loss_mask[sep:],
        mask_positions=sample.mask_positions,
        candidate_spans=((start - sep, end - sep),),
    )
    return part_a, chunk


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _part_a_key(sample: GLMInput) -> bytes | None:
    """Identity of a sample's Part A, or None when it cannot be shared (no Part A, span inside Part A)."""
    if not 0 < sample.sep < len(sample) or sample.attention_mask is not None:
        return None
    if sample.candidate_spans and sample.candidate_spans[0][0] < sample.sep:
        return None
    sep = sample.sep
    return sample.input_ids[:sep].tobytes() + b"|" + np.ascontiguousarray(sample.position_ids[:, :sep]).tobytes()


# ----------------------------------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------------------------------


class Scorer:
    """Scores GLM samples through a backend's step contract (see the module docstring).

    Args:
        backend: anything with ``step``, ``reorder_past`` and a ``tokenizer`` (``evaluation.backends.EvalBackend``).
        batch_size: sequences per ``step`` call: full sequences, or Part A's of one length.
        share_part_a: run each distinct Part A once and its members as cached chunks (default), or one full
            sequence per sample.
        chunk_batch_size: Part-B chunks per ``step`` call after a shared Part A (default ``4 * batch_size``; chunks
            are short).
        progress: show a tqdm bar over samples.
    """

    def __init__(
        self,
        backend: Any,
        *,
        batch_size: int = 8,
        share_part_a: bool = True,
        chunk_batch_size: int | None = None,
        progress: bool = False,
    ) -> None:
        if batch_size < 1:
            raise LayoutError(f"batch_size must be >= 1, got {batch_size}")
        self.backend = backend
        self.special = backend.tokenizer.special
        self.batch_size = batch_size
        self.share_part_a = share_part_a
        self.chunk_batch_size = chunk_batch_size or 4 * batch_size
        self.progress = progress
        self.stats = ScoringStats()

    @property
    def max_length(self) -> int:
        return int(self.backend.max_length)

    # ------------------------------------------------------------------ core
    def score_samples(
        self, samples: Sequence[GLMInput], *, select_ids: Sequence[int] | None = None, desc: str | None = None
    ) -> list[SpanScore]:
        """One :class:`SpanScore` per sample, in input order."""
        for s in samples:
            _span(s)
        select = None if select_ids is None else np.asarray(list(select_ids), dtype=np.int64)
        results: list[SpanScore | None] = [None] * len(samples)
        groups: dict[bytes, list[int]] = {}
        full: list[int] = []
        for i, s in enumerate(samples):
            key = _part_a_key(s) if self.share_part_a else None
            if key is None:
                full.append(i)
            else:
                groups.setdefault(key, []).append(i)
        shared = []
        for members in groups.values():
            if len(members) == 1:
                full.append(members[0])  # nothing to share: one full sequence is cheaper than prefill + chunk
            else:
                shared.append(members)
        bar = tqdm(total=len(samples), desc=desc, disable=not self.progress, leave=False, unit="seq")
        try:
            self._run_full(sorted(full, key=lambda i: len(samples[i])), samples, select, results, bar)
            self._run_shared(shared, samples, select, results, bar)
        finally:
            bar.close()
        return [r for r in results if r is not None]

    def _step(self, batch: dict[str, np.ndarray], past: Any, kind: str) -> tuple[np.ndarray, Any]:
        logits, present = self.backend.step(batch["input_ids"], batch["position_ids"], batch["sep"], past)
        n = int(batch["input_ids"].size)
        self.stats.steps += 1
        self.stats.by_kind[kind] = self.stats.by_kind.get(kind, 0) + n
        if kind == "part_a":
            self.stats.part_a_tokens += n
        elif kind == "chunk":
            self.stats.chunk_tokens += n
        else:
            self.stats.full_tokens += n
        return logits, present

    def _collect(self, logits_row: np.ndarray, sample: GLMInput, select: np.ndarray | None) -> SpanScore:
        start, end = sample.candidate_spans[0]
        rows = logits_row[start:end]  # [n, V]
        logprobs, greedy = log_softmax_rows(rows, sample.targets[start:end])
        selected = None if select is None else np.asarray(rows[:, select], dtype=np.float32)
        return SpanScore(logprobs=logprobs, greedy=greedy, selected=selected)

    def _run_full(
        self,
        order: Sequence[int],
        samples: Sequence[GLMInput],
        select: np.ndarray | None,
        results: list[SpanScore | None],
        bar: Any,
    ) -> None:
        # spec §2.1: right-padding after Part B; pads are invisible to every real row (j > i and j >= sep).
        for batch_idx in _batches(order, self.batch_size):
            batch = collate([samples[i] for i in batch_idx], pad_id=self.special.pad)
            logits, _ = self._step(batch, None, "full")  # [B, S, V]
            for row, i in enumerate(batch_idx):
                results[i] = self._collect(logits[row], samples[i], select)
            bar.update(len(batch_idx))

    def _run_shared(
        self,
        groups: Sequence[list[int]],
        samples: Sequence[GLMInput],
        select: np.ndarray | None,
        results: list[SpanScore | None],
        bar: Any,
    ) -> None:
        by_length: dict[int, list[list[int]]] = {}
        for members in groups:
            by_length.setdefault(samples[members[0]].sep, []).append(members)
        for length in sorted(by_length):
            for prefix_groups in _batches(by_length[length], self.batch_size):
                parts = [split_at_sep(samples[members[0]])[0] for members in prefix_groups]
                prefix = collate(parts, pad_id=self.special.pad)  # equal lengths: no padding
                _, past = self._step(prefix, None, "part_a")  # [k, L] with sep = L: Part A bidirectional
                self.stats.groups_shared += len(prefix_groups)
                members = [(row, i) for row, group in enumerate(prefix_groups) for i in group]
                members.sort(key=lambda m: len(samples[m[1]]) - length)
                for chunk_members in _batches(members, self.chunk_batch_size):
                    rows = np.asarray([row for row, _ in chunk_members], dtype=np.int64)
                    expanded = self.backend.reorder_past(past, rows)  # [n, H, L, D] per layer
                    chunks = [split_at_sep(samples[i])[1] for _, i in chunk_members]
                    batch = collate(chunks, pad_id=self.special.pad)  # sep = 0 for every chunk
                    logits, _ = self._step(batch, expanded, "chunk")
                    for row, (_, i) in enumerate(chunk_members):
                        results[i] = self._collect(logits[row], chunks[row], select)
                    bar.update(len(chunk_members))
                del past

    # ------------------------------------------------------------------ task-level helpers
    def single_token_cloze(
        self, texts: Sequence[Sequence[int]], verbalizer_ids: Sequence[int], *, desc: str | None = None
    ) -> np.ndarray:
        """Raw logits ``[N, K]`` at the ``sop`` position over the verbalizer ids (spec §2.4-1).

        ``texts[i]`` is the pattern's token ids (with one ``[MASK]``), without ``[CLS]``/eos.
        """
        samples = [build_single_token_cloze(t, self.special, max_length=self.max_length) for t in texts]
        scores = self.score_samples(samples, select_ids=verbalizer_ids, desc=desc)
        if not scores:
            return np.zeros((0, len(verbalizer_ids)), dtype=np.float32)
        return np.stack([s.selected[0] for s in scores])  # type: ignore[index]

    def candidate_scores(
        self,
        texts: Sequence[Sequence[int]],
        candidates: Sequence[Sequence[Sequence[int]]],
        *,
        append_eop: bool = True,
        length_penalty: float = 0.0,
        desc: str | None = None,
    ) -> list[np.ndarray]:
        """Per example, the score of each candidate: ``sum log p / len**length_penalty`` (spec §2.4-2, §6.1).

        ``append_eop``: SuperGLUE PVPs end every candidate with eop (its probability is part of the score).
        """
        samples: list[GLMInput] = []
        owners: list[int] = []
        for k, (text, cands) in enumerate(zip(texts, candidates, strict=True)):
            built = build_candidate_sequences(
                text, cands, self.special, append_eop=append_eop, max_length=self.max_length
            )
            samples.extend(built)
            owners.extend([k] * len(built))
        scores = self.score_samples(samples, desc=desc)
        out: list[list[float]] = [[] for _ in texts]
        for k, s in zip(owners, scores, strict=True):
            out[k].append(s.normalised(length_penalty))
        return [np.asarray(o, dtype=np.float64) for o in out]

    def loglikelihood(
        self,
        requests: Iterable[tuple[Sequence[int], Sequence[int]]],
        *,
        mask_id: int | None = None,
        add_eos: bool = False,
        unidirectional: bool = False,
        desc: str | None = None,
    ) -> list[tuple[float, bool]]:
        """``(sum log p(continuation | context), is_greedy)`` per ``(context_ids, continuation_ids)`` request.

        Layout (``glm_core.layout.build_scoring_input``): Part A = ``[CLS] context [gMASK]`` (``[MASK]`` for models
        without gMASK), Part B = ``[sop] continuation[:-1]``; the context is cut from the left to fit ``max_length``.
        Requests with the same context share one Part A.
        """
        samples = [
            build_scoring_input(
                ctx,
                cont,
                self.special,
                mask_id=mask_id,
                add_eos=add_eos,
                unidirectional=unidirectional,
                max_length=self.max_length,
                truncate_left=True,
            )
            for ctx, cont in requests
        ]
        return [(s.total, s.is_greedy) for s in self.score_samples(samples, desc=desc)]

    def loglikelihood_rolling(
        self,
        documents: Sequence[Sequence[int]],
        *,
        seq_len: int | None = None,
        stride: int | None = None,
        mask_id: int | None = None,
        unidirectional: bool = False,
        desc: str | None = None,
    ) -> list[RollingScore]:
        """Rolling-window log-likelihood per document (spec §6.3): every token but the first is scored once.

        ``seq_len`` defaults to ``max_length``; ``stride`` (the original ``--overlapping-eval``) to
        ``min(256, seq_len // 2)``. To score the first token too, prepend a token the model conditions on (e.g. eos).
        """
        seq_len = seq_len or self.max_length
        stride = stride or min(256, seq_len // 2)
        samples: list[GLMInput] = []
        owners: list[int] = []
        for k, doc in enumerate(documents):
            windows = build_rolling_windows(
                doc, self.special, seq_len=seq_len, stride=stride, mask_id=mask_id, unidirectional=unidirectional
            )
            samples.extend(windows)
            owners.extend([k] * len(windows))
        totals = [RollingScore(0.0, 0) for _ in documents]
        for k, s in zip(owners, self.score_samples(samples, desc=desc), strict=True):
            totals[k].total += s.total
            totals[k].num_tokens += len(s)
        return totals
