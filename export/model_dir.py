"""The exported model directory: everything a runtime needs, nothing outside it.

Layout (DESIGN.md, spec onnx_export §6)::

    <out>/model.onnx            the graph (weights inline, or in model.onnx.data beside it)
    <out>/model.onnx.data       external weights, when the model is over protobuf's 2 GB limit or asked for
    <out>/glm_config.json       names, dims, dtypes, layers/heads, vocab, mask rule, special ids, tokenizer family
    <out>/<tokenizer files>     when the checkpoint had them (GLMTokenizer.save_pretrained)
    <out>/export_report.json    versions, sizes, timings, every validation figure

Everything is written into a staging directory beside ``--out`` and renamed at the end, so a failed export leaves
nothing at ``--out`` (DESIGN.md, rules of the house).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import onnx

from evaluation.backends.info import is_model_file
from evaluation.backends.onnx import (
    CONFIG_FORMAT_VERSION,
    METADATA_CONFIG_FIELDS,
    METADATA_CONFIG_KEY,
    METADATA_MASK_KEY,
    METADATA_TOKENIZER_KEY,
    MODEL_FILE,
    MODEL_FORMAT_KEY,
    MODEL_FORMAT_VERSION,
)
from evaluation.backends.onnx_device import length_field
from glm_core.atomic import make_staging_dir, move_into_place
from glm_core.config import GLMConfig
from glm_core.errors import ExportError
from glm_core.outputs import check_output, foreign_to, write_marker
from glm_core.special_tokens import SpecialTokens

DATA_FILE = MODEL_FILE + ".data"
REPORT_FILE = "export_report.json"
TOOL = "export.onnx"  # the output marker's tool name: --overwrite replaces only directories that carry it
PROTOBUF_LIMIT = 2 * 1024**3
# Leave room for the graph itself under protobuf's hard 2 GB limit.
EXTERNAL_DATA_THRESHOLD = int(1.8 * 1024**3)
# Above this, ``auto`` writes external data even where one file would fit: ONNX Runtime memory-maps external data
# (aligned offsets), while it reads a single file whole and copies its initializers out of it (measured at glm-2b
# dims, the 1.63 GB int4 model: 2.93 GB of session RSS from one file, 1.73 GB from external data).
EXTERNAL_DATA_AUTO_BYTES = 1024**3
EXTERNAL_DATA_MODES = ("auto", "always", "never")

# Key j visible to query t of the current chunk (0-based) iff this holds (DESIGN.md, spec glm_reference §2.1).
MASK_RULE = "j < P or (j - P) < sep[b] or (j - P) <= t"


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all initializers, inline or external."""
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            length = {e.key: e.value for e in tensor.external_data}.get("length")
            if length is not None:
                total += int(length)
                continue
        n = 1
        for d in tensor.dims:
            n *= d
        total += n * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return total


def use_external_data(model_bytes: int, mode: str) -> bool:
    if mode not in EXTERNAL_DATA_MODES:
        raise ExportError(f"--external-data must be one of {EXTERNAL_DATA_MODES}, got {mode!r}")
    if mode == "always":
        return True
    if mode == "never":
        if model_bytes > EXTERNAL_DATA_THRESHOLD:
            raise ExportError(
                f"the model's weights are {model_bytes / 1024**3:.2f} GB, over protobuf's 2 GB limit for one file; "
                "use --external-data auto or always"
            )
        return False
    return model_bytes > EXTERNAL_DATA_AUTO_BYTES


def save_model_file(model: onnx.ModelProto, directory: Path, external: bool) -> list[str]:
    """Write ``model.onnx`` (and ``model.onnx.data`` when ``external``); returns the data file names written."""
    path = directory / MODEL_FILE
    if external:
        # One data file, addressed relative to model.onnx: it never leaves the directory.
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=DATA_FILE,
            size_threshold=1024,
            convert_attribute=False,
        )
        return [DATA_FILE]
    onnx.save_model(model, str(path))
    return []


# Field numbers of onnx.proto3: ModelProto.graph, GraphProto.initializer, TensorProto.raw_data.
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9
_COPY_CHUNK = 64 * 1024 * 1024


