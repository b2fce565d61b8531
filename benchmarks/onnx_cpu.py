"""CPU inference speed on glm-base dimensions (random weights): torch eager vs ONNX Runtime cache layouts.

Engines: torch eager; ORT fp32 with the concat cache (``--kv-cache concat``), with the fixed-capacity buffer
(``--kv-cache buffer``, the default), with ``--optimize ort`` (fused MultiHeadAttention, concat cache inside the
kernel), int4 (``--quantize int4``, buffer layout); and, for the mask's cost, the buffer and concat graphs exported
with a plain causal mask instead of the GLM rule (``sep`` ignored).

Measured per engine: prefill of ``B=1, S=128`` (P = 0) and decode at ``B in (1, 8)``, ``P in (128, 512, 1024)``:
each round starts from a cache of P random rows and runs ``--steps`` chained decode steps (each step's present is
the next step's past, as in generation), reported as ms per step (one token per row). Every engine runs in its own
processes with ``--threads`` intra-op threads: ``--repeats`` processes per engine, interleaved across the engines
(load from other jobs then falls on every engine alike); each process discards its first round and reports the
median of the rest, and the median over an engine's processes is reported.

Rooflines: decode ``% of roofline`` = (weight bytes streamed + K/V cache bytes read per step) / the measured
float32 gemv bandwidth, over the measured step time; prefill ``% of matmul rate`` = the prefill's matmul FLOPs
(2 x linear weights x tokens + attention) / the measured float32 matmul rate, over the measured time. Both rates are
measured here with numpy (gemv over a 1 GiB matrix; a 2048^3 matmul), with ``--threads`` threads.
Prints one JSON object.

    python -m benchmarks.onnx_cpu [--work DIR] [--rounds 3] [--repeats 3] [--steps 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import run_conditions, run_in_subprocess, summarize

PRESET = os.environ.get("GLM_ONNX_BENCH_PRESET", "glm-base")  # glm-tiny for a smoke run
PREFILL = 128
BATCHES = (1, 8)
PASTS = (128, 512, 1024)
SEED = 0
# name -> export flags; "mask" engines are exported by this script with the plain causal rule
EXPORTS = {
    "concat": ["--kv-cache", "concat"],
    "buffer": ["--kv-cache", "buffer"],
    "ort": ["--optimize", "ort"],
    "int4": ["--quantize", "int4"],
}
CAUSAL = {"buffer_causal": "buffer", "concat_causal": "concat"}


# ------------------------------------------------------------------------------------------------ inputs
def _prefill_inputs(vocab: int) -> tuple[Any, Any, Any]:
    import numpy as np

    rng = np.random.default_rng(SEED)
    ids = rng.integers(0, vocab, (1, PREFILL), dtype=np.int64)
    pos = np.stack([np.arange(PREFILL), np.zeros(PREFILL, np.int64)])[None]  # [1, 2, S]
    return ids, pos, np.array([PREFILL // 2])


def _random_cache(batch: int, past: int, layers: int, heads: int, head_dim: int) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(SEED + past)
    shape = (batch, heads, past, head_dim)
    return [rng.standard_normal(shape, dtype=np.float32) for _ in range(2 * layers)]


def _decode_inputs(batch: int, step: int, vocab: int) -> tuple[Any, Any, Any]:
    import numpy as np

    ids = np.full((batch, 1), (7 * step + 11) % vocab, dtype=np.int64)
    pos = np.tile(np.array([[[510], [1 + step]]], dtype=np.int64), (batch, 1, 1))  # a blank's tokens, GLM-style
    return ids, pos, np.zeros(batch, np.int64)


def _time_engine(
    step: Any, fresh_past: Any, dims: tuple[int, int, int, int], rounds: int, steps: int, grid: list[tuple[int, int]]
) -> dict[str, Any]:
    """Prefill and chained decode timings; ``fresh_past(arrays, P)`` turns random arrays into the engine's past."""
    layers, heads, head_dim, vocab = dims
    ids, pos, sep = _prefill_inputs(vocab)
    prefill = []
    for _ in range(rounds):
        start = time.perf_counter()
        step(ids, pos, sep, None)
        prefill.append((time.perf_counter() - start) * 1e3)
    decode = {}
    for batch, past_len in grid:
        arrays = _random_cache(batch, past_len, layers, heads, head_dim)
        inputs = [_decode_inputs(batch, t, vocab) for t in range(steps)]
        samples = []
        for _ in range(rounds):
            past = fresh_past(arrays, past_len)
            start = time.perf_counter()
            for x in inputs:
                _, past = step(*x, past)
            samples.append((time.perf_counter() - start) * 1e3 / steps)
        decode[f"B{batch}_P{past_len}"] = summarize(samples)
        del arrays, past
    return {"prefill_ms": summarize(prefill), "decode_ms_per_step": decode}


