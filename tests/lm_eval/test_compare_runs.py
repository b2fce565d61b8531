"""``python -m evaluation.compare``: thresholds, exit codes and bad input, on runs written by hand in this file.

lm-eval runs are laid out as lm-eval 0.4.13 writes them (spec lm_eval_integration §4: ``<out>/<model>/results_<ts>.json``
plus ``samples_<task>_<ts>.jsonl`` with stringified log-likelihoods); native runs as ``python -m evaluation`` writes
them (``tasks[task].metrics``; records inline or in ``.glm-eval-cache/`` beside the file).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from evaluation.compare import Thresholds, compare_runs, load_run, main, render_markdown
from glm_core.errors import DataError

STAMP = "2026-01-02T03-04-05.678901"
MC_SAMPLES = [  # (doc_id, per-choice log-likelihoods, label)
    (0, ["-1.5", "-22.099999999999998", "-3.25"], 0),
    (1, ["-4.0", "-2.0", "-9.5"], 2),
]
ROLLING = [(0, "-388.4921989298262"), (1, "-12.5")]
GENERATIONS = [(0, "the council voted"), (1, "rain closed roads")]


def mc_row(doc_id: int, lls: list[str], label: int) -> dict:
    return {
        "doc_id": doc_id,
        "doc": {"label": label},
        "target": str(label),
        "arguments": {f"gen_args_{i}": {"arg_0": f"q{doc_id}", "arg_1": f" c{i}"} for i in range(len(lls))},
        "resps": [[[ll, "False"]] for ll in lls],
        "filtered_resps": [[ll, "False"] for ll in lls],
        "filter": "none",
        "metrics": ["acc"],
        "prompt_hash": f"p{doc_id}",
        "acc": float(max(range(len(lls)), key=lambda i: float(lls[i])) == label),
    }


def lm_eval_run(root: Path, *, mc=MC_SAMPLES, rolling=ROLLING, generations=GENERATIONS, acc=None, hashes=None) -> Path:
    """Write an lm-eval output dir: glm_demo (multiple choice), glm_demo_ppl (rolling), glm_summarization (generation)."""
    out = root / "__models__glm-tiny"
    out.mkdir(parents=True)
    mc_rows = [mc_row(*s) for s in mc]
    ppl_rows = [
        {"doc_id": d, "arguments": {"gen_args_0": {"arg_0": "text"}}, "filtered_resps": [ll], "filter": "none"}
        for d, ll in rolling
    ]
    gen_rows = [
        {
            "doc_id": d,
            "arguments": {"gen_args_0": {"arg_0": "doc", "arg_1": {"until": ["\n"]}}},
            "filtered_resps": [text],
            "filter": "none",
        }
        for d, text in generations
    ]
    for task, rows in (("glm_demo", mc_rows), ("glm_demo_ppl", ppl_rows), ("glm_summarization", gen_rows)):
        (out / f"samples_{task}_{STAMP}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    acc_value = sum(r["acc"] for r in mc_rows) / len(mc_rows) if acc is None else acc
    results = {
        "results": {
            "glm_demo": {"alias": "glm_demo", "acc,none": acc_value, "acc_stderr,none": 0.5},
            "glm_demo_ppl": {"word_perplexity,none": 4.5e8, "word_perplexity_stderr,none": "N/A"},
            "glm_summarization": {"rouge1,none": 0.25},
        },
        "config": {"model": "glm-onnx", "glm_model_info": {"backend": "onnx", "model_hash": "sha256:" + "ab" * 32}},
        "task_hashes": hashes or {"glm_demo": "h1", "glm_demo_ppl": "h2", "glm_summarization": "h3"},
        "n-samples": {},
        "lm_eval_version": "0.4.13",
    }
    (out / f"results_{STAMP}.json").write_text(json.dumps(results))
    return root


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return lm_eval_run(tmp_path / "a")


def shifted(mc_shift: float = 0.0, rolling_shift: float = 0.0) -> dict:
    mc = [(d, [repr(float(x) + mc_shift) for x in lls], label) for d, lls, label in MC_SAMPLES]
    rolling = [(d, repr(float(x) + rolling_shift)) for d, x in ROLLING]
    return {"mc": mc, "rolling": rolling}


def test_identical_runs_pass_with_exit_status_0(base: Path, tmp_path: Path, capsys) -> None:
    other = lm_eval_run(tmp_path / "b")
    assert main([str(base), str(other)]) == 0
    text = capsys.readouterr().out
    assert "**PASS**" in text
    assert "| glm_demo | acc,none | 0.5 | 0.5 | 0 | yes |" in text


def test_stringified_log_likelihoods_are_read_at_full_precision(base: Path) -> None:
    run = load_run(base)
    demo = run.tasks["glm_demo"].samples["0|none"]
    assert demo.loglikelihoods == (-1.5, -22.099999999999998, -3.25)
    assert demo.greedy == (False, False, False)
    assert run.tasks["glm_demo_ppl"].samples["0|none"].loglikelihoods == (-388.4921989298262,)
    assert run.tasks["glm_summarization"].samples["1|none"].generations == ("rain closed roads",)
    assert run.tasks["glm_demo"].metrics == {"acc,none": 0.5}  # stderr entries are not metrics


def test_log_likelihood_drift_beyond_the_threshold_fails(base: Path, tmp_path: Path) -> None:
    drifted = lm_eval_run(tmp_path / "b", **shifted(mc_shift=2e-4))
    report = compare_runs(load_run(base), load_run(drifted))
    assert not report["ok"]
    demo = next(s for s in report["samples"] if s["task"] == "glm_demo")
    assert demo["max_abs_ll_diff"] == pytest.approx(2e-4)
    assert demo["ll_failures"] == 2 and demo["argmax_agreement"] == 1.0
    assert main([str(base), str(drifted), "-q"]) == 1
    assert main([str(base), str(drifted), "-q", "--max-ll-diff", "5e-4"]) == 0


def test_relative_tolerance_admits_long_rolling_sums(base: Path, tmp_path: Path) -> None:
    drifted = lm_eval_run(tmp_path / "b", **shifted(rolling_shift=1e-3))  # 1e-3 on a sum of -388 is 2.6e-6 relative
    assert main([str(base), str(drifted), "-q"]) == 1
    assert main([str(base), str(drifted), "-q", "--ll-rtol", "1e-5"]) == 1  # -12.5 + 1e-3 is 8e-5 relative
    assert main([str(base), str(drifted), "-q", "--ll-rtol", "1e-4"]) == 0


def test_metric_drift_fails(base: Path, tmp_path: Path, capsys) -> None:
    other = lm_eval_run(tmp_path / "b", acc=0.55)
    assert main([str(base), str(other)]) == 1
    text = capsys.readouterr().out
    assert "**FAIL**" in text and "acc,none differs by 0.05" in text
    assert main([str(base), str(other), "-q", "--max-metric-diff", "0.1"]) == 0


def test_generation_mismatch_fails_below_the_exact_match_rate(base: Path, tmp_path: Path) -> None:
    other = lm_eval_run(tmp_path / "b", generations=[(0, "the council voted"), (1, "rain closed a road")])
    report = compare_runs(load_run(base), load_run(other))
    gen = next(s for s in report["samples"] if s["task"] == "glm_summarization")
    assert gen["generation_match"] == 0.5
    assert main([str(base), str(other), "-q"]) == 1
    assert main([str(base), str(other), "-q", "--min-generation-match", "0.5"]) == 0


def test_runs_over_different_inputs_fail(base: Path, tmp_path: Path) -> None:
    other = lm_eval_run(tmp_path / "b", hashes={"glm_demo": "other", "glm_demo_ppl": "h2", "glm_summarization": "h3"})
    report = compare_runs(load_run(base), load_run(other))
    assert any("different inputs" in f for f in report["failures"])
    missing = lm_eval_run(tmp_path / "c", mc=MC_SAMPLES[:1])
    report = compare_runs(load_run(base), load_run(missing))
    assert any("one side only: 1 in A, 0 in B" in f for f in report["failures"])


def test_prompt_hash_mismatch_fails(base: Path, tmp_path: Path) -> None:
    a = load_run(base)
    b = copy.deepcopy(a)
    b.tasks["glm_demo"].samples["1|none"].prompt_hash = "changed"
    report = compare_runs(a, b)
    assert not report["ok"] and any("different prompts" in f for f in report["failures"])


def test_a_single_samples_file_can_be_compared(base: Path, tmp_path: Path) -> None:
    other = lm_eval_run(tmp_path / "b", **shifted(mc_shift=1e-6))
    a = base / "__models__glm-tiny" / f"samples_glm_demo_{STAMP}.jsonl"
    b = other / "__models__glm-tiny" / f"samples_glm_demo_{STAMP}.jsonl"
    report = compare_runs(load_run(a), load_run(b))
    assert report["ok"]
    assert report["metrics"][0]["metric"] == "acc,none"  # from the per-sample metric values
    assert report["summary"]["max_abs_ll_diff"] == pytest.approx(1e-6)


def test_json_report_to_a_file(base: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "reports" / "cmp.json"
    assert main([str(base), str(base), "--format", "json", "--output", str(out)]) == 0
    assert capsys.readouterr().out == ""
    report = json.loads(out.read_text())
    assert report["ok"] and report["summary"]["tasks"] == 3
    assert report["summary"]["max_abs_ll_diff"] == 0.0 and report["summary"]["generation_match"] == 1.0
    assert render_markdown(report).startswith("# Run comparison")


# ---------------------------------------------------------------------------------------------------------- native
def native_run(path: Path, *, scores=((-1.0, -2.0), (-0.5, -3.0)), prediction="a summary", inline=True) -> Path:
    records = [{"key": f"ex{i}", "scores": list(s), "pred": 0} for i, s in enumerate(scores)]
    gen = [{"key": "s0", "prediction": prediction, "reference": "ref"}]
    tasks = {
        "demo": {"metrics": {"acc": 0.5}, "num_examples": 2},
        "cnndm": {"metrics": {"rouge1": 0.3, "rouge2": "nan"}, "num_examples": 1},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"backend": "onnx", "dtype": "fp32", "model_hash": "sha256:" + "cd" * 32}
    if inline:
        tasks["demo"]["records"], tasks["cnndm"]["records"] = records, gen
    else:  # evaluation/result_cache.py layout: a header line, then one record a line
        cache = path.parent / ".glm-eval-cache"
        cache.mkdir()
        for task, rows in (("demo", records), ("cnndm", gen)):
            header = {
                "format": 1,
                "task": task,
                "data": "x",
                **{k: meta[k] for k in ("backend", "dtype", "model_hash")},
            }
            (cache / f"{task}-onnx.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [header, *rows]))
    path.write_text(json.dumps({**meta, "tasks": tasks}))
    return path


def test_native_runs_compare_records_inline_or_from_the_result_cache(tmp_path: Path) -> None:
    a = native_run(tmp_path / "a" / "results.json")
    b = native_run(tmp_path / "b" / "results.json", inline=False)
    report = compare_runs(load_run(a), load_run(b))
    assert report["ok"], report["failures"]
    demo = next(s for s in report["samples"] if s["task"] == "demo")
    assert demo["samples"] == 2 and demo["loglikelihoods"] == 4
    drifted = native_run(tmp_path / "c" / "results.json", scores=((-1.0, -2.001), (-0.5, -3.0)), prediction="other")
    assert main([str(a), str(drifted), "-q"]) == 1
    report = compare_runs(load_run(a), load_run(drifted))
    assert any("generation exact match 0.0%" in f for f in report["failures"])


# ------------------------------------------------------------------------------------------------------- bad input
def test_bad_input_exits_with_status_2(base: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    native = native_run(tmp_path / "n" / "results.json")
    assert main([str(base), str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert main([str(broken), str(base)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main([str(empty_dir), str(base)]) == 2
    assert "no lm-eval results_*.json" in capsys.readouterr().err
    assert main([str(native), str(base)]) == 2
    assert "cannot compare a native run" in capsys.readouterr().err
    assert main([str(base), str(base), "--max-ll-diff", "-1"]) == 2
    assert "max_ll_diff must be a finite number >= 0" in capsys.readouterr().err


def test_results_of_several_models_in_one_directory_are_ambiguous(base: Path) -> None:
    lm_eval_run(base / "second")
    with pytest.raises(DataError, match="several models"):
        load_run(base)


def test_runs_without_a_common_task_are_bad_input(base: Path, tmp_path: Path) -> None:
    native_a = native_run(tmp_path / "a" / "results.json")
    data = json.loads(native_a.read_text())
    data["tasks"] = {"other": data["tasks"]["demo"]}
    other = tmp_path / "b.json"
    other.write_text(json.dumps(data))
    with pytest.raises(DataError, match="share no task"):
        compare_runs(load_run(native_a), load_run(other))


def test_thresholds_are_validated() -> None:
    with pytest.raises(DataError, match="min_generation_match"):
        Thresholds(min_generation_match=1.5)
