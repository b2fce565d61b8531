"""Metrics of the paper's evaluation (spec glm_reference §6), torch-free. All values are fractions in [0, 1].

- accuracy; macro-F1 (CB, sklearn ``f1_score(average="macro")`` semantics);
- MultiRC F1a (binary F1 over all answer options, positive label 1) and EM (a question counts only if every one of
  its answer options is right);
- ReCoRD EM / F1 with the official SQuAD normalisation (lower case, no punctuation, no articles a/an/the, single
  spaces), maximum over the gold answers;
- ROUGE-1/2/Lsum F-measure through Google's ``rouge-score`` with ``use_stemmer=True`` (spec §6.4), sentences joined by
  newlines for Lsum; the original's logged ROUGE (:func:`original_rouge`); the README's PTB tokenisation +
  files2rouge + ROUGE-1.5.5 pipeline rebuilt on rouge-score (:func:`ptb_tokenize`, :func:`files2rouge`);
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
    "files2rouge",
    "macro_f1",
    "multirc_scores",
    "perplexity",
    "ptb_tokenize",
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


def _rouge_scorer(types: list[str], tokenizer: object | None = None):
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ConfigError("ROUGE needs the rouge-score package: pip install 'glm-harness[eval]'") from None
    return rouge_scorer.RougeScorer(types, use_stemmer=True, tokenizer=tokenizer)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1 / ROUGE-2 / ROUGE-Lsum F-measure (``rouge-score``, ``use_stemmer=True``; spec §6.4)."""
    _check_lengths(predictions, references, "ROUGE")
    scorer = _rouge_scorer(["rouge1", "rouge2", "rougeLsum"])
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
    refs = ["\n".join(fix_tokenization(s, dataset) for s in ref.strip().split("[SEP]")) for ref in references]
    preds = []
    for prediction in predictions:
        kept = [fix_tokenization(s, dataset) for s in prediction.strip().split("[SEP]")]
        kept = [s for s in kept if len(s.split()) > 4]
        if duplicate_rate and duplicate_rate < 1:
            kept = _remove_duplicate(kept, duplicate_rate)
        preds.append("\n".join(kept))
    scorer = _rouge_scorer(["rouge1", "rouge2", "rougeLsum"])
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(preds, refs, strict=True):
        scores = scorer.score(pred, ref)  # the original's argument order (F-measure is symmetric)
        totals["rouge1"] += scores["rouge1"].fmeasure
        totals["rouge2"] += scores["rouge2"].fmeasure
        totals["rougeL"] += scores["rougeLsum"].fmeasure
    n = max(len(predictions), 1)
    return {key: value / n for key, value in totals.items()}


