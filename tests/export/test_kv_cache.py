"""The two K/V cache layouts of the ONNX export (``--kv-cache buffer|concat``) and the fused attention's cache.

Reference: the PyTorch model stepped through the same calls (glm_core.step.TorchStep), and the concat layout,
whose ``present = Concat(past, new)`` is the cache by definition. The buffer layout must give the same logits and
the same cache contents through prefill, chunks and decode steps with mixed seps at batch > 1, beam reordering,
branching from one past twice and buffer growth, and refuse a cache beyond its capacity.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from evaluation.backends import kv_buffer
from evaluation.backends.onnx import OnnxBackend
from glm_core.errors import ConfigError, InputError
from tests.export.conftest import TINY_EXPORT

V = TINY_EXPORT["vocab_size"]
L = TINY_EXPORT["num_layers"]
# fp32 graphs vs fp32 torch: the export's own fp32 gate (spec onnx_export §4.1)
ATOL, RTOL = 1e-4, 1e-4


def positions(batch: int, start: int, length: int, block: int = 0) -> np.ndarray:
    pos = np.arange(start, start + length)
    rows = np.stack([pos, np.full_like(pos, block)])
    return np.repeat(rows[None], batch, axis=0).astype(np.int64)  # [B, 2, S]


def calls(batch: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Prefill (seps 0, S, in between), a 3-token chunk with mixed seps, then decode steps with sep 0/1 mixed."""
    out = [(rng.integers(0, V, (batch, 9)), positions(batch, 0, 9), np.array([0, 9, 4][:batch]))]
    out.append((rng.integers(0, V, (batch, 3)), positions(batch, 8, 3, 1), np.array([3, 0, 1][:batch])))
    for t in range(6):
        out.append((rng.integers(0, V, (batch, 1)), positions(batch, 8, 1, 4 + t), np.array([1, 0, 1][:batch])))
    return out


def run(backend, sequence, past=None):
    logits = []
    for ids, pos, sep in sequence:
        out, past = backend.step(ids, pos, sep, past)
        logits.append(np.asarray(out, np.float64))
    return logits, past


def host(past) -> list[np.ndarray]:
    if isinstance(past, tuple):  # TorchStep: ((k, v), ...)
        return [t.numpy() for layer in past for t in layer]
    return [np.asarray(p.numpy()) for p in past]


def assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(ref, np.float64))
    assert (diff <= ATOL + RTOL * np.abs(ref)).all(), f"max |Δ| {diff.max():.3g}"


# ------------------------------------------------------------------------------------------------ the layouts
def test_glm_config_and_graph_record_each_layout(exported_dir: Path, concat_dir: Path) -> None:
    buffer_cfg = json.loads((exported_dir / "glm_config.json").read_text())
    concat_cfg = json.loads((concat_dir / "glm_config.json").read_text())
    assert buffer_cfg["kv_cache"] == "buffer" and concat_cfg["kv_cache"] == "concat"  # --kv-cache auto on CPU
    graph = onnx.load(str(exported_dir / "model.onnx"), load_external_data=False).graph
    assert [i.name for i in graph.input][:4] == ["input_ids", "position_ids", "sep", "past_length"]
    assert [i["name"] for i in buffer_cfg["inputs"]] == [i.name for i in graph.input]
    # the buffer graph never concatenates a cache: every Concat is of scores/masks, not of a past input
    pasts = {i.name for i in graph.input if i.name.startswith("past_key_values.")}
    assert not [n for n in graph.node if n.op_type == "Concat" and pasts & set(n.input)]
    report = json.loads((concat_dir / "export_report.json").read_text())
    assert report["validation"]["passed"] and report["validation"]["generation"]["identical"]


def test_concat_layout_interface_and_mask_built_once(concat_dir: Path) -> None:
    graph = onnx.load(str(concat_dir / "model.onnx")).graph

    def dims(value: onnx.ValueInfoProto) -> list[object]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    H, D = TINY_EXPORT["num_attention_heads"], TINY_EXPORT["hidden_size"] // TINY_EXPORT["num_attention_heads"]
    past = [f"past_key_values.{i}.{k}" for i in range(L) for k in ("key", "value")]
    assert [i.name for i in graph.input] == ["input_ids", "position_ids", "sep", *past]
    assert all(dims(i) == ["batch", H, "past", D] for i in graph.input[3:])
    for out in graph.output[1:]:  # the exporter spells the sum either way (export/passes/fusion.py)
        assert dims(out)[:2] == ["batch", H] and dims(out)[3] == D and dims(out)[2] in ("past + seq", "seq + past")
    counts = {op: sum(n.op_type == op for n in graph.node) for op in ("Range", "LessOrEqual", "Less", "Or", "Where")}
    assert counts == {"Range": 2, "LessOrEqual": 1, "Less": 1, "Or": 1, "Where": 1}  # spec §3.1, once per model
    assert not [n for n in graph.node if n.op_type == "Div"]  # 1/sqrt(d) scales Q, never the P+S rows of K


