"""Metrics against hand-computed values (spec §6.1, §6.4)."""

from __future__ import annotations

import math

import pytest

from evaluation import metrics


def test_accuracy_and_macro_f1_by_hand() -> None:
    preds = [0, 1, 2, 2, 1, 0]
    golds = [0, 1, 1, 2, 1, 2]
    assert metrics.accuracy(preds, golds) == pytest.approx(4 / 6)
    # class 0: tp1 fp1 fn0 -> P .5 R 1 F 2/3 ; class 1: tp2 fp0 fn1 -> F 0.8 ; class 2: tp1 fp1 fn1 -> F 0.5
    assert metrics.macro_f1(preds, golds) == pytest.approx((2 / 3 + 0.8 + 0.5) / 3)


def test_macro_f1_counts_a_class_never_predicted_as_zero() -> None:
    assert metrics.macro_f1([0, 0], [0, 1]) == pytest.approx((2 / 3 + 0.0) / 2)


def test_multirc_f1a_em_and_accuracy() -> None:
    questions = ["q1", "q1", "q1", "q2", "q2"]
    preds = [1, 0, 1, 1, 1]
    golds = [1, 0, 0, 1, 1]
    out = metrics.multirc_scores(questions, preds, golds)
    # positives: tp 3, fp 1, fn 0 -> P .75 R 1 -> F1 6/7; q1 has a wrong option, q2 is all right
    assert out["f1a"] == pytest.approx(6 / 7)
    assert out["em"] == pytest.approx(0.5)
    assert out["acc"] == pytest.approx(4 / 5)


def test_squad_normalisation_and_record_max_over_golds() -> None:
    assert metrics.squad_normalize("The  Eiffel-Tower, in  Paris!") == "eiffeltower in paris"
    assert metrics.squad_em("the Bob", "Bob.") == 1.0
    # "new york city" vs "york": P 1/3, R 1 -> F1 0.5
    assert metrics.squad_f1("New York City", "York") == pytest.approx(0.5)
    out = metrics.record_scores(["New York City", "Paris"], [["York", "NYC"], ["London"]])
    assert out == {"em": 0.0, "f1": pytest.approx(0.25)}


def test_rouge_identical_and_disjoint_texts() -> None:
    same = metrics.rouge(["The cat sat on the mat. It was happy."], ["The cat sat on the mat. It was happy."])
    assert same == {"rouge1": pytest.approx(1.0), "rouge2": pytest.approx(1.0), "rougeLsum": pytest.approx(1.0)}
    none = metrics.rouge(["dogs run"], ["the cat sat"])
    assert none["rouge1"] == 0.0 and none["rouge2"] == 0.0


def test_rouge1_uses_the_porter_stemmer() -> None:
    # with use_stemmer=True "running" and "runs" both stem to "run": unigram overlap 2 of 2
    assert metrics.rouge(["cats running"], ["cat runs"])["rouge1"] == pytest.approx(1.0)


def test_bleu_by_hand() -> None:
    assert metrics.bleu(["a b c d e"], ["a b c d e"]) == pytest.approx(1.0)
    # pred "a b c d x y" vs ref "a b c d e f": p1 4/6, p2 3/5, p3 2/4, p4 1/3, equal lengths -> no brevity penalty
    expected = math.exp((math.log(4 / 6) + math.log(3 / 5) + math.log(2 / 4) + math.log(1 / 3)) / 4)
    assert metrics.bleu(["a b c d x y"], ["a b c d e f"]) == pytest.approx(expected)
    # shorter prediction: brevity penalty exp(1 - 6/5)
    short = metrics.bleu(["a b c d e"], ["a b c d e f"])
    assert short == pytest.approx(math.exp(1 - 6 / 5))
    assert metrics.bleu(["x y z w"], ["a b c d"]) == 0.0


def test_exact_match_and_perplexity() -> None:
    assert metrics.exact_match(["the  cat sat", "a dog"], ["the cat sat", "a cat"]) == 0.5
    assert metrics.perplexity(-2 * math.log(4), 2) == pytest.approx(4.0)
    assert metrics.perplexity(0.0, 0) == math.inf
