"""Special-token ids per tokenizer family (spec glm_reference §3.2), torch-free.

The table has two conventions because the original THUDM code and the hub remote code disagree in three places
(the "three id traps" of spec §3.2):

1. BERT models: original Part A ends with eos = ``[PAD]`` (0); the hub tokenizer appends ``[SEP]`` (102).
2. glm-roberta-large: original ``[MASK]`` = 50264 (``<mask>``); hub added_tokens maps ``[MASK]`` to 50267.
3. glm-10b-chinese: the original run had no ``--fix-command-token``, so gMASK = 50007 (= eop); the hub tokenizer
   uses 50009 (a copied embedding row) and bans generating it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from glm_core.errors import ConfigError

CONVENTIONS = ("original", "hf")


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of GLM's command tokens for one tokenizer. ``None`` = the family has no such token.

    ChatGLM has no ``[CLS]`` (nor ``[SEP]``): ``cls=None`` also tells :mod:`glm_core.layout` that Part A carries no
    frame at all (no ``[CLS]`` before it, no eos after it) - see :attr:`frames_part_a`.
    """

    pad: int
    eos: int
    cls: int | None
    sep: int | None
    mask: int
    unk: int
    sop: int
    eop: int
    gmask: int | None = None
    smask: int | None = None
    bad_words: tuple[int, ...] = ()

    @property
    def frames_part_a(self) -> bool:
        """GLM frames Part A as ``[CLS] text [eos]``; ChatGLM (no ``[CLS]``) as ``text`` alone (``A [gMASK] <sop>``)."""
        return self.cls is not None

    def mask_ids(self) -> tuple[int, ...]:
        """All blank tokens ([MASK], [sMASK], [gMASK]) this tokenizer has, in that order."""
        return tuple(i for i in (self.mask, self.smask, self.gmask) if i is not None)

    def replace(self, **changes: int | None) -> SpecialTokens:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def bert_tokens(convention: str = "original") -> SpecialTokens:
    # spec §3.2, BERT column; trap 1: original eos is [PAD]=0, the hub tokenizer ends Part A with [SEP]=102.
    eos = 0 if convention == "original" else 102
    return SpecialTokens(pad=0, eos=eos, cls=101, sep=102, mask=103, unk=100, sop=30522, eop=30523)


def gpt2_tokens(convention: str = "original") -> SpecialTokens:
    # spec §3.2, GPT-2 column (glm-2b, glm-10b); identical in both conventions.
    return SpecialTokens(
        pad=50256,
        eos=50256,
        cls=50259,
        sep=50261,
        mask=50260,
        unk=50262,
        sop=50257,
        eop=50258,
        gmask=50263,
        smask=50264,
    )


def roberta_tokens(convention: str = "original") -> SpecialTokens:
    # trap 2: hub [MASK] is 50267, the original <mask> is 50264.
    mask = 50264 if convention == "original" else 50267
    return SpecialTokens(pad=2, eos=2, cls=0, sep=2, mask=mask, unk=3, sop=50265, eop=50266)


def sentencepiece_tokens(
    num_pieces: int = 50000, convention: str = "hf", fix_command_token: bool = True
) -> SpecialTokens:
    """Command tokens appended after ``num_pieces`` SentencePiece pieces (Chinese models and glm-tiny).

    ``fix_command_token=False`` is the original glm-10b-chinese vocabulary (trap 3): gMASK shares eop's id.
    """
    n = num_pieces
    gmask = n + 9
    bad: tuple[int, ...] = ()
    if not fix_command_token:
        if convention == "original":
            gmask = n + 7  # = eop
        else:
            bad = (n + 9,)  # hub config bad_words_id: the copied row duplicates eop's logit
    return SpecialTokens(
        pad=n,
        eos=n,
        sep=n + 1,
        cls=n + 2,
        mask=n + 3,
        unk=n + 4,
        sop=n + 6,
        eop=n + 7,
        smask=n + 8,
        gmask=gmask,
        bad_words=bad,
    )


def chatglm_tokens(
    *,
    mask: int = 130000,
    gmask: int = 130001,
    smask: int | None = 130002,
    sop: int = 130004,
    eop: int = 130005,
    pad: int = 3,
    unk: int = 0,
) -> SpecialTokens:
    """ChatGLM-6B's ids (defaults: the released ``ice_text.model``, whose tokenizer_config.json has
    num_image_tokens = 0). No ``[CLS]``/``[SEP]``; ``<eop>`` ends Part B and generation (eos = eop).

    The ChatGLM tokenizer looks its ids up in its own model file, so a small test model passes small ones.
    """
    return SpecialTokens(
        pad=pad, eos=eop, cls=None, sep=None, mask=mask, unk=unk, sop=sop, eop=eop, gmask=gmask, smask=smask
    )


# Names of command-token strings as they appear in text and in hub added_tokens.json.
TOKEN_STRINGS = {
    "mask": "[MASK]",
    "gmask": "[gMASK]",
    "smask": "[sMASK]",
    "sop": "<|startofpiece|>",
    "eop": "<|endofpiece|>",
}


# Strings of the remaining command tokens, per family, as the original code names them [GLM:data_utils/tokenization.py].
# eos has no string of its own: it shares the id of pad (or, for BERT in the hf convention, of sep).
_FAMILY_TOKEN_STRINGS = {
    "bert": {"pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]", "unk": "[UNK]"},
    "gpt2": {"pad": "<|endoftext|>", "cls": "[CLS]", "sep": "[SEP]", "unk": "[UNK]"},
    "roberta": {"pad": "<|endoftext|>", "cls": "[CLS]", "sep": "[SEP]", "unk": "[UNK]"},
    "sentencepiece": {"pad": "<|endoftext|>", "cls": "[CLS]", "sep": "[SEP]", "unk": "[UNK]"},
}


def token_strings_for(family: str) -> dict[str, str]:
    """Role name -> command-token string for ``family`` (all roles of :class:`SpecialTokens` except eos).

    These strings are split out of text before encoding (spec §3.2, "Whitespace around special tokens").
    """
    if family not in _FAMILY_TOKEN_STRINGS:
        raise ConfigError(f"unknown tokenizer family {family!r}; expected bert, gpt2, roberta or sentencepiece")
    return {**_FAMILY_TOKEN_STRINGS[family], **TOKEN_STRINGS}


def special_tokens_for(
    family: str, convention: str = "original", *, model_name: str = "", num_pieces: int = 50000
) -> SpecialTokens:
    if convention not in CONVENTIONS:
        raise ConfigError(f"token convention must be one of {CONVENTIONS}, got {convention!r}")
    if family == "bert":
        return bert_tokens(convention)
    if family == "gpt2":
        return gpt2_tokens(convention)
    if family == "roberta":
        return roberta_tokens(convention)
    if family == "sentencepiece":
        fix = model_name != "glm-10b-chinese"
        return sentencepiece_tokens(num_pieces, convention, fix_command_token=fix)
    if family == "chatglm":
        return chatglm_tokens()  # the released ids; the tokenizer reads its own from its files
    raise ConfigError(f"unknown tokenizer family {family!r}; expected bert, gpt2, roberta, sentencepiece or chatglm")
