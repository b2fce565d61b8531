"""``--quantize int8|int4``: weight quantization of every MatMul with a constant weight, the LM head included.

Neither pass holds the model's weights: each rewrites the weightless graph (export/weights.py), and each weight is
quantized when it is written, one at a time.

- int8: dynamic quantization (int8 weights per tensor, symmetric; activations quantized to uint8 at run time:
  ``DynamicQuantizeLinear`` + ``MatMulInteger``), the graph of ``onnxruntime.quantization.quantize_dynamic``
  (``op_types_to_quantize=["MatMul"]``, ``MatMulConstBOnly``): onnxruntime's own ``ONNXQuantizer`` rewrites the
  graph, with its per-weight step replaced by pending initializers, and the writer computes each weight's scale and
  int8 data with onnxruntime's ``compute_data_quant_params`` / ``quantize_nparray``. spec onnx_export §5.2: slower
  than fp32 on CPUs without VNNI.
- int4: weight-only ``MatMulNBits`` (block 32, symmetric, ``accuracy_level=4`` = int8 compute), the variant that
  makes CPU decode faster (spec §5.2). The nodes and the quantized data are those of onnxruntime's
  ``MatMulNBitsQuantizer`` (its kernel ``quantize_matmul_4bits`` computes the blocks).

The LM head is untied at export (graph.py), so it is a plain MatMul with an initializer weight and gets quantized
too (spec §6 pitfall 7).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from export.weights import INT4_BLOCK_SIZE, Recipes, int4_blocks
from glm_core.errors import ExportError

__all__ = ["INT4_ACCURACY_LEVEL", "INT4_BLOCK_SIZE", "int4_blocks", "quantize_int4", "quantize_int8"]
INT4_ACCURACY_LEVEL = 4


def _matmul_count(model: onnx.ModelProto) -> int:
    constants = {t.name for t in model.graph.initializer}
    return sum(1 for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in constants)


def quantize_int8(model: onnx.ModelProto, recipes: Recipes) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The graph ``quantize_dynamic(model, weight_type=QInt8, op_types_to_quantize=["MatMul"],
    extra_options={"MatMulConstBOnly": True})`` writes, made from the weightless graph: onnxruntime's quantizer does
    the rewrite (shape inference, one ``DynamicQuantizeLinear`` per activation, ``MatMulInteger`` + ``Cast`` + the
    two scale ``Mul`` nodes per MatMul, its names, its topological order), but each pending weight becomes three
    pending initializers (``<B>_quantized`` int8, ``<B>_scale``, ``<B>_zero_point``) whose data the writer makes
    from the weight's source. ``recipes`` gets the new names."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.quant_utils import (
        QuantizationMode,
        save_and_reload_model_with_shape_infer,
        update_opset_version,
    )

    from export.weights import Recipe, is_pending, pending_tensor

    if not hasattr(ONNXQuantizer, "quantize_initializer_impl"):
        raise ExportError(
            "--quantize int8 needs an onnxruntime whose quantizer has ONNXQuantizer.quantize_initializer_impl "
            "(onnxruntime >= 1.18)"
        )

    # onnxruntime's quantizer saves and reloads the graph for shape inference, which would read pending data: it gets
    # the pending weights hollow (type and shape, no data) and they become pending again after
    pending = {t.name for t in model.graph.initializer if is_pending(t)}
    for tensor in model.graph.initializer:
        if tensor.name in pending:
            tensor.ClearField("external_data")
            tensor.data_location = onnx.TensorProto.DEFAULT

    class _PendingWeights(ONNXQuantizer):
        def quantize_initializer_impl(self, weight, qType, reduce_range=False, keep_float_weight=False):  # noqa: N803
            if weight.name not in pending:  # a small weight with its values in the graph
                return super().quantize_initializer_impl(weight, qType, reduce_range, keep_float_weight)
            if keep_float_weight or qType != onnx.TensorProto.INT8:
                raise ExportError(
                    f"--quantize int8: onnxruntime's quantizer asked for weight {weight.name!r} as type {qType}"
                    f"{' kept in float' if keep_float_weight else ''}; only int8 weights can be made as they are written"
                )
            names = (f"{weight.name}_quantized", f"{weight.name}_zero_point", f"{weight.name}_scale")
            source = recipes[weight.name]
            new = [
                pending_tensor(names[2], weight.data_type, []),
                pending_tensor(names[1], qType, []),
                pending_tensor(names[0], qType, list(weight.dims)),
            ]
            for tensor, part in zip(new, ("int8.scale", "int8.zero_point", "int8.weight"), strict=True):
                recipes[tensor.name] = Recipe(source.source, source.transpose, part)
            self.model.initializer_extend(new)
            return names

    before = _matmul_count(model)
    # the steps of quantize_dynamic before its quantizer: shape inference (a save and reload), the opset it needs
    inferred = save_and_reload_model_with_shape_infer(model)
    inferred = update_opset_version(inferred, QuantType.QInt8)
    quantizer = _PendingWeights(
        inferred,
        False,  # per_channel
        False,  # reduce_range
        QuantizationMode.IntegerOps,
        False,  # static
        QuantType.QInt8,
        QuantType.QUInt8,  # dynamic activations are uint8
        None,
        [],
        [],
        ["MatMul"],
        {"MatMulConstBOnly": True},
    )
    quantizer.quantize_model()
    quantizer.model.topological_sort()  # as ONNXModel.save_model_to_file does
    quantized = quantizer.model.model
    for tensor in quantized.graph.initializer:
        if tensor.name in pending:  # a weight no MatMul reads (the word embeddings' lookup): pending again
            tensor.CopyFrom(pending_tensor(tensor.name, tensor.data_type, list(tensor.dims)))
    counts = Counter(n.op_type for n in quantized.graph.node)
    return quantized, {"matmuls_with_weights": before, "MatMulInteger": counts.get("MatMulInteger", 0)}


def quantize_int4(model: onnx.ModelProto, recipes: Recipes) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Replace every ``MatMul`` with a 2-D fp32 initializer weight by ``MatMulNBits`` (the node
    ``MatMulNBitsQuantizer`` writes: inputs ``A, <B>_Q4, <B>_scales``, attributes K, N, bits, block_size,
    accuracy_level, name ``<node>_Q4``), without reading any weight: the quantized initializers are pending, with a
    recipe that quantizes the weight's source when the model is written (export/weights.py). A weight that is
    already in the skeleton (small) is quantized here. ``recipes`` gets the new names (the earlier stages' graphs
    keep theirs)."""
    from export.weights import Recipe, is_pending, pending_tensor

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    before = _matmul_count(model)
    nodes: list[onnx.NodeProto] = []
    quantized: set[str] = set()
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if weight is None or len(weight.dims) != 2 or weight.data_type != onnx.TensorProto.FLOAT:
            nodes.append(node)
            continue
        rows, cols = weight.dims
        blocks = -(-rows // INT4_BLOCK_SIZE)
        names = (f"{weight.name}_Q4", f"{weight.name}_scales")
        if names[0] not in initializers:
            packed_dims, scale_dims = [cols, blocks, INT4_BLOCK_SIZE // 2], [cols, blocks]
            if is_pending(weight):
                source = recipes[weight.name]
                new = [
                    pending_tensor(names[0], onnx.TensorProto.UINT8, packed_dims),
                    pending_tensor(names[1], onnx.TensorProto.FLOAT, scale_dims),
                ]
                for tensor, part in zip(new, ("int4.weight", "int4.scales"), strict=True):
                    recipes[tensor.name] = Recipe(source.source, source.transpose, part)
            else:
                packed, scales = int4_blocks(numpy_helper.to_array(weight).astype(np.float32))
                new = [numpy_helper.from_array(packed, names[0]), numpy_helper.from_array(scales, names[1])]
            graph.initializer.extend(new)
            initializers.update({t.name: t for t in new})
        quantized.add(weight.name)
        nodes.append(
            onnx.helper.make_node(
                "MatMulNBits",
                inputs=[node.input[0], *names],
                outputs=[node.output[0]],
                name=f"{node.name}_Q4" if node.name else "",
                domain="com.microsoft",
                K=rows,
                N=cols,
                bits=4,
                block_size=INT4_BLOCK_SIZE,
                accuracy_level=INT4_ACCURACY_LEVEL,
            )
        )
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    _set_opset(model, "com.microsoft", 1)
    counts = Counter(n.op_type for n in graph.node)
    return model, {
        "matmuls_with_weights": before,
        "MatMulNBits": counts.get("MatMulNBits", 0),
        "block_size": INT4_BLOCK_SIZE,
        "accuracy_level": INT4_ACCURACY_LEVEL,
        "symmetric": True,
    }


def _set_opset(model: onnx.ModelProto, domain: str, version: int) -> None:
    for entry in model.opset_import:
        if entry.domain == domain:
            entry.version = version
            return
    model.opset_import.add(domain=domain, version=version)
