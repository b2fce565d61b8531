"""GLM input layout: Part A / Part B, 2-D positions and ``sep``, as numpy arrays (torch-free).

Every GLM input in this project is built here (DESIGN.md: "one way to build GLM inputs"). A built sample is a
:class:`GLMInput`; :func:`collate` right-pads a list of them into a batch for the step contract

    step(input_ids[B,S], position_ids[B,2,S], sep[B], past) -> (logits[B,S,V], present)

Conventions (spec glm_reference §2.1, §3.1):

- Part A = tokens ``[0, sep)``, bidirectional; Part B = tokens ``[sep, S)``, causal, each sees all of Part A.
- ``position_ids[0]`` ("position"): ``0..|A|-1`` over Part A; every Part-B token (``sop`` included) takes the position
  of its own mask token. ``position_ids[1]`` ("block position"): 0 over Part A, ``1..`` over ``[sop, x1, ...]``.
- ``targets[i]`` is the token that the logits at ``i`` predict (so ``sop`` predicts the first span token);
  ``targets`` holds the pad id and ``loss_mask`` 0 where nothing is predicted.
- ChatGLM (``tokens.cls is None``, :attr:`SpecialTokens.frames_part_a` false) uses the same layout without the frame
  around Part A: ``A [gMASK] <sop> B`` (no ``[CLS]``, no eos before ``<sop>``), ``sep`` = index of ``<sop>``; its
  generation prompt always ends with ``[gMASK]`` and Part B sits at the first ``[MASK]`` if there is one, else at the
  ``[gMASK]`` (the hub tokenizer's position rule).

Builders: generation prompts (§2.3a), cloze inputs (§2.4), left-to-right / LAMBADA scoring (§2.4-5, §6.2), rolling
perplexity windows (§6.3), seq2seq (§6.4), pretraining span corruption and its samplers (§3.1, §5), :func:`collate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from glm_core.errors import LayoutError
from glm_core.special_tokens import SpecialTokens

MaskChoice = Literal["last", "first"]

__all__ = [
    "GLMInput",
    "MaskChoice",
    "blank_token_position",
    "build_candidate_sequences",
    "build_generation_prompt",
    "build_lambada_input",
    "build_packed_multiple_choice",
    "build_rolling_windows",
    "build_scoring_input",
    "build_seq2seq_input",
    "build_shared_prefix_candidates",
    "build_single_token_cloze",
    "chatglm_mask_position",
    "collate",
    "corrupt",
    "find_mask_position",
    "pack",
    "sample_document_span",
    "sample_sentence_spans",
    "sample_spans",
    "span_length_distribution",
]


# ----------------------------------------------------------------------------------------------------------------------
# The sample type
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class GLMInput:
    """One GLM sample (or one later chunk, then ``sep = 0``), unbatched.

    Metadata:
        mask_positions: indices of the blanks in Part A, left to right (generation fills them in this order).
        candidate_spans: ``(start, end)`` index ranges of scored tokens, one per candidate / choice / span, so that
            ``logits[start:end]`` predict ``targets[start:end]``.
        attention_mask: explicit 0/1 matrix ``[S, S]`` when the sep rule cannot express the layout (packed multiple
            choice, spec §2.4-4); ``None`` means the sep rule.
        scored_range: ``(start, end)`` indices into the *document* of the tokens this sample scores (rolling windows).
    """

    input_ids: np.ndarray  # int64 [S]
    position_ids: np.ndarray  # int64 [2, S]
    sep: int
    targets: np.ndarray  # int64 [S], pad where nothing is predicted
    loss_mask: np.ndarray  # float32 [S]
    mask_positions: tuple[int, ...] = ()
    candidate_spans: tuple[tuple[int, int], ...] = ()
    attention_mask: np.ndarray | None = None  # int64 [S, S]
    scored_range: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.input_ids = np.asarray(self.input_ids, dtype=np.int64)
        self.position_ids = np.asarray(self.position_ids, dtype=np.int64)
        self.targets = np.asarray(self.targets, dtype=np.int64)
        self.loss_mask = np.asarray(self.loss_mask, dtype=np.float32)
        self.sep = int(self.sep)
        if self.input_ids.ndim != 1:
            raise LayoutError(f"input_ids must be 1-D, got shape {self.input_ids.shape}")
        n = self.input_ids.shape[0]
        if self.position_ids.shape != (2, n):
            raise LayoutError(f"position_ids must have shape (2, {n}), got {self.position_ids.shape}")
        if self.targets.shape != (n,) or self.loss_mask.shape != (n,):
            raise LayoutError(
                f"targets and loss_mask must have shape ({n},), got {self.targets.shape} and {self.loss_mask.shape}"
            )
        _check_sep(self.sep, n)
        if self.attention_mask is not None:
            self.attention_mask = np.asarray(self.attention_mask, dtype=np.int64)
            if self.attention_mask.shape != (n, n):
                raise LayoutError(f"attention_mask must have shape ({n}, {n}), got {self.attention_mask.shape}")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def part_a(self) -> np.ndarray:
        return self.input_ids[: self.sep]

    @property
    def part_b(self) -> np.ndarray:
        return self.input_ids[self.sep :]


# ----------------------------------------------------------------------------------------------------------------------
# Validation and small shared pieces
# ----------------------------------------------------------------------------------------------------------------------


def _check_length(length: int, max_length: int | None, what: str = "sequence") -> None:
    if max_length is not None and length > max_length:
        raise LayoutError(f"{what} has {length} tokens, more than the limit of {max_length}")


def _check_sep(sep: int, length: int) -> None:
    if not 0 <= sep <= length:
        raise LayoutError(f"sep must lie in [0, {length}] for a sequence of {length} tokens, got {sep}")


def find_mask_position(ids: Sequence[int], mask_ids: Sequence[int], which: MaskChoice = "last") -> int:
    """Index of the blank token used for Part B's positions.

    spec §3.1: the original finetune code uses the **last** occurrence of the mask id, the HF tokenizer the **first**.
    """
    wanted = set(mask_ids)
    hits = [i for i, t in enumerate(ids) if t in wanted]
    if not hits:
        raise LayoutError(f"no mask token (ids {sorted(set(mask_ids))}) in the {len(ids)}-token Part A; expected one")
    if which == "last":
        return hits[-1]
    if which == "first":
        return hits[0]
    raise LayoutError(f"mask position choice must be 'last' or 'first', got {which!r}")


def _default_generation_mask(tokens: SpecialTokens) -> int:
    # spec §2.3a / §6.2: task-mask models use [gMASK] for open-ended generation, the others [MASK].
    return tokens.gmask if tokens.gmask is not None else tokens.mask


def _part_a(text_ids: Sequence[int], tokens: SpecialTokens, add_eos: bool) -> list[int]:
    # spec §6.1, §2.4-1: Part A = [CLS] text [eos]; ChatGLM: text alone
    if not tokens.frames_part_a:
        return list(text_ids)
    return [tokens.cls, *text_ids] + ([tokens.eos] if add_eos else [])  # type: ignore[list-item]


def _frame_length(tokens: SpecialTokens, add_eos: bool) -> int:
    """Tokens :func:`_part_a` adds around the text: [CLS] and the optional eos (none for ChatGLM)."""
    return 1 + int(add_eos) if tokens.frames_part_a else 0


def _cloze_part_a(text_ids: Sequence[int], tokens: SpecialTokens, which: MaskChoice) -> tuple[list[int], int]:
    """Part A of a cloze input and its blank's index: ``[CLS] text [eos]`` at the ``which`` blank (spec §2.4-1); ChatGLM:
    ``text [gMASK]`` (its tokenizer always appends the generation mask) at :func:`chatglm_mask_position`."""
    if not tokens.frames_part_a:
        part_a = [*text_ids, _default_generation_mask(tokens)]
        return part_a, chatglm_mask_position(part_a, tokens)
    part_a = _part_a(text_ids, tokens, add_eos=True)
    return part_a, find_mask_position(part_a, tokens.mask_ids(), which)


def chatglm_mask_position(ids: Sequence[int], tokens: SpecialTokens) -> int:
    """ChatGLM's Part-B position: the first ``[MASK]`` if the input has one, else the first ``[gMASK]``."""
    for wanted in (tokens.mask, tokens.gmask):
        if wanted is not None and wanted in ids:
            return list(ids).index(wanted)
    raise LayoutError(f"no [MASK] or [gMASK] (ids {tokens.mask}, {tokens.gmask}) in the {len(ids)}-token Part A")


