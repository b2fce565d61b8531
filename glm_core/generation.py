"""Blank-filling generation over the GLM step contract, in numpy (torch-free, shared by every backend).

A backend implements :class:`StepBackend` (DESIGN.md, "the one contract"):

    step(input_ids[B,S], position_ids[B,2,S], sep[B], past) -> (logits[B,S,V] float32, present)

Generation = prefill the prompt once, then one token per step through the K/V cache (spec §2.2: equivalent to a
full recompute). Blanks are filled left to right as in the original interactive code (spec §2.3a): feed ``sop`` at
``(mask_pos, 1)``, then every chosen token at ``(mask_pos, k + 1)`` with ``sep = 0``; stop on ``eop`` or ``eos``
(the stop token is not fed back); the next blank continues with the same cache, its ``sop`` restarting the block
position at 1. Strategies: greedy, sampling (temperature, top-k, top-p), and beam search with the HF
``BeamHypotheses`` rules used by GLM's seq2seq evaluation (spec §6.4).

A prompt is a :class:`glm_core.layout.GLMInput`. With ``sep == len`` (Part A only) its ``mask_positions`` are
filled in order. With ``sep < len`` the prompt already holds the start of Part B (e.g. ``... [eos] [sop]`` with
sep at sop, or forced answer tokens): generation continues the blank of the last Part-B token, at the next block
position, then fills the prompt's later blanks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from glm_core.errors import ConfigError, LayoutError
from glm_core.layout import GLMInput, blank_token_position
from glm_core.special_tokens import SpecialTokens

Strategy = Literal["greedy", "sample", "beam"]

__all__ = [
    "GenerationConfig",
    "GenerationResult",
    "StepBackend",
    "banned_ngram_tokens",
    "generate",
    "generate_batch",
    "log_softmax",
    "process_logits",
    "warp_logits",
]


class StepBackend(Protocol):
    """What generation and scoring need from a model (torch and ONNX backends implement it)."""

    def step(
        self, input_ids: np.ndarray, position_ids: np.ndarray, sep: np.ndarray, past: Any
    ) -> tuple[np.ndarray, Any]:
        """``input_ids [B,S]`` int64, ``position_ids [B,2,S]`` int64, ``sep [B]`` int64, ``past`` (None = empty)
        -> ``(logits [B,S,V] float32, present)``."""
        ...

    def reorder_past(self, past: Any, index: np.ndarray) -> Any:
        """Gather the cache along the batch dimension (beam reordering, expanding one Part A over candidates).

        Returns a new cache; ``step`` must not modify the ``past`` it is given in place (generation reuses a cache
        after branching from it)."""
        ...

    def past_length(self, past: Any) -> int:
        """Number of cached positions ``P`` (0 for ``None``)."""
        ...


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings. Lengths count the tokens generated **per blank**, the stop token excluded.

    ``min_length`` forbids the stop tokens (eop, eos) until that many tokens were generated in the blank;
    ``no_repeat_ngram_size`` bans any n-gram already present in the blank's content (spec §6.4);
    ``bad_words`` are never generated (in addition to ``SpecialTokens.bad_words``, spec §3.2 trap 1).
    Sampling follows spec §2.3a's recipe knobs (e.g. temperature 0.9, top-k 40).
    """

    max_new_tokens: int = 32
    strategy: Strategy = "greedy"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    min_length: int = 0
    no_repeat_ngram_size: int = 0
    seed: int | None = None
    bad_words: tuple[int, ...] = ()
    vocab_size: int | None = None  # ids >= this (the embedding's padding rows, spec §1.6) are never generated
    stop_on_eos: bool = True  # False: eop alone ends a blank (the original's seq2seq beam search, eos_token_id=eop)
    # greedy / sampling: True bans repeated n-grams over the stream of all blanks so far, "b0 [sop] b1 [sop] ...",
    # as the original's BlankLMEvaluater; False (default) within the current blank only
    no_repeat_across_blanks: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "sample", "beam"):
            raise ConfigError(f"strategy must be 'greedy', 'sample' or 'beam', got {self.strategy!r}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.num_beams < 1:
            raise ConfigError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.min_length < 0 or self.no_repeat_ngram_size < 0:
            raise ConfigError("min_length and no_repeat_ngram_size must be >= 0")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ConfigError(f"vocab_size must be >= 1 (or None), got {self.vocab_size}")


@dataclass
class GenerationResult:
    """Output for one prompt.

    ``blanks[i]``: tokens generated for the blank at ``mask_positions[i]`` (stop token excluded);
    ``scores[i]``: greedy/sampling = sum of the model's log-probabilities (temperature 1, before any processing) of
    the generated tokens and of the stop token when one ended the blank; beam = the winning hypothesis' beam score
    ``sum logp / len^length_penalty``. ``stop_tokens[i]``: the token that ended the blank, ``None`` at the length
    limit. ``sequence``: Part A with every filled blank replaced by its content (forced Part-B tokens + generated).
    """

    blanks: list[list[int]]
    mask_positions: list[int]
    scores: list[float]
    stop_tokens: list[int | None]
    sequence: list[int]


# ----------------------------------------------------------------------------------------------------------------------
# Logits processing (numpy, float64)
# ----------------------------------------------------------------------------------------------------------------------


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def banned_ngram_tokens(history: Sequence[int], n: int) -> set[int]:
    """Tokens that would repeat an n-gram of ``history`` (fairseq / HF no-repeat rule, spec §6.4)."""
    if n <= 0 or len(history) + 1 < n:
        return set()
    if n == 1:
        return set(history)
    prefix = tuple(history[len(history) - (n - 1) :])
    return {history[i + n - 1] for i in range(len(history) - n + 1) if tuple(history[i : i + n - 1]) == prefix}


def process_logits(
    scores: np.ndarray,
    history: Sequence[int],
    num_generated: int,
    config: GenerationConfig,
    stop_ids: Sequence[int],
    banned: Sequence[int],
) -> np.ndarray:
    """Apply min-length, no-repeat-ngram and bad-words bans to one row ``[V]`` (banned entries -> -inf)."""
    out = np.array(scores, dtype=np.float64)
    if num_generated < config.min_length:
        out[list(stop_ids)] = -np.inf  # spec §6.4: min length forbids eop
    if config.no_repeat_ngram_size:
        out[list(banned_ngram_tokens(history, config.no_repeat_ngram_size))] = -np.inf
    if banned:
        out[list(banned)] = -np.inf
    if config.vocab_size is not None:
        out[config.vocab_size :] = -np.inf  # padding rows of the embedding table are no tokens
    return out


def warp_logits(logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """Temperature, then top-k (keep values >= the k-th largest), then top-p (keep the smallest most-likely set whose
    probability reaches ``top_p``); removed entries -> -inf. One row ``[V]``."""
    out = np.asarray(logits, dtype=np.float64) / temperature
    if 0 < top_k < out.shape[-1]:
        kth = np.sort(out)[-top_k]
        out = np.where(out < kth, -np.inf, out)
    if top_p < 1.0:
        order = np.argsort(-out, kind="stable")
        probs = np.exp(log_softmax(out[order]))
        mass_before = np.cumsum(probs) - probs
        remove = mass_before >= top_p
        remove[0] = False  # always keep the most likely token
        out = out.copy()
        out[order[remove]] = -np.inf
    return out


def _sample(logits: np.ndarray, rng: np.random.Generator) -> int:
    probs = np.exp(log_softmax(logits))
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))


