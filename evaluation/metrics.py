"""Metrics of the paper's evaluation (spec glm_reference §6), torch-free. All values are fractions in [0, 1].

- accuracy; macro-F1 (CB, sklearn ``f1_score(average="macro")`` semantics);
- MultiRC F1a (binary F1 over all answer options, positive label 1) and EM (a question counts only if every one of
  its answer options is right);
- ReCoRD EM / F1 with the official SQuAD normalisation (lower case, no punctuation, no articles a/an/the, single
  spaces), maximum over the gold answers;
- ROUGE-1/2/Lsum F-measure through Google's ``rouge-score`` with ``use_stemmer=True`` (spec §6.4), sentences joined by
  newlines for Lsum;
- corpus BLEU-4 (uniform weights, brevity penalty) and exact match for blank infilling;
- perplexity from summed log-likelihoods.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

from glm_core.errors import ConfigError

__all__ = [
    "accuracy",
    "bleu",
    "exact_match",
    "macro_f1",
    "multirc_scores",
    "perplexity",
    "record_scores",
    "rouge",
    "split_sentences",
    "squad_em",
    "squad_f1",
    "squad_normalize",
]


def _check_lengths(a: Sequence[object], b: Sequence[object], what: str) -> None:
    if len(a) != len(b):
        raise ConfigError(f"{what}: {len(a)} predictions but {len(b)} references")


def accuracy(predictions: Sequence[Hashable], labels: Sequence[Hashable]) -> float:
    _check_lengths(predictions, labels, "accuracy")
    if not labels:
        return 0.0
    return sum(p == t for p, t in zip(predictions, labels, strict=True)) / len(labels)


def _f1(tp: int, fp: int, fn: int) -> float:
    # sklearn's zero_division=0: an undefined precision/recall counts as 0
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def binary_f1(predictions: Sequence[Hashable], labels: Sequence[Hashable], positive: Hashable = 1) -> float:
    _check_lengths(predictions, labels, "F1")
    tp = sum(p == positive and t == positive for p, t in zip(predictions, labels, strict=True))
    fp = sum(p == positive and t != positive for p, t in zip(predictions, labels, strict=True))
    fn = sum(p != positive and t == positive for p, t in zip(predictions, labels, strict=True))
    return _f1(tp, fp, fn)


def macro_f1(predictions: Sequence[Hashable], labels: Sequence[Hashable]) -> float:
    """Unweighted mean of per-class F1 over every class seen in labels or predictions (sklearn semantics)."""
    _check_lengths(predictions, labels, "macro-F1")
    classes = sorted(set(labels) | set(predictions), key=repr)
    if not classes:
        return 0.0
    return sum(binary_f1(predictions, labels, positive=c) for c in classes) / len(classes)


def multirc_scores(
    question_ids: Sequence[Hashable], predictions: Sequence[int], labels: Sequence[int]
) -> dict[str, float]:
    """``f1a`` over all answer options, ``em`` over questions, ``acc`` over answer options (spec §6.1)."""
    _check_lengths(predictions, labels, "MultiRC")
    _check_lengths(question_ids, labels, "MultiRC question ids")
    per_question: dict[Hashable, bool] = {}
    for q, p, t in zip(question_ids, predictions, labels, strict=True):
        per_question[q] = per_question.get(q, True) and p == t
    em = sum(per_question.values()) / len(per_question) if per_question else 0.0
    return {"f1a": binary_f1(predictions, labels, positive=1), "em": em, "acc": accuracy(predictions, labels)}


# ------------------------------------------------------------------------------------------------ SQuAD / ReCoRD
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def _transliterator():
    try:
        from unidecode import unidecode
    except ImportError:
        return None
    return unidecode


UNIDECODE = _transliterator()  # the original's normalize_answer uses unidecode (an 'eval' extra dependency)


def squad_normalize(text: str) -> str:
    """SQuAD v1.1 answer normalisation as the original's ``tasks/superglue/evaluate.py`` ``normalize_answer``:
    lower case transliterated to ASCII with ``unidecode`` (when the package is installed; else kept as written),
    drop punctuation, drop articles, collapse spaces."""
    text = text.lower()
    if UNIDECODE is not None:
        text = UNIDECODE(text)
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_em(prediction: str, gold: str) -> float:
    return float(squad_normalize(prediction) == squad_normalize(gold))


def squad_f1(prediction: str, gold: str) -> float:
    pred_tokens = squad_normalize(prediction).split()
    gold_tokens = squad_normalize(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def record_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean over queries of the max EM / F1 against any gold answer (ReCoRD official evaluation)."""
    _check_lengths(predictions, golds, "ReCoRD")
    if not predictions:
        return {"em": 0.0, "f1": 0.0}
    em = [max((squad_em(p, g) for g in gs), default=0.0) for p, gs in zip(predictions, golds, strict=True)]
    f1 = [max((squad_f1(p, g) for g in gs), default=0.0) for p, gs in zip(predictions, golds, strict=True)]
    return {"em": sum(em) / len(em), "f1": sum(f1) / len(f1)}


