"""Command-line options of the run's safety net: checkpoint intervals, resume, non-finite steps, collective timeout."""

from __future__ import annotations

import argparse

from training.guard import DEFAULT_MAX_SKIPPED_STEPS

DEFAULT_SAVE_EVERY = 1000
DEFAULT_SAVE_EVERY_MINUTES = 30.0
DEFAULT_DIST_TIMEOUT_MINUTES = 30.0

__all__ = ["add_safety_arguments"]


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
