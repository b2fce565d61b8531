"""The single GPU benchmark of the fused training kernels (spec fused_ops §5.2): ceilings, correctness, timings.

    python -m benchmarks.gpu_kernels [--out DIR] [--quick] [--skip-train] [--sections a,b] [--budget-s S]
    python -m benchmarks.gpu_kernels --smoke --out /tmp/smoke     # CPU: tiny shapes under the Triton interpreter

Sections, in order (each guarded: an error or an OOM is recorded and the script goes on; the JSON is rewritten
after every section):

1. ``environment`` / ``ceilings``: device, driver, versions; D2D copy bandwidth (>= 1 GiB, bytes read + written)
   and bf16 8192^3 matmul TFLOP/s — every %BW below is against *this* measured bandwidth (spec §2.1).
2. ``correctness``: every kernel in fp32/fp16/bf16, forward and every gradient against float64, with the spec §5.3
   tolerance table (``tests/kernels/tolerances.py``); pass/fail per (op, dtype); failures are printed loudly.
3. ``attention``: fwd and fwd+bwd at T = 512, 1024, 2048, dropout off and on, each timing repeated 3 times (median
   and spread); the backend ``auto`` picks and its ratio to the best of SDPA and Flex.
4. ``train_step``: :func:`benchmarks.gpu_train_step.run` (GLM-Large, B=32, T=512, bf16 autocast, dropout on,
   sampler batches): eager, Triton kernels, compiled, compiled with the best attention of section 3, that with
   FSDP2 on one GPU; tokens/s, MFU by the 6N convention and by executed FLOPs.
5. ``layernorm``, ``bias_gelu``, ``lm_head_ce``: the kernel against eager and ``torch.compile`` of eager (what decides
   whether a kernel stays in ``auto``). Sections 3 and 5 time with ``triton.testing.do_bench`` medians (compilation
   excluded by a warm-up call), >= 4 rotating random input buffers totalling more than the L2 cache.
6. A compact ratio table, printed last; the full results in ``DIR/gpu_kernels.json``.

Time budget (spec §5.2: <= 7 minutes): optional peers (``torch.compile``, FlexAttention, the compiled training
step) run only while the remaining time covers their estimated cost plus the essential work still ahead; otherwise
they are recorded as ``"skipped (time budget)"``. A watchdog prints the table and writes the JSON if the run
overshoots (exit status 3). Exit status 0 otherwise, also when a correctness check failed (see the JSON/table).
"""

# Modules: ``plan`` (shapes per mode), ``harness`` (budget, results file, watchdog, timing of candidates), one module
# per section (``environment``, ``correctness``, ``layernorm``, ``bias_gelu``, ``attention``, ``lm_head_ce``,
# ``train_step``) and ``cli`` (arguments, the section driver, the ratio table). This ``__init__`` runs first on
# ``python -m benchmarks.gpu_kernels``: it starts the budget clock and, for a CPU smoke run, switches the Triton
# interpreter on before any kernel module is imported; it imports nothing else of the package.

from __future__ import annotations

import time

START = time.monotonic()  # the 7-minute budget includes importing torch

import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]


def _enable_interpreter_for_cpu_smoke(argv: list[str]) -> bool:
    """spec §6 item 2: ``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates, so set it before any kernel
    module is imported — only for ``--smoke`` on a machine without CUDA."""
    if "--smoke" not in argv:
        return False
    import torch

    if torch.cuda.is_available():
        return False
    os.environ["TRITON_INTERPRET"] = "1"
    return True


INTERPRETER_SET_HERE = _enable_interpreter_for_cpu_smoke(sys.argv[1:])
