"""Language-model perplexity with rolling windows (spec §6.3), as ``config_tasks/zero_lm*.sh`` and
``zero_wikitext.sh`` of the original (``tasks/language_model/dataset.py``, ``finetune.py``), torch-free.

Tasks:

- ``lm`` (``zero_lm.sh``): every ``*.txt`` under ``<data_dir>/lm/``; **each line is a document**
  (``build_lm_dataset``: ``tokenizer.EncodeAsIds(line.strip())``), scored on its own. ``lm:stream`` scores each
  file as one token stream, newlines included (not the paper's protocol).
- ``lm_uni`` (``zero_lm_uni.sh``): as ``lm`` with ``--unidirectional`` windows (Part A = ``[CLS] w0 [gMASK]``).
- ``wikitext`` (``zero_wikitext.sh``): ``<data_dir>/wikitext-103/wiki.test.tokens`` as one document after the
  original's ``wikitext_detokenizer``; ``wikitext_uni`` the same with ``--unidirectional`` windows (the README's
  "GLM-10B (uni)" Wikitext-103 row).

Windows of ``seq_len - 1`` tokens, stride 256 (``--overlapping-eval 256``; half the length when that is shorter):
``glm_core.layout.build_rolling_windows``; every token of a document but its first is scored once. ``seq_len`` is 512
(``lm``, ``lm_uni``) or 1024 (``wikitext``), the scripts' ``--seq-length``, unless ``--seq-length`` says otherwise.

Metrics as ``evaluate_and_print_results`` (``finetune.py:169-181``): ``loss = NLL / (T - 1)`` where ``T`` counts
every token of every document (so the divisor includes the documents' unscored first tokens), ``ppl =
exp(min(20, loss))``, and the "adjusted" word perplexity ``exp(min(20, loss * (T - 1) / (W - 1)))`` where ``W`` is
the number of ``" "``-separated words of the raw text (``len(line.strip().split(" "))`` per line; for Wikitext, of the
whole file before detokenization).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.tasks.base import EvalContext, Example, Task, find_data_file
from glm_core.errors import ConfigError, DataError

STRIDE = 256  # zero_lm.sh / zero_wikitext.sh: --overlapping-eval 256
MAX_LOSS = 20.0  # finetune.py: math.exp(min(20, val_loss))


def wikitext_detokenizer(string: str) -> str:
    """The original's ``tasks/language_model/detokenizer.py`` ``wikitext_detokenizer``, rule for rule."""
    # contractions
    string = string.replace("s '", "s'")
    string = re.sub(r"/' [0-9]/", r"/'[0-9]/", string)
    # number separators
    string = string.replace(" @-@ ", "-")
    string = string.replace(" @,@ ", ",")
    string = string.replace(" @.@ ", ".")
    # punctuation
    string = string.replace(" : ", ": ")
    string = string.replace(" ; ", "; ")
    string = string.replace(" . ", ". ")
    string = string.replace(" ! ", "! ")
    string = string.replace(" ? ", "? ")
    string = string.replace(" , ", ", ")
    # double brackets
    string = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", string)
    string = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", string)
    string = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", string)
    string = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', string)
    string = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", string)
    # miscellaneous
    string = string.replace("= = = =", "====")
    string = string.replace("= = =", "===")
    string = string.replace("= =", "==")
    string = string.replace(" " + chr(176) + " ", chr(176))
    string = string.replace(" \n", "\n")
    string = string.replace("\n ", "\n")
    string = string.replace(" N ", " 1 ")
    string = string.replace(" 's", "'s")
    return string


