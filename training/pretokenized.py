"""A corpus tokenized once, kept on disk and memory-mapped by every process that trains on it (torch-free).

``glm-train pretokenize CORPUS OUT`` writes the directory ``OUT``:

- ``tokens.bin``: the token stream of :func:`training.data.tokenize_documents` (every non-empty document's ids, then
  ``eos``), raw little-endian ``uint16`` when every id of the tokenizer fits, else ``int32``;
- ``doc_index.npy``: ``int64 [documents + 1]``, the offset in the stream where each document starts, then the stream
  length (document ``d`` is ``tokens[index[d]:index[d + 1]]``, its ``eos`` included);
- ``meta.json``: format and version, dtype, token and document counts, the tokenizer (family, vocabulary size,
  fingerprint of its files) and the source corpus (name, size in bytes).

The corpus is read and tokenized a chunk of documents at a time and appended to ``tokens.bin``, so memory stays flat
whatever the corpus size. Everything is written into a staging directory beside ``OUT`` that is renamed into place at
the end (:mod:`glm_core.atomic`): a failed or killed run leaves no ``OUT`` behind.

``glm-train pretrain --data OUT`` opens ``tokens.bin`` with :func:`open_pretokenized` as a read-only
:class:`numpy.memmap`: a process holds only the pages of the windows it samples, and the sampler sees the same stream
(the same values) as with ``--corpus``, so the batches are the same bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from glm_core.atomic import staged_directory
from glm_core.errors import ConfigError, DataError
from glm_core.outputs import check_output, foreign_to, write_marker
from training.data import TextTokenizer, iter_corpus_documents, iter_document_ids

FORMAT = "glm-pretokenized"
FORMAT_VERSION = 1
TOKENS_FILE = "tokens.bin"
INDEX_FILE = "doc_index.npy"
META_FILE = "meta.json"
TOOL = "glm-train pretokenize"
BATCH_TOKENS = 1 << 18  # tokens gathered before they are appended to tokens.bin
DTYPES = {"uint16": np.dtype("<u2"), "int32": np.dtype("<i4")}

__all__ = [
    "FORMAT_VERSION",
    "INDEX_FILE",
    "META_FILE",
    "TOKENS_FILE",
    "document_index",
    "open_pretokenized",
    "pretokenize",
    "read_meta",
    "stream_dtype",
]


class FingerprintedTokenizer(TextTokenizer, Protocol):
    """What writing and checking a pretokenized directory needs: :class:`glm_core.tokenizer.GLMTokenizer`."""

    family: str
    vocab_size: int

    def fingerprint(self) -> str: ...


def stream_dtype(vocab_size: int) -> str:
    """``uint16`` when every id ``< vocab_size`` fits in 16 bits, else ``int32``."""
    return "uint16" if vocab_size <= 1 << 16 else "int32"


def tokenizer_record(tokenizer: FingerprintedTokenizer) -> dict[str, Any]:
    return {
        "family": tokenizer.family,
        "vocab_size": int(tokenizer.vocab_size),
        "fingerprint": tokenizer.fingerprint(),
        "eos": int(tokenizer.special.eos),
    }


# ------------------------------------------------------------------------------------------------------- writing
def pretokenize(
    corpus: str | os.PathLike[str],
    out: str | os.PathLike[str],
    tokenizer: FingerprintedTokenizer,
    *,
    overwrite: bool = False,
    chunk_bytes: int | None = None,
) -> dict[str, Any]:
    """Tokenize ``corpus`` into the directory ``out`` (see the module docstring); returns its ``meta.json``.

    Raises :class:`DataError` (nothing written) for a missing, non-UTF-8 or empty corpus and for an existing ``out``
    unless ``overwrite``; with ``overwrite`` the old ``out`` is replaced only once the new one is complete.
    """
    source = os.fspath(corpus)
    target = Path(out)
    if not os.path.isfile(source):
        raise DataError(f"{source}: corpus file not found; expected a UTF-8 text file")
    check_output(
        target,
        overwrite=overwrite,
        flag="OUT",
        foreign=lambda p: foreign_to(
            p, {TOOL}, signature=(META_FILE, TOKENS_FILE), expected={META_FILE, TOKENS_FILE, INDEX_FILE}.__contains__
        ),
        what="a pretokenized corpus",
        make_parents=True,
        error=DataError,
    )
    created = _missing_ancestor(target.parent)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with staged_directory(target) as staging:
            meta = _write(source, staging, tokenizer, chunk_bytes)
            write_marker(staging, TOOL)
    except BaseException as exc:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)  # directories made for OUT, holding nothing else
        if isinstance(exc, OSError):  # unreadable corpus, unwritable OUT, full disk
            raise DataError(f"{target}: cannot pretokenize {source} ({exc.strerror or exc})") from None
        raise
    return meta


def _missing_ancestor(directory: Path) -> Path | None:
    """The outermost missing directory on the way to ``directory`` (``None`` when it exists)."""
    missing = None
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def _write(source: str, staging: Path, tokenizer: FingerprintedTokenizer, chunk_bytes: int | None) -> dict[str, Any]:
    dtype_name = stream_dtype(tokenizer.vocab_size)
    dtype = DTYPES[dtype_name]
    starts_path = staging / ".doc_starts.tmp"
    total, documents = 0, 0
    kwargs = {} if chunk_bytes is None else {"chunk_bytes": chunk_bytes}
    with open(staging / TOKENS_FILE, "wb") as tokens_fh, open(starts_path, "wb") as starts_fh:

        def flush(ids: list[int], starts: list[int]) -> None:
            if not ids:
                return
            values = np.asarray(ids, dtype=np.int64)
            if int(values.min()) < 0 or int(values.max()) > np.iinfo(dtype).max:
                raise DataError(f"{source}: token id outside {dtype_name} (tokenizer vocab {tokenizer.vocab_size})")
            tokens_fh.write(values.astype(dtype).tobytes())
            starts_fh.write(np.asarray(starts, dtype="<i8").tobytes())

        ids: list[int] = []
        starts: list[int] = []
        for document_ids in iter_document_ids(iter_corpus_documents(source, **kwargs), tokenizer):
            starts.append(total)
            ids.extend(document_ids)
            total += len(document_ids)
            documents += 1
            if len(ids) >= BATCH_TOKENS:
                flush(ids, starts)
                ids, starts = [], []
        flush(ids, starts)
        tokens_fh.flush()
        os.fsync(tokens_fh.fileno())
    if total == 0:
        raise DataError(f"{source}: no tokens after tokenization; expected non-empty documents")
    index = np.lib.format.open_memmap(staging / INDEX_FILE, mode="w+", dtype="<i8", shape=(documents + 1,))
    index[:documents] = np.memmap(starts_path, dtype="<i8", mode="r", shape=(documents,))
    index[documents] = total
    index.flush()
    del index
    starts_path.unlink()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dtype": dtype_name,
        "tokens": total,
        "documents": documents,
        "tokenizer": tokenizer_record(tokenizer),
        "source": {"name": os.path.basename(source), "bytes": os.path.getsize(source)},
    }
    (staging / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return meta


# ------------------------------------------------------------------------------------------------------- reading
def read_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``meta.json`` of a pretokenized directory, checked; :class:`DataError` when absent, malformed or unknown."""
    root = Path(directory)
    expected = "expected a directory written by glm-train pretokenize"
    if not root.is_dir():
        raise DataError(f"{root}: pretokenized data not found; {expected}")
    path = root / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{root}: no {META_FILE}; {expected}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); {expected}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} meta file; {expected}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: format_version {meta.get('format_version')!r}, this version reads {FORMAT_VERSION}; "
            "run glm-train pretokenize again"
        )
    tokens, documents = meta.get("tokens"), meta.get("documents")
    if meta.get("dtype") not in DTYPES or not isinstance(tokens, int) or not isinstance(documents, int):
        raise DataError(f"{path}: dtype, tokens or documents missing or invalid; {expected}")
    if tokens < 1 or documents < 1 or not isinstance(meta.get("tokenizer"), dict):
        raise DataError(f"{path}: tokens, documents or tokenizer invalid; {expected}")
    return meta


