"""The weightless trace and the one-tensor-at-a-time writer (export/weights.py) against the real exporter.

Reference: ``torch.onnx.export(dynamo=True)`` of the same module with its weights (graph.export_program, the
exporter's own optimiser, onnx's save), and onnxruntime's own fp16 converter / MatMulNBitsQuantizer /
quantize_dynamic run on that whole model. The streamed path must give the same nodes, the same inputs and outputs and bit-identical outputs.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from glm_core.errors import ExportError
from tests.export.conftest import TINY_EXPORT

L, H = TINY_EXPORT["num_layers"], TINY_EXPORT["num_attention_heads"]
D = TINY_EXPORT["hidden_size"] // H


def _inputs(kv_dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    B, S, P = 3, 5, 2
    feed = {
        "input_ids": rng.integers(0, TINY_EXPORT["vocab_size"], size=(B, S)).astype(np.int64),
        "position_ids": np.stack([np.tile(np.arange(P, P + S), (B, 1)), np.zeros((B, S), np.int64)], 1),
        "sep": np.array([0, 5, 2], np.int64),
    }
    for i in range(L):
        for kind in ("key", "value"):
            feed[f"past_key_values.{i}.{kind}"] = rng.standard_normal((B, H, P, D)).astype(kv_dtype)
    return feed


def _run(path: Path, kv_dtype=np.float32) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, _inputs(kv_dtype))


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


@pytest.fixture(scope="module")
def traced(tiny_torch_model, tmp_path_factory: pytest.TempPathFactory):
    """(real export as a ModelProto with its weights, its file, the weightless skeleton, recipes, tensor maker)."""
    from export.graph import GLMExportModule, export_program
    from export.weights import TensorMaker, module_tensors, trace_skeleton

    module = GLMExportModule(tiny_torch_model, kv_cache="concat")
    directory = tmp_path_factory.mktemp("real")
    export_program(module).save(str(directory / "model.onnx"), external_data=False)
    real = onnx.load(str(directory / "model.onnx"))
    skeleton, recipes = trace_skeleton(module, 20)
    return real, directory / "model.onnx", skeleton, recipes, TensorMaker(module_tensors(module), recipes)


def test_weightless_trace_is_the_real_graph_with_identical_outputs(traced, tmp_path: Path) -> None:
    from export.weights import is_pending, write_model

    real, real_path, skeleton, recipes, maker = traced
    assert [i.name for i in skeleton.graph.input] == [i.name for i in real.graph.input]
    assert [o.name for o in skeleton.graph.output] == [o.name for o in real.graph.output]
    assert _ops(skeleton) == _ops(real)
    pending = [t.name for t in skeleton.graph.initializer if is_pending(t)]
    assert set(pending) == set(recipes)  # every pending tensor is made from a module tensor
    assert recipes["lm_head"].source == "lm_head" and not recipes["lm_head"].transpose
    qkv = "model.transformer.layers.0.attention.query_key_value.weight.T"
    assert recipes[qkv].transpose and recipes[qkv].source == qkv[:-2]
    write_model(skeleton, maker, tmp_path, external=False)
    got, want = _run(tmp_path / "model.onnx"), _run(real_path)
    assert len(got) == len(want) == 1 + 2 * L
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)  # the same graph over the same weights: bit-identical


def test_inline_and_external_files_hold_the_same_weights(traced, tmp_path: Path) -> None:
    from export.weights import DATA_FILE, write_model

    _, _, skeleton, _, maker = traced
    (tmp_path / "inline").mkdir()
    (tmp_path / "external").mkdir()
    write_model(skeleton, maker, tmp_path / "inline", external=False)
    assert write_model(skeleton, maker, tmp_path / "external", external=True) == [DATA_FILE]
    inline = {
        t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "inline/model.onnx")).graph.initializer
    }
    external = onnx.load(str(tmp_path / "external/model.onnx"))
    assert sorted(inline) == sorted(t.name for t in external.graph.initializer)
    for tensor in external.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(tensor), inline[tensor.name])
    # large tensors start on a 64 KiB boundary of the data file, so ONNX Runtime can map them
    raw = onnx.load(str(tmp_path / "external/model.onnx"), load_external_data=False)
    offsets = [
        (
            int({e.key: e.value for e in t.external_data}["offset"]),
            int({e.key: e.value for e in t.external_data}["length"]),
        )
        for t in raw.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    assert all(offset % 65536 == 0 for offset, length in offsets if length > 1024 * 1024)


def test_external_data_is_chosen_above_one_gigabyte_and_refused_inline_above_the_protobuf_limit() -> None:
    """``auto`` writes external data from 1 GiB on (ONNX Runtime maps it instead of reading and copying a single
    file: 1.73 vs 2.93 GB of session RSS for glm-2b's 1.63 GB int4 model); ``never`` stays inline up to the
    protobuf limit and is refused above it; ``always`` is always external."""
    from export import model_dir as md
    from glm_core.errors import ExportError

    gib = 1024**3
    assert not md.use_external_data(gib, "auto") and md.use_external_data(gib + 1, "auto")
    assert md.use_external_data(1, "always")
    assert not md.use_external_data(int(1.7 * gib), "never")
    with pytest.raises(ExportError, match="over protobuf's 2 GB limit"):
        md.use_external_data(int(1.9 * gib), "never")
    with pytest.raises(ExportError, match="--external-data must be one of"):
        md.use_external_data(1, "sometimes")


def test_streamed_fp16_pass_equals_the_converter_on_the_whole_model(traced, tmp_path: Path) -> None:
    from export.passes.fp16 import convert_to_fp16
    from export.weights import write_model

    real, _, skeleton, _, maker = traced
    whole, _ = convert_to_fp16(_copy(real))
    onnx.save(whole, str(tmp_path / "whole.onnx"))
    streamed, _ = convert_to_fp16(_copy(skeleton))
    (tmp_path / "streamed").mkdir()
    write_model(streamed, maker, tmp_path / "streamed", external=False)
    assert _ops(streamed) == _ops(whole)
    got, want = _run(tmp_path / "streamed/model.onnx", np.float16), _run(tmp_path / "whole.onnx", np.float16)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_streamed_int4_pass_equals_onnxruntime_quantizer(traced, tmp_path: Path) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from export.passes.quantize import INT4_ACCURACY_LEVEL, INT4_BLOCK_SIZE, quantize_int4
    from export.weights import TensorMaker, write_model

    real, _, skeleton, recipes, maker = traced
    quantizer = MatMulNBitsQuantizer(
        _copy(real),
        bits=4,
        block_size=INT4_BLOCK_SIZE,
        is_symmetric=True,
        accuracy_level=INT4_ACCURACY_LEVEL,
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    onnx.save(quantizer.model.model, str(tmp_path / "whole.onnx"))
    int4_recipes = dict(recipes)
    streamed, figures = quantize_int4(_copy(skeleton), int4_recipes)
    assert figures["MatMulNBits"] == figures["matmuls_with_weights"] == 4 * L + 1
    (tmp_path / "streamed").mkdir()
    write_model(streamed, TensorMaker(maker.tensors, int4_recipes), tmp_path / "streamed", external=True)
    assert _ops(streamed) == _ops(quantizer.model.model)
    whole_nodes = [n for n in quantizer.model.model.graph.node if n.op_type == "MatMulNBits"]
    ours = [n for n in streamed.graph.node if n.op_type == "MatMulNBits"]
    assert [_attributes(n) for n in ours] == [_attributes(n) for n in whole_nodes]
    got, want = _run(tmp_path / "streamed/model.onnx"), _run(tmp_path / "whole.onnx")
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "optimize-ort"])
def test_streamed_int8_pass_equals_quantize_dynamic(traced, fused: bool, tmp_path: Path) -> None:
    """``--quantize int8`` from the weightless graph is ``quantize_dynamic`` of the same graph with every weight
    loaded (written out and read back: the way this pass ran before it streamed), byte for byte: the same nodes in
    the same order, the same value_info, the same initializers (names, types, values) and so the same outputs; on
    the plain graph and on the fused one (``--optimize ort --quantize int8``)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export.passes.fusion import fuse_for_ort
    from export.passes.quantize import quantize_int8
    from export.weights import TensorMaker, write_model

    _, _, skeleton, recipes, maker = traced
    skeleton = _copy(skeleton)
    if fused:
        skeleton, _ = fuse_for_ort(skeleton, L)
    (tmp_path / "loaded").mkdir()
    write_model(skeleton, maker, tmp_path / "loaded", external=False)
    quantize_dynamic(
        onnx.load(str(tmp_path / "loaded/model.onnx")),
        tmp_path / "whole.onnx",
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        extra_options={"MatMulConstBOnly": True},
    )
    whole = onnx.load(str(tmp_path / "whole.onnx"))
    int8_recipes = dict(recipes)
    streamed, figures = quantize_int8(skeleton, int8_recipes)
    assert figures == {"matmuls_with_weights": 4 * L + 1, "MatMulInteger": 4 * L + 1}
    assert sum(r.part == "int8.weight" for r in int8_recipes.values()) == 4 * L + 1
    (tmp_path / "streamed").mkdir()
    write_model(streamed, TensorMaker(maker.tensors, int8_recipes), tmp_path / "streamed", external=True)
    written = onnx.load(str(tmp_path / "streamed/model.onnx"))
    assert [n.SerializeToString() for n in written.graph.node] == [n.SerializeToString() for n in whole.graph.node]
    assert written.graph.value_info == whole.graph.value_info
    assert (written.graph.input, written.graph.output) == (whole.graph.input, whole.graph.output)
    assert (written.opset_import, written.producer_name) == (whole.opset_import, whole.producer_name)
    ours = {t.name: onnx.numpy_helper.to_array(t) for t in written.graph.initializer}
    theirs = {t.name: onnx.numpy_helper.to_array(t) for t in whole.graph.initializer}
    assert [t.name for t in written.graph.initializer] == [t.name for t in whole.graph.initializer]
    for name, want in theirs.items():
        assert ours[name].dtype == want.dtype and ours[name].shape == want.shape, name
        np.testing.assert_array_equal(ours[name], want, err_msg=name)
    # each weight's scale and zero point are written in the model file, not the data file (as quantize_dynamic does)
    scalars = [t for t in written.graph.initializer if t.name.endswith(("_scale", "_zero_point"))]
    assert scalars and all(t.data_location == onnx.TensorProto.DEFAULT for t in scalars)
    got, want = _run(tmp_path / "streamed/model.onnx"), _run(tmp_path / "whole.onnx")
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_int8_pass_refuses_a_pending_weight_it_cannot_make_as_written() -> None:
    """A MatMul whose *activation* is a pending initializer would have onnxruntime's quantizer ask for it as uint8
    (what only the whole-model quantizer computes): one clear error naming the tensor, not a read of absent data."""
    from export.passes.quantize import quantize_int8
    from export.weights import Recipe, pending_tensor

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["A", "B"], ["Y"], name="mm")],
        "g",
        [],
        [onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [2, 3])],
        [
            pending_tensor("A", onnx.TensorProto.FLOAT, [2, 1100]),
            pending_tensor("B", onnx.TensorProto.FLOAT, [1100, 3]),
        ],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)])
    with pytest.raises(ExportError, match="asked for weight 'A' as type 2"):
        quantize_int8(model, {"A": Recipe("a"), "B": Recipe("b")})


