"""The buffer layout of the ONNX K/V cache: fixed-capacity buffers per layer and a write position.

A model exported with ``--kv-cache buffer`` takes, besides ``input_ids``/``position_ids``/``sep``, a scalar
``past_length`` and per layer a key and a value *window* ``[B, H, W, D]`` of which the first ``past_length`` rows are
the cache (the rest is masked), and returns the chunk's own rows ``[B, H, S, D]`` as ``present.*``. The backend keeps
the buffers here and writes those rows at the write position: a decode step moves ``S`` rows, not the whole cache
(the concat layout's ``present = Concat(past, new)`` copies ``P + S`` rows per layer per step).

Buffers are allocated in blocks of :data:`BLOCK` positions and grow (one copy of the valid rows) when a chunk does
not fit, up to the capacity; the window fed to the graph is the whole allocation, so attention reads at most
``2 * BLOCK`` masked rows more than the cache holds. A step whose cache would exceed the capacity is refused with an
:class:`~glm_core.errors.InputError`.

The caller sees the same step contract as with the concat layout: the present is an opaque :class:`BufferedPast`
(a sequence of ``2L`` :class:`CacheView`, each with ``shape()`` and ``numpy()`` like an ``OrtValue``) that is fed
back as the next past; ``past`` is never modified. Several presents may share one buffer (each step appends to it);
stepping from a past that is no longer the buffer's newest (a branch: the same past fed twice) first copies its
rows into a buffer of its own, so every past keeps meaning what it meant. Rows are claimed under a lock before the
graph runs, so steps from one past in several threads never write the same rows either.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from glm_core.errors import InputError

BLOCK = 64  # allocation granule in positions
PAST_LENGTH = "past_length"  # the graph input (export/graph.py PAST_LENGTH)


@dataclass
class KVBuffer:
    """``2L`` arrays ``[B, H, C, D]`` (key_0, value_0, key_1, ...) with ``written`` valid rows."""

    arrays: list[np.ndarray]
    written: int = 0  # rows claimed by the newest step (written once that step has run)
    _feeds: list[ort.OrtValue] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def claim(self, length: int, rows: int) -> bool:
        """Reserve rows ``[length, length + rows)`` for a step from the past of ``length`` rows: only when that
        past is the buffer's newest state and the rows fit (atomic, so two threads never write the same rows)."""
        with self._lock:
            if self.written != length or length + rows > self.allocated:
                return False
            self.written = length + rows
            return True

    @property
    def allocated(self) -> int:
        return int(self.arrays[0].shape[2])

    @property
    def batch(self) -> int:
        return int(self.arrays[0].shape[0])

    def feeds(self, length: int) -> list[ort.OrtValue]:
        """The window fed to the graph: the arrays as OrtValues over the same memory (made once per allocation);
        empty tensors while nothing is written (a prefill attends over its own rows only)."""
        if length == 0:
            B, H, _, D = self.arrays[0].shape
            empty = np.zeros((B, H, 0, D), dtype=self.arrays[0].dtype)
            return [ort.OrtValue.ortvalue_from_numpy(empty)] * len(self.arrays)
        if self._feeds is None:
            self._feeds = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.arrays]
        return self._feeds


class CacheView:
    """One cache tensor of a :class:`BufferedPast`: rows ``[:length]`` of a buffer array, ``OrtValue``-like."""

    __slots__ = ("array", "length")

    def __init__(self, array: np.ndarray, length: int) -> None:
        self.array = array
        self.length = length

    def shape(self) -> list[int]:
        B, H, _, D = self.array.shape
        return [B, H, self.length, D]

    def numpy(self) -> np.ndarray:
        return np.ascontiguousarray(self.array[:, :, : self.length])

    def rows(self, start: int) -> np.ndarray:
        """Rows ``[start:length]``, a view (no copy of the rows before ``start``)."""
        return self.array[:, :, start : self.length]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.numpy()
        return out if dtype is None else out.astype(dtype)


class BufferedPast(Sequence[CacheView]):
    """The first ``length`` rows of a :class:`KVBuffer`: what ``step`` returns and takes back."""

    __slots__ = ("buffer", "length")

    def __init__(self, buffer: KVBuffer, length: int) -> None:
        self.buffer = buffer
        self.length = length

    def __len__(self) -> int:
        return len(self.buffer.arrays)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [CacheView(a, self.length) for a in self.buffer.arrays[index]]
        return CacheView(self.buffer.arrays[index], self.length)


