"""Seq2seq tasks as the original's ``tasks/seq2seq`` (spec §6.4), torch-free: CNN/DailyMail, XSum, Gigaword and
SQuAD question generation, beam search + the original's ROUGE.

Data (``--split`` picks ``val`` / ``test``):

- ``cnndm`` (``config_tasks/seq_cnndm_org.sh``, task ``cnn_dm_original``): line-aligned ``test.source`` /
  ``test.target`` under ``<data_dir>/summarization/cnndm/`` or ``<data_dir>/cnndm/``. ``cnndm:tokenized``
  (``seq_cnndm.sh``, task ``cnn_dm``) reads the tokenised files and applies the original's ``cnndm_detokenize``.
- ``xsum`` (``seq_xsum.sh``): the XSum release - ``XSum-TRAINING-DEV-TEST-SPLIT-90-5-5.json`` beside one
  ``<id>.summary`` per article (``[SN]RESTBODY[SN]`` = source, ``[SN]FIRST-SENTENCE[SN]`` = target, lines joined by
  spaces, ``XSumProcessor``) under ``<data_dir>/xsum/`` or ``<data_dir>/summarization/xsum/``; without the split
  file, ``test.source`` / ``test.target``.
- ``gigaword`` (``seq_gigaword.sh``): ``test.source`` / ``test.target`` under ``<data_dir>/gigaword/``, through the
  original's ``gigaword_detokenize``.
- ``squad_qg`` (``seq_squad_generation.sh``): SQuAD-format ``test.json`` / ``dev.json`` under
  ``<data_dir>/squad_generation/``; one example per (paragraph, question, distinct answer).

Inputs as ``Seq2SeqDataset.__getitem__``: every source and target line is stripped and goes through
``punctuation_standardization`` (curly quotes and en dashes to ASCII; CNN/DM and Gigaword, not XSum, not SQuAD);
Part A = ``[CLS] [sMASK|MASK] " Content:" " " + source`` cut to ``src_seq_length`` (SQuAD QG: ``[CLS] context
" Question:" [MASK] " Answer: " + answer``, the context cut around the answer) and **padded with [PAD] to
``src_seq_length`` inside Part A**, where the model sees the pads (the original's behaviour, the default;
``--source-padding none`` leaves them out). Beam search stops on ``eop`` only (``eos_token_id=eop``).

Predictions and the reference round trip are decoded as the original's ``DecodeIds`` writes them
(:func:`evaluation.tasks.base.original_decode`: WordPiece tokens space-joined, ``[SEP]`` / ``[UNK]`` kept as strings).
Metric (``--rouge original``, the default): the ROUGE the original logs (``tasks/seq2seq/evaluate.py``
``rouge_metric``, :func:`evaluation.metrics.original_rouge`) against the reference round-tripped through the
tokenizer (``meta["ref"] = DecodeIds(EncodeAsIds(target))``). ``--rouge sentences``: rouge-score rouge1/2/Lsum
over sentences split on ``.!?`` against the raw reference. Neither is the README's pipeline (PTB tokenisation +
``files2rouge``, ROUGE-1.5.5); ``--rouge files2rouge`` is its equivalent without Java and Perl
(:func:`evaluation.metrics.files2rouge`), see ``evaluation/PROTOCOL.md`` for what differs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation import metrics
from evaluation.tasks.base import (
    EvalContext,
    Example,
    Task,
    find_data_file,
    original_decode,
    padded_prompt,
    read_lines,
)
from evaluation.tasks.cloze import standardize_punctuation
from glm_core.errors import ConfigError, DataError
from glm_core.generation import GenerationConfig, generate_batch
from glm_core.layout import GLMInput, build_seq2seq_input


@dataclass(frozen=True)
class DecodingSettings:
    """``TASK_ARGS`` of one ``config_tasks/seq_*.sh``."""

    source_length: int
    max_target_length: int
    min_length: int
    num_beams: int
    length_penalty: float
    no_repeat_ngram_size: int


ROUGE_VARIANTS = ("original", "sentences", "files2rouge")

SETTINGS = {
    "cnndm": DecodingSettings(608, 160, 55, 5, 0.7, 3),  # seq_cnndm_org.sh (seq_cnndm.sh: the same)
    "xsum": DecodingSettings(608, 60, 10, 6, 1.0, 3),  # seq_xsum.sh
    "gigaword": DecodingSettings(192, 32, 0, 5, 0.6, 3),  # seq_gigaword.sh
    "squad_qg": DecodingSettings(464, 48, 0, 5, 0.7, 0),  # seq_squad_generation.sh (no --no-repeat-ngram-size)
}


def cnndm_detokenize(string: str, is_target: bool = False) -> str:
    """``tasks/seq2seq/dataset.py`` ``cnndm_detokenize``, rule for rule."""
    string = string.replace("<S_SEP>", "[SEP]" if is_target else "")
    for key, value in {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}.items():
        string = string.replace(value, key)
    string = string.replace("''", '"').replace("``", '"').replace("`", "'")
    for contraction in ("n't", "'s", "'d", "'ll"):
        string = string.replace(" " + contraction, contraction)
    return string


def gigaword_detokenize(string: str, is_target: bool = False) -> str:
    """``tasks/seq2seq/dataset.py`` ``gigaword_detokenize``, rule for rule."""
    string = string.replace("UNK", "[UNK]").replace("<unk>", "[UNK]")
    table = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
    table.update({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
    for key, value in table.items():
        string = string.replace(value, key)
    return string


class Summarization(Task):
    primary_metric = "rouge1"
    default_split = "test"
    corpus = ""
    standardize = True  # punctuation_standardization on every line (SummmaryProcessor; not XSumProcessor)

    def __init__(self, option: str | None = None) -> None:
        super().__init__(option)
        self.source_padding = "visible"
        self.rouge = "original"

    def configure(self, options: dict[str, Any]) -> None:
        self.source_padding = options.get("source_padding", "visible")
        self.rouge = options.get("rouge", "original")
        if self.source_padding not in ("visible", "none"):
            raise ConfigError(f"--source-padding must be 'visible' or 'none', got {self.source_padding!r}")
        if self.rouge not in ROUGE_VARIANTS:
            raise ConfigError(f"--rouge must be one of {', '.join(ROUGE_VARIANTS)}, got {self.rouge!r}")

    @property
    def task_id(self) -> str:
        return self.name + ("-nopad" if self.source_padding == "none" else "")

    @property
    def settings(self) -> DecodingSettings:
        return SETTINGS[self.corpus]

    def config(self) -> dict[str, Any]:
        s = self.settings
        return {
            "source_length": s.source_length,
            "max_target_length": s.max_target_length,
            "min_length": s.min_length,
            "num_beams": s.num_beams,
            "length_penalty": s.length_penalty,
            "no_repeat_ngram_size": s.no_repeat_ngram_size,
            "source_padding": self.source_padding,
            "stop": "eop",
            "rouge": self.rouge,
        }

    # ---------------------------------------------------------------- data
    def folders(self) -> list[str]:
        return [f"summarization/{self.corpus}", self.corpus]

    def clean(self, line: str, is_target: bool) -> str:
        line = line.strip()
        return standardize_punctuation(line) if self.standardize else line

    def data_files(self, data_dir: Path, split: str) -> list[Path]:
        source = find_data_file(data_dir, [f"{f}/{split}.source" for f in self.folders()], self.name)
        target = source.with_suffix(".target")
        if not target.is_file():
            raise DataError(f"{target}: reference file missing beside {source.name}")
        return [source, target]

    def pairs(self, data_dir: Path, split: str) -> list[tuple[str, str]]:
        source_path, target_path = self.data_files(data_dir, split)
        sources, targets = read_lines(source_path), read_lines(target_path)
        if len(sources) != len(targets):
            raise DataError(
                f"{source_path}: {len(sources)} lines but {target_path.name} has {len(targets)}; expected line-aligned files"
            )
        for n, src in enumerate(sources, start=1):
            if not src.strip():
                raise DataError(f"{source_path}:{n}: empty article")
        return list(zip(sources, targets, strict=True))

    def read(self, data_dir: Path, split: str, limit: int | None) -> list[Example]:
        out = []
        for n, (src, tgt) in enumerate(self.pairs(data_dir, split), start=1):
            data = {"source": self.clean(src, False), "target": self.clean(tgt, True)}
            out.append(Example(str(n), data))
            if limit is not None and len(out) >= limit:
                break
        if not out:
            raise DataError(f"task {self.name!r}: no examples in {self.data_files(data_dir, split)[0]}")
        return out

    # ---------------------------------------------------------------- inputs
    def source_length(self, ctx: EvalContext) -> int:
        # generated tokens sit at (mask position, 1..k): Part A and the blank's length are bounded separately
        return min(self.settings.source_length, ctx.max_length)

    def pad_to(self, ctx: EvalContext) -> int | None:
        return self.source_length(ctx) if self.source_padding == "visible" else None

    def prompt(self, example: Example, ctx: EvalContext) -> GLMInput:
        mask = ctx.special.smask if ctx.special.smask is not None else ctx.special.mask
        return build_seq2seq_input(
            ctx.tokenizer.encode(" " + example.data["source"]),
            ctx.special,
            prompt_ids=ctx.tokenizer.encode(" Content:"),
            max_source_length=self.source_length(ctx),
            mask_id=mask,
            pad_source=self.source_padding == "visible",
        )

    def reference(self, example: Example) -> str:
        return example.data["target"]

    def rouge_reference(self, example: Example) -> str:
        """The text ROUGE compares with: ``meta["ref"]`` of the original's processor, before the round trip."""
        return self.reference(example)

    def rouge_dataset(self, ctx: EvalContext) -> str:
        """The ``dataset`` argument of the original's ``fix_tokenization`` (``tasks/seq2seq/finetune.py:97-102``)."""
        if ctx.tokenizer.family == "bert":
            return "cnn_dm"
        return "gigaword" if self.corpus == "gigaword" else "cnn_dm_org"

    def predict(self, examples: Sequence[Example], ctx: EvalContext) -> list[dict[str, Any]]:
        s = self.settings
        max_new = min(s.max_target_length, ctx.max_length - 1)
        config = GenerationConfig(
            max_new_tokens=max_new,
            strategy="beam",
            num_beams=s.num_beams,
            length_penalty=s.length_penalty,
            min_length=min(s.min_length, max_new),
            no_repeat_ngram_size=s.no_repeat_ngram_size,
            vocab_size=len(ctx.tokenizer),
            stop_on_eos=False,  # evaluate.py: BeamSearchScorer(..., eos_token_id=self.end_token) with end = eop
        )
        results = generate_batch(ctx.backend, [self.prompt(ex, ctx) for ex in examples], ctx.special, config)
        drop = {ctx.special.eop, ctx.special.pad}  # evaluate.py: tokens not in [end_token, pad_token]
        records = []
        for ex, r in zip(examples, results, strict=True):
            reference, rouge_reference = self.reference(ex), self.rouge_reference(ex)
            records.append(
                {
                    "key": ex.key,
                    "prediction": original_decode(ctx.tokenizer, [t for t in r.blanks[0] if t not in drop]).strip(),
                    "reference": reference,
                    "rouge_reference": rouge_reference,
                    "reference_roundtrip": original_decode(ctx.tokenizer, ctx.tokenizer.encode(rouge_reference)),
                    "rouge_dataset": self.rouge_dataset(ctx),
                    "generated_tokens": len(r.blanks[0]),
                }
            )
        return records

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        predictions = [r["prediction"] for r in records]
        if self.rouge == "sentences":
            return metrics.rouge(predictions, [r.get("rouge_reference", r["reference"]) for r in records])
        if self.rouge == "files2rouge":  # the .hyps / .refs files of finetune.py's output_func: meta["ref"]
            return metrics.files2rouge(predictions, [r["reference_roundtrip"] for r in records])
        dataset = records[0]["rouge_dataset"] if records else "cnn_dm_org"
        return metrics.original_rouge(predictions, [r["reference_roundtrip"] for r in records], dataset)


