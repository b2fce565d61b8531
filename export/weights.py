"""The graph without its weights, and the weights written once, one tensor at a time, in the dtype the graph wants.

Tracing ``torch.onnx.export(dynamo=True)`` on the real module and saving the program holds the weights at least
twice (the fp32 module and the exporter's serialisation) and can only produce an fp32 graph; every pass after it
then loads that whole graph again. For a model of several GB that is several times the checkpoint in RAM
(export/README.md, Memory). Here instead:

1. :func:`trace_skeleton` traces a *meta twin* of the export module (the same module with every parameter and
   buffer on the meta device, in fp32: no data, so no memory) without the exporter's optimiser; every tensor with
   more than :data:`PENDING_MIN_ELEMENTS` elements becomes a *pending* initializer (external data at a location
   that does not exist, so the optimiser's rules skip it as "data not available"), the smaller ones get their real
   values from the module (the optimiser folds and deduplicates those exactly as it does on a real export). The
   exporter's ``Transpose`` of each ``nn.Linear`` weight is folded here into a pending initializer with a
   ``transpose`` recipe (the optimiser would fold it into an anonymous constant); then the exporter's optimiser
   runs. The result is the same graph as a real export (same nodes, inputs and outputs), as an ``onnx.ModelProto``
   whose large initializers are pending, plus a :class:`Recipe` per pending name saying how to make it from the
   module's tensors.
2. Passes rewrite that skeleton without reading weights (export/passes/: fusion rewrites nodes, fp16 changes
   initializer types, int4 and int8 replace each ``MatMul`` weight by pending initializers with a quantization
   recipe).
3. :func:`write_model` writes the model file once: each pending initializer is made from its source tensor (read
   from the module in the checkpoint's own dtype, upcast to fp32, transposed / quantized, converted to the
   initializer's type) and appended to ``model.onnx.data`` (or streamed into one self-contained ``model.onnx``),
   then dropped. Peak memory: the module (the checkpoint's bytes) + one tensor.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from evaluation.backends.onnx import MODEL_FILE
from evaluation.backends.onnx_device import length_field
from export.graph import export_program
from glm_core.errors import ExportError

DATA_FILE = MODEL_FILE + ".data"
# Tensors up to this many elements keep their values in the skeleton: onnx-ir's initializer deduplication reads
# every initializer of up to 1024 elements, and the small constants (norm weights, biases of tiny models) cost
# nothing to hold.
PENDING_MIN_ELEMENTS = 1025
# A location that never exists: the optimiser's rules treat such initializers as "external data not available"
# and leave them alone (onnxscript catches FileNotFoundError when it reads a constant).
PENDING_LOCATION = ".glm-export-pending-weight"
PENDING_BASE_DIR = "/nonexistent-glm-export-weights"
# Initializers over this many bytes go to the external data file (what onnx.save's size_threshold did).
EXTERNAL_MIN_BYTES = 1024
# Large tensors start at a multiple of this in the data file, so ONNX Runtime can memory-map them.
ALIGNMENT = 64 * 1024
_ALIGN_ABOVE = 1024 * 1024
# MatMulNBits block size of --quantize int4 (export/passes/quantize.py writes the nodes, this module the data).
INT4_BLOCK_SIZE = 32
# --quantize int8 rounds a weight this many elements at a time (the result is the same; the temporaries are small).
INT8_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Recipe:
    """How one pending initializer is made from the export module's tensors.

    ``source``: the module's parameter or buffer name; ``transpose``: ``[out, in] -> [in, out]`` (an ``nn.Linear``
    weight as the ``MatMul`` operand); ``part``: for quantized weights, which output of the quantizer
    (``"int4.weight"`` or ``"int4.scales"``), else ``None``.
    """

    source: str
    transpose: bool = False
    part: str | None = None


Recipes = dict[str, Recipe]


# ------------------------------------------------------------------------------------------------ tracing
def meta_twin(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters and buffers are fp32 meta tensors (no data): the module the
    exporter traces, so that tracing costs no weight memory and yields the fp32 graph whatever the module's dtype."""
    memo: dict[int, Any] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        dtype = torch.float32 if tensor.is_floating_point() else tensor.dtype
        empty = torch.empty_like(tensor, device="meta", dtype=dtype)
        memo[id(tensor)] = nn.Parameter(empty, requires_grad=False) if isinstance(tensor, nn.Parameter) else empty
    return copy.deepcopy(module, memo)


