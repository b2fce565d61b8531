"""The ChatGLM-6B tokenizer: SentencePiece ``ice_text.model`` plus ChatGLM's text rules (torch-free).

ChatGLM-6B's hub tokenizer differs from the GLM families of :mod:`glm_core.tokenizer` in four ways, all reproduced
here from its ``tokenization_chatglm.py`` / ``tokenizer_config.json`` (final v1 revision):

- **Text rules.** Before SentencePiece sees the text, ``"\\n"`` becomes ``<n>``, ``"\\t"`` becomes ``<|tab|>`` and
  every run of 2..80 spaces becomes ``<|blank_N|>``, longest first (85 spaces = ``<|blank_80|><|blank_5|>``); these
  are user-defined pieces of the model, so line breaks and indentation survive SentencePiece's whitespace folding.
  Decoding reverses the rules.
- **Ids.** A text id is the SentencePiece id plus ``num_image_tokens`` (tokenizer_config.json; the code's default is
  20,000, the final checkpoint's config sets 0, so ``[MASK]`` is piece 130000 of the 130,344). The command tokens are
  pieces too: their ids are looked up by the strings of tokenizer_config.json (``mask_token``, ``gmask_token``,
  ``bos_token`` = ``<sop>``, ``eos_token`` = ``<eop>``, ``pad_token``, ``unk_token``), never hard-coded, so a small
  test model has small ids.
- **Special strings in text.** ``bos``/``eos``/``unk``/``pad``/``mask`` strings are split out of the text with the
  whitespace on both sides removed, each remaining segment is encoded on its own; ``[gMASK]``/``[sMASK]`` are left to
  SentencePiece, as the remote tokenizer does.
- **Layout.** There is no ``[CLS]`` and Part A does not end with an eos: an input is ``A [gMASK] <sop>``, a pair
  ``A [gMASK] <sop> B <eop>`` (:meth:`ChatGLMTokenizer.build_inputs_with_special_tokens`). :mod:`glm_core.layout`
  builds the model inputs from :attr:`special` (``cls=None``: no frame around Part A). Decoding always drops pads.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import sentencepiece as spm

from glm_core.atomic import write_bytes_atomically
from glm_core.errors import TokenizerError
from glm_core.special_tokens import chatglm_tokens
from glm_core.tokenizer_common import SpecialIdAccessors, as_text, padded_size, read_bytes, read_json_object

CHATGLM_MODEL_FILE = "ice_text.model"
CHATGLM_TOKENIZER_CLASS = "ChatGLMTokenizer"
HUB_CONFIG_FILE = "tokenizer_config.json"
MAX_BLANK_LENGTH = 80
DEFAULT_NUM_IMAGE_TOKENS = 20000  # the remote code's default; the final checkpoint's tokenizer_config.json says 0
NEWLINE_TOKEN = "<n>"
TAB_TOKEN = "<|tab|>"

# tokenizer_config.json field -> (default string of the remote code, our role).
_CONFIG_TOKENS = {
    "bos_token": ("<sop>", "sop"),
    "eos_token": ("<eop>", "eop"),
    "mask_token": ("[MASK]", "mask"),
    "gmask_token": ("[gMASK]", "gmask"),
    "pad_token": ("<pad>", "pad"),
    "unk_token": ("<unk>", "unk"),
}
# Fields whose strings the remote tokenizer splits out of text (the transformers special-token attributes).
_SPLIT_FIELDS = ("bos_token", "eos_token", "unk_token", "pad_token", "mask_token")
# The model config.json names the same ids; a disagreement means mismatched files.
_MODEL_CONFIG_IDS = {
    "bos_token_id": "sop",
    "eos_token_id": "eop",
    "mask_token_id": "mask",
    "gmask_token_id": "gmask",
    "pad_token_id": "pad",
}
SMASK_TOKEN = "[sMASK]"


def blank_token(length: int) -> str:
    """The piece that stands for ``length`` (2..80) spaces."""
    return f"<|blank_{length}|>"


def whitespace_pieces(max_blank_length: int = MAX_BLANK_LENGTH) -> list[str]:
    """The user-defined pieces the text rules produce: ``<n>``, ``<|tab|>``, ``<|blank_2|>`` .. ``<|blank_80|>``."""
    return [NEWLINE_TOKEN, TAB_TOKEN, *(blank_token(n) for n in range(2, max_blank_length + 1))]


def preprocess(text: str, max_blank_length: int = MAX_BLANK_LENGTH) -> str:
    """ChatGLM's text rules: newline, then tab, then space runs from the longest (80) down to 2."""
    text = text.replace("\n", NEWLINE_TOKEN).replace("\t", TAB_TOKEN)
    for n in range(max_blank_length, 1, -1):
        text = text.replace(" " * n, blank_token(n))
    return text


