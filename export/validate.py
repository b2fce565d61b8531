"""Export validation: PyTorch reference vs ONNX Runtime, run in two processes.

The torch side (:func:`make_reference`, in the exporting process) runs the PyTorch model on a fixed set of inputs
and writes them with its outputs to one ``.npz``. The ORT side (:func:`run_checks`, started by
:func:`validate_in_subprocess` as ``python -m export.validate``) loads the finished model directory through
:class:`evaluation.backends.onnx.OnnxBackend`, never imports torch, and compares (spec onnx_export §6):

1. full-pass parity on a grid of (B, S, sep, P) unlike the trace example: sep = 0 (causal), sep = S (bidirectional),
   B >= 2 with different seps, P = 0 and S = 1, a chunk after a cache with a chunk-relative sep; then the production
   shapes (:func:`production_cases`): a batch of 8 over S = 64 with every kind of sep, and a chunk after a past that
   ORT builds itself and that nearly fills the position table; logits and the new cache rows;
2. incremental parity: prefill k tokens, then one token per step, vs one full PyTorch pass of the same sequence;
   twice: the short :data:`INCREMENTAL` case and the :data:`DECODE` case (batch 8, mixed seps, 50 steps past 64
   cached positions, the cache reordered by :meth:`reorder_past` half-way);
3. greedy blank-infilling generation (glm_core.generation, spec glm_reference §2.3a) on both backends: identical
   token ids, and a replay of PyTorch's step calls on ORT that tells a real divergence from a near-tie;
4. ``onnx.checker.check_model(path, full_check=True)`` and the graph's input/output names;
5. quantized models (int8/int4): top-1 agreement (on at least :data:`MIN_TOP1_ROWS` decided rows) and the
   perplexity change on a text in the model's domain (:func:`quality_text`; without one the report says quality was
   not gated), instead of the elementwise gates of 1.-3.; fp16 and quantized graphs are also held to agree with
   their own full pass when decoding incrementally (:data:`SELF_CONSISTENCY`).

``reduced=True`` (used by the exporter for the intermediate stages of models over ~1 GB, never for the model it
ships) runs only the :data:`REDUCED_GRID` cases of 1. and skips 3.; 2., 4. and 5. always run.

The ORT side drives the model only through the backend's ``step`` / ``reorder_past`` / ``past_length`` (and reads
cache rows one tensor at a time, :func:`new_cache_rows`), so it checks whatever cache layout the backend runs.

Tolerances (spec onnx_export §4.1, §6): ``|Δ| <= atol + rtol·|ref|`` everywhere and ``max|Δ| / max|ref| <= norm``.
ONNX Runtime runs in its own process because it does not give memory back and its spinning thread pool slows
torch down when both share the cores (spec §1.1, §4.2 #10).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.compute_twin import fp32_compute_twin
from export.figures import CONFIDENT_MARGIN, Tolerance, compare, confident_top1, perplexity, top1_agreement
from export.memory import PhasePeaks, return_freed_memory
from export.reference_steps import NpzWriter, chunk_after_past, prefill_cache
from glm_core.errors import ExportError, GLMError
from glm_core.special_tokens import SpecialTokens, sentencepiece_tokens

# spec onnx_export §0.6 / §4.1: measured fp32 error ~1e-6 of max|ref|, fp16 ~1.2e-4 of max|ref|.
TOLERANCES = {"fp32": Tolerance(1e-4, 1e-4, 1e-5), "fp16": Tolerance(5e-2, 1e-2, 1e-3)}
# Quantized graphs are judged by behaviour, not by elementwise error (spec §6 validation 1).
QUANT_GATES = {
    "int8": {"min_top1": 0.90, "max_ppl_rel_delta": 0.05},
    "int4": {"min_top1": 0.80, "max_ppl_rel_delta": 0.10},
}

# (batch, seq, seps, past) -- all unlike the trace example (2, 8, sep, 4), spec §6 pitfall 3.
GRID: tuple[tuple[int, int, tuple[int, ...], int], ...] = (
    (1, 1, (0,), 0),  # single token, empty cache
    (3, 7, (0, 7, 3), 0),  # causal, fully bidirectional and a split in one batch
    (2, 5, (5, 2), 0),
    (1, 13, (6,), 0),
    (2, 1, (0, 0), 9),  # decode step after a 9-token cache
    (4, 5, (0, 5, 2, 1), 3),  # a chunk after a cache: sep is relative to the chunk (spec §2.1)
)
# Reduced checks: the mixed-sep batch without a cache and the chunk after a cache (causal, bidirectional and split
# rows, P = 0 and P > 0): the two cases that exercise every branch of the mask rule.
REDUCED_GRID = (1, 5)
INCREMENTAL = {"batch": 2, "seq": 12, "seps": (5, 7), "prefill": 7}
# Production shapes. WIDE: batch 8, S = 64, seps 0, S and in between, rows 4..7 all with a prefix (a rule that
# treats rows differently by index shows). LONG: a short chunk with its own sep after a past of
# max_sequence_length + 1 - seq positions (the last position the table holds), prefilled by ORT itself.
WIDE = {"batch": 8, "seq": 64}
LONG = {"batch": 3, "seq": 4, "seps": (0, 4, 2)}
# The runtime prefills that near-full past in chunks of this many positions, the first chunk holding the prefix's
# bidirectional part (PREFILL_CHUNK positions, the rest causal): a chunk's logits and presents, not the whole
# prefix's (3 x P x V floats + a second copy of the cache), are what the prefill holds beside the cache.
PREFILL_CHUNK = 128
# Decode: prefill 24 tokens with mixed seps, then 50 single-token steps: the last 9 steps attend over more than
# 64 cached positions. At step REORDER_AT the cache rows are reversed with reorder_past (inputs and logits follow).
DECODE = {"batch": 8, "prefill": 24, "steps": 50, "seps": (0, 24, 12, 1, 23, 5, 16, 24), "reorder_at": 25}
GENERATION_TOKENS = 6  # per blank, two blanks
PPL_TOKENS = 64
SEED = 20240611

# Quality gates of quantized graphs need rows to judge: fewer decided rows than this fail the gate, not pass it.
MIN_TOP1_ROWS = 32
# fp16 and quantized graphs: incremental decoding against the same graph's own full pass (the graph must agree with
# itself however far it is from PyTorch). Not the fp32 gate: measured on the tiny test model (decode B8, 50 steps),
# fp16 reaches max|Δ| 3.5e-5 but normalised 2.3e-5 (> fp32's 1e-5: S=1 and S=T matmuls round differently in half
# precision); int4 (MatMulNBits, accuracy level 4) 6.0e-3 / 3.9e-3 and int8 (dynamic) 2.1e-2 / 1.4e-2, because both
# quantize activations with scales taken over the rows of each call. Each bound is ~3x its measurement (the
# quantized ones at the widest dims measured, below); a mask error (normalised 0.02-0.4 on the fp32 graph) stays
# visible at fp16, and the quantized graphs' cache and mask logic is judged on their fp32-compute twin.
SELF_CONSISTENCY = {
    # fp16: the tiny model's 2.3e-5 grows with width and depth (longer sums): glm-2b dims with random weights
    # measured max|Δ| 7.0e-4, normalised 1.37e-4 (benchmarks/results/export_rss_streamed_glm-2b_fp16_validated.json,
    # which failed the earlier 1e-4); 1e-3 is ~7x that and still 20x below a mask error's 0.02
    "fp16": Tolerance(1e-3, 1e-4, 1e-3, scaled_atol=True),
    # int4: the noise of the activations' int8 rounding (accuracy_level 4), which grows with depth: glm-2b dims with
    # random weights measured normalised 0.0138 (incremental) and 0.0154 (decode), max|Δ| 0.080 at max|ref| 5.2
    # (benchmarks/results/export_rss_streamed_glm-2b_int4.json, which failed the earlier 1.2e-2). Offset errors are
    # judged on the fp32-compute twin instead (CACHE_CHECK), where that noise is absent.
    "int4": Tolerance(4e-2, 1e-2, 4e-2, scaled_atol=True),
    # int8: per-tensor activation scales taken over each call's rows: glm-large dims with random weights measured
    # normalised 0.0415, max|Δ| 0.136 at max|ref| 3.3 (decode B8, 50 steps; the tiny model's 0.014 set the earlier
    # 4e-2, which that run failed; benchmarks/results/export_rss_glm-large_a04e7d2.json); ~3x that. Offset
    # errors are judged on the fp32-compute twin (CACHE_CHECK), as for int4.
    "int8": Tolerance(1.2e-1, 2e-2, 1.2e-1, scaled_atol=True),
}
# The cache and mask logic of a quantized graph is judged on its twin computing in fp32 (export/compute_twin.py: the
# same file and weights, MatMulNBits at accuracy_level 0, int8 MatMuls on the dequantized weights): its incremental
# decode must match its own full pass within the fp16 self-consistency bound. A quantized graph rounds activations to
# int8 with per-call scales, and an upstream last-bit difference moves a rounding step: over many layers that noise
# is as large as an offset error (a cache mask hiding past rows older than 64 positions measured normalised 0.018 on
# the tiny int4 graph; glm-2b dims' int4 noise 0.0154, glm-large dims' int8 noise 0.0415). The twin is written beside
# the model (its external data references the same file) and removed after the check.
CACHE_CHECK = Tolerance(1e-3, 1e-4, 1e-3, scaled_atol=True)
# A text in the model's domain for the perplexity gate: --calibration-text FILE, else this file in the checkpoint
# (tokenizer) directory. Without one, quantized quality is not gated (the report says so).
CALIBRATION_FILE = "calibration.txt"
# The generation prompt's text when the model has no domain text (tokenized when the model has a tokenizer).
PPL_TEXT = (
    "The committee met on Tuesday to review the budget for the coming year. After a long discussion, the members "
    "agreed to increase spending on public libraries and to reduce the cost of running the city's parks. The mayor "
    "said the plan would be published next month, once the final figures had been checked by the treasury."
)


# ==================================================================================================== torch side
def wide_seps(seq: int) -> tuple[int, ...]:
    """Seps of the WIDE batch: causal, bidirectional, half, 1, S-1, 7, S/3, S (rows >= 4 all have a prefix)."""
    return (0, seq, seq // 2, 1, seq - 1, min(7, seq), seq // 3, seq)


def production_cases(max_position: int, num_layers: int) -> list[dict[str, Any]]:
    """The production-shape grid cases for a model whose position table ends at ``max_position``.

    ``own_past``: the past is not fed from the reference but prefilled by the runtime from ``past`` stored tokens
    (a past near the end of the position table would otherwise mean storing every layer's full cache).
    ``present_layers``: the layers whose new cache rows the reference stores and the check compares. The batch-8
    case's rows of every layer would be the reference's largest array (glm-2b dims: 302 of its 625 MB, more than
    the model's largest tensor, which bounds what the export may keep on disk beside its result); its first, middle
    and last layers' are compared, every layer's rows are compared in the other grid cases and consumed by the
    batch-8 decode, whose logits are compared at every step.
    """
    wide_seq = WIDE["seq"]
    long_past = max(1, max_position + 1 - LONG["seq"])
    layers = sorted({0, num_layers // 2, num_layers - 1})
    return [
        {
            "batch": WIDE["batch"],
            "seq": wide_seq,
            "seps": list(wide_seps(wide_seq)),
            "past": 0,
            "own_past": False,
            "present_layers": layers,
        },
        {"batch": LONG["batch"], "seq": LONG["seq"], "seps": list(LONG["seps"]), "past": long_past, "own_past": True},
    ]


def validation_special_tokens(special: SpecialTokens | None, vocab_size: int) -> SpecialTokens:
    """The model's special ids when they fit its vocabulary, else a stand-in table at the top of the vocabulary.

    Random test models are smaller than their tokenizer family's ids; generation only needs consistent ids.
    """
    if special is not None:
        ids = [i for i in special.to_dict().values() if isinstance(i, int)]
        if max(ids) < vocab_size:
            return special
    return sentencepiece_tokens(num_pieces=vocab_size - 10)


def _text_ids(
    tokenizer: Any, special: SpecialTokens, vocab_size: int, count: int, rng: np.random.Generator, text: str | None
) -> np.ndarray:
    """``count`` ids of ``text`` (repeated), or ordinary ids at random when there is no text or no tokenizer."""
    if tokenizer is not None and text:
        ids = tokenizer.encode(text)
        if len(ids) >= 8:
            reps = -(-count // len(ids))
            return np.asarray((ids * reps)[:count], dtype=np.int64)
    reserved = [i for i in special.to_dict().values() if isinstance(i, int)]
    vocab = np.setdiff1d(np.arange(vocab_size), reserved)  # ordinary tokens only
    return rng.choice(vocab, size=count).astype(np.int64)


def quality_text(
    tokenizer: Any, calibration: str | os.PathLike[str] | None, directory: Path | None, random_weights: bool
) -> tuple[str | None, dict[str, Any]]:
    """The perplexity text and whether the quality of a quantized graph can be gated on it.

    Gated only for trained weights with a text in the model's domain (``calibration``, else ``CALIBRATION_FILE`` in
    the checkpoint directory) and a tokenizer to read it.
    """
    text, source = None, None
    if calibration is not None:
        path = Path(calibration)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ExportError(f"--calibration-text {path}: cannot read it as UTF-8 text ({exc})") from None
        if not text.strip():
            raise ExportError(f"--calibration-text {path}: the file is empty")
        if tokenizer is None:
            raise ExportError(f"--calibration-text {path}: the checkpoint has no tokenizer to read it with")
        source = str(path)
    elif directory is not None and (directory / CALIBRATION_FILE).is_file() and tokenizer is not None:
        text, source = (directory / CALIBRATION_FILE).read_text(encoding="utf-8"), str(directory / CALIBRATION_FILE)
    if random_weights:
        return text, {"gated": False, "reason": "random weights: quality was not gated", "text": source}
    if text is None:
        reason = (
            "no text in the model's domain (pass --calibration-text FILE or put "
            f"{CALIBRATION_FILE} beside the tokenizer): quality was not gated"
        )
        return None, {"gated": False, "reason": reason, "text": "random ordinary ids"}
    return text, {"gated": True, "reason": None, "text": source}


def make_reference(
    model: Any,
    path: str | os.PathLike[str],
    *,
    special: SpecialTokens | None = None,
    tokenizer: Any = None,
    seed: int = SEED,
    calibration: str | os.PathLike[str] | None = None,
    directory: Path | None = None,
    random_weights: bool = False,
) -> dict[str, Any]:
    """Run the PyTorch model on the validation inputs and write inputs + outputs to ``path`` (``.npz``).

    ``calibration`` / ``directory`` / ``random_weights``: see :func:`quality_text`.
    """
    from glm_core.step import TorchStep

    rng = np.random.default_rng(seed)
    step = TorchStep(model)
    meta: dict[str, Any] = {"cases": [], "num_layers": model.config.num_layers}
    text, meta["quality"] = quality_text(tokenizer, calibration, directory, random_weights)
    with NpzWriter(path) as arrays:
        _write_reference(model, step, arrays, meta, rng, special, tokenizer, text)
    return meta


def _write_reference(
    model: Any, step: Any, arrays: NpzWriter, meta: dict[str, Any], rng: Any, special: Any, tokenizer: Any, text: Any
) -> None:
    """The reference's cases, each written to ``arrays`` as soon as it is computed (see :func:`make_reference`)."""
    from glm_core.generation import GenerationConfig, generate
    from glm_core.layout import build_generation_prompt

    config = model.config
    V, max_pos = config.vocab_size, config.max_sequence_length

    def positions(batch: int, start: int, length: int) -> np.ndarray:
        pos = np.arange(start, start + length) % (max_pos + 1)
        row = np.stack([pos, np.zeros_like(pos)])  # [2, S]
        return np.repeat(row[None], batch, axis=0).astype(np.int64)  # [B, 2, S]

    def to_numpy(past: Any, start: int = 0) -> list[np.ndarray]:
        """The cache's positions from ``start`` on, as fp32 arrays (sliced first: a copy of only those rows)."""
        return [t[:, :, start:].detach().float().cpu().numpy() for layer in past for t in layer]

    # 1. the grid, then the production shapes
    cases = [{"batch": B, "seq": S, "seps": list(seps), "past": P, "own_past": False} for B, S, seps, P in GRID]
    for n, case in enumerate(cases + production_cases(max_pos, config.num_layers)):
        key = f"grid{n}"
        B, S, P = case["batch"], case["seq"], case["past"]
        past, prefix = None, None
        if P:
            prefix = rng.integers(0, V, size=(B, P), dtype=np.int64)
            prefix_pos, prefix_sep = positions(B, 0, P), np.full(B, P // 2, dtype=np.int64)
            if case["own_past"]:
                prefix_sep = np.full(B, min(P // 2, PREFILL_CHUNK), dtype=np.int64)
                arrays.update({f"{key}.prefix.ids": prefix, f"{key}.prefix.pos": prefix_pos})
                arrays[f"{key}.prefix.sep"] = prefix_sep
            else:
                past = prefill_cache(model, step, prefix, prefix_pos, prefix_sep)
                arrays[f"{key}.past"] = np.stack(to_numpy(past))  # [2L, B, H, P, D]
        ids = rng.integers(0, V, size=(B, S), dtype=np.int64)
        pos = positions(B, P, S)
        sep = np.asarray(case["seps"], dtype=np.int64)
        if case["own_past"]:
            # One row at a time (rows of a step are independent), each in one pass over prefix + chunk
            rows = []
            for b in range(B):
                whole_ids = np.concatenate([prefix[b : b + 1], ids[b : b + 1]], axis=1)
                whole_pos = np.concatenate([prefix_pos[b : b + 1], pos[b : b + 1]], axis=2)
                rows.append(chunk_after_past(model, whole_ids, whole_pos, int(prefix_sep[b]), int(sep[b]), P))
            logits = np.concatenate([r[0] for r in rows])
            new_rows = np.concatenate([r[1] for r in rows], axis=1)
        else:
            logits, present = step.step(ids, pos, sep, past)
            layers = case.get("present_layers", range(len(present)))
            new_rows = np.stack(to_numpy([present[i] for i in layers], P))  # the rows this call computed
            del past, present
        arrays.update({f"{key}.ids": ids, f"{key}.pos": pos, f"{key}.sep": sep, f"{key}.logits": logits})
        arrays[f"{key}.present"] = new_rows
        meta["cases"].append({"key": key, **case})
        del logits, new_rows
        return_freed_memory()  # the case's activations and cache, before the next (larger) case runs

    # 2. incremental decoding references: one full pass each
    for name, spec in (("incr", INCREMENTAL), ("decode", DECODE)):
        B = spec["batch"]
        S = spec["seq"] if "seq" in spec else spec["prefill"] + spec["steps"]
        ids = rng.integers(0, V, size=(B, S), dtype=np.int64)
        pos = positions(B, 0, S)
        sep = np.asarray(spec["seps"], dtype=np.int64)
        logits, _ = step.step(ids, pos, sep, None)
        arrays.update({f"{name}.ids": ids, f"{name}.pos": pos, f"{name}.sep": sep, f"{name}.logits": logits})
    del logits
    return_freed_memory()
    meta["incremental"] = dict(INCREMENTAL, seps=list(INCREMENTAL["seps"]))
    meta["decode"] = dict(DECODE, seps=list(DECODE["seps"]))

    # 3. greedy blank infilling, recording every step call for the replay
    tokens = validation_special_tokens(special, V)
    text_prompt = _text_ids(tokenizer, tokens, V, 20, rng, text or PPL_TEXT).tolist()
    text_prompt = text_prompt[:6] + [tokens.mask] + text_prompt[6:14] + [tokens.mask] + text_prompt[14:]
    prompt = build_generation_prompt(text_prompt, tokens)
    recorder = _Recorder(step)
    gen_config = GenerationConfig(max_new_tokens=GENERATION_TOKENS, strategy="greedy")
    result = generate(recorder, prompt, tokens, gen_config)
    for i, (cid, cpos, csep, clast) in enumerate(recorder.calls):
        arrays.update(
            {f"gen.call{i}.ids": cid, f"gen.call{i}.pos": cpos, f"gen.call{i}.sep": csep, f"gen.call{i}.last": clast}
        )
    arrays.update({"gen.prompt.ids": prompt.input_ids, "gen.prompt.pos": prompt.position_ids})
    meta["generation"] = {
        "calls": len(recorder.calls),
        "blanks": result.blanks,
        "sequence": result.sequence,
        "prompt_sep": prompt.sep,
        "mask_positions": list(prompt.mask_positions),
        "special_tokens": {**tokens.to_dict(), "bad_words": list(tokens.bad_words)},
        "max_new_tokens": GENERATION_TOKENS,
    }

    # 4. perplexity text (left to right: sep = 0, positions 0..T-1)
    T = min(PPL_TOKENS, max_pos + 1)
    text_ids = _text_ids(tokenizer, tokens, V, T, rng, text)[None]  # [1, T]
    logits, _ = step.step(text_ids, positions(1, 0, T), np.zeros(1, dtype=np.int64), None)
    arrays.update({"ppl.ids": text_ids, "ppl.logits": logits})
    meta["ppl_tokens"] = T

    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)


class _Recorder:
    """Wraps a backend and records each call's inputs and last-row logits (for the ORT replay)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.calls: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def step(self, input_ids: np.ndarray, position_ids: np.ndarray, sep: np.ndarray, past: Any) -> Any:
        logits, present = self.backend.step(input_ids, position_ids, sep, past)
        self.calls.append(
            (
                np.asarray(input_ids, np.int64),
                np.asarray(position_ids, np.int64),
                np.asarray(sep, np.int64).reshape(-1),
                np.asarray(logits[:, -1], np.float32),
            )
        )
        return logits, present

    def reorder_past(self, past: Any, index: np.ndarray) -> Any:
        return self.backend.reorder_past(past, index)

    def past_length(self, past: Any) -> int:
        return self.backend.past_length(past)


# ====================================================================================================== ORT side
def _past_list(array: np.ndarray, kv_dtype: Any) -> list[np.ndarray]:
    return [np.ascontiguousarray(a, dtype=kv_dtype) for a in array]


def _seps_text(seps: Sequence[int]) -> str:
    """``[0, 7, 3]``; long lists shortened to their first four and the count."""
    seps = list(seps)
    return str(seps) if len(seps) <= 4 else f"[{', '.join(map(str, seps[:4]))}, ... ({len(seps)} rows)]"


def new_cache_rows(present: Any, past_len: int, layers: Sequence[int] | None = None) -> np.ndarray:
    """``[2L, B, H, S, D]`` float32: the cache rows one step computed (positions ``past_len`` onwards); with
    ``layers``, only those layers' key and value (``[2 x len(layers), ...]``).

    ``present`` holds 2L tensors ``[B, H, P + S, D]`` (OrtValues, arrays, or views that read their rows through
    ``rows(start)``, as the buffer layout's do); one tensor is read at a time, so only the new rows are ever held
    together (reading every layer whole first held a second copy of a near-full cache: 1.8 GB at glm-2b dims).
    """
    if layers is not None:
        present = [present[2 * layer + kv] for layer in layers for kv in (0, 1)]
    out: np.ndarray | None = None
    for index, value in enumerate(present):
        reader = getattr(value, "rows", None)
        if reader is not None:
            rows = reader(past_len)
        else:
            rows = np.asarray(value.numpy() if hasattr(value, "numpy") else value)[:, :, past_len:]
        if out is None:
            out = np.empty((len(present), *rows.shape), dtype=np.float32)
        out[index] = rows
        del rows
    if out is None:
        raise ExportError("the step returned no cache tensors")
    return out


def incremental_logits(backend: Any, ids: np.ndarray, pos: np.ndarray, sep: np.ndarray, spec: dict[str, Any]) -> Any:
    """Prefill ``spec["prefill"]`` tokens with ``sep``, then one token per step (sep = 0); ``[B, T, V]`` logits.

    With ``spec["reorder_at"]`` the cache rows are reversed by ``reorder_past`` before that step, and the inputs and
    logits follow the rows, so the result is comparable with one full pass only when the reorder is right.
    """
    B, T = ids.shape
    k = spec["prefill"]
    order = np.arange(B)
    logits, past = backend.step(ids[:, :k], pos[:, :, :k], sep, None)
    chunks = [logits]
    for t in range(k, T):
        if t == spec.get("reorder_at"):
            reverse = np.arange(B)[::-1].copy()
            past = backend.reorder_past(past, reverse)
            order = order[reverse]
            if backend.past_length(past) != t:
                raise ExportError(f"reorder_past changed the cache length ({backend.past_length(past)} != {t})")
        step_ids, step_pos = ids[order, t : t + 1], pos[order, :, t : t + 1]
        logits, past = backend.step(step_ids, step_pos, np.zeros(B, np.int64), past)
        restored = np.empty_like(logits)
        restored[order] = logits
        chunks.append(restored)
    return np.concatenate(chunks, axis=1)


def chunked_prefill(backend: Any, ids: np.ndarray, pos: np.ndarray, sep: np.ndarray, chunk: int = PREFILL_CHUNK) -> Any:
    """The cache of a long prefix, built by ``backend.step`` chunk by chunk: the first chunk holds every row's
    bidirectional part (``sep``, at least ``chunk`` positions), the others follow with ``sep = 0`` (the past is
    visible to every query, the chunk causal), which is exactly the attention of one call over the whole prefix.
    Each chunk's logits go as the next chunk runs."""
    B, P = ids.shape
    start, end, past = 0, min(P, max(int(np.max(sep)), chunk)), None
    while start < P:
        chunk_sep = sep if start == 0 else np.zeros(B, dtype=np.int64)
        _, past = backend.step(ids[:, start:end], pos[:, :, start:end], chunk_sep, past)
        start, end = end, min(P, end + chunk)
    return past


def lean_session_options(prepacking: bool, basic_level: bool = False) -> Any:
    """ONNX Runtime session options for validating a large model in bounded memory: the backend's defaults
    (spinning threads, every graph optimisation) without the CPU memory arena, which keeps the largest activations
    of every call (the near-full-past prefill's ``B x P x V`` logits) for the session's lifetime, and optionally
    without pre-packing, which copies each fp32/fp16 ``MatMul`` weight into MLAS's packed layout (measured: about
    half the weights' bytes again; benchmarks/export_rss.py). Quantized graphs keep pre-packing: their kernels
    compute from the pre-packed blocks, and the packed int4 weights are small.

    ``basic_level``: the basic optimisations only, run in priority order: for an fp16 graph on the CPU provider, and
    for the fp32-compute twin of an int8 graph (export/compute_twin.py).
    The CPU provider has no fp16 kernels for most of the graph's ops, so ONNX Runtime casts their inputs to fp32;
    above the basic level it folds the cast of every weight into a resident fp32 copy (glm-2b dims: 7.74 of the
    session's 7.98 GB), while at the basic level each weight is cast when its op runs: the same graph and kernels,
    the casts at run time. The default order runs those casts (which need no activation) first, all of them alive
    at once (an 8-token step at glm-2b dims peaked at 11.6 GB); the priority-based order runs each next to its op
    (4.4 GB, of which 3.9 GB are the mapped fp16 weights; benchmarks/validation_session_rss.py)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    if not prepacking:
        options.add_session_config_entry("session.disable_prepacking", "1")
    options.enable_cpu_mem_arena = False
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if basic_level:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    return options


def run_checks(
    model_dir: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    device: str = "cpu",
    reduced: bool = False,
    lean: bool = False,
    prepacking: bool = True,
) -> dict[str, Any]:
    """Compare the model directory against the reference; returns every figure and ``passed``.

    ``reduced``: only the :data:`REDUCED_GRID` cases and no greedy generation (see the module docstring).
    ``lean`` / ``prepacking``: a session without the memory arena and, with ``prepacking=False``, without
    pre-packed weights (:func:`lean_session_options`; the exporter asks for both for large fp32/fp16 models, for
    the first only for quantized ones).
    """
    import onnx

    from evaluation.backends.onnx import OnnxBackend, read_model_config

    half_on_cpu = read_model_config(model_dir).get("dtype") == "fp16" and device == "cpu"
    options = lean_session_options(prepacking, half_on_cpu) if lean else None
    backend = OnnxBackend(model_dir, providers=device, session_options=options)  # refuses a bad model directory
    try:
        data = np.load(reference)
        meta = json.loads(bytes(data["meta"]).decode("utf-8"))
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"{reference}: not a validation reference written by make_reference ({exc})") from None
    cfg = backend.config
    kind = "fp16" if cfg.get("dtype") == "fp16" else "fp32"
    quant = cfg.get("quantize", "none")
    tol = TOLERANCES[kind] if quant == "none" else None
    report: dict[str, Any] = {
        # read from the session (a CUDA request that fell back to the CPU never gets here: the backend refuses it)
        "device": backend.device_type if backend.device_type == "cpu" else f"{backend.device_type}:{backend.device_id}",
        "requested_device": device,
        "providers": backend.session.get_providers(),
        "dtype": kind,
        "quantize": quant,
        "tolerance": None if tol is None else tol.__dict__,
        "checks": "reduced" if reduced else "full",
        "prepacking": prepacking,
        "memory_arena": not lean,
        "graph_optimization": "basic" if lean and half_on_cpu else "all",
    }
    failures: list[str] = []

    # 4. checker and names
    model_path = Path(model_dir) / cfg["model_file"]
    try:
        onnx.checker.check_model(str(model_path), full_check=True)
        report["checker"] = "ok"
    except Exception as exc:  # onnx raises ValidationError / InferenceError
        report["checker"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        failures.append(f"onnx.checker: {report['checker']}")
    # no NodeArg outlives this line: each keeps the whole session alive (glm-2b int4: 1.7 GB beside the twin's)
    report["inputs"] = {i.name: [str(d) for d in i.shape] for i in backend.session.get_inputs()}

    memory = PhasePeaks(report)
    memory.end("session and checker")
    # 1. grid
    grid = []
    all_ref, all_got = [], []
    cases = [case for n, case in enumerate(meta["cases"]) if not reduced or n in REDUCED_GRID]
    for case in cases:
        key = case["key"]
        past = None
        if f"{key}.past" in data:
            past = _past_list(data[f"{key}.past"], backend.kv_dtype)
        if f"{key}.prefix.ids" in data:  # the runtime builds its own past, in one cache sized for it
            ids = data[f"{key}.prefix.ids"]
            with backend.reserved_cache(ids.shape[1] + case["seq"]):
                past = chunked_prefill(backend, ids, data[f"{key}.prefix.pos"], data[f"{key}.prefix.sep"])
                logits, present = backend.step(data[f"{key}.ids"], data[f"{key}.pos"], data[f"{key}.sep"], past)
        else:
            logits, present = backend.step(data[f"{key}.ids"], data[f"{key}.pos"], data[f"{key}.sep"], past)
        entry = {k: case[k] for k in ("batch", "seq", "seps", "past", "present_layers") if k in case}
        entry["logits"] = compare(data[f"{key}.logits"], logits, tol)
        entry["present"] = compare(
            data[f"{key}.present"], new_cache_rows(present, case["past"], case.get("present_layers")), tol
        )
        entry["top1"] = top1_agreement(data[f"{key}.logits"], logits)
        all_ref.append(data[f"{key}.logits"].reshape(-1, logits.shape[-1]))
        all_got.append(logits.reshape(-1, logits.shape[-1]))
        grid.append(entry)
        # a case's cache goes before the next case runs (the near-full past's would outlive it into every later
        # check: 1.8 GB at glm-2b dims beside the batch-8 decode's own cache)
        del past, present
        if tol is not None:
            for part in ("logits", "present"):
                if not entry[part]["ok"]:
                    failures.append(
                        f"grid B={case['batch']} S={case['seq']} sep={_seps_text(case['seps'])} P={case['past']}: "
                        f"{part} max|Δ| {entry[part].get('max_abs', float('nan')):.3g} "
                        f"(normalised {entry[part].get('normalised', float('nan')):.3g}) out of tolerance"
                    )
    report["grid"] = grid
    report["top1_agreement"] = top1_agreement(np.concatenate(all_ref), np.concatenate(all_got))

    memory.end("grid")
    # 2. incremental (the cases' logits go with the helper's frame)
    _check_incremental(backend, data, meta, tol, quant, kind, report, failures)

    memory.end("incremental")
    # 3. greedy generation + replay of the PyTorch step calls
    if reduced:
        report["generation"] = {"skipped": "reduced checks"}
    else:
        _check_generation(backend, data, meta, tol, quant, report, failures)

    memory.end("generation")
    # 5. perplexity; for int8/int4 the behaviour gates
    _check_perplexity(backend, data, meta, all_ref, all_got, quant, report, failures)

    memory.end("perplexity")
    # 6. a quantized graph's cache and mask logic, on its fp32-compute twin (one session at a time: the first one is
    # collected before the twin's opens, cycles included)
    del backend, all_ref, all_got
    gc.collect()
    return_freed_memory()
    _check_cache_twin(Path(model_dir), cfg["model_file"], device, options, data, meta, report, failures)

    memory.end("cache check")
    report["failures"] = failures
    report["passed"] = not failures
    return report


def _check_incremental(
    backend: Any,
    data: Any,
    meta: dict[str, Any],
    tol: Tolerance | None,
    quant: str,
    kind: str,
    report: dict[str, Any],
    failures: list[str],
) -> None:
    """Prefill k tokens (with sep), then one token per step with sep = 0, against one full PyTorch pass: the short
    case and the production-shape decode (batch 8, 50 steps, the cache reordered half-way); fp16 and quantized
    graphs also against their own full pass (:data:`SELF_CONSISTENCY`)."""
    for name, label, spec, what in _incremental_cases(data, meta):
        got = incremental_logits(backend, data[f"{name}.ids"], data[f"{name}.pos"], data[f"{name}.sep"], spec)
        figures = compare(data[f"{name}.logits"], got, tol)
        figures["top1"] = top1_agreement(data[f"{name}.logits"], got)
        report[label] = figures
        if tol is not None and not figures["ok"]:
            failures.append(
                f"{what} vs one full pass: max|Δ| {figures.get('max_abs', float('nan')):.3g} out of tolerance "
                "(cache / mask offset)"
            )
        if tol is not TOLERANCES["fp32"]:  # fp16 / quantized: the graph against its own full pass, fp32 gate
            own, _ = backend.step(data[f"{name}.ids"], data[f"{name}.pos"], data[f"{name}.sep"], None)
            precision = quant if quant != "none" else kind
            figures["self"] = compare(own, got, SELF_CONSISTENCY[precision])
            if not figures["self"]["ok"]:
                failures.append(
                    f"{what} vs the same graph's full pass: max|Δ| {figures['self'].get('max_abs', float('nan')):.3g} "
                    f"(normalised {figures['self'].get('normalised', float('nan')):.3g}) out of the {precision} "
                    "self-consistency bound"
                )


def _incremental_cases(data: Any, meta: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], str]]:
    """(reference key, report label, spec, description) of each incremental case the reference holds."""
    cases = []
    for name, label in (("incr", "incremental"), ("decode", "decode")):
        spec = meta.get(label)
        if spec is not None:
            B, T = data[f"{name}.ids"].shape
            cases.append((name, label, spec, f"{label} B={B} prefill {spec['prefill']} + {T - spec['prefill']} steps"))
    return cases


def _check_cache_twin(
    model_dir: Path,
    model_file: str,
    device: str,
    options: Any,
    data: Any,
    meta: dict[str, Any],
    report: dict[str, Any],
    failures: list[str],
) -> None:
    """The incremental cases on the fp32-compute twin (:data:`CACHE_CHECK`); nothing for graphs without one."""
    from evaluation.backends.onnx import OnnxBackend

    with fp32_compute_twin(model_dir / model_file) as twin:
        if twin is None:
            return
        if twin.basic_level:
            options = lean_session_options(prepacking=True, basic_level=True)
        backend = OnnxBackend(model_dir, providers=device, session_options=options, model_file=twin.path.name)
        check: dict[str, Any] = {
            "graph": f"{model_file} with {twin.changes}",
            "bound": CACHE_CHECK.__dict__,
            "graph_optimization": "basic" if twin.basic_level else "as the graph's",
        }
        for name, label, spec, what in _incremental_cases(data, meta):
            ids, pos, sep = data[f"{name}.ids"], data[f"{name}.pos"], data[f"{name}.sep"]
            got = incremental_logits(backend, ids, pos, sep, spec)
            own, _ = backend.step(ids, pos, sep, None)
            figures = check[label] = compare(own, got, CACHE_CHECK)
            if not figures["ok"]:
                failures.append(
                    f"{what} on the fp32-compute twin vs its own full pass: max|Δ| "
                    f"{figures.get('max_abs', float('nan')):.3g} (normalised {figures.get('normalised', float('nan')):.3g}) "
                    "out of the cache-check bound (cache / mask offset)"
                )
        report["cache_check"] = check
        del backend


def _check_generation(
    backend: Any,
    data: Any,
    meta: dict[str, Any],
    tol: Tolerance | None,
    quant: str,
    report: dict[str, Any],
    failures: list[str],
) -> None:
    """Greedy blank infilling on ORT vs PyTorch's recorded result, plus the replay of PyTorch's step calls."""
    from glm_core.generation import GenerationConfig, generate
    from glm_core.layout import GLMInput

    gen = meta["generation"]
    special_dict = dict(gen["special_tokens"])
    special_dict["bad_words"] = tuple(special_dict.get("bad_words", ()))
    tokens = SpecialTokens(**special_dict)
    prompt_ids = data["gen.prompt.ids"]
    prompt = GLMInput(
        input_ids=prompt_ids,
        position_ids=data["gen.prompt.pos"],
        sep=gen["prompt_sep"],
        targets=np.full_like(prompt_ids, tokens.pad),
        loss_mask=np.zeros(len(prompt_ids), np.float32),
        mask_positions=tuple(gen["mask_positions"]),
    )
    result = generate(backend, prompt, tokens, GenerationConfig(max_new_tokens=gen["max_new_tokens"]))
    identical = result.blanks == gen["blanks"] and result.sequence == gen["sequence"]
    replay = _replay(backend, data, gen["calls"], tol)
    report["generation"] = {
        "identical": identical,
        "torch_blanks": gen["blanks"],
        "onnx_blanks": result.blanks,
        **replay,
    }
    if not identical and quant == "none" and replay["real_divergences"]:
        failures.append(
            f"greedy generation differs: torch {gen['blanks']} vs onnx {result.blanks} "
            f"({replay['real_divergences']} step(s) with a clear top-1 disagreement)"
        )


def _check_perplexity(
    backend: Any,
    data: Any,
    meta: dict[str, Any],
    all_ref: list[np.ndarray],
    all_got: list[np.ndarray],
    quant: str,
    report: dict[str, Any],
    failures: list[str],
) -> None:
    """Perplexity on the reference text; for int8/int4 also the behaviour gates (spec onnx_export §6 val. 1)."""
    ppl_ref = perplexity(data["ppl.logits"], data["ppl.ids"])
    T = data["ppl.ids"].shape[1]
    logits, _ = backend.step(
        data["ppl.ids"], np.stack([np.arange(T), np.zeros(T, np.int64)])[None], np.zeros(1, np.int64), None
    )
    ppl_got = perplexity(logits, data["ppl.ids"])
    report["perplexity"] = {
        "torch": ppl_ref,
        "onnx": ppl_got,
        "rel_delta": abs(ppl_got - ppl_ref) / ppl_ref,
        "tokens": int(T),
        "top1": top1_agreement(data["ppl.logits"], logits),
    }
    quality = meta.get("quality", {"gated": True, "reason": None, "text": None})
    report["quality"] = quality
    report["perplexity"]["text"] = quality["text"]
    if quant != "none" and not quality["gated"]:
        report["quant_gate"] = f"not gated: {quality['reason']}"
    elif quant != "none":
        gate = QUANT_GATES[quant]
        report["quant_gate"] = gate
        # Top-1 is judged where the reference is decided (top-1 probability ahead of the runner-up by
        # CONFIDENT_MARGIN): on near-flat rows (random token ids, an untrained model) any tiny perturbation flips
        # the argmax and says nothing about quantization quality; the perplexity gate covers every row.
        ref_rows = np.concatenate(all_ref + [data["ppl.logits"].reshape(-1, logits.shape[-1])])
        got_rows = np.concatenate(all_got + [logits.reshape(-1, logits.shape[-1])])
        agreement, count = confident_top1(ref_rows, got_rows)
        report["confident_top1"] = {"agreement": agreement, "rows": count, "margin": CONFIDENT_MARGIN}
        failures += top1_gate_failures(quant, agreement, count)
        if report["perplexity"]["rel_delta"] > gate["max_ppl_rel_delta"]:
            failures.append(
                f"{quant}: perplexity {ppl_got:.4g} vs torch {ppl_ref:.4g} "
                f"(relative change {report['perplexity']['rel_delta']:.3f} > {gate['max_ppl_rel_delta']})"
            )


def top1_gate_failures(quant: str, agreement: float, rows: int) -> list[str]:
    """The top-1 gate of a quantized graph: fails with fewer than MIN_TOP1_ROWS decided rows to judge."""
    if rows < MIN_TOP1_ROWS:
        return [
            f"{quant}: only {rows} decided rows (top-1 ahead by {CONFIDENT_MARGIN}) to judge top-1 agreement, "
            f"fewer than {MIN_TOP1_ROWS}"
        ]
    if agreement < QUANT_GATES[quant]["min_top1"]:
        return [f"{quant}: top-1 agreement {agreement:.3f} on {rows} confident rows < {QUANT_GATES[quant]['min_top1']}"]
    return []


def _replay(backend: Any, data: Any, calls: int, tol: Tolerance | None) -> dict[str, Any]:
    """Re-run PyTorch's greedy step calls on ORT (teacher forcing along PyTorch's path).

    A step where ORT's argmax differs is a *near tie* when ORT's logit gap between its choice and PyTorch's choice
    is within the tolerance bound (the two backends agree to that precision, so either choice is right); otherwise
    it is a real divergence.
    """
    past = None
    agree, near_ties, real = 0, 0, 0
    for i in range(calls):
        logits, past = backend.step(data[f"gen.call{i}.ids"], data[f"gen.call{i}.pos"], data[f"gen.call{i}.sep"], past)
        ref_last = data[f"gen.call{i}.last"][0].astype(np.float64)  # [V]
        got_last = logits[0, -1].astype(np.float64)
        ref_top, got_top = int(ref_last.argmax()), int(got_last.argmax())
        if ref_top == got_top:
            agree += 1
            continue
        gap = got_last[got_top] - got_last[ref_top]
        bound = 2 * (tol.atol + tol.rtol * abs(ref_last[ref_top])) if tol is not None else 0.0
        if gap <= bound:
            near_ties += 1
        else:
            real += 1
    return {"replay_steps": calls, "replay_top1_agree": agree, "near_ties": near_ties, "real_divergences": real}


# ================================================================================================ subprocess glue
def validate_in_subprocess(
    model_dir: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    report_path: str | os.PathLike[str],
    device: str = "cpu",
    timeout: float | None = None,
    reduced: bool = False,
    lean: bool = False,
    prepacking: bool = True,
) -> dict[str, Any]:
    """Run :func:`run_checks` in a fresh interpreter (``python -m export.validate``); return its report."""
    repo_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = repo_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [
        sys.executable,
        "-m",
        "export.validate",
        "--model-dir",
        str(model_dir),
        "--reference",
        str(reference),
        "--report",
        str(report_path),
        "--device",
        device,
    ]
    if reduced:
        cmd.append("--reduced")
    if lean:
        cmd.append("--lean")
    if not prepacking:
        cmd.append("--no-prepacking")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ExportError(f"validation did not finish within {timeout} s") from None
    if proc.returncode != 0 or not Path(report_path).is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        raise ExportError(f"validation process failed (exit {proc.returncode}): {tail[-1] if tail else 'no output'}")
    return json.loads(Path(report_path).read_text(encoding="utf-8"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.validate",
        description="Compare an exported GLM model directory with a PyTorch reference (.npz from make_reference).",
    )
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--report", required=True, help="where to write the JSON report")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--reduced", action="store_true", help="reduced grid, no greedy generation")
    parser.add_argument("--lean", action="store_true", help="a session without the CPU memory arena (less memory)")
    parser.add_argument(
        "--no-prepacking", action="store_true", help="with --lean: no pre-packed MatMul weights (less memory)"
    )
    args = parser.parse_args(argv)
    try:
        report = run_checks(
            args.model_dir,
            args.reference,
            args.device,
            reduced=args.reduced,
            lean=args.lean,
            prepacking=not args.no_prepacking,
        )
    except GLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(args.report).write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
