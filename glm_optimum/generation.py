"""GLM blank filling through transformers' generation utilities, with the decisions of ``glm_core.generation``.

``transformers.GenerationMixin.generate`` runs the loop (prefill, one token per step through the cache, beam
bookkeeping); what makes it GLM lives here:

- :class:`GLMPromptTokenizer` builds the prompt as ``glm_core.layout.build_generation_prompt`` does
  (``[CLS] text [eos]`` with the blank, 2-D positions) and opens the first blank with ``[sop]`` at
  ``(mask_pos, 1)``, ``sep`` = index of ``[sop]``: the prompt ``glm_core.generation`` continues (its "Part B
  started" plan), so the prefill is the same computation.
- :func:`advance_positions` gives the next generated token ``(mask_pos, block + 1)``
  (``glm_core.layout.blank_token_position``); later chunks run with ``sep = 0``.
- :class:`GLMLogitsProcessor` applies ``glm_core.generation.process_logits`` (min length and no-repeat-ngram
  counted inside the blank, bad words, the embedding's padding rows) and, when sampling, draws with
  ``glm_core.generation``'s numpy generator, so a seed gives the same ids as ``glm_core.generation.generate``.

One blank per ``generate()`` call (the first, as ``glm_core.generation`` fills them left to right); a prompt with
several blanks is filled completely by ``glm_core.generation.generate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import BatchEncoding
from transformers.generation import LogitsProcessor

from glm_core.errors import ConfigError, InputError
from glm_core.generation import GenerationConfig, _banned, _sample, _stop_ids, process_logits, warp_logits
from glm_core.layout import GLMInput, blank_token_position, build_generation_prompt
from glm_core.special_tokens import SpecialTokens

# transformers' generation settings that GLMLogitsProcessor takes over: generate() hands transformers neutral values
# for them, so they are applied once, with glm_core's semantics.
TAKEN_OVER = {
    "do_sample": False,
    "temperature": 1.0,
    "top_k": None,
    "top_p": 1.0,
    "min_new_tokens": None,
    "no_repeat_ngram_size": 0,
}


def open_first_blank(prompt: GLMInput, tokens: SpecialTokens) -> GLMInput:
    """Part A + ``[sop]`` at ``(mask_pos, 1)`` of the first blank, ``sep`` at ``[sop]`` (spec §2.3a)."""
    if not prompt.mask_positions:
        raise InputError("the prompt has no blank to fill; expected a [MASK]/[gMASK]/[sMASK] in the text")
    if prompt.sep != len(prompt):
        raise InputError(f"expected a Part-A-only prompt (sep == {len(prompt)}), got sep {prompt.sep}")
    position, block = blank_token_position(prompt.mask_positions[0], 0)
    n = len(prompt) + 1
    return GLMInput(
        input_ids=np.append(prompt.input_ids, tokens.sop),
        position_ids=np.concatenate([prompt.position_ids, [[position], [block]]], axis=1),
        sep=prompt.sep,
        targets=np.full(n, tokens.pad),  # nothing is scored: generation predicts from the last logits
        loss_mask=np.zeros(n, dtype=np.float32),
        mask_positions=prompt.mask_positions,
    )


def advance_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """``[B, 2, S] -> [B, 2, S + 1]``: the next token of the blank sits at ``(mask_pos, block + 1)``."""
    last = position_ids[:, :, -1:].clone()
    last[:, 1] += 1
    return torch.cat([position_ids, last], dim=-1)


class GLMPromptTokenizer:
    """Text -> the inputs ``GLMORTModel.generate`` expects: ``input_ids``, ``position_ids``, ``sep``,
    ``attention_mask`` (all ones: GLM's attention is the ``sep`` rule, there is no padding)."""

    def __init__(self, tokenizer: Any, max_length: int | None = None) -> None:
        self.tokenizer = tokenizer  # glm_core.tokenizer.GLMTokenizer
        self.max_length = max_length

    @property
    def special(self) -> SpecialTokens:
        return self.tokenizer.special

    def __len__(self) -> int:
        return len(self.tokenizer)

    def prompt(self, text: str, generation_mask: int | None = None) -> GLMInput:
        """The prompt of one text, as a :class:`glm_core.layout.GLMInput` (Part A + ``[sop]``)."""
        limit = None if self.max_length is None else self.max_length - 1  # room for [sop]
        part_a = build_generation_prompt(
            self.tokenizer.encode(text), self.special, generation_mask=generation_mask, max_length=limit
        )
        return open_first_blank(part_a, self.special)

    def __call__(
        self, text: str | Sequence[str], return_tensors: str | None = "pt", generation_mask: int | None = None
    ) -> BatchEncoding:
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise InputError("no text given; expected a string or a non-empty list of strings")
        prompts = [self.prompt(t, generation_mask) for t in texts]
        return encode_prompts(prompts, return_tensors)

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(_id_list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, rows: Any, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(row, skip_special_tokens) for row in rows]


def encode_prompts(prompts: Sequence[GLMInput], return_tensors: str | None = "pt") -> BatchEncoding:
    """Stack prompts of one length into a batch (pads in Part A would be visible under the sep rule)."""
    lengths = sorted({len(p) for p in prompts})
    if len(lengths) > 1:
        raise InputError(
            f"prompts of different lengths {lengths} cannot share a batch (GLM has no padding: Part A is "
            "bidirectional); call generate once per length"
        )
    data = {
        "input_ids": np.stack([p.input_ids for p in prompts]),
        "position_ids": np.stack([p.position_ids for p in prompts]),
        "sep": np.asarray([p.sep for p in prompts], dtype=np.int64),
        "attention_mask": np.ones((len(prompts), lengths[0]), dtype=np.int64),
    }
    return BatchEncoding(data, tensor_type=return_tensors)


def _id_list(ids: Any) -> list[int]:
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    return [int(i) for i in np.asarray(ids).reshape(-1)]


def glm_generation_config(hf: Any, max_new_tokens: int, seed: int | None, vocab_size: int | None) -> GenerationConfig:
    """``glm_core``'s settings from a ``transformers.GenerationConfig`` (after ``generate()``'s keyword arguments)."""
    num_beams = int(hf.num_beams or 1)
    if hf.do_sample and num_beams > 1:
        raise ConfigError("do_sample=True with num_beams > 1 (beam sampling) is not a GLM strategy; use one of them")
    if (hf.num_return_sequences or 1) != 1:
        raise ConfigError(f"num_return_sequences must be 1 (got {hf.num_return_sequences}); GLM returns one fill")
    if hf.min_length:
        raise ConfigError(f"min_length={hf.min_length} counts the prompt; use min_new_tokens (tokens in the blank)")
    bad_words: list[int] = list(hf.suppress_tokens or [])
    for entry in hf.bad_words_ids or []:
        if len(entry) != 1:
            raise ConfigError(f"bad_words_ids entry {entry} has several tokens; only single-token bans are supported")
        bad_words.append(int(entry[0]))
    strategy = "beam" if num_beams > 1 else "sample" if hf.do_sample else "greedy"
    sample = strategy == "sample"
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        strategy=strategy,
        temperature=float(hf.temperature) if sample and hf.temperature is not None else 1.0,
        top_k=int(hf.top_k or 0) if sample else 0,
        top_p=float(hf.top_p) if sample and hf.top_p is not None else 1.0,
        num_beams=num_beams,
        length_penalty=float(hf.length_penalty if hf.length_penalty is not None else 1.0),
        min_length=int(hf.min_new_tokens or 0),
        no_repeat_ngram_size=int(hf.no_repeat_ngram_size or 0),
        seed=seed,
        bad_words=tuple(sorted(set(bad_words))),
        vocab_size=vocab_size,
    )