def postprocess(text: str, max_blank_length: int = MAX_BLANK_LENGTH) -> str:
    """The inverse of :func:`preprocess` on decoded text."""
    text = text.replace(NEWLINE_TOKEN, "\n").replace(TAB_TOKEN, "\t")
    for n in range(2, max_blank_length + 1):
        text = text.replace(blank_token(n), " " * n)
    return text


def chat_prompt(query: str, history: Sequence[tuple[str, str]] = (), *, bare_first_query: bool = True) -> str:
    """ChatGLM-6B's chat prompt, as its ``chat()`` builds it.

    Every earlier round is ``[Round i]\n问：q\n答：r\n`` and the query closes with ``[Round N]\n问：query\n答：``
    (N = number of earlier rounds, counted from 0). With no history ``chat()`` sends the query as it is
    (``bare_first_query``); ``bare_first_query=False`` gives it the round form too (``[Round 0]\n问：query\n答：``).
    """
    if not history and bare_first_query:
        return query
    rounds = "".join(f"[Round {i}]\n问：{q}\n答：{r}\n" for i, (q, r) in enumerate(history))
    return f"{rounds}[Round {len(history)}]\n问：{query}\n答："


def _config_bool(config: dict[str, Any], key: str, path: str) -> bool:
    value = config.get(key, False)
    if not isinstance(value, bool):
        raise TokenizerError(f"{path}: field {key!r} must be true or false, got {value!r}")
    return value


def _config_str(config: dict[str, Any], key: str, default: str, path: str) -> str:
    value = config.get(key, default)
    if isinstance(value, dict):  # AddedToken serialisation: {"content": "...", ...}
        value = value.get("content")
    if not isinstance(value, str) or not value:
        raise TokenizerError(f"{path}: field {key!r} must be a non-empty token string, got {value!r}")
    return value


