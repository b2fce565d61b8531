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


def test_the_first_session_is_gone_before_the_twin_opens(
    tiny_ckpt, tiny_torch_model, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An int4 graph is validated in two ONNX Runtime sessions, one after the other: when the fp32-compute twin's
    opens, the first one (its pre-packed weights, its threads' buffers) must be gone. An onnxruntime ``NodeArg``
    (``session.get_inputs()``) keeps its whole session alive: one kept in a local held glm-2b's 1.7 GB beside the
    twin."""
    import gc
    import weakref

    import export.validate
    from evaluation.backends.onnx import OnnxBackend
    from export.onnx import main
    from export.validate import make_reference, run_checks

    out = tmp_path / "int4"
    assert main(["--ckpt", str(tiny_ckpt), "--out", str(out), "--quantize", "int4", "--no-validate"]) == 0
    reference = tmp_path / "reference.npz"
    make_reference(tiny_torch_model, reference)

    sessions: list[weakref.ref] = []
    opened = OnnxBackend.__init__

    def recording(self, *args, **kwargs):
        opened(self, *args, **kwargs)
        sessions.append(weakref.ref(self.session._sess))  # the native session, not its Python wrapper

    alive_at_twin: list[bool] = []
    twin = export.validate._check_cache_twin

    def checking(*args, **kwargs):
        gc.collect()
        alive_at_twin.append(sessions[0]() is not None)
        return twin(*args, **kwargs)

    monkeypatch.setattr(OnnxBackend, "__init__", recording)
    monkeypatch.setattr(export.validate, "_check_cache_twin", checking)
    report = run_checks(out, reference, lean=True)
    assert report["passed"] and "cache_check" in report  # the twin ran its checks
    assert len(sessions) == 2 and alive_at_twin == [False]
