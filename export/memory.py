"""This process's memory, for an export and its validation in bounded RAM (Linux; nothing elsewhere).

Both sides of the export use it: the exporter (torch) before it starts the validation process, and the validation
process (no torch) between the parts of its checks.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

_STATUS = "/proc/self/status"


def _status_kib(*fields: str) -> dict[str, int]:
    """``{field: KiB}`` of /proc/self/status for the named fields (``VmRSS``, ``RssAnon``, ``VmHWM``...)."""
    found: dict[str, int] = {}
    with open(_STATUS, encoding="utf-8") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name in fields:
                found[name] = int(value.split()[0])
    return found


def return_freed_memory() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``). Blocks under glibc's mmap threshold
    (which rises to 32 MB once such a block is freed: a checkpoint's tensors, a cache's per-layer arrays, ONNX
    Runtime's activations without its arena) come from the heap and stay resident after they are freed otherwise;
    ``malloc_trim(0)`` hands back every whole free page of every arena."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def resident_bytes() -> dict[str, int] | None:
    """This process's resident memory now: ``rss`` and its ``anonymous`` part (the rest being mapped files)."""
    try:
        found = _status_kib("VmRSS", "RssAnon")
    except (OSError, ValueError, IndexError):
        return None
    names = {"VmRSS": "rss", "RssAnon": "anonymous"}
    return {names[k]: v * 1024 for k, v in found.items()} or None


class PhasePeaks:
    """Peak resident memory of this process per part of a job, in ``report["memory_peaks_bytes"]``: ``VmHWM``,
    restarted after each part through /proc/self/clear_refs, once the memory the part freed went back to the
    system (:func:`return_freed_memory`), so that each part's figure is its own and not the heap the last one left.
    """

    def __init__(self, report: dict[str, Any]) -> None:
        self.peaks: dict[str, int] = {}
        report["memory_peaks_bytes"] = self.peaks

    def end(self, part: str) -> None:
        try:
            peak = _status_kib("VmHWM")["VmHWM"] * 1024
        except (OSError, ValueError, IndexError, KeyError):
            return
        self.peaks[part] = peak
        return_freed_memory()
        with contextlib.suppress(OSError):
            with open("/proc/self/clear_refs", "w", encoding="utf-8") as fh:
                fh.write("5")