# ----------------------------------------------------------------------------------------------------------------------
# Prompt plan: which blanks to fill, what Part B already holds
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    part_a: list[int]
    queue: list[int]  # mask positions still to start (fresh blanks: sop is fed first)
    continued: tuple[int, int] | None  # (mask_pos, tokens fed into that blank = last block id) if Part B started
    forced: dict[int, list[int]]  # Part-B tokens (block >= 2) already in the prompt, per mask position


def _plan(prompt: GLMInput) -> _Plan:
    n, sep = len(prompt), prompt.sep
    part_a = prompt.input_ids[:sep].tolist()
    forced: dict[int, list[int]] = {}
    if sep == n:
        if not prompt.mask_positions:
            raise LayoutError("the prompt has no blank to fill (mask_positions is empty); expected at least one")
        return _Plan(part_a, list(prompt.mask_positions), None, forced)
    for i in range(sep, n):
        pos, block = (int(v) for v in prompt.position_ids[:, i])
        if block >= 2:
            forced.setdefault(pos, []).append(int(prompt.input_ids[i]))
    last_pos, last_block = (int(v) for v in prompt.position_ids[:, -1])
    if last_block < 1:
        raise LayoutError(f"the last Part-B token has block position {last_block}; expected >= 1 (sop is 1)")
    later = [m for m in prompt.mask_positions if m > last_pos]
    return _Plan(part_a, later, (last_pos, last_block), forced)


