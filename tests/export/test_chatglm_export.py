"""ChatGLM through ``python -m export.onnx``: one graph with the GLM export's signature (no mask input; mask and
rotary encoding built inside), validated by the export, and the torch-free ONNX backend equal to the PyTorch model
within 1e-5 on a mixed-sep batch prefill followed by cached decode steps (ChatGLM's own layout)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from evaluation.backends.onnx import OnnxBackend
from tests.chatglm.fixtures import GMASK, MASK, SOP, chatglm_layout, hub_config, write_hub_dir

L = hub_config()["num_layers"]


@pytest.fixture(scope="module")
def chatglm_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hub_dir(tmp_path_factory.mktemp("chatglm") / "chatglm-tiny", hub_config(max_sequence_length=128))


@pytest.fixture(scope="module")
def chatglm_torch(chatglm_ckpt: Path):
    from glm_core.checkpoint import load_model

    return load_model(chatglm_ckpt, dtype="fp32")


def _export(ckpt: Path, out: Path, *extra: str) -> Path:
    from export.onnx import main

    assert main(["--ckpt", str(ckpt), "--out", str(out), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def chatglm_onnx(chatglm_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default export (buffer cache layout on the CPU), validated."""
    return _export(chatglm_ckpt, tmp_path_factory.mktemp("onnx") / "chatglm-onnx")


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / np.abs(ref).max())


ROWS = [
    [11, 12, 13, 14, 15, GMASK, SOP, 21, 22, 23],
    [31, 32, GMASK, SOP, 41, 42, 43, 44, 45, 46],
    [51, 52, MASK, 53, 54, 55, 56, SOP, 61, 62],
]


def _prefill_then_decode(step, steps: int = 4) -> list[np.ndarray]:
    """Prefill the mixed-sep batch, then feed a fixed token per row at (mask position, next block position)."""
    lay = [chatglm_layout(r) for r in ROWS]
    ids = np.asarray(ROWS, dtype=np.int64)
    pos = np.asarray([[p, b] for p, b, _ in lay], dtype=np.int64)
    sep = np.asarray([s for *_, s in lay], dtype=np.int64)
    logits, past = step.step(ids, pos, sep, None)
    out = [logits]
    for k in range(steps):
        tok = np.full((len(ROWS), 1), 70 + k, dtype=np.int64)
        blocks = [len(r) + k - s + 1 for r, (*_, s) in zip(ROWS, lay, strict=True)]
        step_pos = np.asarray([[[p[-1]], [b]] for (p, _, _), b in zip(lay, blocks, strict=True)], dtype=np.int64)
        logits, past = step.step(tok, step_pos, np.zeros(len(ROWS), dtype=np.int64), past)
        out.append(logits)
    return out


def test_graph_has_the_glm_signature_and_no_mask_input(chatglm_onnx: Path) -> None:
    graph = onnx.load(str(chatglm_onnx / "model.onnx"), load_external_data=False).graph
    names = [i.name for i in graph.input]
    assert names[:3] == ["input_ids", "position_ids", "sep"]
    assert not any("mask" in n for n in names)
    assert [o.name for o in graph.output][:3] == ["logits", "present.0.key", "present.0.value"]
    assert len(graph.output) == 1 + 2 * L
    cfg = json.loads((chatglm_onnx / "glm_config.json").read_text())
    assert cfg["architecture"] == "chatglm" and cfg["mask"]["masked_value"] == -10000.0
    assert cfg["kv_cache"] == "buffer"


def test_export_validated_against_torch(chatglm_onnx: Path) -> None:
    report = json.loads((chatglm_onnx / "export_report.json").read_text())
    validation = report["validation"]
    assert validation["passed"] and validation["failures"] == []
    assert validation["tolerance"]["atol"] == 1e-4  # the fp32 gate, at the production shapes of the GLM export
    assert validation["top1_agreement"] == 1.0 and validation["generation"]["identical"]
    assert all(case["logits"]["ok"] for case in validation["grid"])


def test_onnx_backend_matches_torch_on_prefill_and_decode(chatglm_onnx: Path, chatglm_torch) -> None:
    from glm_core.step import TorchStep

    ours = _prefill_then_decode(OnnxBackend(chatglm_onnx))
    ref = _prefill_then_decode(TorchStep(chatglm_torch))
    for got, want in zip(ours, ref, strict=True):
        assert _rel(got, want) <= 1e-5


@pytest.mark.slow
def test_concat_layout_export_matches_torch(chatglm_ckpt: Path, chatglm_torch, tmp_path: Path) -> None:
    from glm_core.step import TorchStep

    out = _export(chatglm_ckpt, tmp_path / "concat", "--kv-cache", "concat", "--no-validate")
    assert json.loads((out / "glm_config.json").read_text())["kv_cache"] == "concat"
    ours = _prefill_then_decode(OnnxBackend(out))
    ref = _prefill_then_decode(TorchStep(chatglm_torch))
    for got, want in zip(ours, ref, strict=True):
        assert _rel(got, want) <= 1e-5


@pytest.fixture(scope="module")
def init_scale_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same config at the model's own init scale (std 0.02): logits of O(0.1), as the GLM export tests use.

    The passes' figures are compared at the scale GLM's export tests use; the aggressive fixture weights above
    (logits of O(10)) are for the fp32 checks (the fp16 self-consistency bound is in units of the logits' scale,
    tests/export/test_quality_gates.py).
    """
    import torch

    from glm_core.checkpoint import save_model
    from glm_core.config import ChatGLMConfig
    from glm_core.model import build_model

    config = ChatGLMConfig.from_dict(hub_config(max_sequence_length=128))
    directory = tmp_path_factory.mktemp("init") / "chatglm-init"
    save_model(build_model(config, seed=0), directory, dtype=torch.float16)
    return directory


@pytest.mark.slow
@pytest.mark.parametrize(("flags", "final"), [(("--dtype", "fp16"), "fp16"), (("--quantize", "int4"), "int4")])
def test_fp16_and_int4_passes_run_and_validate(init_scale_ckpt: Path, tmp_path: Path, flags, final: str) -> None:
    out = _export(init_scale_ckpt, tmp_path / final, *flags)
    validation = json.loads((out / "export_report.json").read_text())["validation"]
    assert validation["passed"] and validation["final"] == final
    assert [s["after"] for s in validation["stages"]] == ["trace", final]
    if final == "int4":
        graph = onnx.load(str(out / "model.onnx")).graph
        # qkv, dense, h->4h, 4h->h per layer + the untied LM head
        assert sum(n.op_type == "MatMulNBits" for n in graph.node) == 4 * L + 1


def test_fused_attention_is_refused_in_one_line(chatglm_ckpt: Path, tmp_path: Path, capsys) -> None:
    from export.onnx import main

    out = tmp_path / "ort"
    assert main(["--ckpt", str(chatglm_ckpt), "--out", str(out), "--optimize", "ort", "--kv-cache", "concat"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--optimize ort does not apply to ChatGLM" in err[0]
    assert not out.exists()
