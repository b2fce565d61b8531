"""``python -m evaluation``: results file, bad input (one line on stderr, exit 2, nothing written), resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation import runner
from evaluation.cli import main
from evaluation.tasks.demo import Demo

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "evaluation" / "data" / "fixtures"


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([*args, "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("glm-eval: error: ")
    for needle in needles:
        assert needle in lines[0]


def test_results_json_and_table(model_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "res" / "results.json"
    code, stdout, _ = run_cli(
        [
            "--model",
            str(model_dir),
            "--tasks",
            "demo,boolq:4,copa",
            "--data-dir",
            str(FIXTURES),
            "--output",
            str(out),
            "--records",
        ],
        capsys,
    )
    assert code == 0
    results = json.loads(out.read_text())
    assert results["backend"] == "torch" and results["dtype"] == "fp32" and results["provider"] == "torch-cpu"
    assert results["model_hash"].startswith("sha256:") and "torch" in results["versions"]
    assert set(results["tasks"]) == {"demo", "boolq-p4", "copa-p0"}
    demo = results["tasks"]["demo"]
    assert demo["num_examples"] == 3 and demo["computed"] == 3 and demo["examples_per_second"] > 0
    assert 0.0 <= demo["metrics"]["acc"] <= 1.0
    assert results["tasks"]["boolq-p4"]["config"]["pattern_id"] == 4
    assert "boolq-p4" in stdout and "acc=" in stdout  # the table
    assert [r["key"] for r in demo["records"]] == ["1", "2", "3"] and all(
        len(r["scores"]) >= 2 for r in demo["records"]
    )


def test_unknown_task_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.json"
    code, _, err = run_cli(["--model", "x", "--tasks", "demo,nosuchtask", "--output", str(out)], capsys)
    assert_one_line_error(code, err, "unknown task 'nosuchtask'")
    assert not out.exists()


def _boolq_dir(tmp_path: Path, lines: list[str]) -> Path:
    d = tmp_path / "data"
    (d / "BoolQ").mkdir(parents=True)
    (d / "BoolQ" / "val.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return d


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path, capsys) -> None:
    good = json.dumps({"question": "q", "passage": "p", "idx": 0, "label": True})
    data = _boolq_dir(tmp_path, [good, '{"question": "q", "passage": '])
    code, _, err = run_cli(["--model", "x", "--tasks", "boolq", "--data-dir", str(data)], capsys)
    assert_one_line_error(code, err, "BoolQ/val.jsonl:2", "malformed JSON")


def test_missing_field_names_the_field(tmp_path: Path, capsys) -> None:
    data = _boolq_dir(tmp_path, [json.dumps({"question": "q", "idx": 0, "label": True})])
    code, _, err = run_cli(["--model", "x", "--tasks", "boolq", "--data-dir", str(data)], capsys)
    assert_one_line_error(code, err, "val.jsonl:1", "missing field 'passage'")


def test_empty_data_file(tmp_path: Path, capsys) -> None:
    data = _boolq_dir(tmp_path, [])
    code, _, err = run_cli(["--model", "x", "--tasks", "boolq", "--data-dir", str(data)], capsys)
    assert_one_line_error(code, err, "empty data file")


def test_missing_data_file(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["--model", "x", "--tasks", "lambada", "--data-dir", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "data file not found")


def test_model_directory_that_is_not_a_checkpoint_exits_2(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-model"
    bogus.mkdir()
    (bogus / "notes.txt").write_text("hello", encoding="utf-8")
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluation",
            "--model",
            str(bogus),
            "--tasks",
            "demo",
            "--data-dir",
            str(FIXTURES),
            "--output",
            str(out),
            "--no-progress",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a checkpoint directory" in lines[0], proc.stderr
    assert not out.exists()


def test_interrupted_run_resumes_from_its_cache(model_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(runner, "EXAMPLES_PER_CHUNK", 1)
    original_predict = Demo.predict
    seen: list[str] = []

    def interrupted_predict(self, examples, ctx):
        if seen:
            raise KeyboardInterrupt  # Ctrl-C while the second example runs
        seen.extend(e.key for e in examples)
        return original_predict(self, examples, ctx)

    out = tmp_path / "run" / "results.json"
    args = ["--model", str(model_dir), "--tasks", "demo", "--data-dir", str(FIXTURES), "--output", str(out)]
    monkeypatch.setattr(Demo, "predict", interrupted_predict)
    code, _, err = run_cli(args, capsys)
    assert code == 130 and "interrupted" in err
    assert not out.exists()
    [cache] = (out.parent / ".glm-eval-cache").glob("demo-*.jsonl")
    assert len(cache.read_text().splitlines()) == 2  # header + the first example
    with open(cache, "a", encoding="utf-8") as fh:
        fh.write('{"key": "2", "scores": [-1.')  # a write cut off by a kill: no newline

    computed: list[str] = []

    def counting_predict(self, examples, ctx):
        computed.extend(e.key for e in examples)
        return original_predict(self, examples, ctx)

    monkeypatch.setattr(Demo, "predict", counting_predict)
    code, _, _ = run_cli(args, capsys)
    assert code == 0
    assert computed == ["2", "3"]  # only what the first run did not finish
    results = json.loads(out.read_text())["tasks"]["demo"]
    assert results["resumed"] == 1 and results["computed"] == 2
    lines = cache.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)  # the torn line is gone

    # the resumed records equal a clean run's
    clean = tmp_path / "clean" / "results.json"
    code, _, _ = run_cli(
        ["--model", str(model_dir), "--tasks", "demo", "--data-dir", str(FIXTURES), "--output", str(clean)], capsys
    )
    assert code == 0
    [clean_cache] = (clean.parent / ".glm-eval-cache").glob("demo-*.jsonl")
    by_key = lambda path: {r["key"]: r for r in map(json.loads, path.read_text().splitlines()[1:])}  # noqa: E731
    resumed_records, clean_records = by_key(cache), by_key(clean_cache)
    assert resumed_records.keys() == clean_records.keys()
    for key, record in clean_records.items():
        assert resumed_records[key]["scores"] == pytest.approx(record["scores"], abs=1e-6)
    assert json.loads(clean.read_text())["tasks"]["demo"]["metrics"] == results["metrics"]


def test_cache_of_another_model_is_not_reused(model_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "results.json"
    args = ["--model", str(model_dir), "--tasks", "demo", "--data-dir", str(FIXTURES), "--output", str(out)]
    assert run_cli(args, capsys)[0] == 0
    [cache] = (tmp_path / ".glm-eval-cache").glob("demo-*.jsonl")
    header = json.loads(cache.read_text().splitlines()[0])
    assert header["model_hash"] == json.loads(out.read_text())["model_hash"]
    assert run_cli([*args, "--overwrite"], capsys)[0] == 0
    assert json.loads(out.read_text())["tasks"]["demo"]["resumed"] == 3
