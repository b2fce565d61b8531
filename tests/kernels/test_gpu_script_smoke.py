"""``python -m benchmarks.gpu_kernels --smoke`` runs end to end (CPU: tiny shapes, Triton interpreted) and reports
fully.

The GPU benchmark runs once or twice on a borrowed machine with a hard time limit, so every code path that can run
without CUDA is exercised here: correctness vs float64 for every (op, dtype), the timing sections, the training
step, the ratio table and the JSON file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.triton

REPO_ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("ceilings", "correctness", "layernorm", "bias_gelu", "attention", "lm_head_ce", "train_step")
OPS = ("add_dropout_layernorm", "bias_gelu", "glm_attention", "partb_lm_head_ce")
TIMING_SECTIONS = ("layernorm", "bias_gelu", "attention", "lm_head_ce")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    out_dir = tmp_path_factory.mktemp("gpu_smoke")
    env = dict(os.environ)
    # the script sets TRITON_INTERPRET itself when there is no CUDA; on a GPU machine the compiled kernels must run
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_kernels", "--smoke", "--out", str(out_dir)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    path = out_dir / "gpu_kernels.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return proc, data, path


def test_smoke_exits_zero_and_completes(smoke_run):
    proc, data, path = smoke_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert path.exists()
    assert data["completed"] is True
    assert "aborted" not in data  # the watchdog did not fire
    # spec: the CI smoke stays under 90 s -- held by the smoke plan's own budget (the sections it runs are cut to
    # it), not by a wall-clock assertion, which a loaded CI machine fails (93 s measured under load 5 on 2 cores)
    from benchmarks.gpu_kernels.plan import make_plan

    assert make_plan("smoke", None).budget_s <= 90


def test_json_has_every_section_without_section_errors(smoke_run):
    _, data, _ = smoke_run
    assert set(SECTIONS) <= set(data["sections"])
    for name in SECTIONS:
        assert "error" not in data["sections"][name], (name, data["sections"][name].get("error"))
    assert data["environment"]["torch"]
    copy = data["sections"]["ceilings"]["copy"]
    assert copy["bw_gb_s"] > 0 and data["sections"]["ceilings"]["matmul_bf16"]["tflops"] > 0


def test_every_correctness_entry_passed(smoke_run):
    _, data, _ = smoke_run
    results = data["sections"]["correctness"]["results"]
    assert {(e["op"], e["dtype"]) for e in results} == {
        (op, dtype) for op in OPS for dtype in ("float32", "float16", "bfloat16")
    }
    for entry in results:
        assert entry["passed"], (entry["op"], entry["dtype"], entry.get("error"), entry.get("failures"))
        quantities = [q for case in entry["cases"] for q in case["quantities"]]
        assert quantities, entry
        for q in quantities:  # a measured error under its bar, not a vacuous pass
            assert q["passed"] and q["err"] <= q["bar"], (entry["op"], entry["dtype"], q)
    # forward and every gradient are compared: e.g. LayerNorm checks y, new_residual, dx, dresidual, dweight, dbias
    ln = next(e for e in results if e["op"] == "add_dropout_layernorm" and e["dtype"] == "bfloat16")
    names = {q["name"] for case in ln["cases"] for q in case["quantities"]}
    assert {"y", "new_residual", "dx", "dresidual", "dweight", "dbias", "kept_fraction"} <= names
    attn = next(e for e in results if e["op"] == "glm_attention" and e["dtype"] == "float32")
    assert {q["name"] for case in attn["cases"] for q in case["quantities"]} == {
        "out",
        "dq",
        "dk",
        "dv",
        "kept_fraction",
    }
    assert any(case["case"].startswith("p=0.1") for case in attn["cases"])  # attention dropout vs the kernel's mask


def test_our_kernels_were_timed_in_every_case(smoke_run):
    _, data, _ = smoke_run
    for section in TIMING_SECTIONS:
        cases = {k: v for k, v in data["sections"][section].items() if isinstance(v, dict) and "candidates" in v}
        assert cases, section
        for key, case in cases.items():
            ours = case["candidates"]["triton"]
            assert "error" not in ours, (key, ours)
            assert ours["fwdbwd_ms"] > 0, key
            eager = [c for c in case["candidates"].values() if c["role"] == "eager"]
            assert eager and eager[0].get("fwdbwd_ms", 0) > 0, key
            assert case["summary"]["vs_eager"] > 0, key


def test_training_step_ran_eager_and_triton(smoke_run):
    _, data, _ = smoke_run
    results = data["sections"]["train_step"]["results"]
    for engine in ("eager", "triton"):
        r = results[engine]
        assert r.get("tokens_per_s", 0) > 0, (engine, r)
        assert r["tflops_6n"] > 0 and r["tflops_executed"] > 0, (engine, r)
    assert set(results["triton"]["kernels_used"].values()) == {"triton"}
    assert set(results["eager"]["kernels_used"].values()) == {"torch"}
    assert all("skipped" in results[e] for e in ("compile", "compile_best", "fsdp2_compile_best"))


@pytest.mark.slow  # ~27 s on 2 cores: dynamo + AOT autograd traces of two models, the sampler's corpus
def test_train_step_script_runs_every_compiled_variant_at_tiny_shapes():
    """``python -m benchmarks.gpu_train_step --smoke``: the compiled variants (``aot_eager`` on the CPU) and FSDP2 on
    a one-process gloo group, on sampler batches; each trains (finite losses) and reports both MFU conventions."""
    engines = ("compile", "fsdp2_compile_best")  # compile_best is compile's path with another attention setting
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_train_step", "--smoke", "--engines", ",".join(engines)],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])["results"]
    for engine in engines:
        r = results[engine]
        assert r.get("tokens_per_s", 0) > 0, (engine, r)
        assert r["tflops_6n"] > 0 and r["tflops_executed"] > 0, (engine, r)
        assert all(loss == loss and loss > 0 for loss in r["loss_first_last"]), (engine, r)
    assert results["fsdp2_compile_best"]["variant"] == {"kernels": "auto", "attention": "auto", "compile": True,
                                                        "fsdp": True}  # fmt: skip
    assert results["compile"]["optimizer"] == "foreach"  # fused AdamW is CUDA-only


def test_executed_flops_count_the_visible_pairs_and_the_part_b_head():
    """A worked example: h=4, L=2, V=10, one sample of T=3 with sep=2: visible pairs 2+2+3 = 7 (dense mask count),
    one Part-B row; forward = L·(24h²·T + 4h·7) + 2h·V·1, and the step executes 3x that."""
    import numpy as np

    from benchmarks.gpu_train_step import executed_flops
    from glm_core.config import GLMConfig

    config = GLMConfig(name="f", tokenizer_family="sentencepiece", vocab_size=10, hidden_size=4, num_layers=2,
                       num_attention_heads=1, max_sequence_length=8)  # fmt: skip
    batch = {"input_ids": np.zeros((1, 3)), "sep": np.array([2]), "loss_mask": np.array([[0, 0, 1]])}
    visible = sum(1 for t in range(3) for j in range(3) if j < 2 or j <= t)
    assert visible == 7
    forward = 2 * (24 * 16 * 3 + 4 * 4 * visible) + 2 * 4 * 10 * 1
    assert executed_flops(config, batch) == 3 * forward


def test_ratio_table_is_printed_last(smoke_run):
    proc, data, _ = smoke_run
    lines = proc.stdout.rstrip().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("RATIO TABLE"))
    assert not any(line.startswith("[") for line in lines[header:])  # no progress line after the table
    table = "\n".join(lines[header:])
    for row in data["ratio_table"]:
        assert row["case"][:46] in table
    assert "train_step triton" in table and "correctness: 12/12" in table


def test_visible_pair_count_matches_the_dense_glm_mask():
    # the attention TFLOP/s use visible FLOPs (spec §5.1 op 3): count j < max(sep, i + 1) independently
    import torch

    from benchmarks.gpu_kernels.attention import visible_pairs

    seq = 37
    seps = [0, 1, 15, 16, 36, 37]
    i = torch.arange(seq)[:, None]
    j = torch.arange(seq)[None, :]
    dense = sum(int((j < torch.clamp(i + 1, min=s)).sum()) for s in seps)
    assert visible_pairs(seps, seq) == dense
    assert visible_pairs([0], seq) == seq * (seq + 1) // 2  # causal
    assert visible_pairs([seq], seq) == seq * seq  # bidirectional
