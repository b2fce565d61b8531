"""Shared helpers for benchmark scripts: machine description, timing statistics, one process per engine."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from importlib import metadata
from typing import Any


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for pkg in ("torch", "numpy", "onnx", "onnxruntime", "onnxscript", "triton"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def run_conditions(load_at_start: tuple[float, float, float]) -> dict[str, Any]:
    """The machine and its 1/5/15-minute load averages at the start and end of the run, for a results file.

    A load above ~0.5 at either end means other jobs shared the machine while it was measured.
    """
    return {
        "machine": machine_info(),
        "load_average_1_5_15_min_at_end": os.getloadavg(),
        "load_average_1_5_15_min_at_start": load_at_start,
    }


def summarize(samples: list[float], discard_first: bool = True) -> dict[str, float]:
    """Median/min/max after discarding the first (warm-up) round."""
    kept = samples[1:] if discard_first and len(samples) > 1 else samples
    return {"median": statistics.median(kept), "min": min(kept), "max": max(kept), "rounds": len(kept)}


def run_in_subprocess(module: str, args: list[str]) -> dict[str, Any]:
    """Run ``python -m module args`` in a fresh process and parse the JSON it prints last."""
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_of(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` in a child of a fresh interpreter, so that ``RUSAGE_CHILDREN`` covers ``cmd`` (and its own
    children) alone: ``{"rc", "peak_rss_bytes", "wall_s", "stderr_tail"}``."""
    probe = (
        "import json, resource, subprocess, sys, time\n"
        f"cmd = {cmd!r}\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(cmd, capture_output=True, text=True)\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
        "print(json.dumps({'rc': p.returncode, 'peak_rss_bytes': rss, 'wall_s': round(time.perf_counter() - t, 2),"
        " 'stderr_tail': p.stderr[-800:]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])