def test_buffer_equals_concat_and_torch_over_prefill_chunk_and_decode(
    exported_dir: Path, concat_dir: Path, tiny_torch_model
) -> None:
    from glm_core.step import TorchStep

    sequence = calls(3, np.random.default_rng(11))
    buffered, buffer_past = run(OnnxBackend(exported_dir), sequence)
    concat, concat_past = run(OnnxBackend(concat_dir), sequence)
    torch_logits, torch_past = run(TorchStep(tiny_torch_model), sequence)
    assert isinstance(buffer_past, kv_buffer.BufferedPast) and not isinstance(concat_past, kv_buffer.BufferedPast)
    for got, other, ref in zip(buffered, concat, torch_logits, strict=True):
        assert_close(got, ref)
        assert_close(other, ref)
    assert OnnxBackend.past_length(buffer_past) == OnnxBackend.past_length(concat_past) == 9 + 3 + 6
    for got, other, ref in zip(host(buffer_past), host(concat_past), host(torch_past), strict=True):
        assert got.shape == ref.shape == (3, TINY_EXPORT["num_attention_heads"], 18, ref.shape[-1])
        assert_close(got, ref)
        assert_close(other, ref)


def test_beam_reorder_on_the_buffer_layout(exported_dir: Path, tiny_torch_model) -> None:
    from glm_core.step import TorchStep

    rng = np.random.default_rng(5)
    backend, ref = OnnxBackend(exported_dir), TorchStep(tiny_torch_model)
    prefill, *rest = calls(3, rng)
    _, past = backend.step(*prefill, None)
    _, ref_past = ref.step(*prefill, None)
    index = np.array([2, 0, 0, 1])
    past, ref_past = backend.reorder_past(past, index), ref.reorder_past(ref_past, index)
    assert backend.past_length(past) == 9
    for ids, pos, _ in rest[2:5]:  # decode steps on 4 beams, reordered again between them
        ids4, pos4 = np.concatenate([ids, ids[:1]]), np.concatenate([pos, pos[:1]])
        logits, past = backend.step(ids4, pos4, np.zeros(4, np.int64), past)
        ref_logits, ref_past = ref.step(ids4, pos4, np.zeros(4, np.int64), ref_past)
        assert_close(logits, ref_logits)
        index = np.array([1, 1, 3, 0])
        past, ref_past = backend.reorder_past(past, index), ref.reorder_past(ref_past, index)
    for got, want in zip(host(past), host(ref_past), strict=True):
        assert_close(got, want)


def test_beam_search_generation_is_identical_on_both_layouts(
    exported_dir: Path, concat_dir: Path, tiny_torch_model
) -> None:
    from export.validate import validation_special_tokens
    from glm_core.generation import GenerationConfig, generate
    from glm_core.layout import build_generation_prompt
    from glm_core.step import TorchStep

    tokens = validation_special_tokens(None, V)
    prompt = build_generation_prompt([5, 17, 42, tokens.mask, 99, 3, 250, 8], tokens)
    config = GenerationConfig(max_new_tokens=6, strategy="beam", num_beams=3)
    results = [generate(b, prompt, tokens, config) for b in (OnnxBackend(exported_dir), OnnxBackend(concat_dir))]
    theirs = generate(TorchStep(tiny_torch_model), prompt, tokens, config)
    for ours in results:
        assert ours.blanks == theirs.blanks and ours.sequence == theirs.sequence
    assert sum(len(b) for b in theirs.blanks) > 0


def test_a_past_fed_twice_keeps_its_meaning(exported_dir: Path, concat_dir: Path) -> None:
    """Two steps from one past write the same buffer row; the second must not change the first's present."""
    rng = np.random.default_rng(9)
    prefill, _, a, b, c = calls(2, rng)[:5]
    sequences = {}
    for name, directory in (("buffer", exported_dir), ("concat", concat_dir)):
        backend = OnnxBackend(directory)
        _, past = backend.step(*prefill, None)
        _, first = backend.step(*a, past)
        _, second = backend.step(*b, past)  # a branch from the same past
        after_first, _ = backend.step(*c, first)
        after_second, _ = backend.step(*c, second)
        sequences[name] = [after_first, after_second, *host(first), *host(past)]
    for got, want in zip(sequences["buffer"], sequences["concat"], strict=True):
        assert_close(got, want)


