"""What an ONNX Runtime session over an exported model holds, per session setting, each in a fresh process.

For each model directory (an export of any precision) and each setting -- ``prepacking`` / ``no_prepacking`` at
every graph optimisation, and for fp16 graphs ``basic_priority`` (basic optimisations, priority-based order, no
pre-packing) and ``basic_default`` (the same in the default order) -- a fresh process opens the backend's session
without the CPU memory arena (as the exporter's validation does) and reports its RSS, split into anonymous and
file-backed pages (the memory-mapped external data), after the session is made and at the peak of one 8-token step. With ``--long``, the setting the exporter's
validation uses for that precision also runs the validation's near-full-past case: 3 rows, a prefix of
``max_sequence_length + 1 - 4`` positions prefilled in chunks into one reserved cache, then the 4-token chunk.

    python -m benchmarks.validation_session_rss MODEL_DIR [MODEL_DIR ...] [--long] [--settings a,b]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import run_conditions

GB = 1e9
SETTINGS = ("prepacking", "no_prepacking", "basic_priority", "basic_default")


def status() -> dict[str, float]:
    """VmRSS / RssAnon / RssFile / VmHWM of this process, in GB."""
    out = {}
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = round(int(line.split()[1]) * 1024 / GB, 3)
    return out


def reset_peak() -> None:
    """Start VmHWM over from the current RSS (Linux clear_refs 5)."""
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as fh:
        fh.write("5")


def validator_setting(dtype: str, quantize: str) -> str:
    """The setting export.validate uses for a large model of this precision on the CPU."""
    if quantize != "none":
        return "prepacking"
    return "basic_priority" if dtype == "fp16" else "no_prepacking"


def child(model_dir: str, setting: str, long: bool) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    from evaluation.backends.onnx import OnnxBackend
    from export.validate import LONG, PREFILL_CHUNK, chunked_prefill, lean_session_options

    options = lean_session_options(prepacking=setting == "prepacking", basic_level=setting.startswith("basic"))
    if not setting.startswith("basic"):
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if setting == "basic_default":
        options.execution_order = ort.ExecutionOrder.DEFAULT
    row: dict[str, Any] = {"before_session": status()}
    reset_peak()
    start = time.perf_counter()
    backend = OnnxBackend(model_dir, providers="cpu", session_options=options)
    row["session"] = status()
    row["session_s"] = round(time.perf_counter() - start, 1)
    ids = np.ones((1, 8), np.int64)
    pos = np.stack([np.arange(8), np.zeros(8, np.int64)])[None]
    reset_peak()
    start = time.perf_counter()
    backend.step(ids, pos, np.array([4]), None)
    row["step_8_tokens"] = status()
    row["step_s"] = round(time.perf_counter() - start, 1)
    if long:
        rows, seq = LONG["batch"], LONG["seq"]
        past_len = backend.max_position + 1 - seq
        rng = np.random.default_rng(0)
        prefix = rng.integers(0, backend.vocab_size, size=(rows, past_len))
        prefix_pos = np.repeat(np.stack([np.arange(past_len), np.zeros(past_len, np.int64)])[None], rows, axis=0)
        chunk_ids = rng.integers(0, backend.vocab_size, size=(rows, seq))
        chunk_pos = np.repeat(np.stack([np.arange(past_len, past_len + seq), np.zeros(seq, np.int64)])[None], rows, 0)
        reset_peak()
        start = time.perf_counter()
        with backend.reserved_cache(past_len + seq):
            past = chunked_prefill(backend, prefix, prefix_pos, np.full(rows, PREFILL_CHUNK))
            backend.step(chunk_ids, chunk_pos, np.asarray(LONG["seps"]), past)
        row["near_full_past"] = status()
        row["near_full_past_s"] = round(time.perf_counter() - start, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dirs", nargs="+")
    parser.add_argument("--long", action="store_true", help="also the near-full-past case, validator setting only")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="which settings to run (default: all)")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model_dirs[0], args.child, args.long)))
        return
    load_at_start = os.getloadavg()
    models: dict[str, Any] = {}
    for model_dir in args.model_dirs:
        config = json.loads((Path(model_dir) / "glm_config.json").read_text(encoding="utf-8"))
        dtype, quantize = config.get("dtype", "fp32"), config.get("quantize", "none")
        files = sorted(p.name for p in Path(model_dir).glob("model.onnx*"))
        entry: dict[str, Any] = {
            "dtype": dtype,
            "quantize": quantize,
            "files": files,
            "weight_file_bytes": sum((Path(model_dir) / f).stat().st_size for f in files),
            "validator_setting": validator_setting(dtype, quantize),
            "settings": {},
        }
        for setting in [s for s in SETTINGS if s in args.settings.split(",")]:
            if setting.startswith("basic") and dtype != "fp16":
                continue
            long = args.long and setting == entry["validator_setting"]
            cmd = [sys.executable, "-m", "benchmarks.validation_session_rss", model_dir, "--child", setting]
            out = subprocess.run([*cmd, *(["--long"] if long else [])], capture_output=True, text=True, check=False)
            if out.returncode != 0:
                entry["settings"][setting] = {"error": out.stderr.strip()[-400:]}
            else:
                entry["settings"][setting] = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps({model_dir: {setting: entry["settings"][setting]}}), file=sys.stderr, flush=True)
        models[model_dir] = entry
    print(json.dumps({"benchmark": "validation_session_rss", "models": models, **run_conditions(load_at_start)}))


if __name__ == "__main__":
    main()
