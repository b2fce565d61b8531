"""Peak memory of ``python -m export.onnx`` on ChatGLM-shaped random models, extrapolated to ChatGLM-6B.

ChatGLM-6B's fp32 weights (26.8 GB) do not fit the benchmark machines, so two smaller random configs with its
shape (28 layers, the real 130,528-row vocabulary and untied head, head size 128, inner = 4h) are written as
hub-layout checkpoints and exported in a fresh child process each (``--no-validate``: the export alone; the
validation session runs in its own process). Peak RSS comes from ``benchmarks.common.peak_rss_of``. The line
through the two points ``peak = a + r * weight_bytes`` is evaluated at ChatGLM-6B's fp32 weight bytes. Prints one
JSON object.

    python -m benchmarks.chatglm_export_rss [--hidden 256 512] [--layers 28]
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


def write_random_chatglm(directory: Path, hidden: int, layers: int) -> int:
    """A seeded random ChatGLM of ``hidden`` / ``layers`` with the 6B's vocabulary and ids; its fp32 weight bytes."""
    from glm_core.checkpoint import save_model
    from glm_core.config import GLMConfig
    from glm_core.model import build_model

    config = GLMConfig.from_preset(
        "chatglm-6b", hidden_size=hidden, num_attention_heads=hidden // 128, num_layers=layers, inner_hidden_size=None
    )
    save_model(build_model(config, seed=0), directory)
    return config.num_parameters() * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, nargs=2, default=[256, 512], help="hidden sizes of the two configs")
    parser.add_argument("--layers", type=int, default=28)
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    from glm_core.config import GLMConfig

    target_bytes = GLMConfig.from_preset("chatglm-6b").num_parameters() * 4
    work = Path(tempfile.mkdtemp(prefix="chatglm-export-rss-"))
    points = []
    try:
        for hidden in args.hidden:
            ckpt = work / f"chatglm-h{hidden}"
            weight_bytes = write_random_chatglm(ckpt, hidden, args.layers)
            out = work / f"onnx-h{hidden}"
            start = time.perf_counter()
            row = peak_rss_of(
                [sys.executable, "-m", "export.onnx", "--ckpt", str(ckpt), "--out", str(out), "--no-validate"]
            )
            row.update(
                hidden=hidden,
                layers=args.layers,
                weight_bytes_fp32=weight_bytes,
                wall_s=round(time.perf_counter() - start, 1),
                ratio_to_weight_bytes=round(row["peak_rss_bytes"] / weight_bytes, 2),
            )
            points.append(row)
            shutil.rmtree(ckpt, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (w0, p0), (w1, p1) = ((p["weight_bytes_fp32"], p["peak_rss_bytes"]) for p in points)
    slope = (p1 - p0) / (w1 - w0)
    predicted = p0 + slope * (target_bytes - w0)
    print(
        json.dumps(
            {
                "benchmark": "chatglm_export_rss",
                "runs": points,
                "fit": {"bytes_per_weight_byte": round(slope, 3), "intercept_bytes": round(p0 - slope * w0)},
                "chatglm_6b": {
                    "weight_bytes_fp32": target_bytes,
                    "predicted_peak_rss_bytes": round(predicted),
                    "predicted_ratio": round(predicted / target_bytes, 2),
                    "how": "extrapolated linearly from the two random configs above (not measured)",
                },
                **run_conditions(load_at_start),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
