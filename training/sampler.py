"""GLM's pretraining data: blank-infilling samples cut from a plain-text corpus (spec glm_reference §5), torch-free.

The corpus is UTF-8 text with documents separated by blank lines. It is tokenized once into a **stream**: every
document followed by ``eos``. The stream is cut into fixed windows of ``seq_length - 1`` tokens (the last, partial
window is dropped); epoch ``e`` visits the windows in a permutation seeded by ``(seed, e)``.

Global sample ``g = step * global_batch_size + i`` of training step ``step`` is built from window ``g`` (in a
short-sequence batch: from a chunk of a window, see ``short_seq_prob`` below) with a random generator seeded by
``(seed, step, i)`` alone; the short-sequence draw uses ``(seed, step)``, the objective, document-span length and
single-span draws ``(seed, step, group)`` (one group of ``objective_group`` samples). So a step's global batch is a
pure function of ``(seed, step)``: it is the same whatever the number of processes that share it, and resuming at step ``k`` needs no
data-loader state. :meth:`PretrainSampler.batch` hands process ``rank`` its contiguous slice of the global batch.

Objectives (spec §5; probabilities ``bert_prob`` / ``gap_sentence_prob`` / rest), drawn once per group of
``objective_group`` consecutive samples of the global batch (the run's micro-batch, as the original draws one per
micro-batch; 0: one per step), see :meth:`PretrainSampler.batch_plan`:

- **token** (``[MASK]``): span lengths ~ Poisson(λ=3) restricted to 1..39 until 15 % of each document's tokens are
  covered, placed without overlap and >= 1 token apart (``glm_core.layout.sample_spans``), per document inside the
  window; the window is shortened until the corrupted sample fits ``seq_length``.
- **sentence** (``[sMASK]``): whole sentences, >= 15 % of each document (``glm_core.layout.sample_sentence_spans``).
- **document** (``[gMASK]``): one span per sample whose length is drawn once per batch, uniform over
  ``[floor(gpt_min_ratio * n), n - 1]``. It is the suffix when the window holds several documents or when the
  sample's draw is ``< gpt_infill_prob`` (GLM:blocklm_utils.py:408-410), otherwise it starts at a uniformly random
  position. A suffix sample has no ``[eop]``: Part B is ``[sop]`` + the span without its last token, with the span
  as targets (GLM:blocklm_utils.py:415-419); a placed span is an ordinary blank, ``[sop] span`` -> ``span [eop]``
  (GLM:blocklm_utils.py:434-436 via ``make_block_data``, 199-201).

Spans become Part B in shuffled order (``shuffle_spans``); ``glm_core.layout.corrupt`` builds tokens, 2-D positions,
targets and the Part-B-only loss mask, and ``glm_core.layout.collate`` pads to ``seq_length``.

Options of the 10B recipes (spec §5; all 0 by default, and at 0 they draw nothing, so batches stay bit for bit):

- ``short_seq_prob``: with this probability a *batch* (one draw per step, GLM:blocklm_utils.py:322-323) is made of
  chunks of a shared target length ``L`` uniform over ``[min(32, w - 1), w - 1]`` (``w`` = window,
  GLM:blocklm_utils.py:284) instead of whole windows. As in the original, each window is cut into
  ``k = w // L`` chunks (GLM:blocklm_utils.py:285, 289-309), each drawn independently: a random start moved left
  to a sentence start, ending at the last sentence end within ``L`` tokens (unaligned ``L`` tokens when that would
  keep fewer than ``L // 2``). **Global batch size**: the original's batch grows to ``k`` times as many samples;
  ours keeps ``global_batch_size`` by cutting that list back to it: slot ``i`` of a short batch holds chunk
  ``i % k`` of window ``step * global_batch_size + i // k``, i.e. the chunks of a window fill consecutive slots
  and the step reads only its first ``ceil(global_batch_size / k)`` windows (the others are skipped in that
  epoch). The mapping depends on ``(seed, step, i)`` only, so ranks still build just their own slice.
- ``single_span_prob``: with this probability a *batch* (one draw per step, GLM:blocklm_utils.py:324-326) is a
  single-span batch: the objective draw is replaced by 0.0, which selects the token objective (or, when
  ``bert_prob`` is 0, the first objective of positive probability, GLM:blocklm_utils.py:328, 361), and every sample
  gets one Poisson span instead of the 15 % budget (GLM:blocklm_utils.py:331-334).
- ``block_mask_prob``: token objective only (the original's ``task == 'bert'``); each Part-B *input* token after a
  block's ``[sop]`` is replaced by ``[dBLOCK]`` with this probability; ``[sop]``, targets and Part A are unchanged.
  The id comes from :func:`dblock_id` (spec §3.2 row "dBLOCK (train only)").

Known differences from GLM:blocklm_utils.py (4f61ed7) that remain: a single-span sample puts its span in its longest
document segment (the original picks the shortest segment whose budget holds it, :132-157); the token objective's
15 % budget is counted per document segment (the original per sample, :337); the document span's length is a
fraction of the window clipped to ``n - 1`` (the original draws from ``[int(gpt_min_ratio * min_len), max_len - 2]``,
:403-404); the short-sequence draw is made once per step for the whole global batch (the original makes it with
the objective, once per micro-batch, :322-323), so that a step's windows stay a function of ``(seed, step)``; the
objective group is the run's first micro-batch, not a collate call of each rank and DataLoader worker (:318).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from glm_core.errors import ConfigError, DataError, LayoutError
from glm_core.layout import GLMInput, collate, corrupt, sample_sentence_spans, sample_spans, span_length_distribution
from glm_core.special_tokens import SpecialTokens

OBJECTIVES = ("token", "sentence", "document")
MIN_DOCUMENT_TOKENS = 2  # a document segment shorter than this gets no token-level span

__all__ = [
    "OBJECTIVES",
    "MaskingConfig",
    "PretrainSampler",
    "dblock_id",
]


# ------------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class MaskingConfig:
    """The pretraining objective's knobs; defaults are the GLM-Base/Large recipe (spec §5: ``bert_prob 1.0``)."""

    bert_prob: float = 1.0  # token-level [MASK] spans
    gap_sentence_prob: float = 0.0  # sentence-level [sMASK]; the rest is document-level [gMASK]
    bert_ratio: float = 0.15
    gap_sentence_ratio: float = 0.15
    poisson_lambda: float = 3.0
    max_span: int = 39
    gpt_min_ratio: float = 0.5
    gpt_infill_prob: float = 0.5
    shuffle_spans: bool = True
    task_mask: bool = True  # False: [MASK] for every objective (GLM-Base/Large/RoBERTa, spec §5)
    block_mask_prob: float = 0.0  # Part-B inputs -> [dBLOCK] (10B/Chinese: 0.1)
    short_seq_prob: float = 0.0  # batches of shorter, sentence-aligned chunks (10B: 0.02)
    single_span_prob: float = 0.0  # one Poisson span instead of the 15 % budget (10B 1024 continuation: 0.05)

    def __post_init__(self) -> None:
        for name in (
            "bert_prob",
            "gap_sentence_prob",
            "gpt_infill_prob",
            "block_mask_prob",
            "short_seq_prob",
            "single_span_prob",
        ):
            _check_probability(name, getattr(self, name), closed=True)
        for name in ("bert_ratio", "gap_sentence_ratio", "gpt_min_ratio"):
            _check_probability(name, getattr(self, name), closed=False)
        if self.bert_prob + self.gap_sentence_prob > 1.0 + 1e-9:
            raise ConfigError(
                f"bert_prob + gap_sentence_prob must be <= 1 (the rest is document-level), got "
                f"{self.bert_prob} + {self.gap_sentence_prob}"
            )
        if not self.poisson_lambda > 0:
            raise ConfigError(f"poisson_lambda must be > 0, got {self.poisson_lambda}")
        if isinstance(self.max_span, bool) or not isinstance(self.max_span, int) or self.max_span < 1:
            raise ConfigError(f"max_span must be a positive integer, got {self.max_span!r}")

    @property
    def document_prob(self) -> float:
        return max(0.0, 1.0 - self.bert_prob - self.gap_sentence_prob)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _check_probability(name: str, value: float, closed: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0)
    if not ok:
        interval = "[0, 1]" if closed else "(0, 1)"
        raise ConfigError(f"{name} must lie in {interval}, got {value!r}")