def allocation(needed: int, capacity: int, reserve: int = 0) -> int:
    """Positions to allocate for ``needed`` rows: whole blocks with one block of head room, at most ``capacity``.
    ``reserve``: the length the caller expects the cache to reach; when more than ``needed``, room for it at once
    (whole blocks), so a prompt prefilled chunk by chunk never grows (each growth holds the old and the new cache)."""
    if reserve > needed:
        return min(capacity, -(-reserve // BLOCK) * BLOCK)
    return min(capacity, -(-needed // BLOCK) * BLOCK + BLOCK)


def new_buffer(
    batch: int, heads: int, head_dim: int, layers: int, rows: int, dtype: Any, source: Sequence[Any] = ()
) -> KVBuffer:
    """Zeroed buffers of ``rows`` positions; ``source`` (2L tensors ``[batch, H, P, D]``) is copied into the first
    ``P`` rows."""
    arrays = [np.zeros((batch, heads, rows, head_dim), dtype=dtype) for _ in range(2 * layers)]
    written = 0
    for array, value in zip(arrays, source, strict=False):
        host = _host(value)
        written = host.shape[2]
        array[:, :, :written] = host
    return KVBuffer(arrays, written)


def _host(value: Any) -> np.ndarray:
    if isinstance(value, ort.OrtValue | CacheView):
        return value.numpy()
    return np.asarray(value)


def check_past(past: Sequence[Any], batch: int, heads: int, head_dim: int, layers: int) -> int:
    """Shape checks of a past for the buffer layout; returns its length."""
    if len(past) != 2 * layers:
        raise InputError(f"past must hold {2 * layers} tensors (key, value per layer), got {len(past)}")
    if isinstance(past, BufferedPast):
        shape = past[0].shape()
    else:
        first = past[0]
        shape = list(first.shape() if isinstance(first, ort.OrtValue | CacheView) else np.shape(first))
    if len(shape) != 4 or shape[0] != batch or shape[1] != heads or shape[3] != head_dim:
        raise InputError(f"past tensors must be [{batch}, {heads}, P, {head_dim}], got {list(shape)}")
    return int(shape[2])


def prepare(
    past: Sequence[Any] | None,
    batch: int,
    seq: int,
    capacity: int,
    dims: tuple[int, int, int],
    dtype: Any,
    reserve: int = 0,
) -> tuple[KVBuffer, int]:
    """The buffer this step writes into and its write position (``dims`` = heads, head_dim, layers).

    Fresh buffers for a prefill or a past given as plain tensors; the past's own buffer when it is the buffer's
    newest state and the chunk fits; otherwise a copy (a branch) or a larger allocation (growth). A new allocation
    has room for ``reserve`` positions when that is more (:func:`allocation`)."""
    heads, head_dim, layers = dims
    length = 0 if past is None else check_past(past, batch, heads, head_dim, layers)
    if length + seq > capacity:
        raise InputError(
            f"K/V cache capacity exceeded: {length} cached + {seq} new positions > capacity {capacity} "
            "(OnnxBackend(..., cache_capacity=N) raises it)"
        )
    if isinstance(past, BufferedPast):
        if past.buffer.claim(length, seq):
            return past.buffer, length
        source: Sequence[Any] = past
    else:
        source = past or ()
    buffer = new_buffer(batch, heads, head_dim, layers, allocation(length + seq, capacity, reserve), dtype, source)
    buffer.written = length + seq
    return buffer, length


def run_step(
    session: ort.InferenceSession,
    feeds: dict[str, ort.OrtValue],
    past_names: Sequence[str],
    output_names: Sequence[str],
    buffer: KVBuffer,
    length: int,
) -> tuple[np.ndarray, BufferedPast]:
    """Run the graph over the buffer's window and write the chunk's rows at ``length``."""
    feeds = dict(feeds)
    feeds[PAST_LENGTH] = ort.OrtValue.ortvalue_from_numpy(np.array(length, dtype=np.int64))
    feeds.update(zip(past_names, buffer.feeds(length), strict=True))
    outputs = session.run_with_ort_values(list(output_names), feeds)
    end = length
    for array, rows in zip(buffer.arrays, outputs[1:], strict=True):
        new = rows.numpy()  # [B, H, S, D]
        end = length + new.shape[2]
        array[:, :, length:end] = new  # the rows prepare() claimed
    return outputs[0].numpy(), BufferedPast(buffer, end)


def reorder(past: BufferedPast, index: np.ndarray, capacity: int) -> BufferedPast:
    """Gather the valid rows along the batch axis into a new buffer (beams, one Part A over candidates)."""
    rows = allocation(past.length, capacity)
    arrays = []
    for array in past.buffer.arrays:
        B, H, _, D = array.shape
        out = np.zeros((len(index), H, rows, D), dtype=array.dtype)
        out[:, :, : past.length] = array[index, :, : past.length]
        arrays.append(out)
    return BufferedPast(KVBuffer(arrays, past.length), past.length)
