"""``--optimize ort``: fuse attention into ``com.microsoft.MultiHeadAttention`` (past in, present out, BNSH).

spec onnx_export §1.3/§3.4: ``onnxscript.rewriter.ort_fusions.optimize_for_ort`` maps ``MatMul(Q, Kᵀ) + mask ->
Softmax -> MatMul V`` to MHA with the baked GLM mask as ``attention_bias``, but compares symbolic dims by name, and
the dynamo export names the total length ``"seq + past"`` in some places and ``"past + seq"`` in others; layers
with the other spelling are silently skipped. So the names are canonicalised first, and the pass fails unless every
layer was fused.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import onnx

from glm_core.errors import ExportError


def canonical_dim_name(name: str) -> str:
    """Sum dims with their terms sorted: ``"seq + past"`` and ``"past + seq"`` both become ``"past + seq"``."""
    if " + " not in name:
        return name
    return " + ".join(sorted(term.strip() for term in name.split("+")))


def canonicalise_dim_names(model: onnx.ModelProto) -> int:
    """Rewrite every symbolic sum dim to its canonical spelling in place; returns how many were changed."""
    changed = 0
    graph = model.graph
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if not value.type.HasField("tensor_type"):
            continue
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                canonical = canonical_dim_name(dim.dim_param)
                if canonical != dim.dim_param:
                    dim.dim_param = canonical
                    changed += 1
    return changed


def normalise_cache_concat_axis(model: onnx.ModelProto) -> int:
    """``Concat(past, new, axis=2)`` producing a ``present.*`` output -> ``axis=-2`` (the same axis of the rank-4
    cache): onnxscript's MultiHeadAttention-with-past rule compares the attribute literally with ``-2``, and
    without the match the fused node gets neither past nor present and the concatenation stays around it."""
    presents = {o.name for o in model.graph.output if o.name.startswith("present.")}
    changed = 0
    for node in model.graph.node:
        if node.op_type == "Concat" and node.output[0] in presents:
            for attr in node.attribute:
                if attr.name == "axis" and attr.i == 2:
                    attr.i = -2
                    changed += 1
    return changed


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(node.op_type for node in model.graph.node))


def fuse_for_ort(model: onnx.ModelProto, num_layers: int) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Canonicalise dim names, run ``optimize_for_ort``, check one MultiHeadAttention per layer."""
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    renamed = canonicalise_dim_names(model)
    normalise_cache_concat_axis(model)
    ir_model = ir.serde.deserialize_model(model)
    ir_model, fusions = optimize_for_ort(ir_model)
    fused = ir.serde.serialize_model(ir_model)
    counts = op_counts(fused)
    mha = counts.get("MultiHeadAttention", 0)
    if mha != num_layers:
        raise ExportError(
            f"--optimize ort fused attention in {mha} of {num_layers} layers; the graph pattern changed "
            "(torch/onnxscript version?). Export with --optimize none."
        )
    without_cache = [
        n.name
        for n in fused.graph.node
        if n.op_type == "MultiHeadAttention" and (len(n.input) < 8 or not n.input[6] or len(n.output) < 3)
    ]
    if without_cache:
        raise ExportError(
            f"--optimize ort fused {len(without_cache)} attention layer(s) without their past/present K/V "
            "(the cache would be concatenated around the fused node every step). Export with --optimize none."
        )
    return fused, {
        "renamed_dims": renamed,
        "fusions": {k: int(v) for k, v in fusions.items() if v},
        "op_counts": counts,
    }