def _with_part_b(
    part_a: Sequence[int],
    answer: Sequence[int],
    mask_position: int,
    tokens: SpecialTokens,
    *,
    scored_from: int = 0,
    mask_positions: tuple[int, ...] = (),
    scored_range: tuple[int, int] | None = None,
) -> GLMInput:
    """Part A followed by Part B = ``[sop] + answer[:-1]`` with targets ``answer`` (teacher forcing, spec §2.4-2).

    Part-B tokens sit at ``(mask_position, 1..|answer|)``; only ``answer[scored_from:]`` carries loss.
    """
    if len(answer) == 0:
        raise LayoutError("the answer / continuation is empty; expected at least one token to score")
    sep = len(part_a)
    n_b = len(answer)
    input_ids = [*part_a, tokens.sop, *answer[:-1]]
    positions = np.concatenate([np.arange(sep), np.full(n_b, mask_position)])
    blocks = np.concatenate([np.zeros(sep, dtype=np.int64), np.arange(1, n_b + 1)])
    targets = np.concatenate([np.full(sep, tokens.pad), np.asarray(answer, dtype=np.int64)])
    loss_mask = np.zeros(sep + n_b, dtype=np.float32)
    loss_mask[sep + scored_from :] = 1.0
    return GLMInput(
        input_ids=np.asarray(input_ids),
        position_ids=np.stack([positions, blocks]),
        sep=sep,
        targets=targets,
        loss_mask=loss_mask,
        mask_positions=mask_positions or (mask_position,),
        candidate_spans=((sep + scored_from, sep + n_b),),
        scored_range=scored_range,
    )


def _part_a_only(part_a: Sequence[int], tokens: SpecialTokens, mask_positions: tuple[int, ...]) -> GLMInput:
    n = len(part_a)
    return GLMInput(
        input_ids=np.asarray(part_a),
        position_ids=np.stack([np.arange(n), np.zeros(n, dtype=np.int64)]),
        sep=n,  # spec §2.3a: sep = full length, Part A fully bidirectional
        targets=np.full(n, tokens.pad),
        loss_mask=np.zeros(n, dtype=np.float32),
        mask_positions=mask_positions,
    )


# ----------------------------------------------------------------------------------------------------------------------
# 1. Blank-infilling generation prompt (spec §2.3a)
# ----------------------------------------------------------------------------------------------------------------------


