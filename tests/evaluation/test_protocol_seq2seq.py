"""Seq2seq inputs and ROUGE, and the zero-shot multiple-choice task, as the original code applies them.

Expectations are worked out by hand from the original's rule (file and line named in each test) with the test
vocabulary's ids (``tests/evaluation/vocab.py``; "content" is not in it, so " Content:" is ``[UNK] :``).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from evaluation import metrics
from evaluation.tasks import get_task, summarization
from evaluation.tasks.base import EvalContext
from glm_core.generation import GenerationConfig, _stop_ids
from tests.evaluation.test_superglue_patterns import ids
from tests.evaluation.vocab import CLS, MASK, PAD, UNK

FIXTURES = Path(__file__).resolve().parents[2] / "evaluation" / "data" / "fixtures"


def stub_ctx(tokenizer, max_length: int) -> EvalContext:
    backend = SimpleNamespace(tokenizer=tokenizer, max_length=max_length)
    return EvalContext(backend=backend, scorer=None)  # type: ignore[arg-type]


def seq2seq_mask(tokenizer) -> int:
    special = tokenizer.special
    return special.smask if special.smask is not None else special.mask


# ---------------------------------------------------------------------------------------------------- inputs
def test_curly_quotes_are_standardised_and_the_source_padded_inside_part_a(tmp_path: Path, tokenizer) -> None:
    # tasks/seq2seq/dataset.py:84-95 SummmaryProcessor: line.strip(); punctuation_standardization(line)
    # (data_utils/corpora.py:31-35: \u201c \u201d -> ", \u2013 -> -); dataset.py:449-460, 512-514: [CLS] [sMASK|MASK]
    # " Content:" " " + source, padded with pad_id to src_seq_length; sep = the padded length.
    folder = tmp_path / "cnndm"
    folder.mkdir()
    (folder / "test.source").write_text("  The dog said \u201cyes\u201d \u2013 today.\n", encoding="utf-8")
    (folder / "test.target").write_text("The dog said \u201cyes\u201d.\n", encoding="utf-8")
    task = get_task("cnndm")
    [example] = task.read(tmp_path, "test", None)
    assert example.data == {"source": 'The dog said "yes" - today.', "target": 'The dog said "yes".'}
    ctx = stub_ctx(tokenizer, 24)  # the source length is min(608, 24)
    prompt = task.prompt(example, ctx)
    part_a = [CLS, seq2seq_mask(tokenizer), UNK, *ids(': the dog said " yes " - today .')]
    assert len(part_a) == 13
    assert prompt.input_ids.tolist() == part_a + [PAD] * 11
    assert prompt.sep == 24 and prompt.mask_positions == (1,)
    assert prompt.position_ids.tolist() == [list(range(24)), [0] * 24]
    # a source longer than src_seq_length is cut at it (dataset.py:454-456), before the (here no) padding
    assert task.prompt(example, stub_ctx(tokenizer, 8)).input_ids.tolist() == part_a[:8]
    task.configure({"source_padding": "none"})  # the cleaner variant, by name
    assert task.prompt(example, ctx).input_ids.tolist() == part_a


def test_cnndm_tokenized_and_gigaword_detokenizers() -> None:
    # dataset.py:34-51 cnndm_detokenize (targets: <S_SEP> -> [SEP]); dataset.py:15-31 gigaword_detokenize
    line = "-LRB- CNN -RRB- `` It is n't over , '' he said 's <S_SEP> end"
    # the bracket tokens are replaced in place (their spaces stay); <S_SEP> in a source is removed
    assert summarization.cnndm_detokenize(line) == "( CNN ) \" It isn't over , \" he said's  end"
    assert summarization.cnndm_detokenize(line, is_target=True).endswith("said's [SEP] end")
    assert summarization.gigaword_detokenize("UNK -lrb- a &amp; b -rrb-") == "[UNK] ( a & b )"
    task = get_task("gigaword")
    examples = task.read(FIXTURES, "test", None)
    assert examples[0].data["source"] == "the city council said ( today ) it feared violence from the demonstrators"
    s = summarization.SETTINGS["gigaword"]  # config_tasks/seq_gigaword.sh TASK_ARGS
    assert (s.source_length, s.max_target_length, s.min_length, s.num_beams, s.length_penalty) == (192, 32, 0, 5, 0.6)
    assert get_task("cnndm:tokenized").task_id == "cnndm-tokenized"


def test_xsum_reads_the_summary_files_of_the_release() -> None:
    # dataset.py:367-401 XSumProcessor: the split file's "test" ids; [SN]RESTBODY[SN] lines joined by " " = source,
    # [SN]FIRST-SENTENCE[SN] = target; no punctuation_standardization
    task = get_task("xsum")
    data = FIXTURES / "xsum_release"
    [example] = task.read(data, "test", None)
    assert example.data == {
        "source": "The rain fell on the road. The road was wet and the people went home.",
        "target": "The rain fell on the city today.",
    }
    assert task.read(data, "val", None)[0].data["target"] == "The sun was hot."  # "validation"
    assert task.data_files(data, "test")[0].name == "XSum-TRAINING-DEV-TEST-SPLIT-90-5-5.json"


def test_squad_question_generation_input(tokenizer) -> None:
    # dataset.py:154-186 SQuADGenerationProcessor: one example per distinct answer; dataset.py:463-484: source =
    # EncodeAsIds(context.rstrip() + " Question:"), answer = EncodeAsIds(" Answer: " + answer),
    # [CLS] source [mask] answer, padded to src_seq_length; a long source is cut to a window of
    # src_seq_length - |answer| - 2 tokens starting half of it before the answer
    task = get_task("squad_qg")
    examples = task.read(FIXTURES, "test", None)
    assert [(e.data["answer"], e.data["question"]) for e in examples] == [
        ("Paris", "What is the capital of France?"),
        ("Bob", "Who visited Paris?"),
    ]
    m = seq2seq_mask(tokenizer)
    source = ids("bob visited paris . paris is the capital of france . question :")
    prompt = task.prompt(examples[0], stub_ctx(tokenizer, 40))
    assert prompt.input_ids.tolist() == [CLS, *source, m, *ids("answer : paris")] + [PAD] * 22
    assert prompt.mask_positions == (14,)
    # 12 tokens: budget 12 - 3 - 2 = 7; " paris" first at 2, window start max(2 - 7 // 2, 0) = 0
    short = task.prompt(examples[0], stub_ctx(tokenizer, 12))
    assert short.input_ids.tolist() == [CLS, *source[:7], m, *ids("answer : paris")]
    s = summarization.SETTINGS["squad_qg"]  # config_tasks/seq_squad_generation.sh
    assert (s.source_length, s.max_target_length, s.num_beams, s.length_penalty) == (464, 48, 5, 0.7)


def test_beam_search_stops_on_eop_only(tokenizer) -> None:
    # tasks/seq2seq/evaluate.py:255-262, 342: BeamSearchScorer(..., eos_token_id=self.end_token), end_token = eop
    special = tokenizer.special
    assert _stop_ids(special, GenerationConfig(stop_on_eos=False)) == [special.eop]
    assert set(_stop_ids(special, GenerationConfig())) == {special.eop, special.eos}


# ---------------------------------------------------------------------------------------------------- ROUGE
def test_original_rouge_splits_on_sep_where_rougel_and_rougelsum_differ() -> None:
    pytest.importorskip("rouge_score")
    # evaluate.py:156-187 rouge_metric: [SEP]-split sentences joined by "\n", "rouge-l" = rougeLsum
    pred = "the cat sat on the mat [SEP] the dog ran fast in the park"
    ref = "the dog ran fast in the park [SEP] the cat sat on the mat"
    out = metrics.original_rouge([pred], [ref], "cnn_dm_org")
    # rougeLsum: each reference sentence is covered by one prediction sentence -> 1.0;
    # unigrams all shared -> 1.0; bigrams 11 of 12 ("mat the" / "park the" differ)
    assert out == {"rouge1": pytest.approx(1.0), "rouge2": pytest.approx(11 / 12), "rougeL": pytest.approx(1.0)}
    # the whole-text rougeL: LCS "the dog ran fast in the park" = 7 of 13 tokens on both sides
    from rouge_score import rouge_scorer

    flat = rouge_scorer.RougeScorer(["rougeL"]).score(ref.replace(" [SEP]", ""), pred.replace(" [SEP]", ""))
    assert flat["rougeL"].fmeasure == pytest.approx(7 / 13)


def test_original_rouge_drops_short_and_near_duplicate_prediction_sentences() -> None:
    pytest.importorskip("rouge_score")
    # evaluate.py:171-180: sentences of <= 4 words dropped; remove_duplicate (evaluate.py:144-153, rate 0.7) drops
    # "the cat sat on the mat today": 5 of its 6 distinct words were seen (0.83 > 0.7)
    pred = "the cat sat [SEP] the cat sat on the mat [SEP] the cat sat on the mat today"
    out = metrics.original_rouge([pred], ["the cat sat on the mat"], "cnn_dm_org")
    assert out["rouge1"] == pytest.approx(1.0) and out["rougeL"] == pytest.approx(1.0)


def test_fix_tokenization_for_bert_tokenizer_models() -> None:
    # evaluate.py:30-117 fix_tokenization (dataset "cnn_dm", chosen for BertWordPieceTokenizer, finetune.py:97-102)
    text = 'he said " it isn \' t 3 , 000 u . s . dollars " , a well - known'
    assert metrics.fix_tokenization(text, "cnn_dm") == "he said `` it is n't 3,000 u.s. dollars '' , a well-known"
    assert metrics.fix_tokenization(text, "cnn_dm_org") == text
    assert metrics.fix_tokenization("a [UNK] b", "gigaword") == "a UNK b"


# ---------------------------------------------------------------------------------------------------- multichoice
def test_multichoice_inputs_and_left_truncation(tokenizer) -> None:
    # tasks/superglue/dataset.py:97-123 MultiChoiceDataset.__getitem__: [MASK] appended unless present, choices
    # EncodeAsIds as written (no eop), inputs[-(seq_length - longest - 2):] when too long
    task = get_task("multichoice")
    examples = task.read(FIXTURES, "test", None)
    check_candidates_no_eop = [
        (task.samples(examples[0], stub_ctx(tokenizer, 512)), "the cat sat on the [MASK] .", ["mat", "sky"])
    ]
    for samples, pattern, choices in check_candidates_no_eop:
        part_a = [CLS, *ids(pattern), tokenizer.special.eos]
        for sample, choice in zip(samples, choices, strict=True):
            assert sample.input_ids.tolist() == [*part_a, tokenizer.special.sop]
            assert sample.targets[sample.sep :].tolist() == ids(choice)
            assert sample.position_ids[0].tolist()[-1] == part_a.index(MASK)
    short = task.samples(examples[1], stub_ctx(tokenizer, 8))
    assert short[0].input_ids.tolist() == [
        CLS,
        *ids("and the water is"),
        MASK,
        tokenizer.special.eos,
        tokenizer.special.sop,
    ]
    assert task.seq_length == 512  # evaluate_multichoice.sh MAX_SEQ_LEN=512


def test_multichoice_predicts_the_best_summed_choice(torch_backend) -> None:
    from evaluation.scoring import Scorer

    task = get_task("multichoice")
    examples = task.read(FIXTURES, "test", None)
    ctx = EvalContext(backend=torch_backend, scorer=Scorer(torch_backend, batch_size=4), seq_length=128)
    records = task.predict(examples, ctx)
    for ex, r in zip(examples, records, strict=True):
        flat = ctx.scorer.score_samples(task.samples(ex, ctx))
        np.testing.assert_allclose(r["scores"], [s.total for s in flat], rtol=1e-6)
        assert r["pred"] == int(np.argmax(r["scores"]))
    assert task.aggregate(records)["acc"] == np.mean([r["pred"] == r["label"] for r in records])


# ---------------------------------------------------------------------------------------------------- blank infilling
def test_blank_prompt_has_no_cls_or_eos_and_is_padded(tokenizer) -> None:
    # tasks/seq2seq/dataset.py:714-727 BlankLMDataset: pad_to(EncodeAsIds(" " + source), src_seq_length 256);
    # test split: tokens = source + [sop] (no [CLS], no eos), sep = the padded length
    task = get_task("blank")
    [example] = [e for e in task.read(FIXTURES, "test", None) if e.data["text"].startswith("Bob")]
    prompt = task.prompt(example, stub_ctx(tokenizer, 512))
    source = [*ids("bob visited"), MASK, *ids(", the capital of"), MASK, *ids(".")]
    assert prompt.input_ids.tolist() == source + [PAD] * (256 - len(source))
    assert prompt.sep == 256 and prompt.mask_positions == (2, 7)


def test_blank_budget_is_shared_by_all_blanks() -> None:
    from evaluation.tasks.blank import fill_blanks, within_budget

    # evaluate.py BlankLMEvaluater.evaluate: one counter < tgt_seq_length over the stream b0 [sop] b1 ..., the eop
    # of a blank replaced by the next blank's sop; masks past the stream are filled with nothing
    sop, mask, pad = 7, 3, 0
    assert within_budget([[11, 12, 13], [21, 22], [31]], sop, 5) == [[11, 12, 13], [21]]
    assert within_budget([[11, 12, 13], [21, 22], [31]], sop, 100) == [[11, 12, 13], [21, 22], [31]]
    assert fill_blanks([5, mask, 6, mask, 8, mask, pad, pad], [[11, 12, 13], [21]], mask, pad) == [
        5,
        11,
        12,
        13,
        6,
        21,
        8,
    ]


def test_blank_no_repeat_ngrams_see_the_stream_of_all_blanks() -> None:
    from glm_core.generation import _Plan, _Sampler, banned_ngram_tokens

    # evaluate.py BlankLMEvaluater: self.processors(tokens, ...) with tokens = b0 [sop] b1 [sop] ... (all blanks)
    state = _Sampler(_Plan([5, 3, 6, 3], [], None, {}), blanks=[[11, 12, 13]], generated=[11, 12])
    assert state.stream(7) == [11, 12, 13, 7, 11, 12]
    assert banned_ngram_tokens(state.stream(7), 3) == {13}  # "11 12 13" seen in the first blank
    assert banned_ngram_tokens(state.history(), 3) == set()  # within the blank alone nothing is banned
