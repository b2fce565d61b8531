"""The ONNX Runtime backend: the GLM step contract over an exported model directory, without torch.

A model directory is what ``python -m export.onnx`` writes: ``model.onnx`` (+ its external data file),
``glm_config.json`` (input/output names, dims, dtypes, layer/head counts, special ids) and, when the checkpoint had
them, tokenizer files. This module reads only that directory and imports only numpy, onnxruntime and torch-free
``glm_core`` modules (DESIGN.md: the ONNX path needs no torch, nor the onnx package).

    backend = OnnxBackend("glm-tiny-onnx")
    logits, present = backend.step(input_ids, position_ids, sep, None)      # prefill (P = 0)
    logits, present = backend.step(next_ids, next_pos, np.zeros(B), present)  # decode, sep = 0

``present`` is a list of ``2L`` :class:`onnxruntime.OrtValue` (``key_0, value_0, key_1, ...``, each ``[B,H,P,D]``)
that is fed back as is: on CPU through ``run_with_ort_values`` (no numpy round trip), on CUDA through I/O binding
so the cache stays on the device.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from evaluation.backends import kv_buffer
from glm_core.errors import ConfigError, ExportError, InputError
from glm_core.special_tokens import SpecialTokens

CONFIG_FILE = "glm_config.json"
MODEL_FILE = "model.onnx"
CONFIG_FORMAT_VERSION = 1
REQUIRED_CONFIG_FIELDS = (
    "format_version",
    "model_file",
    "inputs",
    "outputs",
    "num_layers",
    "num_attention_heads",
    "head_dim",
    "vocab_size",
    "max_sequence_length",
    "kv_dtype",
)
KV_DTYPES = {"float32": np.float32, "float16": np.float16}
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"

Past = Sequence[Any]  # 2L OrtValues (or numpy arrays) [B, H, P, D]


# ---------------------------------------------------------------------------------------------- model-dir checks
def read_model_config(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and check ``glm_config.json`` of a model directory."""
    root = Path(model_dir)
    if not root.is_dir():
        raise ExportError(f"{root}: ONNX model directory not found")
    path = root / CONFIG_FILE
    if not path.is_file():
        raise ExportError(f"{path}: missing; expected a model directory written by `python -m export.onnx`")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ExportError(f"{path}: expected a JSON object")
    missing = [k for k in REQUIRED_CONFIG_FIELDS if k not in config]
    if missing:
        raise ExportError(f"{path}: missing field(s) {', '.join(missing)}")
    if config["format_version"] != CONFIG_FORMAT_VERSION:
        raise ExportError(
            f"{path}: format_version {config['format_version']!r} is not supported (expected {CONFIG_FORMAT_VERSION})"
        )
    if config["kv_dtype"] not in KV_DTYPES:
        raise ExportError(f"{path}: kv_dtype must be one of {sorted(KV_DTYPES)}, got {config['kv_dtype']!r}")
    model_file = config["model_file"]
    if not isinstance(model_file, str) or _escapes(root, model_file):
        raise ExportError(f"{path}: model_file {model_file!r} must name a file inside the model directory")
    return config


def _escapes(root: Path, location: str) -> bool:
    """True when ``location`` is absolute or resolves (symlinks included) outside ``root``."""
    if not location or os.path.isabs(location) or Path(location).drive:
        return True
    base = root.resolve()
    target = (base / location).resolve()
    return target != base and base not in target.parents


# Field numbers of onnx.proto3 that can lead to a TensorProto (the check walks the protobuf wire format itself, so
# it needs no onnx package and never copies the weights of an inline model).
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_FUNCTION_NODE = 7
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE_TENSOR, _ATTR_SPARSE_TENSORS = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA = 8, 13
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