# ------------------------------------------------------------------------------------------------ files2rouge
# The README's pipeline (scripts/evaluate_seq2seq.sh): Stanford CoreNLP's PTBTokenizer (-preserveLines) on the
# hypothesis and reference files, then files2rouge, which splits every line into sentences at " ." and runs
# ROUGE-1.5.5 with "-c 95 -r 1000 -n 2 -a -m". ptb_tokenize follows the PTB conventions of PTBTokenizer's defaults
# (ptb3Escaping) with regular expressions; files2rouge is the scoring half, through rouge-score.
# PTBLexer.flex (CoreNLP 3.7.0) abbreviation classes: ABBREV1 (months, days, states, company forms, etc.) keep their
# period and, before an upper-case word or at the end of the line, are followed by a sentence-final "."; titles
# (ABTITLE, ABBREV2) keep their period; an acronym (U.S.) before a sentence-opening word also gets a "." (PTBLexer
# looks past the newline, so one ending a line gets it when the next line opens with such a word; not here).
_PTB_ABBREV1 = re.compile(
    r"(?i:jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec|mon|tue|tues|wed|thu|thurs|fri|inc|cos?|corp|ltd|plc|"
    r"bancorp|assn|univ|intl|sys|tel|est|ext|sq|jr|sr|bros|ph\.d|ed\.d|blvd|rd|esq|etc|al|seq|bldg)"
    r"|Ala|Ariz|Az|Ark|Calif|Colo|Conn|Ct|Dak|Del|Fla|Ga|Ill|Ind|Kans?|Ky|La|Mass|Md|Mich|Minn|Miss|Mo|Mont|Neb|Nev|"
    r"Okla|Ore|Pa|Penn|Tenn|Tex|Va|Vt|Wash|Wisc?|Wyo"
)
_PTB_TITLES = re.compile(
    r"(?i:mr|mrs|ms|miss|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl|pvt|capt|ste?|"
    r"ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|mt|ft|adj|adv|asst|assoc|ens|insp|mlle|mme|msgr|sfc|vs|v|"
    r"alex|wm|jos|cie|a\.k\.a|cf|treas|ph|invt|elec|natl|m[ft]g|dept)"
)
_PTB_BEFORE_NUMBER = re.compile(r"(?i:ca|figs?|prop|nos?|sect?s?|arts?|bldg|pp|op)")  # ABBREV3: No. 1, Fig. 2
_PTB_ACRONYM = re.compile(r"[A-Za-z](?:\.[A-Za-z])*")
_PTB_SENTENCE_OPENERS = frozenset(
    "About According Additionally After An A As At But Did During Earlier He Her Here How However If In It Last Many "
    "More Mr. Ms. Now Once One Other Our She Since So Some Such That The Their Then There These They This We When While "
    "What Who Why Yet You".split()
)
_PTB_SUBSTITUTIONS = [
    (re.compile("[\u201c\u201e]"), " `` "),  # curly double quotes (latexQuotes)
    (re.compile("\u201d"), " '' "),
    (re.compile("\u2018"), " ` "),
    (re.compile("\u2019"), "'"),  # right single quote: the apostrophe of contractions, handled below
    (re.compile("[\u2013\u2014]"), " -- "),  # ptb3Dashes: en and em dash
    (re.compile("\u2026"), " ... "),
    (re.compile("\u00a3"), " # "),  # normalizeCurrency: pound as #, euro (and other currencies) as $
    (re.compile("[\u20ac\u00a5]"), " $ "),
    (re.compile(r'(^|(?<=[\s(\[{<]))"'), " `` "),  # opening double quote: at the start or after space / bracket
    (re.compile(r'"'), " '' "),
    (re.compile(r"\.\.\.+"), " ... "),
    (re.compile(r"--+"), " -- "),
    (re.compile(r"(?<!\d),|,(?!\d)"), " , "),  # comma, except inside a number (3,000)
    (re.compile(r"(?<!\d):|:(?!\d)"), " : "),  # colon, except inside a time (10:30)
    (re.compile(r"([;?!%$#@])"), r" \1 "),
    (re.compile(r"\b(\d+(?:,\d{3})*\.\d+)([A-Za-z]+)\b"), r"\1 \2"),  # 1.2bn -> 1.2 bn (but 5m stays)
    (re.compile(r"\("), " -LRB- "),
    (re.compile(r"\)"), " -RRB- "),
    (re.compile(r"\["), " -LSB- "),
    (re.compile(r"\]"), " -RSB- "),
    (re.compile(r"\{"), " -LCB- "),
    (re.compile(r"\}"), " -RCB- "),
    (re.compile(r"(?i)\b(can)(not)\b"), r"\1 \2"),
    (re.compile(r"(?i)\b(gon|got|wan)(na|ta)\b"), r"\1 \2"),  # gonna -> gon na, gotta -> got ta, wanna -> wan na
    (re.compile(r"(?i)\b(lem|gim)(me)\b"), r"\1 \2"),
    (re.compile(r"(?i)(\w)(n't)\b"), r"\1 \2"),  # don't -> do n't, can't -> ca n't, won't -> wo n't
    (re.compile(r"(?i)(\w)('s|'m|'d|'re|'ve|'ll)\b"), r"\1 \2"),
    (re.compile(r"(^|(?<=\s))'(?!'|(?:[sdm]|re|ve|ll|n)\b|\d)"), " ` "),  # opening single quote ('90s stays)
    (re.compile(r"(?<=[\w.!?,;:])'(?=\s|$)"), " ' "),  # closing single quote / plural possessive (dogs' -> dogs ')
]


def _ptb_period(token: str, following: str | None) -> list[str]:
    """A token ending in ``.`` before ``following`` (``None`` at the end of the line): words give the period up as
    a token of its own; abbreviations keep it, and add a sentence-final ``.`` where PTBLexer does."""
    if token in (".", "...") or not token.endswith("."):
        return [token]
    stem = token[:-1]
    if _PTB_ABBREV1.fullmatch(stem):
        ends_sentence = following is None or following[:1].isupper() or following == "``"
        return [token, "."] if ends_sentence else [token]
    if _PTB_TITLES.fullmatch(stem) or (_PTB_BEFORE_NUMBER.fullmatch(stem) and following and following[0].isdigit()):
        return [token]
    if _PTB_ACRONYM.fullmatch(stem):
        if following not in _PTB_SENTENCE_OPENERS:
            return [token]
        return [stem, "."] if len(stem) == 1 else [token, "."]  # "J." ending a sentence is "J ."
    return [stem, "."]


