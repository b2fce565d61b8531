"""What every tokenizer of this project shares: text and file checks, the vocabulary padding and the special-id
accessors (torch-free). :mod:`glm_core.tokenizer` (GLM's families) and :mod:`glm_core.chatglm_tokenizer` build on it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from glm_core.errors import TokenizerError
from glm_core.special_tokens import SpecialTokens

VOCAB_PAD_MULTIPLE = 128  # spec §1.6: word-embedding rows are padded to a multiple of 128


# ----------------------------------------------------------------------------------------------------------- helpers
def padded_size(n: int, multiple: int = VOCAB_PAD_MULTIPLE) -> int:
    return -(-n // multiple) * multiple


def as_text(text: str | bytes) -> str:
    """``text`` as a str that is valid Unicode; bytes must be UTF-8."""
    if isinstance(text, (bytes, bytearray)):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TokenizerError(
                f"input bytes are not valid UTF-8: byte 0x{exc.object[exc.start]:02x} at position {exc.start} "
                f"({exc.reason}); expected UTF-8 text"
            ) from None
    if not isinstance(text, str):
        raise TokenizerError(f"text to encode must be str or UTF-8 bytes, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TokenizerError(
            f"text is not valid Unicode: {exc.reason} at position {exc.start} ({text[exc.start]!r})"
        ) from None
    return text


def read_bytes(path: str, what: str) -> bytes:
    if not os.path.isfile(path):
        raise TokenizerError(f"{path}: file not found; expected {what}")
    with open(path, "rb") as fh:
        return fh.read()


def decode_utf8(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenizerError(f"{path}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def load_json(data: bytes, path: str) -> Any:
    try:
        return json.loads(decode_utf8(data, path))
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{path}: not valid JSON ({exc})") from None


def read_json_object(path: str) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` if the file does not exist."""
    if not os.path.isfile(path):
        return {}
    data = load_json(read_bytes(path, "a JSON object"), path)
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


class SpecialIdAccessors:
    """Named accessors over ``self.special`` and the vocabulary sizes, and the id/token conversions over each
    tokenizer's own ``_check_id`` / ``_id_to_token`` / ``_token_to_id``: the same for every tokenizer."""

    special: SpecialTokens
    family: str
    convention: str
    model_name: str
    vocab_size: int
    padded_vocab_size: int
    _string_to_id: dict[str, int]

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> Any:
        """Token string(s) for id(s); command ids give their command string (as the original IdToToken)."""
        if isinstance(ids, Iterable):
            return [self._id_to_token(self._check_id(i)) for i in ids]
        return self._id_to_token(self._check_id(ids))

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> Any:
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def _check_id(self, value: Any) -> int:
        raise NotImplementedError

    def _id_to_token(self, i: int) -> str:
        raise NotImplementedError

    def _token_to_id(self, token: str) -> int:
        raise NotImplementedError

    @property
    def pad_id(self) -> int:
        return self.special.pad

    @property
    def eos_id(self) -> int:
        return self.special.eos

    @property
    def cls_id(self) -> int | None:
        return self.special.cls

    @property
    def sep_id(self) -> int | None:
        return self.special.sep

    @property
    def mask_id(self) -> int:
        return self.special.mask

    @property
    def unk_id(self) -> int:
        return self.special.unk

    @property
    def sop_id(self) -> int:
        return self.special.sop

    @property
    def eop_id(self) -> int:
        return self.special.eop

    @property
    def gmask_id(self) -> int | None:
        return self.special.gmask

    @property
    def smask_id(self) -> int | None:
        return self.special.smask

    @property
    def mask_ids(self) -> tuple[int, ...]:
        return self.special.mask_ids()

    @property
    def bad_words_ids(self) -> tuple[int, ...]:
        """Ids generation must never produce (glm-10b-chinese hf: the copied gMASK row, spec §3.2 trap 3)."""
        return self.special.bad_words

    @property
    def command_tokens(self) -> dict[str, int]:
        """Command-token string -> id, as recognised in text."""
        return dict(self._string_to_id)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(family={self.family!r}, convention={self.convention!r}, model_name={self.model_name!r}, "
            f"vocab_size={self.vocab_size}, padded_vocab_size={self.padded_vocab_size})"
        )

    def _all_special_ids(self) -> list[int]:
        s = self.special
        ids = [s.pad, s.eos, s.cls, s.sep, s.mask, s.unk, s.sop, s.eop, s.gmask, s.smask, *s.bad_words]
        return [i for i in ids if i is not None]