class _Wire:
    """Minimal protobuf wire-format reader over a memory map: yields length-delimited fields as byte ranges."""

    def __init__(self, buf: Any, path: Path) -> None:
        self.buf = buf
        self.path = path

    def _varint(self, pos: int, end: int) -> tuple[int, int]:
        value, shift = 0, 0
        while True:
            if pos >= end or shift > 63:
                raise ExportError(f"{self.path}: not a valid ONNX protobuf (bad varint)")
            byte = self.buf[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, pos
            shift += 7

    def fields(self, start: int, end: int) -> Any:
        """Yield ``(field number, start, end)`` of every length-delimited field in ``[start, end)``."""
        pos = start
        while pos < end:
            key, pos = self._varint(pos, end)
            number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                _, pos = self._varint(pos, end)
            elif wire_type == 1:
                pos += 8
            elif wire_type == 5:
                pos += 4
            elif wire_type == 2:
                length, pos = self._varint(pos, end)
                if pos + length > end:
                    raise ExportError(f"{self.path}: not a valid ONNX protobuf (field runs past its message)")
                yield number, pos, pos + length
                pos += length
            else:
                raise ExportError(f"{self.path}: not a valid ONNX protobuf (wire type {wire_type})")
            if pos > end:
                raise ExportError(f"{self.path}: not a valid ONNX protobuf (truncated)")

    def text(self, start: int, end: int) -> str:
        return bytes(self.buf[start:end]).decode("utf-8", errors="replace")


def _external_locations(wire: _Wire, start: int, end: int, kind: str, found: list[tuple[str, str]]) -> None:
    """Collect ``(tensor name, location)`` of every external-data tensor inside a message of ``kind``."""
    for number, a, b in wire.fields(start, end):
        if kind == "model":
            if number == _MODEL_GRAPH:
                _external_locations(wire, a, b, "graph", found)
            elif number == _MODEL_FUNCTIONS:
                _external_locations(wire, a, b, "function", found)
        elif kind == "graph":
            if number == _GRAPH_NODE:
                _external_locations(wire, a, b, "node", found)
            elif number == _GRAPH_INITIALIZER:
                _external_locations(wire, a, b, "tensor", found)
            elif number == _GRAPH_SPARSE_INITIALIZER:
                _external_locations(wire, a, b, "sparse", found)
        elif kind == "function" and number == _FUNCTION_NODE:
            _external_locations(wire, a, b, "node", found)
        elif kind == "node" and number == _NODE_ATTRIBUTE:
            _external_locations(wire, a, b, "attribute", found)
        elif kind == "attribute":
            if number in (_ATTR_T, _ATTR_TENSORS):
                _external_locations(wire, a, b, "tensor", found)
            elif number in (_ATTR_G, _ATTR_GRAPHS):
                _external_locations(wire, a, b, "graph", found)
            elif number in (_ATTR_SPARSE_TENSOR, _ATTR_SPARSE_TENSORS):
                _external_locations(wire, a, b, "sparse", found)
        elif kind == "sparse" and number in (_SPARSE_VALUES, _SPARSE_INDICES):
            _external_locations(wire, a, b, "tensor", found)
    if kind == "tensor":
        name, entries = "", {}
        for number, a, b in wire.fields(start, end):
            if number == _TENSOR_NAME:
                name = wire.text(a, b)
            elif number == _TENSOR_EXTERNAL_DATA:
                entry = {n: wire.text(x, y) for n, x, y in wire.fields(a, b)}
                entries[entry.get(_ENTRY_KEY, "")] = entry.get(_ENTRY_VALUE, "")
        if entries:
            found.append((name, entries.get("location", "")))


def check_external_data(model_path: str | os.PathLike[str]) -> list[str]:
    """Refuse a model whose external-data paths leave its directory; return the data files it uses.

    Done before ORT opens the file: an ``.onnx`` file from elsewhere could otherwise make ORT read any file on
    the machine (``location`` = ``/etc/...`` or ``../../...``). The file is memory-mapped and walked in protobuf
    wire format, so an inline multi-GB model costs no extra memory.
    """
    import mmap

    path = Path(model_path)
    if not path.is_file():
        raise ExportError(f"{path}: ONNX model file not found")
    found: list[tuple[str, str]] = []
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise ExportError(f"{path}: empty file, not an ONNX model")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            wire = _Wire(buf, path)
            _external_locations(wire, 0, len(buf), "model", found)
    root = path.parent
    files: list[str] = []
    for name, location in found:
        if _escapes(root, location):
            raise ExportError(
                f"{path}: tensor {name!r} keeps its data at {location!r}, outside the model directory; "
                "external data must be a relative path inside the directory"
            )
        if not (root / location).is_file():
            raise ExportError(f"{path}: external data file {location!r} of tensor {name!r} is missing")
        if location not in files:
            files.append(location)
    return files


# --------------------------------------------------------------------------------------------- the backend
class OnnxBackend:
    """The GLM step contract (DESIGN.md) over ``onnxruntime.InferenceSession``.

    ``providers``: ORT provider names (default CPU); ``"cuda"``/``"cpu"`` are accepted as shorthands.
    ``threads``: intra-op threads (default: ORT's choice). ``allow_spinning=False`` stops ORT's worker threads
    from spinning between runs (spec onnx_export §4.2 #10: set it when torch shares the process/cores).
    ``cache_capacity``: positions a cache may hold with a ``--kv-cache buffer`` model (default twice
    ``max_sequence_length``: a full-length context and as long a generation); more is an ``InputError``.
    The cache layout is ``glm_config.json``'s ``kv_cache`` (``concat`` when absent); callers see the same contract.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
        allow_spinning: bool = True,
        graph_optimization: str = "all",
        cache_capacity: int | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.config = read_model_config(self.model_dir)
        self.model_path = self.model_dir / self.config["model_file"]
        self.external_data = check_external_data(self.model_path)  # before any session touches the file
        self.providers = _resolve_providers(providers)
        self.on_cuda = self.providers[0] == CUDA_PROVIDER
        self.device_id = 0
        options = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise ConfigError(f"threads must be >= 1, got {threads}")
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        levels = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if graph_optimization not in levels:
            raise ConfigError(f"graph_optimization must be one of {sorted(levels)}, got {graph_optimization!r}")
        options.graph_optimization_level = levels[graph_optimization]
        try:
            self.session = ort.InferenceSession(str(self.model_path), sess_options=options, providers=self.providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ExportError(f"{self.model_path}: onnxruntime cannot load the model ({str(exc)[:300]})") from None

        self.num_layers = int(self.config["num_layers"])
        self.num_heads = int(self.config["num_attention_heads"])
        self.head_dim = int(self.config["head_dim"])
        self.vocab_size = int(self.config["vocab_size"])
        self.max_position = int(self.config["max_sequence_length"])
        self.kv_dtype = KV_DTYPES[self.config["kv_dtype"]]
        self.past_names = [f"past_key_values.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]
        self.present_names = [f"present.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]
        self.output_names = ["logits", *self.present_names]
        self.kv_cache = self.config.get("kv_cache", "concat")
        if self.kv_cache not in ("concat", "buffer"):
            raise ExportError(
                f"{self.model_dir / CONFIG_FILE}: kv_cache must be concat or buffer, got {self.kv_cache!r}"
            )
        self.cache_capacity = 2 * self.max_position if cache_capacity is None else int(cache_capacity)
        if self.cache_capacity < 1:
            raise ConfigError(f"cache_capacity must be >= 1, got {cache_capacity}")
        self._check_session_io()
        self._tokenizer: Any = None
        self.calls = 0
        self.tokens_seen = 0

    # ------------------------------------------------------------------ metadata
    def _check_session_io(self) -> None:
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        extra = [kv_buffer.PAST_LENGTH] if self.kv_cache == "buffer" else []
        expected_in = ["input_ids", "position_ids", "sep", *extra, *self.past_names]
        if inputs != expected_in or outputs != self.output_names:
            raise ExportError(
                f"{self.model_path}: graph inputs/outputs do not match {CONFIG_FILE} "
                f"(inputs {inputs[:4]}..., outputs {outputs[:3]}...)"
            )

    @property
    def special_tokens(self) -> SpecialTokens | None:
        data = self.config.get("special_tokens")
        if not data:
            return None
        values = dict(data)
        values["bad_words"] = tuple(values.get("bad_words", ()))
        return SpecialTokens(**values)

    @property
    def tokenizer(self) -> Any:
        """The model directory's tokenizer (:class:`glm_core.tokenizer.GLMTokenizer`), loaded on first use."""
        if self._tokenizer is None:
            if not self.config.get("tokenizer"):
                raise ExportError(f"{self.model_dir}: this model directory has no tokenizer files")
            from glm_core.tokenizer import GLMTokenizer

            self._tokenizer = GLMTokenizer.from_pretrained(self.model_dir)
        return self._tokenizer

    # ------------------------------------------------------------------ the contract
    def step(
        self,
        input_ids: np.ndarray,
        position_ids: np.ndarray,
        sep: np.ndarray | int,
        past: Past | None = None,
    ) -> tuple[np.ndarray, list[ort.OrtValue]]:
        """``input_ids [B,S]``, ``position_ids [B,2,S]``, ``sep [B]`` (chunk-relative), ``past`` (None = empty)
        -> ``(logits [B,S,V] float32, present)``; ``past`` is not modified."""
        if self.kv_cache == "buffer":
            return self._step_buffer(input_ids, position_ids, sep, past)
        ids, pos, sep_arr = self._check_inputs(input_ids, position_ids, sep, past)
        B = ids.shape[0]
        if past is None:
            empty = np.zeros((B, self.num_heads, 0, self.head_dim), dtype=self.kv_dtype)  # spec §0.1: P = 0 prefill
            past = [empty] * (2 * self.num_layers)
        if self.on_cuda:
            logits, present = self._run_cuda(ids, pos, sep_arr, past)
        else:
            logits, present = self._run_cpu(ids, pos, sep_arr, past)
        self.calls += 1
        self.tokens_seen += int(ids.size)
        return logits, present

    def _step_buffer(
        self, input_ids: Any, position_ids: Any, sep: Any, past: Past | None
    ) -> tuple[np.ndarray, kv_buffer.BufferedPast]:
        """The buffer layout (evaluation/backends/kv_buffer.py): the chunk's rows are written into the cache."""
        ids, pos, sep_arr = self._check_inputs(input_ids, position_ids, sep, None)
        B, S = ids.shape
        dims = (self.num_heads, self.head_dim, self.num_layers)
        buffer, length = kv_buffer.prepare(past, B, S, self.cache_capacity, dims, self.kv_dtype)
        feeds = {"input_ids": _ortvalue(ids), "position_ids": _ortvalue(pos), "sep": _ortvalue(sep_arr)}
        logits, present = kv_buffer.run_step(self.session, feeds, self.past_names, self.output_names, buffer, length)
        self.calls += 1
        self.tokens_seen += int(ids.size)
        return logits, present

    def _run_cpu(
        self, ids: np.ndarray, pos: np.ndarray, sep: np.ndarray, past: Past
    ) -> tuple[np.ndarray, list[ort.OrtValue]]:
        feeds = {"input_ids": _ortvalue(ids), "position_ids": _ortvalue(pos), "sep": _ortvalue(sep)}
        for name, value in zip(self.past_names, past, strict=True):
            feeds[name] = value if isinstance(value, ort.OrtValue) else _ortvalue(np.asarray(value, self.kv_dtype))
        outputs = self.session.run_with_ort_values(self.output_names, feeds)
        return outputs[0].numpy(), list(outputs[1:])

    def _run_cuda(
        self, ids: np.ndarray, pos: np.ndarray, sep: np.ndarray, past: Past
    ) -> tuple[np.ndarray, list[ort.OrtValue]]:
        # I/O binding per onnxruntime-gpu's documented API: the cache is bound as device OrtValues and the presents
        # are allocated on the device, so only ids/positions/sep go up and logits come down. Not exercised by the
        # CPU-only test suite (no CUDA here); the export CLI validates it when run with --device cuda.
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("position_ids", pos)
        binding.bind_cpu_input("sep", sep)
        for name, value in zip(self.past_names, past, strict=True):
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value, dtype=self.kv_dtype))
        binding.bind_output("logits", "cpu")
        for name in self.present_names:
            binding.bind_output(name, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[0].numpy(), list(outputs[1:])

    def reorder_past(self, past: Past, index: np.ndarray) -> list[ort.OrtValue]:
        """Gather every cache tensor along the batch axis (beams, expanding one Part A over candidates).

        ORT has no device-side gather for OrtValues, so this goes through host memory (on CUDA too).
        """
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        if isinstance(past, kv_buffer.BufferedPast):
            return kv_buffer.reorder(past, idx, self.cache_capacity)  # type: ignore[return-value]
        out = []
        for value in past:
            host = value.numpy() if isinstance(value, ort.OrtValue) else np.asarray(value)
            gathered = np.ascontiguousarray(host[idx])
            if self.on_cuda:
                out.append(ort.OrtValue.ortvalue_from_numpy(gathered, "cuda", self.device_id))
            else:
                out.append(_ortvalue(gathered))
        return out

    @staticmethod
    def past_length(past: Past | None) -> int:
        if past is None:
            return 0
        if isinstance(past, kv_buffer.BufferedPast):
            return past.length
        first = past[0]
        shape = first.shape() if isinstance(first, ort.OrtValue) else np.shape(first)
        return int(shape[2])

    # ------------------------------------------------------------------ input checks
    def _check_inputs(
        self, input_ids: Any, position_ids: Any, sep: Any, past: Past | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise InputError(f"input_ids must be [batch, seq] with seq >= 1, got shape {ids.shape}")
        B, S = ids.shape
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise InputError(f"input_ids must lie in [0, {self.vocab_size}) (vocab_size)")
        pos = np.ascontiguousarray(position_ids, dtype=np.int64)
        if pos.shape != (B, 2, S):
            raise InputError(f"position_ids must be [batch, 2, seq] = [{B}, 2, {S}], got {pos.shape}")
        if pos.min() < 0 or pos.max() > self.max_position:
            raise InputError(f"position ids must lie in [0, {self.max_position}] (max_sequence_length)")
        sep_arr = np.ascontiguousarray(np.broadcast_to(np.asarray(sep, dtype=np.int64).reshape(-1), (B,)))
        if sep_arr.min() < 0 or sep_arr.max() > S:
            raise InputError(f"sep must lie in [0, {S}] (chunk-relative, spec §2.1), got {sep_arr.tolist()}")
        if past is not None:
            if len(past) != 2 * self.num_layers:
                raise InputError(
                    f"past must hold {2 * self.num_layers} tensors (key, value per layer), got {len(past)}"
                )
            first = past[0]
            shape = tuple(first.shape() if isinstance(first, ort.OrtValue) else np.shape(first))
            if len(shape) != 4 or shape[0] != B or shape[1] != self.num_heads or shape[3] != self.head_dim:
                raise InputError(f"past tensors must be [{B}, {self.num_heads}, P, {self.head_dim}], got {shape}")
        return ids, pos, sep_arr


def _ortvalue(array: np.ndarray) -> ort.OrtValue:
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))


def _resolve_providers(providers: Sequence[str] | str | None) -> list[str]:
    shorthand = {"cpu": [CPU_PROVIDER], "cuda": [CUDA_PROVIDER, CPU_PROVIDER]}
    if providers is None:
        providers = [CPU_PROVIDER]
    elif isinstance(providers, str):
        providers = shorthand.get(providers.lower(), [providers])
    available = ort.get_available_providers()
    chosen = list(providers)
    for name in chosen:
        if name not in available:
            raise ConfigError(
                f"onnxruntime provider {name!r} is not available in this installation "
                f"(available: {', '.join(available)}); for CUDA install onnxruntime-gpu"
            )
    return chosen