def inline_external_data(src: Path, dst: Path) -> None:
    """Rewrite ``src`` (weights in external files beside it) as one self-contained ``dst``, streaming the bytes.

    ``onnx.load`` + ``onnx.save`` would hold the weights twice (the loaded protobuf and its serialisation); here the
    protobuf is written field by field (a message is the concatenation of its fields, in any order), so memory stays
    at one copy chunk whatever the model size. Only for models under protobuf's 2 GB limit.
    """
    model = onnx.load(str(src), load_external_data=False)
    graph = model.graph
    pieces: list[tuple[bytes, Path | None, int, int]] = []  # (encoded head, data file, offset, length)
    for tensor in graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            pieces.append((tensor.SerializeToString(), None, 0, 0))
            continue
        info = {e.key: e.value for e in tensor.external_data}
        data_file = src.parent / info["location"]
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else data_file.stat().st_size - offset
        tensor.ClearField("external_data")
        tensor.data_location = onnx.TensorProto.DEFAULT
        head = tensor.SerializeToString() + length_field(_TENSOR_RAW_DATA, length)
        pieces.append((head, data_file, offset, length))
    graph.ClearField("initializer")
    graph_rest = graph.SerializeToString()
    encoded = [
        (length_field(_GRAPH_INITIALIZER, len(head) + length), head, f, off, length) for head, f, off, length in pieces
    ]
    graph_length = len(graph_rest) + sum(len(key) + len(head) + length for key, head, _, _, length in encoded)
    model.ClearField("graph")
    with open(dst, "wb") as out:
        out.write(model.SerializeToString())
        out.write(length_field(_MODEL_GRAPH, graph_length))
        out.write(graph_rest)
        for key, head, data_file, offset, length in encoded:
            out.write(key)
            out.write(head)
            if data_file is None:
                continue
            with open(data_file, "rb") as data:
                data.seek(offset)
                remaining = length
                while remaining:
                    chunk = data.read(min(_COPY_CHUNK, remaining))
                    if not chunk:
                        raise ExportError(f"{data_file}: truncated external data (tensor {key!r})")
                    out.write(chunk)
                    remaining -= len(chunk)


def model_config(
    config: GLMConfig,
    *,
    model_name: str,
    dtype: str,
    kv_dtype: str,
    opset: int,
    optimize: str,
    quantize: str,
    special: SpecialTokens | None,
    has_tokenizer: bool,
    external_data: list[str],
    device: str,
) -> dict[str, Any]:
    """The contents of ``glm_config.json``: what a runtime needs to drive the graph without reading it."""
    L, H, D = config.num_layers, config.num_attention_heads, config.head_dim
    kv = {"dtype": kv_dtype, "shape": ["batch", H, "past", D]}
    inputs = [
        {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]},
        {"name": "position_ids", "dtype": "int64", "shape": ["batch", 2, "seq"]},
        {"name": "sep", "dtype": "int64", "shape": ["batch"]},
    ] + [{"name": f"past_key_values.{i}.{k}", **kv} for i in range(L) for k in ("key", "value")]
    present = {"dtype": kv_dtype, "shape": ["batch", H, "past + seq", D]}
    outputs = [{"name": "logits", "dtype": "float32", "shape": ["batch", "seq", config.vocab_size]}] + [
        {"name": f"present.{i}.{k}", **present} for i in range(L) for k in ("key", "value")
    ]
    return {
        "format_version": CONFIG_FORMAT_VERSION,
        "model_name": model_name,
        "model_file": MODEL_FILE,
        "external_data": external_data,
        "inputs": inputs,
        "outputs": outputs,
        "dims": {
            "batch": "rows in the batch (>= 1)",
            "seq": "tokens in this call (>= 1)",
            "past": "cached positions (>= 0; 0 = prefill with empty past tensors)",
        },
        "dtype": dtype,
        "kv_dtype": kv_dtype,
        "logits_dtype": "float32",
        "opset": opset,
        "optimize": optimize,
        "quantize": quantize,
        "device": device,
        "num_layers": L,
        "num_attention_heads": H,
        "head_dim": D,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "max_sequence_length": config.max_sequence_length,
        "gelu": config.gelu,
        "layernorm_epsilon": config.layernorm_epsilon,
        "position_ids": "row 0 = position, row 1 = block position (spec glm_reference §3.1)",
        "mask": {
            "input": "sep",
            "rule": MASK_RULE,
            "sep": "relative to the current chunk: prefill of Part A + Part B uses len(Part A), later chunks 0",
            "form": "additive bias on QK^T/sqrt(d), built in the graph",
            "masked_value": "finfo(compute dtype).min",
        },
        "tokenizer_family": config.tokenizer_family,
        "tokenizer": has_tokenizer,
        "special_tokens": None if special is None else {**special.to_dict(), "bad_words": list(special.bad_words)},
    }


