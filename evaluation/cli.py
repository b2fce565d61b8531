"""``python -m evaluation`` / ``glm-eval``: evaluate a GLM on the paper's tasks with the torch or ONNX backend.

Example::

    python -m evaluation --backend torch --model glm-tiny --tasks demo
    python -m evaluation --backend onnx --model exports/glm-large --tasks superglue,lambada \\
        --data-dir data/ --limit 200 --output results/onnx.json

Bad input (unknown task, missing or malformed data file, a model directory that is not a checkpoint/export) prints
one line on stderr and exits with status 2; nothing is written. With ``--output``, per-example results are cached in
``.glm-eval-cache/`` beside the output file, so rerunning an interrupted command resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evaluation.backends import BACKENDS, load_backend
from evaluation.runner import evaluate, format_table, read_tasks
from evaluation.tasks import GROUPS, expand_task_list, task_names
from glm_core.atomic import write_text_atomically
from glm_core.errors import GLMError

DEFAULT_DATA_DIR = Path(__file__).resolve().parent / "data"
CACHE_DIR_NAME = ".glm-eval-cache"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glm-eval",
        description="Evaluate a GLM checkpoint or ONNX export on SuperGLUE, LAMBADA, perplexity, summarisation, "
        "blank infilling and the demo cloze task.",
        epilog="example: python -m evaluation --backend torch --model glm-tiny --tasks demo --output out/results.json\n"
        f"tasks: {', '.join(task_names())}; groups: {', '.join(sorted(GROUPS))}; "
        "SuperGLUE pattern: name:N (e.g. boolq:4)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="torch", help="runtime (default: torch)")
    parser.add_argument(
        "--model",
        required=True,
        help="checkpoint directory, ONNX export directory, shipped preset or hub id owner/name[@revision]",
    )
    parser.add_argument("--tasks", required=True, help="comma-separated task names or groups")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="root of the task data files")
    parser.add_argument("--split", default=None, help="data split (default: each task's own, val or test)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples of each task")
    parser.add_argument("--output", type=Path, default=None, help="write the results JSON here")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help=f"per-example cache (default: {CACHE_DIR_NAME}/ beside --output)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward step (default: 8)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: the backend's)")
    parser.add_argument("--no-share-part-a", action="store_true", help="score one full sequence per candidate")
    parser.add_argument(
        "--records", action="store_true", help="also write every example's record into the results JSON"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the backend description and task settings")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise GLMError(f"--batch-size must be >= 1, got {args.batch_size}")
    tasks = expand_task_list(args.tasks)
    plan = read_tasks(tasks, args.data_dir, split=args.split, limit=args.limit)  # bad data fails before the model loads
    backend = load_backend(args.backend, args.model, device=args.device, dtype=args.dtype)
    if args.verbose:
        print(json.dumps(backend.info(), indent=2), file=sys.stderr)
        for p in plan:
            print(
                f"{p.task.task_id}: {len(p.examples)} examples from {', '.join(map(str, p.data_files))}; "
                f"{json.dumps(p.task.config())}",
                file=sys.stderr,
            )
    cache_dir = args.cache_dir
    if cache_dir is None and args.output is not None:
        cache_dir = args.output.resolve().parent / CACHE_DIR_NAME
    results = evaluate(
        backend,
        plan,
        batch_size=args.batch_size,
        share_part_a=not args.no_share_part_a,
        cache_dir=cache_dir,
        progress=not args.no_progress,
        verbose=args.verbose,
        include_records=args.records,
        settings={"limit": args.limit, "split": args.split, "data_dir": str(args.data_dir), "device": args.device},
    )
    if args.output is not None:
        write_text_atomically(args.output, json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except GLMError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        print(f"glm-eval: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        where = " (cached results resume on rerun)" if args.output is not None or args.cache_dir is not None else ""
        print(f"glm-eval: interrupted{where}", file=sys.stderr)
        return 130
