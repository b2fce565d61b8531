"""Section 1: the environment (device, driver, versions) and the measured ceilings (D2D copy, bf16 matmul)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from typing import Any

import torch

from benchmarks.gpu_kernels import INTERPRETER_SET_HERE, REPO_ROOT
from benchmarks.gpu_kernels.harness import Ctx, log, median_ms, randn
from benchmarks.gpu_kernels.plan import GIB


def describe_environment(ctx: Ctx) -> dict[str, Any]:
    import numpy

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "numpy": numpy.__version__,
        "triton": _version("triton"),
        "liger_kernel": _version("liger-kernel"),
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET"),
        "interpreter_set_by_script": INTERPRETER_SET_HERE,
        "mode": ctx.plan.mode,
        "device": str(ctx.device),
        "git_commit": _git_commit(),
    }
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        info.update(
            device_name=props.name,
            capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
            total_memory_gib=round(props.total_memory / GIB, 1),
            l2_cache_mb=round(getattr(props, "L2_cache_size", 0) / 2**20, 1) or None,
            cudnn=torch.backends.cudnn.version(),
            driver=_nvidia_smi("driver_version"),
            clocks=_nvidia_smi("clocks.sm,clocks.max.sm,power.limit"),
        )
        ctx.l2_bytes = getattr(props, "L2_cache_size", 0) or ctx.l2_bytes
    else:
        info["device_name"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return info


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)  # fmt: skip
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _nvidia_smi(query: str) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=False)  # fmt: skip
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def run_ceilings(ctx: Ctx, rec: dict[str, Any]) -> None:
    """spec §2.1: measure both ceilings again in every run and express results as fractions of *these*."""
    n_elem = ctx.plan.copy_bytes // 2
    src = randn((n_elem,), ctx, torch.bfloat16)
    dst = torch.empty_like(src)
    copy_ms = median_ms(ctx, functools.partial(dst.copy_, src))
    ctx.copy_bw_bytes_s = 2 * ctx.plan.copy_bytes / (copy_ms / 1e3)  # bytes read + written
    rec["copy"] = {"bytes_each_way": ctx.plan.copy_bytes, "ms": copy_ms, "bw_gb_s": ctx.copy_bw_bytes_s / 1e9}
    log(f"  D2D copy ({ctx.plan.copy_bytes / GIB:.2f} GiB): {ctx.copy_bw_bytes_s / 1e9:.0f} GB/s (read + written)")
    del src, dst
    n = ctx.plan.matmul_n
    a, b = randn((n, n), ctx, torch.bfloat16), randn((n, n), ctx, torch.bfloat16)
    mm_ms = median_ms(ctx, functools.partial(torch.matmul, a, b))
    ctx.matmul_tflops = 2 * n**3 / (mm_ms / 1e3) / 1e12
    rec["matmul_bf16"] = {"n": n, "ms": mm_ms, "tflops": ctx.matmul_tflops}
    log(f"  bf16 {n}^3 matmul: {ctx.matmul_tflops:.0f} TFLOP/s")
