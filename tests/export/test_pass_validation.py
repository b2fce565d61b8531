"""Per-pass validation (spec onnx_export §6: post-export passes, each re-validated; pitfall 4).

The exporter validates the traced graph, then the graph after every pass, each against the gate of its precision;
a pass that breaks parity stops the export with one line naming it, and nothing is written at ``--out``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from tests.export.conftest import TINY_EXPORT


def _scale_initializer(model: onnx.ModelProto, name: str, factor: float) -> None:
    tensor = next(t for t in model.graph.initializer if t.name == name)
    scaled = numpy_helper.to_array(tensor) * np.asarray(
        factor, dtype=onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    )
    tensor.CopyFrom(numpy_helper.from_array(scaled, name))


def test_a_pass_that_breaks_parity_fails_the_export_naming_it(
    tiny_ckpt: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import export.onnx
    import export.passes.fp16
    import export.validate

    convert = export.passes.fp16.convert_to_fp16

    def corrupting_fp16(model: onnx.ModelProto, device: str = "cpu"):
        converted, figures = convert(model, device)
        _scale_initializer(converted, "lm_head", 1.5)  # every logit x1.5: far outside the fp16 gate
        return converted, figures

    validate = export.validate.validate_in_subprocess
    calls: list[tuple[str, bool, bool]] = []  # (stage directory, reduced, passed)

    def recording(model_dir, reference, report_path, device="cpu", timeout=None, reduced=False):
        figures = validate(model_dir, reference, report_path, device, timeout, reduced=reduced)
        calls.append((Path(model_dir).name, reduced, figures["passed"]))
        return figures

    monkeypatch.setattr(export.passes.fp16, "convert_to_fp16", corrupting_fp16)
    monkeypatch.setattr(export.validate, "validate_in_subprocess", recording)
    # As for a model over ~1 GB: the intermediate stages get the reduced checks, the shipped model all of them.
    monkeypatch.setattr(export.onnx, "REDUCED_CHECKS_ABOVE_BYTES", 0)
    out = tmp_path / "out"
    argv = ["--ckpt", str(tiny_ckpt), "--out", str(out), "--optimize", "ort", "--dtype", "fp16"]
    assert export.onnx.main(argv) == 2

    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1
    assert err[0].startswith("error: validation failed after the fp16 pass (--dtype fp16): grid ")
    assert "logits" in err[0] and "out of tolerance" in err[0]
    # the traced graph and the fused graph were validated (and passed) before the fp16 pass ran
    assert [(reduced, passed) for _, reduced, passed in calls] == [(True, True), (True, True), (False, False)]
    assert [name for name, _, _ in calls[:2]] == ["trace", "fusion"]
    assert list(tmp_path.iterdir()) == []  # nothing at --out, no staging directory left beside it


def test_reduced_checks_run_two_grid_cases_and_skip_generation(
    exported_dir: Path, tiny_torch_model, tmp_path: Path
) -> None:
    from export.validate import GRID, REDUCED_GRID, make_reference, run_checks

    reference = tmp_path / "reference.npz"
    make_reference(tiny_torch_model, reference)
    full = run_checks(exported_dir, reference)
    reduced = run_checks(exported_dir, reference, reduced=True)
    assert full["passed"] and reduced["passed"]
    assert (full["checks"], reduced["checks"]) == ("full", "reduced")
    cases = [(c["batch"], c["seq"], tuple(c["seps"]), c["past"]) for c in reduced["grid"]]
    assert cases == [GRID[i] for i in REDUCED_GRID]
    assert any(p == 0 for *_, p in cases) and any(p > 0 for *_, p in cases)  # with and without a cache
    assert reduced["grid"] == [full["grid"][i] for i in REDUCED_GRID]  # the same figures for the same cases
    assert reduced["generation"] == {"skipped": "reduced checks"} and "identical" in full["generation"]
    assert reduced["incremental"] == full["incremental"] and reduced["checker"] == "ok"
    assert reduced["perplexity"]["tokens"] == full["perplexity"]["tokens"]


def test_no_validate_runs_the_passes_without_stage_files(tiny_ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    import export.onnx
    import export.validate

    def never(*args, **kwargs):
        raise AssertionError("--no-validate must not validate")

    monkeypatch.setattr(export.validate, "validate_in_subprocess", never)
    out = tmp_path / "out"
    argv = ["--ckpt", str(tiny_ckpt), "--out", str(out), "--quantize", "int4", "--no-validate"]
    assert export.onnx.main(argv) == 0
    report = json.loads((out / "export_report.json").read_text())
    assert "validation" not in report and list(report["passes"]) == ["int4"]
    assert not [k for k in report["timings_s"] if k.startswith("validate")]
    graph = onnx.load(str(out / "model.onnx")).graph
    assert sum(n.op_type == "MatMulNBits" for n in graph.node) == 4 * TINY_EXPORT["num_layers"] + 1
