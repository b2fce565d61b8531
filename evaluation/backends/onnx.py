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

Devices (onnx_device.py): ``providers="cuda:1"`` or ``[("CUDAExecutionProvider", {"device_id": 1, ...}),
"CPUExecutionProvider"]``. The device is read from the session once it is made; when ORT fell back from the
requested provider the backend refuses to start (ConfigError) instead of running elsewhere.

Threads: one backend may be shared by several threads. ``step`` keeps no state between calls except its counters
(updated under a lock); ``InferenceSession.run`` may be called concurrently (onnxruntime's documented
thread-safety), and the lazily built tokenizer and gather sessions are created under the same lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from evaluation.backends import kv_buffer
from evaluation.backends.onnx_device import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    DeviceGather,
    ProviderSpec,
    check_providers,
    parse_providers,
)
from evaluation.backends.onnx_graph import check_requested_dtype
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
# model.onnx's metadata_props (written by the exporter, export/model_dir.py): the file describes itself.
MODEL_FORMAT_KEY = "glm.format_version"
MODEL_FORMAT_VERSION = 1
METADATA_CONFIG_KEY = "glm.config"
METADATA_MASK_KEY = "glm.mask_rule"
METADATA_TOKENIZER_KEY = "glm.tokenizer"
# glm_config.json fields that metadata_props' glm.config repeats; they must agree.
METADATA_CONFIG_FIELDS = ("num_layers", "num_attention_heads", "head_dim", "hidden_size", "vocab_size")
ORT_TENSOR_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}

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
_TENSOR_NAME, _TENSOR_RAW_DATA, _TENSOR_EXTERNAL_DATA = 8, 9, 13
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


