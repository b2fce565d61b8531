"""glm_core.kernels dispatch: which implementation runs where, and a package that imports without triton."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import glm_core.kernels as kernels
from glm_core.errors import ConfigError, KernelUnavailableError
from glm_core.kernels import AUTO_DISABLED, resolve_impl

REPO_ROOT = Path(__file__).resolve().parents[2]
OP = "glm_attention"  # an op that no GPU finding disables in auto mode


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend a CUDA device and triton exist (resolve_impl only asks; nothing is launched)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(kernels, "_triton_importable", lambda: True)


def test_torch_is_always_torch():
    assert resolve_impl("torch", "cpu", torch.float64, OP) == "torch"


def test_auto_never_interprets_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_impl("auto", "cpu", torch.bfloat16, OP) == "torch"


def test_auto_picks_triton_on_cuda_for_supported_dtypes(fake_cuda):
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert resolve_impl("auto", "cuda", dtype, OP) == "triton"
    assert resolve_impl("auto", "cuda", torch.float64, OP) == "torch"
    assert resolve_impl("auto", "cuda", torch.float16, OP, supported=False, reason="too wide") == "torch"


def test_auto_disabled_entries_fall_back_to_torch_but_triton_still_runs(fake_cuda, monkeypatch):
    monkeypatch.setitem(AUTO_DISABLED, (OP, torch.float32), "slower than F.gelu on some GPU")
    assert resolve_impl("auto", "cuda", torch.float32, OP) == "torch"
    assert resolve_impl("auto", "cuda", torch.bfloat16, OP) == "triton"
    assert resolve_impl("triton", "cuda", torch.float32, OP) == "triton"


@pytest.mark.parametrize("op", ["add_dropout_layernorm", "bias_gelu"])
def test_recorded_gpu_finding_keeps_auto_on_torch(fake_cuda, op):
    # AUTO_DISABLED records the H200 measurements: these fused ops were slower than eager (see their reasons)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert "slower" in AUTO_DISABLED[(op, dtype)]
        assert resolve_impl("auto", "cuda", dtype, op) == "torch"
    assert resolve_impl("auto", "cuda", torch.bfloat16, "glm_attention") == "triton"


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if kernels._triton_importable():
        assert resolve_impl("triton", "cpu", torch.float32, OP) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(KernelUnavailableError, match="TRITON_INTERPRET=1"):
        resolve_impl("triton", "cpu", torch.float32, OP)


def test_triton_refuses_unsupported_dtype_and_shape(fake_cuda):
    with pytest.raises(KernelUnavailableError, match="dtype float64 is not supported"):
        resolve_impl("triton", "cuda", torch.float64, OP)
    with pytest.raises(KernelUnavailableError, match="hidden too wide"):
        resolve_impl("triton", "cuda", torch.float32, OP, supported=False, reason="hidden too wide")


def test_rejects_unknown_impl_and_op():
    with pytest.raises(ConfigError, match="kernels/impl must be one of"):
        resolve_impl("cuda", "cpu", torch.float32, OP)
    with pytest.raises(ConfigError, match="unknown fused op"):
        resolve_impl("auto", "cpu", torch.float32, "rms_norm")


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, env=environment, capture_output=True, text=True
    )


def test_importing_the_package_loads_neither_triton_nor_kernel_modules():
    result = _run_python("""
        import sys
        import glm_core.kernels
        loaded = sorted(m for m in sys.modules if m == "triton" or m.startswith("glm_core.kernels."))
        assert not loaded, loaded
    """)
    assert result.returncode == 0, result.stderr


def test_every_op_works_through_torch_when_triton_is_missing():
    result = _run_python("""
        import sys
        sys.modules["triton"] = None  # import triton -> ImportError
        import torch
        from glm_core.errors import KernelUnavailableError
        from glm_core.kernels import add_dropout_layernorm, bias_gelu, partb_lm_head_ce, triton_available
        assert not triton_available()
        x = torch.randn(2, 8)
        y, _ = add_dropout_layernorm(x, None, torch.ones(8), torch.zeros(8))
        assert y.shape == (2, 8)
        assert bias_gelu(x, torch.zeros(8)).shape == (2, 8)
        loss = partb_lm_head_ce(x, torch.randn(5, 8), torch.zeros(2, dtype=torch.long), torch.ones(2))
        assert loss.dim() == 0
        try:
            bias_gelu(x, torch.zeros(8), impl="triton")
        except KernelUnavailableError as error:
            assert "triton is not installed" in str(error), error
        else:
            raise AssertionError("impl='triton' without triton must raise")
    """, TRITON_INTERPRET="1")  # fmt: skip
    assert result.returncode == 0, result.stderr