def _filled_sequence(part_a: list[int], fills: dict[int, list[int]]) -> list[int]:
    out: list[int] = []
    for i, t in enumerate(part_a):
        out += fills[i] if i in fills else [t]
    return out


def _stop_ids(tokens: SpecialTokens, config: GenerationConfig) -> list[int]:
    if not config.stop_on_eos:
        return [tokens.eop]
    return sorted({tokens.eop, tokens.eos})  # spec §2.3a: stop on eop or eod


def _banned(tokens: SpecialTokens, config: GenerationConfig) -> list[int]:
    return sorted(set(config.bad_words) | set(tokens.bad_words))


# ----------------------------------------------------------------------------------------------------------------------
# Greedy and sampling: one batched loop, one state machine per sample
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class _Sampler:
    """Decoding state of one sample: the blank being filled and the next token to feed."""

    plan: _Plan
    mask_pos: int = -1
    fed: int = 0  # tokens fed into the current blank, sop included (= block position of the last one)
    generated: list[int] = field(default_factory=list)
    score: float = 0.0
    pending: tuple[int, int, int] | None = None  # (token, position, block) to feed next
    predict: bool = False  # use the logits of the next step to choose a token
    done: bool = False
    blanks: list[list[int]] = field(default_factory=list)
    mask_positions: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    stop_tokens: list[int | None] = field(default_factory=list)

    def start_next_blank(self, sop: int) -> None:
        if not self.plan.queue:
            self.done, self.pending = True, None
            return
        self.mask_pos, self.fed = self.plan.queue.pop(0), 0
        self.generated, self.score = [], 0.0
        self.feed(sop, predict=True)  # spec §2.3a: sop at (mask_pos, 1)

    def feed(self, token: int, predict: bool) -> None:
        """Schedule ``token`` as the next token of the current blank, at ``(mask_pos, fed + 1)`` (spec §2.3a)."""
        self.pending, self.predict = (token, *blank_token_position(self.mask_pos, self.fed)), predict
        self.fed += 1

    def history(self) -> list[int]:
        return self.plan.forced.get(self.mask_pos, []) + self.generated

    def stream(self, sop: int) -> list[int]:
        """Every blank generated so far, the current one last, each later one opened by ``sop``."""
        out: list[int] = []
        for k, blank in enumerate([*self.blanks, self.history()]):
            out += ([sop] if k else []) + list(blank)
        return out

    def finish_blank(self, stop: int | None, sop: int) -> None:
        self.blanks.append(list(self.generated))
        self.mask_positions.append(self.mask_pos)
        self.scores.append(self.score)
        self.stop_tokens.append(stop)
        if stop is None and self.plan.queue:
            # length limit: the last token is not in the cache yet; feed it so later blanks see it (spec §2.3a)
            self.feed(self.generated[-1], predict=False)
        else:
            self.start_next_blank(sop)

    def result(self) -> GenerationResult:
        fills = {m: list(v) for m, v in self.plan.forced.items()}
        for m, ids in zip(self.mask_positions, self.blanks, strict=True):
            fills[m] = fills.get(m, []) + ids
        return GenerationResult(
            blanks=self.blanks,
            mask_positions=self.mask_positions,
            scores=self.scores,
            stop_tokens=self.stop_tokens,
            sequence=_filled_sequence(self.plan.part_a, fills),
        )