# ------------------------------------------------------------------------------------------------ ROUGE
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: existing newlines are kept as boundaries, then split after ``.``, ``!``, ``?``."""
    out = []
    for line in text.splitlines():
        out.extend(s.strip() for s in _SENTENCE_END.split(line) if s.strip())
    return out


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1 / ROUGE-2 / ROUGE-Lsum F-measure (``rouge-score``, ``use_stemmer=True``; spec §6.4)."""
    _check_lengths(predictions, references, "ROUGE")
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ConfigError("ROUGE needs the rouge-score package: pip install 'glm-harness[eval]'") from None
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeLsum": 0.0}
    for pred, ref in zip(predictions, references, strict=True):
        # rougeLsum treats newlines as sentence boundaries (spec §6.4: sentences joined by "\n")
        scores = scorer.score("\n".join(split_sentences(ref)), "\n".join(split_sentences(pred)))
        for key in totals:
            totals[key] += scores[key].fmeasure
    n = max(len(predictions), 1)
    return {key: value / n for key, value in totals.items()}


# ------------------------------------------------------------------------------------------------ the original's ROUGE
def _is_digit(w: str) -> bool:
    return all(ch.isdigit() or ch == "," for ch in w)


def fix_tokenization(text: str, dataset: str) -> str:
    """``tasks/seq2seq/evaluate.py`` ``fix_tokenization`` of the original, rule for rule: identity for
    ``cnn_dm_org``, ``[UNK]`` -> ``UNK`` for ``gigaword``, else (``cnn_dm``, BERT-tokenizer models) PTB-style quotes,
    contractions, ``...``, digit groups, acronyms and dashes rejoined."""
    if dataset == "cnn_dm_org":
        return text
    if dataset == "gigaword":
        return text.replace("[UNK]", "UNK")
    tokens = text.split()
    out: list[str] = []
    left_quote = left_single = prev_dash = False
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        flag_prev_dash = False
        if tok == '"':
            out.append("''" if left_quote else "``")
            left_quote = not left_quote
            i += 1
        elif tok == "'" and out and out[-1].endswith("n") and i < len(tokens) - 1 and tokens[i + 1] == "t":
            out[-1] = out[-1][:-1]
            out.append("n't")
            i += 2
        elif tok == "'" and i < len(tokens) - 1 and tokens[i + 1] in ("s", "d", "ll"):
            out.append("'" + tokens[i + 1])
            i += 2
        elif tok == "'":
            out.append("'" if left_single else "`")
            left_single = not left_single
            i += 1
        elif tok == "." and i < len(tokens) - 2 and tokens[i + 1] == "." and tokens[i + 2] == ".":
            out.append("...")
            i += 3
        elif tok == "," and out and _is_digit(out[-1]) and i < len(tokens) - 1 and _is_digit(tokens[i + 1]):
            out[-1] += "," + tokens[i + 1]  # $ 3 , 000 -> $ 3,000
            i += 2
        elif tok == "." and out and out[-1].isdigit() and i < len(tokens) - 1 and tokens[i + 1].isdigit():
            out[-1] += "." + tokens[i + 1]  # 3 . 03 -> 3.03
            i += 2
        elif (
            tok == "."
            and out
            and len(out[-1]) == 1
            and out[-1].isalpha()
            and i < len(tokens) - 2
            and len(tokens[i + 1]) == 1
            and tokens[i + 1].isalpha()
            and tokens[i + 2] == "."
        ):
            k = i + 3  # U . N . -> U.N.
            while k + 2 < len(tokens) and len(tokens[k + 1]) == 1 and tokens[k + 1].isalpha() and tokens[k + 2] == ".":
                k += 2
            out[-1] += "".join(tokens[i:k])
            i = k
        elif tok == "-":
            if i < len(tokens) - 1 and tokens[i + 1] == "-":
                out.append("--")
                i += 2
            elif i == len(tokens) - 1 or i == 0:
                out.append("-")
                i += 1
            elif out[-1] not in string.punctuation and tokens[i + 1][0] not in string.punctuation:
                out[-1] += "-"
                i += 1
                flag_prev_dash = True
            else:
                out.append("-")
                i += 1
        elif prev_dash and out and tok[0] not in string.punctuation:
            out[-1] += tok
            i += 1
        else:
            out.append(tok)
            i += 1
        prev_dash = flag_prev_dash
    return " ".join(out)