def raw_data_offsets(model_path: str | os.PathLike[str]) -> dict[str, tuple[int, int]]:
    """``{initializer name: (offset, length)}`` of each graph initializer's ``raw_data`` bytes inside the model
    file (memory-mapped and walked in wire format, as :func:`check_external_data` does): where a single-file model's
    weights lie, for another graph file to reference them as external data instead of copying them."""
    import mmap

    path = Path(model_path)
    out: dict[str, tuple[int, int]] = {}
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        wire = _Wire(buf, path)
        for number, a, b in wire.fields(0, len(buf)):
            if number != _MODEL_GRAPH:
                continue
            for field, start, end in wire.fields(a, b):
                if field != _GRAPH_INITIALIZER:
                    continue
                name, raw = None, None
                for t_field, t_start, t_end in wire.fields(start, end):
                    if t_field == _TENSOR_NAME:
                        name = wire.text(t_start, t_end)
                    elif t_field == _TENSOR_RAW_DATA:
                        raw = (t_start, t_end - t_start)
                if name is not None and raw is not None:
                    out[name] = raw
    return out


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

    ``providers``: ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"``, or ORT provider names / ``(name, options)`` pairs
    (onnx_device.parse_providers). ``threads``: intra-op threads (default: ORT's choice). ``allow_spinning=False``
    stops ORT's worker threads from spinning between runs (spec onnx_export §4.2 #10: set it when torch shares the
    process/cores).
    ``session_options`` / ``provider_options``: a caller's own ORT settings (the optimum wrapper passes the user's);
    ``session_options`` replaces the options built from ``threads``, ``allow_spinning`` and ``graph_optimization``;
    ``provider_options`` (one dict per provider name in ``providers``) pairs up with those names.
    ``dtype``: a check, not a cast: the graph's own precision or ``auto`` (:mod:`evaluation.backends.onnx_graph`).
    ``tokenizer``: a :class:`~glm_core.tokenizer.GLMTokenizer` to use instead of the model directory's.
    ``model_file``: another graph file of the directory to run instead of ``glm_config.json``'s (the same inputs,
    outputs and weights: the exporter's validation runs a variant of a quantized graph this way).
    ``cache_capacity``: positions a cache may hold with a ``--kv-cache buffer`` model (default twice
    ``max_sequence_length``: a full-length context and as long a generation); more is an ``InputError``.
    The cache layout is ``glm_config.json``'s ``kv_cache`` (``concat`` when absent); callers see the same contract.
    """

    supports_last_logits_only = True  # step(..., last_logits_only=True): generation's prefill (glm_core.generation)

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        providers: Sequence[ProviderSpec] | str | None = None,
        threads: int | None = None,
        allow_spinning: bool = True,
        graph_optimization: str = "all",
        session_options: ort.SessionOptions | None = None,
        provider_options: Sequence[dict[str, Any]] | None = None,
        *,
        dtype: str | None = None,
        tokenizer: Any = None,
        cache_capacity: int | None = None,
        model_file: str | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.config = read_model_config(self.model_dir)
        self.dtype = check_requested_dtype(self.config, dtype, str(self.model_dir))
        if model_file is not None and _escapes(self.model_dir.resolve(), model_file):
            raise ConfigError(f"model_file {model_file!r} must name a file inside {self.model_dir}")
        self.model_path = self.model_dir / (self.config["model_file"] if model_file is None else model_file)
        self.external_data = check_external_data(self.model_path)  # before any session touches the file
        if provider_options is not None:
            names = [providers] if isinstance(providers, str) else list(providers or ())
            if len(names) != len(provider_options) or not all(isinstance(n, str) for n in names):
                raise ConfigError("provider_options needs one options dict per provider name in providers")
            providers = [(name, dict(opts)) for name, opts in zip(names, provider_options, strict=True)]
        self.provider_request = parse_providers(providers)
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
        if session_options is not None:
            options = session_options
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=self.provider_request.session_args()
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ExportError(f"{self.model_path}: onnxruntime cannot load the model ({str(exc)[:300]})") from None
        # What the session runs on, not what was asked (a CUDA request that fell back is refused here).
        self.device_type, self.device_id = check_providers(self.session, self.provider_request, self.model_path)
        self.providers = list(self.session.get_providers())
        self.on_cuda = self.device_type == "cuda"

        self.num_layers = int(self.config["num_layers"])
        self.num_heads = int(self.config["num_attention_heads"])
        self.head_dim = int(self.config["head_dim"])
        self.vocab_size = int(self.config["vocab_size"])
        self.max_position = int(self.config["max_sequence_length"])
        self.kv_dtype = KV_DTYPES[self.config["kv_dtype"]]
        self.past_names = [f"past_key_values.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]
        self.present_names = [f"present.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]
        self.output_names = ["logits", *self.present_names]
        self.metadata = read_model_metadata(self.session, self.model_path)
        self.kv_cache = self.config.get("kv_cache", "concat")
        if self.kv_cache not in ("concat", "buffer"):
            raise ExportError(
                f"{self.model_dir / CONFIG_FILE}: kv_cache must be concat or buffer, got {self.kv_cache!r}"
            )
        self.cache_capacity = 2 * self.max_position if cache_capacity is None else int(cache_capacity)
        if self.cache_capacity < 1:
            raise ConfigError(f"cache_capacity must be >= 1, got {cache_capacity}")
        self._reserve = 0  # positions a new buffer-layout cache gets room for at once (reserved_cache)
        self._check_session_io()
        self._lock = threading.Lock()
        self._tokenizer: Any = tokenizer
        self._gather: DeviceGather | None = None
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
        # glm_config.json's layers/heads/head_dim against the graph's own cache inputs (and the metadata's config)
        for value in self.session.get_inputs()[3 + len(extra) :]:
            shape = list(value.shape)
            if len(shape) != 4 or shape[1] != self.num_heads or shape[3] != self.head_dim:
                raise ExportError(
                    f"{self.model_path}: graph input {value.name} has shape {shape}; {CONFIG_FILE} says "
                    f"[batch, {self.num_heads} heads, past, {self.head_dim} head_dim]"
                )
        logits_shape = list(self.session.get_outputs()[0].shape)
        if len(logits_shape) != 3 or (isinstance(logits_shape[2], int) and logits_shape[2] != self.vocab_size):
            raise ExportError(
                f"{self.model_path}: logits have shape {logits_shape}; {CONFIG_FILE} says [batch, seq, {self.vocab_size}]"
            )
        described = self.metadata.get("config", {})
        disagree = [k for k in METADATA_CONFIG_FIELDS if k in described and described[k] != self.config.get(k)]
        if disagree:
            raise ExportError(
                f"{self.model_path}: metadata_props {METADATA_CONFIG_KEY} disagrees with {CONFIG_FILE} on "
                + ", ".join(f"{k} ({described[k]} vs {self.config.get(k)})" for k in disagree)
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
        with self._lock:
            if self._tokenizer is None:
                if not self.config.get("tokenizer"):
                    raise ExportError(f"{self.model_dir}: this model directory has no tokenizer files")
                from glm_core.tokenizer import GLMTokenizer

                self._tokenizer = GLMTokenizer.from_pretrained(self.model_dir)
            return self._tokenizer

    def _device_gather(self) -> DeviceGather:
        with self._lock:
            if self._gather is None:
                self._gather = DeviceGather(self.provider_request, self.device_type, self.device_id)
            return self._gather

    @contextlib.contextmanager
    def reserved_cache(self, positions: int) -> Iterator[None]:
        """Inside the block, a cache the buffer layout allocates gets room for ``positions`` (at most the capacity)
        at once: a long prompt prefilled chunk by chunk then never grows, where each growth holds the old and the
        new cache (two caches of a near-full context at its last growth). The concat layout has nothing to
        reserve."""
        if positions < 1:
            raise ConfigError(f"reserved_cache needs positions >= 1, got {positions}")
        with self._lock:
            previous, self._reserve = self._reserve, int(positions)
        try:
            yield
        finally:
            with self._lock:
                self._reserve = previous

    # ------------------------------------------------------------------ the contract
    def step(
        self,
        input_ids: np.ndarray,
        position_ids: np.ndarray,
        sep: np.ndarray | int,
        past: Past | None = None,
        last_logits_only: bool = False,
    ) -> tuple[np.ndarray, list[ort.OrtValue]]:
        """``input_ids [B,S]``, ``position_ids [B,2,S]``, ``sep [B]`` (chunk-relative), ``past`` (None = empty)
        -> ``(logits [B,S,V] float32, present)``; ``past`` is not modified.

        ``last_logits_only``: return only the last row's logits ``[B,1,V]`` (what generation reads); on CUDA only
        that row leaves the device.
        """
        if self.kv_cache == "buffer":
            return self._step_buffer(input_ids, position_ids, sep, past, last_logits_only)
        ids, pos, sep_arr = check_step_inputs(self, input_ids, position_ids, sep, past)
        B = ids.shape[0]
        if past is None:
            empty = np.zeros((B, self.num_heads, 0, self.head_dim), dtype=self.kv_dtype)  # spec §0.1: P = 0 prefill
            past = [empty] * (2 * self.num_layers)
        if self.on_cuda:
            logits, present = self._run_device(ids, pos, sep_arr, past, last_logits_only)
        else:
            logits, present = self._run_cpu(ids, pos, sep_arr, past)
        return self._finish(logits, present, ids, last_logits_only and not self.on_cuda)

    def _step_buffer(
        self, input_ids: Any, position_ids: Any, sep: Any, past: Past | None, last_logits_only: bool
    ) -> tuple[np.ndarray, kv_buffer.BufferedPast]:
        """The buffer layout (evaluation/backends/kv_buffer.py): the chunk's rows are written into the cache."""
        ids, pos, sep_arr = check_step_inputs(self, input_ids, position_ids, sep, past)
        B, S = ids.shape
        dims = (self.num_heads, self.head_dim, self.num_layers)
        buffer, length = kv_buffer.prepare(past, B, S, self.cache_capacity, dims, self.kv_dtype, self._reserve)
        feeds = {"input_ids": _ortvalue(ids), "position_ids": _ortvalue(pos), "sep": _ortvalue(sep_arr)}
        logits, present = kv_buffer.run_step(self.session, feeds, self.past_names, self.output_names, buffer, length)
        return self._finish(logits, present, ids, last_logits_only)

    def _finish(self, logits: np.ndarray, present: Any, ids: np.ndarray, last_only: bool) -> tuple[np.ndarray, Any]:
        """The step's result: only the last row's logits when asked (and not already cut on the device); counted."""
        if last_only:
            logits = np.ascontiguousarray(logits[:, -1:])
        with self._lock:
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

    def _run_device(
        self, ids: np.ndarray, pos: np.ndarray, sep: np.ndarray, past: Past, last_logits_only: bool = False
    ) -> tuple[np.ndarray, list[ort.OrtValue]]:
        """One step through I/O binding (onnxruntime's documented API): the cache is bound as device OrtValues and
        the presents are allocated on the device, so only ids/positions/sep go up and logits come down (only the
        last row with ``last_logits_only``, gathered on the device). Runs on ``self.device_type``; the CPU-only test
        suite exercises it with device type ``cpu``."""
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("position_ids", pos)
        binding.bind_cpu_input("sep", sep)
        for name, value in zip(self.past_names, past, strict=True):
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value, dtype=self.kv_dtype))
        if last_logits_only:
            binding.bind_output("logits", self.device_type, self.device_id)
        else:
            binding.bind_output("logits", "cpu")
        for name in self.present_names:
            binding.bind_output(name, self.device_type, self.device_id)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        if last_logits_only:
            last = outputs[0].shape()[1] - 1
            (logits,) = self._device_gather()([outputs[0]], np.array([last]), axis=1)
            return logits.numpy(), list(outputs[1:])
        return outputs[0].numpy(), list(outputs[1:])

    def reorder_past(self, past: Past, index: np.ndarray) -> list[ort.OrtValue]:
        """Gather every cache tensor along the batch axis (beams, expanding one Part A over candidates).

        On CUDA the gather runs on the device (a ``Gather`` graph bound to the cache OrtValues): the cache never
        visits the host. On the CPU it is a numpy gather.
        """
        idx = np.asarray(index)
        if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
            raise InputError(f"reorder index must be a non-empty 1-d integer array, got {idx.dtype} {idx.shape}")
        batch = cache_shape(past[0])[0]
        if idx.min() < -batch or idx.max() >= batch:
            raise InputError(f"reorder index must lie in [0, {batch}) (the cache's batch), got {idx.tolist()}")
        idx = np.where(idx < 0, idx + batch, idx).astype(np.int64)
        if isinstance(past, kv_buffer.BufferedPast):
            return kv_buffer.reorder(past, idx, self.cache_capacity)  # type: ignore[return-value]
        if self.on_cuda:
            values = [v if isinstance(v, ort.OrtValue) else self._to_device(v) for v in past]
            return self._device_gather()(values, idx, axis=0)
        out = []
        for value in past:
            host = value.numpy() if isinstance(value, ort.OrtValue) else np.asarray(value)
            out.append(_ortvalue(np.ascontiguousarray(host[idx])))
        return out

    def _to_device(self, array: Any) -> ort.OrtValue:
        host = np.ascontiguousarray(array, dtype=self.kv_dtype)
        return ort.OrtValue.ortvalue_from_numpy(host, self.device_type, self.device_id)

    @staticmethod
    def past_length(past: Past | None) -> int:
        if past is None:
            return 0
        if isinstance(past, kv_buffer.BufferedPast):
            return past.length
        return int(cache_shape(past[0])[2])