def _choose(
    state: _Sampler,
    row: np.ndarray,
    config: GenerationConfig,
    stop_ids: list[int],
    banned: list[int],
    rng: np.random.Generator,
    sop: int,
) -> None:
    """Pick the next token of ``state`` from its logits ``row [V]`` and schedule what to feed next."""
    logp = log_softmax(row)
    history = state.stream(sop) if config.no_repeat_across_blanks else state.history()
    scores = process_logits(row, history, len(state.generated), config, stop_ids, banned)
    if config.strategy == "sample":
        token = _sample(warp_logits(scores, config.temperature, config.top_k, config.top_p), rng)
    else:
        token = int(np.argmax(scores))
    state.score += float(logp[token])
    if token in stop_ids:
        state.finish_blank(token, sop)  # the stop token is not fed back (spec §2.3a)
        return
    state.generated.append(token)
    if len(state.generated) >= config.max_new_tokens:
        state.finish_blank(None, sop)
        return
    state.feed(token, predict=True)


def _decode_group(
    backend: StepBackend,
    prompts: Sequence[GLMInput],
    tokens: SpecialTokens,
    config: GenerationConfig,
    rng: np.random.Generator,
) -> list[GenerationResult]:
    """Greedy / sampling for prompts of equal length (each keeps its own ``sep``), batched through the cache."""
    stop_ids, banned = _stop_ids(tokens, config), _banned(tokens, config)
    states = [_Sampler(_plan(p)) for p in prompts]
    input_ids = np.stack([p.input_ids for p in prompts])  # [B, S]
    position_ids = np.stack([p.position_ids for p in prompts])  # [B, 2, S]
    sep = np.asarray([p.sep for p in prompts], dtype=np.int64)  # [B]
    logits, past = _prefill(backend, input_ids, position_ids, sep)  # prefill once
    for b, state in enumerate(states):
        if state.plan.continued is None:
            state.start_next_blank(tokens.sop)
        else:
            state.mask_pos, state.fed = state.plan.continued
            _choose(state, logits[b, -1], config, stop_ids, banned, rng, tokens.sop)

    batch = len(states)
    while not all(s.done for s in states):
        ids = np.full((batch, 1), tokens.pad, dtype=np.int64)  # finished rows feed a pad at (0, 0); output unused
        pos = np.zeros((batch, 2, 1), dtype=np.int64)
        for b, state in enumerate(states):
            if not state.done:
                assert state.pending is not None
                ids[b, 0], pos[b, 0, 0], pos[b, 1, 0] = state.pending
        logits, past = backend.step(ids, pos, np.zeros(batch, dtype=np.int64), past)  # [B, 1, V]; sep = 0
        for b, state in enumerate(states):
            if state.done:
                continue
            if state.predict:
                _choose(state, logits[b, -1], config, stop_ids, banned, rng, tokens.sop)
            else:
                state.start_next_blank(tokens.sop)
    return [s.result() for s in states]


# ----------------------------------------------------------------------------------------------------------------------
# Beam search (HF BeamHypotheses semantics, spec §6.4)
# ----------------------------------------------------------------------------------------------------------------------


class _BeamHypotheses:
    """n-best finished hypotheses; score = sum_logprobs / max(len, 1) ** length_penalty, len excluding eop."""

    def __init__(self, num_beams: int, length_penalty: float) -> None:
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.beams: list[tuple[float, list[int], int | None]] = []
        self.worst_score = 1e9

    def add(self, hyp: list[int], sum_logprobs: float, stop: int | None) -> None:
        score = sum_logprobs / (max(len(hyp), 1) ** self.length_penalty)
        if len(self.beams) < self.num_beams or score > self.worst_score:
            self.beams.append((score, hyp, stop))
            if len(self.beams) > self.num_beams:
                ranked = sorted(range(len(self.beams)), key=lambda i: self.beams[i][0])
                del self.beams[ranked[0]]
                self.worst_score = min(s for s, _, _ in self.beams)
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs: float, cur_len: int) -> bool:
        # do_early_stopping=False: done once no running beam can beat the worst kept hypothesis (heuristic of HF)
        if len(self.beams) < self.num_beams:
            return False
        return self.worst_score >= best_sum_logprobs / (max(cur_len, 1) ** self.length_penalty)

    def best(self) -> tuple[float, list[int], int | None]:
        # HF: stable sort by score and take the last, i.e. the latest-added among equal scores
        return sorted(self.beams, key=lambda entry: entry[0])[-1]


