"""Execution providers for the ONNX backend: what was asked, what ONNX Runtime actually runs, device-side gathers.

- :func:`parse_providers` turns ``"cpu"``, ``"cuda"``, ``"cuda:N"``, provider names or ``(name, options)`` pairs into
  the ``providers`` list ``onnxruntime.InferenceSession`` takes;
- :func:`check_providers` compares the request with ``session.get_providers()`` *after* the session is made: ORT
  silently falls back to the CPU when an execution provider fails to load (it only prints a message), so a request
  for CUDA that ended on the CPU is an error here, not a "validated on cuda";
- :class:`DeviceGather` gathers OrtValues along an axis where they live (beam reordering of a CUDA cache, the last
  row of device logits) with a small ``Gather`` graph run through I/O binding (``bind_ortvalue_input`` /
  ``bind_output(device)``), onnxruntime's documented way of keeping tensors on the device. The graph is encoded
  here in protobuf wire format, so the ONNX path still needs neither torch nor the onnx package.

Imports only numpy and onnxruntime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from evaluation.backends.devices import parse_device
from glm_core.errors import ConfigError

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
DEVICE_TYPES = {CUDA_PROVIDER: "cuda", CPU_PROVIDER: "cpu"}

ProviderSpec = str | tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class ProviderRequest:
    """The providers to ask ORT for, in order, each with its options (string keys and values, as ORT keeps them)."""

    providers: tuple[tuple[str, dict[str, str]], ...]

    @property
    def primary(self) -> str:
        return self.providers[0][0]

    def session_args(self) -> list[tuple[str, dict[str, str]]]:
        return [(name, dict(options)) for name, options in self.providers]


def parse_providers(providers: Sequence[ProviderSpec] | str | None) -> ProviderRequest:
    """Normalise a provider request; refuse names this onnxruntime does not have and malformed options.

    ``None``/``"cpu"``: the CPU provider. ``"cuda"``/``"cuda:N"``: CUDA on device N, then the CPU provider for the
    nodes CUDA does not implement. A provider name, or a sequence of names and ``(name, {option: value})`` pairs,
    is passed on as given (``OnnxBackend(d, providers=[("CUDAExecutionProvider", {"device_id": 1})])``).
    """
    if providers is None:
        specs: list[Any] = [CPU_PROVIDER]
    elif isinstance(providers, str):
        lowered = providers.strip().lower()
        if lowered == "cpu" or lowered.startswith("cuda"):
            kind, device_id = parse_device(lowered)
            specs = [CPU_PROVIDER] if kind == "cpu" else [(CUDA_PROVIDER, {"device_id": device_id}), CPU_PROVIDER]
        else:
            specs = [providers]
    else:
        specs = list(providers)
    if not specs:
        raise ConfigError("providers must name at least one onnxruntime execution provider")
    available = ort.get_available_providers()
    normalised: list[tuple[str, dict[str, str]]] = []
    for spec in specs:
        if isinstance(spec, str):
            name, options = spec, {}
        elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict):
            name, options = spec
        else:
            raise ConfigError(
                f"provider {spec!r} must be a provider name or a (name, options dict) pair, "
                "e.g. ('CUDAExecutionProvider', {'device_id': 1})"
            )
        if name not in available:
            raise ConfigError(
                f"onnxruntime provider {name!r} is not available in this installation "
                f"(available: {', '.join(available)}); for CUDA install onnxruntime-gpu (pip install "
                "'glm-harness[onnx-gpu]')"
            )
        if name in (n for n, _ in normalised):
            raise ConfigError(f"provider {name!r} is listed twice")
        bad = [k for k in options if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"options of {name} must have string keys, got {bad}")
        if "device_id" in options and not str(options["device_id"]).isdigit():
            raise ConfigError(f"{name} device_id must be a non-negative integer, got {options['device_id']!r}")
        normalised.append((name, {k: str(v) for k, v in options.items()}))
    return ProviderRequest(tuple(normalised))


def check_providers(session: Any, request: ProviderRequest, model_path: object) -> tuple[str, int]:
    """The device ``(type, id)`` the session really runs on; a ConfigError when ORT fell back from the request.

    Read from ``session.get_providers()`` / ``get_provider_options()`` after the session is made, never from the
    request: ORT drops an execution provider that fails to load (CUDA libraries missing, no device) and goes on
    with the next one, printing a message only.
    """
    actual = list(session.get_providers())
    if not actual or actual[0] != request.primary:
        raise ConfigError(
            f"{model_path}: asked onnxruntime for {request.primary} but the session runs on "
            f"{actual[0] if actual else 'no provider'} (onnxruntime fell back; check the CUDA/cuDNN libraries "
            "and the device id)"
        )
    name = actual[0]
    device_id = 0
    options = session.get_provider_options().get(name, {}) if hasattr(session, "get_provider_options") else {}
    if str(options.get("device_id", "0")).isdigit():
        device_id = int(options.get("device_id", 0))
    return DEVICE_TYPES.get(name, name), device_id


# ------------------------------------------------------------------------------------- the Gather graph, by hand
# Field numbers of onnx.proto3 (ModelProto, GraphProto, NodeProto, AttributeProto, ValueInfoProto, TypeProto, ...).
_IR_VERSION = 8
_GATHER_OPSET = 13


def varint(value: int) -> bytes:
    """Protobuf base-128 varint."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_field(number: int, length: int) -> bytes:
    """Protobuf key + length of a length-delimited field (wire type 2); the payload follows."""
    return varint(number << 3 | 2) + varint(length)


