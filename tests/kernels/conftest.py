"""Kernel tests run the Triton kernels on CPU tensors through the Triton interpreter.

spec fused_ops §3.1 / §6 item 2: ``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates a kernel, so it must be
set before any kernel module is imported — hence at import time of this conftest, which pytest loads before the
test modules of this folder. On a CUDA machine run with ``TRITON_INTERPRET=0`` to test the compiled kernels on the
GPU: the ``device`` fixture then hands out ``cuda`` and the same tests run unchanged.
"""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything can import a kernel module

import pytest  # noqa: E402
import torch  # noqa: E402

TRITON_IMPORTABLE = importlib.util.find_spec("triton") is not None
SKIP_REASON = "triton is not installed; the Triton kernels cannot be tested here"
INTERPRETING = os.environ["TRITON_INTERPRET"].strip().lower() in ("1", "true", "yes", "on", "y")


@pytest.fixture
def device() -> torch.device:
    """Where the kernel tests put their tensors: the GPU when compiled kernels can run, else the CPU (interpreter)."""
    if not INTERPRETING and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "triton: runs a Triton kernel (interpreted on CPU); skipped without triton")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every test marked ``triton`` with a clear reason when no Triton kernel can run here."""
    if not TRITON_IMPORTABLE:
        reason = SKIP_REASON
    elif not INTERPRETING and not torch.cuda.is_available():
        reason = "TRITON_INTERPRET is off and there is no CUDA device: the Triton kernels cannot run here"
    else:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("triton") is not None:
            item.add_marker(skip)


@pytest.fixture
def poisoned_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``torch.empty``/``torch.empty_like`` return NaN-filled float tensors (spec §5.3: poison outputs).

    A kernel that leaves an output element unwritten then fails its comparison instead of passing by luck with
    whatever the allocator handed back.
    """
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def _poison(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: _poison(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _poison(real_empty_like(*a, **k)))
