"""Peak memory, disk high-water mark and wall time of ``python -m export.onnx`` from an fp16 hub checkpoint.

Random weights of a preset's dimensions (seed 0) are first saved as an fp16 hub checkpoint (config.json +
safetensors), so the export reads a real file as it would a downloaded one. Each configuration (output fp32, fp16,
int4 or int8; with or without validation) then runs the export CLI in a fresh child process while this process samples
every 0.2 s the summed resident set size of the child's whole process tree (the export and the validation process
it starts) and the bytes on disk under the output's parent directory (the staging directory and the result);
``ru_maxrss`` of the children (the largest single process) is reported beside it. Ratios are to the fp16
checkpoint's bytes, and for fp32 outputs also to the fp32 weight bytes (parameters x 4).

``--session`` also measures what an ONNX Runtime session over each exported model holds (RSS after the session
is made, in a fresh process): with and without pre-packing.

    python -m benchmarks.export_rss [--preset glm-large] [--outputs fp32,fp16,int4] [--modes no_validate,validate]
                                    [--session] [--work DIR]

Prints one JSON object.
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

from benchmarks.common import run_conditions

BASELINE = "import torch, onnx, onnxruntime, onnxscript, numpy; import export.onnx"
OUTPUT_FLAGS = {
    "fp32": [],
    "fp16": ["--dtype", "fp16"],
    "int4": ["--quantize", "int4"],
    "int8": ["--quantize", "int8"],
}
MODE_FLAGS = {"no_validate": ["--no-validate"], "validate": []}
SAMPLE_S = 0.2
SAVE_CHECKPOINT = """\
import sys, torch
from glm_core.checkpoint import save_model
from glm_core.config import GLMConfig
from glm_core.model import build_model
config = GLMConfig.from_preset(sys.argv[1])
save_model(build_model(config, seed=0).half(), sys.argv[2], dtype=torch.float16)
"""
SESSION = """\
import json, sys, resource
import onnxruntime as ort
options = ort.SessionOptions()
if sys.argv[2] == "0":
    options.add_session_config_entry("session.disable_prepacking", "1")