def build_generation_prompt(
    text_ids: Sequence[int],
    tokens: SpecialTokens,
    *,
    generation_mask: int | None = None,
    max_length: int | None = None,
) -> GLMInput:
    """Part A for blank filling: ``[CLS] text (+[eos] unless text ends with [gMASK])``, spec §2.3a.

    If ``text_ids`` holds no blank, ``generation_mask`` (default ``[gMASK]`` where the tokenizer has it, else
    ``[MASK]``) is appended first. ``mask_positions`` lists every blank, left to right.
    ChatGLM: ``text [gMASK]`` always (the generation mask is appended even after a ``[MASK]``, as its tokenizer does);
    the one blank filled is :func:`chatglm_mask_position`'s. Generation then feeds ``<sop>`` there, so the model sees
    ``A [gMASK] <sop> ...`` with ``sep`` at ``<sop>``.
    """
    ids = list(text_ids)
    appended = generation_mask if generation_mask is not None else _default_generation_mask(tokens)
    if not tokens.frames_part_a:
        part_a = [*ids, appended]
        _check_length(len(part_a), max_length, "generation prompt")
        return _part_a_only(part_a, tokens, (chatglm_mask_position(part_a, tokens),))
    blanks = set(tokens.mask_ids()) | {appended}
    if not any(t in blanks for t in ids):
        ids.append(appended)
    ends_with_gmask = tokens.gmask is not None and ids[-1] == tokens.gmask
    part_a = _part_a(ids, tokens, add_eos=not ends_with_gmask)
    _check_length(len(part_a), max_length, "generation prompt")
    mask_positions = tuple(i for i, t in enumerate(part_a) if t in blanks)
    return _part_a_only(part_a, tokens, mask_positions)


def blank_token_position(mask_position: int, k: int) -> tuple[int, int]:
    """(position, block position) of the k-th token fed into a blank: ``k = 0`` is ``sop`` at block 1, the k-th
    generated token is fed at block ``k + 1`` (spec §2.3a, §3.1)."""
    if k < 0:
        raise LayoutError(f"token index inside a blank must be >= 0, got {k}")
    return mask_position, k + 1


# ----------------------------------------------------------------------------------------------------------------------
# 2./3. Cloze inputs (spec §2.4-1 .. §2.4-3)
# ----------------------------------------------------------------------------------------------------------------------


def build_single_token_cloze(
    text_ids: Sequence[int],
    tokens: SpecialTokens,
    *,
    mask_position: MaskChoice = "last",
    max_length: int | None = None,
) -> GLMInput:
    """``[CLS] A [eos] [sop]`` with ``sep`` = index of ``sop`` (spec §2.4-1).

    The scores are the logits **at the sop position** (``logits[sep]``) indexed at the verbalizer ids;
    ``candidate_spans == ((sep, sep + 1),)``.
    """
    part_a, mask_pos = _cloze_part_a(text_ids, tokens, mask_position)
    n = len(part_a) + 1
    _check_length(n, max_length)
    sep = len(part_a)
    return GLMInput(
        input_ids=np.asarray([*part_a, tokens.sop]),
        position_ids=np.stack([np.append(np.arange(sep), mask_pos), np.append(np.zeros(sep, dtype=np.int64), 1)]),
        sep=sep,
        targets=np.full(n, tokens.pad),
        loss_mask=np.zeros(n, dtype=np.float32),
        mask_positions=(mask_pos,),
        candidate_spans=((sep, sep + 1),),
    )


def _candidate(candidate: Sequence[int], tokens: SpecialTokens, append_eop: bool) -> list[int]:
    # spec §2.4-2: SuperGLUE PVPs end candidates with eop (p(eop) is scored), the zero-shot dataset does not.
    ids = list(candidate) + ([tokens.eop] if append_eop else [])
    if not ids:
        raise LayoutError("a candidate is empty; expected at least one token")
    return ids


def build_candidate_sequences(
    text_ids: Sequence[int],
    candidates: Sequence[Sequence[int]],
    tokens: SpecialTokens,
    *,
    append_eop: bool = False,
    mask_position: MaskChoice = "last",
    max_length: int | None = None,
) -> list[GLMInput]:
    """One sequence per candidate: ``[CLS] A [eos] [sop] c[:-1]``, targets ``c``, sep at sop (spec §2.4-2).

    Candidate tokens sit at ``(mask_pos, 1..|c|)``. Score = sum of log-softmax at ``candidate_spans[0]``.
    """
    part_a, mask_pos = _cloze_part_a(text_ids, tokens, mask_position)
    samples = []
    for cand in candidates:
        sample = _with_part_b(part_a, _candidate(cand, tokens, append_eop), mask_pos, tokens)
        _check_length(len(sample), max_length)
        samples.append(sample)
    return samples