def ptb_tokenize(text: str) -> str:
    """``text`` as one line of PTB tokens, following CoreNLP 3.7.0's ``PTBTokenizer -preserveLines`` defaults:
    ``"`` as ```` `` ```` / ``''``, brackets as ``-LRB- -RRB- -LSB- -RSB- -LCB- -RCB-``, ``n't`` and ``'s 'm 'd 're
    've 'll`` split off (``can't`` -> ``ca n't``, ``cannot`` -> ``can not``, ``gonna`` -> ``gon na``), ``, ; : ? !
    % $ # @``, ``...`` and ``--`` as tokens (commas and colons inside numbers kept, ``1.2bn`` -> ``1.2 bn``), pound
    and euro signs as ``#`` and ``$``, a word's final period split off unless the word is an abbreviation (PTBLexer's classes: titles keep the
    period; months, company forms, ``etc.`` and acronyms before a new sentence are followed by a ``.`` token), en/em
    dashes as ``--``. Newlines become spaces (the original's hypothesis file has one line per example)."""
    text = " ".join(text.split())
    for pattern, replacement in _PTB_SUBSTITUTIONS:
        text = pattern.sub(replacement, text)
    tokens = text.split()
    following: list[str | None] = [*tokens[1:], None]
    pieces = (_ptb_period(token, nxt) for token, nxt in zip(tokens, following[: len(tokens)], strict=True))
    return " ".join(piece for group in pieces for piece in group)


# ROUGE-1.5.5's own Porter stemmer (ROUGE-1.5.5.pl "sub stem", Martin Porter's Perl release 1 with Chin-Yew Lin's
# 2004 change to step 4), which differs from NLTK's Porter on about 2% of English words (e.g. they -> thei,
# movement -> movem, news -> new); files2rouge's shipped WordNet exception database is empty, so nothing else runs.
_C, _V = "[^aeiou][^aeiouy]*", "[aeiouy][aeiou]*"
_MGR0 = re.compile(f"^({_C})?{_V}{_C}")  # m > 0
_MEQ1 = re.compile(f"^({_C})?{_V}{_C}({_V})?$")  # m = 1
_MGR1 = re.compile(f"^({_C})?{_V}{_C}{_V}{_C}")  # m > 1
_VOWEL_IN_STEM = re.compile(f"^({_C})?[aeiouy]")
_CVC = re.compile(f"^{_C}[aeiouy][^aeiouwxy]$")
_STEP2 = {
    "ational": "ate", "tional": "tion", "enci": "ence", "anci": "ance", "izer": "ize", "bli": "ble", "alli": "al",
    "entli": "ent", "eli": "e", "ousli": "ous", "ization": "ize", "ation": "ate", "ator": "ate", "alism": "al",
    "iveness": "ive", "fulness": "ful", "ousness": "ous", "aliti": "al", "iviti": "ive", "biliti": "ble", "logi": "log",
}  # fmt: skip
_STEP3 = {"icate": "ic", "ative": "", "alize": "al", "iciti": "ic", "ical": "ic", "ful": "", "ness": ""}
_STEP2_RE = re.compile("(" + "|".join(_STEP2) + ")$")
_STEP3_RE = re.compile("(" + "|".join(_STEP3) + ")$")
_STEP4_RE = re.compile("(al|ance|ence|er|ic|able|ible|ant|ement|ou|ism|ate|iti|ous|ive|ize)$")


