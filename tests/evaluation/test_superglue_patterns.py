"""Each SuperGLUE pattern produces exactly the token sequence of spec §6.1 / §2.4 for a fixture example.

The expected sequences are written out by hand from the spec's pattern table (each part tokenized on its own,
``[CLS] parts_a parts_b [eos]`` then Part B; spec §2.4-1 for single-token cloze, §2.4-2 for candidates with eop),
with the test vocabulary's ids (``conftest.WORD_IDS``; BERT WordPiece lower-cases and splits punctuation).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from evaluation.tasks import get_task
from evaluation.tasks.base import EvalContext
from tests.evaluation.vocab import CLS, EOP, EOS, MASK, SOP, WORD_IDS

FIXTURES = Path(__file__).resolve().parents[2] / "evaluation" / "data" / "fixtures"


def ids(text: str) -> list[int]:
    """Ids of space-separated test-vocabulary words; ``[MASK]`` is the mask id."""
    return [MASK if w == "[MASK]" else WORD_IDS[w] for w in text.split()]


@pytest.fixture(scope="module")
def ctx(tokenizer) -> EvalContext:
    backend = SimpleNamespace(tokenizer=tokenizer, max_length=128)
    return EvalContext(backend=backend, scorer=None)  # type: ignore[arg-type]


def example(task_name: str, key: str):
    task = get_task(task_name)
    examples = {e.key: e for e in task.read(FIXTURES, task.default_split, None)}
    return task, examples[key]


def check_single_token(sample, pattern_words: str) -> None:
    """``[CLS] pattern [eos] [sop]``; positions 0..n-1 then sop at (last mask position, 1); sep at sop."""
    part_a = [CLS, *ids(pattern_words), EOS]
    n = len(part_a)
    mask_pos = max(i for i, t in enumerate(part_a) if t == MASK)
    assert sample.input_ids.tolist() == [*part_a, SOP]
    assert sample.sep == n
    assert sample.position_ids[0].tolist() == [*range(n), mask_pos]
    assert sample.position_ids[1].tolist() == [0] * n + [1]
    assert sample.candidate_spans == ((n, n + 1),)  # the logits at sop are read


def check_candidates(samples, pattern_words: str, candidates: list[str]) -> None:
    """One ``[CLS] pattern [eos] [sop] c[:-1]`` per candidate; targets ``c + [eop]`` at (mask_pos, 1..|c|+1)."""
    part_a = [CLS, *ids(pattern_words), EOS]
    n = len(part_a)
    mask_pos = part_a.index(MASK)
    assert len(samples) == len(candidates)
    for sample, cand in zip(samples, candidates, strict=True):
        target = [*ids(cand), EOP]
        assert sample.input_ids.tolist() == [*part_a, SOP, *target[:-1]]
        assert sample.sep == n
        assert sample.targets[n:].tolist() == target
        assert sample.position_ids[0].tolist() == [*range(n)] + [mask_pos] * len(target)
        assert sample.position_ids[1].tolist() == [0] * n + list(range(1, len(target) + 1))
        assert sample.candidate_spans == ((n, n + len(target)),)


def test_boolq_pattern_0(ctx) -> None:
    # tasks/superglue/pvp.py:796-805 BoolQPVP.get_parts p0; pvp.py:294-327 single-token encode ([CLS] .. [eos] [sop])
    task, ex = example("boolq", "0")
    [sample] = task.samples(ex, ctx)
    # passage | " Question:" | " " + question | "? Answer:" | [MASK] | "."
    check_single_token(sample, "the sun is hot and the water is wet . question : is the sun hot ? answer : [MASK] .")
    assert [v[0] for v in task.verbalizer_ids(ctx.tokenizer)] == ids("no yes")


def test_boolq_pattern_4_puts_the_passage_last(ctx) -> None:
    # tasks/superglue/pvp.py:806-808 BoolQPVP.get_parts p4
    task, ex = get_task("boolq:4"), example("boolq", "0")[1]
    [sample] = task.samples(ex, ctx)
    check_single_token(
        sample, "based on the following passage is the sun hot ? [MASK] . the sun is hot and the water is wet ."
    )


def test_cb_pattern_0(ctx) -> None:
    # tasks/superglue/pvp.py:761-769 CbPVP -> RtePVP.get_parts p0 (pvp.py:720-726); verbalizer pvp.py:751-755
    task, ex = example("cb", "0")
    [sample] = task.samples(ex, ctx)
    # parts_a: '"' hypothesis(-final punct) '" ?' ; parts_b: [MASK] ', "' premise '"'   (no [SEP] between)
    check_single_token(sample, '" the road was wet " ? [MASK] , " the man said the rain fell on the road today . "')
    assert [v[0] for v in task.verbalizer_ids(ctx.tokenizer)] == ids("yes no maybe")
    assert ex.data["label"] == 0  # entailment


def test_rte_pattern_0(ctx) -> None:
    # tasks/superglue/pvp.py:720-726 RtePVP.get_parts p0; verbalizer pvp.py:707-710
    task, ex = example("rte", "1")
    [sample] = task.samples(ex, ctx)
    check_single_token(sample, '" the cat sat on the mat " ? [MASK] , " the dog sat on the mat . "')
    assert [v[0] for v in task.verbalizer_ids(ctx.tokenizer)] == ids("yes no")
    assert ex.data["label"] == 1  # not_entailment


def test_wic_pattern_0(ctx) -> None:
    # tasks/superglue/pvp.py:882-890 WicPVP.get_parts p0
    task, ex = example("wic", "0")
    [sample] = task.samples(ex, ctx)
    check_single_token(
        sample,
        '" he went to the bank for money . " / " the bank of the river was wet . " similar sense of " bank " ? [MASK] .',
    )
    assert [v[0] for v in task.verbalizer_ids(ctx.tokenizer)] == ids("no yes")


def test_multirc_pattern_0_one_cloze_per_answer(ctx) -> None:
    # tasks/superglue/pvp.py:835-842 MultiRcPVP.get_parts p0, one example per answer (dataset.py MultiRcProcessor)
    task, ex = example("multirc", "0-0")
    samples = task.samples(ex, ctx)
    passage = "bob visited paris . alice visited london . they went home today"  # final punctuation removed
    answers = ["paris", "london", "the capital of france"]
    assert len(samples) == 3
    for sample, answer in zip(samples, answers, strict=True):
        check_single_token(sample, f"{passage} . question : what did bob visit ? is it {answer} ? [MASK] .")
    assert [gold for _, gold in task.units(ex)] == [1, 0, 1]


def test_copa_pattern_0_cause(ctx) -> None:
    # tasks/superglue/pvp.py:443-461 CopaPVP.get_answers / get_parts p0; candidates + eop (pvp.py:231-233)
    task, ex = example("copa", "0")
    samples = task.samples(ex, ctx)
    # '"' c1 '" or "' c2 '"?' premise(-punct) " because" [MASK] "." ; candidates " " + lowercased choice, + eop
    pattern = '" the sun rose " or " the grass grew " ? my body cast a shadow over the grass because [MASK] .'
    check_candidates(samples, pattern, ["the sun rose", "the grass grew"])


def test_copa_pattern_0_effect_uses_so(ctx) -> None:
    # tasks/superglue/pvp.py:456-459: joiner ', so' for effect
    task, ex = example("copa", "1")
    samples = task.samples(ex, ctx)
    pattern = '" the road was wet " or " the road was hot " ? the rain fell , so [MASK] .'
    check_candidates(samples, pattern, ["the road was wet", "the road was hot"])


def test_wsc_pattern_0_marks_the_pronoun_and_adds_negatives(ctx) -> None:
    # tasks/superglue/pvp.py:542-565 WscPVP.get_answers / get_parts p0; candidates from the file (dataset.py:448-455)
    task, ex = example("wsc", "0")
    samples = task.samples(ex, ctx)
    pattern = (
        "the city council refused the demonstrators a permit because * they * feared violence . "
        "the pronoun ' * they * ' refers to [MASK] ."
    )
    # candidate 0 = span1; the negative comes from the example's candidates field (the WSC-negative layout)
    check_candidates(samples, pattern, ["the city council", "the demonstrators"])
    assert task.length_penalty == 1.0  # spec §6.1: WSC scores are length-normalised


def test_record_candidates_are_passage_entities(ctx) -> None:
    # tasks/superglue/pvp.py:651-660 RecordPVP; dataset.py:818-832 sorted entities, '@highlight\n' -> '- '
    task, ex = example("record", "0-0")
    samples = task.samples(ex, ctx)
    # "@highlight\n" -> "- "; passage | " " + left of @placeholder | [MASK] | right
    pattern = "bob visited paris today . - alice went to london [MASK] visited the capital of france ."
    # the distinct entities sorted (tasks/superglue/dataset.py:827 entities.sort()): Alice, Bob, London, Paris
    check_candidates(samples, pattern, ["alice", "bob", "london", "paris"])
    assert ex.data["answers"] == ["Bob"]


def test_every_candidate_of_an_example_has_the_same_part_a(ctx) -> None:
    for name, key in [("copa", "0"), ("wsc", "0"), ("record", "0-0")]:
        task, ex = example(name, key)
        samples = task.samples(ex, ctx)
        first = samples[0]
        for s in samples[1:]:
            assert s.sep == first.sep
            np.testing.assert_array_equal(s.input_ids[: s.sep], first.input_ids[: first.sep])


def test_truncation_removes_tokens_from_the_end_of_the_last_shortenable_part(tokenizer) -> None:
    task, ex = example("boolq", "0")
    ctx = EvalContext(backend=SimpleNamespace(tokenizer=tokenizer, max_length=20), scorer=None)  # type: ignore[arg-type]
    [sample] = task.samples(ex, ctx)
    assert len(sample) == 20
    # 17 of the 21 pattern tokens fit ([CLS], eos, sop take 3). The original PVP.truncate removes one token at a time
    # from the end of the *last* non-empty shortenable part: the question (4 tokens) goes before the passage.
    check_single_token(sample, "the sun is hot and the water is wet . question : ? answer : [MASK] .")
    ctx18 = EvalContext(backend=SimpleNamespace(tokenizer=tokenizer, max_length=18), scorer=None)  # type: ignore[arg-type]
    [shorter] = task.samples(ex, ctx18)
    check_single_token(shorter, "the sun is hot and the water is question : ? answer : [MASK] .")  # then the passage