def build_shared_prefix_candidates(
    text_ids: Sequence[int],
    candidates: Sequence[Sequence[int]],
    tokens: SpecialTokens,
    *,
    append_eop: bool = False,
    mask_position: MaskChoice = "last",
    max_length: int | None = None,
) -> tuple[GLMInput, list[GLMInput]]:
    """Part A once plus one later chunk per candidate (the original ``--fast-decode``, spec §2.4-3).

    Returns ``(part_a, chunks)``: ``part_a`` is ``[CLS] A [eos]`` with ``sep = len(A)``; each chunk is
    ``[sop] + c[:-1]`` at ``(mask_pos, 1..|c|)`` with ``sep = 0`` and targets ``c``, to be run after the cached
    Part A (expanded over the candidates with ``reorder_past``). Equal to :func:`build_candidate_sequences` by the
    visibility rule of the step contract.
    """
    part_a_ids, mask_pos = _cloze_part_a(text_ids, tokens, mask_position)
    prefix = _part_a_only(part_a_ids, tokens, (mask_pos,))
    chunks = []
    for cand in candidates:
        c = _candidate(cand, tokens, append_eop)
        _check_length(len(part_a_ids) + len(c), max_length)
        n = len(c)
        chunks.append(
            GLMInput(
                input_ids=np.asarray([tokens.sop, *c[:-1]]),
                position_ids=np.stack([np.full(n, mask_pos), np.arange(1, n + 1)]),
                sep=0,  # DESIGN.md: every chunk after a cached Part A uses sep = 0 (causal)
                targets=np.asarray(c),
                loss_mask=np.ones(n, dtype=np.float32),
                mask_positions=(mask_pos,),
                candidate_spans=((0, n),),
            )
        )
    return prefix, chunks


# ----------------------------------------------------------------------------------------------------------------------
# 4. HF packed multiple choice (spec §2.4-4)
# ----------------------------------------------------------------------------------------------------------------------


def build_packed_multiple_choice(
    text_ids: Sequence[int],
    choices: Sequence[Sequence[int]],
    tokens: SpecialTokens,
    *,
    mask_position: MaskChoice = "first",
    max_length: int | None = None,
) -> GLMInput:
    """One sequence: context ``[CLS] A [eos]``, then ``[sop] + choice[:-1]`` for every choice (spec §2.4-4).

    Choice tokens sit at ``(mask_pos, 1..|choice|)`` (HF: first ``[MASK]``); ``attention_mask`` is the explicit
    ``[S, S]`` matrix: context rows see the context, each choice row sees the context and its own choice causally,
    never another choice. ``choice[:-1]`` is the teacher-forcing shift (spec §8, issue #180). No eop is added and the
    score is the plain sum of log-softmax over ``candidate_spans[i]`` (spec §2.4-4). The sep rule cannot express this
    mask, so such a sample needs a backend that accepts an explicit matrix.
    """
    context, mask_pos = _cloze_part_a(text_ids, tokens, mask_position)
    n_ctx = len(context)
    ids, positions, blocks, targets = list(context), list(range(n_ctx)), [0] * n_ctx, [tokens.pad] * n_ctx
    spans = []
    for choice in choices:
        c = _candidate(choice, tokens, append_eop=False)
        start = len(ids)
        ids += [tokens.sop, *c[:-1]]
        positions += [mask_pos] * len(c)
        blocks += list(range(1, len(c) + 1))
        targets += c
        spans.append((start, start + len(c)))
    n = len(ids)
    _check_length(n, max_length)
    mask = np.zeros((n, n), dtype=np.int64)
    mask[:n_ctx, :n_ctx] = 1  # context block (no pads inside one sample)
    for start, end in spans:
        mask[start:end, :n_ctx] = 1  # every choice row sees the context columns
        mask[start:end, start:end] = np.tril(np.ones((end - start, end - start), dtype=np.int64))
    loss_mask = np.zeros(n, dtype=np.float32)
    loss_mask[n_ctx:] = 1.0
    return GLMInput(
        input_ids=np.asarray(ids),
        position_ids=np.stack([np.asarray(positions), np.asarray(blocks)]),
        sep=n_ctx,  # informative only: attention_mask rules
        targets=np.asarray(targets),
        loss_mask=loss_mask,
        mask_positions=(mask_pos,),
        candidate_spans=tuple(spans),
        attention_mask=mask,
    )


# ----------------------------------------------------------------------------------------------------------------------
# 5. Left-to-right scoring and LAMBADA (spec §2.4-5, §6.2)
# ----------------------------------------------------------------------------------------------------------------------


def build_scoring_input(
    context_ids: Sequence[int],
    continuation_ids: Sequence[int],
    tokens: SpecialTokens,
    *,
    mask_id: int | None = None,
    add_eos: bool = False,
    unidirectional: bool = False,
    max_length: int | None = None,
    truncate_left: bool = False,
) -> GLMInput:
    """Score ``continuation`` given ``context``: log p(continuation | context) from ``candidate_spans[0]``.

    Bidirectional (default): Part A = ``[CLS] context [mask] (+[eos])``, Part B = ``[sop] + continuation[:-1]``
    (spec §6.2). Unidirectional (spec §2.4-5, "uni"): Part A = ``[CLS] context[0] [mask] (+[eos])``, Part B =
    ``[sop] + (context[1:] + continuation)[:-1]`` causally, loss only on the continuation. ``mask_id`` defaults to
    ``[gMASK]`` (task-mask models) else ``[MASK]``. ``truncate_left`` drops context tokens from the left until the
    sequence fits ``max_length`` (spec §6.2); otherwise a too-long input raises :class:`LayoutError`.
    """
    mask = mask_id if mask_id is not None else _default_generation_mask(tokens)
    context, continuation = list(context_ids), list(continuation_ids)
    if not continuation:
        raise LayoutError("the continuation is empty; expected at least one token to score")
    if unidirectional and not context:
        raise LayoutError("unidirectional scoring needs at least one context token for Part A")
    # length = [CLS] + |context| + mask + eos? + |continuation| (sop + continuation[:-1])
    length = _frame_length(tokens, add_eos) + 1 + len(context) + len(continuation)
    if max_length is not None and length > max_length and truncate_left:
        drop = length - max_length
        if drop >= len(context):
            raise LayoutError(
                f"continuation of {len(continuation)} tokens does not fit the limit of {max_length} even without context"
            )
        context = context[drop:]
        length -= drop
    _check_length(length, max_length)
    if unidirectional:
        part_a = _part_a([context[0], mask], tokens, add_eos)
        answer, scored_from = context[1:] + continuation, len(context) - 1
    else:
        part_a = _part_a([*context, mask], tokens, add_eos)
        answer, scored_from = continuation, 0
    mask_pos = len(part_a) - 1 - int(add_eos and tokens.frames_part_a)
    return _with_part_b(part_a, answer, mask_pos, tokens, scored_from=scored_from)