def test_int8_weight_data_is_onnxruntimes_in_chunks_and_within_half_a_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The int8 weight data made :data:`INT8_CHUNK_ELEMENTS` at a time equals onnxruntime's ``quantize_data`` on
    the whole weight (chunk edges inside the array and a short last chunk); against float64 math, the scale is
    max|w| / 127 (symmetric int8) and every weight is within half a step of its dequantized value."""
    from onnxruntime.quantization.quant_utils import quantize_data

    from export import weights

    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((37, 11)) * 0.05).astype(np.float32)
    weight[5, 3] = -0.4  # the extreme is negative: symmetric around 0 either way
    monkeypatch.setattr(weights, "INT8_CHUNK_ELEMENTS", 50)
    parts = weights.int8_per_tensor(weight)
    zero_point, scale, quantized = quantize_data(weight.flatten(), onnx.TensorProto.INT8, True)
    np.testing.assert_array_equal(parts["int8.weight"], quantized.reshape(weight.shape))
    assert parts["int8.weight"].dtype == np.int8 and parts["int8.zero_point"] == zero_point == 0
    assert parts["int8.scale"].dtype == np.float32 and parts["int8.scale"] == scale
    np.testing.assert_allclose(float(parts["int8.scale"]), 0.4 / 127, rtol=1e-6)
    step = float(parts["int8.scale"])
    error = np.abs(weight.astype(np.float64) - step * parts["int8.weight"].astype(np.float64))
    assert error.max() <= step / 2 * (1 + 1e-6)
    assert parts["int8.weight"].min() == -127 and parts["int8.weight"].max() <= 127


def test_half_checkpoint_reference_computes_what_the_fp32_load_computes(tiny_ckpt: Path, tmp_path: Path) -> None:
    from export.weights import computed_in_fp32
    from glm_core.checkpoint import load_model, save_model

    fp32 = load_model(tiny_ckpt, dtype="fp32")
    half_dir = tmp_path / "half"
    save_model(fp32.half(), half_dir, dtype=torch.float16)
    fp32 = load_model(half_dir, dtype="fp32")  # the fp16 values, exact in fp32
    half = load_model(half_dir, dtype="auto")
    assert half.word_embeddings.weight.dtype == torch.float16
    ids = torch.randint(0, TINY_EXPORT["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(0))
    pos = torch.stack([torch.arange(9).expand(2, 9), torch.zeros(2, 9, dtype=torch.long)], 1)
    sep = torch.tensor([4, 0])
    with torch.no_grad():
        want = fp32(ids, pos, sep).logits
        with computed_in_fp32(half):
            got = half(ids, pos, sep).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert half.word_embeddings.weight.dtype == torch.float16  # the parametrization is gone again
    assert not any(hasattr(m, "parametrizations") for m in half.modules())


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    return copied


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_no_fp32_copy_of_the_word_embeddings_lives_through_the_layers(tiny_ckpt: Path, tmp_path: Path) -> None:
    """The reference's peak memory: under computed_in_fp32 the largest matrix's fp32 copy exists while the lookup
    and the LM head run, not while the layers do (glm-2b: 0.41 GB beside the near-full past's attention)."""
    from export.weights import computed_in_fp32
    from glm_core.checkpoint import load_model, save_model

    half_dir = tmp_path / "half"
    save_model(load_model(tiny_ckpt, dtype="fp32").half(), half_dir, dtype=torch.float16)
    half = load_model(half_dir, dtype="auto")
    ids = torch.randint(0, TINY_EXPORT["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(1))
    pos = torch.stack([torch.arange(9).expand(2, 9), torch.zeros(2, 9, dtype=torch.long)], 1)
    alive: list[bool] = []
    with torch.no_grad(), computed_in_fp32(half):
        upcast = half.word_embeddings.parametrizations.weight[0]
        hooks = [
            layer.register_forward_pre_hook(
                lambda *_: alive.append(upcast._last is not None and upcast._last() is not None)
            )
            for layer in half.transformer.layers
        ]
        logits = half(ids, pos, torch.tensor([4, 0])).logits
        for hook in hooks:
            hook.remove()
    assert alive == [False] * len(half.transformer.layers)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