# -------------------------------------------------------------------------------------------- model metadata
def read_model_metadata(session: Any, model_path: object) -> dict[str, Any]:
    """``model.onnx``'s ``metadata_props`` (format version, mask rule, GLM config, tokenizer convention).

    A format version this backend does not know is refused: the graph's contract may have changed.
    """
    props = dict(session.get_modelmeta().custom_metadata_map)
    version = props.get(MODEL_FORMAT_KEY)
    if version is None:
        raise ExportError(
            f"{model_path}: no {MODEL_FORMAT_KEY} in the model's metadata_props; not a graph written by "
            "`python -m export.onnx` (re-export it)"
        )
    if version != str(MODEL_FORMAT_VERSION):
        raise ExportError(
            f"{model_path}: model format version {version!r} is not supported by this backend "
            f"(expected {MODEL_FORMAT_VERSION}); re-export the model or upgrade glm-harness"
        )
    out: dict[str, Any] = {"format_version": int(version), "mask_rule": props.get(METADATA_MASK_KEY)}
    for key, name in ((METADATA_CONFIG_KEY, "config"), (METADATA_TOKENIZER_KEY, "tokenizer")):
        try:
            out[name] = json.loads(props[key]) if key in props else {}
        except json.JSONDecodeError:
            raise ExportError(f"{model_path}: metadata_props {key} is not valid JSON") from None
    return out