def _remove_duplicate(sentences: list[str], duplicate_rate: float) -> list[str]:
    """A sentence is dropped when more than ``duplicate_rate`` of its distinct words appeared in earlier ones."""
    kept, history = [], set()
    for sentence in sentences:
        words = set(sentence.lower().split())
        if len(words & history) / len(words) <= duplicate_rate:
            kept.append(sentence)
        history |= words
    return kept


def original_rouge(
    predictions: Sequence[str], references: Sequence[str], dataset: str, duplicate_rate: float = 0.7
) -> dict[str, float]:
    """The ROUGE the original logs (``tasks/seq2seq/evaluate.py`` ``rouge_metric``): mean ``rouge-score`` F-measure
    (``use_stemmer=True``) of rouge1, rouge2 and rougeLsum, reported as ``rougeL`` as the original's "rouge-l".

    References (the target round-tripped through the tokenizer by the caller) and predictions are split on
    ``[SEP]`` only, each sentence passed through :func:`fix_tokenization` (``dataset``: ``cnn_dm`` for BERT-tokenizer
    models, ``gigaword`` for Gigaword, else ``cnn_dm_org``); prediction sentences of at most 4 words are dropped,
    then near-duplicates (:func:`_remove_duplicate`, 0.7); sentences are joined by newlines for rougeLsum.
    """
    _check_lengths(predictions, references, "ROUGE")
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ConfigError("ROUGE needs the rouge-score package: pip install 'glm-harness[eval]'") from None
    refs = ["\n".join(fix_tokenization(s, dataset) for s in ref.strip().split("[SEP]")) for ref in references]
    preds = []
    for prediction in predictions:
        kept = [fix_tokenization(s, dataset) for s in prediction.strip().split("[SEP]")]
        kept = [s for s in kept if len(s.split()) > 4]
        if duplicate_rate and duplicate_rate < 1:
            kept = _remove_duplicate(kept, duplicate_rate)
        preds.append("\n".join(kept))
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(preds, refs, strict=True):
        scores = scorer.score(pred, ref)  # the original's argument order (F-measure is symmetric)
        totals["rouge1"] += scores["rouge1"].fmeasure
        totals["rouge2"] += scores["rouge2"].fmeasure
        totals["rougeL"] += scores["rougeLsum"].fmeasure
    n = max(len(predictions), 1)
    return {key: value / n for key, value in totals.items()}


# ------------------------------------------------------------------------------------------------ BLEU / EM
def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu(predictions: Sequence[str], references: Sequence[str], max_order: int = 4) -> float:
    """Corpus BLEU (Papineni et al. 2002): clipped n-gram precisions up to ``max_order``, uniform weights, brevity
    penalty; whitespace tokens; one reference per prediction. 0 when any precision is 0 (no smoothing)."""
    _check_lengths(predictions, references, "BLEU")
    matches = [0] * max_order
    possible = [0] * max_order
    pred_len = ref_len = 0
    for pred, ref in zip(predictions, references, strict=True):
        p, r = pred.split(), ref.split()
        pred_len += len(p)
        ref_len += len(r)
        for n in range(1, max_order + 1):
            pn, rn = _ngrams(p, n), _ngrams(r, n)
            matches[n - 1] += sum((pn & rn).values())
            possible[n - 1] += max(len(p) - n + 1, 0)
    if pred_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / c) for m, c in zip(matches, possible, strict=True)) / max_order
    brevity = 1.0 if pred_len > ref_len else math.exp(1 - ref_len / pred_len)
    return brevity * math.exp(log_precision)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after whitespace normalisation."""
    _check_lengths(predictions, references, "exact match")
    if not references:
        return 0.0
    same = sum(" ".join(p.split()) == " ".join(r.split()) for p, r in zip(predictions, references, strict=True))
    return same / len(references)


def perplexity(total_logprob: float, num_tokens: int) -> float:
    """``exp(-sum log p / N)``; ``inf`` when nothing was scored."""
    if num_tokens <= 0:
        return math.inf
    return math.exp(-total_logprob / num_tokens)


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0
