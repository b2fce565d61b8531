"""Pretraining text: a UTF-8 corpus read into documents and tokenized into one stream (spec glm_reference §5).

The stream is every document's ids followed by ``eos`` (int32). :mod:`training.sampler` cuts it into windows.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterable, Iterator
from typing import Protocol

import numpy as np

from glm_core.errors import DataError
from glm_core.special_tokens import SpecialTokens

SENTENCE_END_CHARACTERS = ".?!;:。？！；…\n"  # spec §5: a token containing one of these ends a sentence
CHUNK_BYTES = 1 << 22  # corpus bytes read at a time

__all__ = [
    "SENTENCE_END_CHARACTERS",
    "TextTokenizer",
    "iter_corpus_documents",
    "iter_document_ids",
    "read_corpus",
    "sentence_end_ids",
    "tokenize_documents",
]


class TextTokenizer(Protocol):
    """What this module needs from :class:`glm_core.tokenizer.GLMTokenizer`."""

    special: SpecialTokens
    base_vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def convert_ids_to_tokens(self, ids: int) -> str: ...


def read_corpus(path: str | os.PathLike[str]) -> list[str]:
    """Documents of a UTF-8 text file, split at blank lines; :class:`DataError` when missing, not UTF-8 or empty."""
    return list(iter_corpus_documents(path))


def iter_corpus_documents(path: str | os.PathLike[str], chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """The documents of :func:`read_corpus`, read ``chunk_bytes`` at a time: memory stays that of a few documents.

    The text is that of the whole file: a leading byte-order mark dropped, ``\\r\\n`` and ``\\r`` read as ``\\n``,
    documents split at blank lines (``\\n\\n``) and stripped, empty ones skipped. Raises :class:`DataError` when the file
    is missing, when a byte is not UTF-8 (at that point: documents before it were already yielded) or when it holds
    no document.
    """
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise DataError(f"{name}: corpus file not found; expected a UTF-8 text file")
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    fed = 0  # bytes handed to the decoder so far
    at_start, carry = True, ""  # carry: a trailing "\r" that may begin "\r\n"
    pending: list[str] = []  # text after the last blank line, in pieces without a blank line between them
    found = False
    with open(name, "rb") as fh:
        while True:
            data = fh.read(chunk_bytes)
            final = not data
            buffered = len(decoder.getstate()[0])
            try:
                text = decoder.decode(data, final)
            except UnicodeDecodeError as exc:
                offset = fed - buffered + exc.start
                raise DataError(
                    f"{name}: corpus is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {offset}); "
                    "expected UTF-8 text"
                ) from None
            fed += len(data)
            if at_start:
                text = text.lstrip("\ufeff")
                at_start = not text
            text = carry + text
            carry = ""
            if not final and text.endswith("\r"):
                text, carry = text[:-1], "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            if "\n\n" in (pending[-1][-1:] if pending else "") + text[:1] or "\n\n" in text:
                blocks = "".join([*pending, text]).split("\n\n")
                pending = [blocks.pop()]
            else:
                blocks = []
                if text:
                    pending.append(text)
            if final:
                blocks.append("".join(pending))
            for block in blocks:
                document = block.strip()
                if document:
                    found = True
                    yield document
            if final:
                break
    if not found:
        raise DataError(f"{name}: corpus is empty; expected UTF-8 text, documents separated by blank lines")


def iter_document_ids(documents: Iterable[str], tokenizer: TextTokenizer) -> Iterator[list[int]]:
    """Each document's ids followed by ``eos``; a document without tokens is skipped (it gets no ``eos`` either)."""
    eos = tokenizer.special.eos
    for doc in documents:
        ids = tokenizer.encode(doc)
        if ids:
            yield [*ids, eos]


def tokenize_documents(documents: Iterable[str], tokenizer: TextTokenizer, source: str = "corpus") -> np.ndarray:
    """The token stream: :func:`iter_document_ids` of every document, concatenated (int32 ``[N]``)."""
    pieces = [np.asarray(ids, dtype=np.int32) for ids in iter_document_ids(documents, tokenizer)]
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