def dblock_id(family: str, tokens: SpecialTokens) -> int | None:
    """The train-only ``[dBLOCK]`` id of a tokenizer (spec §3.2), or ``None`` when the family has none.

    GPT-2: 50265 (after sMASK). SentencePiece (Chinese, glm-tiny): ``n + 10`` with ``--fix-command-token``, ``n + 9``
    without it in the original vocabulary (there gMASK = eop). The hub table of glm-10b-chinese uses ``n + 9`` for
    its copied gMASK row (``bad_words``), so that table has no free dBLOCK id. BERT and RoBERTa: none.
    """
    if family == "gpt2":
        return 50265
    if family != "sentencepiece":
        return None
    n = tokens.pad  # command tokens follow the n pieces; pad is the first
    if tokens.gmask == tokens.eop:
        return n + 9  # original glm-10b-chinese vocabulary, no --fix-command-token
    if tokens.bad_words:
        return None  # hub glm-10b-chinese: n + 9 is its gMASK
    return n + 10


# ------------------------------------------------------------------------------------------------------- sampler
class PretrainSampler:
    """Builds step ``k``'s global batch of blank-infilling samples, deterministically from ``(seed, k)``."""

    def __init__(
        self,
        stream: np.ndarray,
        tokens: SpecialTokens,
        seq_length: int,
        masking: MaskingConfig | None = None,
        *,
        seed: int = 0,
        sentence_ends: Sequence[int] = (),
        dblock: int | None = None,
        objective_group: int = 0,
    ) -> None:
        self.masking = masking or MaskingConfig()
        if isinstance(objective_group, bool) or not isinstance(objective_group, int) or objective_group < 0:
            raise ConfigError(f"objective_group must be an integer >= 0, got {objective_group!r}")
        self.objective_group = objective_group
        if isinstance(seq_length, bool) or not isinstance(seq_length, int) or seq_length < 8:
            raise ConfigError(f"seq_length must be an integer >= 8, got {seq_length!r}")
        # held as given (an integer array or a read-only np.memmap is not copied): windows are read on demand
        self.stream = stream if _is_integer_array(stream) else np.asarray(stream, dtype=np.int64)
        self.tokens = tokens
        self.seq_length = seq_length
        self.window = seq_length - 1  # [CLS] + window fills the sequence before corruption
        self.seed = int(seed)
        self.sentence_ends = frozenset(int(i) for i in sentence_ends) | {tokens.eos}
        self.num_windows = len(self.stream) // self.window
        if self.num_windows == 0:
            raise DataError(
                f"corpus has {len(self.stream)} tokens, fewer than one training window of {self.window} "
                f"(seq_length - 1); use a larger corpus or a shorter seq_length"
            )
        if self.masking.task_mask and (tokens.smask is None or tokens.gmask is None):
            if self.masking.bert_prob < 1.0:
                raise ConfigError(
                    "the tokenizer has no [sMASK]/[gMASK]; use task_mask=False or bert_prob=1.0 (spec §5)"
                )
        if self.masking.block_mask_prob > 0 and dblock is None:
            raise ConfigError(
                f"block_mask_prob={self.masking.block_mask_prob} needs a [dBLOCK] id, but the tokenizer has none "
                "(spec §3.2: GPT-2 and SentencePiece tokenizers only); use block_mask_prob=0"
            )
        self.dblock = dblock
        self._permutations: dict[int, np.ndarray] = {}

    # ----------------------------------------------------------------------------------------- windows
    def window_tokens(self, global_index: int) -> np.ndarray:
        """The ``seq_length - 1`` stream tokens of global sample ``global_index`` (epoch-wise shuffled windows)."""
        epoch, index = divmod(int(global_index), self.num_windows)
        perm = self._permutations.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch, 0x57AE]).permutation(self.num_windows)
            self._permutations = {epoch: perm}  # keep one epoch: steps only move forward
        start = int(perm[index]) * self.window
        return np.asarray(self.stream[start : start + self.window], dtype=np.int64)  # only this window is read

    def mask_id(self, objective: str) -> int:
        if not self.masking.task_mask or objective == "token":
            return self.tokens.mask
        return self.tokens.smask if objective == "sentence" else self.tokens.gmask  # type: ignore[return-value]

    # ----------------------------------------------------------------------------------------- batches
    def _plan_seed(self, step: int, index: int, salt: int) -> list[int]:
        """The seed of a per-group draw: ``(seed, step, group)``, or ``(seed, step)`` with one group per batch."""
        if self.objective_group <= 0:
            return [self.seed, int(step), salt]
        return [self.seed, int(step), int(index) // self.objective_group, salt]

    def batch_plan(self, step: int, index: int = 0) -> tuple[str, float]:
        """The objective and document-span fraction of sample ``index`` of step ``step`` (spec §5).

        Drawn once per **group** of ``objective_group`` consecutive samples of the global batch: the original draws
        them in its collate function, once per micro-batch of each rank (GLM:blocklm_utils.py:318-328), so a step of
        the GLM-10B mix trains on several objectives at once. The group is the run's micro-batch as first launched
        (kept when a resume changes the split), so the samples stay a function of ``(seed, step, index)`` whatever
        the number of processes. ``objective_group=0``: one draw per step. A single-span group
        (:meth:`single_span`) replaces the objective draw by 0.0, as the original does (GLM:blocklm_utils.py:326):
        the token objective whenever ``bert_prob > 0``.
        """
        rng = np.random.default_rng(self._plan_seed(step, index, 0xBA7C))
        u = 0.0 if self.single_span(step, index) else float(rng.random())
        m = self.masking
        objective = "token" if u < m.bert_prob else "sentence" if u < m.bert_prob + m.gap_sentence_prob else "document"
        fraction = float(rng.uniform(m.gpt_min_ratio, 1.0))
        return objective, fraction

    def single_span(self, step: int, index: int = 0) -> bool:
        """Whether sample ``index``'s group is single-span: one draw per group (GLM:blocklm_utils.py:324-325)."""
        p = self.masking.single_span_prob
        if p <= 0:
            return False  # no draw: batches are those of a sampler without the option
        rng = np.random.default_rng(self._plan_seed(step, index, 0x5195))
        return float(rng.random()) < p

    def short_length(self, step: int) -> int | None:
        """The step's shared chunk length when it is a short-sequence batch (``short_seq_prob``), else ``None``."""
        p = self.masking.short_seq_prob
        if p <= 0:
            return None  # no draw: batches are those of a sampler without the option
        rng = np.random.default_rng([self.seed, int(step), 0x5407])
        if float(rng.random()) >= p:
            return None
        low = min(32, self.window - 1)  # GLM:blocklm_utils.py:284: randrange(32, max_seq_length - 1)
        return int(rng.integers(low, self.window))  # low .. window - 1

    def source_window(self, step: int, index: int, global_batch_size: int) -> int:
        """The global window index sample ``index`` of step ``step`` is cut from (see ``short_seq_prob``)."""
        g = int(step) * global_batch_size
        length = self.short_length(step)
        if length is None:
            return g + int(index)
        per_window = max(1, self.window // length)  # GLM:blocklm_utils.py:285: (max_seq_length - 1) // target_length
        return g + int(index) // per_window

    def sample(self, step: int, index: int, global_batch_size: int) -> GLMInput:
        """Sample ``index`` (0-based, < ``global_batch_size``) of step ``step``'s global batch."""
        if not 0 <= index < global_batch_size:
            raise ConfigError(f"sample index {index} outside the global batch of {global_batch_size}")
        objective, fraction = self.batch_plan(step, index)
        text, rng = self._text_and_generator(step, index, global_batch_size)
        if objective == "token":
            draw = self._single_span if self.single_span(step, index) else self._token_spans
            sample = self._span_sample(text, rng, draw, "token")
            return self._block_mask(sample, rng)
        if objective == "sentence":
            return self._span_sample(text, rng, self._sentence_spans, "sentence")
        return self._document_sample(text, rng, fraction)

    def sample_text(self, step: int, index: int, global_batch_size: int) -> np.ndarray:
        """The tokens sample ``index`` of step ``step`` is cut from: its window, or its chunk in a short batch.

        The sample itself holds a prefix of these (the token and sentence objectives shorten the text until the
        corrupted sample fits ``seq_length``; the document objective keeps ``seq_length - 3`` tokens).
        """
        return self._text_and_generator(step, index, global_batch_size)[0]

    def _text_and_generator(
        self, step: int, index: int, global_batch_size: int
    ) -> tuple[np.ndarray, np.random.Generator]:
        rng = np.random.default_rng([self.seed, int(step), int(index)])
        text = self.window_tokens(self.source_window(step, index, global_batch_size))
        length = self.short_length(step)
        if length is not None:
            text = self._short_chunk(text, length, rng)  # one of the window's w // L independent chunks
        return text, rng

    def global_batch(self, step: int, global_batch_size: int) -> list[GLMInput]:
        return [self.sample(step, i, global_batch_size) for i in range(global_batch_size)]

    def batch(self, step: int, global_batch_size: int, rank: int = 0, world_size: int = 1) -> dict[str, np.ndarray]:
        """Process ``rank``'s contiguous slice of step ``step``'s global batch, padded to ``seq_length``."""
        if world_size < 1 or not 0 <= rank < world_size or global_batch_size % world_size:
            raise ConfigError(
                f"global batch {global_batch_size} must split evenly over {world_size} process(es) (rank {rank})"
            )
        per_rank = global_batch_size // world_size
        indices = range(rank * per_rank, (rank + 1) * per_rank)
        return collate([self.sample(step, i, global_batch_size) for i in indices], self.tokens.pad, self.seq_length)

    # ----------------------------------------------------------------------------------------- objectives
    def _with_cls(self, text: np.ndarray) -> list[int]:
        return [self.tokens.cls, *text.tolist()]  # spec §3.1: pretraining samples start with [CLS]

    def _documents(self, text: np.ndarray) -> list[tuple[int, int]]:
        """``(start, end)`` of the document pieces of ``text``, each ending after its ``eos`` (if any)."""
        ends = np.flatnonzero(text == self.tokens.eos) + 1
        bounds = [0, *ends.tolist()]
        if bounds[-1] != len(text):
            bounds.append(len(text))
        return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]

    def _order(self, count: int, rng: np.random.Generator) -> list[int]:
        return rng.permutation(count).tolist() if self.masking.shuffle_spans else list(range(count))

    def _is_sentence_end(self, token: int) -> bool:
        return int(token) in self.sentence_ends

    def _short_chunk(self, text: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
        """A sentence-aligned chunk of at most ``length`` tokens (spec §5 ``short_seq_prob``)."""
        if length >= len(text):
            return text
        start = int(rng.integers(0, len(text) - length))
        # move left to a sentence start: not an eos itself, and right after a sentence end (or eos)
        while start > 0 and (text[start] == self.tokens.eos or not self._is_sentence_end(text[start - 1])):
            start -= 1
        end = start + length
        while end > start and not self._is_sentence_end(text[end - 1]):
            end -= 1
        if end - start < length // 2:  # no sentence end close enough: keep the unaligned chunk
            end = start + length
        return text[start:end]

    def _block_mask(self, sample: GLMInput, rng: np.random.Generator) -> GLMInput:
        """Part-B span inputs (block position >= 2, i.e. after each ``[sop]``) -> ``[dBLOCK]`` w.p. ``block_mask_prob``."""
        p = self.masking.block_mask_prob
        if p <= 0:
            return sample  # no draw
        span_inputs = np.flatnonzero(sample.position_ids[1] >= 2)  # Part A has block position 0, sop has 1
        hit = span_inputs[rng.random(len(span_inputs)) < p]
        sample.input_ids[hit] = self.dblock  # GLM:blocklm_utils.py:195-198; targets are a separate array
        return sample

    def _token_spans(self, text: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int]]:
        """Token-level spans per document (spec §5), never covering a document's trailing ``eos``."""
        m = self.masking
        spans: list[tuple[int, int]] = []
        for start, end in self._documents(text):
            maskable = end - start - int(text[end - 1] == self.tokens.eos)
            if maskable < MIN_DOCUMENT_TOKENS:
                continue
            try:
                found = sample_spans(maskable, rng, m.bert_ratio, m.poisson_lambda, m.max_span)
            except LayoutError:
                continue  # a short document where the drawn spans cannot be placed: leave it unmasked
            spans += [(start + a, start + b) for a, b in found]
        return spans

    def _single_span(self, text: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int]]:
        """One span of Poisson(λ) length (1..max_span), placed uniformly inside one document of the window.

        Every sample of a single-span batch gets this instead of the 15 % budget (GLM:blocklm_utils.py:331-334).
        """
        m = self.masking
        lengths = span_length_distribution(m.poisson_lambda, m.max_span)  # P(1..max_span)
        length = int(rng.choice(np.arange(1, m.max_span + 1), p=lengths))
        documents = []
        for start, end in self._documents(text):
            maskable = end - start - int(text[end - 1] == self.tokens.eos)
            if maskable >= MIN_DOCUMENT_TOKENS:
                documents.append((start, maskable))
        if not documents:
            return []
        # the longest document segment of the sample; the original gives the span to the shortest document whose
        # bert_ratio budget holds it, else to the longest (GLM:blocklm_utils.py:132-157)
        start, maskable = max(documents, key=lambda d: d[1])
        length = min(length, maskable - 1)  # at least one token of the document stays in Part A
        offset = int(rng.integers(0, maskable - length + 1))
        return [(start + offset, start + offset + length)]

    def _sentence_spans(self, text: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int]]:
        """Whole-sentence spans per document (spec §5); a document's trailing ``eos`` is no sentence."""
        spans: list[tuple[int, int]] = []
        for start, end in self._documents(text):
            doc = text[start : end - int(text[end - 1] == self.tokens.eos)].tolist()
            if not doc:
                continue
            found = sample_sentence_spans(doc, sorted(self.sentence_ends), rng, self.masking.gap_sentence_ratio)
            spans += [(start + a, start + b) for a, b in found]
        return spans

    def _span_sample(
        self,
        text: np.ndarray,
        rng: np.random.Generator,
        draw_spans: Callable[[np.ndarray, np.random.Generator], list[tuple[int, int]]],
        objective: str,
    ) -> GLMInput:
        """The token or sentence objective: spans from ``draw_spans``, masked with ``objective``'s mask token."""
        # The corrupted sample has 1 + |text| + 2 * #spans tokens (one mask in A, one sop in B per span): shorten the
        # window until it fits seq_length, drawing fresh spans each time (at most a few rounds).
        for _ in range(8):
            spans = draw_spans(text, rng)
            overflow = 1 + len(text) + 2 * len(spans) - self.seq_length
            if overflow <= 0:
                break
            text = text[: len(text) - overflow]
        else:
            spans = _drop_until_fits(spans, len(text), self.seq_length)
        if not spans:  # nothing maskable (tiny window): predict the last token so the sample still trains
            spans = [(len(text) - 1, len(text))]
        shifted = [(a + 1, b + 1) for a, b in spans]  # past [CLS]
        return corrupt(
            self._with_cls(text), shifted, self._order(len(spans), rng), self.tokens, self.mask_id(objective)
        )

    def _document_sample(self, text: np.ndarray, rng: np.random.Generator, fraction: float) -> GLMInput:
        text = text[: self.seq_length - 3]  # [CLS] + text + [gMASK] in A, [sop] in B
        n = len(text)
        # GLM:blocklm_utils.py:408-409: several documents = an eos before the last token
        several_documents = bool((text[:-1] == self.tokens.eos).any())
        # GLM:blocklm_utils.py:410: `multiple_doc or rng.random() < self.infill_prob` takes the suffix branch (no draw
        # when the window holds several documents)
        suffix = several_documents or float(rng.random()) < self.masking.gpt_infill_prob
        # spec §5: one span whose length the batch shares (all windows have n tokens), at least one token left in A
        length = min(max(1, math.floor(fraction * n)), n - 1)
        start = n - length if suffix else int(rng.integers(0, n - length + 1))
        # the suffix has no [eop] (GLM:blocklm_utils.py:415-419); a placed span is an ordinary blank
        return corrupt(
            self._with_cls(text),
            [(start + 1, start + length + 1)],
            [0],
            self.tokens,
            self.mask_id("document"),
            eop=not suffix,
        )


def _is_integer_array(stream: object) -> bool:
    return isinstance(stream, np.ndarray) and stream.ndim == 1 and stream.dtype.kind in "iu"


def _drop_until_fits(spans: list[tuple[int, int]], text_length: int, seq_length: int) -> list[tuple[int, int]]:
    """Last resort after repeated shortening: keep the leftmost spans that fit."""
    kept = list(spans)
    while kept and 1 + text_length + 2 * len(kept) > seq_length:
        kept.pop()
    return kept
