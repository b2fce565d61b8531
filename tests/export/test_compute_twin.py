"""The fp32-compute twin of an int8 graph (export/compute_twin.py) against float64 math.

Reference: ``quantize_dynamic``'s own graph of two MatMuls sharing one activation (one ``DynamicQuantizeLinear``
feeding two ``MatMulInteger``), and numpy in float64 computing ``A @ (scale * (B_quantized - zero_point))`` from
that graph's int8 initializers. The twin must compute exactly that (no activation rounding), while the int8 graph
itself is off by its rounding.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from glm_core.errors import ExportError

K, N = 64, 48


def _int8_model(tmp_path: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(11)
    weights = [
        numpy_helper.from_array((rng.standard_normal((K, N)) * 0.05).astype(np.float32), f"w{i}") for i in (0, 1)
    ]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w0"], ["y0"], name="mm0"),
            helper.make_node("MatMul", ["x", "w1"], ["y1"], name="mm1"),
        ],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 5, K])],
        [helper.make_tensor_value_info(f"y{i}", onnx.TensorProto.FLOAT, [2, 5, N]) for i in (0, 1)],
        weights,
    )
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), str(fp32))
    quantize_dynamic(
        fp32,
        tmp_path / "model.onnx",
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        extra_options={"MatMulConstBOnly": True},
    )
    return tmp_path / "model.onnx"


def test_the_int8_twin_computes_the_int8_weights_in_fp32(tmp_path: Path) -> None:
    import onnxruntime as ort

    from export.compute_twin import TWIN_FILE, fp32_compute_twin
    from export.validate import lean_session_options

    path = _int8_model(tmp_path)
    quantized = onnx.load(str(path))
    assert Counter(n.op_type for n in quantized.graph.node)["DynamicQuantizeLinear"] == 1  # shared by both
    init = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    x = np.random.default_rng(5).standard_normal((2, 5, K)).astype(np.float32)
    want = [
        x.astype(np.float64)
        @ (float(init[f"w{i}_scale"]) * (init[f"w{i}_quantized"].astype(np.float64) - int(init[f"w{i}_zero_point"])))
        for i in (0, 1)
    ]
    with fp32_compute_twin(path) as twin:
        assert twin is not None and twin.path == tmp_path / TWIN_FILE and twin.basic_level
        assert twin.changes == "2 MatMulInteger as MatMul of the dequantized int8 weight"
        # no second copy of the weights: the twin points at their bytes inside the single-file model
        bare = onnx.load(str(twin.path), load_external_data=False)
        moved = {t.name: {e.key: e.value for e in t.external_data} for t in bare.graph.initializer if t.external_data}
        assert set(moved) == {"w0_quantized", "w1_quantized"}
        assert {m["location"] for m in moved.values()} == {"model.onnx"}
        assert twin.path.stat().st_size < path.stat().st_size - 2 * K * N
        model = onnx.load(str(twin.path))
        ops = Counter(n.op_type for n in model.graph.node)
        assert ops == {"DequantizeLinear": 2, "MatMul": 2}  # no activation rounding left
        onnx.checker.check_model(model)
        session = ort.InferenceSession(
            str(twin.path), lean_session_options(prepacking=True, basic_level=True), providers=["CPUExecutionProvider"]
        )
        got = session.run(None, {"x": x})
    assert not (tmp_path / TWIN_FILE).exists()
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    # the int8 graph itself rounds x to uint8: off by far more than the twin's fp32 rounding
    rounded = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert max(float(np.abs(r - w).max()) for r, w in zip(rounded, want, strict=True)) > 1e-3


def test_a_matmulinteger_outside_the_pattern_is_an_error(tmp_path: Path) -> None:
    from export.compute_twin import fp32_compute_twin

    path = _int8_model(tmp_path)
    model = onnx.load(str(path))
    cast = next(n for n in model.graph.node if n.op_type == "Cast")
    cast.op_type = "Identity"  # the MatMulInteger's output no longer goes through a Cast
    del cast.attribute[:]
    onnx.save(model, str(path))
    with pytest.raises(ExportError, match="expected one Cast"), fp32_compute_twin(path):
        pass


def test_a_graph_computing_in_fp32_has_no_twin(tmp_path: Path) -> None:
    from export.compute_twin import fp32_compute_twin

    _int8_model(tmp_path)
    with fp32_compute_twin(tmp_path / "fp32.onnx") as twin:
        assert twin is None


def test_raw_data_offsets_point_at_each_initializers_bytes(tmp_path: Path) -> None:
    from evaluation.backends.onnx import raw_data_offsets

    path = _int8_model(tmp_path)
    data = path.read_bytes()
    tensors = {t.name: t for t in onnx.load(str(path)).graph.initializer if t.raw_data}
    offsets = raw_data_offsets(path)
    assert set(tensors) <= set(offsets) and tensors
    for name, tensor in tensors.items():
        offset, length = offsets[name]
        assert data[offset : offset + length] == tensor.raw_data, name
