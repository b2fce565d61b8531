"""Command-line options of the run's safety net (checkpoint intervals, resume, non-finite steps, collective timeout),
of the attention backend (``--attention``, glm_core.attention_backends) and of the step's speed (``--compile``,
``--activation-checkpointing``)."""

from __future__ import annotations

import argparse

import torch

from glm_core.attention_backends import ATTENTION_CHOICES
from glm_core.errors import ConfigError
from glm_core.model import GLMModel
from training.guard import DEFAULT_MAX_SKIPPED_STEPS

DEFAULT_SAVE_EVERY = 1000
DEFAULT_SAVE_EVERY_MINUTES = 30.0
DEFAULT_DIST_TIMEOUT_MINUTES = 30.0

__all__ = [
    "add_attention_argument",
    "add_packing_argument",
    "pack_length_option",
    "add_safety_arguments",
    "add_speed_arguments",
    "check_attention_option",
    "check_kernels_option",
    "checkpoint_layers",
    "compile_layers",
]


def add_safety_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--save-every",
        type=int,
        default=DEFAULT_SAVE_EVERY,
        help=f"steps between checkpoints (default {DEFAULT_SAVE_EVERY}; 0: only by time and at the end)",
    )
    p.add_argument(
        "--save-every-minutes",
        type=float,
        default=DEFAULT_SAVE_EVERY_MINUTES,
        help=f"minutes between checkpoints (default {DEFAULT_SAVE_EVERY_MINUTES:g}; 0: only by steps); SIGTERM and "
        "SIGINT always write one before the run stops",
    )
    p.add_argument("--eval-every", type=int, default=0, help="steps between evaluations (0: at the end)")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="newest checkpoints kept (default 2)")
    p.add_argument(
        "--resume",
        default=None,
        help="'auto' (the newest checkpoint in --out; a fresh start when --out holds no run yet, so one command "
        "serves every start of a requeued job) or a checkpoint directory",
    )
    p.add_argument(
        "--allow-batch-change",
        action="store_true",
        help="resume with another global batch (processes x micro-batch x grad-accum); the later steps then read "
        "other samples than the uninterrupted run would",
    )
    p.add_argument(
        "--max-skipped-steps",
        type=int,
        default=DEFAULT_MAX_SKIPPED_STEPS,
        help=f"consecutive steps with a non-finite loss or gradient norm (skipped: no update, no LR step) that stop "
        f"the run (default {DEFAULT_MAX_SKIPPED_STEPS})",
    )
    p.add_argument(
        "--dist-timeout-minutes",
        type=float,
        default=DEFAULT_DIST_TIMEOUT_MINUTES,
        help="timeout of every collective (rank 0 evaluating or saving while the others wait included; "
        f"default {DEFAULT_DIST_TIMEOUT_MINUTES:g})",
    )


def add_attention_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--attention",
        choices=ATTENTION_CHOICES,
        default="auto",
        help="attention backend (default auto: the Triton kernel where --kernels picks it, SDPA on CUDA, the math "
        "reference on the CPU; never one without attention dropout when the dropout is on)",
    )


def check_kernels_option(kernels: str, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse ``--kernels triton`` where a Triton kernel cannot run (one line naming the reason, exit 2)."""
    if kernels != "triton":
        return
    from glm_core.kernels import OPS, resolve_impl

    for op in OPS:
        resolve_impl("triton", device, dtype, op)  # raises KernelUnavailableError with the reason


def check_attention_option(attention: str, device: torch.device, dtype: torch.dtype, attention_dropout: float) -> None:
    """Refuse, before anything is written, an ``--attention`` that cannot train here (one line, exit 2)."""
    if attention == "flex":
        if device.type != "cuda":
            raise ConfigError(
                "--attention flex cannot train on the CPU (torch has no FlexAttention backward there); expected "
                "--attention math or sdpa, or a CUDA device"
            )
        if attention_dropout > 0.0:
            raise ConfigError(
                f"--attention flex has no attention dropout (the model's is {attention_dropout:g}); expected "
                "--attention sdpa/math/auto, or --dropout 0"
            )
    elif attention == "triton":
        from glm_core.kernels import resolve_impl

        resolve_impl("triton", device, dtype, "glm_attention")  # raises KernelUnavailableError with the reason


def add_speed_arguments(p: argparse.ArgumentParser) -> None:
    """``--compile`` (regional: each layer) and ``--activation-checkpointing`` (which layers recompute)."""
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each layer (regional compilation: one graph, compiled once, reused by every layer)",
    )
    p.add_argument(
        "--activation-checkpointing",
        default=None,
        metavar="LAYERS",
        help="layers that recompute their activations in the backward: all, none, every:N (layers 0, N, 2N, ...) "
        "or a comma list of 0-based indices such as 0,2,5 (default none)",
    )
    p.add_argument("--gradient-checkpointing", action="store_true", help="the same as --activation-checkpointing all")


def checkpoint_layers(spec: str | None, gradient_checkpointing: bool, num_layers: int) -> list[int]:
    """The layers ``--activation-checkpointing`` names (``--gradient-checkpointing``: all of them), sorted."""
    if gradient_checkpointing and spec not in (None, "all"):
        raise ConfigError(
            f"--gradient-checkpointing means all layers; it contradicts --activation-checkpointing {spec}"
        )
    text = "all" if gradient_checkpointing else (spec or "none").strip()
    if text == "all":
        return list(range(num_layers))
    if text == "none":
        return []
    expected = f"expected all, none, every:N or comma-separated layer indices in [0, {num_layers})"
    if text.startswith("every:"):
        step = text.removeprefix("every:")
        if not step.isdigit() or int(step) < 1:
            raise ConfigError(f"--activation-checkpointing {spec}: {expected}")
        return list(range(0, num_layers, int(step)))
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() and int(part) < num_layers for part in parts):
        raise ConfigError(f"--activation-checkpointing {spec}: {expected}")
    return sorted({int(part) for part in parts})


def compile_layers(model: GLMModel, backend: str = "inductor") -> None:
    """Regional compilation: ``torch.compile`` each :class:`~glm_core.model.GLMLayer` in place.

    The layers are alike, so dynamo traces one and every other layer reuses its graph (guards on the module's
    parameters, not a recompile per layer): the compile time of one layer, the speed of a compiled model. Embeddings,
    the final LayerNorm and the loss stay eager, outside the graphs.
    """
    for layer in model.transformer.layers:
        layer.compile(backend=backend)


CPU_PACK_LENGTH = 128  # measured faster than padding on the CPU (BENCHMARKS.md, "Fine-tuning: sequence packing")


def add_packing_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pack-length",
        type=int,
        default=None,
        help="pack each micro-batch's cloze inputs several to a row of at most this many tokens, the attention never "
        f"crossing them; 0: one input per padded row (default: {CPU_PACK_LENGTH} on the CPU, where it measured "
        "faster; 0 on CUDA, where it is unmeasured and the packed rows' explicit mask keeps attention on math)",
    )


def pack_length_option(pack_length: int | None, device: torch.device) -> int:
    """``--pack-length`` as given, else the measured default for ``device`` (see :func:`add_packing_argument`)."""
    if pack_length is None:
        return CPU_PACK_LENGTH if device.type == "cpu" else 0
    if pack_length < 0:
        raise ConfigError(f"--pack-length must be >= 0 (0: no packing), got {pack_length}")
    return pack_length