class CNNDM(Summarization):
    name = corpus = "cnndm"
    description = "CNN/DailyMail summarisation, beam 5 (seq_cnndm_org.sh; cnndm:tokenized = seq_cnndm.sh)"
    protocol_source = "scripts/finetune_seq2seq.sh + config_tasks/seq_cnndm_org.sh"

    def __init__(self, option: str | None = None) -> None:
        if option not in (None, "tokenized"):
            raise ConfigError(f"task 'cnndm': unknown option {option!r}; expected cnndm:tokenized or none")
        super().__init__(None)
        self.tokenized = option == "tokenized"

    @property
    def task_id(self) -> str:
        return super().task_id + ("-tokenized" if self.tokenized else "")

    def clean(self, line: str, is_target: bool) -> str:
        line = super().clean(line, is_target)
        return cnndm_detokenize(line, is_target) if self.tokenized else line


class XSum(Summarization):
    name = corpus = "xsum"
    description = "XSum summarisation, beam 6 (seq_xsum.sh)"
    protocol_source = "scripts/finetune_seq2seq.sh + config_tasks/seq_xsum.sh"
    standardize = False
    SPLIT_FILE = "XSum-TRAINING-DEV-TEST-SPLIT-90-5-5.json"

    def _split_file(self, data_dir: Path) -> Path | None:
        for folder in self.folders():
            if (data_dir / folder / self.SPLIT_FILE).is_file():
                return data_dir / folder / self.SPLIT_FILE
        return None

    def data_files(self, data_dir: Path, split: str) -> list[Path]:
        split_file = self._split_file(data_dir)
        return [split_file] if split_file is not None else super().data_files(data_dir, split)

    def pairs(self, data_dir: Path, split: str) -> list[tuple[str, str]]:
        split_file = self._split_file(data_dir)
        if split_file is None:
            return super().pairs(data_dir, split)
        key = {"val": "validation", "test": "test", "train": "train"}.get(split)
        try:
            ids = json.loads(split_file.read_text(encoding="utf-8"))[key]
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{split_file}: expected a JSON object with a {key!r} list of article ids") from None
        return [self._read_summary(split_file.parent / f"{i}.summary") for i in ids]

    @staticmethod
    def _read_summary(path: Path) -> tuple[str, str]:
        """``XSumProcessor.create_examples``: sections start with ``[SN]NAME[SN]``, their non-empty lines joined."""
        if not path.is_file():
            raise DataError(f"{path}: article listed in the split file is missing")
        sections: dict[str, str] = {}
        key, sentences = None, []
        for line in read_lines(path) + ["[SN]END[SN]"]:
            line = line.strip()
            if line.startswith("[SN]"):
                if key is not None:
                    sections[key] = " ".join(sentences)
                key, sentences = line[4:-4], []
            elif line:
                sentences.append(line)
        if "RESTBODY" not in sections or "FIRST-SENTENCE" not in sections:
            raise DataError(f"{path}: expected [SN]FIRST-SENTENCE[SN] and [SN]RESTBODY[SN] sections")
        return sections["RESTBODY"], sections["FIRST-SENTENCE"]


