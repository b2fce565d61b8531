"""CPU inference speed: torch eager vs ONNX Runtime (fp32, int4, int8) on glm-base dimensions, batch 1.

Prefill = one call of 128 tokens (P = 0); decode = one token with a 128-token cache (the same cache each round).
Every engine runs in its own process (spec onnx_export §5.2: ORT's spinning pool contaminates torch timings), with
2 intra-op threads; the first round is discarded and the median of the rest reported. Memory bandwidth is measured
here with numpy over 1 GiB (read = sum, gemv = float32 matrix-vector product, copy = bytes read + written);
decode "% of bandwidth" = weight bytes streamed per token / decode time / the best measured read bandwidth.
Run it with ``--threads 1`` too when other jobs share the machine: torch's OpenMP pool with as many threads as cores
slows down by an order of magnitude when another process holds a core (measured here), ORT's pool much less.
Prints one JSON object.

    python -m benchmarks.onnx_cpu [--work DIR] [--rounds 6] [--steps 16] [--threads 2] [--skip-int8]

Targets (spec onnx_export §5): ORT fp32 prefill >= 1.4x torch eager, decode >= 2x and >= 80 % of bandwidth;
int4 decode >= 3x torch eager.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import run_conditions, run_in_subprocess, summarize

PRESET = "glm-base"
PREFILL, PAST = 128, 128
SEED = 0


# ------------------------------------------------------------------------------------------------ inputs
def _inputs(vocab: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(SEED)
    ids = rng.integers(0, vocab, (1, PREFILL), dtype=np.int64)
    pos = np.stack([np.arange(PREFILL), np.zeros(PREFILL, np.int64)])[None]  # [1, 2, S]
    step_ids = rng.integers(0, vocab, (1, 1), dtype=np.int64)
    step_pos = np.array([[[PREFILL - 1], [1]]], dtype=np.int64)  # a blank's first token, GLM-style
    return {"ids": ids, "pos": pos, "sep": np.array([PREFILL // 2]), "step_ids": step_ids, "step_pos": step_pos}


def _time_engine(step: Any, x: dict[str, Any], rounds: int, steps: int) -> dict[str, Any]:
    import numpy as np

    prefill, decode = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        _, past = step(x["ids"], x["pos"], x["sep"], None)
        prefill.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        for _ in range(steps):
            step(x["step_ids"], x["step_pos"], np.zeros(1, np.int64), past)  # always P = 128
        decode.append((time.perf_counter() - start) * 1e3 / steps)
    return {"prefill_ms": summarize(prefill), "decode_ms_per_token": summarize(decode)}


# ------------------------------------------------------------------------------------------------ engines
def engine_torch(threads: int, rounds: int, steps: int) -> dict[str, Any]:
    import torch

    from glm_core.config import GLMConfig
    from glm_core.model import build_model
    from glm_core.step import TorchStep

    torch.set_num_threads(threads)
    config = GLMConfig.from_preset(PRESET)
    model = build_model(config, seed=SEED).eval()
    step = TorchStep(model)
    out = _time_engine(step.step, _inputs(config.vocab_size), rounds, steps)
    h, V = config.hidden_size, config.vocab_size
    streamed = (config.num_layers * 12 * h * h + V * h) * 4  # linear weights + the tied head, fp32
    return {"engine": "torch eager", **out, "streamed_bytes_per_token": streamed}


def engine_onnx(model_dir: str, threads: int, rounds: int, steps: int) -> dict[str, Any]:
    import onnx

    from evaluation.backends.onnx import OnnxBackend

    backend = OnnxBackend(model_dir, threads=threads)
    out = _time_engine(backend.step, _inputs(backend.vocab_size), rounds, steps)
    return {
        "engine": f"onnxruntime {backend.config['quantize'] if backend.config['quantize'] != 'none' else 'fp32'}",
        **out,
        "streamed_bytes_per_token": streamed_bytes(onnx.load(str(backend.model_path))),
        "file_bytes": sum(p.stat().st_size for p in Path(model_dir).glob("model.onnx*")),
    }


def streamed_bytes(model: Any) -> int:
    """Bytes of initializers read per decode token: everything except tables only looked up (Gather)."""
    import onnx

    gathered = {n.input[0] for n in model.graph.node if n.op_type == "Gather"}
    used_elsewhere = {i for n in model.graph.node if n.op_type != "Gather" for i in n.input}
    total = 0
    for t in model.graph.initializer:
        if t.name in gathered and t.name not in used_elsewhere:
            continue
        n = 1
        for d in t.dims:
            n *= d
        total += n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


def engine_bandwidth(threads: int, rounds: int) -> dict[str, Any]:
    """numpy streaming read (sum), copy, and a float32 matrix-vector product (BLAS gemv: the decode access pattern,
    memory-bound) over 1 GiB, with 1 thread and ``threads`` threads."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)  # read when numpy loads its BLAS
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    n = (1 << 30) // 8
    a = np.ones(n, dtype=np.float64)
    b = np.empty_like(a)
    parts = np.array_split(np.arange(n), threads)
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts]

    def timed(fn: Any) -> list[float]:
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return samples

    def read_parallel() -> None:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda r: a[r[0] : r[1]].sum(), bounds))

    def copy_parallel() -> None:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda r: np.copyto(b[r[0] : r[1]], a[r[0] : r[1]]), bounds))

    nbytes = a.nbytes
    matrix = np.ones((nbytes // 4 // 4096, 4096), dtype=np.float32)  # 1 GiB
    vector = np.ones(4096, dtype=np.float32)
    result = {}
    stats = summarize(timed(lambda: matrix @ vector))
    result[f"gemv_{threads}t_gb_s"] = round(matrix.nbytes / stats["median"] / 1e9, 2)
    for name, fn, factor in (
        ("read_1t", a.sum, 1),
        (f"read_{threads}t", read_parallel, 1),
        ("copy_1t", lambda: np.copyto(b, a), 2),
        (f"copy_{threads}t", copy_parallel, 2),
    ):
        stats = summarize(timed(fn))
        result[name + "_gb_s"] = round(factor * nbytes / stats["median"] / 1e9, 2)
    return result


# ------------------------------------------------------------------------------------------------ orchestration
def export(work: Path, name: str, extra: list[str]) -> Path:
    out = work / name
    if not (out / "glm_config.json").is_file():
        cmd = [
            sys.executable,
            "-m",
            "export.onnx",
            "--ckpt",
            PRESET,
            "--random-weights",
            "--out",
            str(out),
            "--no-validate",
            *extra,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"export {name} failed: {proc.stderr[-2000:]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="directory for the exported models (reused when present)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-int8", action="store_true")
    parser.add_argument("--engine", help="internal: run one engine in this process (torch | bandwidth | DIR)")
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    if args.engine == "torch":
        print(json.dumps(engine_torch(args.threads, args.rounds, args.steps)))
        return
    if args.engine == "bandwidth":
        print(json.dumps(engine_bandwidth(args.threads, args.rounds)))
        return
    if args.engine:
        print(json.dumps(engine_onnx(args.engine, args.threads, args.rounds, args.steps)))
        return

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="glm-onnx-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    dirs = {"fp32": export(work, "fp32", []), "int4": export(work, "int4", ["--quantize", "int4"])}
    if not args.skip_int8:
        dirs["int8"] = export(work, "int8", ["--quantize", "int8"])
    common = ["--rounds", str(args.rounds), "--steps", str(args.steps), "--threads", str(args.threads)]
    bandwidth = run_in_subprocess("benchmarks.onnx_cpu", ["--engine", "bandwidth", *common])
    rows = {"torch": run_in_subprocess("benchmarks.onnx_cpu", ["--engine", "torch", *common])}
    for name, directory in dirs.items():
        rows[name] = run_in_subprocess("benchmarks.onnx_cpu", ["--engine", str(directory), *common])

    best_read = max(v for k, v in bandwidth.items() if k.startswith(("read", "gemv")))
    torch_row = rows["torch"]
    for row in rows.values():
        decode_s = row["decode_ms_per_token"]["median"] / 1e3
        row["decode_gb_s"] = round(row["streamed_bytes_per_token"] / decode_s / 1e9, 2)
        row["decode_pct_of_best_read_bandwidth"] = round(100 * row["decode_gb_s"] / best_read, 1)
        row["prefill_speedup_vs_torch"] = round(torch_row["prefill_ms"]["median"] / row["prefill_ms"]["median"], 2)
        row["decode_speedup_vs_torch"] = round(
            torch_row["decode_ms_per_token"]["median"] / row["decode_ms_per_token"]["median"], 2
        )
    fp32, int4 = rows["fp32"], rows["int4"]
    targets = {
        "ort_fp32_prefill_>=1.4x_torch": fp32["prefill_speedup_vs_torch"] >= 1.4,
        "ort_fp32_decode_>=2x_torch": fp32["decode_speedup_vs_torch"] >= 2.0,
        "ort_fp32_decode_>=80pct_bandwidth": fp32["decode_pct_of_best_read_bandwidth"] >= 80.0,
        "ort_int4_decode_>=3x_torch": int4["decode_speedup_vs_torch"] >= 3.0,
    }
    print(
        json.dumps(
            {
                "benchmark": "onnx_cpu",
                "preset": PRESET,
                "weights": "random (seed 0)",
                "batch": 1,
                "prefill_tokens": PREFILL,
                "decode_past": PAST,
                "threads": args.threads,
                "rounds": args.rounds,
                "decode_steps_per_round": args.steps,
                "statistic": "median after discarding round 1",
                "bandwidth": bandwidth,
                "engines": rows,
                "targets_met": targets,
                **run_conditions(load_at_start),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