def rouge155_stem(w: str) -> str:
    """ROUGE-1.5.5.pl ``stem``, rule for rule (a lower-case token; ROUGE stems tokens longer than 3 characters)."""
    if len(w) < 3:
        return w
    initial_y = w[0] == "y"
    if initial_y:
        w = "Y" + w[1:]  # an initial y is a consonant
    # step 1a
    if m := re.search(r"(ss|i)es$", w):
        w = w[: m.start()] + m.group(1)
    elif m := re.search(r"([^s])s$", w):
        w = w[: m.start()] + m.group(1)
    # step 1b
    if w.endswith("eed"):
        if _MGR0.search(w[:-3]):
            w = w[:-1]
    elif m := re.search(r"(ed|ing)$", w):
        stem = w[: m.start()]
        if _VOWEL_IN_STEM.search(stem):
            w = stem
            if re.search(r"(at|bl|iz)$", w):
                w += "e"
            elif re.search(r"([^aeiouylsz])\1$", w):
                w = w[:-1]
            elif _CVC.search(w):
                w += "e"
    # step 1c
    if w.endswith("y") and _VOWEL_IN_STEM.search(w[:-1]):
        w = w[:-1] + "i"
    # steps 2 and 3
    for pattern, table in ((_STEP2_RE, _STEP2), (_STEP3_RE, _STEP3)):
        if m := pattern.search(w):
            stem = w[: m.start()]
            if _MGR0.search(stem):
                w = stem + table[m.group(1)]
    # step 4 (a word ending in -ement goes through -ment and -ent again, as the Perl does)
    if m := _STEP4_RE.search(w):
        if _MGR1.search(w[: m.start()]):
            w = w[: m.start()]
    if w.endswith("ment") and _MGR1.search(w[:-4]):
        w = w[:-4]
    if w.endswith("ent"):
        if _MGR1.search(w[:-3]):
            w = w[:-3]
    elif m := re.search(r"(s|t)(ion)$", w):
        if _MGR1.search(w[: m.start()] + m.group(1)):
            w = w[: m.start()] + m.group(1)
    # step 5
    if w.endswith("e"):
        stem = w[:-1]
        if _MGR1.search(stem) or (_MEQ1.search(stem) and not _CVC.search(stem)):
            w = stem
    if w.endswith("ll") and _MGR1.search(w):
        w = w[:-1]
    return "y" + w[1:] if initial_y else w


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class Rouge155Tokenizer:
    """ROUGE-1.5.5's tokens for rouge-score (``readText`` + ``tokenizeText`` with ``-m``): A-Z lower-cased, every
    character outside ``[a-z0-9]`` a separator, tokens longer than 3 characters stemmed by :func:`rouge155_stem`."""

    def tokenize(self, text: str) -> list[str]:
        tokens = re.findall(r"[a-z0-9]+", text.translate(_ASCII_LOWER))
        return [rouge155_stem(t) if len(t) > 3 else t for t in tokens]


def files2rouge_sentences(line: str, eos: str = ".") -> list[str]:
    """files2rouge's ``split_files``: ``(" %s\\n" % eos).join(line.split(" %s" % eos))``, a new sentence after every
    ``" ."`` of the tokenized line (also inside ``" ..."``); empty sentences are skipped, as ROUGE-1.5.5 does."""
    text = f" {eos}\n".join(line.strip().split(f" {eos}"))
    return [s for s in text.split("\n") if s.strip()]


def files2rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """The README's ROUGE (``scripts/evaluate_seq2seq.sh``) as far as it can be followed without Java and Perl:
    :func:`ptb_tokenize` on both sides, :func:`files2rouge_sentences`, then ROUGE-1.5.5 ``-n 2 -m`` computed by
    rouge-score with ROUGE-1.5.5's tokens and stemmer (:class:`Rouge155Tokenizer`): ROUGE-1/2 over the whole text,
    ROUGE-L as the summary-level union LCS over the sentences, mean F per example (ROUGE-1.5.5 reports the mean of
    1000 seeded bootstrap resamples instead, a difference in the fourth decimal on three examples).

    The hypotheses are ROUGE's *models* and the references its *peers*: the script runs ``files2rouge hypo target``
    and files2rouge 2.1 reads its arguments as ``reference summary``. F of ROUGE-1/2 is symmetric; the union-LCS
    ROUGE-L sums over the hypothesis' sentences. An empty side scores 0 (files2rouge stops at an empty line).
    ``rougeL`` is the summary-level ROUGE-L."""
    _check_lengths(predictions, references, "ROUGE")
    scorer = _rouge_scorer(["rouge1", "rouge2", "rougeLsum"], Rouge155Tokenizer())
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references, strict=True):
        model = "\n".join(files2rouge_sentences(ptb_tokenize(pred)))
        peer = "\n".join(files2rouge_sentences(ptb_tokenize(ref)))
        scores = scorer.score(model, peer)  # rouge-score's (target, prediction) = ROUGE-1.5.5's (model, peer)
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