def test_steps_from_one_past_in_two_threads_do_not_share_rows(exported_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(12)
    prefill, _, *steps = calls(2, rng)
    backend = OnnxBackend(exported_dir)
    _, past = backend.step(*prefill, None)
    expected = [host(OnnxBackend(exported_dir).step(*s, past)[1]) for s in steps]  # one at a time
    for _ in range(3):
        with ThreadPoolExecutor(len(steps)) as pool:
            presents = list(pool.map(lambda s: backend.step(*s, past)[1], steps))
        for got, want in zip(presents, expected, strict=True):
            for g, w in zip(host(got), want, strict=True):
                assert_close(g, w)  # a copied buffer may have another window size


def test_buffer_grows_past_its_allocation(exported_dir: Path, concat_dir: Path, monkeypatch) -> None:
    """More decode steps than one allocation block: the grown buffer gives the concat layout's logits."""
    monkeypatch.setattr(kv_buffer, "BLOCK", 8)  # several growths within 40 steps
    rng = np.random.default_rng(2)
    prefill = (rng.integers(0, V, (2, 30)), positions(2, 0, 30), np.array([12, 30]))
    steps = [(rng.integers(0, V, (2, 1)), positions(2, 29, 1, 1 + t), np.zeros(2, np.int64)) for t in range(40)]
    backend = OnnxBackend(exported_dir)
    _, past = backend.step(*prefill, None)
    allocations = {past.buffer.allocated}
    got = []
    for step in steps:
        logits, past = backend.step(*step, past)
        allocations.add(past.buffer.allocated)
        got.append(logits)
    assert len(allocations) > 1 and past.length == 70
    want, _ = run(OnnxBackend(concat_dir), [prefill, *steps])
    for g, w in zip(got, want[1:], strict=True):
        assert_close(g, w)


def test_a_reserved_cache_is_allocated_once_and_a_chunked_prefill_equals_one_call(
    exported_dir: Path, concat_dir: Path, monkeypatch
) -> None:
    """Inside ``reserved_cache(N)`` the first chunk allocates room for N positions and the later chunks write into
    that one buffer (no growth: the validator's near-full-past prefill holds one cache, not two). The chunked
    prefill (bidirectional part in the first chunk, causal chunks after it) gives the cache and next-step logits of
    one call over the whole prefix with mixed seps at batch 3, on the buffer and on the concat layout."""
    from export.validate import chunked_prefill

    monkeypatch.setattr(kv_buffer, "BLOCK", 8)
    rng = np.random.default_rng(5)
    B, P = 3, 45
    ids, pos, sep = rng.integers(0, V, (B, P)), positions(B, 0, P), np.array([7, 3, 0])
    chunk = (rng.integers(0, V, (B, 4)), positions(B, P, 4), np.array([0, 4, 2]))
    whole = OnnxBackend(concat_dir)
    _, want_past = whole.step(ids, pos, sep, None)
    want, _ = whole.step(*chunk, want_past)

    backend = OnnxBackend(exported_dir)
    buffers = []
    real_step = backend.step

    def recording_step(*args, **kwargs):
        out = real_step(*args, **kwargs)
        buffers.append(out[1].buffer)
        return out

    monkeypatch.setattr(backend, "step", recording_step)
    with backend.reserved_cache(P + 4):
        past = chunked_prefill(backend, ids, pos, sep, chunk=10)
        got, _ = backend.step(*chunk, past)
    assert len(buffers) == 6 and all(b is buffers[0] for b in buffers)  # chunks 10+10+10+10+5, then the step
    assert buffers[0].allocated == 56  # 49 positions in whole 8-position blocks
    assert backend._reserve == 0  # the reservation ends with the block
    for g, w in zip(host(past), host(want_past), strict=True):
        assert_close(g, w)
    assert_close(got, want)
    concat_got, _ = whole.step(*chunk, chunked_prefill(whole, ids, pos, sep, chunk=10))
    assert_close(concat_got, want)

    # without the reservation the same prefill grows its cache (a copy at each growth)
    buffers.clear()
    chunked_prefill(backend, ids, pos, sep, chunk=10)
    assert len({id(b) for b in buffers}) > 1
    with pytest.raises(ConfigError, match="positions >= 1"), backend.reserved_cache(0):
        pass


def test_the_validator_reads_new_cache_rows_one_tensor_at_a_time(exported_dir: Path, concat_dir: Path) -> None:
    """``export.validate.new_cache_rows`` gives rows ``[P:]`` of every cache tensor, the same on both layouts and
    the same as slicing the whole cache; on the buffer layout each tensor's rows are a view of its buffer (no copy
    of the past rows: the near-full-past case would otherwise hold its cache twice)."""
    from export.validate import new_cache_rows

    rng = np.random.default_rng(11)
    sequence = calls(3, rng)[:2]  # a 9-token prefill, then a 3-token chunk with mixed seps
    rows = {}
    for name, directory in (("buffer", exported_dir), ("concat", concat_dir)):
        _, past = run(OnnxBackend(directory), sequence)
        whole = host(past)
        got = new_cache_rows(past, 9)
        assert got.shape == (2 * L, 3, whole[0].shape[1], 3, whole[0].shape[3]) and got.dtype == np.float32
        np.testing.assert_array_equal(got, np.stack([w[:, :, 9:] for w in whole]))
        last = new_cache_rows(past, 9, layers=[L - 1])  # one layer's key and value only
        np.testing.assert_array_equal(last, np.stack([whole[2 * L - 2][:, :, 9:], whole[2 * L - 1][:, :, 9:]]))
        rows[name] = got
        if name == "buffer":
            view = past[0].rows(9)
            assert np.shares_memory(view, past.buffer.arrays[0]) and view.shape[2] == 3
    assert_close(rows["buffer"], rows["concat"])


def test_capacity_overflow_is_a_clear_error(exported_dir: Path) -> None:
    backend = OnnxBackend(exported_dir, cache_capacity=12)
    _, past = backend.step(np.ones((2, 10), np.int64), positions(2, 0, 10), np.array([5, 0]), None)
    _, past = backend.step(np.ones((2, 2), np.int64), positions(2, 9, 2, 1), np.zeros(2), past)  # exactly full
    assert backend.past_length(past) == 12
    with pytest.raises(InputError, match=r"K/V cache capacity exceeded: 12 cached \+ 1 new positions > capacity 12"):
        backend.step(np.ones((2, 1), np.int64), positions(2, 9, 1, 3), np.zeros(2), past)
    with pytest.raises(InputError, match="capacity exceeded"):
        backend.step(np.ones((1, 13), np.int64), positions(1, 0, 13), np.array([0]), None)
    with pytest.raises(InputError, match=r"past layer 0 key must be \[3, "):
        backend.step(np.ones((3, 1), np.int64), positions(3, 9, 1), np.zeros(3), past)


def test_optimize_ort_fuses_attention_with_its_cache(concat_dir: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    """--optimize ort: one MultiHeadAttention per layer taking the past and returning the present (BNSH), the GLM
    mask as its bias, no concatenation, transpose or scaling of the cache left around it; same logits."""
    from export.onnx import main

    out = tmp_path / "ort"
    assert main(["--ckpt", str(tiny_ckpt), "--out", str(out), "--optimize", "ort", "--no-validate"]) == 0
    graph = onnx.load(str(out / "model.onnx")).graph
    mha = [n for n in graph.node if n.op_type == "MultiHeadAttention"]
    assert len(mha) == L
    for i, node in enumerate(mha):
        assert list(node.input[6:8]) == [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        assert list(node.output[1:3]) == [f"present.{i}.key", f"present.{i}.value"]
        assert node.input[5]  # attention_bias: the GLM mask
    assert not {n.op_type for n in graph.node} & {"Concat", "Transpose", "Div"}
    assert json.loads((out / "glm_config.json").read_text())["kv_cache"] == "concat"
    sequence = calls(3, np.random.default_rng(4))
    fused, _ = run(OnnxBackend(out), sequence)
    plain, _ = run(OnnxBackend(concat_dir), sequence)
    for got, want in zip(fused, plain, strict=True):
        assert_close(got, want)


def test_optimize_ort_with_the_buffer_layout_is_refused(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    from export.onnx import main

    out = tmp_path / "refused"
    argv = ["--ckpt", str(tiny_ckpt), "--out", str(out), "--optimize", "ort", "--kv-cache", "buffer"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--optimize ort needs --kv-cache concat" in err[0]
    assert not out.exists()
