"""Peak memory of exporting glm-large dimensions (random weights, 335 M parameters) with ``python -m export.onnx``.

Each configuration runs the export CLI in a fresh child process; its peak resident set size is read with
``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the largest of the CLI and the validation process it starts)
and compared with the model's fp32 weight bytes. A separate child measures the interpreter baseline (importing
torch, onnx, onnxruntime, onnxscript). Prints one JSON object.

    python -m benchmarks.export_rss [--preset glm-large] [--validate]

Target: export peak RSS <= 3x the weight bytes (the dynamo exporter's anchor is ~3.5-5x, spec onnx_export §1.4).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import peak_rss_of, run_conditions

BASELINE = "import torch, onnx, onnxruntime, onnxscript, numpy; import export.onnx"


def measure(cmd: list[str]) -> dict[str, float]:
    """Peak RSS and wall time of ``cmd`` alone (:func:`benchmarks.common.peak_rss_of`)."""
    return peak_rss_of(cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="glm-large")
    parser.add_argument("--validate", action="store_true", help="also measure an export with full validation")
    args = parser.parse_args()
    load_at_start = os.getloadavg()

    from glm_core.config import GLMConfig

    config = GLMConfig.from_preset(args.preset)
    weight_bytes = config.num_parameters() * 4
    head_bytes = config.vocab_size * config.hidden_size * 4  # the untied LM head the export adds
    work = Path(tempfile.mkdtemp(prefix="glm-export-rss-"))
    rows = {}
    try:
        rows["interpreter_baseline"] = measure([sys.executable, "-c", BASELINE])
        configs = {"no_validate": ["--no-validate"]}
        if args.validate:
            configs["validate"] = []
        for name, extra in configs.items():
            out = work / name
            start = time.perf_counter()
            row = measure(
                [
                    sys.executable,
                    "-m",
                    "export.onnx",
                    "--ckpt",
                    args.preset,
                    "--random-weights",
                    "--out",
                    str(out),
                    *extra,
                ]
            )
            row["wall_s"] = round(time.perf_counter() - start, 1)
            row["file_bytes"] = sum(p.stat().st_size for p in out.glob("model.onnx*")) if out.exists() else None
            row["ratio_to_weight_bytes"] = round(row["peak_rss_bytes"] / weight_bytes, 2)
            rows[name] = row
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "export_rss",
                "preset": args.preset,
                "parameters": config.num_parameters(),
                "weight_bytes_fp32": weight_bytes,
                "untied_head_bytes": head_bytes,
                "runs": rows,
                "target": "peak RSS <= 3x weight bytes",
                "target_met": rows["no_validate"]["ratio_to_weight_bytes"] <= 3.0,
                **run_conditions(load_at_start),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