def _read_text(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not text.strip():
        raise DataError(f"{path}: empty data file; expected raw text")
    return text


class LanguageModel(Task):
    name = "lm"
    description = "rolling-window perplexity, one document per line (zero_lm.sh, spec §6.3)"
    primary_metric = "ppl"
    seq_length = 512  # zero_lm.sh: --seq-length 512
    protocol_source = "scripts/evaluate_lm.sh + config_tasks/zero_lm.sh"
    unidirectional = False

    def __init__(self, option: str | None = None) -> None:
        if option not in (None, "stream"):
            raise ConfigError(f"task {self.name!r}: unknown option {option!r}; expected {self.name}:stream or none")
        self.stream = option == "stream"

    @property
    def task_id(self) -> str:
        return f"{self.name}-stream" if self.stream else self.name

    def data_files(self, data_dir: Path, split: str) -> list[Path]:
        folder = data_dir / "lm"
        files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
        if not files:
            raise DataError(f"task {self.name!r}: no *.txt file in {folder}")
        return files

    def config(self) -> dict[str, Any]:
        return {
            "stride": STRIDE,
            "documents": "whole file" if self.stream else "one per line",
            "unidirectional": self.unidirectional,
            "divisor": "all tokens - 1",
        }

    def documents(self, text: str) -> tuple[list[str], int]:
        """The texts scored as documents and the word count ``W`` of the file."""
        if self.stream:
            return [text], len(text.split())
        lines = text.split("\n")  # `for line in file`: a final newline ends the last line, it starts none
        if lines[-1] == "":
            lines.pop()
        return [line.strip() for line in lines], sum(len(line.strip().split(" ")) for line in lines)

    def read(self, data_dir: Path, split: str, limit: int | None) -> list[Example]:
        out = []
        for path in self.data_files(data_dir, split)[:limit]:
            docs, words = self.documents(_read_text(path))
            out.append(Example(path.name, {"documents": docs, "num_words": words}))
        return out

    def predict(self, examples: Sequence[Example], ctx: EvalContext) -> list[dict[str, Any]]:
        seq_len = ctx.max_length
        stride = min(STRIDE, seq_len // 2)
        records = []
        for ex in examples:
            docs = [ctx.tokenizer.encode(d) for d in ex.data["documents"]]
            num_tokens = sum(len(d) for d in docs)
            if num_tokens < 2:
                raise DataError(f"{self.name}/{ex.key}: fewer than two tokens; nothing to score")
            scored = [d for d in docs if len(d) >= 2]  # a one-token document has nothing to score
            scores = ctx.scorer.loglikelihood_rolling(
                scored, seq_len=seq_len, stride=stride, unidirectional=self.unidirectional, desc=f"{self.name} {ex.key}"
            )
            records.append(
                {
                    "key": ex.key,
                    "logprob": sum(s.total for s in scores),
                    "num_scored": sum(s.num_tokens for s in scores),
                    "num_tokens": num_tokens,
                    "num_documents": len(docs),
                    "num_words": ex.data["num_words"],
                }
            )
        return records

    def aggregate(self, records: Sequence[dict[str, Any]]) -> dict[str, float]:
        nll = -sum(r["logprob"] for r in records)
        divisor = sum(r["num_tokens"] - 1 for r in records)  # finetune.py:173 num_tokenized_tokens - 1
        words = sum(r["num_words"] - 1 for r in records)  # finetune.py:175 num_original_tokens - 1
        loss = nll / divisor if divisor > 0 else math.inf
        return {
            "ppl": math.exp(min(MAX_LOSS, loss)),
            "word_ppl": math.exp(min(MAX_LOSS, loss * divisor / words)) if words > 0 else math.inf,
            "loss": loss,
            "tokens": float(sum(r["num_scored"] for r in records)),
            "divisor": float(divisor),
        }


class LanguageModelUni(LanguageModel):
    name = "lm_uni"
    description = "rolling-window perplexity, unidirectional windows (zero_lm_uni.sh)"
    protocol_source = "scripts/evaluate_lm.sh + config_tasks/zero_lm_uni.sh"
    unidirectional = True


class Wikitext(LanguageModel):
    name = "wikitext"
    description = "Wikitext-103 test perplexity after the original's detokenizer (zero_wikitext.sh)"
    seq_length = 1024  # zero_wikitext.sh: --seq-length 1024
    protocol_source = "scripts/evaluate_lm.sh + config_tasks/zero_wikitext.sh"

    def __init__(self, option: str | None = None) -> None:
        Task.__init__(self, option)
        self.stream = True

    @property
    def task_id(self) -> str:
        return self.name

    def data_files(self, data_dir: Path, split: str) -> list[Path]:
        names = ["wikitext-103/wiki.test.tokens", "wikitext/wiki.test.tokens", "wiki.test.tokens"]
        return [find_data_file(data_dir, names, self.name)]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "documents": "whole file after wikitext_detokenizer"}

    def documents(self, text: str) -> tuple[list[str], int]:
        # build_wikitext103_dataset: words counted on the raw file, then the whole file detokenized
        return [wikitext_detokenizer(text)], len(text.strip().split(" "))


class WikitextUni(Wikitext):
    name = "wikitext_uni"
    description = "Wikitext-103 perplexity, unidirectional windows (zero_wikitext.sh + --unidirectional)"
    protocol_source = "scripts/evaluate_lm.sh + config_tasks/zero_wikitext.sh with --unidirectional"
    unidirectional = True
