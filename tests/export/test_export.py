"""The ONNX exporter and the ONNX Runtime backend on a tiny random GLM (spec onnx_export §6).

References: an independent float64 numpy GLM (tests/glm_reference_f64.py) for the graph's numbers and mask
semantics, the PyTorch model for generation, and the graph file itself for its interface.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from evaluation.backends.onnx import OnnxBackend, check_external_data
from glm_core.errors import ExportError, InputError
from glm_core.outputs import MARKER
from tests.export.conftest import TINY_EXPORT
from tests.glm_reference_f64 import glm_forward_f64

V = TINY_EXPORT["vocab_size"]
L = TINY_EXPORT["num_layers"]
H = TINY_EXPORT["num_attention_heads"]
D = TINY_EXPORT["hidden_size"] // H
# fp32 graph vs float64 math: the export's own gate (spec §4.1) is atol 1e-4 + rtol 1e-4 against fp32 torch.
ATOL, RTOL = 1e-4, 1e-4


# ------------------------------------------------------------------------------------------------ helpers
def f64_weights(ckpt: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(ckpt / "model.safetensors"))


def positions(batch: int, start: int, length: int) -> np.ndarray:
    pos = np.arange(start, start + length)
    return np.repeat(np.stack([pos, np.zeros_like(pos)])[None], batch, axis=0).astype(np.int64)  # [B, 2, S]


def chunk_mask(prefix_sep: np.ndarray, P: int, chunk_sep: np.ndarray, S: int) -> np.ndarray:
    """0/1 mask [B, P+S, P+S] of a prefix of P tokens (its own sep) followed by a chunk with a chunk-relative sep.

    Written from DESIGN.md's rule: chunk query t sees key j iff j < P or j-P < sep or j-P <= t.
    """
    B, T = len(chunk_sep), P + S
    m = np.zeros((B, T, T))
    for b in range(B):
        for i in range(T):
            for j in range(T):
                if i < P:
                    m[b, i, j] = float(j < P and (j < prefix_sep[b] or j <= i))
                else:
                    m[b, i, j] = float(j < P or (j - P) < chunk_sep[b] or j <= i)
    return m


def assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    diff = np.abs(np.asarray(got, np.float64) - ref)
    assert (diff <= ATOL + RTOL * np.abs(ref)).all(), f"max |Δ| {diff.max():.3g}"


# ------------------------------------------------------------------------------------------------ the directory
def test_model_dir_holds_graph_config_and_report_only(exported_dir: Path) -> None:
    names = sorted(p.name for p in exported_dir.iterdir())
    assert names == [MARKER, "export_report.json", "glm_config.json", "model.onnx"]  # MARKER: --overwrite's proof
    assert [p.name for p in exported_dir.parent.iterdir()] == [exported_dir.name]  # no staging leftovers


def test_graph_inputs_have_no_mask_and_symbolic_batch_seq_past(exported_dir: Path) -> None:
    graph = onnx.load(str(exported_dir / "model.onnx"), load_external_data=False).graph

    def dims(value: onnx.ValueInfoProto) -> list[object]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = {v.name: v for v in graph.input}
    past = [f"past_key_values.{i}.{k}" for i in range(L) for k in ("key", "value")]
    # the default (--kv-cache auto on CPU) is the buffer layout: a scalar write position; tests/export/test_kv_cache.py
    # checks the concat layout's interface
    assert list(inputs) == ["input_ids", "position_ids", "sep", "past_length", *past]
    assert (
        dims(inputs["past_length"]) == [] and inputs["past_length"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    )
    assert not any("mask" in name for name in inputs)
    assert dims(inputs["input_ids"]) == ["batch", "seq"]
    assert dims(inputs["position_ids"]) == ["batch", 2, "seq"]
    assert dims(inputs["sep"]) == ["batch"]
    for name in past:
        assert dims(inputs[name]) == ["batch", H, "past", D]
        assert inputs[name].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    for name in ("input_ids", "position_ids", "sep"):
        assert inputs[name].type.tensor_type.elem_type == onnx.TensorProto.INT64
    logits = graph.output[0]
    assert logits.name == "logits" and dims(logits) == ["batch", "seq", V]
    assert logits.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.name for o in graph.output[1:]] == [f"present.{i}.{k}" for i in range(L) for k in ("key", "value")]
    assert all(dims(o) == ["batch", H, "seq", D] for o in graph.output[1:])  # the chunk's rows only


def test_mask_is_built_once_for_all_layers(exported_dir: Path) -> None:
    # spec §3.1: Range, Range, LessOrEqual, Less, Or, Where once per model, not per layer; the buffer layout adds
    # one Less (buffer row < past_length)
    nodes = onnx.load(str(exported_dir / "model.onnx")).graph.node
    counts = {op: sum(n.op_type == op for n in nodes) for op in ("Range", "LessOrEqual", "Less", "Or", "Where")}
    assert counts == {"Range": 2, "LessOrEqual": 1, "Less": 2, "Or": 1, "Where": 1}


def test_lm_head_is_an_untied_matmul_initializer(exported_dir: Path) -> None:
    graph = onnx.load(str(exported_dir / "model.onnx")).graph
    inits = {t.name: list(t.dims) for t in graph.initializer}
    assert inits["lm_head"] == [TINY_EXPORT["hidden_size"], V]
    consumers = [n.op_type for n in graph.node if "lm_head" in n.input]
    assert consumers == ["MatMul"]


def test_glm_config_records_the_contract(exported_dir: Path) -> None:
    cfg = json.loads((exported_dir / "glm_config.json").read_text())
    assert (cfg["num_layers"], cfg["num_attention_heads"], cfg["head_dim"], cfg["vocab_size"]) == (L, H, D, V)
    assert cfg["dtype"] == "fp32" and cfg["kv_dtype"] == "float32" and cfg["logits_dtype"] == "float32"
    assert cfg["opset"] == 20 and cfg["external_data"] == []
    assert cfg["mask"]["rule"] == "j < P or (j - P) < sep[b] or (j - P) <= t"
    assert cfg["special_tokens"] is None and cfg["tokenizer"] is False  # sentencepiece ids need the tokenizer
    backend = OnnxBackend(exported_dir)
    assert [i["name"] for i in cfg["inputs"]] == [i.name for i in backend.session.get_inputs()]


def test_export_report_has_every_validation_figure(exported_dir: Path) -> None:
    report = json.loads((exported_dir / "export_report.json").read_text())
    validation = report["validation"]
    assert validation["passed"] and validation["checker"] == "ok"
    cases = {(c["batch"], c["seq"], tuple(c["seps"]), c["past"]) for c in validation["grid"]}
    assert (1, 1, (0,), 0) in cases  # S = 1, P = 0
    assert any(0 in s and S in s and b >= 2 for b, S, s, _ in cases)  # causal + bidirectional rows in one batch
    assert any(p > 0 and S == 1 for _, S, _, p in cases)  # a decode step
    assert all(c["logits"]["max_abs"] <= 1e-4 and c["logits"]["normalised"] <= 1e-5 for c in validation["grid"])
    assert validation["incremental"]["ok"] and validation["generation"]["identical"]
    assert [s["after"] for s in validation["stages"]] == ["trace"] and validation["final"] == "trace"  # no passes
    assert {"torch", "onnx", "onnxruntime", "onnxscript"} <= set(report["versions"])
    # the loaded model (the only copy of the weights) was gone before the validation session opened
    assert report["weights_freed_before_validation"] is True
    resident = report["resident_bytes_at_validation"]  # what the exporter keeps beside the validation process
    assert 0 < resident["anonymous"] < resident["rss"]
    # the validation process's peak per part of the checks (Linux /proc)
    peaks = validation["memory_peaks_bytes"]
    assert list(peaks) == ["session and checker", "grid", "incremental", "generation", "perplexity", "cache check"]
    assert all(peak > 0 for peak in peaks.values())
    assert validation["skipped_stages"] == [] and validation["prepacking"] and validation["memory_arena"]
    assert report["files"]["model.onnx"] > 0 and "trace" in report["timings_s"]


# ------------------------------------------------------------------------------------------------ numbers
CASES = [
    ((0,), 1, 0),  # one token, empty cache
    ((0, 6, 2), 6, 0),  # causal, bidirectional, split: B = 3
    ((0, 1), 1, 5),  # decode step after a cache (chunk sep 0, or 1 = the token itself)
    ((3, 0, 5, 1), 5, 3),  # a chunk with its own sep after a cache, B = 4
]


@pytest.mark.parametrize(("seps", "S", "P"), CASES)
def test_onnx_matches_float64_reference(
    exported_dir: Path, tiny_ckpt: Path, seps: tuple[int, ...], S: int, P: int
) -> None:
    rng = np.random.default_rng(S * 10 + P)
    B = len(seps)
    backend = OnnxBackend(exported_dir)
    prefix = rng.integers(0, V, (B, P))
    chunk = rng.integers(0, V, (B, S))
    prefix_sep = np.full(B, P // 2, dtype=np.int64)
    past = None
    if P:
        _, past = backend.step(prefix, positions(B, 0, P), prefix_sep, None)
    logits, present = backend.step(chunk, positions(B, P, S), np.asarray(seps), past)

    full = np.concatenate([prefix, chunk], axis=1)
    mask = chunk_mask(prefix_sep, P, np.asarray(seps), S)
    ref, _ = glm_forward_f64(f64_weights(tiny_ckpt), L, H, full, positions(B, 0, P + S), mask)
    assert logits.dtype == np.float32 and logits.shape == (B, S, V)
    assert_close(logits, ref[:, P:])
    assert backend.past_length(present) == P + S and len(present) == 2 * L


def test_prefill_then_decode_equals_one_full_pass(exported_dir: Path) -> None:
    rng = np.random.default_rng(7)
    backend = OnnxBackend(exported_dir)
    ids, seps, k = rng.integers(0, V, (2, 11)), np.array([4, 6]), 6
    full, _ = backend.step(ids, positions(2, 0, 11), seps, None)
    chunks, past = [], None
    logits, past = backend.step(ids[:, :k], positions(2, 0, k), seps, None)
    chunks.append(logits)
    for t in range(k, 11):
        logits, past = backend.step(ids[:, t : t + 1], positions(2, t, 1), np.zeros(2, np.int64), past)
        chunks.append(logits)
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), full, atol=ATOL, rtol=RTOL)


def test_greedy_blank_infilling_matches_torch(exported_dir: Path, tiny_torch_model) -> None:
    from export.validate import validation_special_tokens
    from glm_core.generation import GenerationConfig, generate
    from glm_core.layout import build_generation_prompt
    from glm_core.step import TorchStep

    tokens = validation_special_tokens(None, V)
    text = [5, 17, 42, tokens.mask, 99, 3, 250, tokens.mask, 8]
    prompt = build_generation_prompt(text, tokens)
    config = GenerationConfig(max_new_tokens=8)
    ours = generate(OnnxBackend(exported_dir), prompt, tokens, config)
    theirs = generate(TorchStep(tiny_torch_model), prompt, tokens, config)
    assert ours.blanks == theirs.blanks and ours.sequence == theirs.sequence
    assert sum(len(b) for b in ours.blanks) > 0


def test_reorder_past_gathers_batch_rows(exported_dir: Path) -> None:
    rng = np.random.default_rng(3)
    backend = OnnxBackend(exported_dir)
    ids = rng.integers(0, V, (3, 5))
    _, past = backend.step(ids, positions(3, 0, 5), np.array([5, 2, 0]), None)
    index = np.array([2, 0, 2, 1])
    reordered = backend.reorder_past(past, index)
    for before, after in zip(past, reordered, strict=True):
        np.testing.assert_array_equal(after.numpy(), before.numpy()[index])
    nxt = rng.integers(0, V, (3, 1))
    direct, _ = backend.step(nxt, positions(3, 5, 1), np.zeros(3), past)
    gathered, _ = backend.step(nxt[index], positions(4, 5, 1), np.zeros(4), reordered)
    np.testing.assert_allclose(gathered, direct[index], atol=1e-6)


def test_step_does_not_modify_the_past_it_is_given(exported_dir: Path) -> None:
    backend = OnnxBackend(exported_dir)
    _, past = backend.step(np.array([[1, 2, 3]]), positions(1, 0, 3), np.array([2]), None)
    snapshot = [p.numpy().copy() for p in past]
    _, present = backend.step(np.array([[4]]), positions(1, 3, 1), np.array([0]), past)
    assert all(np.array_equal(p.numpy(), s) for p, s in zip(past, snapshot, strict=True))
    assert (backend.past_length(None), backend.past_length(past), backend.past_length(present)) == (0, 3, 4)


@pytest.mark.parametrize(
    ("ids", "pos", "sep", "message"),
    [
        ([[1, 2]], positions(1, 0, 2), [3], "sep must lie in"),
        ([[1, V]], positions(1, 0, 2), [0], "input_ids must lie in"),
        ([[1, 2]], positions(1, 0, 3), [0], "position_ids must be"),
        ([[1, 2]], positions(1, TINY_EXPORT["max_sequence_length"], 2), [0], "position ids must lie in"),
    ],
)
def test_backend_rejects_inputs_outside_the_contract(exported_dir: Path, ids, pos, sep, message: str) -> None:
    with pytest.raises(InputError, match=message):
        OnnxBackend(exported_dir).step(np.asarray(ids), pos, np.asarray(sep), None)


# ------------------------------------------------------------------------------------------------ validation
def test_validation_catches_an_off_by_one_mask(exported_dir: Path, tiny_torch_model, tmp_path: Path) -> None:
    from export.validate import make_reference, run_checks

    bad = tmp_path / "bad"
    shutil.copytree(exported_dir, bad)
    model = onnx.load(str(bad / "model.onnx"))
    # the prefix rule's Less (the buffer layout's other Less compares buffer rows with past_length)
    (less,) = [n for n in model.graph.node if n.op_type == "Less" and "past_length" not in n.input]
    less.op_type = "LessOrEqual"  # prefix rule j-P < sep becomes j-P <= sep: one key too many
    onnx.save(model, str(bad / "model.onnx"))
    reference = tmp_path / "reference.npz"
    make_reference(tiny_torch_model, reference)
    assert run_checks(exported_dir, reference)["passed"]
    report = run_checks(bad, reference)
    assert not report["passed"]
    assert any(f.startswith("grid") and "logits" in f for f in report["failures"])


# ------------------------------------------------------------------------------------------------ variants
def test_fused_fp16_export_validates(tiny_ckpt: Path, tmp_path: Path) -> None:
    from export.onnx import main

    out = tmp_path / "fp16"
    assert main(["--ckpt", str(tiny_ckpt), "--out", str(out), "--dtype", "fp16", "--optimize", "ort"]) == 0
    model = onnx.load(str(out / "model.onnx"))
    assert sum(n.op_type == "MultiHeadAttention" for n in model.graph.node) == L
    cfg = json.loads((out / "glm_config.json").read_text())
    assert cfg["kv_dtype"] == "float16" and cfg["optimize"] == "ort"
    report = json.loads((out / "export_report.json").read_text())
    assert report["validation"]["passed"] and report["validation"]["tolerance"]["atol"] == 5e-2
    # spec §6: each pass re-validated, with the gate of the graph's precision at that point
    stages = report["validation"]["stages"]
    assert [s["after"] for s in stages] == ["trace", "fusion", "fp16"] and report["validation"]["final"] == "fp16"
    assert [s["dtype"] for s in stages] == ["fp32", "fp32", "fp16"]
    assert [s["tolerance"]["atol"] for s in stages] == [1e-4, 1e-4, 5e-2]
    assert all(s["passed"] and s["checks"] == "full" for s in stages)
    assert stages[-1]["grid"] == report["validation"]["grid"]  # the top level is the shipped model's figures
    logits, present = OnnxBackend(out).step(np.array([[1, 2, 3]]), positions(1, 0, 3), np.array([1]), None)
    assert logits.dtype == np.float32 and present[0].numpy().dtype == np.float16


def test_int4_export_quantizes_every_weight_matmul_including_the_head(tiny_ckpt: Path, tmp_path: Path) -> None:
    from export.onnx import main

    out = tmp_path / "int4"
    assert main(["--ckpt", str(tiny_ckpt), "--out", str(out), "--quantize", "int4"]) == 0
    graph = onnx.load(str(out / "model.onnx")).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 4 * L + 1  # qkv, dense, h->4h, 4h->h per layer + the LM head
    inits = {t.name for t in graph.initializer}
    assert not [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    validation = json.loads((out / "export_report.json").read_text())["validation"]
    trace, int4 = validation["stages"]
    assert (trace["after"], trace["quantize"], trace["tolerance"]["atol"]) == ("trace", "none", 1e-4)
    assert (int4["after"], int4["quantize"], int4["tolerance"]) == ("int4", "int4", None)
    assert trace["passed"] and int4["passed"] and int4["quant_gate"] == validation["quant_gate"]
    # random weights and no text in the model's domain: the behaviour gates say they did not judge, and the graph
    # is still held to agree with itself (incremental decoding vs its own full pass)
    assert validation["quality"]["gated"] is False and validation["quant_gate"].startswith("not gated: no text")
    assert "confident_top1" not in validation
    assert validation["incremental"]["self"]["ok"] and validation["decode"]["self"]["ok"]


def test_confident_top1_ignores_near_ties_only() -> None:
    from export.validate import confident_top1

    ref = np.log(np.array([[0.70, 0.20, 0.10], [0.34, 0.33, 0.33], [0.10, 0.80, 0.10]]))
    flipped_tie = ref[[0, 1, 2]].copy()
    flipped_tie[1] = np.log([0.33, 0.34, 0.33])  # the undecided row changes its argmax
    assert confident_top1(ref, flipped_tie) == (1.0, 2)
    flipped_decided = ref.copy()
    flipped_decided[0] = np.log([0.2, 0.7, 0.1])  # a decided row changes its argmax
    assert confident_top1(ref, flipped_decided) == (0.5, 2)


def test_int8_pass_quantizes_weight_matmuls(exported_dir: Path) -> None:
    from export.passes.quantize import quantize_int8

    model, figures = quantize_int8(onnx.load(str(exported_dir / "model.onnx")), {})  # weights loaded: none pending
    assert figures == {"matmuls_with_weights": 4 * L + 1, "MatMulInteger": 4 * L + 1}
    onnx.checker.check_model(model)


@pytest.fixture(scope="module")
def external_dir(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.onnx import main

    out = tmp_path_factory.mktemp("ext") / "ext"
    assert main(["--ckpt", str(tiny_ckpt), "--out", str(out), "--external-data", "always", "--no-validate"]) == 0
    return out


def test_external_data_always_stays_inside_the_directory(external_dir: Path) -> None:
    out = external_dir
    assert check_external_data(out / "model.onnx") == ["model.onnx.data"]
    assert json.loads((out / "glm_config.json").read_text())["external_data"] == ["model.onnx.data"]
    assert (out / "model.onnx").stat().st_size < (out / "model.onnx.data").stat().st_size
    logits, _ = OnnxBackend(out).step(np.array([[5, 6]]), positions(1, 0, 2), np.array([1]), None)
    assert np.isfinite(logits).all()


# ------------------------------------------------------------------------------------------------ bad inputs
def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if line.startswith("error:")]
    assert len(err) == 1
    return err[0]


def test_missing_checkpoint_is_one_line_and_leaves_nothing(tmp_path: Path, capsys) -> None:
    from export.onnx import main

    out = tmp_path / "out"
    assert main(["--ckpt", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "does not exist" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_unknown_preset_is_refused(tmp_path: Path, capsys) -> None:
    from export.onnx import main

    assert main(["--ckpt", "glm-nonexistent", "--out", str(tmp_path / "out")]) == 2
    assert "preset" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_existing_out_needs_overwrite(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    from export.onnx import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["--ckpt", str(tiny_ckpt), "--out", str(out)]) == 2
    assert "--overwrite" in _one_error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_unwritable_out_is_refused(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    from export.onnx import main

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["--ckpt", str(tiny_ckpt), "--out", str(blocker / "out")]) == 2
    assert "does not exist" in _one_error_line(capsys)


def test_unknown_opset_is_refused(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    from export.onnx import main

    assert main(["--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "out"), "--opset", "11"]) == 2
    assert "unknown opset 11" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_onnxruntime_is_refused(tiny_ckpt: Path, tmp_path: Path, capsys, device: str) -> None:
    import onnxruntime

    from export.onnx import main

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    assert main(["--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "out"), "--device", device]) == 2
    assert "onnxruntime-gpu" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_malformed_device_is_refused(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    from export.onnx import main

    assert main(["--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "out"), "--device", "gpu1"]) == 2
    assert "--device: device 'gpu1' is not supported; expected 'cpu', 'cuda' or 'cuda:N'" in _one_error_line(capsys)


def test_failed_validation_exits_2_and_leaves_nothing(tiny_ckpt: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import export.validate
    from export.onnx import main

    def failing(*args, **kwargs):
        return {"passed": False, "failures": ["grid B=1: logits out of tolerance"]}

    monkeypatch.setattr(export.validate, "validate_in_subprocess", failing)
    assert main(["--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "out")]) == 2
    assert "validation failed after trace (the exported graph, before any pass): grid B=1" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("location", ["../outside.data", "/etc/hostname"])
def test_external_data_outside_the_model_dir_is_refused(
    exported_dir: Path, tmp_path: Path, location: str, capsys
) -> None:
    from export.validate import main as validate_main

    bad = tmp_path / "bad"
    shutil.copytree(exported_dir, bad)
    model = onnx.load(str(bad / "model.onnx"))
    tensor = next(t for t in model.graph.initializer if t.name == "lm_head")
    (tmp_path / "outside.data").write_bytes(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    onnx.save(model, str(bad / "model.onnx"))
    with pytest.raises(ExportError, match="outside the model directory"):
        OnnxBackend(bad)
    assert (
        validate_main(
            ["--model-dir", str(bad), "--reference", str(tmp_path / "r.npz"), "--report", str(tmp_path / "r.json")]
        )
        == 2
    )
    assert "outside the model directory" in _one_error_line(capsys)
    assert not (tmp_path / "r.json").exists()


def test_help_shows_an_example(capsys) -> None:
    from export.onnx import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "python -m export.onnx --ckpt glm-tiny" in capsys.readouterr().out


def test_truncated_model_file_is_a_clear_error(exported_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(exported_dir, bad)
    data = (bad / "model.onnx").read_bytes()
    (bad / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match="model.onnx"):
        OnnxBackend(bad)


def test_inline_writer_streams_external_data_into_one_equivalent_file(external_dir: Path, tmp_path: Path) -> None:
    from export.model_dir import inline_external_data

    ext = external_dir
    inline_external_data(ext / "model.onnx", tmp_path / "inline.onnx")
    a = onnx.load(str(ext / "model.onnx"))
    b = onnx.load(str(tmp_path / "inline.onnx"))
    onnx.checker.check_model(b, full_check=True)
    assert [t.name for t in a.graph.initializer] == [t.name for t in b.graph.initializer]
    for x, y in zip(a.graph.initializer, b.graph.initializer, strict=True):
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(x), onnx.numpy_helper.to_array(y))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]


def test_preset_without_weights_needs_random_weights_flag(tmp_path: Path, capsys) -> None:
    from export.onnx import main

    assert main(["--ckpt", "glm-large", "--out", str(tmp_path / "out")]) == 2
    assert "random" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_shipped_glm_tiny_exports_with_its_tokenizer(tmp_path: Path) -> None:
    from export.onnx import main
    from glm_core.checkpoint import SHIPPED_PRESETS
    from glm_core.tokenizer import GLMTokenizer

    source = SHIPPED_PRESETS["glm-tiny"]
    if not (source / "model.safetensors").is_file():
        pytest.skip("glm-tiny assets are not in this checkout")
    out = tmp_path / "glm-tiny-onnx"
    assert main(["--ckpt", "glm-tiny", "--out", str(out)]) == 0
    original = GLMTokenizer.from_pretrained(source)
    backend = OnnxBackend(out)
    cfg = backend.config
    assert cfg["tokenizer"] and cfg["model_name"] == "glm-tiny"
    assert backend.special_tokens == original.special
    text = "the cat sat on the mat"
    assert backend.tokenizer.encode(text) == original.encode(text)
    from evaluation.backends import load_backend

    loaded = load_backend("onnx", out)
    assert loaded.special == original.special and loaded.max_length == cfg["max_sequence_length"]
