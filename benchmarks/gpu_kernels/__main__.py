"""``python -m benchmarks.gpu_kernels``: see the package docstring for the sections, the budget and the output.

The package ``__init__`` has already run (budget clock started, Triton interpreter set for a CPU smoke run) before
this module imports the sections.
"""

from __future__ import annotations

import sys

from benchmarks.gpu_kernels.cli import main

if __name__ == "__main__":
    sys.exit(main())
