"""export.memory: the validation process's per-part peaks and the freed heap handed back between parts (Linux)."""

from __future__ import annotations

import platform
import sys

import pytest

from export.memory import PhasePeaks, resident_bytes, return_freed_memory

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="/proc and glibc malloc_trim"
)
MB = 1 << 20


def _fragmented_heap(total: int = 192 * MB, block: int = 100_000) -> list[bytearray]:
    """``total`` bytes of heap blocks (under glibc's default 128 KiB mmap threshold), touched; every tenth kept
    alive, so the freed ones are holes inside the heap that ``free`` alone never returns."""
    blocks = [bytearray(b"x" * block) for _ in range(total // block)]
    return blocks[::10]


def test_freed_heap_holes_go_back_to_the_system() -> None:
    before = resident_bytes()["anonymous"]
    kept = _fragmented_heap()
    held = resident_bytes()["anonymous"]
    return_freed_memory()
    after = resident_bytes()["anonymous"]
    assert held - before > 150 * MB  # the holes stayed resident after their blocks were freed
    assert held - after > 100 * MB  # and malloc_trim handed back most of them
    assert len(kept) > 100


def test_each_part_peak_is_its_own() -> None:
    """A part that peaked high is recorded high; the next part, which allocates little, is recorded near the
    resident memory it starts from, not the last part's peak nor the heap it left."""
    report: dict = {}
    peaks = PhasePeaks(report)
    peaks.end("start")  # the peak so far (earlier tests' included); the next part starts from here
    base = resident_bytes()["rss"]
    kept = _fragmented_heap(256 * MB)
    peaks.end("big")
    small = bytearray(b"y" * (8 * MB))
    peaks.end("small")
    assert list(report["memory_peaks_bytes"]) == ["start", "big", "small"]
    got = report["memory_peaks_bytes"]
    assert got["big"] - base > 200 * MB
    assert got["big"] - got["small"] > 100 * MB
    assert len(kept) and len(small)
