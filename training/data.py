"""Pretraining text: a UTF-8 corpus read into documents and tokenized into one stream (spec glm_reference §5).

The stream is every document's ids followed by ``eos`` (int32). :mod:`training.sampler` cuts it into windows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Protocol

import numpy as np

from glm_core.errors import DataError
from glm_core.special_tokens import SpecialTokens

SENTENCE_END_CHARACTERS = ".?!;:。？！；…\n"  # spec §5: a token containing one of these ends a sentence

__all__ = ["SENTENCE_END_CHARACTERS", "TextTokenizer", "read_corpus", "sentence_end_ids", "tokenize_documents"]


class TextTokenizer(Protocol):
    """What this module needs from :class:`glm_core.tokenizer.GLMTokenizer`."""

    special: SpecialTokens
    base_vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def convert_ids_to_tokens(self, ids: int) -> str: ...


def read_corpus(path: str | os.PathLike[str]) -> list[str]:
    """Documents of a UTF-8 text file, split at blank lines; :class:`DataError` when missing, not UTF-8 or empty."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise DataError(f"{name}: corpus file not found; expected a UTF-8 text file")
    with open(name, "rb") as fh:
        data = fh.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{name}: corpus is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "expected UTF-8 text"
        ) from None
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    documents = [block.strip() for block in text.split("\n\n")]
    documents = [d for d in documents if d]
    if not documents:
        raise DataError(f"{name}: corpus is empty; expected UTF-8 text, documents separated by blank lines")
    return documents


def tokenize_documents(documents: Iterable[str], tokenizer: TextTokenizer, source: str = "corpus") -> np.ndarray:
    """The token stream: each document's ids followed by ``eos`` (int32 ``[N]``)."""
    eos = tokenizer.special.eos
    pieces: list[np.ndarray] = []
    for doc in documents:
        ids = tokenizer.encode(doc)
        if ids:
            pieces.append(np.asarray([*ids, eos], dtype=np.int32))
    if not pieces:
        raise DataError(f"{source}: no tokens after tokenization; expected non-empty documents")
    return np.concatenate(pieces)


def sentence_end_ids(tokenizer: TextTokenizer) -> list[int]:
    """Ids of the pieces that end a sentence (spec §5: tokens holding . ? ! ; : 。 ？ ！ ； … or a newline) + eos."""
    ends = [
        i
        for i in range(tokenizer.base_vocab_size)
        if any(ch in SENTENCE_END_CHARACTERS for ch in tokenizer.convert_ids_to_tokens(i))
    ]
    return [*ends, tokenizer.special.eos]