class Gigaword(Summarization):
    name = corpus = "gigaword"
    description = "Gigaword headline generation, beam 5 (seq_gigaword.sh)"
    protocol_source = "scripts/finetune_seq2seq.sh + config_tasks/seq_gigaword.sh"

    def folders(self) -> list[str]:
        return ["gigaword", "summarization/gigaword"]

    def clean(self, line: str, is_target: bool) -> str:
        return gigaword_detokenize(super().clean(line, is_target), is_target)


class SQuADQuestionGeneration(Summarization):
    """SQuAD 1.1 question generation (``seq_squad_generation.sh``, ``SQuADGenerationProcessor``).

    ROUGE is logged as the original computes it: against the *answer* (``tasks/seq2seq/dataset.py:173-179``,
    ``meta["ref"] = DecodeIds(EncodeAsIds(answer))``, which ``rouge_metric`` reads), the default;
    ``--qg-reference question`` compares with the question, the text the model generates. BLEU-4 (corpus, whitespace
    tokens; not computed by the original) is always against the question.
    """

    def __init__(self, option: str | None = None) -> None:
        super().__init__(option)
        self.qg_reference = "answer"

    def configure(self, options: dict[str, Any]) -> None:
        super().configure(options)
        self.qg_reference = options.get("qg_reference", "answer")
        if self.qg_reference not in ("answer", "question"):
            raise ConfigError(f"--qg-reference must be 'answer' or 'question', got {self.qg_reference!r}")

    @property
    def task_id(self) -> str:
        return super().task_id + ("-qref" if self.qg_reference == "question" else "")

    def config(self) -> dict[str, Any]:
        return {**super().config(), "rouge_reference": self.qg_reference}

    def rouge_reference(self, example: Example) -> str:
        return example.data[self.qg_reference]

    name = corpus = "squad_qg"
    description = "SQuAD question generation, beam 5 (seq_squad_generation.sh)"
    protocol_source = "scripts/finetune_seq2seq.sh + config_tasks/seq_squad_generation.sh"
    primary_metric = "bleu4"
    standardize = False

    def data_files(self, data_dir: Path, split: str) -> list[Path]:
        name = {"val": "dev", "test": "test", "train": "train"}.get(split, split)
        folders = ["squad_generation", "squad_qg"]
        return [find_data_file(data_dir, [f"{f}/{name}.json" for f in folders], self.name)]

    def read(self, data_dir: Path, split: str, limit: int | None) -> list[Example]:
        path = self.data_files(data_dir, split)[0]
        try:
            articles = json.loads(path.read_text(encoding="utf-8"))["data"]
            out = []
            for article in articles:
                for paragraph in article["paragraphs"]:
                    for qa in paragraph["qas"]:
                        answers = list(dict.fromkeys(a["text"] for a in qa["answers"]))  # distinct, first kept
                        for answer in answers:
                            data = {"context": paragraph["context"], "question": qa["question"], "answer": answer}
                            out.append(Example(str(len(out)), data))
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}: expected SQuAD JSON (data / paragraphs / qas / answers / text)") from None
        if not out:
            raise DataError(f"{path}: no questions")
        return out[:limit] if limit is not None else out

    def prompt(self, example: Example, ctx: EvalContext) -> GLMInput:
        """``Seq2SeqDataset.__getitem__`` (squad_generation): ``[CLS] context " Question:" [mask] " Answer: " +
        answer``; a long context is cut to a window starting half a budget before the answer's first occurrence."""
        tok, special = ctx.tokenizer, ctx.special
        if special.cls is None:
            raise ConfigError("squad_qg reproduces GLM's [CLS] ... [sMASK] layout; this model (ChatGLM) has no [CLS]")
        mask = special.smask if special.smask is not None else special.mask
        length = self.source_length(ctx)
        source = tok.encode(example.data["context"].rstrip() + " Question:")
        answer = tok.encode(" Answer: " + example.data["answer"])
        budget = length - len(answer) - 2
        if budget < 1:
            raise DataError(f"squad_qg/{example.key}: the answer leaves no room for the context in {length} tokens")
        if len(source) > budget:
            pattern = tok.encode(" " + example.data["answer"])
            starts = [i for i in range(len(source)) if source[i : i + len(pattern)] == pattern]
            start = max(starts[0] - budget // 2, 0) if starts else 0
            source = source[start : start + budget]
        part_a = [special.cls, *source, mask, *answer]
        return padded_prompt(part_a, (1 + len(source),), self.pad_to(ctx), special.pad)

    def reference(self, example: Example) -> str:
        return example.data["question"]

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        out = super().aggregate(records)
        out["bleu4"] = metrics.bleu([r["prediction"] for r in records], [r["reference"] for r in records])
        return out
