"""Validation sees a wrong mask rule: four corrupted exports fail, the real one passes.

Each test exports the tiny model through the real CLI with the graph's visibility rule replaced by a wrong one
(``export.graph.visibility_mask``, the rule the wrapper builds its additive bias from; the PyTorch reference keeps
the model's own rule). The exporter must stop at validation with one line naming the stage, exit 2 and leave
nothing at ``--out``. The expected failing case says which part of the validation sees each mistake:

- off by one at ``sep`` (``j-P <= sep``): the original grid (a split row with no cache);
- ``sep`` compared with the absolute key index (ignores P): the chunk-after-a-cache case;
- past columns more than 64 positions older than the query dropped (a sliding window): only the production
  shapes (the chunk after a near-full past, the 50-step decode); the original grid never has 64 past positions;
- the bidirectional prefix lost in rows >= 4: only the batch-8 cases (the wide grid case, the decode).

The four run on the concat layout, whose graph builds the whole ``[B, 1, S, P+S]`` rule from ``visibility_mask``.
The buffer layout (the default) builds its past columns from ``past_length`` instead
(``export.graph.buffer_additive_mask``): the two past-related mistakes are made there too, and fail the same way.

Each mutation builds its tensors on ``sep``'s device, as graph.py does: the exporter traces on the meta device.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import export.graph
from glm_core.model import visibility_mask
from tests.export.conftest import TINY_EXPORT

WINDOW = 64  # the sliding-window mutation: past columns older than this are dropped
ROWS_WITH_PREFIX = 4  # the row mutation: rows with this index or more lose their prefix


def off_by_one_at_sep(sep: torch.Tensor, query_len: int, past_len: int) -> torch.Tensor:
    return visibility_mask(sep + 1, query_len, past_len)  # j-P < sep+1, i.e. j-P <= sep


def sep_ignores_past(sep: torch.Tensor, query_len: int, past_len: int) -> torch.Tensor:
    return visibility_mask(sep - past_len, query_len, past_len)  # j-P < sep-P, i.e. j < sep


def old_past_dropped(sep: torch.Tensor, query_len: int, past_len: int) -> torch.Tensor:
    visible = visibility_mask(sep, query_len, past_len)  # [B, 1, S, P+S]
    keys = torch.arange(past_len + query_len, device=sep.device) - past_len  # chunk-relative key index
    queries = torch.arange(query_len, device=sep.device)
    old = (keys[None, :] < 0) & (queries[:, None] - keys[None, :] > WINDOW)  # [S, P+S]
    return visible & ~old


def prefix_lost_in_later_rows(sep: torch.Tensor, query_len: int, past_len: int) -> torch.Tensor:
    rows = torch.arange(sep.shape[0], device=sep.device) >= ROWS_WITH_PREFIX
    return visibility_mask(torch.where(rows, torch.zeros_like(sep), sep), query_len, past_len)


def buffer_sep_ignores_past(sep, query_len, window, past_length, dtype, rule="glm"):
    """Buffer layout: the chunk's prefix measured from the start of the cache (``j < sep - P``)."""
    return REAL_BUFFER_MASK(sep - past_length, query_len, window, past_length, dtype, rule)


def buffer_old_past_dropped(sep, query_len, window, past_length, dtype, rule="glm"):
    """Buffer layout: buffer rows more than ``WINDOW`` positions before the write position not visible."""
    bias = REAL_BUFFER_MASK(sep, query_len, window, past_length, dtype, rule)
    old = torch.arange(window, device=sep.device) < past_length - WINDOW  # [W]
    hidden = torch.cat(
        [old, torch.zeros(query_len, dtype=torch.bool, device=sep.device)]
    )  # the chunk's own columns untouched
    return torch.where(hidden, torch.finfo(dtype).min, bias)


REAL_BUFFER_MASK = export.graph.buffer_additive_mask

BUFFER_MUTATIONS: dict[str, tuple[Callable[..., torch.Tensor], str]] = {
    "sep-ignores-past": (buffer_sep_ignores_past, "grid B=4 S=5 sep=[0, 5, 2, 1] P=3"),
    "old-past-dropped": (buffer_old_past_dropped, "grid B=3 S=4 sep=[0, 4, 2] P=125"),
}

