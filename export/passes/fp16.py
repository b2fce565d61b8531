"""``--dtype fp16``: convert the fp32 graph with ORT's float16 converter.

spec onnx_export §2/§3.3: ``onnxruntime.transformers.float16.convert_float_to_float16`` clamps constants to the fp16
range (the mask's ``finfo(float32).min`` becomes -65504, never -inf, §3.4-3). LayerNorm and Softmax stay in fp32
(spec glm_reference §9), the logits output stays float32 (DESIGN.md: logits are float32 at the boundary) and the K/V
cache inputs/outputs become float16 (half the cache memory; glm_config.json records ``kv_dtype``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import onnx

# spec glm_reference §9: normalisation and softmax in fp32 for safety.
FP32_OPS = ("LayerNormalization", "SkipLayerNormalization", "Softmax")
# The CPU EP implements com.microsoft.MultiHeadAttention for float only.
CPU_FP32_OPS = ("MultiHeadAttention",)


@contextlib.contextmanager
def _shapes_from_dims() -> Iterator[None]:
    """The converter reads each converted initializer's data only to make its value_info from the array's shape;
    the weights of a skeleton (export/weights.py) are not written yet, so take the shape from ``dims``."""
    from onnxruntime.transformers import float16

    original = float16.make_value_info_from_tensor
    float16.make_value_info_from_tensor = lambda t: onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims)
    try:
        yield
    finally:
        float16.make_value_info_from_tensor = original


def convert_to_fp16(model: onnx.ModelProto, device: str = "cpu") -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Convert the graph; initializers that are not written yet only change type (export/weights.py converts their
    data the way this converter does when it writes them)."""
    from onnxruntime.transformers import float16

    block = list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP32_OPS)
    if device == "cpu":
        block += list(CPU_FP32_OPS)
    from onnxruntime.transformers.onnx_model import OnnxModel

    with _shapes_from_dims():
        converted = float16.convert_float_to_float16(model, keep_io_types=["logits"], op_block_list=block)
    # The converter appends its Cast nodes at the end of the node list; the checker wants topological order.
    wrapped = OnnxModel(converted)
    wrapped.topological_sort()
    converted = wrapped.model
    # The exporter recorded value_info for initializers; blocked ops keep fp32 initializers whose stale fp16
    # value_info then contradicts them (onnx.checker full_check fails). Initializers carry their own type.
    initializers = {t.name for t in converted.graph.initializer}
    kept = [v for v in converted.graph.value_info if v.name not in initializers]
    converted.graph.ClearField("value_info")
    converted.graph.value_info.extend(kept)
    return converted, {"fp32_ops": sorted(set(block) & {n.op_type for n in model.graph.node})}
