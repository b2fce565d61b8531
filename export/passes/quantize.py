"""``--quantize int8|int4``: weight quantization of every MatMul with a constant weight, the LM head included.

- int8: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, activations quantized at run time:
  ``DynamicQuantizeLinear`` + ``MatMulInteger``). spec onnx_export §5.2: slower than fp32 on CPUs without VNNI.
- int4: weight-only ``MatMulNBits`` (``MatMulNBitsQuantizer``, block 32, symmetric, ``accuracy_level=4`` = int8
  compute), the variant that makes CPU decode faster (spec §5.2). The LM head is untied at export (graph.py), so it
  is a plain MatMul with an initializer weight and gets quantized too (spec §6 pitfall 7).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import onnx

INT4_BLOCK_SIZE = 32
INT4_ACCURACY_LEVEL = 4


def _matmul_count(model: onnx.ModelProto) -> int:
    constants = {t.name for t in model.graph.initializer}
    return sum(1 for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in constants)


def quantize_int8(model: onnx.ModelProto, work_dir: Path) -> tuple[onnx.ModelProto, dict[str, Any]]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    before = _matmul_count(model)
    out = work_dir / "int8.onnx"
    quantize_dynamic(
        model,
        out,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        extra_options={"MatMulConstBOnly": True},
        use_external_data_format=True,
    )
    quantized = onnx.load(str(out))
    counts = Counter(n.op_type for n in quantized.graph.node)
    return quantized, {"matmuls_with_weights": before, "MatMulInteger": counts.get("MatMulInteger", 0)}


def quantize_int4(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    before = _matmul_count(model)
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=4,
        block_size=INT4_BLOCK_SIZE,
        is_symmetric=True,
        accuracy_level=INT4_ACCURACY_LEVEL,
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    quantized = quantizer.model.model
    counts = Counter(n.op_type for n in quantized.graph.node)
    return quantized, {
        "matmuls_with_weights": before,
        "MatMulNBits": counts.get("MatMulNBits", 0),
        "block_size": INT4_BLOCK_SIZE,
        "accuracy_level": INT4_ACCURACY_LEVEL,
        "symmetric": True,
    }