def build_lambada_input(
    context_ids: Sequence[int],
    target_ids: Sequence[int],
    tokens: SpecialTokens,
    *,
    seq_len: int = 512,
    mask_id: int | None = None,
    unidirectional: bool = False,
) -> GLMInput:
    """LAMBADA (spec §6.2): ``[CLS] context [gMASK|MASK] [eos]`` + ``[sop] target[:-1]``, context left-truncated to
    ``seq_len``. Correct iff the argmax equals the target at every position of ``candidate_spans[0]``."""
    return build_scoring_input(
        context_ids,
        target_ids,
        tokens,
        mask_id=mask_id,
        add_eos=True,
        unidirectional=unidirectional,
        max_length=seq_len,
        truncate_left=True,
    )


# ----------------------------------------------------------------------------------------------------------------------
# 6. Rolling windows for perplexity (spec §6.3)
# ----------------------------------------------------------------------------------------------------------------------


def build_rolling_windows(
    token_ids: Sequence[int],
    tokens: SpecialTokens,
    *,
    seq_len: int,
    stride: int,
    mask_id: int | None = None,
    unidirectional: bool = False,
) -> list[GLMInput]:
    """Perplexity windows of ``seq_len - 1`` document tokens, window ``k`` starting at ``k * stride`` (spec §6.3).

    Window 0: Part A = ``[CLS] t0 [gMASK]``, tokens ``1..`` scored in Part B. Window ``k > 0``: Part A = its first
    ``seq_len - 1 - stride`` tokens + ``[gMASK]`` (bidirectional context), the rest scored in Part B (no eos).
    ``unidirectional`` keeps Part A = ``[CLS] w0 [gMASK]`` for every window, the rest of the window causal in Part B.
    Every document token but ``t0`` is scored exactly once; ``scored_range`` gives each window's document range.
    Summed NLL / (N - 1) is the token-level loss. A full window is ``seq_len + 1`` tokens long (``[CLS]``, ``[gMASK]``
    and ``sop`` around ``seq_len - 2`` fed document tokens), as in the original; its largest position id is
    ``seq_len - stride``.
    """
    doc = list(token_ids)
    window = seq_len - 1
    if window < 2:
        raise LayoutError(f"seq_len must be at least 3 for rolling windows, got {seq_len}")
    # unidirectional windows keep their first token in Part A, unscored, so it must have been scored before
    max_stride = window - 1 if unidirectional else window
    if not 1 <= stride <= max_stride:
        raise LayoutError(f"stride must lie in [1, {max_stride}] for seq_len {seq_len}, got {stride}")
    n = len(doc)
    if n < 2:
        return []
    num_windows = math.ceil(max(n - window, 0) / stride) + 1
    samples = []
    for k in range(num_windows):
        start = k * stride
        w = doc[start : start + window]
        # document indices scored by this window: everything after what earlier windows scored
        first_scored = 1 if k == 0 else (k - 1) * stride + window
        prompt_len = 1 if (k == 0 or unidirectional) else window - stride
        context, answer = w[:prompt_len], w[prompt_len:]
        scored_from = first_scored - (start + prompt_len)
        mask = mask_id if mask_id is not None else _default_generation_mask(tokens)
        part_a = _part_a([*context, mask], tokens, add_eos=False)
        sample = _with_part_b(
            part_a,
            answer,
            len(part_a) - 1,
            tokens,
            scored_from=scored_from,
            scored_range=(first_scored, start + len(w)),
        )
        samples.append(sample)
    return samples


# ----------------------------------------------------------------------------------------------------------------------
# 7. Seq2seq (spec §6.4)
# ----------------------------------------------------------------------------------------------------------------------