def module_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's parameters and buffers by name: the sources of every initializer of its traced graph."""
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _pending(name: str, dtype: Any, shape: Any) -> Any:
    import onnx_ir as ir

    return ir.ExternalTensor(
        PENDING_LOCATION, offset=0, length=0, dtype=dtype, shape=ir.Shape(shape), name=name, base_dir=PENDING_BASE_DIR
    )


def trace_skeleton(module: Any, opset: int) -> tuple[onnx.ModelProto, Recipes]:
    """Trace ``module`` (an export module with ``names``, ``example_arguments()`` and ``dynamic_shapes()``, e.g.
    graph.GLMExportModule) on its meta twin; returns the weightless graph and the recipe of each pending tensor."""
    import onnx_ir as ir

    twin = meta_twin(module)
    tensors = module_tensors(module)
    example = tuple(a.to("meta") for a in twin.example_arguments())
    program = export_program(twin, opset, example=example, optimize=False)
    graph = program.model.graph
    recipes: Recipes = {}
    for name, value in list(graph.initializers.items()):
        if name not in tensors:
            raise ExportError(f"the traced graph has an initializer {name!r} that is no tensor of the export module")
        source = tensors[name]
        if source.numel() < PENDING_MIN_ELEMENTS:
            array = source.detach().float() if source.is_floating_point() else source.detach()
            value.const_value = ir.tensor(array.cpu().numpy(), name=name)
            continue
        uses = list(value.uses())
        node = uses[0].node if len(uses) == 1 else None
        if node is not None and node.op_type == "Transpose" and _perm(node) == (1, 0) and len(value.shape) == 2:
            folded = f"{name}.T"  # the [in, out] MatMul operand of an nn.Linear weight [out, in]
            shape = [value.shape[1], value.shape[0]]
            new = ir.Value(name=folded, shape=ir.Shape(shape), type=ir.TensorType(value.dtype))
            new.const_value = _pending(folded, value.dtype, shape)
            graph.register_initializer(new)
            node.outputs[0].replace_all_uses_with(new)
            graph.remove(node, safe=True)
            graph.initializers.pop(name)
            recipes[folded] = Recipe(name, transpose=True)
            continue
        value.const_value = _pending(name, value.dtype, value.shape)
        recipes[name] = Recipe(name)
    program.optimize()  # the exporter's own optimiser (constant folding, deduplication, ...), pending data skipped
    skeleton = ir.serde.serialize_model(program.model)
    del program, twin
    live = {t.name for t in skeleton.graph.initializer if is_pending(t)}
    return skeleton, {name: recipe for name, recipe in recipes.items() if name in live}


def _perm(node: Any) -> tuple[int, ...] | None:
    attr = node.attributes.get("perm")
    return None if attr is None else tuple(attr.value)


def is_pending(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == PENDING_LOCATION for e in tensor.external_data
    )


