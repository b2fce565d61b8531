"""What an exported ONNX graph computes in, read from its ``glm_config.json``, and the check of a requested ``dtype``
(torch-free, no onnxruntime).

An ONNX graph has one precision, fixed at export (``python -m export.onnx --dtype fp16`` / ``--quantize int8``): a
runtime cannot cast it. So ``dtype=`` for the ONNX backend is a *check*, not a conversion: the graph's own dtype (or,
for a quantized graph, its quantization) or ``auto`` is accepted, anything else is an error that says how to get such
a graph; the recorded dtype is always the graph's.
"""

from __future__ import annotations

from typing import Any

from glm_core.errors import ConfigError

DTYPE_ALIASES = {
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "bf16": "bf16",
    "bfloat16": "bf16",
}


def graph_dtype(config: dict[str, Any]) -> str:
    """``fp32`` / ``fp16`` (the graph's compute dtype), suffixed ``+int8`` / ``+int4`` for a quantized graph."""
    dtype = str(config.get("dtype") or ("fp16" if config.get("kv_dtype") == "float16" else "fp32"))
    quantize = str(config.get("quantize") or "none")
    return dtype if quantize == "none" else f"{dtype}+{quantize}"


def check_requested_dtype(config: dict[str, Any], requested: str | None, where: str) -> str:
    """The graph's dtype; :class:`ConfigError` when ``requested`` is set and names another precision."""
    own = graph_dtype(config)
    if requested in (None, "", "auto", "None"):
        return own
    text = str(requested).strip().lower()
    compute, _, quantize = own.partition("+")
    if DTYPE_ALIASES.get(text) == compute or (quantize and text == quantize) or text == own:
        return own
    raise ConfigError(
        f"{where}: dtype={requested} but this ONNX graph computes in {own} (fixed at export); drop dtype, pass "
        f"dtype={compute} or auto, or export a graph in that precision (python -m export.onnx --dtype fp16 | "
        "--quantize int8|int4)"
    )