class ChatGLMTokenizer(SpecialIdAccessors):
    """ChatGLM-6B's tokenizer with the interface of :class:`glm_core.tokenizer.GLMTokenizer` (``encode`` adds no special tokens;
    :mod:`glm_core.layout` builds the inputs from :attr:`special`). Build it with :meth:`from_pretrained`."""

    def __init__(self, model_bytes: bytes, model_path: str, config: dict[str, Any], config_path: str) -> None:
        try:
            sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        except Exception as exc:  # RuntimeError from the C++ parser
            raise TokenizerError(f"{model_path}: not a valid SentencePiece model ({exc})") from None
        self._sp = sp
        self._raw = model_bytes
        self._source = model_path
        offset = config.get("num_image_tokens", DEFAULT_NUM_IMAGE_TOKENS)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise TokenizerError(f"{config_path}: field 'num_image_tokens' must be an integer >= 0, got {offset!r}")
        self.num_image_tokens = offset
        self.do_lower_case = _config_bool(config, "do_lower_case", config_path)
        self.remove_space = _config_bool(config, "remove_space", config_path)
        self.token_strings = {
            key: _config_str(config, key, default, config_path) for key, (default, _) in _CONFIG_TOKENS.items()
        }
        ids = {
            role: self._piece_id(self.token_strings[key], key, config_path) for key, (_, role) in _CONFIG_TOKENS.items()
        }
        smask = self._sp.piece_to_id(SMASK_TOKEN)
        self.family = "chatglm"
        self.convention = "hf"
        self.model_name = os.path.basename(str(config.get("name_or_path", "")).rstrip("/"))
        self.special = chatglm_tokens(
            mask=ids["mask"],
            gmask=ids["gmask"],
            smask=smask + offset if self._sp.id_to_piece(smask) == SMASK_TOKEN else None,
            sop=ids["sop"],
            eop=ids["eop"],
            pad=ids["pad"],
            unk=ids["unk"],
        )
        self.base_vocab_size = offset + sp.get_piece_size()
        self.vocab_size = self.base_vocab_size
        self.padded_vocab_size = padded_size(self.vocab_size)
        self._special_ids = frozenset(i for i in self._all_special_ids())
        self._string_to_id = {self.token_strings[key]: ids[role] for key, (_, role) in _CONFIG_TOKENS.items()}
        if self.special.smask is not None:
            self._string_to_id[SMASK_TOKEN] = self.special.smask
        split = sorted({self.token_strings[key] for key in _SPLIT_FIELDS}, key=len, reverse=True)
        self._split_pattern = re.compile("|".join(re.escape(s) for s in split))
        self._check_whitespace_pieces()

    def _piece_id(self, token: str, field: str, config_path: str) -> int:
        i = self._sp.piece_to_id(token)
        if self._sp.id_to_piece(i) != token:
            raise TokenizerError(
                f"{config_path}: {field} {token!r} is not a piece of {self._source}; expected the tokenizer files of "
                "one ChatGLM checkpoint"
            )
        return i + self.num_image_tokens

    def _check_whitespace_pieces(self) -> None:
        for piece in (NEWLINE_TOKEN, TAB_TOKEN, blank_token(2)):
            if self._sp.id_to_piece(self._sp.piece_to_id(piece)) != piece:
                raise TokenizerError(
                    f"{self._source}: has no piece {piece!r}; a ChatGLM model holds <n>, <|tab|> and "
                    "<|blank_2|>..<|blank_80|> as user-defined pieces"
                )

    # ------------------------------------------------------------------ files
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> ChatGLMTokenizer:
        """``ice_text.model`` + ``tokenizer_config.json`` of a ChatGLM checkpoint (or a directory we wrote). If the
        model ``config.json`` is there too, its special ids must agree with the tokenizer's."""
        path = os.fspath(directory)
        if not os.path.isdir(path):
            raise TokenizerError(f"{path}: expected a ChatGLM tokenizer directory")
        model_path = os.path.join(path, CHATGLM_MODEL_FILE)
        config_path = os.path.join(path, HUB_CONFIG_FILE)
        config = read_json_object(config_path)
        tokenizer = cls(read_bytes(model_path, "ChatGLM's SentencePiece model"), model_path, config, config_path)
        model_config_path = os.path.join(path, "config.json")
        model_config = read_json_object(model_config_path)
        for key, role in _MODEL_CONFIG_IDS.items():
            if key in model_config and model_config[key] != getattr(tokenizer.special, role):
                raise TokenizerError(
                    f"{model_config_path}: {key} is {model_config[key]!r}, but the tokenizer files give "
                    f"{getattr(tokenizer.special, role)}; the tokenizer and the model belong to different checkpoints"
                )
        return tokenizer

    def _hub_config(self) -> dict[str, Any]:
        return {
            "tokenizer_class": CHATGLM_TOKENIZER_CLASS,
            "name_or_path": self.model_name,
            "num_image_tokens": self.num_image_tokens,
            "do_lower_case": self.do_lower_case,
            "remove_space": self.remove_space,
            **self.token_strings,
        }

    def save_pretrained(self, directory: str | os.PathLike[str]) -> list[str]:
        """Write ``ice_text.model`` and a ``tokenizer_config.json`` that :meth:`from_pretrained` reads back."""
        path = os.fspath(directory)
        os.makedirs(path, exist_ok=True)
        model_path = os.path.join(path, CHATGLM_MODEL_FILE)
        config_path = os.path.join(path, HUB_CONFIG_FILE)
        write_bytes_atomically(model_path, self._raw)
        text = json.dumps(self._hub_config(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        write_bytes_atomically(config_path, text.encode("utf-8"))
        return [model_path, config_path]

    def fingerprint(self) -> str:
        """SHA-256 (hex) of what decides the ids: the model file and the configuration fields used."""
        digest = hashlib.sha256()
        digest.update(json.dumps({"family": self.family, **self._hub_config()}, sort_keys=True).encode("utf-8"))
        digest.update(self._raw)
        return digest.hexdigest()

    # ------------------------------------------------------------------ encode
    def _clean(self, text: str) -> str:
        if self.remove_space:
            text = " ".join(text.strip().split())
        return text.lower() if self.do_lower_case else text

    def _encode_segment(self, text: str) -> list[int]:
        pieces = self._sp.encode(preprocess(self._clean(text)), out_type=int)
        return [i + self.num_image_tokens for i in pieces]

    def encode(
        self, text: str | bytes, add_prefix_space: bool = False, *, add_special_tokens: bool = False
    ) -> list[int]:
        """Ids of ``text``. ``add_special_tokens=True`` appends ``[gMASK] <sop>`` as the hub tokenizer's ``encode``;
        the default adds nothing (the layout does). ``add_prefix_space`` changes nothing (SentencePiece)."""
        text = as_text(text)
        segments: list[str] = []
        ids: list[int] = []
        start = 0
        for match in self._split_pattern.finditer(text):
            segments.append(text[start : match.start()])
            segments.append(match.group())
            start = match.end()
        segments.append(text[start:])
        # Odd indices are special strings; the text on both sides of one loses its adjacent whitespace.
        for k, segment in enumerate(segments):
            if k % 2:
                ids.append(self._string_to_id[segment])
                continue
            if k > 0:
                segment = segment.lstrip()
            if k < len(segments) - 1:
                segment = segment.rstrip()
            if segment:
                ids.extend(self._encode_segment(segment))
        return self.build_inputs_with_special_tokens(ids) if add_special_tokens else ids

    def build_inputs_with_special_tokens(self, ids_a: Sequence[int], ids_b: Sequence[int] | None = None) -> list[int]:
        """``A [gMASK] <sop>``, or ``A [gMASK] <sop> B <eop>`` for a pair (the hub tokenizer's layout)."""
        s = self.special
        ids = [*ids_a, s.gmask, s.sop]
        if ids_b is not None:
            ids += [*ids_b, s.eop]
        return ids  # type: ignore[return-value]

    def tokenize(self, text: str | bytes, add_prefix_space: bool = False) -> list[str]:
        return self.convert_ids_to_tokens(self.encode(text))

    # ------------------------------------------------------------------ ids <-> tokens
    def _check_id(self, value: Any) -> int:
        try:
            i = operator.index(value)
        except TypeError:
            raise TokenizerError(f"token ids must be integers, got {type(value).__name__} {value!r}") from None
        if i < 0:
            raise TokenizerError(f"token id {i} is out of range; expected a non-negative id")
        return i

    def _id_to_token(self, i: int) -> str:
        if i < self.num_image_tokens:
            return f"<image_{i}>"
        if i < self.vocab_size:
            return self._sp.id_to_piece(i - self.num_image_tokens)
        return f"<|unused_{i}|>"  # model rows past the tokenizer (the checkpoint's 130,528 > 130,344)

    def _token_to_id(self, token: str) -> int:
        image = re.fullmatch(r"<image_(\d+)>", token)
        if image and int(image.group(1)) < self.num_image_tokens:
            return int(image.group(1))
        i = self._sp.piece_to_id(token)
        if self._sp.id_to_piece(i) != token:
            raise TokenizerError(f"token {token!r} is not in the ChatGLM vocabulary ({self._source})")
        return i + self.num_image_tokens

    # ------------------------------------------------------------------ decode
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``: pads always dropped (as the hub tokenizer), command tokens too unless
        ``skip_special_tokens=False``; image ids and rows past the vocabulary have no text."""
        pieces = []
        for value in ids:
            i = self._check_id(value)
            if i == self.special.pad or (skip_special_tokens and i in self._special_ids):
                continue
            if self.num_image_tokens <= i < self.vocab_size:
                pieces.append(i - self.num_image_tokens)
        return postprocess(self._sp.decode(pieces))


__all__ = [
    "CHATGLM_MODEL_FILE",
    "ChatGLMTokenizer",
    "blank_token",
    "chat_prompt",
    "postprocess",
    "preprocess",
    "whitespace_pieces",
]