def _int_field(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def _bytes_field(number: int, payload: bytes | str) -> bytes:
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    return length_field(number, len(data)) + data


def _value_info(name: str, elem_type: int, rank: int) -> bytes:
    dims = b"".join(_bytes_field(1, _bytes_field(2, f"{name}_d{i}")) for i in range(rank))  # symbolic dims
    tensor_type = _int_field(1, elem_type) + _bytes_field(2, dims)
    return _bytes_field(1, name) + _bytes_field(2, _bytes_field(1, tensor_type))


def gather_model(count: int, elem_type: int, rank: int, axis: int) -> bytes:
    """A ModelProto: inputs ``x0..x{count-1}`` (``elem_type``, ``rank``) and ``index`` int64 ``[N]``; outputs
    ``y{i} = Gather(x{i}, index, axis)``."""
    nodes = b""
    inputs = b""
    outputs = b""
    for i in range(count):
        attribute = _bytes_field(1, "axis") + _int_field(3, axis) + _int_field(20, 2)  # AttributeProto INT
        node = _bytes_field(1, f"x{i}") + _bytes_field(1, "index") + _bytes_field(2, f"y{i}")
        node += _bytes_field(3, f"gather{i}") + _bytes_field(4, "Gather") + _bytes_field(5, attribute)
        nodes += _bytes_field(1, node)
        inputs += _bytes_field(11, _value_info(f"x{i}", elem_type, rank))
        outputs += _bytes_field(12, _value_info(f"y{i}", elem_type, rank))
    inputs += _bytes_field(11, _value_info("index", 7, 1))  # TensorProto.INT64
    graph = nodes + _bytes_field(2, "glm_gather") + inputs + outputs
    opset = _bytes_field(1, "") + _int_field(2, _GATHER_OPSET)
    return _int_field(1, _IR_VERSION) + _bytes_field(8, opset) + _bytes_field(7, graph)


class DeviceGather:
    """``Gather`` along ``axis`` of OrtValues on ``device_type:device_id``, results left on that device.

    One small session per (count, element type, rank, axis), built on first use. Shares the backend's provider
    request, so it runs where the model runs.
    """

    def __init__(self, request: ProviderRequest, device_type: str, device_id: int) -> None:
        self.request = request
        self.device_type = device_type
        self.device_id = device_id
        self._sessions: dict[tuple[int, int, int, int], Any] = {}

    def _session(self, count: int, elem_type: int, rank: int, axis: int) -> Any:
        key = (count, elem_type, rank, axis)
        if key not in self._sessions:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._sessions[key] = ort.InferenceSession(
                gather_model(count, elem_type, rank, axis), sess_options=options, providers=self.request.session_args()
            )
        return self._sessions[key]

    def __call__(self, values: Sequence[ort.OrtValue], index: np.ndarray, axis: int = 0) -> list[ort.OrtValue]:
        first = values[0]
        session = self._session(len(values), first.element_type(), len(first.shape()), axis)
        binding = session.io_binding()
        for i, value in enumerate(values):
            binding.bind_ortvalue_input(f"x{i}", value)
        binding.bind_cpu_input("index", np.ascontiguousarray(index, dtype=np.int64).reshape(-1))
        for i in range(len(values)):
            binding.bind_output(f"y{i}", self.device_type, self.device_id)
        session.run_with_iobinding(binding)
        return list(binding.get_outputs())