def open_pretokenized(directory: str | os.PathLike[str], tokenizer: FingerprintedTokenizer) -> np.memmap:
    """The token stream of a :func:`pretokenize` directory as a read-only memmap (nothing is read into memory).

    :class:`DataError` for a missing, malformed or truncated directory; :class:`ConfigError` when it was written with
    another tokenizer than ``tokenizer`` (family, vocabulary size or the fingerprint of its files differ).
    """
    root = Path(directory)
    meta = read_meta(root)
    stored, mine = meta["tokenizer"], tokenizer_record(tokenizer)
    for key, what in (("family", "family"), ("vocab_size", "vocabulary size"), ("fingerprint", "fingerprint")):
        if stored.get(key) != mine[key]:
            raise ConfigError(
                f"{root}: tokenized with another tokenizer ({what} {stored.get(key)!r}, this run's tokenizer has "
                f"{mine[key]!r}); run glm-train pretokenize with this tokenizer, or pass the tokenizer it was made with"
            )
    dtype = DTYPES[meta["dtype"]]
    tokens_path = root / TOKENS_FILE
    size = tokens_path.stat().st_size if tokens_path.is_file() else None
    if size != meta["tokens"] * dtype.itemsize:
        found = "missing" if size is None else f"{size} bytes"
        raise DataError(
            f"{tokens_path}: {found}, expected {meta['tokens'] * dtype.itemsize} ({meta['tokens']} {meta['dtype']} "
            "tokens); the directory is damaged, run glm-train pretokenize again"
        )
    try:
        index = np.load(root / INDEX_FILE, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{root / INDEX_FILE}: unreadable ({exc}); run glm-train pretokenize again") from None
    if index.shape != (meta["documents"] + 1,):
        raise DataError(f"{root / INDEX_FILE}: shape {index.shape}, expected ({meta['documents'] + 1},)")
    return np.memmap(tokens_path, dtype=dtype, mode="r", shape=(meta["tokens"],))


def document_index(directory: str | os.PathLike[str]) -> np.ndarray:
    """``doc_index.npy`` of a pretokenized directory, memory-mapped (see the module docstring)."""
    return np.load(Path(directory) / INDEX_FILE, mmap_mode="r")