# ModelProto.metadata_props and the fields of its StringStringEntryProto (onnx.proto3).
_MODEL_METADATA_PROPS, _ENTRY_KEY, _ENTRY_VALUE = 14, 1, 2
METADATA_PREFIX = "glm."


def model_metadata(glm_config: dict[str, Any]) -> dict[str, str]:
    """``model.onnx``'s own description: format version, mask rule, GLM config, tokenizer convention.

    The backend reads these (evaluation.backends.onnx.read_model_metadata), refuses a format version it does not
    know and checks the config against ``glm_config.json``; other tools see what the graph computes without it.
    """
    config_fields = (*METADATA_CONFIG_FIELDS, "max_sequence_length", "gelu", "layernorm_epsilon", "dtype", "kv_dtype")
    config = {k: glm_config[k] for k in (*config_fields, "optimize", "quantize")}
    tokenizer = {
        "family": glm_config["tokenizer_family"],
        "special_tokens": glm_config["special_tokens"],
        "position_ids": glm_config["position_ids"],
        "sep": glm_config["mask"]["sep"],
    }
    return {
        MODEL_FORMAT_KEY: str(MODEL_FORMAT_VERSION),
        METADATA_MASK_KEY: MASK_RULE,
        METADATA_CONFIG_KEY: json.dumps(config, sort_keys=True),
        METADATA_TOKENIZER_KEY: json.dumps(tokenizer, sort_keys=True),
    }


def append_metadata(model_path: Path, props: dict[str, str]) -> None:
    """Add ``metadata_props`` entries to ``model_path`` by appending them to the file.

    A protobuf message is the concatenation of its fields and repeated fields accumulate, so appending entries is
    the same as adding them to the loaded model, without reading (or holding) its weights. The file must not hold
    these keys yet (:func:`drop_glm_metadata` on a graph read back from a stage).
    """

    def entry(key: str, value: str) -> bytes:
        body = b""
        for number, text in ((_ENTRY_KEY, key), (_ENTRY_VALUE, value)):
            data = text.encode("utf-8")
            body += length_field(number, len(data)) + data
        return length_field(_MODEL_METADATA_PROPS, len(body)) + body

    with open(model_path, "ab") as out:
        out.write(b"".join(entry(k, v) for k, v in props.items()))


def drop_glm_metadata(model: onnx.ModelProto) -> None:
    """Remove the exporter's own ``metadata_props`` (a pass rewrites the graph; the next stage writes them anew)."""
    kept = [p for p in model.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)


def file_sizes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}


class StagingDir:
    """A temporary directory beside ``out`` that becomes ``out`` on :meth:`commit`, or disappears."""

    def __init__(self, out: Path, overwrite: bool) -> None:
        self.out = out
        self.overwrite = overwrite
        check_output_path(out, overwrite)
        try:
            self.path = make_staging_dir(out)
        except OSError as exc:
            raise ExportError(f"{out.parent}: cannot create a directory there ({exc.strerror})") from None
        self.work = self.path / ".work"  # intermediate files; removed before commit
        self.work.mkdir()

    def commit(self) -> Path:
        shutil.rmtree(self.work, ignore_errors=True)
        write_marker(self.path, TOOL)
        check_output_path(self.out, self.overwrite)  # again: something may have appeared there during the export
        move_into_place(self.path, self.out)
        return self.out

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> StagingDir:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None or self.path.exists():
            self.discard()


def _writes(name: str) -> bool:
    """The names an export writes into its directory."""
    return name == REPORT_FILE or is_model_file(name)


def check_output_path(out: Path, overwrite: bool) -> None:
    """Fail before any slow work when ``--out`` cannot be written: not the current directory or a parent, not a
    file, a writable parent; an existing directory only with ``--overwrite`` and only if an export wrote it."""
    check_output(
        out,
        overwrite=overwrite,
        flag="--out",
        foreign=lambda p: foreign_to(p, {TOOL}, signature=(MODEL_FILE, "glm_config.json"), expected=_writes),
        what="an ONNX export directory",
        error=ExportError,
    )
