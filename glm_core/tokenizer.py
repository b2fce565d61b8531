"""GLM tokenizers: BERT WordPiece, GPT-2 / RoBERTa byte-level BPE and SentencePiece, with GLM's command tokens.

Torch-free (DESIGN.md). The text models come from the ``tokenizers`` and ``sentencepiece`` libraries; this module adds
what GLM puts around them (spec glm_reference §3.2):

- command tokens (``[MASK]``, ``[gMASK]``, ``[sMASK]``, ``<|startofpiece|>``, ...) with the ids of the family's token
  table, in the ``original`` convention (the ids the checkpoints were trained with) or the ``hf`` one (hub
  added_tokens.json) - see :mod:`glm_core.special_tokens` for the three places where they differ;
- the original whitespace rule: text is split on command strings, each piece is tokenized on its own, and only the
  whitespace *before* a blank token ([MASK]/[gMASK]/[sMASK]) is dropped, so ``" (formerly"`` after a mask keeps its
  space (byte-level BPE: ``Ġ(``);
- ids padded to a multiple of 128 rows (spec §1.6).

Directory layout read by :meth:`GLMTokenizer.from_pretrained` (hub layout): ``vocab.txt`` | ``vocab.json`` +
``merges.txt`` | ``*.model``, optionally ``tokenizer_config.json`` / ``added_tokens.json`` from the hub and our own
``glm_tokenizer.json`` (family, convention, model name, special ids) written by :meth:`GLMTokenizer.save_pretrained`.
A ChatGLM-6B directory (``ice_text.model``, tokenizer class ``ChatGLMTokenizer``) loads as
:class:`glm_core.chatglm_tokenizer.ChatGLMTokenizer`, which has the same interface and its own text rules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import operator
import os
import re
from collections.abc import Iterable
from typing import Any

import sentencepiece as spm
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from glm_core.atomic import write_bytes_atomically
from glm_core.chatglm_tokenizer import ChatGLMTokenizer
from glm_core.errors import ConfigError, TokenizerError
from glm_core.special_tokens import CONVENTIONS, SpecialTokens, special_tokens_for, token_strings_for
from glm_core.tokenizer_common import (
    SpecialIdAccessors,
    as_text,
    decode_utf8,
    load_json,
    padded_size,
    read_bytes,
    read_json_object,
)

FAMILIES = ("bert", "gpt2", "roberta", "sentencepiece", "chatglm")
# Original ids for the English families (what the checkpoints saw); the Chinese models are used through the hub.
DEFAULT_CONVENTION = {
    "bert": "original",
    "gpt2": "original",
    "roberta": "original",
    "sentencepiece": "hf",
    "chatglm": "hf",
}

META_FILE = "glm_tokenizer.json"
META_FORMAT_VERSION = 1
BERT_VOCAB_FILE = "vocab.txt"
BPE_VOCAB_FILE = "vocab.json"
BPE_MERGES_FILE = "merges.txt"
SENTENCEPIECE_FILES = ("cog-pretrain.model", "spiece.model", "tokenizer.model", "sentencepiece.model")
CHATGLM_FILE = "ice_text.model"  # ChatGLM-6B's SentencePiece model (glm_core.chatglm_tokenizer)

# Roles in the order that decides which name an id shared by several roles gets (trap 3: eop before gMASK).
_ROLE_ORDER = ("pad", "cls", "sep", "mask", "unk", "sop", "eop", "smask", "gmask")
_BLANK_ROLES = ("mask", "smask", "gmask")  # lstrip=True in the original code (spec §3.2)

# Hub tokenizer classes -> family (tokenizer_config.json "tokenizer_class").
_HUB_CLASSES = {
    "GLMBertTokenizer": "bert",
    "BertTokenizer": "bert",
    "BertTokenizerFast": "bert",
    "GLMGPT2Tokenizer": "gpt2",
    "GPT2Tokenizer": "gpt2",
    "GPT2TokenizerFast": "gpt2",
    "GLMRobertaTokenizer": "roberta",
    "RobertaTokenizer": "roberta",
    "RobertaTokenizerFast": "roberta",
    "GLMChineseTokenizer": "sentencepiece",
    "ChatGLMTokenizer": "chatglm",
}

# Command tokens that live inside the base vocabulary (spec §3.2 table): a command id below the base size must land
# on one of these entries, never on an ordinary word.
_RESERVED_BASE_TOKENS = {
    "bert": frozenset({"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}),
    "gpt2": frozenset({"<|endoftext|>"}),
    "roberta": frozenset({"<s>", "<pad>", "</s>", "<unk>", "<mask>"}),
    "sentencepiece": frozenset(),
}
# Base-vocabulary entries whose id the token table fixes in both conventions; a vocabulary holding them elsewhere
# does not belong to the family.
_PINNED_BASE_TOKENS = {
    "bert": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "gpt2": {"eos": "<|endoftext|>"},
    "roberta": {"cls": "<s>", "eos": "</s>", "unk": "<unk>"},
    "sentencepiece": {},
}

_UNUSED_TOKEN = re.compile(r"<\|unused_(\d+)\|>")


# ---------------------------------------------------------------------------------------------------------- backends
class _WordPieceBackend:
    """BERT WordPiece (``vocab.txt``): BERT normalizer (lowercase for the uncased GLM models), BERT pre-tokenizer."""

    def __init__(self, vocab_bytes: bytes, path: str, lowercase: bool = True) -> None:
        tokens = self._parse(vocab_bytes, path)
        if "[UNK]" not in tokens:
            raise TokenizerError(f"{path}: WordPiece vocabulary has no [UNK] entry; expected BERT's vocab.txt layout")
        self.source = path
        self.raw = vocab_bytes
        self.lowercase = lowercase
        self.tokens = tokens
        self.vocab = {tok: i for i, tok in enumerate(tokens)}
        tk = Tokenizer(models.WordPiece(self.vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        # strip_accents=None follows lowercase, as BERT's BasicTokenizer does.
        tk.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
        )
        tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)
        self._tk = tk

    @staticmethod
    def _parse(data: bytes, path: str) -> list[str]:
        lines = decode_utf8(data, path).split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the newline that ends the last entry
        seen: dict[str, int] = {}
        for i, tok in enumerate(lines):
            if tok == "":
                raise TokenizerError(f"{path}: line {i + 1} is empty; expected one WordPiece token per line")
            if tok in seen:
                raise TokenizerError(f"{path}: token {tok!r} appears on lines {seen[tok] + 1} and {i + 1}")
            seen[tok] = i
        if not lines:
            raise TokenizerError(f"{path}: empty vocabulary; expected one WordPiece token per line")
        return lines

    @property
    def base_size(self) -> int:
        return len(self.tokens)

    def files(self) -> dict[str, bytes]:
        return {BERT_VOCAB_FILE: self.raw}

    def encode(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=False).ids

    def id_to_token(self, i: int) -> str:
        return self.tokens[i]

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def append_run(self, out: str, ids: list[int]) -> str:
        text = self._tk.decode(ids, skip_special_tokens=False)
        return f"{out} {text}" if out and text else out + text

    def append_command(self, out: str, token: str, blank: bool) -> str:
        return f"{out} {token}" if out else token


class _ByteLevelBPEBackend:
    """GPT-2 / RoBERTa byte-level BPE (``vocab.json`` + ``merges.txt``), no prefix space, as GPT-2 encodes."""

    def __init__(self, vocab_bytes: bytes, merges_bytes: bytes, vocab_path: str, merges_path: str) -> None:
        self.vocab = parse_bpe_vocab(vocab_bytes, vocab_path)
        merges = self._parse_merges(merges_bytes, merges_path, self.vocab)
        self.source = vocab_path
        self.raw_vocab = vocab_bytes
        self.raw_merges = merges_bytes
        self.tokens = [""] * len(self.vocab)
        for tok, i in self.vocab.items():
            self.tokens[i] = tok
        try:
            model = models.BPE(self.vocab, merges, dropout=None, unk_token=None, fuse_unk=False, byte_fallback=False)
        except Exception as exc:  # the library raises a bare Exception for an inconsistent vocab/merges pair
            raise TokenizerError(f"{merges_path}: cannot build the BPE model ({exc})") from None
        tk = Tokenizer(model)
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tk.decoder = decoders.ByteLevel()
        self._tk = tk

    @staticmethod
    def _parse_merges(data: bytes, path: str, vocab: dict[str, int]) -> list[tuple[str, str]]:
        merges: list[tuple[str, str]] = []
        for n, line in enumerate(decode_utf8(data, path).split("\n"), start=1):
            line = line.rstrip("\r")
            if not line or (n == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not all(parts):
                raise TokenizerError(f"{path}: line {n}: expected two tokens separated by one space, got {line!r}")
            a, b = parts
            # Checked here: the tokenizers library aborts (uncatchable panic) on a merge result missing from the vocab.
            for tok in (a, b, a + b):
                if tok not in vocab:
                    raise TokenizerError(f"{path}: line {n}: merge {line!r} uses {tok!r}, which is not in vocab.json")
            merges.append((a, b))
        return merges

    @property
    def base_size(self) -> int:
        return len(self.tokens)

    def files(self) -> dict[str, bytes]:
        return {BPE_VOCAB_FILE: self.raw_vocab, BPE_MERGES_FILE: self.raw_merges}

    def encode(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=False).ids

    def id_to_token(self, i: int) -> str:
        return self.tokens[i]

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    def append_run(self, out: str, ids: list[int]) -> str:
        return out + self._tk.decode(ids, skip_special_tokens=False)  # spaces travel inside the tokens (Ġ)

    def append_command(self, out: str, token: str, blank: bool) -> str:
        # A blank token ate the whitespace before it at encode time (lstrip); give one space back.
        if blank and out and not out[-1].isspace():
            out += " "
        return out + token


class _SentencePieceBackend:
    """A SentencePiece model; pieces keep their own ids (``<unk>`` = 0, spec §3.2: rare characters map to it)."""

    def __init__(self, model_bytes: bytes, path: str) -> None:
        try:
            sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        except Exception as exc:  # RuntimeError from the C++ parser
            raise TokenizerError(f"{path}: not a valid SentencePiece model ({exc})") from None
        if sp.get_piece_size() <= 0:
            raise TokenizerError(f"{path}: SentencePiece model has no pieces")
        self.source = path
        self.file_name = os.path.basename(path)
        self.raw = model_bytes
        self._sp = sp

    @property
    def base_size(self) -> int:
        return self._sp.get_piece_size()

    def files(self) -> dict[str, bytes]:
        return {self.file_name: self.raw}

    def encode(self, text: str) -> list[int]:
        # spec §3.2: raw text goes to EncodeAsIds (no "\n" -> "<n>" mapping in the GLM code).
        return self._sp.encode(text, out_type=int)

    def id_to_token(self, i: int) -> str:
        return self._sp.id_to_piece(i)

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        return i if self._sp.id_to_piece(i) == token else None

    def append_run(self, out: str, ids: list[int]) -> str:
        text = self._sp.decode(ids)
        # Every piece run was encoded on its own with a dummy "▁" prefix; keep the word boundary it marks.
        if out and not out[-1].isspace() and self._sp.id_to_piece(ids[0]).startswith("\u2581"):
            text = " " + text
        return out + text

    def append_command(self, out: str, token: str, blank: bool) -> str:
        if blank and out and not out[-1].isspace():
            out += " "
        return out + token


_Backend = _WordPieceBackend | _ByteLevelBPEBackend | _SentencePieceBackend


def parse_bpe_vocab(data: bytes, path: str) -> dict[str, int]:
    """``vocab.json``: a JSON object token -> id with ids ``0..N-1``, each once."""
    vocab = load_json(data, path)
    if not isinstance(vocab, dict) or not vocab:
        raise TokenizerError(f"{path}: expected a non-empty JSON object mapping token -> id")
    seen: dict[int, str] = {}
    for tok, i in vocab.items():
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise TokenizerError(f"{path}: id of token {tok!r} must be a non-negative integer, got {i!r}")
        if i in seen:
            raise TokenizerError(f"{path}: id {i} is used by both {seen[i]!r} and {tok!r}")
        seen[i] = tok
    if max(seen) != len(seen) - 1:
        missing = next(i for i in range(len(seen)) if i not in seen)
        raise TokenizerError(f"{path}: ids must run 0..{len(seen) - 1} without gaps; id {missing} is missing")
    return vocab


# --------------------------------------------------------------------------------------------------------- tokenizer
class GLMTokenizer(SpecialIdAccessors):
    """One GLM tokenizer: a text model plus the family's command tokens (spec §3.2).

    Build it with :meth:`from_pretrained`. ``encode`` adds no ``[CLS]``/eos: building GLM inputs is
    :mod:`glm_core.layout`'s job.
    """

    def __init__(
        self, backend: _Backend, family: str, convention: str, special: SpecialTokens, model_name: str = ""
    ) -> None:
        if family not in FAMILIES:
            raise ConfigError(f"unknown tokenizer family {family!r}; expected one of {FAMILIES}")
        if convention not in CONVENTIONS:
            raise ConfigError(f"token convention must be one of {CONVENTIONS}, got {convention!r}")
        self._backend = backend
        self.family = family
        self.convention = convention
        self.model_name = model_name
        self.special = special
        self.base_vocab_size = backend.base_size
        self.vocab_size = max(backend.base_size, max(self._all_special_ids()) + 1)
        self.padded_vocab_size = padded_size(self.vocab_size)
        self._build_command_tables()
        self._check_against_vocab()

    def _build_command_tables(self) -> None:
        strings = token_strings_for(self.family)
        self._string_to_id: dict[str, int] = {}
        self._id_to_string: dict[int, str] = {}
        for role in _ROLE_ORDER:
            i = getattr(self.special, role)
            if i is None:
                continue
            self._string_to_id[strings[role]] = i
            self._id_to_string.setdefault(i, strings[role])  # first role in _ROLE_ORDER names a shared id
        self._id_to_string.setdefault(self.special.eos, "<|endoftext|>")
        for i in self.special.bad_words:
            self._id_to_string.setdefault(i, f"<|unused_{i}|>")
        blank_ids = {getattr(self.special, r) for r in _BLANK_ROLES} - {None}
        # An id is a blank only if that is its name: trap 3's original gMASK = eop decodes as eop.
        self._blank_ids = {i for i in blank_ids if self._id_to_string[i] in {strings[r] for r in _BLANK_ROLES}}
        self._blank_strings = {strings[r] for r in _BLANK_ROLES if getattr(self.special, r) is not None}
        by_length = sorted(self._string_to_id, key=len, reverse=True)
        self._split_pattern = re.compile("|".join(re.escape(s) for s in by_length))

    def _check_against_vocab(self) -> None:
        """Command ids and the base vocabulary must agree (a wrong family or vocab file would shift every id)."""
        source = self._backend.source
        reserved = _RESERVED_BASE_TOKENS[self.family]
        for role in ("pad", "eos", *_ROLE_ORDER[1:]):
            i = getattr(self.special, role)
            if i is not None and i < self.base_vocab_size:
                token = self._backend.id_to_token(i)
                if token not in reserved:
                    raise TokenizerError(
                        f"{source}: the {self.family} token table ({self.convention} ids, spec §3.2) puts {role} at "
                        f"id {i}, but the vocabulary has the ordinary token {token!r} there; expected one of "
                        f"{sorted(reserved)} (wrong family or vocabulary file?)"
                    )
        for role, token in _PINNED_BASE_TOKENS[self.family].items():
            vocab_id = self._backend.token_to_id(token)
            expected = getattr(self.special, role)
            if vocab_id is not None and vocab_id != expected:
                raise TokenizerError(
                    f"{source}: the vocabulary has {token!r} at id {vocab_id}, but the {self.family} token table "
                    f"(spec §3.2) expects it at id {expected} ({role})"
                )

    # ------------------------------------------------------------------ encode
    def _split(self, text: str) -> list[tuple[str, int | None]]:
        """(text before, command id) pairs; the last pair has id None. Blank tokens eat the whitespace before them."""
        pieces: list[tuple[str, int | None]] = []
        start = 0
        for match in self._split_pattern.finditer(text):
            before = text[start : match.start()]
            if match.group() in self._blank_strings:
                before = before.rstrip()  # spec §3.2: lstrip=True on MASK/gMASK/sMASK; the text after keeps its space
            pieces.append((before, self._string_to_id[match.group()]))
            start = match.end()
        pieces.append((text[start:], None))
        return pieces

    def encode(self, text: str | bytes, add_prefix_space: bool = False) -> list[int]:
        """Ids of ``text``; command strings in it become their ids. No [CLS]/eos is added.

        ``add_prefix_space=True`` makes byte-level BPE treat the first word as preceded by a space (GPT-2/RoBERTa
        verbalizers and candidates are " Yes", spec §3.2); WordPiece and SentencePiece do not encode a leading space,
        so it changes nothing for them.
        """
        text = as_text(text)
        if add_prefix_space and isinstance(self._backend, _ByteLevelBPEBackend) and not text[:1].isspace():
            text = " " + text
        if not text.strip():
            return []  # as the original EncodeAsIds
        ids: list[int] = []
        for segment, command_id in self._split(text):
            if segment:
                ids.extend(self._backend.encode(segment))  # spec §3.2: each segment is tokenized separately
            if command_id is not None:
                ids.append(command_id)
        return ids

    def tokenize(self, text: str | bytes, add_prefix_space: bool = False) -> list[str]:
        return self.convert_ids_to_tokens(self.encode(text, add_prefix_space=add_prefix_space))

    # ------------------------------------------------------------------ ids <-> tokens
    def _check_id(self, value: Any) -> int:
        try:
            i = operator.index(value)
        except TypeError:
            raise TokenizerError(f"token ids must be integers, got {type(value).__name__} {value!r}") from None
        if not 0 <= i < self.padded_vocab_size:
            raise TokenizerError(f"token id {i} is out of range; expected 0 <= id < {self.padded_vocab_size}")
        return i

    def _is_text_id(self, i: int) -> bool:
        return i < self.base_vocab_size and i not in self._id_to_string

    def _id_to_token(self, i: int) -> str:
        if i in self._id_to_string:
            return self._id_to_string[i]
        if i < self.base_vocab_size:
            return self._backend.id_to_token(i)
        return f"<|unused_{i}|>"  # a row with no token: free ids below vocab_size or padding up to the 128 multiple

    def _token_to_id(self, token: str) -> int:
        if token in self._string_to_id:
            return self._string_to_id[token]
        i = self._backend.token_to_id(token)
        if i is not None:
            return i
        unused = _UNUSED_TOKEN.fullmatch(token)
        if unused and int(unused.group(1)) < self.padded_vocab_size and not self._is_text_id(int(unused.group(1))):
            return int(unused.group(1))
        raise TokenizerError(f"token {token!r} is not in the {self.family} vocabulary ({self._backend.source})")

    # ------------------------------------------------------------------ decode
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``. Command ids (and rows without a token) are dropped, or written as their strings."""
        out = ""
        run: list[int] = []
        for value in ids:
            i = self._check_id(value)
            if self._is_text_id(i):
                run.append(i)
                continue
            if run:
                out = self._backend.append_run(out, run)
                run = []
            if not skip_special_tokens:
                out = self._backend.append_command(out, self._id_to_token(i), i in self._blank_ids)
        if run:
            out = self._backend.append_run(out, run)
        return out

    # ------------------------------------------------------------------ files
    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        family: str | None = None,
        convention: str | None = None,
        model_name: str = "",
    ) -> GLMTokenizer | ChatGLMTokenizer:
        """Load the tokenizer files of ``directory`` (hub layout, or one written by :meth:`save_pretrained`).

        ``family`` is taken from the argument, else ``glm_tokenizer.json``, else the hub ``tokenizer_config.json``
        class, else the files present (``vocab.txt`` -> bert; ``vocab.json`` with ``<s>`` at 0 or a ``<mask>`` ->
        roberta, otherwise gpt2; ``ice_text.model`` -> chatglm; other ``*.model`` -> sentencepiece). A chatglm
        directory gives a :class:`glm_core.chatglm_tokenizer.ChatGLMTokenizer`. ``convention`` defaults to ``original`` for the
        English families and ``hf`` for SentencePiece. ``model_name="glm-10b-chinese"`` selects trap 3's table.
        """
        path = os.fspath(directory)
        if not os.path.exists(path):
            raise TokenizerError(f"{path}: tokenizer directory not found")
        if not os.path.isdir(path):
            raise TokenizerError(f"{path}: expected a tokenizer directory, got a file")
        meta_path = os.path.join(path, META_FILE)
        meta = read_json_object(meta_path)
        hub_config = read_json_object(os.path.join(path, "tokenizer_config.json"))

        if family is not None and family not in FAMILIES:
            raise ConfigError(f"unknown tokenizer family {family!r}; expected one of {FAMILIES}")
        if convention is not None and convention not in CONVENTIONS:
            raise ConfigError(f"token convention must be one of {CONVENTIONS}, got {convention!r}")
        stored_family = _meta_choice(meta, "family", FAMILIES, meta_path)
        family = family or stored_family or _family_from_hub(hub_config) or _family_from_files(path)
        if family == "chatglm":
            return ChatGLMTokenizer.from_pretrained(path)
        convention = (
            convention or _meta_choice(meta, "convention", CONVENTIONS, meta_path) or DEFAULT_CONVENTION[family]
        )
        if not model_name:
            model_name = _meta_str(meta, "model_name", meta_path) or _model_name_from_hub(hub_config)

        backend = _load_backend(path, family, meta, hub_config)
        stored = meta.get("special")
        same_setup = (meta.get("family"), meta.get("convention"), meta.get("model_name", "")) == (
            family,
            convention,
            model_name,
        )
        if stored is not None and same_setup:
            special = _special_from_dict(stored, meta_path)
        else:
            special = special_tokens_for(family, convention, model_name=model_name, num_pieces=backend.base_size)
        tokenizer = cls(backend, family, convention, special, model_name)

        if convention == "hf":
            tokenizer._check_added_tokens(os.path.join(path, "added_tokens.json"))
        if same_setup and "vocab_size" in meta and meta["vocab_size"] != tokenizer.vocab_size:
            raise TokenizerError(
                f"{meta_path}: records vocab_size {meta['vocab_size']!r}, but the files give {tokenizer.vocab_size}; "
                "the tokenizer files were replaced after it was written"
            )
        return tokenizer

    def _check_added_tokens(self, path: str) -> None:
        """hf convention = the ids of the hub added_tokens.json; a disagreement means a wrong table, so refuse it."""
        added = read_json_object(path)
        for token, i in added.items():
            if token in self._string_to_id and i != self._string_to_id[token]:
                raise TokenizerError(
                    f"{path}: maps {token!r} to {i!r}, but the {self.family} hf token table (spec §3.2"
                    f"{', model ' + self.model_name if self.model_name else ''}) has {self._string_to_id[token]}"
                )

    def fingerprint(self) -> str:
        """SHA-256 (hex) of everything that decides the ids: the vocabulary files, family, convention, model name and
        command-token ids. Two tokenizers with the same fingerprint encode every text to the same ids."""
        digest = hashlib.sha256()
        setup = {
            "family": self.family,
            "convention": self.convention,
            "model_name": self.model_name,
            "special": {**self.special.to_dict(), "bad_words": list(self.special.bad_words)},
            "lowercase": getattr(self._backend, "lowercase", None),
        }
        digest.update(json.dumps(setup, sort_keys=True).encode("utf-8"))
        for name, data in sorted(self._backend.files().items()):
            digest.update(f"\0{name}\0{len(data)}\0".encode())
            digest.update(data)
        return digest.hexdigest()

    def save_pretrained(self, directory: str | os.PathLike[str]) -> list[str]:
        """Write the tokenizer files (hub layout) and ``glm_tokenizer.json``; :meth:`from_pretrained` reads them back
        to the same tokenizer. Returns the paths written."""
        path = os.fspath(directory)
        os.makedirs(path, exist_ok=True)
        written = []
        files = self._backend.files()
        for name, data in files.items():
            target = os.path.join(path, name)
            write_bytes_atomically(target, data)
            written.append(target)
        meta: dict[str, Any] = {
            "format_version": META_FORMAT_VERSION,
            "family": self.family,
            "convention": self.convention,
            "model_name": self.model_name,
            "files": sorted(files),
            "vocab_size": self.vocab_size,
            "padded_vocab_size": self.padded_vocab_size,
            "special": {**self.special.to_dict(), "bad_words": list(self.special.bad_words)},
        }
        if isinstance(self._backend, _WordPieceBackend):
            meta["lowercase"] = self._backend.lowercase
        if isinstance(self._backend, _SentencePieceBackend):
            meta["model_file"] = self._backend.file_name
        target = os.path.join(path, META_FILE)
        write_bytes_atomically(target, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode("utf-8"))
        written.append(target)
        return written