def rss():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmRSS:"))
before = rss()
session = ort.InferenceSession(sys.argv[1], sess_options=options, providers=["CPUExecutionProvider"])
print(json.dumps({"rss_before_bytes": before, "rss_after_session_bytes": rss(),
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def tree_rss(pid: int) -> tuple[int, int]:
    """Summed VmRSS and RssAnon of ``pid`` and all its descendants (0 for processes that are gone). The difference
    is file-backed: the memory-mapped checkpoint and external data, clean pages the kernel can drop."""
    total, anon, stack = 0, 0, [pid]
    while stack:
        current = stack.pop()
        try:
            with open(f"/proc/{current}/status", encoding="utf-8") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                    elif line.startswith("RssAnon:"):
                        anon += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children", encoding="utf-8") as fh:
                    stack += [int(c) for c in fh.read().split()]
        except (OSError, ValueError):
            continue
    return total, anon


def disk_bytes(directory: Path) -> int:
    """Allocated bytes of every file under ``directory`` (files may vanish while it is walked)."""
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def measure(cmd: list[str], watch: Path) -> dict[str, Any]:
    """Run ``cmd``; sample its process tree's RSS and the disk under ``watch`` until it ends."""
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        peak_tree, peak_anon, peak_disk = 0, 0, 0
        while proc.poll() is None:
            total, anon = tree_rss(proc.pid)
            peak_tree, peak_anon = max(peak_tree, total), max(peak_anon, anon)
            peak_disk = max(peak_disk, disk_bytes(watch))
            time.sleep(SAMPLE_S)
        err.seek(0)
        tail = err.read().decode("utf-8", "replace")[-600:]
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "rc": proc.returncode,
        "peak_tree_rss_bytes": peak_tree,
        "peak_tree_anon_rss_bytes": peak_anon,
        "max_single_process_rss_bytes": after * 1024 if after > before else None,
        "peak_disk_bytes": peak_disk,
        "wall_s": round(time.perf_counter() - start, 1),
        "stderr_tail": tail,
    }


def session_rss(model: Path, prepacking: bool) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", SESSION, str(model), "1" if prepacking else "0"], capture_output=True, text=True
    )
    if out.returncode != 0:
        return {"error": out.stderr[-400:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="glm-large")
    parser.add_argument("--outputs", default="fp32,fp16,int4")
    parser.add_argument("--modes", default="no_validate,validate")
    parser.add_argument("--session", action="store_true", help="also measure ONNX Runtime sessions over each output")
    parser.add_argument("--work", help="directory for the checkpoint and the outputs (default: a temporary one)")
    args = parser.parse_args()
    load_at_start = os.getloadavg()

    from glm_core.config import GLMConfig

    config = GLMConfig.from_preset(args.preset)
    params = config.num_parameters()
    work = Path(tempfile.mkdtemp(prefix="glm-export-rss-", dir=args.work))
    rows: dict[str, Any] = {}
    try:
        ckpt = work / f"{args.preset}-fp16"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", SAVE_CHECKPOINT, args.preset, str(ckpt)], check=True)
        ckpt_bytes = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
        save_s = round(time.perf_counter() - start, 1)
        baseline = measure([sys.executable, "-c", BASELINE], work)
        rows["interpreter_baseline"] = {k: baseline[k] for k in ("rc", "peak_tree_rss_bytes", "wall_s")}
        outputs_dir = work / "outputs"
        outputs_dir.mkdir()
        for output in args.outputs.split(","):
            for mode in args.modes.split(","):
                out = outputs_dir / f"{output}-{mode}"
                cmd = [sys.executable, "-m", "export.onnx", "--ckpt", str(ckpt), "--out", str(out)]
                row = measure([*cmd, *OUTPUT_FLAGS[output], *MODE_FLAGS[mode]], outputs_dir)
                row["file_bytes"] = sum(p.stat().st_size for p in out.glob("model.onnx*")) if out.exists() else None
                row["ratio_to_fp16_checkpoint"] = round(row["peak_tree_rss_bytes"] / ckpt_bytes, 3)
                if output == "fp32":
                    row["ratio_to_fp32_weights"] = round(row["peak_tree_rss_bytes"] / (params * 4), 3)
                if row["file_bytes"]:
                    row["disk_ratio_to_result"] = round(row["peak_disk_bytes"] / row["file_bytes"], 3)
                report = out / "export_report.json"
                if report.is_file():
                    data = json.loads(report.read_text(encoding="utf-8"))
                    row["timings_s"] = data.get("timings_s")
                    row["exporter_resident_bytes_at_validation"] = data.get("resident_bytes_at_validation")
                    row["exporter_peak_rss_bytes"] = data.get("peak_rss_bytes")  # its load, reference, trace, write
                    row["validation_memory_peaks_bytes"] = (data.get("validation") or {}).get("memory_peaks_bytes")
                    validation = data.get("validation") or {}
                    row["validated"] = [s["after"] for s in validation.get("stages", [])]
                    row["validation_passed"] = validation.get("passed")
                    row["skipped_stages"] = [s["after"] for s in validation.get("skipped_stages", [])]
                if args.session and out.exists() and mode == args.modes.split(",")[-1]:
                    row["session"] = {
                        "prepacking": session_rss(out / "model.onnx", True),
                        "no_prepacking": session_rss(out / "model.onnx", False),
                    }
                rows[f"{output}/{mode}"] = row
                print(json.dumps({f"{output}/{mode}": row}), file=sys.stderr, flush=True)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "export_rss",
                "preset": args.preset,
                "parameters": params,
                "fp16_checkpoint_bytes": ckpt_bytes,
                "fp32_weight_bytes": params * 4,
                "checkpoint_save_s": save_s,
                "runs": rows,
                "targets": {
                    "int4/validate": "<= 1.5x the fp16 checkpoint",
                    "fp16/validate": "<= 2.0x the fp16 checkpoint",
                    "fp32/validate": "<= 1.6x the fp32 weight bytes",
                },
                **run_conditions(load_at_start),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
