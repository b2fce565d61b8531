"""The README's ROUGE pipeline rebuilt (PTB tokenisation + files2rouge), and the original's quirks kept by default:
the blank-infilling output's dropped last token, SQuAD question generation's ROUGE reference, and the
unidirectional zero-shot multiple choice.

Expectations are worked out by hand from the rule named in each test (the original THUDM/GLM file and line, the
PTB tokenisation conventions, files2rouge 2.1 and ROUGE-1.5.5).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from evaluation import metrics
from evaluation.tasks import get_task
from evaluation.tasks.base import EvalContext, Example, original_decode
from evaluation.tasks.blank import blanklm_fix_tokenization, original_output_tokens
from evaluation.tasks.multichoice import uni_choice_input
from glm_core.errors import ConfigError
from tests.evaluation.test_superglue_patterns import ids
from tests.evaluation.vocab import CLS, PAD, SOP, UNK

FIXTURES = Path(__file__).resolve().parents[2] / "evaluation" / "data" / "fixtures"

# Three prediction / reference pairs whose numbers PROTOCOL.md records for the three ROUGE variants: contractions and
# brackets (PTB splits "can't" into "ca n't", brackets become -LRB- / -RRB-), sentences in another order (the
# summary-level ROUGE-L sees sentences, the original's [SEP]-split metric one sentence per side), short sentences.
ROUGE_FIXTURE = [
    (
        "The mayor said he can't attend the meeting (held on Monday). Officials didn't comment.",
        "The mayor can't attend Monday's meeting, officials said. The council didn't respond.",
    ),
    (
        "Officials didn't comment. The U.S. mayor won't attend the meeting on Monday.",
        "The U.S. mayor won't attend Monday's meeting. Officials didn't comment on it.",
    ),
    (
        "Scientists found a new species of frog. It lives in the rainforest.",
        "A new frog species was found by scientists in the Amazon rainforest.",
    ),
]


# ---------------------------------------------------------------------------------------------------- PTB + files2rouge
# Every expected line is what CoreNLP 3.7.0's PTBTokenizer (built from the v3.7.0 sources) printed for the text with
# scripts/evaluate_seq2seq.sh's flags, "-ioFileList -preserveLines".
PTB_CASES = [
    # double quotes as `` and '', brackets escaped, n't split (can't -> ca n't), sentence-final period split off
    ('He said, "I can\'t go (now)."', "He said , `` I ca n't go -LRB- now -RRB- . ''"),
    # numbers keep their comma and point, % and $ are tokens, won't -> wo n't, abbreviations keep their period
    (
        "The U.S. economy grew 3.5% to $3,000. It won't stop.",
        "The U.S. economy grew 3.5 % to $ 3,000 . It wo n't stop .",
    ),
    # cannot -> can not, times keep their colon, 's split, ... and ; are tokens, Mr. is an abbreviation
    (
        "Mr. Smith cannot come at 10:30; he's ill... really!",
        "Mr. Smith can not come at 10:30 ; he 's ill ... really !",
    ),
    # plural possessive, '90s kept whole, -- a token
    ("The dogs' bone was '90s style -- odd.", "The dogs ' bone was '90s style -- odd ."),
    # an acronym ending the line keeps its period (at the end of the file; before a line opening with "The",
    # "He", ... CoreNLP adds a "." token, which changes no ROUGE score); before such a word it ends the sentence
    ("They met in the U.S.", "They met in the U.S."),
    ("The U.K. He said no.", "The U.K. . He said no ."),
    # titles keep their period; pound sign as #, a decimal amount split from its unit; gonna -> gon na
    (
        "Bob met Lt. Gen. Smith and paid \u00a32.3m; he's gonna say: 'it's over.'",
        "Bob met Lt. Gen. Smith and paid # 2.3 m ; he 's gon na say : ` it 's over . '",
    ),
    # company abbreviations keep their period and end the sentence before a capital; single letters split
    ("He works for Acme Inc. He said no to J.", "He works for Acme Inc. . He said no to J."),
    ("He works for Acme Inc.", "He works for Acme Inc. ."),
    ("", ""),
    # curly quotes, en dash and the right single quote as apostrophe; single quotes as ` and '
    ("\u201cCurly\u201d quotes \u2013 dash\u2019s 'quoted' word", "`` Curly '' quotes -- dash 's ` quoted ' word"),
    # [SEP] of BERT-tokenizer predictions: its brackets are escaped like any other
    ("first [SEP] second", "first -LSB- SEP -RSB- second"),
]


@pytest.mark.parametrize(("text", "tokens"), PTB_CASES)
def test_ptb_tokenize_follows_the_ptb_conventions(text: str, tokens: str) -> None:
    assert metrics.ptb_tokenize(text) == tokens


def test_files2rouge_sentences_split_at_space_period() -> None:
    # files2rouge/utils.py split_files (2.1.0): (" %s\n" % eos).join(line.split(" %s" % eos)), eos "."
    assert metrics.files2rouge_sentences("a b . c d .") == ["a b .", " c d ."]
    assert metrics.files2rouge_sentences("no period here") == ["no period here"]
    # the " ..." of an ellipsis also starts with " .": files2rouge splits there too
    assert metrics.files2rouge_sentences("wait ... go") == ["wait .", ".. go"]


# ROUGE-1.5.5.pl "sub stem" (files2rouge/RELEASE-1.5.5, the Perl run on these words): its Porter stemmer, with the
# 2004 step-4 change (-ement words go through -ment and -ent again) and without NLTK's extensions
PERL_STEMS = {
    "they": "thei", "movement": "movem", "news": "new", "used": "us", "professional": "profess",
    "agreement": "agreem", "yelling": "yell", "hopping": "hop", "relational": "relat", "conditional": "condit",
    "feed": "feed", "agreed": "agre", "ponies": "poni", "caresses": "caress", "generalization": "gener",
    "electricity": "electr", "adjustment": "adjust", "adoption": "adopt", "fulness": "ful", "yesterday": "yesterdai",
}  # fmt: skip


def test_rouge155_stemmer_is_the_perl_one() -> None:
    assert {w: metrics.rouge155_stem(w) for w in PERL_STEMS} == PERL_STEMS
    # ROUGE-1.5.5 -m stems tokens longer than 3 characters only; A-Z lower-cased, other characters separate
    assert metrics.Rouge155Tokenizer().tokenize("The News-feed's 3,000 days") == [
        "the",
        "new",
        "feed",
        "s",
        "3",
        "000",
        "dai",
    ]


def test_files2rouge_stems_as_rouge155_not_as_nltk() -> None:
    pytest.importorskip("rouge_score")
    # "news" -> "new" in ROUGE-1.5.5 (matches "new", 3 letters, not stemmed); NLTK's Porter keeps "news"
    assert metrics.files2rouge(["The news"], ["The new"])["rouge1"] == pytest.approx(1.0)
    assert metrics.rouge(["The news"], ["The new"])["rouge1"] == pytest.approx(0.5)


def test_files2rouge_scores_a_pair_worked_out_by_hand() -> None:
    pytest.importorskip("rouge_score")
    # PTB: "He ca n't go -LRB- now -RRB- ." -> ROUGE-1.5.5 tokens (lower case, non-alphanumerics as spaces):
    # he ca n t go lrb now rrb (8); reference: he can not go now (5). Common unigrams he, go, now: F = 2*3/(8+5).
    # No common bigram. One sentence per side: LCS he go now = 3, as ROUGE-1.
    out = metrics.files2rouge(["He can't go (now)."], ["He can not go now."])
    assert out == {"rouge1": pytest.approx(6 / 13), "rouge2": 0.0, "rougeL": pytest.approx(6 / 13)}
    # rouge-score on the raw text: he can t go now / he can not go now -> 4 common of 5 and 5
    assert metrics.rouge(["He can't go (now)."], ["He can not go now."])["rouge1"] == pytest.approx(0.8)


def test_files2rouge_takes_the_hypotheses_as_rouge_models() -> None:
    pytest.importorskip("rouge_score")
    # scripts/evaluate_seq2seq.sh:5 runs "files2rouge hypo target"; files2rouge 2.1.0 main() reads "reference summary",
    # so the hypotheses are ROUGE-1.5.5's models. Summary-level LCS (ROUGE-1.5.5 sub lcs) sums hits over the model's
    # sentences: models "cat ." / "cat ." each hit the peer "cat cat ." once -> 2 of 2 tokens, F = 1. With the
    # reference as model, its one sentence "cat cat" gets a union LCS of one token -> 1 of 2, F = 0.5.
    assert metrics.files2rouge(["Cat. Cat."], ["Cat cat."])["rougeL"] == pytest.approx(1.0)
    assert metrics.files2rouge(["Cat cat."], ["Cat. Cat."])["rougeL"] == pytest.approx(0.5)


def test_three_rouge_variants_on_the_fixture() -> None:
    pytest.importorskip("rouge_score")
    # the numbers evaluation/PROTOCOL.md records ("What the three ROUGE variants give on one fixture")
    preds, refs = [p for p, _ in ROUGE_FIXTURE], [r for _, r in ROUGE_FIXTURE]
    original = metrics.original_rouge(preds, refs, "cnn_dm_org")
    sentences = metrics.rouge(preds, refs)
    f2r = metrics.files2rouge(preds, refs)
    assert [round(original[k], 4) for k in ("rouge1", "rouge2", "rougeL")] == [0.8091, 0.3595, 0.5538]
    assert [round(sentences[k], 4) for k in ("rouge1", "rouge2", "rougeLsum")] == [0.8091, 0.3595, 0.6398]
    assert [round(f2r[k], 4) for k in ("rouge1", "rouge2", "rougeL")] == [0.807, 0.3971, 0.6326]
    # pair 2 (same sentences, other order): one LCS over the whole text vs the union LCS over sentences
    pair = ROUGE_FIXTURE[1]
    assert metrics.original_rouge([pair[0]], [pair[1]], "cnn_dm_org")["rougeL"] == pytest.approx(18 / 31)
    assert metrics.files2rouge([pair[0]], [pair[1]])["rougeL"] == pytest.approx(0.8571, abs=1e-4)


def test_rouge_option_files2rouge_scores_the_original_output_files() -> None:
    pytest.importorskip("rouge_score")
    # tasks/seq2seq/finetune.py:124-131 output_func: .hyps = the decoded predictions, .refs = meta["ref"] (the
    # tokenizer round trip of the target), the two files evaluate_seq2seq.sh reads
    task = get_task("cnndm")
    task.configure({"rouge": "files2rouge"})
    assert task.config()["rouge"] == "files2rouge"
    records = [{"prediction": "He can't go (now).", "reference": "x", "reference_roundtrip": "He can not go now."}]
    assert task.aggregate(records)["rouge1"] == pytest.approx(6 / 13)
    with pytest.raises(ConfigError, match="--rouge must be one of original, sentences, files2rouge"):
        get_task("xsum").configure({"rouge": "perl"})


# ---------------------------------------------------------------------------------------------------- SQuAD QG reference
def test_squad_qg_rouge_reference_is_the_answer_by_default() -> None:
    # tasks/seq2seq/dataset.py:173-179 SQuADGenerationProcessor: meta["ref"] = DecodeIds(EncodeAsIds(answer)), the
    # text evaluate.py:158 rouge_metric compares the generated question with
    example = Example("0", {"context": "c", "question": "who visited paris ?", "answer": "bob"})
    task = get_task("squad_qg")
    task.configure({})
    assert task.rouge_reference(example) == "bob" and task.reference(example) == "who visited paris ?"
    assert task.task_id == "squad_qg" and task.config()["rouge_reference"] == "answer"
    question = get_task("squad_qg")
    question.configure({"qg_reference": "question"})
    assert question.rouge_reference(example) == "who visited paris ?" and question.task_id == "squad_qg-qref"
    with pytest.raises(ConfigError, match="--qg-reference must be 'answer' or 'question'"):
        get_task("squad_qg").configure({"qg_reference": "context"})


def test_squad_qg_bleu_is_against_the_question_and_rouge_against_the_reference() -> None:
    pytest.importorskip("rouge_score")
    task = get_task("squad_qg")
    task.configure({})
    record = {
        "prediction": "who visited paris ?",
        "reference": "who visited paris ?",
        "rouge_reference": "bob",
        "reference_roundtrip": "bob",
        "rouge_dataset": "cnn_dm_org",
    }
    out = task.aggregate([record])
    assert out["bleu4"] == pytest.approx(1.0)
    # the prediction is one sentence of 4 words: evaluate.py:172-173 drops it (len(split()) <= 4) -> nothing matches
    assert out["rouge1"] == 0.0


# ---------------------------------------------------------------------------------------------------- blank infilling
def test_blank_output_drops_only_the_sop_the_dataset_appends() -> None:
    # tasks/seq2seq/dataset.py:752 BlankLMDataset (test split): tokens = source_tokens + [sop_id], the tensor
    # evaluate.py:421 keeps as src_tokens; evaluate.py:478-488 copies it with pads skipped and masks replaced, then
    # DecodeIds(output_tokens[:-1]). Transcribed here on its own to compare with the task's code.
    sop, mask, pad = SOP, 3, PAD

    def original(sample: list[int], blanks: list[list[int]]) -> list[int]:
        output_tokens, current_blank = [], 0
        for token in sample:
            if token == mask:
                if current_blank < len(blanks):
                    output_tokens += blanks[current_blank]
                current_blank += 1
            elif token not in [pad]:
                output_tokens.append(token)
        return output_tokens[:-1]

    cases = [
        ([5, mask, 6, pad, pad], [[11, 12]]),  # padded source
        ([5, 6, mask], [[11, 12]]),  # the text ends with a blank: its last token stays
        ([5, mask, 6, mask], [[11]]),  # budget spent before the second blank
        ([5, 6, 7, 8], []),  # source cut to the length before its mask
    ]
    for source, blanks in cases:
        expected = original([*source, sop], blanks)
        assert original_output_tokens(source, blanks, mask, pad, sop) == expected
        assert sop not in expected
    assert original_output_tokens([5, 6, mask], [[11, 12]], mask, pad, sop) == [5, 6, 11, 12]


def test_original_decode_writes_wordpieces_as_decodeids(tokenizer) -> None:
    # data_utils/tokenization.py:904-922 BertWordPieceTokenizer.DecodeIds: command ids as their strings, "##" pieces
    # joined to the token before, everything else joined by one space (no clean-up around punctuation)
    ids = [*ids_of(tokenizer, "the dog ."), tokenizer.special.sep, tokenizer.special.unk, *ids_of(tokenizer, ". . .")]
    assert original_decode(tokenizer, ids) == "the dog . [SEP] [UNK] . . ."
    assert tokenizer.decode(ids) != original_decode(tokenizer, ids)  # the harness' own decode cleans up
    # evaluate.py:393-406 blanklm_fix_tokenization on that text
    assert blanklm_fix_tokenization("i don ' t know . . . u . s . - - ok") == "i don't know ... u.s. -- ok"
    assert blanklm_fix_tokenization("` ` hi ' ' he ' s") == "`` hi '' he 's"  # "' s" -> "'s"


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text)


# ---------------------------------------------------------------------------------------------------- multichoice uni
def uni_ctx(tokenizer, max_length: int, gmask: int | None = 30524) -> EvalContext:
    special = dataclasses.replace(tokenizer.special, gmask=gmask)
    tok = SimpleNamespace(encode=tokenizer.encode, special=special)
    return EvalContext(backend=SimpleNamespace(tokenizer=tok, max_length=max_length), scorer=None)  # type: ignore[arg-type]


def test_multichoice_uni_inputs_as_build_uni_input_from_ids(tokenizer) -> None:
    # tasks/superglue/dataset.py:102-118 MultiChoiceDataset.__getitem__ with --unidirectional: mask = gMASK, none
    # appended; tasks/data_utils.py:106-141 build_uni_input_from_ids: ids [CLS] [gMASK] [sop] inputs choice[:-1],
    # sep = 2, positions 0 1 then the mask's (1), block positions 0 0 1 2 ..., targets = choice from the last input
    gmask, eos = 30524, tokenizer.special.eos
    task = get_task("multichoice_uni")
    examples = task.read(FIXTURES, "test", None)
    [mat, sky] = task.samples(examples[0], uni_ctx(tokenizer, 512))
    inputs = ids("the cat sat on the [MASK] .")
    assert mat.input_ids.tolist() == [CLS, gmask, SOP, *inputs]  # "mat" is one token: choice[:-1] is empty
    assert mat.sep == 2
    n = len(mat)
    assert mat.position_ids.tolist() == [[0, 1] + [1] * (n - 2), [0, 0, *range(1, n - 1)]]
    assert mat.targets.tolist()[-1] == ids("mat")[0] and mat.loss_mask.tolist() == [0.0] * (n - 1) + [1.0]
    assert mat.candidate_spans == ((n - 1, n),) and sky.targets.tolist()[-1] == ids("sky")[0]
    assert eos not in mat.input_ids.tolist()[1:]  # no [eos], no appended [MASK]
    # a two-token choice: its first token is fed, both are targets
    [_, river] = task.samples(examples[2], uni_ctx(tokenizer, 512))
    assert river.input_ids.tolist()[-1] == ids("the")[0]
    assert river.targets.tolist()[-2:] == ids("the river") and river.loss_mask.sum() == 2
    # left cut as the bidirectional task: len(inputs) + longest + 2 > seq_length keeps the last 8 - 2 - 2 inputs
    [france, the_river] = task.samples(examples[2], uni_ctx(tokenizer, 8))
    assert france.input_ids.tolist()[3:] == ids("bob visited paris , the capital of")[-4:]
    assert len(france) == 7 and len(the_river) == 8


def test_multichoice_uni_layout_and_refusal_without_gmask(tokenizer) -> None:
    special = dataclasses.replace(tokenizer.special, gmask=9)
    sample = uni_choice_input([20, 21], [30, 31, 32], special)
    # build_uni_input_from_ids: [CLS] gMASK sop 20 21 30 31 | targets at index 4.. = 30 31 32
    assert sample.input_ids.tolist() == [CLS, 9, SOP, 20, 21, 30, 31]
    np.testing.assert_array_equal(sample.targets[4:], [30, 31, 32])
    assert sample.loss_mask.tolist() == [0, 0, 0, 0, 1, 1, 1]
    task = get_task("multichoice_uni")
    example = task.read(FIXTURES, "test", None)[0]
    with pytest.raises(ConfigError, match=r"needs a \[gMASK\] token"):
        task.samples(example, uni_ctx(tokenizer, 512, gmask=None))


def test_multichoice_uni_scores_are_the_summed_choice_logprobs(torch_backend, monkeypatch) -> None:
    from evaluation.scoring import Scorer
    from tests.evaluation.test_scoring import reference_logprobs

    # a stand-in [gMASK] id inside the tiny model's vocabulary (the test vocabulary has no gMASK)
    special = dataclasses.replace(torch_backend.tokenizer.special, gmask=UNK)
    monkeypatch.setattr(torch_backend.tokenizer, "special", special)
    task = get_task("multichoice_uni")
    examples = task.read(FIXTURES, "test", None)
    ctx = EvalContext(backend=torch_backend, scorer=Scorer(torch_backend, batch_size=4), seq_length=64)
    records = task.predict(examples, ctx)
    for ex, record in zip(examples, records, strict=True):
        samples = task.samples(ex, ctx)
        expected = [reference_logprobs(torch_backend.model, s).sum() for s in samples]
        # the scorer runs in float32, the reference log-softmax in float64
        np.testing.assert_allclose(record["scores"], expected, rtol=1e-5, atol=1e-5)
        assert record["pred"] == int(np.argmax(expected))


def test_cli_hands_the_rouge_and_reference_options_to_the_tasks(
    model_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    pytest.importorskip("rouge_score")
    from evaluation.tasks import summarization
    from tests.evaluation.test_cli import run_cli

    short = dataclasses.replace(summarization.SETTINGS["squad_qg"], max_target_length=4, num_beams=2)
    monkeypatch.setitem(summarization.SETTINGS, "squad_qg", short)  # a short search: the wiring is under test

    out = tmp_path / "results.json"
    args = ["--model", str(model_dir), "--tasks", "squad_qg", "--data-dir", str(FIXTURES), "--limit", "1"]
    code, _, _ = run_cli([*args, "--rouge", "files2rouge", "--qg-reference", "question", "--output", str(out)], capsys)
    assert code == 0
    results = json.loads(out.read_text())
    entry = results["tasks"]["squad_qg-qref"]
    assert entry["config"]["rouge"] == "files2rouge" and entry["config"]["rouge_reference"] == "question"
    assert results["settings"]["qg_reference"] == "question" and set(entry["metrics"]) >= {"rouge1", "bleu4"}


# ---------------------------------------------------------------------------------------------------- the real tools
# Run only where the README pipeline's tools are at hand (neither is a dependency):
#   GLM_ROUGE155_HOME=<files2rouge>/files2rouge/RELEASE-1.5.5 (ROUGE-1.5.5.pl and data/, Perl with DB_File)
#   GLM_CORENLP_CLASSES=<classpath holding edu.stanford.nlp.process.PTBTokenizer, CoreNLP 3.7.0>
def test_files2rouge_equals_rouge155_pl_per_pair(tmp_path: Path) -> None:
    home = os.environ.get("GLM_ROUGE155_HOME")
    if not home or shutil.which("perl") is None:
        pytest.skip("set GLM_ROUGE155_HOME to a ROUGE-1.5.5 directory (files2rouge's RELEASE-1.5.5) to run")
    pytest.importorskip("rouge_score")
    # ROUGE-1.5.5.pl beside a stub XML::DOM (only the -z file-list mode is used, which never parses XML)
    shutil.copy(Path(home) / "ROUGE-1.5.5.pl", tmp_path / "ROUGE-1.5.5.pl")
    (tmp_path / "XML").mkdir()
    (tmp_path / "XML" / "DOM.pm").write_text(
        "package XML::DOM;\nsub import {}\npackage XML::DOM::Parser;\nsub new { bless {}, shift }\n1;\n"
    )
    pairs = [
        *ROUGE_FIXTURE,
        ("He can't go (now).", "He can not go now."),
        ("Cat. Cat.", "Cat cat."),
        ("The news", "The new"),
    ]
    for n, (hyp, ref) in enumerate(pairs):
        model, peer, listing = tmp_path / f"m{n}.txt", tmp_path / f"p{n}.txt", tmp_path / f"list{n}.txt"
        model.write_text("\n".join(metrics.files2rouge_sentences(metrics.ptb_tokenize(hyp))) + "\n")
        peer.write_text("\n".join(metrics.files2rouge_sentences(metrics.ptb_tokenize(ref))) + "\n")
        listing.write_text(f"{peer} {model}\n")  # peer first, then its model (hypotheses are the models)
        options = ["-e", str(Path(home) / "data"), "-c", "95", "-r", "1000", "-n", "2", "-a", "-m", "-z", "SPL"]
        out = subprocess.run(
            ["perl", str(tmp_path / "ROUGE-1.5.5.pl"), *options, str(listing)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        perl = {k: float(v) for k, v in re.findall(r"ROUGE-([12L]) Average_F: ([0-9.]+)", out)}
        ours = metrics.files2rouge([hyp], [ref])
        assert perl == {"1": round(ours["rouge1"], 5), "2": round(ours["rouge2"], 5), "L": round(ours["rougeL"], 5)}


def test_ptb_tokenize_equals_corenlp() -> None:
    classes = os.environ.get("GLM_CORENLP_CLASSES")
    if not classes or shutil.which("java") is None:
        pytest.skip("set GLM_CORENLP_CLASSES to a CoreNLP 3.7.0 classpath to run")
    lines = [text for pair in ROUGE_FIXTURE for text in pair] + [text for text, _ in PTB_CASES if text]
    command = ["java", "-cp", classes, "edu.stanford.nlp.process.PTBTokenizer", "-ioFileList", "-preserveLines"]
    for text in lines:  # one file per line: what follows a line can change how CoreNLP ends it
        out = subprocess.run(command, input=text + "\n", capture_output=True, text=True, check=True).stdout
        assert out.rstrip("\n") == metrics.ptb_tokenize(text)