# ------------------------------------------------------------------------------------------------ loading helpers
def _meta_str(meta: dict[str, Any], key: str, path: str) -> str:
    value = meta.get(key, "")
    if not isinstance(value, str):
        raise TokenizerError(f"{path}: field {key!r} must be a string, got {value!r}")
    return value


def _meta_choice(meta: dict[str, Any], key: str, choices: tuple[str, ...], path: str) -> str:
    value = _meta_str(meta, key, path)
    if value and value not in choices:
        raise TokenizerError(f"{path}: field {key!r} must be one of {choices}, got {value!r}")
    return value


def _family_from_hub(hub_config: dict[str, Any]) -> str:
    return _HUB_CLASSES.get(str(hub_config.get("tokenizer_class", "")), "")


def _model_name_from_hub(hub_config: dict[str, Any]) -> str:
    name = hub_config.get("name_or_path") or hub_config.get("_name_or_path") or ""
    return os.path.basename(str(name).rstrip("/"))


def _sentencepiece_files(path: str) -> list[str]:
    return sorted(f for f in os.listdir(path) if f.endswith(".model") and os.path.isfile(os.path.join(path, f)))


def _family_from_files(path: str) -> str:
    found = []
    if os.path.isfile(os.path.join(path, BERT_VOCAB_FILE)):
        found.append("bert")
    has_vocab_json = os.path.isfile(os.path.join(path, BPE_VOCAB_FILE))
    has_merges = os.path.isfile(os.path.join(path, BPE_MERGES_FILE))
    if has_vocab_json != has_merges:
        missing = BPE_MERGES_FILE if has_vocab_json else BPE_VOCAB_FILE
        raise TokenizerError(
            f"{path}: byte-level BPE needs both {BPE_VOCAB_FILE} and {BPE_MERGES_FILE}; {missing} is missing"
        )
    if has_vocab_json:
        vocab_path = os.path.join(path, BPE_VOCAB_FILE)
        vocab = parse_bpe_vocab(read_bytes(vocab_path, "a BPE vocab.json"), vocab_path)
        found.append("roberta" if vocab.get("<s>") == 0 or "<mask>" in vocab else "gpt2")
    if os.path.isfile(os.path.join(path, CHATGLM_FILE)):
        found.append("chatglm")
    elif _sentencepiece_files(path):
        found.append("sentencepiece")
    if not found:
        raise TokenizerError(
            f"{path}: no tokenizer files found; expected {BERT_VOCAB_FILE} (BERT WordPiece), {BPE_VOCAB_FILE} + "
            f"{BPE_MERGES_FILE} (GPT-2/RoBERTa byte-level BPE), a SentencePiece *.model file or ChatGLM's {CHATGLM_FILE}"
        )
    if len(found) > 1:
        raise TokenizerError(f"{path}: files of several tokenizer families ({', '.join(found)}); pass family=")
    return found[0]