class GLMLogitsProcessor(LogitsProcessor):
    """``glm_core.generation``'s choice rules as a transformers logits processor (the last in the list).

    Each row is processed with ``process_logits`` over the tokens generated after ``prompt_length`` (the blank's
    content). Greedy and beam search then pick as transformers does (argmax, top-k of summed log-probabilities).
    For sampling the processor draws the token itself, with ``glm_core``'s warping and its numpy generator, one
    draw per unfinished row in row order (as ``glm_core.generation``), and leaves only that token finite: the
    greedy pick transformers makes afterwards is that token.
    """

    def __init__(self, config: GenerationConfig, tokens: SpecialTokens, prompt_length: int) -> None:
        self.config = config
        self.prompt_length = prompt_length
        self.stop_ids = _stop_ids(tokens, config)
        self.banned = _banned(tokens, config)
        self.rng = np.random.default_rng(config.seed) if config.strategy == "sample" else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :].tolist()
        values = scores.detach().to("cpu", torch.float64).numpy()
        rows = []
        for history, row in zip(generated, values, strict=True):
            out = process_logits(row, history, len(history), self.config, self.stop_ids, self.banned)
            if self.rng is not None and not any(t in self.stop_ids for t in history):
                token = _sample(
                    warp_logits(out, self.config.temperature, self.config.top_k, self.config.top_p), self.rng
                )
                out = np.full_like(out, -np.inf)
                out[token] = 0.0
            rows.append(out)
        return torch.from_numpy(np.stack(rows)).to(device=scores.device, dtype=scores.dtype)
