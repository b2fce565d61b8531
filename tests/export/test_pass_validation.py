"""Per-pass validation (spec onnx_export §6: post-export passes, each re-validated; pitfall 4).

The exporter validates the traced graph, then the graph after every pass, each against the gate of its precision;
a pass that breaks parity stops the export with one line naming it, and nothing is written at ``--out``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.export.conftest import TINY_EXPORT


def _scale_output(model: onnx.ModelProto, name: str, factor: float) -> None:
    """Multiply a graph output by ``factor`` (a pass's graph has no weights yet to corrupt: they are written from
    the checkpoint when the model file is)."""
    producer = next(n for n in model.graph.node if name in n.output)
    producer.output[list(producer.output).index(name)] = f"{name}.unscaled"
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(factor, np.float32), f"{name}.factor"))
    model.graph.node.append(onnx.helper.make_node("Mul", [f"{name}.unscaled", f"{name}.factor"], [name]))


def _record_validations(monkeypatch) -> list[tuple[str, bool, bool]]:
    import export.validate

    validate = export.validate.validate_in_subprocess
    calls: list[tuple[str, bool, bool]] = []  # (stage directory, reduced, passed)

    def recording(model_dir, reference, report_path, device="cpu", timeout=None, reduced=False, **kwargs):
        figures = validate(model_dir, reference, report_path, device, timeout, reduced=reduced, **kwargs)
        calls.append((Path(model_dir).name, reduced, figures["passed"]))
        return figures

    monkeypatch.setattr(export.validate, "validate_in_subprocess", recording)
    return calls


def test_a_pass_that_breaks_parity_fails_the_export_naming_it(
    tiny_ckpt: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import export.onnx
    import export.passes.fp16

    convert = export.passes.fp16.convert_to_fp16

    def corrupting_fp16(model: onnx.ModelProto, device: str = "cpu"):
        converted, figures = convert(model, device)
        _scale_output(converted, "logits", 1.5)  # every logit x1.5: far outside the fp16 gate
        return converted, figures

    monkeypatch.setattr(export.passes.fp16, "convert_to_fp16", corrupting_fp16)
    calls = _record_validations(monkeypatch)
    out = tmp_path / "out"
    argv = ["--ckpt", str(tiny_ckpt), "--out", str(out), "--optimize", "ort", "--dtype", "fp16"]
    assert export.onnx.main(argv) == 2

    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1
    assert err[0].startswith("error: validation failed after the fp16 pass (--dtype fp16): grid ")
    assert "logits" in err[0] and "out of tolerance" in err[0]
    # the traced graph and the fused graph were validated (and passed) before the fp16 pass's graph
    assert [(reduced, passed) for _, reduced, passed in calls] == [(False, True), (False, True), (False, False)]
    assert [name for name, _, _ in calls[:2]] == ["trace", "fusion"]
    assert list(tmp_path.iterdir()) == []  # nothing at --out, no staging directory left beside it


def test_large_models_validate_only_intermediate_stages_no_larger_than_the_result(
    tiny_ckpt: Path, tmp_path: Path, monkeypatch
) -> None:
    """As for a model over ~1 GB: an intermediate stage gets the reduced checks when its weights are no larger than
    the shipped model's (the fp32 trace before fusion), and is skipped when they are (the fp32 graphs before the
    fp16 pass: validating them would double the disk and the validation session); the shipped model gets every
    check, in a session without pre-packed weights (and, for fp16 on the CPU, with the basic optimisations)."""
    import export.onnx

    calls = _record_validations(monkeypatch)
    monkeypatch.setattr(export.onnx, "REDUCED_CHECKS_ABOVE_BYTES", 0)
    fused = tmp_path / "fused"
    assert export.onnx.main(["--ckpt", str(tiny_ckpt), "--out", str(fused), "--optimize", "ort"]) == 0
    assert [(name if name == "trace" else "final", reduced, ok) for name, reduced, ok in calls] == [
        ("trace", True, True),
        ("final", False, True),
    ]
    validation = json.loads((fused / "export_report.json").read_text())["validation"]
    assert validation["skipped_stages"] == [] and validation["prepacking"] is False
    assert validation["graph_optimization"] == "all"

    calls.clear()
    half = tmp_path / "half"
    assert export.onnx.main(["--ckpt", str(tiny_ckpt), "--out", str(half), "--optimize", "ort", "--dtype", "fp16"]) == 0
    assert [(reduced, ok) for _, reduced, ok in calls] == [(False, True)]
    validation = json.loads((half / "export_report.json").read_text())["validation"]
    assert [s["after"] for s in validation["skipped_stages"]] == ["trace", "fusion"]
    assert [s["after"] for s in validation["stages"]] == ["fp16"] and validation["checks"] == "full"
    # an fp16 graph on the CPU: basic optimisations, so no resident fp32 copy of the weights (lean_session_options)
    assert validation["graph_optimization"] == "basic" and validation["passed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fused", "half"]  # no staging directory left


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


def test_the_reference_file_is_written_array_by_array_in_npz_format(tmp_path: Path) -> None:
    """The reference's writer streams each array into the archive as it is computed; ``np.load`` reads back exactly
    what ``np.savez`` would hold, and a key written twice is refused."""
    from export.reference_steps import NpzWriter

    rng = np.random.default_rng(0)
    arrays = {"a.logits": rng.normal(size=(2, 3, 5)).astype(np.float32), "a.ids": np.arange(6).reshape(2, 3)}
    with NpzWriter(tmp_path / "ref.npz") as writer:
        writer.update(arrays)
        writer["meta"] = np.frombuffer(b'{"x": 1}', dtype=np.uint8)
        with pytest.raises(ValueError, match="written twice"):
            writer["a.ids"] = np.zeros(1)
    data = np.load(tmp_path / "ref.npz")
    assert sorted(data.files) == ["a.ids", "a.logits", "meta"]
    for key, value in arrays.items():
        np.testing.assert_array_equal(data[key], value)
        assert data[key].dtype == value.dtype
    assert bytes(data["meta"]) == b'{"x": 1}'