# ------------------------------------------------------------------------------------------------ input checks
def cache_shape(value: Any) -> tuple[int, ...]:
    """The shape of a cache tensor: an OrtValue, a buffer layout's CacheView, or an array."""
    if isinstance(value, ort.OrtValue | kv_buffer.CacheView):
        return tuple(value.shape())
    return tuple(np.shape(value))


def _cache_dtype(value: Any) -> str:
    """numpy's name of a cache tensor's dtype (``float32``), for an OrtValue or an array."""
    if isinstance(value, ort.OrtValue):
        return ORT_TENSOR_DTYPES.get(str(value.data_type()), str(value.data_type()))
    if isinstance(value, kv_buffer.CacheView):
        return value.array.dtype.name
    return np.asarray(value).dtype.name


def _integer_array(value: Any, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        # whole-valued floats (np.zeros(B)) are integers; 2.5 would be truncated, a bool or a string is no id
        whole = np.issubdtype(arr.dtype, np.floating) and bool(np.isfinite(arr).all() and (arr == np.round(arr)).all())
        if not whole:
            raise InputError(f"{name} must hold integers (int64), got {arr.dtype} values that are not whole numbers")
    return np.asarray(arr, dtype=np.int64)  # 0-d stays 0-d (ascontiguousarray would make it [1])


def check_step_inputs(
    backend: OnnxBackend, input_ids: Any, position_ids: Any, sep: Any, past: Past | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Everything ``step`` cannot run, as one InputError each; returns int64 ``ids``, ``positions``, ``sep``.

    Integer dtypes only (a float id would be truncated), a non-empty batch, ``sep`` one per row (or one scalar
    for all), ids and positions in range, and every cache tensor ``[B, H, P, D]`` with the same B and P and the
    model's cache dtype.
    """
    ids = _integer_array(input_ids, "input_ids")
    if ids.ndim != 2:
        raise InputError(f"input_ids must be [batch, seq], got shape {ids.shape}")
    B, S = ids.shape
    if B == 0:
        raise InputError("input_ids is an empty batch (batch = 0); expected at least one row")
    if S == 0:
        raise InputError(f"input_ids must be [batch, seq] with seq >= 1, got shape {ids.shape}")
    if ids.min() < 0 or ids.max() >= backend.vocab_size:
        raise InputError(f"input_ids must lie in [0, {backend.vocab_size}) (vocab_size)")
    pos = _integer_array(position_ids, "position_ids")
    if pos.shape != (B, 2, S):
        raise InputError(f"position_ids must be [batch, 2, seq] = [{B}, 2, {S}], got {pos.shape}")
    if pos.min() < 0 or pos.max() > backend.max_position:
        raise InputError(f"position ids must lie in [0, {backend.max_position}] (max_sequence_length)")
    sep_arr = _integer_array(sep, "sep")
    if sep_arr.ndim == 0:
        sep_arr = np.full(B, int(sep_arr), dtype=np.int64)
    elif sep_arr.shape != (B,):
        raise InputError(f"sep must hold one value per row, [batch] = [{B}], got shape {sep_arr.shape}")
    if sep_arr.min() < 0 or sep_arr.max() > S:
        raise InputError(f"sep must lie in [0, {S}] (chunk-relative, spec §2.1), got {sep_arr.tolist()}")
    if past is not None:
        _check_past(backend, past, B)
    return np.ascontiguousarray(ids), np.ascontiguousarray(pos), np.ascontiguousarray(sep_arr)


def _check_past(backend: OnnxBackend, past: Past, batch: int) -> None:
    count = 2 * backend.num_layers
    if len(past) != count:
        raise InputError(f"past must hold {count} tensors (key, value per layer), got {len(past)}")
    expected_dtype = np.dtype(backend.kv_dtype).name
    first_len = None
    for n, value in enumerate(past):
        shape = cache_shape(value)
        layer, kind = divmod(n, 2)
        where = f"past layer {layer} {('key', 'value')[kind]}"
        if len(shape) != 4 or shape[0] != batch or shape[1] != backend.num_heads or shape[3] != backend.head_dim:
            raise InputError(
                f"{where} must be [{batch}, {backend.num_heads}, P, {backend.head_dim}] (batch of input_ids), "
                f"got {list(shape)}"
            )
        first_len = shape[2] if first_len is None else first_len
        if shape[2] != first_len:
            raise InputError(f"{where} holds {shape[2]} positions, layer 0 key holds {first_len}; all must agree")
        dtype = _cache_dtype(value)
        if dtype != expected_dtype:
            raise InputError(f"{where} has dtype {dtype}; this model's cache is {expected_dtype} (kv_dtype)")


def _ortvalue(array: np.ndarray) -> ort.OrtValue:
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))


__all__ = ["CPU_PROVIDER", "CUDA_PROVIDER", "OnnxBackend", "check_step_inputs", "read_model_config"]
