"""Peak memory per rank of 2-process CPU pretraining on a raw-text corpus (``--corpus``) versus its pretokenized,
memory-mapped form (``--data``), for a ~20 MB and a ~200 MB corpus. Prints one JSON object.

    python -m benchmarks.train_data_rss [--sizes-mb 20 200] [--steps 3] [--out benchmarks/results/train_data_rss.json]

For each size: the synthetic corpus (``python -m training.corpus corpus --num-documents N``, N from the bytes per
document of a 5,000-document sample), ``glm-train pretokenize`` (its wall time and peak RSS), then the same few steps
of ``torchrun --nproc-per-node 2 -m training pretrain`` (gloo, glm-tiny from scratch, seq 128) with ``--corpus`` and
with ``--data``. Each rank runs ``training.cli.main`` inside this module and writes its own peak RSS (``VmHWM`` of
``/proc/self/status``) and that of its DataLoader workers (``ru_maxrss`` of ``RUSAGE_CHILDREN``: a forked worker's
RSS counts the pages it shares copy-on-write with its rank). The interpreter baseline is a process that imports
torch and the training package and builds glm-tiny.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import peak_rss_of

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DOCUMENTS = 5000
SEQ_LENGTH = 128
BASELINE = (
    "import torch, training.cli; from glm_core.checkpoint import load_model; load_model('glm-tiny'); "
    "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
)
MB = 1_000_000


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _peak_of_child(cmd: list[str]) -> dict[str, Any]:
    """Peak RSS of ``cmd`` alone (:func:`benchmarks.common.peak_rss_of`); a failed command is an error."""
    result = peak_rss_of(cmd, env=_env())
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result['stderr_tail']}")
    return result


def _make_corpus(path: Path, size_bytes: int, work: Path) -> dict[str, Any]:
    sample = work / "sample.txt"
    corpus_cmd = [sys.executable, "-m", "training.corpus", "corpus"]
    subprocess.run([*corpus_cmd, "--out", str(sample), "--num-documents", str(SAMPLE_DOCUMENTS)],
                   check=True, env=_env(), cwd=REPO, capture_output=True)  # fmt: skip
    per_document = sample.stat().st_size / SAMPLE_DOCUMENTS
    documents = round(size_bytes / per_document)
    started = time.perf_counter()
    subprocess.run([*corpus_cmd, "--out", str(path), "--num-documents", str(documents)],
                   check=True, env=_env(), cwd=REPO, capture_output=True)  # fmt: skip
    return {
        "command": f"python -m training.corpus corpus --out FILE --num-documents {documents}",
        "num_documents": documents,
        "bytes": path.stat().st_size,
        "generate_s": round(time.perf_counter() - started, 1),
    }


def _pretrain(source: list[str], out: Path, steps: int, workers: int, rss_dir: Path, port: int) -> dict[str, Any]:
    rss_dir.mkdir(parents=True, exist_ok=True)
    args = ["pretrain", "--model", "glm-tiny", "--from-scratch", *source, "--out", str(out), "--steps", str(steps),
            "--seq-length", str(SEQ_LENGTH), "--micro-batch-size", "4", "--kernels", "torch", "--no-eval", "--quiet",
            "--log-every", "1", "--data-workers", str(workers)]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "benchmarks.train_data_rss", "rank", str(rss_dir), *args]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    ranks = [json.loads((rss_dir / f"rank{r}.json").read_text()) for r in range(2)]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "command": "torchrun --nproc-per-node 2 -m training " + " ".join(args).replace(f"{out.parent}/", ""),
        "peak_rss_per_rank_bytes": [r["peak_rss_bytes"] for r in ranks],
        "peak_rss_max_rank_bytes": max(r["peak_rss_bytes"] for r in ranks),
        "worker_peak_rss_bytes": [r["children_peak_rss_bytes"] for r in ranks],
        "wall_s": round(wall, 1),
        "final_loss": summary["final_loss"],
    }


def rank_main(rss_dir: str, argv: list[str]) -> int:
    """One torchrun rank: run ``glm-train`` in this process, then write this process's peak RSS."""
    from training.cli import main as train_main

    code = train_main(argv)
    status = Path("/proc/self/status").read_text().splitlines()
    hwm_kb = next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), None)
    record = {
        "rank": int(os.environ.get("RANK", "0")),
        "rc": code,
        "peak_rss_bytes": hwm_kb * 1024
        if hwm_kb is not None
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "children_peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }
    Path(rss_dir, f"rank{record['rank']}.json").write_text(json.dumps(record))
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[20, 200])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--data-workers", type=int, default=2)
    parser.add_argument("--work", default=None, help="working directory (default: a temporary one, removed)")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    from benchmarks.common import run_conditions

    load_at_start = os.getloadavg()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="glm-train-data-rss-"))
    work.mkdir(parents=True, exist_ok=True)
    baseline = subprocess.run([sys.executable, "-c", BASELINE], capture_output=True, text=True, check=True, env=_env())
    results: dict[str, Any] = {
        "benchmark": "train_data_rss",
        "setup": {
            "model": "glm-tiny (from scratch)",
            "processes": 2,
            "backend": "gloo (CPU)",
            "steps": args.steps,
            "seq_length": SEQ_LENGTH,
            "micro_batch_size": 4,
            "data_workers": args.data_workers,
            "OMP_NUM_THREADS": 1,
        },
        "interpreter_baseline_rss_bytes": int(baseline.stdout.strip().splitlines()[-1]),
        "corpora": {},
    }
    port = 29631
    try:
        for size in args.sizes_mb:
            label = f"{size:g}MB"
            corpus = work / f"corpus-{label}.txt"
            entry: dict[str, Any] = {"corpus": _make_corpus(corpus, int(size * MB), work)}
            data = work / f"tok-{label}"
            pretok = _peak_of_child([sys.executable, "-m", "training", "pretokenize", str(corpus), str(data),
                                     "--model", "glm-tiny", "--overwrite"])  # fmt: skip
            meta = json.loads((data / "meta.json").read_text())
            entry["pretokenize"] = {
                "command": f"glm-train pretokenize {corpus.name} {data.name} --model glm-tiny",
                "wall_s": pretok["wall_s"],
                "peak_rss_bytes": pretok["peak_rss_bytes"],
                "tokens": meta["tokens"],
                "dtype": meta["dtype"],
                "tokens_bin_bytes": (data / "tokens.bin").stat().st_size,
            }
            for mode, source in (
                ("data_memmap", ["--data", str(data)]),
                ("corpus_raw_text", ["--corpus", str(corpus)]),
            ):
                port += 1
                entry[mode] = _pretrain(
                    source,
                    work / f"run-{label}-{mode}",
                    args.steps,
                    args.data_workers,
                    work / f"rss-{label}-{mode}",
                    port,
                )
            results["corpora"][label] = entry
            print(json.dumps({label: entry}), file=sys.stderr, flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    results["conditions"] = run_conditions(load_at_start)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "rank":
        sys.exit(rank_main(sys.argv[2], sys.argv[3:]))
    main()