def pending_tensor(name: str, data_type: int, dims: list[int]) -> onnx.TensorProto:
    """A pending initializer made by a pass (e.g. a quantized weight) to be written by :func:`write_model`."""
    tensor = onnx.TensorProto(name=name, data_type=data_type, dims=dims)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", PENDING_LOCATION), ("offset", "0"), ("length", "0")):
        tensor.external_data.add(key=key, value=value)
    return tensor


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of one initializer once written (pending ones included)."""
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    if not is_pending(tensor) and tensor.data_location == onnx.TensorProto.EXTERNAL:
        length = {e.key: e.value for e in tensor.external_data}.get("length")
        if length is not None:
            return int(length)
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def skeleton_bytes(model: onnx.ModelProto) -> int:
    return sum(tensor_bytes(t) for t in model.graph.initializer)


# ------------------------------------------------------------------------------------------------ making tensors
class TensorMaker:
    """Makes each pending initializer's array from the module's tensors, one at a time.

    The outputs of one weight's quantization (:func:`quantized_parts`) are made together and the others kept until
    they are asked for (the writer asks for them one after the other).
    """

    def __init__(self, tensors: dict[str, torch.Tensor], recipes: Recipes) -> None:
        self.tensors = tensors
        self.recipes = recipes
        self._kept: tuple[str, dict[str, np.ndarray]] | None = None

    def fp32(self, recipe: Recipe) -> np.ndarray:
        source = self.tensors.get(recipe.source)
        if source is None:
            raise ExportError(f"no tensor {recipe.source!r} in the export module")
        with torch.no_grad():
            array = source.detach().to(device="cpu", dtype=torch.float32)
            if recipe.transpose:
                array = array.t()
            return array.contiguous().numpy()

    def make(self, tensor: onnx.TensorProto) -> np.ndarray:
        recipe = self.recipes.get(tensor.name)
        if recipe is None:
            raise ExportError(f"initializer {tensor.name!r} has no recipe: a pass dropped its source")
        if recipe.part is None:
            return as_initializer_dtype(self.fp32(recipe), tensor.data_type)
        kind = recipe.part.split(".")[0]
        key = f"{kind}|{recipe.source}|{recipe.transpose}"
        if self._kept is None or self._kept[0] != key:
            self._kept = None  # the previous weight's leftover parts go before the next weight is made
            self._kept = (key, quantized_parts(kind, self.fp32(Recipe(recipe.source, recipe.transpose))))
        parts = self._kept[1]
        if recipe.part not in parts:
            raise ExportError(f"initializer {tensor.name!r}: its quantization gave no part {recipe.part!r}")
        array = parts.pop(recipe.part)
        if not parts:
            self._kept = None
        return array


def as_initializer_dtype(array: np.ndarray, data_type: int) -> np.ndarray:
    """fp32 -> the initializer's element type; to fp16 exactly as ORT's float16 converter does (values clamped to
    the fp16 range, tiny non-zero values kept at the smallest subnormal instead of flushed)."""
    if data_type == onnx.TensorProto.FLOAT:
        return array
    if data_type == onnx.TensorProto.FLOAT16:
        from onnxruntime.transformers.float16 import convert_np_to_float16

        return convert_np_to_float16(array)
    return array.astype(onnx.helper.tensor_dtype_to_np_dtype(data_type))


def quantized_parts(kind: str, weight: np.ndarray) -> dict[str, np.ndarray]:
    """Every initializer one ``[K, N]`` fp32 weight becomes under ``--quantize kind``, by part name."""
    if kind == "int4":
        packed, scales = int4_blocks(weight)
        return {"int4.weight": packed, "int4.scales": scales}
    if kind == "int8":
        return int8_per_tensor(weight)
    raise ExportError(f"unknown quantization {kind!r} in a weight recipe")


def int8_per_tensor(weight: np.ndarray) -> dict[str, np.ndarray]:
    """``--quantize int8`` data of one fp32 weight as ``quantize_dynamic`` makes it (int8, per tensor, symmetric, no
    reduced range): onnxruntime's ``compute_data_quant_params`` over the whole weight, then its ``quantize_nparray``
    on :data:`INT8_CHUNK_ELEMENTS` at a time (element-wise, so equal to one call on the whole)."""
    from onnxruntime.quantization.quant_utils import compute_data_quant_params, quantize_nparray

    flat = weight.reshape(-1)
    zero_point, scale = compute_data_quant_params(flat, onnx.TensorProto.INT8, symmetric=True)
    quantized = np.empty(flat.shape, dtype=np.int8)
    for start in range(0, flat.size, INT8_CHUNK_ELEMENTS):
        chunk = flat[start : start + INT8_CHUNK_ELEMENTS]
        quantized[start : start + INT8_CHUNK_ELEMENTS] = quantize_nparray(
            onnx.TensorProto.INT8, chunk, scale, zero_point
        )
    return {
        "int8.weight": quantized.reshape(weight.shape),
        "int8.scale": np.asarray(scale, dtype=weight.dtype).reshape(()),
        "int8.zero_point": np.asarray(zero_point, dtype=np.int8).reshape(()),
    }


def int4_blocks(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``MatMulNBits`` data of one ``[K, N]`` fp32 weight: packed ``[N, K/32, 16]`` uint8 and scales ``[N, K/32]``
    (block 32, symmetric), with ONNX Runtime's own kernel, as ``MatMulNBitsQuantizer`` computes them."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    rows, cols = weight.shape
    blocks = -(-rows // INT4_BLOCK_SIZE)
    if blocks * INT4_BLOCK_SIZE != rows:
        weight = np.pad(weight, ((0, blocks * INT4_BLOCK_SIZE - rows), (0, 0)))
    packed = np.zeros((cols, blocks, INT4_BLOCK_SIZE // 2), dtype=np.uint8)
    scales = np.zeros((cols, blocks), dtype=weight.dtype)
    zero_points = np.zeros((cols, (blocks + 1) // 2), dtype=np.uint8)
    quantize_matmul_4bits(packed, weight, scales, zero_points, INT4_BLOCK_SIZE, cols, rows, True)
    return packed, scales


# ------------------------------------------------------------------------------------------------ writing
def _data_of(tensor: onnx.TensorProto, maker: TensorMaker) -> np.ndarray | None:
    """The array to write for ``tensor`` (pending: made now; inline over EXTERNAL_MIN_BYTES: read), else None."""
    if is_pending(tensor):
        return maker.make(tensor)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raise ExportError(f"initializer {tensor.name!r} refers to external data the skeleton cannot carry")
    if tensor_bytes(tensor) > EXTERNAL_MIN_BYTES:
        return onnx.numpy_helper.to_array(tensor)
    return None


def _checked(tensor: onnx.TensorProto, array: np.ndarray) -> bytes:
    expected = tensor_bytes(tensor)
    data = np.ascontiguousarray(array).tobytes()
    if len(data) != expected:
        raise ExportError(f"initializer {tensor.name!r}: made {len(data)} bytes, its shape and type need {expected}")
    return data


def write_model(
    skeleton: onnx.ModelProto, maker: TensorMaker, directory: Path, external: bool, on_tensor: Callable | None = None
) -> list[str]:
    """Write ``directory/model.onnx`` (+ ``model.onnx.data`` when ``external``) from ``skeleton``, making each
    pending initializer with ``maker`` and writing it before the next is made. ``skeleton`` is not modified.
    Returns the data files written."""
    model = onnx.ModelProto()
    model.CopyFrom(skeleton)
    path = directory / MODEL_FILE
    if external:
        with open(directory / DATA_FILE, "wb") as data_file:
            for tensor in model.graph.initializer:
                array = _data_of(tensor, maker)
                if array is None:
                    continue
                data = _checked(tensor, array)
                del array
                if len(data) <= EXTERNAL_MIN_BYTES:  # a small made tensor (a quantization's scale) stays inline
                    _inline(tensor, data)
                    continue
                offset = data_file.tell()
                if len(data) > _ALIGN_ABOVE and offset % ALIGNMENT:
                    data_file.write(b"\0" * (ALIGNMENT - offset % ALIGNMENT))
                    offset = data_file.tell()
                data_file.write(data)
                _point_at(tensor, DATA_FILE, offset, len(data))
                if on_tensor is not None:
                    on_tensor(tensor.name)
        onnx.save_model(model, str(path))
        return [DATA_FILE]
    _write_inline(model, path, lambda tensor: _data_of(tensor, maker))
    return []


def _point_at(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "external_data"):
        tensor.ClearField(field)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)


def _inline(tensor: onnx.TensorProto, data: bytes) -> None:
    for field in ("raw_data", "external_data"):
        tensor.ClearField(field)
    tensor.data_location = onnx.TensorProto.DEFAULT
    tensor.raw_data = data


# Field numbers of onnx.proto3: ModelProto.graph, GraphProto.initializer, TensorProto.raw_data.
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9


def _write_inline(model: onnx.ModelProto, path: Path, data_of: Callable[[onnx.TensorProto], Any]) -> None:
    """One self-contained protobuf, each initializer's bytes made and written in turn (a message is the
    concatenation of its fields, in any order): memory stays at one tensor. Lengths come from shapes and types."""
    graph = model.graph
    heads: list[tuple[onnx.TensorProto, bytes, int]] = []  # (tensor, encoded head, data length or -1)
    for tensor in graph.initializer:
        if not is_pending(tensor) and tensor_bytes(tensor) <= EXTERNAL_MIN_BYTES:
            heads.append((tensor, tensor.SerializeToString(), -1))
            continue
        bare = onnx.TensorProto()
        bare.CopyFrom(tensor)
        length = tensor_bytes(tensor)
        _point_at(bare, "", 0, 0)
        bare.ClearField("external_data")
        bare.data_location = onnx.TensorProto.DEFAULT
        heads.append((tensor, bare.SerializeToString() + length_field(_TENSOR_RAW_DATA, length), length))
    tensors = list(graph.initializer)
    graph.ClearField("initializer")
    graph_rest = graph.SerializeToString()
    keys = [length_field(_GRAPH_INITIALIZER, len(head) + max(length, 0)) for _, head, length in heads]
    graph_length = len(graph_rest) + sum(
        len(key) + len(head) + max(length, 0) for key, (_, head, length) in zip(keys, heads, strict=True)
    )
    model.ClearField("graph")
    with open(path, "wb") as out:
        out.write(model.SerializeToString())
        out.write(length_field(_MODEL_GRAPH, graph_length))
        out.write(graph_rest)
        for key, (tensor, head, length) in zip(keys, heads, strict=True):
            out.write(key)
            out.write(head)
            if length >= 0:
                out.write(_checked(tensor, data_of(tensor)))
    graph.initializer.extend(tensors)


# ------------------------------------------------------------------------------------------------ reference
@contextlib.contextmanager
def computed_in_fp32(model: nn.Module) -> Iterator[nn.Module]:
    """Run a half-precision model in fp32 without holding an fp32 copy: each floating parameter is upcast when it is
    used (a parametrization) and the upcast copy dropped after. For a model loaded from an fp16/bf16 checkpoint this
    computes exactly what the same checkpoint loaded in fp32 computes (every fp16 value is exact in fp32), at the
    checkpoint's own memory. An fp32 model is used as it is."""
    from torch.nn.utils import parametrize

    half = [
        (module, name)
        for module in model.modules()
        for name, param in list(module.named_parameters(recurse=False))
        if param.is_floating_point() and param.dtype != torch.float32
    ]
    for module, name in half:
        parametrize.register_parametrization(module, name, _Upcast(), unsafe=True)
    try:
        yield model
    finally:
        for module, name in half:
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)


class _Upcast(nn.Module):
    """``tensor.float()``, reusing the last upcast copy while anything still holds it: a weight read again while an
    earlier read is alive (the tied word embeddings: the lookup, then the LM head, inside one call that holds them)
    is one fp32 copy, not one per read. GLM's forward itself does not hold them through the layers, so the largest
    matrix's copy exists only while the lookup or the LM head runs."""

    def __init__(self) -> None:
        super().__init__()
        self._last: weakref.ref[torch.Tensor] | None = None

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        held = self._last() if self._last is not None else None
        if held is not None:
            return held
        upcast = tensor.float()
        self._last = weakref.ref(upcast)
        return upcast
