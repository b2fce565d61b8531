"""glm-eval and the compare tool at the edges of their outputs: every path checked before any work, one line and
exit 2, nothing written, ``--overwrite`` only over the tool's own output, and a cache key that only the model's own
files move."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from evaluation import compare
from evaluation.backends.info import model_hash
from evaluation.cli import main as eval_main
from glm_core.checkpoint import SHIPPED_PRESETS

FIXTURES = Path(__file__).resolve().parents[2] / "evaluation" / "data" / "fixtures"


def _eval(args: list[str], capsys) -> tuple[int, str]:
    code = eval_main([*args, "--no-progress"])
    return code, capsys.readouterr().err


def _one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def _listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.fixture
def never_load(monkeypatch):
    """Any of these checks must fail before a model is loaded."""
    import evaluation.cli as cli

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the bad argument was reported")

    monkeypatch.setattr(cli, "load_backend", refuse)


BASE = ["--backend", "torch", "--model", "glm-tiny", "--tasks", "demo", "--data-dir", str(FIXTURES)]


@pytest.mark.parametrize(
    ("setup", "extra", "needles"),
    [
        ("file-parent", ["--output", "{tmp}/plain.txt/r.json"], ["plain.txt is a file"]),
        ("dir", ["--output", "{tmp}/adir"], ["is a directory; expected a file path"]),
        ("exists", ["--output", "{tmp}/old.json"], ["already exists; pass --overwrite"]),
        ("exists", ["--output", "{tmp}/old.json", "--overwrite"], ["is not a results file of glm-eval"]),
        ("file-parent", ["--cache-dir", "{tmp}/plain.txt"], ["--cache-dir", "not a directory"]),
        ("none", ["--device", "tpu"], ["'tpu'", "expected 'cpu', 'cuda' or 'cuda:N'"]),
        ("none", ["--device", "cpu:1"], ["'cpu:1'"]),
    ],
)
def test_glm_eval_refuses_bad_outputs_and_devices_before_any_work(
    tmp_path: Path, capsys, never_load, setup: str, extra: list[str], needles: list[str]
) -> None:
    (tmp_path / "plain.txt").write_text("keep")
    (tmp_path / "adir").mkdir()
    (tmp_path / "old.json").write_text('{"mine": true}')
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    code, err = _eval([*BASE, *[a.format(tmp=tmp_path) for a in extra]], capsys)
    _one_line(code, err, *needles)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert _listing(tmp_path) == ["adir", "old.json", "plain.txt"]


def test_cuda_on_a_build_without_it_is_one_line(tmp_path: Path, capsys, never_load) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: cuda is a valid device here")
    code, err = _eval([*BASE, "--device", "cuda", "--output", str(tmp_path / "r.json")], capsys)
    _one_line(code, err, "'cuda'", "use --device cpu")
    assert list(tmp_path.iterdir()) == []


def test_the_same_weights_keep_their_cache_whatever_else_the_model_dir_holds(tmp_path: Path, capsys) -> None:
    model = tmp_path / "model"
    shutil.copytree(SHIPPED_PRESETS["glm-tiny"], model)
    out = tmp_path / "run" / "r.json"
    args = ["--backend", "torch", "--model", str(model), "--tasks", "demo", "--data-dir", str(FIXTURES)]
    assert _eval([*args, "--output", str(out)], capsys)[0] == 0
    first = json.loads(out.read_text())
    computed = first["tasks"]["demo"]["computed"]
    assert computed > 0
    # what an export or a user adds beside the weights: a report with timings and paths, results, a marker, a card
    (model / "export_report.json").write_text(json.dumps({"seconds": 12.5, "out": str(model)}))
    shutil.copy(out, model / "results.json")
    (model / ".glm-harness-output.json").write_text('{"tool": "export.onnx"}')
    (model / "README.md").write_text("changed card\n")
    assert model_hash(model) == first["model_hash"]
    code, err = _eval([*args, "--output", str(out)], capsys)
    _one_line(code, err, "already exists; pass --overwrite")
    assert _eval([*args, "--output", str(out), "--overwrite"], capsys)[0] == 0
    again = json.loads(out.read_text())["tasks"]["demo"]
    assert again["resumed"] == computed and again["computed"] == 0
    # the weights themselves do move it
    (model / "config.json").write_text((model / "config.json").read_text().replace('"tanh"', '"erf"'))
    assert model_hash(model) != first["model_hash"]


def test_compare_refuses_an_output_it_did_not_write_and_keeps_exit_1_for_drift(tmp_path: Path, capsys) -> None:
    def run(tasks_b: dict[str, object], *extra: str) -> int:
        a = tmp_path / "a.json"
        b = tmp_path / "b.json"
        base = {"model_hash": "sha256:" + "0" * 64, "backend": "torch", "dtype": "fp32", "tasks": {}}
        a.write_text(json.dumps({**base, "tasks": {"demo": {"metrics": {"accuracy": 0.5}}}}))
        b.write_text(json.dumps({**base, "tasks": tasks_b}))
        return compare.main([str(a), str(b), "-q", *extra])

    same = {"demo": {"metrics": {"accuracy": 0.5}}}
    notes = tmp_path / "notes.md"
    notes.write_text("my notes\n")
    assert run(same, "--output", str(notes)) == 2
    assert run(same, "--output", str(notes), "--overwrite") == 2
    assert notes.read_text() == "my notes\n"
    err = capsys.readouterr().err
    assert "already exists" in err and "is not a comparison report" in err
    report = tmp_path / "report.md"
    assert run(same, "--output", str(report)) == 0
    assert run({"demo": {"metrics": {"accuracy": 0.9}}}, "--output", str(report), "--overwrite") == 1  # drift
    assert "accuracy" in report.read_text()


def test_an_example_that_cannot_be_laid_out_is_named_with_its_file(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data" / "demo"
    data.mkdir(parents=True)
    long_choice = " ".join(["word"] * 40)
    rows = [
        {"text": "The cat sat on the [MASK].", "choices": ["mat", "sky"], "label": 0},
        {"text": "Paris is in [MASK].", "choices": ["France", long_choice], "label": 0},
    ]
    (data / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["--model", "glm-tiny", "--tasks", "demo", "--data-dir", str(tmp_path / "data"), "--seq-length", "16"]
    code, err = _eval(args, capsys)
    _one_line(code, err, "demo: example", "val.jsonl", "maximum length")


def test_a_read_only_output_directory_is_refused_before_any_work(
    tmp_path: Path, capsys, never_load, monkeypatch
) -> None:
    # tests may run as root, for whom every directory is writable: the check's view of the disk is faked instead
    import glm_core.outputs as outputs

    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(outputs.os, "access", lambda p, mode: False if Path(p) == read_only else real_access(p, mode))
    code, err = _eval([*BASE, "--output", str(read_only / "r.json")], capsys)
    _one_line(code, err, "is not writable")
    assert compare.main(["a.json", "b.json", "--output", str(read_only / "c.md")]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert list(read_only.iterdir()) == []
