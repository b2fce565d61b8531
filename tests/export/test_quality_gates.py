"""Quality gates of fp16/quantized exports cannot pass without judging: too few decided rows fail the top-1 gate,
the perplexity text must be in the model's domain (or the report says quality was not gated), and every such
graph is held to agree with itself (incremental decoding vs its own full pass)."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from export.compute_twin import TWIN_FILE
from export.validate import (
    CACHE_CHECK,
    MIN_TOP1_ROWS,
    QUANT_GATES,
    SELF_CONSISTENCY,
    TOLERANCES,
    compare,
    quality_text,
    top1_gate_failures,
)
from glm_core.errors import ExportError


class _Tokenizer:
    def encode(self, text: str) -> list[int]:
        return [ord(c) % 50 for c in text]


def test_top1_gate_fails_with_too_few_rows_to_judge() -> None:
    assert top1_gate_failures("int4", 1.0, 0) == [
        f"int4: only 0 decided rows (top-1 ahead by 0.1) to judge top-1 agreement, fewer than {MIN_TOP1_ROWS}"
    ]
    assert top1_gate_failures("int8", 1.0, MIN_TOP1_ROWS - 1) != []
    assert top1_gate_failures("int8", QUANT_GATES["int8"]["min_top1"], MIN_TOP1_ROWS) == []
    assert "top-1 agreement 0.500" in top1_gate_failures("int4", 0.5, 100)[0]


def test_quality_is_gated_only_on_a_domain_text_of_trained_weights(tmp_path: Path) -> None:
    text = tmp_path / "domain.txt"
    text.write_text("The capital of Varnia is Olmstead.\n", encoding="utf-8")
    assert quality_text(_Tokenizer(), text, None, random_weights=False)[1] == {
        "gated": True,
        "reason": None,
        "text": str(text),
    }
    _, random = quality_text(_Tokenizer(), text, None, random_weights=True)
    assert random["gated"] is False and random["reason"] == "random weights: quality was not gated"
    _, none = quality_text(_Tokenizer(), None, tmp_path, random_weights=False)
    assert none["gated"] is False and "--calibration-text" in none["reason"]
    (tmp_path / "calibration.txt").write_text("Monday, Tuesday, Wednesday.", encoding="utf-8")
    found, beside = quality_text(_Tokenizer(), None, tmp_path, random_weights=False)
    assert beside["gated"] and found.startswith("Monday")


@pytest.mark.parametrize(
    ("content", "tokenizer", "message"),
    [(None, True, "cannot read it"), ("  \n", True, "the file is empty"), ("text", False, "no tokenizer")],
)
def test_bad_calibration_text_is_refused(tmp_path: Path, content, tokenizer: bool, message: str) -> None:
    path = tmp_path / "calibration-input.txt"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ExportError, match=message):
        quality_text(_Tokenizer() if tokenizer else None, path, None, random_weights=False)


def test_quantized_glm_tiny_is_gated_on_its_own_domain(tmp_path: Path) -> None:
    from export.onnx import main
    from training.corpus import generate_documents

    text = tmp_path / "world.txt"
    text.write_text("\n".join(islice(generate_documents(seed=7), 12)), encoding="utf-8")
    out = tmp_path / "int4"
    assert main(["--ckpt", "glm-tiny", "--out", str(out), "--quantize", "int4", "--calibration-text", str(text)]) == 0
    validation = json.loads((out / "export_report.json").read_text())["validation"]
    assert validation["quality"] == {"gated": True, "reason": None, "text": str(text)}
    assert validation["quant_gate"] == QUANT_GATES["int4"]
    confident = validation["confident_top1"]
    assert confident["rows"] >= MIN_TOP1_ROWS and confident["agreement"] >= QUANT_GATES["int4"]["min_top1"]
    assert validation["perplexity"]["rel_delta"] <= QUANT_GATES["int4"]["max_ppl_rel_delta"]
    assert validation["decode"]["self"]["ok"] and validation["passed"]
    # the cache and mask logic, judged on the twin computing in fp32; the twin is not part of the output
    twin = validation["cache_check"]
    assert twin["decode"]["ok"] and twin["incremental"]["ok"] and twin["bound"] == CACHE_CHECK.__dict__
    assert twin["decode"]["normalised"] < 1e-5  # fp32 arithmetic, no int8 rounding
    assert not (out / TWIN_FILE).exists()


def test_self_consistency_atol_follows_the_logits_scale_and_still_sees_a_mask_error() -> None:
    """fp16 rounding of a logit follows its row's scale: logits reaching 20 with a near-zero entry off by 5.8e-4
    (normalised 2.9e-5, the size a ChatGLM-shaped fp16 graph shows) pass the fp16 self-consistency bound, which an
    absolute 1e-4 would fail; an error of a wrong mask (normalised >= 0.02) still fails it, and the fp32 gate stays
    absolute."""
    rng = np.random.default_rng(0)
    ref = rng.normal(0.0, 5.0, size=(4, 3, 64))
    ref[0, 0, 0], ref[0, 0, 1] = 20.0, 0.0
    rounding = ref.copy()
    rounding[0, 0, 1] += 5.8e-4
    assert compare(ref, rounding, SELF_CONSISTENCY["fp16"])["ok"]
    unscaled = SELF_CONSISTENCY["fp16"].__class__(1e-4, 1e-4, 1e-4)
    assert not compare(ref, rounding, unscaled)["ok"]
    mask_error = ref.copy()
    mask_error[1, 2] += 0.02 * 20.0
    for bound in (SELF_CONSISTENCY["fp16"], CACHE_CHECK):  # int4: judged on its fp32-compute twin (CACHE_CHECK)
        assert not compare(ref, mask_error, bound)["ok"]
    assert not compare(ref, rounding, TOLERANCES["fp32"])["ok"]


def test_int4_self_consistency_admits_the_measured_rounding_noise() -> None:
    """The shipped int4 graph's own incremental decode vs its full pass: glm-2b dims measured max|Δ| 0.080 at
    max|ref| 5.2 (normalised 0.0154), the int8 activation rounding's noise, which the bound admits; a difference of
    a quarter of the logits' scale does not pass."""
    rng = np.random.default_rng(1)
    ref = rng.normal(0.0, 1.0, size=(8, 74, 64))
    ref[0, 0, 0] = 5.2
    noisy = ref + rng.uniform(-0.080, 0.080, size=ref.shape)
    assert compare(ref, noisy, SELF_CONSISTENCY["int4"])["ok"]
    broken = ref.copy()
    broken[3, 60] += 0.25 * 5.2
    assert not compare(ref, broken, SELF_CONSISTENCY["int4"])["ok"]


def test_compare_block_by_block_gives_the_whole_array_figures() -> None:
    """The figures computed block by block (export.validate.COMPARE_ROWS rows at a time, to bound the float64
    temporaries) equal the direct float64 computation over the whole array, the error placed in a late block."""
    from export.figures import COMPARE_ROWS

    rng = np.random.default_rng(3)
    ref = rng.normal(0.0, 4.0, size=(8, 3 * COMPARE_ROWS // 8 + 5, 40)).astype(np.float32)
    got = (ref + rng.normal(0.0, 1e-6, size=ref.shape)).astype(np.float32)
    got[7, -1, 3] += 0.5
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    diff = np.abs(ref64 - got64)
    figures = compare(ref, got, SELF_CONSISTENCY["fp16"])
    assert figures["max_abs"] == diff.max() and figures["max_ref"] == np.abs(ref64).max()
    assert figures["max_rel"] == (diff / np.maximum(np.abs(ref64), 1e-12)).max()
    assert figures["normalised"] == diff.max() / np.abs(ref64).max() and not figures["ok"]
    got[7, -1, 3] -= 0.5
    assert compare(ref, got, SELF_CONSISTENCY["fp16"])["ok"]