def build_seq2seq_input(
    source_ids: Sequence[int],
    tokens: SpecialTokens,
    *,
    target_ids: Sequence[int] | None = None,
    prompt_ids: Sequence[int] = (),
    max_source_length: int | None = None,
    max_target_length: int | None = None,
    mask_id: int | None = None,
    pad_source: bool = False,
) -> GLMInput:
    """Seq2seq sample (spec §6.4): source = ``[CLS] [sMASK|MASK] + prompt + source`` cut to ``max_source_length``.

    With ``target_ids`` (training): Part B = ``[sop] + target[:-1]`` where target = ``target_ids + [eop]`` cut to
    ``max_target_length``; loss on Part B. Without (inference): Part A only, ``mask_positions = (1,)``; generation
    feeds ``sop`` at ``(1, 1)``. ``pad_source=True`` reproduces the original right-padding *inside* Part A (pads are
    visible to Part B, spec §2.1 / issue #70).
    """
    if pad_source and max_source_length is None:
        raise LayoutError("pad_source=True needs max_source_length (the length to pad the source to)")
    if not tokens.frames_part_a:
        return _chatglm_seq2seq(
            source_ids, tokens, target_ids, prompt_ids, max_source_length, max_target_length, mask_id
        )
    mask = mask_id if mask_id is not None else (tokens.smask if tokens.smask is not None else tokens.mask)
    head = [tokens.cls, mask, *prompt_ids]
    source = list(source_ids)
    if max_source_length is not None:
        if len(head) >= max_source_length:
            raise LayoutError(
                f"max_source_length {max_source_length} leaves no room after the {len(head)}-token prefix"
            )
        source = source[: max_source_length - len(head)]
    part_a = head + source
    if pad_source and max_source_length is not None:
        part_a += [tokens.pad] * (max_source_length - len(part_a))
    mask_pos = 1
    if target_ids is None:
        return _part_a_only(part_a, tokens, (mask_pos,))
    target = [*target_ids, tokens.eop]
    if max_target_length is not None:
        target = target[:max_target_length]
    return _with_part_b(part_a, target, mask_pos, tokens)


def _chatglm_seq2seq(
    source_ids: Sequence[int],
    tokens: SpecialTokens,
    target_ids: Sequence[int] | None,
    prompt_ids: Sequence[int],
    max_source_length: int | None,
    max_target_length: int | None,
    mask_id: int | None,
) -> GLMInput:
    """ChatGLM's seq2seq layout (its fine-tuning script): ``prompt source [gMASK]`` + ``<sop> target <eop>``.

    ChatGLM's position rule knows only ``[MASK]`` and ``[gMASK]``; any other ``mask_id`` (GLM's seq2seq ``[sMASK]``)
    gives way to ``[gMASK]``, the mask ChatGLM generates with."""
    mask = mask_id if mask_id in (tokens.mask, tokens.gmask) else _default_generation_mask(tokens)
    text = [*prompt_ids, *source_ids]
    if max_source_length is not None:
        if max_source_length < 2:
            raise LayoutError(f"max_source_length {max_source_length} leaves no room for the source and [gMASK]")
        text = text[: max_source_length - 1]
    part_a = [*text, mask]
    mask_pos = chatglm_mask_position(part_a, tokens)
    if target_ids is None:
        return _part_a_only(part_a, tokens, (mask_pos,))
    target = [*target_ids, tokens.eop][:max_target_length]
    return _with_part_b(part_a, target, mask_pos, tokens)


# ----------------------------------------------------------------------------------------------------------------------
# 8. Pretraining span corruption (spec §3.1, §5)
# ----------------------------------------------------------------------------------------------------------------------


def corrupt(
    tokens: Sequence[int],
    spans: Sequence[tuple[int, int]],
    order: Sequence[int],
    specials: SpecialTokens,
    mask_id: int,
    *,
    eop: bool = True,
) -> GLMInput:
    """Blank-infilling sample from explicit spans (spec §3.1 worked example, §5).

    ``spans`` are half-open ``(start, end)`` ranges of ``tokens`` (non-empty, non-overlapping); each becomes one
    ``mask_id`` in Part A. ``order`` is a permutation of ``range(len(spans))``: Part B holds ``[sop] + span`` for
    ``spans[order[0]]``, ``spans[order[1]]``, ... with targets ``span + [eop]``. Part-B tokens take the position of
    their mask in the corrupted text and block ids ``1..|span|+1``. ``tokens`` is the whole sample (pretraining
    samples start with ``[CLS]``, which spans should not cover). ``mask_positions`` follows ``spans``'s left-to-right
    order; ``candidate_spans[i]`` is the Part-B range of ``spans[order[i]]``.

    ``eop=False`` gives the original's document-suffix blank (GLM:blocklm_utils.py:415-419): Part B holds
    ``[sop] + span[:-1]`` with targets ``span``, no ``[eop]``.
    """
    ids = list(tokens)
    if not spans:
        raise LayoutError("span corruption needs at least one span; got none")
    if sorted(order) != list(range(len(spans))):
        raise LayoutError(f"order must be a permutation of 0..{len(spans) - 1}, got {list(order)}")
    by_start = sorted(range(len(spans)), key=lambda i: spans[i][0])
    previous_end = 0
    for i in by_start:
        start, end = spans[i]
        if not (0 <= start < end <= len(ids)):
            raise LayoutError(f"span {spans[i]} is empty or outside the {len(ids)}-token sample")
        if start < previous_end:
            raise LayoutError(f"span {spans[i]} overlaps the previous span ending at {previous_end}")
        previous_end = end

    # Part A: the corrupted text; each span collapses to one mask token at its own position (spec §3.1).
    part_a: list[int] = []
    mask_pos_of: dict[int, int] = {}
    cursor = 0
    for i in by_start:
        start, end = spans[i]
        part_a += ids[cursor:start]
        mask_pos_of[i] = len(part_a)
        part_a.append(mask_id)
        cursor = end
    part_a += ids[cursor:]

    sep = len(part_a)
    input_ids, positions, blocks = list(part_a), list(range(sep)), [0] * sep
    targets = [specials.pad] * sep
    ranges = []
    for i in order:
        start, end = spans[i]
        span = ids[start:end]
        begin = len(input_ids)
        # spec §5: Part B input [sop] span, targets span [eop]; without eop: [sop] span[:-1] -> span
        inputs, outputs = ([specials.sop, *span], [*span, specials.eop]) if eop else ([specials.sop, *span[:-1]], span)
        input_ids += inputs
        targets += outputs
        positions += [mask_pos_of[i]] * len(inputs)
        blocks += list(range(1, len(inputs) + 1))
        ranges.append((begin, len(input_ids)))
    loss_mask = np.zeros(len(input_ids), dtype=np.float32)
    loss_mask[sep:] = 1.0  # spec §5: loss on Part B only
    return GLMInput(
        input_ids=np.asarray(input_ids),
        position_ids=np.stack([np.asarray(positions), np.asarray(blocks)]),
        sep=sep,
        targets=np.asarray(targets),
        loss_mask=loss_mask,
        mask_positions=tuple(mask_pos_of[i] for i in by_start),
        candidate_spans=tuple(ranges),
    )


