"""The paper's evaluation protocol, rule by rule, as the original code (THUDM/GLM 4f61ed7) applies it.

Every expectation below is worked out by hand from the original's rule (the file and line are named in each test)
with the test vocabulary's ids (``tests/evaluation/vocab.py``: BERT WordPiece, one id per word).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from evaluation.cli import main
from evaluation.tasks import expand_task_list, get_task
from evaluation.tasks.base import EvalContext, Example, resolve_seq_length
from glm_core.errors import ConfigError, DataError
from tests.evaluation.test_superglue_patterns import check_candidates, check_single_token, ids
from tests.evaluation.vocab import CLS, EOP, EOS, SOP

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "evaluation" / "data" / "fixtures"
# config_tasks/task_<name>.sh line 4: MAX_SEQ_LEN=...
PAPER_LENGTHS = {
    "boolq": 256,
    "cb": 256,
    "copa": 256,
    "rte": 256,
    "wic": 256,
    "wsc": 128,
    "multirc": 512,
    "record": 512,
}


def context(tokenizer, task, model_max: int, requested: int | None = None) -> EvalContext:
    length, _ = resolve_seq_length(task, requested, model_max)
    backend = SimpleNamespace(tokenizer=tokenizer, max_length=model_max)
    return EvalContext(backend=backend, scorer=None, seq_length=length)  # type: ignore[arg-type]


def fixture_example(task, key: str) -> Example:
    return {e.key: e for e in task.read(FIXTURES, task.default_split, None)}[key]


# ---------------------------------------------------------------------------------------------------- sequence length
def test_each_superglue_task_has_the_configs_max_seq_len() -> None:
    # config_tasks/task_<name>.sh line 4: MAX_SEQ_LEN=...
    tasks = {t.name: t for t in expand_task_list("superglue")}
    assert {name: resolve_seq_length(t, None, 2048)[0] for name, t in tasks.items()} == PAPER_LENGTHS
    assert resolve_seq_length(tasks["boolq"], 64, 2048) == (64, None)  # --seq-length overrides
    length, note = resolve_seq_length(tasks["record"], None, 128)  # a model shorter than the protocol: capped
    assert length == 128 and note is not None and "512" in note and "128" in note
    assert resolve_seq_length(get_task("demo"), None, 300) == (300, None)  # no paper length: the model's
    with pytest.raises(ConfigError, match="at least 8"):
        resolve_seq_length(tasks["boolq"], 4, 2048)


def test_boolq_is_truncated_at_its_own_length_not_the_models(tokenizer) -> None:
    # pvp.py:338 PVP.truncate with max_length = args.seq_length (scripts/finetune_superglue.sh --seq-length
    # ${MAX_SEQ_LEN}); [CLS], eos and sop count (tasks/data_utils.py:93 num_special_tokens_to_add). The model takes 1024.
    task = get_task("boolq")
    example = Example("long", {"passage": "the " * 300, "question": "is the sun hot", "label": 1})
    [sample] = task.samples(example, context(tokenizer, task, model_max=1024))
    assert len(sample) == 256
    # 311 pattern tokens, 253 fit: the question (last shortenable part, 4 tokens) goes first, then 54 passage tokens
    check_single_token(sample, "the " * 246 + "question : ? answer : [MASK] .")


def test_part_a_is_truncated_per_candidate(tokenizer) -> None:
    # pvp.py:231-235: this_parts_a = copy.deepcopy(parts_a); truncate(this_parts_a, ..., answer_ids + [eop]) for every
    # answer, so a short candidate keeps more of the passage than a long one.
    task = get_task("record")
    data = {"passage": "the cat sat on the mat .", "query": "@placeholder ran fast .", "entities": [], "answers": []}
    data["entities"] = ["bob", "the big red dog"]
    example = Example("q", data)
    samples = task.samples(example, context(tokenizer, task, model_max=128, requested=16))
    # " bob" + eop: 11 pattern tokens + [CLS] eos + 2 = 15 <= 16, nothing cut
    check_candidates(samples[:1], "the cat sat on the mat . [MASK] ran fast .", ["bob"])
    # " the big red dog" + eop: 11 + 2 + 5 = 18, two tokens come off the end of the passage
    check_candidates(samples[1:], "the cat sat on the [MASK] ran fast .", ["the big red dog"])
    assert [len(s) for s in samples] == [15, 16]


def test_cli_superglue_without_length_option_uses_the_configs_lengths(tmp_path: Path, tokenizer_dir, capsys) -> None:
    from tests.evaluation.conftest import make_model_dir

    model = make_model_dir(tmp_path / "m512", tokenizer_dir, max_sequence_length=512)
    out = tmp_path / "results.json"
    code = main(
        ["--model", str(model), "--tasks", "superglue", "--data-dir", str(FIXTURES), "--limit", "1"]
        + ["--output", str(out), "--no-progress"]
    )
    assert code == 0, capsys.readouterr().err
    tasks = json.loads(out.read_text())["tasks"]
    lengths = {entry["task"]: entry["config"]["seq_length"] for entry in tasks.values()}
    assert lengths == PAPER_LENGTHS
    assert tasks["wsc-p0"]["config"]["protocol_source"].endswith("config_tasks/task_wsc.sh")


def test_a_model_shorter_than_the_protocol_is_evaluated_at_its_maximum_with_a_note(
    model_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "results.json"
    args = ["--model", str(model_dir), "--tasks", "boolq", "--data-dir", str(FIXTURES), "--limit", "1"]
    assert main([*args, "--output", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    note = "boolq: the paper's length for boolq is 256 but the model's max_sequence_length is 128; evaluating at 128"
    assert f"glm-eval: note: {note}" in err
    entry = json.loads(out.read_text())["tasks"]["boolq-p0"]
    assert entry["config"]["seq_length"] == 128 and entry["notes"] == [note]


# ---------------------------------------------------------------------------------------------------- WSC candidates
def write_wsc(directory: Path, candidates: list | None) -> Path:
    row = {
        "text": "The city council refused the demonstrators a permit because they feared violence.",
        "target": {"span2_index": 9, "span1_index": 0, "span1_text": "The city council", "span2_text": "they"},
        "idx": 0,
        "label": True,
    }
    if candidates is not None:
        row["candidates"] = candidates
    (directory / "WSC").mkdir(parents=True, exist_ok=True)
    (directory / "WSC" / "val.jsonl").write_text(json.dumps(row) + "\n")
    return directory


def test_wsc_keeps_case_variant_candidates_and_drops_exact_duplicates(tmp_path: Path, tokenizer) -> None:
    # tasks/superglue/dataset.py:448-455: candidates = [cand['text'] ...]; kept unless `cand in candidates[:i]`;
    # pvp.py:542-550 WscPVP.get_answers: [" " + span1_text] + [" " + cand for cand in candidates].
    cands = [{"text": "the city council"}, {"text": "the demonstrators"}, {"text": "the demonstrators"}]
    task = get_task("wsc")
    [example] = task.read(write_wsc(tmp_path, cands), "val", None)
    assert task.candidates(example) == [" The city council", " the city council", " the demonstrators"]
    samples = task.samples(example, context(tokenizer, task, model_max=512))
    pattern = (
        "the city council refused the demonstrators a permit because * they * feared violence . "
        "the pronoun ' * they * ' refers to [MASK] ."
    )
    check_candidates(samples, pattern, ["the city council", "the city council", "the demonstrators"])


def test_wsc_without_candidates_is_refused_under_the_papers_protocol(tmp_path: Path, capsys) -> None:
    # config_tasks/task_wsc.sh: DATA_PATH=.../WSC-negative; without a candidates field the original scores span1 alone
    data = write_wsc(tmp_path, None)
    with pytest.raises(DataError, match="needs a 'candidates' field"):
        get_task("wsc").read(data, "val", None)
    code = main(["--model", "glm-tiny", "--tasks", "wsc", "--data-dir", str(data), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--wsc-negatives annotations" in err[0]
    [task] = expand_task_list("wsc", options={"wsc_negatives": "annotations"})  # the named non-paper variant
    assert task.task_id == "wsc-p0-annotations"
    assert task.read(FIXTURES / "superglue", "val", None)[0].data["negatives"] == ["the demonstrators"]


# ---------------------------------------------------------------------------------------------------- pattern strings
def parts_of(task, example) -> list:
    (parts_a, parts_b), _ = task.units(example)[0]
    return [p.text if hasattr(p, "text") else p for p in parts_a + parts_b]


def test_pattern_parts_are_pvp_py_part_for_part() -> None:
    from evaluation.tasks.cloze import MASK

    boolq = fixture_example(get_task("boolq"), "0")
    # pvp.py:807: 'Based on the following passage' without a trailing space (one BPE token fewer than with it)
    assert parts_of(get_task("boolq:4"), boolq)[0] == "Based on the following passage"
    wic = fixture_example(get_task("wic"), "0")
    # pvp.py:894-895: [word, ' .', ' Sense (1) (a) "', shortenable(text_a), '"', ' (', [mask], ') "', text_b, '"']
    assert parts_of(get_task("wic:2"), wic) == [
        "bank",
        " .",
        ' Sense (1) (a) "',
        "He went to the bank for money.",
        '"',
        " (",
        MASK,
        ') "',
        "The bank of the river was wet.",
        '"',
    ]
    multirc = fixture_example(get_task("multirc"), "0-0")
    # pvp.py:850-851 pattern 4: [passage, '.', ' Question:', " " + question, '?', " " + answer, '?', [mask], '.']
    passage = "Bob visited Paris. Alice visited London. They went home today"
    assert parts_of(get_task("multirc:4"), multirc) == [
        passage,
        ".",
        " Question:",
        " What did Bob visit",
        "?",
        " Paris",
        "?",
        MASK,
        ".",
    ]
    # pvp.py:838-839 pattern 0 groups "? " with the question and " Is it" apart
    assert parts_of(get_task("multirc"), multirc)[3:5] == [" What did Bob visit?", " Is it"]


def test_copa_pattern_2_scores_the_joiner_after_each_choice(tokenizer) -> None:
    # pvp.py:477-527 CopaPVP.encode for pattern 2: per choice, parts '"' c1 '" or "' c2 '"?' premise [mask] choice,
    # answer_ids = [" because" / " so", eop] scored after it (length penalty 0: the plain sum).
    task = get_task("copa:2")
    example = fixture_example(task, "0")
    samples = task.samples(example, context(tokenizer, task, model_max=512))
    head = '" the sun rose " or " the grass grew " ? my body cast a shadow over the grass [MASK]'
    check_candidates(samples[:1], head + " the sun rose", ["because"])
    check_candidates(samples[1:], head + " the grass grew", ["because"])
    assert samples[0].targets[-2:].tolist() == [ids("because")[0], EOP]
    assert samples[0].input_ids[:1].tolist() == [CLS] and EOS in samples[0].input_ids.tolist()
    assert samples[0].input_ids.tolist()[samples[0].sep] == SOP


# ---------------------------------------------------------------------------------------------------- LM datasets
def test_lm_scores_each_line_as_a_document_and_divides_by_all_tokens_minus_one(torch_backend) -> None:
    import math

    import numpy as np

    from evaluation.scoring import Scorer, log_softmax_rows
    from glm_core.layout import build_scoring_input
    from tests.evaluation.test_tasks import span_logits

    # tasks/language_model/dataset.py:165-173 build_lm_dataset: one document per line, EncodeAsIds(line.strip()),
    # num_original_tokens += len(line.strip().split(" ")); finetune.py:173-176 loss / (num_tokenized_tokens - 1).
    # The 7-line fixture: " = Paris = " (3 tokens: "=" is [UNK]), "", 31 tokens, "", " = London = " (3), "", 42 tokens.
    task = get_task("lm")
    [example] = task.read(FIXTURES, "test", None)
    assert len(example.data["documents"]) == 7
    assert example.data["num_words"] == 3 + 1 + 31 + 1 + 3 + 1 + 42  # an empty line counts one word ("")
    ctx = EvalContext(backend=torch_backend, scorer=Scorer(torch_backend, batch_size=4), seq_length=128)
    [record] = task.predict([example], ctx)
    assert (record["num_tokens"], record["num_scored"]) == (79, 75)  # 79 tokens, each line's first one unscored
    out = task.aggregate([record])
    assert out["divisor"] == 78 and out["tokens"] == 75
    # reference: each document's window 0 = [CLS] t0 [gMASK] | [sop] t1.. (build_scoring_input), float64 log-softmax
    tok = torch_backend.tokenizer
    total = 0.0
    for line in example.data["documents"]:
        doc = tok.encode(line)
        if len(doc) < 2:
            continue
        sample = build_scoring_input(doc[:1], doc[1:], tok.special)
        start, end = sample.candidate_spans[0]
        logits = span_logits(torch_backend, sample).double().numpy()
        logprobs, _ = log_softmax_rows(logits, sample.targets[start:end])
        total += float(np.sum(logprobs))
    assert record["logprob"] == pytest.approx(total, rel=1e-5)
    assert out["loss"] == pytest.approx(-total / 78, rel=1e-5)
    assert out["word_ppl"] == pytest.approx(math.exp(-total / (82 - 1)), rel=1e-5)


def test_wikitext_detokenizer_and_word_count(tmp_path: Path) -> None:
    from evaluation.tasks.language_model import wikitext_detokenizer

    # tasks/language_model/detokenizer.py:15-45 wikitext_detokenizer; dataset.py:183 words of the raw file
    raw = " = Paris = \n Paris has 2 @,@ 000 bridges ( big ones ) , and the river 's banks @-@ walls . \n"
    # the leading space stays (no newline before it); " . \n" -> ". \n" -> ".\n"
    assert wikitext_detokenizer(raw) == " = Paris =\nParis has 2,000 bridges (big ones), and the river's banks-walls.\n"
    (tmp_path / "wikitext-103").mkdir()
    (tmp_path / "wikitext-103" / "wiki.test.tokens").write_text(raw, encoding="utf-8")
    task = get_task("wikitext")
    [example] = task.read(tmp_path, "test", None)
    assert example.data["documents"] == [wikitext_detokenizer(raw)]
    assert example.data["num_words"] == len(raw.strip().split(" "))
    assert resolve_seq_length(task, None, 4096)[0] == 1024  # zero_wikitext.sh --seq-length 1024
    assert resolve_seq_length(get_task("lm_uni"), None, 4096)[0] == 512  # zero_lm_uni.sh --seq-length 512
    assert (
        get_task("wikitext_uni").unidirectional and resolve_seq_length(get_task("wikitext_uni"), None, 4096)[0] == 1024
    )


def test_lambada_last_word_after_any_whitespace_and_the_uni_layout(tmp_path: Path, tokenizer) -> None:
    # dataset.py:95-101 LambadaDataset.get_tokens: last = text.split()[-1]; context = text[:text.rfind(last)].strip()
    (tmp_path / "lambada").mkdir()
    (tmp_path / "lambada" / "test.jsonl").write_text(json.dumps({"text": "the cat sat on the\nmat"}) + "\n")
    task = get_task("lambada_uni")
    [example] = task.read(tmp_path, "test", None)
    assert example.data == {"context": "the cat sat on the", "target": " mat"}
    # dataset.py:122-135 (--unidirectional): prompt = tokens[:1] + [mask], answer = tokens[1:] + last word,
    # the loss only on the last word's tokens
    from evaluation.tasks.cloze import encode_candidate
    from glm_core.layout import build_lambada_input

    context, target = tokenizer.encode(example.data["context"]), encode_candidate(example.data["target"], tokenizer)
    mask = tokenizer.special.gmask if tokenizer.special.gmask is not None else tokenizer.special.mask
    # bidirectional (dataset.py:125-131): [CLS] context [mask] [eos] | [sop] target[:-1], the context cut from the left
    bi = build_lambada_input(context, target, tokenizer.special, seq_len=8)
    # left_shift = |context + mask| 6 + |answer| 1 + [CLS], eos 2 - 8 = 1 context token dropped
    assert bi.input_ids.tolist() == [CLS, *ids("cat sat on the"), mask, EOS, SOP]
    assert bi.targets[bi.sep :].tolist() == ids("mat") and bi.position_ids[0].tolist()[-1] == 5
    sample = build_lambada_input(context, target, tokenizer.special, unidirectional=True)
    assert sample.input_ids.tolist() == [CLS, *ids("the"), mask, EOS, SOP, *ids("cat sat on the")]
    assert sample.targets[sample.sep :].tolist() == ids("cat sat on the mat")
    assert sample.candidate_spans == ((sample.sep + 4, sample.sep + 5),)  # only "mat" is scored


def test_record_answers_are_transliterated_as_the_original(monkeypatch) -> None:
    from evaluation import metrics

    # tasks/superglue/evaluate.py:17-33 normalize_answer: lower = unidecode.unidecode(text.lower())
    unidecode = pytest.importorskip("unidecode")
    monkeypatch.setattr(metrics, "UNIDECODE", unidecode.unidecode)
    assert metrics.squad_normalize("The Café Zürich!") == "cafe zurich"
    assert metrics.record_scores(["Café"], [["Cafe"]]) == {"em": 1.0, "f1": 1.0}
    monkeypatch.setattr(metrics, "UNIDECODE", None)  # without the package: compared as written
    assert metrics.record_scores(["Café"], [["Cafe"]]) == {"em": 0.0, "f1": 0.0}


def test_gelu_switch_reaches_the_model_and_the_cache_key(model_dir: Path, tmp_path: Path, capsys) -> None:
    # the original evaluates with the tanh GeLU of mpu/transformer.py:332; --gelu picks the variant by name
    out = tmp_path / "r.json"
    args = ["--model", str(model_dir), "--tasks", "demo", "--data-dir", str(FIXTURES), "--no-progress"]
    assert main([*args, "--gelu", "erf", "--output", str(out)]) == 0
    erf = json.loads(out.read_text())
    assert erf["settings"]["model_gelu"] == "erf" and erf["settings"]["gelu"] == "erf"
    assert main([*args, "--gelu", "tanh", "--output", str(out), "--overwrite"]) == 0
    tanh = json.loads(out.read_text())
    assert tanh["settings"]["model_gelu"] == "tanh" and tanh["tasks"]["demo"]["computed"] == 3  # not the erf cache
    code = main([*args, "--backend", "onnx", "--gelu", "tanh"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--gelu applies to the torch backend" in err[0]