def _grid() -> list[tuple[int, int]]:
    return [(b, p) for b in BATCHES for p in PASTS]


# ------------------------------------------------------------------------------------------------ engines
def engine_torch(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from glm_core.config import GLMConfig
    from glm_core.model import build_model
    from glm_core.step import TorchStep

    torch.set_num_threads(args.threads)
    config = GLMConfig.from_preset(PRESET)
    model = build_model(config, seed=SEED).eval()
    step = TorchStep(model)

    def fresh(arrays: list[Any], _: int) -> Any:
        tensors = [torch.from_numpy(a) for a in arrays]
        return tuple((tensors[2 * i], tensors[2 * i + 1]) for i in range(config.num_layers))

    dims = (config.num_layers, config.num_attention_heads, config.head_dim, config.vocab_size)
    out = _time_engine(step.step, fresh, dims, args.rounds, args.steps, _grid())
    h, V = config.hidden_size, config.vocab_size
    streamed = (config.num_layers * 12 * h * h + V * h) * 4  # linear weights + the tied head, fp32
    return {"engine": "torch eager", **out, "streamed_bytes_per_step": streamed}


def engine_onnx(model_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    from evaluation.backends import kv_buffer
    from evaluation.backends.onnx import OnnxBackend

    capacity = max(PASTS) + args.steps + kv_buffer.BLOCK
    backend = OnnxBackend(model_dir, threads=args.threads, cache_capacity=capacity)

    def fresh(arrays: list[Any], past_len: int) -> Any:
        if backend.kv_cache == "concat":
            return [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
        # the state a prefill of past_len tokens leaves: an allocation with head room, past_len rows written
        dims = (arrays[0].shape[0], backend.num_heads, backend.head_dim, backend.num_layers)
        rows = kv_buffer.allocation(past_len, capacity)
        buffer = kv_buffer.new_buffer(*dims, rows, backend.kv_dtype, arrays)
        return kv_buffer.BufferedPast(buffer, past_len)

    dims = (backend.num_layers, backend.num_heads, backend.head_dim, backend.vocab_size)
    out = _time_engine(backend.step, fresh, dims, args.rounds, args.steps, _grid())
    return {
        "engine": model_dir,
        "kv_cache": backend.kv_cache,
        "optimize": backend.config["optimize"],
        "quantize": backend.config["quantize"],
        **out,
        "streamed_bytes_per_step": streamed_bytes(onnx.load(str(backend.model_path))),
        "file_bytes": sum(p.stat().st_size for p in Path(model_dir).glob("model.onnx*")),
    }


MASK_OPS = ("Range", "Less", "LessOrEqual", "Or", "Where", "Expand")  # the mask subgraph (export/graph.py)


def engine_mask_profile(model_dir: str, args: argparse.Namespace) -> dict[str, Any]:
    """ORT's profiler over ``model_dir``: kernel ms per call of the whole graph and of the mask subgraph's ops, at
    prefill B1 S128 and decode B1/B8 P512 (end-to-end timings of two graphs differ by more noise than the mask)."""
    import collections

    import numpy as np
    import onnxruntime as ort

    from evaluation.backends import kv_buffer

    config = json.loads((Path(model_dir) / "glm_config.json").read_text())
    heads, head_dim = config["num_attention_heads"], config["head_dim"]
    out = {}
    for key, (batch, seq, past) in {
        "prefill_B1_S128": (1, PREFILL, 0),
        "B1_P512": (1, 1, 512),
        "B8_P512": (8, 1, 512),
    }.items():
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.intra_op_num_threads = args.threads
        options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "profile")
        session = ort.InferenceSession(str(Path(model_dir) / "model.onnx"), options, providers=["CPUExecutionProvider"])
        feeds: dict[str, Any] = {
            "input_ids": np.ones((batch, seq), np.int64),
            "position_ids": np.zeros((batch, 2, seq), np.int64),
            "sep": np.full(batch, seq // 2, np.int64),
        }
        window = past
        if config.get("kv_cache") == "buffer":
            feeds[kv_buffer.PAST_LENGTH] = np.array(past, np.int64)
            window = kv_buffer.allocation(past, past + kv_buffer.BLOCK) if past else 0
        for value in session.get_inputs():
            if value.name.startswith("past_key_values."):
                feeds[value.name] = np.zeros((batch, heads, window, head_dim), np.float32)
        for _ in range(args.rounds):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
        per_op: collections.Counter[str] = collections.Counter()
        for event in events:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                per_op[event["args"]["op_name"]] += event["dur"]
        calls = args.rounds
        out[key] = {
            "graph_kernel_ms": round(sum(per_op.values()) / calls / 1e3, 3),
            "mask_ops_kernel_ms": round(sum(per_op[op] for op in MASK_OPS) / calls / 1e3, 4),
        }
    return out


def streamed_bytes(model: Any) -> int:
    """Bytes of initializers read per decode step: everything except tables only looked up (Gather)."""
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


def engine_rates(args: argparse.Namespace) -> dict[str, Any]:
    """float32 gemv bandwidth (1 GiB matrix x vector: the decode access pattern) and matmul rate (2048^3)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # read when numpy loads its BLAS
    import numpy as np

    def timed(fn: Any) -> float:
        samples = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        return summarize(samples)["median"]

    matrix = np.ones(((1 << 30) // 4 // 4096, 4096), dtype=np.float32)
    vector = np.ones(4096, dtype=np.float32)
    gemv = matrix.nbytes / timed(lambda: matrix @ vector) / 1e9
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    gflops = 2 * n**3 / timed(lambda: a @ a) / 1e9
    return {"gemv_gb_s": round(gemv, 2), "matmul_gflop_s": round(gflops, 1), "threads": args.threads}


# ------------------------------------------------------------------------------------------------ orchestration
def export(work: Path, name: str, extra: list[str]) -> Path:
    out = work / name
    if not (out / "glm_config.json").is_file():
        cmd = [sys.executable, "-m", "export.onnx", "--ckpt", PRESET, "--random-weights", "--out", str(out)]
        proc = subprocess.run([*cmd, "--no-validate", *extra], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"export {name} failed: {proc.stderr[-2000:]}")
    return out


def export_causal(work: Path, name: str, like: Path, kv_cache: str) -> Path:
    """The graph of ``like`` with a plain causal mask (``mask_rule="causal"``), beside a copy of its config."""
    out = work / name
    if (out / "glm_config.json").is_file():
        return out
    import torch

    from export.graph import GLMExportModule, export_program
    from glm_core.config import GLMConfig
    from glm_core.model import build_model

    torch.manual_seed(SEED)
    model = build_model(GLMConfig.from_preset(PRESET), seed=SEED).eval()
    out.mkdir(parents=True, exist_ok=True)
    program = export_program(GLMExportModule(model, kv_cache=kv_cache, mask_rule="causal"))
    program.save(str(out / "model.onnx"), external_data=True)
    shutil.copy(like / "glm_config.json", out / "glm_config.json")
    config = json.loads((out / "glm_config.json").read_text())
    config["external_data"] = ["model.onnx.data"]
    (out / "glm_config.json").write_text(json.dumps(config, indent=2))
    return out


def combine(name: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One engine's processes: the median over processes of each process's median (and those medians)."""

    def stat(values: list[float]) -> dict[str, Any]:
        return {"median": statistics.median(values), "per_process": [round(v, 3) for v in values]}

    row = {k: v for k, v in samples[0].items() if k not in ("prefill_ms", "decode_ms_per_step")}
    row["engine"] = name
    row["prefill_ms"] = stat([s["prefill_ms"]["median"] for s in samples])
    row["decode_ms_per_step"] = {
        key: stat([s["decode_ms_per_step"][key]["median"] for s in samples]) for key in samples[0]["decode_ms_per_step"]
    }
    return row


def rooflines(rows: dict[str, dict[str, Any]], rates: dict[str, Any]) -> None:
    from glm_core.config import GLMConfig

    config = GLMConfig.from_preset(PRESET)
    L, h = config.num_layers, config.hidden_size
    linear = L * 12 * h * h + config.vocab_size * h  # prefill FLOPs: 2 per weight per token + attention
    prefill_flops = 2 * linear * PREFILL + L * 4 * PREFILL * PREFILL * h
    for row in rows.values():
        row["prefill_pct_of_matmul_rate"] = round(
            100 * prefill_flops / (row["prefill_ms"]["median"] / 1e3) / (rates["matmul_gflop_s"] * 1e9), 1
        )
        row["decode_pct_of_roofline"] = {}
        for key, stats in row["decode_ms_per_step"].items():
            batch, past = (int(part[1:]) for part in key.split("_"))
            cache = 2 * L * batch * past * h * 4  # every cached K/V row read once, fp32
            bound_s = (row["streamed_bytes_per_step"] + cache) / (rates["gemv_gb_s"] * 1e9)
            row["decode_pct_of_roofline"][key] = round(100 * bound_s / (stats["median"] / 1e3), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="directory for the exported models (reused when present)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per process (the first is discarded)")
    parser.add_argument("--repeats", type=int, default=3, help="processes per engine, interleaved across engines")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", help="comma-separated subset of torch," + ",".join([*EXPORTS, *CAUSAL]))
    parser.add_argument("--engine", help="internal: run one engine in this process (torch | rates | DIR)")
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    if args.engine:
        runners = {"torch": engine_torch, "rates": engine_rates}
        if args.engine in runners:
            result = runners[args.engine](args)
        elif args.engine.startswith("profile:"):
            result = engine_mask_profile(args.engine.removeprefix("profile:"), args)
        else:
            result = engine_onnx(args.engine, args)
        print(json.dumps(result))
        return

    # the engines and exports import this checkout's packages, not an installed copy
    root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    names = args.engines.split(",") if args.engines else ["torch", *EXPORTS, *CAUSAL]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="glm-onnx-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    dirs = {name: export(work, name, flags) for name, flags in EXPORTS.items() if name in names}
    for name, layout in CAUSAL.items():
        if name in names:
            dirs[name] = export_causal(work, name, export(work, layout, EXPORTS[layout]), layout)
    common = ["--rounds", str(args.rounds), "--steps", str(args.steps), "--threads", str(args.threads)]
    order = {
        "rates": "rates",
        **({"torch": "torch"} if "torch" in names else {}),
        **{n: str(d) for n, d in dirs.items()},
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in order}
    for _ in range(args.repeats):  # interleaved, so that other jobs' load falls on every engine alike
        for name, engine in order.items():
            runs[name].append(run_in_subprocess("benchmarks.onnx_cpu", ["--engine", engine, *common]))
    rate_runs = runs.pop("rates")
    rates = {k: statistics.median(r[k] for r in rate_runs) for k in ("gemv_gb_s", "matmul_gflop_s")}
    rows = {name: combine(name, samples) for name, samples in runs.items()}
    rooflines(rows, rates)
    for name, layout in CAUSAL.items():  # the mask subgraph's own cost, from ORT's profiler
        for engine in (name, layout):
            if name in rows and layout in rows and "mask_profile" not in rows[engine]:
                rows[engine]["mask_profile"] = run_in_subprocess(
                    "benchmarks.onnx_cpu", ["--engine", f"profile:{dirs[engine]}", *common]
                )
    result = {"benchmark": "onnx_cpu", **summary(rows), "rates": rates, "engines": rows, **meta(args)}
    print(json.dumps({**result, **run_conditions(load_at_start)}, indent=2))


def meta(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "preset": PRESET,
        "weights": "random (seed 0)",
        "prefill": {"batch": 1, "tokens": PREFILL},
        "decode_grid": {"batch": list(BATCHES), "past": list(PASTS)},
        "threads": args.threads,
        "rounds_per_process": args.rounds,
        "processes_per_engine": args.repeats,
        "decode_steps_per_round": args.steps,
        "statistic": "median over processes of each process's median after discarding its round 1",
    }


def summary(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ratios the acceptance criteria are about, from this run's medians."""

    def ms(name: str, key: str) -> float | None:
        row = rows.get(name)
        return None if row is None else row["decode_ms_per_step"][key]["median"]

    out: dict[str, Any] = {}
    if "concat" in rows and "buffer" in rows:
        grow = {n: ms(n, "B8_P1024") - ms(n, "B8_P128") for n in ("concat", "buffer")}  # type: ignore[operator]
        out["buffer_vs_concat"] = {
            "B8_P512_speedup": round(ms("concat", "B8_P512") / ms("buffer", "B8_P512"), 3),  # type: ignore[operator]
            "B8_growth_ms_P128_to_P1024": {n: round(v, 2) for n, v in grow.items()},
        }
    if "ort" in rows and "concat" in rows:
        out["ort_vs_unfused_concat_speedup"] = {
            key: round(ms("concat", key) / ms("ort", key), 3)  # type: ignore[operator]
            for key in rows["ort"]["decode_ms_per_step"]
        }
    for name, layout in CAUSAL.items():
        if name in rows and layout in rows:
            glm, causal = rows[layout], rows[name]
            out[f"glm_mask_subgraph_kernel_ms_{layout}"] = {
                key: {"glm": glm["mask_profile"][key]["mask_ops_kernel_ms"], "causal": value["mask_ops_kernel_ms"]}
                for key, value in causal["mask_profile"].items()
            }
            out[f"glm_mask_cost_{layout}"] = {
                "prefill_B1_S128": round(glm["prefill_ms"]["median"] / causal["prefill_ms"]["median"], 3),
                **{
                    key: round(ms(layout, key) / ms(name, key), 3)  # type: ignore[operator]
                    for key in glm["decode_ms_per_step"]
                    if "P512" in key
                },
            }
    return out


if __name__ == "__main__":
    main()
