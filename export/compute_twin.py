"""The fp32-compute twin of a quantized graph: the validator's cache and mask check (export/validate.py).

A quantized graph rounds its activations to int8 with scales taken over the rows of each call (``MatMulNBits`` at
``accuracy_level`` 4; dynamic int8's ``DynamicQuantizeLinear``), so its incremental decode differs from its own full
pass by rounding noise that grows with depth and, over many layers, is as large as a cache or mask offset error.
The twin is the same file with the same quantized weights, computing in fp32:

- ``MatMulNBits``: ``accuracy_level`` 0 (the int4 blocks dequantized, activations not rounded);
- ``--quantize int8``: each ``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(scales)`` chain that
  ``quantize_dynamic`` writes becomes ``MatMul(A, DequantizeLinear(B_quantized, B_scale, B_zero_point))``: the same
  int8 weights times the unrounded activations. This twin runs at the basic optimisation level in priority order
  (:attr:`Twin.basic_level`): above it ONNX Runtime fuses ``DequantizeLinear`` + ``MatMul`` into an 8-bit
  ``MatMulNBits`` that rounds activations again (accuracy level 4), and in the default order every dequantization
  (it needs no activation) would run first, all alive at once; at the basic level in priority order each weight is
  dequantized next to its ``MatMul`` and dropped after it (glm-large dims: 0.52 GB session, 35 s for a batch-8
  50-step decode; the same fusion kept at accuracy level 0: 0.95 GB, 87 s).

Without the rounding its incremental decode matches its full pass to fp32 precision, and an offset error shows.

The twin costs no second copy of the weights on disk: a model with external data is referenced as it is, and a
single-file model's initializers are referenced where their bytes lie inside ``model.onnx`` (external data whose
location is the model file itself, at each tensor's ``raw_data`` offset:
``evaluation.backends.onnx.raw_data_offsets``).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glm_core.errors import ExportError

TWIN_FILE = "model.fp32-compute.onnx"


@dataclass(frozen=True)
class Twin:
    path: Path
    changes: str  # what differs from the graph, for the report
    basic_level: bool  # run at the basic optimisation level in priority order (int8: see the module's docstring)


@contextlib.contextmanager
def fp32_compute_twin(model_path: Path) -> Iterator[Twin | None]:
    """The twin of the graph at ``model_path`` (:data:`TWIN_FILE`, beside it, referencing the same external data);
    None when no node computes below fp32. Removed on exit."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    changes = []
    nbits = _nbits_at_full_accuracy(model.graph)
    if nbits:
        changes.append(f"{nbits} MatMulNBits at accuracy_level 0")
    int8 = _int8_matmuls_dequantized(model.graph)
    if int8:
        changes.append(f"{int8} MatMulInteger as MatMul of the dequantized int8 weight")
    if not changes:
        yield None
        return
    _weights_in_place(model, model_path)
    twin = model_path.parent / TWIN_FILE
    try:
        twin.write_bytes(model.SerializeToString())
        del model
        yield Twin(twin, "; ".join(changes), basic_level=int8 > 0)
    finally:
        twin.unlink(missing_ok=True)


# Initializers of at least this many bytes are referenced in the model file rather than copied into the twin.
IN_PLACE_MIN_BYTES = 1024


def _weights_in_place(model: Any, model_path: Path) -> None:
    """Point every large inline initializer of ``model`` (loaded from the single file ``model_path``) at its
    ``raw_data`` bytes inside that file, as external data: the twin then holds the graph only."""
    import onnx

    from evaluation.backends.onnx import raw_data_offsets

    inline = [
        t
        for t in model.graph.initializer
        if t.data_location != onnx.TensorProto.EXTERNAL and len(t.raw_data) >= IN_PLACE_MIN_BYTES
    ]
    if not inline:
        return
    offsets = raw_data_offsets(model_path)
    for tensor in inline:
        offset, length = offsets.get(tensor.name, (-1, -1))
        if length != len(tensor.raw_data):
            raise ExportError(f"fp32-compute twin: initializer {tensor.name!r} not found as raw_data in {model_path}")
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", model_path.name), ("offset", str(offset)), ("length", str(length))):
            tensor.external_data.add(key=key, value=value)


def _nbits_at_full_accuracy(graph: Any) -> int:
    changed = 0
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            for attribute in node.attribute:
                if attribute.name == "accuracy_level" and attribute.i != 0:
                    attribute.i = 0
                    changed += 1
    return changed


def _int8_matmuls_dequantized(graph: Any) -> int:
    """Rewrite every ``MatMulInteger`` chain of ``quantize_dynamic`` (export/passes/quantize.py) in place; returns
    how many. A ``MatMulInteger`` outside that pattern is an error: the check would otherwise not be what it says."""
    import onnx

    producer = {name: node for node in graph.node for name in node.output}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    def only_consumer(name: str, op_type: str, of: Any) -> Any:
        users = consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op_type:
            raise ExportError(
                f"fp32-compute twin: {of.op_type} {of.name!r} output {name!r} feeds {[n.op_type for n in users]}, "
                f"expected one {op_type} (the quantize_dynamic pattern)"
            )
        return users[0]

    replaced: dict[int, list[Any]] = {}  # id(node) -> the nodes taking its place ([] = removed)
    for node in graph.node:
        if node.op_type != "MatMulInteger":
            continue
        quantize = producer.get(node.input[0])
        if quantize is None or quantize.op_type != "DynamicQuantizeLinear" or len(node.input) != 4:
            raise ExportError(
                f"fp32-compute twin: MatMulInteger {node.name!r} does not take a DynamicQuantizeLinear output and "
                "both zero points (the quantize_dynamic pattern)"
            )
        cast = only_consumer(node.output[0], "Cast", node)
        rescale = only_consumer(cast.output[0], "Mul", cast)
        scales = producer.get(next(name for name in rescale.input if name != cast.output[0]))
        if scales is None or scales.op_type != "Mul" or quantize.output[1] not in scales.input:
            raise ExportError(
                f"fp32-compute twin: MatMulInteger {node.name!r} is not rescaled by activation x weight scale"
            )
        weight_scale = next(name for name in scales.input if name != quantize.output[1])
        weight = node.input[1]
        dequantized = f"{weight}_fp32_compute"
        replaced[id(node)] = [
            onnx.helper.make_node(
                "DequantizeLinear", [weight, weight_scale, node.input[3]], [dequantized], name=f"{node.name}_dequantize"
            ),
            onnx.helper.make_node(
                "MatMul", [quantize.input[0], dequantized], [rescale.output[0]], name=f"{node.name}_fp32_compute"
            ),
        ]
        for gone in (cast, rescale, scales):
            replaced[id(gone)] = []
    if not replaced:
        return 0
    nodes = [new for node in graph.node for new in replaced.get(id(node), [node])]
    used = {name for node in nodes for name in node.input} | {output.name for output in graph.output}
    nodes = [n for n in nodes if n.op_type != "DynamicQuantizeLinear" or any(o in used for o in n.output)]
    del graph.node[:]
    graph.node.extend(nodes)
    return sum(1 for new in replaced.values() if new)