def _sentencepiece_model_path(path: str, meta: dict[str, Any]) -> str:
    named = _meta_str(meta, "model_file", os.path.join(path, META_FILE))
    if named:
        return os.path.join(path, os.path.basename(named))
    for name in SENTENCEPIECE_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    candidates = _sentencepiece_files(path)
    if len(candidates) == 1:
        return os.path.join(path, candidates[0])
    if not candidates:
        raise TokenizerError(
            f"{path}: no SentencePiece model found; expected one of {', '.join(SENTENCEPIECE_FILES)} or another *.model"
        )
    raise TokenizerError(f"{path}: several SentencePiece models ({', '.join(candidates)}); keep one")


def _load_backend(path: str, family: str, meta: dict[str, Any], hub_config: dict[str, Any]) -> _Backend:
    if family == "bert":
        vocab_path = os.path.join(path, BERT_VOCAB_FILE)
        data = read_bytes(vocab_path, "BERT WordPiece vocabulary (vocab.txt, one token per line)")
        lowercase = meta.get("lowercase", hub_config.get("do_lower_case", True))
        if not isinstance(lowercase, bool):
            raise TokenizerError(f"{path}: lowercase / do_lower_case must be true or false, got {lowercase!r}")
        return _WordPieceBackend(data, vocab_path, lowercase=lowercase)
    if family in ("gpt2", "roberta"):
        vocab_path = os.path.join(path, BPE_VOCAB_FILE)
        merges_path = os.path.join(path, BPE_MERGES_FILE)
        vocab = read_bytes(vocab_path, "byte-level BPE vocabulary (vocab.json: token -> id)")
        merges = read_bytes(merges_path, "byte-level BPE merges (merges.txt: one 'a b' pair per line)")
        return _ByteLevelBPEBackend(vocab, merges, vocab_path, merges_path)
    model_path = _sentencepiece_model_path(path, meta)
    return _SentencePieceBackend(read_bytes(model_path, "a SentencePiece model"), model_path)


