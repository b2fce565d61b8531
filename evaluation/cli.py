"""``python -m evaluation`` / ``glm-eval``: evaluate a GLM on the paper's tasks with the torch or ONNX backend.

Example::

    python -m evaluation --backend torch --model glm-tiny --tasks demo
    python -m evaluation --backend onnx --model exports/glm-large --tasks superglue,lambada \\
        --data-dir data/ --limit 200 --output results/onnx.json

Bad input (unknown task, missing or malformed data file, a model directory that is not a checkpoint/export, a device
this installation cannot use, an ``--output`` that exists or cannot be written) prints one line on stderr and exits
with status 2; nothing is written. ``--output`` must be a new file; ``--overwrite`` replaces only an earlier results
file of this tool. SIGTERM is handled like Ctrl-C (exit 143, 130 for Ctrl-C). With ``--output``, per-example results are cached in
``.glm-eval-cache/`` beside the output file, so rerunning an interrupted command resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evaluation.backends import BACKENDS, load_backend
from evaluation.backends.devices import check_device
from evaluation.runner import evaluate, format_table, read_tasks
from evaluation.tasks import GROUPS, expand_task_list, task_names
from evaluation.tasks.summarization import ROUGE_VARIANTS
from glm_core.atomic import write_text_atomically
from glm_core.errors import ConfigError, GLMError, print_warnings_on_one_line
from glm_core.outputs import check_output_file, check_writable_dir, interrupt_exit_code, terminate_as_interrupt

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
    parser.add_argument("--output", type=Path, default=None, help="write the results JSON here (a new file)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output (only a results file of glm-eval)"
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help=f"per-example cache (default: {CACHE_DIR_NAME}/ beside --output)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward step (default: 8)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: the backend's)")
    parser.add_argument(
        "--seq-length",
        type=int,
        default=None,
        help="evaluate every task at this many tokens (default: each task's length in the original's configs, "
        "e.g. 256 for BoolQ, 128 for WSC, 512 for ReCoRD; capped at the model's max_sequence_length)",
    )
    parser.add_argument(
        "--wsc-negatives",
        choices=("file", "annotations"),
        default="file",
        help="WSC negatives: the file's 'candidates' field, as the original's WSC-negative data (default), or the "
        "other span1 annotations of the same sentence (not the paper's protocol)",
    )
    parser.add_argument(
        "--source-padding",
        choices=("visible", "none"),
        default="visible",
        help="seq2seq tasks: pad the source to its length inside Part A, visible to the model, as the original "
        "(default), or leave the pads out",
    )
    parser.add_argument(
        "--rouge",
        choices=ROUGE_VARIANTS,
        default="original",
        help="seq2seq ROUGE: the original's logged metric ([SEP]-split, fix_tokenization, short and duplicate "
        "sentences dropped, tokenizer round trip; default), rouge-score rouge1/2/Lsum over .!?-split sentences, or "
        "the README's PTB tokenisation + files2rouge (ROUGE-1.5.5 -n 2 -m) rebuilt on rouge-score",
    )
    parser.add_argument(
        "--qg-reference",
        choices=("answer", "question"),
        default="answer",
        help="squad_qg ROUGE reference: the answer, as the original logs it (default), or the question",
    )
    parser.add_argument(
        "--gelu",
        choices=("tanh", "erf"),
        default=None,
        help="torch backend: the GeLU variant (default: the checkpoint's; the original evaluated with tanh)",
    )
    parser.add_argument("--no-share-part-a", action="store_true", help="score one full sequence per candidate")
    parser.add_argument(
        "--records", action="store_true", help="also write every example's record into the results JSON"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the backend description and task settings")
    return parser


def _not_results(path: Path) -> str | None:
    """Why ``path`` is not a results file this tool wrote (``None``: it is one)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return "not a JSON file"
    if not (isinstance(data, dict) and {"model_hash", "backend", "tasks"} <= data.keys()):
        return "a JSON file without the results keys model_hash, backend, tasks"
    return None


def check_paths(args: argparse.Namespace) -> None:
    """Every path the run writes, checked before any work (model load, data read)."""
    if args.output is not None:
        check_output_file(
            args.output, overwrite=args.overwrite, foreign=_not_results, what="a results file of glm-eval"
        )
    if args.cache_dir is not None:
        check_writable_dir(args.cache_dir, flag="--cache-dir", error=ConfigError)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise GLMError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.seq_length is not None and args.seq_length < 8:
        raise GLMError(f"--seq-length must be at least 8 tokens, got {args.seq_length}")
    args.device = check_device(args.backend, args.device)
    check_paths(args)
    tasks = expand_task_list(
        args.tasks,
        options={
            "wsc_negatives": args.wsc_negatives,
            "source_padding": args.source_padding,
            "rouge": args.rouge,
            "qg_reference": args.qg_reference,
        },
    )
    plan = read_tasks(tasks, args.data_dir, split=args.split, limit=args.limit)  # bad data fails before the model loads
    extra = {}
    if args.gelu is not None:
        if args.backend != "torch":
            raise GLMError(
                f"--gelu applies to the torch backend; an {args.backend} model computes the variant it was exported with"
            )
        extra["gelu"] = args.gelu
    backend = load_backend(args.backend, args.model, device=args.device, dtype=args.dtype, **extra)
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
        seq_length=args.seq_length,
        settings={
            "limit": args.limit,
            "split": args.split,
            "data_dir": str(args.data_dir),
            "device": args.device,
            "gelu": args.gelu,
            "wsc_negatives": args.wsc_negatives,
            "source_padding": args.source_padding,
            "rouge": args.rouge,
            "qg_reference": args.qg_reference,
        },
    )
    if args.output is not None:
        try:
            write_text_atomically(args.output, json.dumps(results, indent=2) + "\n")
        except OSError as exc:
            raise GLMError(f"--output {args.output}: could not be written ({exc.strerror or exc})") from None
    print(format_table(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print_warnings_on_one_line()
    try:
        with terminate_as_interrupt():
            return run(args)
    except GLMError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        print(f"glm-eval: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        where = " (cached results resume on rerun)" if args.output is not None or args.cache_dir is not None else ""
        print(f"glm-eval: interrupted{where}", file=sys.stderr)
        return interrupt_exit_code(exc)