MUTATIONS: dict[str, tuple[Callable[..., torch.Tensor], str]] = {
    # name: (rule, a case that must be among the failures the error line shows)
    "off-by-one-at-sep": (off_by_one_at_sep, "grid B=3 S=7"),
    "sep-ignores-past": (sep_ignores_past, "grid B=4 S=5 sep=[0, 5, 2, 1] P=3"),
    "old-past-dropped": (old_past_dropped, "grid B=3 S=4 sep=[0, 4, 2] P=125"),
    "prefix-lost-in-rows-4+": (prefix_lost_in_later_rows, "grid B=8 S=64"),
}


def _error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


CASES = [("concat", "visibility_mask", name, *MUTATIONS[name]) for name in MUTATIONS] + [
    ("buffer", "buffer_additive_mask", name, *BUFFER_MUTATIONS[name]) for name in BUFFER_MUTATIONS
]


@pytest.mark.parametrize(
    ("layout", "patched", "name", "rule", "caught_by"), CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES]
)
def test_a_wrong_mask_rule_fails_validation(
    layout: str,
    patched: str,
    name: str,
    rule: Callable[..., torch.Tensor],
    caught_by: str,
    tiny_ckpt: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from export.onnx import main

    monkeypatch.setattr(export.graph, patched, rule)
    out = tmp_path / "out"
    assert main(["--ckpt", str(tiny_ckpt), "--out", str(out), "--kv-cache", layout]) == 2
    _assert_caught(capsys, caught_by, tmp_path)


@pytest.mark.parametrize("quantize", ["int4", "int8"])
def test_a_quantized_graph_validated_alone_is_checked_on_its_fp32_compute_twin(
    quantize: str, tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for a large model, whose fp32 graph is not validated before the quantization pass, so only the quantized
    graph's checks can see a cache mask that hides old past rows. Its own incremental decode differs from its full
    pass by int8 rounding noise as large as that error (export/compute_twin.py); its twin computing in fp32
    (MatMulNBits accuracy_level 0; int8 MatMuls on the dequantized weights) must reject it, and nothing is left at
    --out."""
    import export.onnx
    from export.onnx import main

    monkeypatch.setattr(export.onnx, "REDUCED_CHECKS_ABOVE_BYTES", 0)  # "large": the fp32 stage is not validated
    monkeypatch.setattr(export.graph, "buffer_additive_mask", buffer_old_past_dropped)
    assert main(["--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "out"), "--quantize", quantize]) == 2
    errors = _error_lines(capsys)
    assert len(errors) == 1, errors
    prefix = f"error: validation failed after the {quantize} pass (--quantize {quantize}): "
    assert errors[0].startswith(prefix), errors[0]
    assert "decode B=8 prefill 24 + 50 steps on the fp32-compute twin" in errors[0], errors[0]
    assert list(tmp_path.iterdir()) == []


def _assert_caught(capsys: pytest.CaptureFixture[str], caught_by: str, tmp_path: Path) -> None:
    errors = _error_lines(capsys)
    assert len(errors) == 1, errors
    assert errors[0].startswith("error: validation failed after trace (the exported graph, before any pass): ")
    assert caught_by in errors[0], errors[0]
    assert list(tmp_path.iterdir()) == []  # nothing at --out, no staging directory beside it


def test_the_real_rule_passes_the_same_checks(exported_dir: Path) -> None:
    validation = json.loads((exported_dir / "export_report.json").read_text())["validation"]
    assert validation["passed"] and validation["failures"] == []
    assert validation["device"] == "cpu" and validation["providers"][0] == "CPUExecutionProvider"  # from the session
    shapes = {(c["batch"], c["seq"], c["past"]) for c in validation["grid"]}
    assert (8, 64, 0) in shapes and (3, 4, 125) in shapes  # the production shapes ran
    wide = next(c for c in validation["grid"] if c["batch"] == 8)
    layers = TINY_EXPORT["num_layers"]
    assert wide["present_layers"] == sorted({0, layers // 2, layers - 1})  # first, middle and last layer's rows
    assert wide["present"]["ok"] and all("present_layers" not in c for c in validation["grid"] if c is not wide)
    assert validation["decode"]["ok"] and validation["decode"]["max_abs"] < 1e-4