def _special_from_dict(data: Any, path: str) -> SpecialTokens:
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: field 'special' must be an object of token ids, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(SpecialTokens)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise TokenizerError(f"{path}: unknown special token(s) {unknown}; expected {sorted(fields)}")
    values: dict[str, Any] = {}
    for name in fields:
        value = data.get(name)
        if name == "bad_words":
            value = value or []
            if not isinstance(value, list) or not all(_is_id(v) for v in value):
                raise TokenizerError(f"{path}: special.bad_words must be a list of token ids, got {value!r}")
            values[name] = tuple(value)
        elif value is None and name in ("gmask", "smask", "cls", "sep"):
            values[name] = None
        elif not _is_id(value):
            raise TokenizerError(f"{path}: special.{name} must be a non-negative integer id, got {value!r}")
        else:
            values[name] = value
    return SpecialTokens(**values)


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# ------------------------------------------------------------------------------------------------------- training
def train_sentencepiece(
    lines: Iterable[str],
    out_dir: str | os.PathLike[str],
    vocab_size: int,
    model_prefix: str = "spiece",
    seed: int = 0,
    character_coverage: float = 1.0,
    user_defined_symbols: Iterable[str] = (),
) -> str:
    """Train a unigram SentencePiece model on ``lines``, deterministically; return the ``.model`` path.

    The piece layout follows cog-pretrain.model (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2); GLM's command tokens are not
    pieces, they follow the pieces (``sentencepiece_tokens(num_pieces)``). Determinism: one thread, corpus in the
    given order (no sampling or shuffling), and the library's global random seed set to ``seed``.
    ``user_defined_symbols`` become pieces right after the control pieces (ids 3, 4, ...), always kept whole (ChatGLM's
    ``<n>``, ``<|tab|>``, ``<|blank_N|>`` and command tokens).
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 4:
        raise TokenizerError(f"vocab_size must be an integer >= 4 (3 control pieces + text), got {vocab_size!r}")
    if not model_prefix or os.sep in model_prefix or (os.altsep and os.altsep in model_prefix):
        raise TokenizerError(f"model_prefix must be a plain file name, got {model_prefix!r}")
    sentences: list[str] = []
    for n, line in enumerate(lines, start=1):
        line = as_text(line).rstrip("\r\n")
        if "\n" in line:
            raise TokenizerError(f"training line {n} contains a newline; pass one sentence per item")
        if line.strip():
            sentences.append(line)
    if not sentences:
        raise TokenizerError("cannot train a SentencePiece model on an empty corpus (no non-blank lines)")

    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type="unigram",
            vocab_size=vocab_size,
            character_coverage=character_coverage,
            num_threads=1,
            input_sentence_size=0,  # use every line, no sampling
            shuffle_input_sentence=False,
            max_sentence_length=1 << 16,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            hard_vocab_limit=True,
            user_defined_symbols=list(user_defined_symbols),
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise TokenizerError(f"SentencePiece training failed: {exc}") from None

    out = os.fspath(out_dir)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, model_prefix + ".model")
    write_bytes_atomically(path, model.getvalue())
    return path


__all__ = [
    "DEFAULT_CONVENTION",
    "FAMILIES",
    "GLMTokenizer",
    "padded_size",
    "parse_bpe_vocab",
    "train_sentencepiece",
]