def _beam_search_blank(
    backend: StepBackend,
    past: Any,
    logits0: np.ndarray,
    mask_pos: int,
    fed0: int,
    forced: list[int],
    config: GenerationConfig,
    stop_ids: list[int],
    banned: list[int],
) -> tuple[list[int], float, int | None]:
    """Beam search for one blank. ``past`` (batch 1) holds everything up to the last fed token, whose logits are
    ``logits0 [V]``; ``fed0`` tokens (sop included) are already in the blank. Returns (tokens, beam score, stop
    token or None)."""
    n = config.num_beams
    vocab = logits0.shape[-1]
    hyps = _BeamHypotheses(n, config.length_penalty)
    beam_tokens: list[list[int]] = [[] for _ in range(n)]
    beam_scores = np.full(n, -1e9)
    beam_scores[0] = 0.0  # HF: identical initial beams, only the first one is expanded at step 0
    logits = np.repeat(logits0[None, :], n, axis=0)  # [N, V]
    past = backend.reorder_past(past, np.zeros(n, dtype=np.int64))
    num_candidates = min((len(stop_ids) + 1) * n, n * vocab)  # HF takes 2N with one eos; enough for every stop id
    done = False
    for t in range(config.max_new_tokens):
        logp = log_softmax(logits)  # [N, V]
        step_scores = np.stack(
            [
                process_logits(logp[i], forced + beam_tokens[i], t, config, stop_ids, banned) + beam_scores[i]
                for i in range(n)
            ]
        ).reshape(-1)  # [N * V]
        top = np.argsort(-step_scores, kind="stable")[:num_candidates]
        next_beams: list[tuple[int, int, float]] = []  # (source beam, token, score)
        for rank, flat in enumerate(top.tolist()):
            source, token, score = flat // vocab, flat % vocab, float(step_scores[flat])
            if token in stop_ids:
                if rank >= n:  # HF: a stop token outside the top num_beams candidates is not added
                    continue
                hyps.add(list(beam_tokens[source]), score, token)
            else:
                next_beams.append((source, token, score))
            if len(next_beams) == n:
                break
        if len(next_beams) < n:
            raise LayoutError(f"beam search found only {len(next_beams)} live continuations for {n} beams")
        beam_tokens = [beam_tokens[s] + [tok] for s, tok, _ in next_beams]
        beam_scores = np.asarray([score for _, _, score in next_beams])
        # HF: best candidate score of this step (stop candidates included), cur_len = tokens generated before it
        done = hyps.is_done(float(step_scores[top[0]]), t)
        if done or t == config.max_new_tokens - 1:
            break
        index = np.asarray([s for s, _, _ in next_beams], dtype=np.int64)
        past = backend.reorder_past(past, index)
        ids = np.asarray([[tok] for _, tok, _ in next_beams], dtype=np.int64)  # [N, 1]
        pos = np.zeros((n, 2, 1), dtype=np.int64)
        pos[:, :, 0] = blank_token_position(mask_pos, fed0 + t)  # spec §2.3b: (mask_pos, counter + 1)
        step_logits, past = backend.step(ids, pos, np.zeros(n, dtype=np.int64), past)
        logits = np.asarray(step_logits[:, -1], dtype=np.float64)
    if not done:
        for i in range(n):  # finalize: every running beam competes at full length
            hyps.add(beam_tokens[i], float(beam_scores[i]), None)
    score, best, stop = hyps.best()
    return best, score, stop


