"""The shipped lm-eval task configs: indexing, local data loading, ROUGE by hand, the repointed built-in group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.lm_eval_tasks import DATA_DIR, GROUP_NAMES, TASK_NAMES, task_dir
from evaluation.lm_eval_tasks import __main__ as tasks_cli
from evaluation.lm_eval_tasks.local_data import demo_dataset, local_jsonl, read_jsonl
from evaluation.lm_eval_tasks.rouge import process_results, rouge_f
from glm_core.errors import DataError


def test_path_option_prints_the_include_path(capsys) -> None:
    assert tasks_cli.main(["--path"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == task_dir()
    assert (Path(printed) / "glm_demo.yaml").is_file()


def test_task_manager_indexes_the_shipped_tasks_without_lm_eval_defaults() -> None:
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=task_dir(), include_defaults=False)
    assert set(TASK_NAMES) | set(GROUP_NAMES) <= set(manager.all_tasks)


# ---------------------------------------------------------------------------------------------------- ROUGE by hand
def test_rouge_of_identical_text_is_one() -> None:
    assert rouge_f("The cat sat on the mat.", "The cat sat on the mat.") == {
        "rouge1": 1.0,
        "rouge2": 1.0,
        "rougeLsum": 1.0,
    }


def test_rouge_counts_unigrams_bigrams_and_the_longest_common_subsequence() -> None:
    # prediction "the cat sat" vs reference "the cat ran": unigrams 2 of 3 each way -> F1 2/3;
    # bigrams {the cat, cat sat} vs {the cat, cat ran}: 1 of 2 -> 1/2; LCS "the cat" = 2 of 3 -> 2/3
    scores = rouge_f("the cat sat", "the cat ran")
    assert scores["rouge1"] == pytest.approx(2 / 3)
    assert scores["rouge2"] == pytest.approx(1 / 2)
    assert scores["rougeLsum"] == pytest.approx(2 / 3)


def test_rouge_stems_words_like_glms_own_evaluation() -> None:
    # spec glm_reference §6.4: use_stemmer=True, so "cats running" matches "cat run" word for word
    assert rouge_f("cats running", "cat run")["rouge1"] == pytest.approx(1.0)


def test_process_results_scores_the_generation_against_the_summary() -> None:
    assert process_results({"summary": "the cat ran"}, ["the cat sat"])["rouge2"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------------ local data
def test_local_jsonl_reads_the_bundled_file_or_a_given_data_dir(tmp_path: Path) -> None:
    bundled = local_jsonl(file="superglue/boolq.jsonl", split="validation")
    assert list(bundled) == ["validation"]
    assert bundled["validation"][0] == json.loads((DATA_DIR / "superglue/boolq.jsonl").read_text().splitlines()[0])
    (tmp_path / "superglue").mkdir()
    (tmp_path / "superglue" / "boolq.jsonl").write_text('{"passage": "p", "question": "q", "label": 1, "idx": 0}\n')
    mine = local_jsonl(file="superglue/boolq.jsonl", split="test", glm_data_dir=str(tmp_path), version=1.0)
    assert mine["test"]["passage"] == ["p"]


def test_local_data_errors_name_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="task data file not found"):
        local_jsonl(file="nope.jsonl", glm_data_dir=str(tmp_path))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: expected a JSON object"):
        read_jsonl(bad)
    bad.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        read_jsonl(bad)
    with pytest.raises(DataError, match="no data file"):
        local_jsonl()


def test_demo_records_are_validated(tmp_path: Path) -> None:
    demo = tmp_path / "demo.jsonl"
    demo.write_text('{"text": "A [MASK].", "choices": ["x", "y"], "label": 2}\n')
    with pytest.raises(DataError, match="label 2; expected an index into its 2 choices"):
        demo_dataset(glm_demo_file=str(demo))
    assert len(demo_dataset()["validation"]) == 260  # evaluation/data/demo/val.jsonl


# ------------------------------------------------------------------------------- built-in tasks on local data
def test_builtin_superglue_and_lambada_run_offline_on_the_bundled_files() -> None:
    """The group reuses lm-eval's own boolq/cb/copa/wic/multirc/sglue_rte/lambada_openai configs (prompts, metrics,
    copa's !function utils) with only the data source replaced; the dummy model makes it fast."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model="dummy", tasks=["glm_local_superglue"], task_manager=TaskManager(include_path=task_dir())
    )
    expected = {"boolq": 6, "cb": 6, "copa": 6, "wic": 6, "multirc": 6, "sglue_rte": 4, "lambada_openai": 6}
    assert {t: results["n-samples"][t]["effective"] for t in expected} == expected
    assert "acc,none" in results["groups"]["glm_local_superglue"]
    assert "perplexity,none" in results["results"]["lambada_openai"]
    assert "f1,none" in results["results"]["cb"]
    copa = results["configs"]["copa"]
    assert copa["dataset_kwargs"] == {"file": "superglue/copa.jsonl", "split": "validation"}