def span_length_distribution(poisson_lambda: float = 3.0, max_span: int = 39) -> np.ndarray:
    """P(length = 1..max_span): Poisson(λ) pmf restricted to 1..max_span, renormalised (spec §5). Index 0 = length 1."""
    k = np.arange(1, max_span + 1)
    log_pmf = k * math.log(poisson_lambda) - poisson_lambda - np.array([math.lgamma(i + 1) for i in k])
    pmf = np.exp(log_pmf)
    return pmf / pmf.sum()


def _place_spans(lengths: Sequence[int], length: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Place spans of the given lengths (in this order) uniformly at random without overlap and with >= 1 free
    token between consecutive spans (spec §5): the free slack is split by sorted uniform draws."""
    n = len(lengths)
    slack = length - sum(lengths) - (n - 1)
    if slack < 0:
        raise LayoutError(f"spans of total length {sum(lengths)} do not fit {length} tokens with gaps")
    offsets = np.sort(rng.integers(0, slack + 1, size=n))
    spans, shift = [], 0
    for offset, span_length in zip(offsets.tolist(), lengths, strict=True):
        start = offset + shift
        spans.append((start, start + span_length))
        shift += span_length + 1
    return spans


def sample_spans(
    length: int,
    rng: np.random.Generator,
    ratio: float = 0.15,
    poisson_lambda: float = 3.0,
    max_span: int = 39,
    max_tries: int = 100,
) -> list[tuple[int, int]]:
    """Token-level blanks (spec §5): draw span lengths from the truncated Poisson until their total reaches
    ``floor(ratio * length)``, then place them at random in ``[0, length)`` without overlap, >= 1 token apart.

    Returns sorted ``(start, end)`` pairs; empty when ``floor(ratio * length) == 0``. Draws that cannot be placed are
    redrawn (at most ``max_tries`` times, then :class:`LayoutError`).
    """
    goal = math.floor(ratio * length)
    if goal <= 0:
        return []
    probs = span_length_distribution(poisson_lambda, max_span)
    for _ in range(max_tries):
        lengths: list[int] = []
        while sum(lengths) < goal:
            lengths.append(int(rng.choice(max_span, p=probs)) + 1)
        if sum(lengths) + len(lengths) - 1 <= length:
            rng.shuffle(lengths)
            return _place_spans(lengths, length, rng)
    raise LayoutError(f"could not place {ratio:.0%} of a {length}-token sample as blanks in {max_tries} draws")


def sample_sentence_spans(
    tokens: Sequence[int],
    sentence_end_ids: Sequence[int],
    rng: np.random.Generator,
    ratio: float = 0.15,
) -> list[tuple[int, int]]:
    """Sentence-level blanks for ``[sMASK]`` (spec §5): split after every token in ``sentence_end_ids`` (tokens
    holding . ? ! ; : 。 ？ ！ ； … or a newline), take whole sentences in random order until at least
    ``floor(ratio * len)`` tokens are covered. Returns sorted ``(start, end)`` pairs (possibly adjacent)."""
    ends = set(sentence_end_ids)
    sentences, start = [], 0
    for i, t in enumerate(tokens):
        if t in ends:
            sentences.append((start, i + 1))
            start = i + 1
    if start < len(tokens):
        sentences.append((start, len(tokens)))
    goal = math.floor(ratio * len(tokens))
    chosen, covered = [], 0
    for i in rng.permutation(len(sentences)).tolist():
        if covered >= goal:
            break
        chosen.append(sentences[i])
        covered += sentences[i][1] - sentences[i][0]
    return sorted(chosen)


def sample_document_span(
    length: int,
    rng: np.random.Generator,
    *,
    min_ratio: float = 0.5,
    suffix: bool = True,
) -> tuple[int, int]:
    """One document-level span for ``[gMASK]`` (spec §5) over ``length`` maskable tokens (the caller leaves
    ``[CLS]`` out): span length uniform over ``[max(1, floor(min_ratio * length)), length - 1]`` so at least one
    token stays in Part A; ``suffix=True`` puts it at the end (Part A = prefix + ``[gMASK]``), else at a uniformly
    random start. The spec's ``max_len - 2`` counts the ``[CLS]`` in the sample length; here ``length`` excludes it."""
    if length < 2:
        raise LayoutError(f"a document-level span needs at least 2 tokens, got {length}")
    low = max(1, math.floor(min_ratio * length))
    high = length - 1
    span_length = int(rng.integers(min(low, high), high + 1))
    start = length - span_length if suffix else int(rng.integers(0, length - span_length + 1))
    return start, start + span_length


# ----------------------------------------------------------------------------------------------------------------------
# 9. Batching
# ----------------------------------------------------------------------------------------------------------------------


def _sep_rule_matrix(sep: int, n: int) -> np.ndarray:
    # spec §2.1: Mk[i, j] = 1 if j < sep or j <= i
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    return ((j < sep) | (j <= i)).astype(np.int64)


def collate(samples: Sequence[GLMInput], pad_id: int, max_len: int | None = None) -> dict[str, np.ndarray]:
    """Right-pad samples into a batch (spec §2.1 padding: after Part B, so causality hides the pads).

    Returns ``input_ids [B,S]`` (pad = ``pad_id``), ``position_ids [B,2,S]`` (pads at 0), ``sep [B]``,
    ``targets [B,S]`` (pad = ``pad_id``), ``loss_mask [B,S]`` float32 (0 on pads), ``lengths [B]`` and, when any
    sample has an explicit matrix, ``attention_mask [B,S,S]`` (sep rule for the others, 0 on pad rows/columns).
    ``max_len`` pads to that length and rejects longer samples.
    """
    if not samples:
        raise LayoutError("cannot collate an empty list of samples")
    lengths = np.asarray([len(s) for s in samples], dtype=np.int64)
    longest = int(lengths.max())
    if max_len is not None:
        for s in samples:
            _check_length(len(s), max_len, "sample")
    width = max_len if max_len is not None else longest
    b = len(samples)
    batch = {
        "input_ids": np.full((b, width), pad_id, dtype=np.int64),
        "position_ids": np.zeros((b, 2, width), dtype=np.int64),
        "sep": np.asarray([s.sep for s in samples], dtype=np.int64),
        "targets": np.full((b, width), pad_id, dtype=np.int64),
        "loss_mask": np.zeros((b, width), dtype=np.float32),
        "lengths": lengths,
    }
    need_matrix = any(s.attention_mask is not None for s in samples)
    if need_matrix:
        batch["attention_mask"] = np.zeros((b, width, width), dtype=np.int64)
    for i, s in enumerate(samples):
        n = len(s)
        batch["input_ids"][i, :n] = s.input_ids
        batch["position_ids"][i, :, :n] = s.position_ids
        batch["targets"][i, :n] = s.targets
        batch["loss_mask"][i, :n] = s.loss_mask
        if need_matrix:
            matrix = s.attention_mask if s.attention_mask is not None else _sep_rule_matrix(s.sep, n)
            batch["attention_mask"][i, :n, :n] = matrix
    return batch


def pack(samples: Sequence[GLMInput], pad_id: int, max_len: int) -> dict[str, np.ndarray]:
    """Several samples per row (first fit, in order) instead of one per padded row: fewer pad tokens computed.

    Each sample keeps its own ``position_ids``, ``targets`` and ``loss_mask``; who sees whom is an explicit
    ``attention_mask [R, S, S]`` (spec §2.1 form 3), block-diagonal: each sample's own sep rule (or its own matrix)
    inside its block, nothing across blocks, so no sample attends to another. ``sep`` is 0 for every row (the
    matrix rules). ``S`` is the fullest row's length (<= ``max_len``); a sample longer than ``max_len`` is refused.

    Also returns ``segment [R, S]`` (the sample index of each token, -1 on pads), ``sample_sep_index [N]`` (flat index
    ``row * S + start + sep`` of each sample's sep position: where single-token cloze is scored) and ``lengths``
    (tokens per row).
    """
    if not samples:
        raise LayoutError("cannot pack an empty list of samples")
    for s in samples:
        _check_length(len(s), max_len, "sample")
    fills: list[int] = []
    placed: list[tuple[int, int]] = []  # (row, start) per sample
    for s in samples:
        row = next((r for r, fill in enumerate(fills) if fill + len(s) <= max_len), len(fills))
        if row == len(fills):
            fills.append(0)
        placed.append((row, fills[row]))
        fills[row] += len(s)
    rows, width = len(fills), max(fills)
    batch = {
        "input_ids": np.full((rows, width), pad_id, dtype=np.int64),
        "position_ids": np.zeros((rows, 2, width), dtype=np.int64),
        "sep": np.zeros(rows, dtype=np.int64),
        "targets": np.full((rows, width), pad_id, dtype=np.int64),
        "loss_mask": np.zeros((rows, width), dtype=np.float32),
        "attention_mask": np.zeros((rows, width, width), dtype=np.int64),
        "segment": np.full((rows, width), -1, dtype=np.int64),
        "sample_sep_index": np.zeros(len(samples), dtype=np.int64),
        "lengths": np.asarray(fills, dtype=np.int64),
    }
    for index, (s, (row, start)) in enumerate(zip(samples, placed, strict=True)):
        end = start + len(s)
        batch["input_ids"][row, start:end] = s.input_ids
        batch["position_ids"][row, :, start:end] = s.position_ids
        batch["targets"][row, start:end] = s.targets
        batch["loss_mask"][row, start:end] = s.loss_mask
        matrix = s.attention_mask if s.attention_mask is not None else _sep_rule_matrix(s.sep, len(s))
        batch["attention_mask"][row, start:end, start:end] = matrix
        batch["segment"][row, start:end] = index
        batch["sample_sep_index"][index] = row * width + start + s.sep
    return batch