def _prefill(
    backend: StepBackend, input_ids: np.ndarray, position_ids: np.ndarray, sep: np.ndarray
) -> tuple[np.ndarray, Any]:
    """The prompt's step with an empty cache. Generation reads only the last row's logits, so a backend that can
    return just that row (``supports_last_logits_only``, e.g. the ONNX backend on CUDA: one row leaves the device
    instead of ``[B, S, V]``) is asked for it."""
    if getattr(backend, "supports_last_logits_only", False):
        return backend.step(input_ids, position_ids, sep, None, last_logits_only=True)  # type: ignore[call-arg]
    return backend.step(input_ids, position_ids, sep, None)


def _feed(backend: StepBackend, past: Any, ids: list[int], mask_pos: int, fed: int) -> tuple[np.ndarray, Any]:
    """Feed tokens into a blank that already holds ``fed`` tokens, as one causal chunk (``sep = 0``); batch 1."""
    pos = np.asarray([blank_token_position(mask_pos, fed + k) for k in range(len(ids))]).T[None]  # [1, 2, k]
    return backend.step(np.asarray([ids], dtype=np.int64), pos, np.zeros(1, dtype=np.int64), past)


def _beam_search(
    backend: StepBackend, prompt: GLMInput, tokens: SpecialTokens, config: GenerationConfig
) -> GenerationResult:
    stop_ids, banned = _stop_ids(tokens, config), _banned(tokens, config)
    plan = _plan(prompt)
    logits, past = _prefill(
        backend, prompt.input_ids[None], prompt.position_ids[None], np.asarray([prompt.sep], dtype=np.int64)
    )
    result = GenerationResult([], [], [], [], [])
    fills = {m: list(v) for m, v in plan.forced.items()}
    if plan.continued is not None:
        mask_pos, fed = plan.continued
    else:
        mask_pos = plan.queue.pop(0)
        logits, past = _feed(backend, past, [tokens.sop], mask_pos, 0)  # spec §2.3a: sop at (mask_pos, 1)
        fed = 1
    while True:
        first = np.asarray(logits[0, -1], dtype=np.float64)  # [V]
        hyp, score, stop = _beam_search_blank(
            backend, past, first, mask_pos, fed, fills.get(mask_pos, []), config, stop_ids, banned
        )
        result.blanks.append(hyp)
        result.mask_positions.append(mask_pos)
        result.scores.append(score)
        result.stop_tokens.append(stop)
        fills[mask_pos] = fills.get(mask_pos, []) + hyp
        if not plan.queue:
            break
        # Re-feed the winner as one causal chunk (exact, spec §2.2), then open the next blank with its sop.
        next_mask = plan.queue.pop(0)
        if hyp:
            _, past = _feed(backend, past, hyp, mask_pos, fed)
        mask_pos, fed = next_mask, 1
        logits, past = _feed(backend, past, [tokens.sop], mask_pos, 0)
    result.sequence = _filled_sequence(plan.part_a, fills)
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------------------


def generate(
    backend: StepBackend, prompt: GLMInput, tokens: SpecialTokens, config: GenerationConfig
) -> GenerationResult:
    """Fill the blanks of one prompt (see the module docstring for the recipe)."""
    return generate_batch(backend, [prompt], tokens, config)[0]


def generate_batch(
    backend: StepBackend, prompts: Sequence[GLMInput], tokens: SpecialTokens, config: GenerationConfig
) -> list[GenerationResult]:
    """Fill the blanks of several prompts; results in input order.

    Greedy / sampling run prompts of equal length together as one batch (each with its own ``sep``). Prompts of
    different lengths are never padded into one batch: pads in Part A would be visible to the generated tokens under
    the sep rule (spec §2.1), so each length group runs separately. Beam search runs one prompt at a time.
    Sampling draws from one ``np.random.default_rng(config.seed)`` in group order.
    """
    if config.strategy == "beam":
        return [_beam_search(backend, p, tokens, config) for p in prompts]
    rng = np.random.default_rng(config.seed)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    results: list[GenerationResult | None] = [None] * len(prompts)
    for indices in groups.values():
        for i, r in zip(
            indices, _decode_group(backend, [prompts[i] for i in indices], tokens, config, rng), strict=True
        ):
            results[i] = r
    return [r for r in results if r is not None]
