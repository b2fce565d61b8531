"""The ChatGLM-6B tokenizer and layout against rules written out by hand and the raw SentencePiece model.

The model is trained here on a few lines, with the user-defined pieces ChatGLM's ``ice_text.model`` holds (command
tokens, ``<n>``, ``<|tab|>``, ``<|blank_2|>``..``<|blank_80|>``), and a ``tokenizer_config.json`` written like the
hub's; no third-party file is used. The raw ``SentencePieceProcessor`` is the reference for text pieces.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import sentencepiece as spm

from glm_core.chatglm_tokenizer import ChatGLMTokenizer, chat_prompt, postprocess, preprocess, whitespace_pieces
from glm_core.errors import GLMError, TokenizerError
from glm_core.layout import (
    build_candidate_sequences,
    build_generation_prompt,
    build_scoring_input,
    build_seq2seq_input,
)
from glm_core.special_tokens import chatglm_tokens, special_tokens_for
from glm_core.tokenizer import GLMTokenizer, train_sentencepiece
from tests.chatglm_dirs import COMMAND_PIECES, TOKENIZER_CONFIG

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world, 你好世界",
    "def f(x):",
    "    return x + 1",
    "blank infilling with autoregressive models",
] * 3
HUB_CONFIG = {**TOKENIZER_CONFIG, "name_or_path": "THUDM/chatglm-6b"}
TEXTS = [
    "hello world",
    "def f(x):\n    return x + 1\n",
    "a\tb\t\tc",
    "你好世界, the lazy dog",
    "x" + " " * 85 + "y",
    "  two  spaces   three",
]


def write_chatglm_dir(directory, config=None, pieces=None) -> str:
    pieces = COMMAND_PIECES + whitespace_pieces() if pieces is None else pieces
    train_sentencepiece(
        CORPUS, directory, vocab_size=len(pieces) + 50, model_prefix="ice_text", user_defined_symbols=pieces
    )
    with open(directory / "tokenizer_config.json", "w", encoding="utf-8") as fh:
        json.dump(HUB_CONFIG if config is None else config, fh)
    return str(directory)


@pytest.fixture(scope="module")
def chatglm_dir(tmp_path_factory):
    return write_chatglm_dir(tmp_path_factory.mktemp("chatglm_tok"))


@pytest.fixture(scope="module")
def tok(chatglm_dir) -> ChatGLMTokenizer:
    tokenizer = GLMTokenizer.from_pretrained(chatglm_dir)
    assert isinstance(tokenizer, ChatGLMTokenizer)
    return tokenizer


@pytest.fixture(scope="module")
def sp(chatglm_dir) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=f"{chatglm_dir}/ice_text.model")


# ------------------------------------------------------------------------------------------------ family and ids
def test_family_from_tokenizer_class_and_from_the_model_file(chatglm_dir, tmp_path):
    assert GLMTokenizer.from_pretrained(chatglm_dir).family == "chatglm"
    only_model = tmp_path / "only_model"
    only_model.mkdir()
    (only_model / "ice_text.model").write_bytes(open(f"{chatglm_dir}/ice_text.model", "rb").read())
    tokenizer = GLMTokenizer.from_pretrained(only_model)
    assert isinstance(tokenizer, ChatGLMTokenizer)
    assert tokenizer.num_image_tokens == 20000  # the remote code's default when no config says otherwise


def test_special_ids_are_the_config_strings_looked_up_in_the_model(tok, sp):
    s = tok.special
    assert (s.mask, s.gmask, s.smask, s.sop, s.eop, s.pad, s.unk) == (
        sp.piece_to_id("[MASK]"),
        sp.piece_to_id("[gMASK]"),
        sp.piece_to_id("[sMASK]"),
        sp.piece_to_id("<sop>"),
        sp.piece_to_id("<eop>"),
        sp.piece_to_id("<pad>"),
        0,
    )
    # user-defined pieces follow the three control pieces in the order given to the trainer
    assert (s.pad, s.mask, s.gmask, s.smask, s.sop, s.eop) == (3, 4, 5, 6, 8, 9)
    assert s.cls is None and s.sep is None and not s.frames_part_a
    assert s.eos == s.eop  # <eop> ends Part B and generation
    assert tok.vocab_size == sp.get_piece_size()


def test_released_ids():
    s = special_tokens_for("chatglm")
    assert (s.mask, s.gmask, s.smask, s.sop, s.eop, s.pad, s.eos, s.cls) == (
        130000,
        130001,
        130002,
        130004,
        130005,
        3,
        130005,
        None,
    )
    assert chatglm_tokens() == s


def test_num_image_tokens_offsets_every_id(chatglm_dir, tmp_path, tok):
    write_chatglm_dir(tmp_path, {**HUB_CONFIG, "num_image_tokens": 20})
    shifted = GLMTokenizer.from_pretrained(tmp_path)
    for role in ("pad", "mask", "gmask", "smask", "sop", "eop", "unk"):
        assert getattr(shifted.special, role) == getattr(tok.special, role) + 20
    for text in TEXTS:
        assert shifted.encode(text) == [i + 20 for i in tok.encode(text)]
        assert shifted.decode(shifted.encode(text)) == text
    assert shifted.vocab_size == tok.vocab_size + 20
    assert shifted.convert_ids_to_tokens(7) == "<image_7>"
    assert shifted.decode([7, *shifted.encode("hello")]) == "hello"  # image ids have no text


# ------------------------------------------------------------------------------------------------ text rules
def test_preprocess_rules_by_hand():
    assert preprocess("a\nb") == "a<n>b"
    assert preprocess("a\tb") == "a<|tab|>b"
    assert preprocess("a b") == "a b"  # one space stays a space
    assert preprocess("a  b") == "a<|blank_2|>b"
    assert preprocess("a" + " " * 80 + "b") == "a<|blank_80|>b"
    assert preprocess("a" + " " * 81 + "b") == "a<|blank_80|> b"
    assert preprocess("a" + " " * 85 + "b") == "a<|blank_80|><|blank_5|>b"  # longest first
    assert preprocess(" " * 160) == "<|blank_80|><|blank_80|>"
    assert preprocess("\n\t   x") == "<n><|tab|><|blank_3|>x"
    for n in range(2, 81):
        assert postprocess(f"<|blank_{n}|>") == " " * n
    assert postprocess("<n><|tab|><|blank_12|>") == "\n\t" + " " * 12


@pytest.mark.parametrize("n", [2, 3, 10, 79, 80])
def test_each_space_run_is_one_blank_piece(tok, n):
    pieces = tok.tokenize("a" + " " * n + "b")
    assert f"<|blank_{n}|>" in pieces
    assert not any(p.startswith("<|blank_") and p != f"<|blank_{n}|>" for p in pieces)


def test_85_spaces_are_blank_80_then_blank_5(tok):
    pieces = tok.tokenize("x" + " " * 85 + "y")
    i = pieces.index("<|blank_80|>")
    assert pieces[i + 1] == "<|blank_5|>"


def test_newline_and_tab_pieces(tok, sp):
    ids = tok.encode("a\nb\tc")
    assert sp.piece_to_id("<n>") in ids and sp.piece_to_id("<|tab|>") in ids


def reference_preprocess(text: str) -> str:
    """Each maximal run of L >= 2 spaces: L // 80 pieces <|blank_80|>, then the rest r as <|blank_r|> (r >= 2) or one
    space (r = 1) - the longest-first rule worked out per run."""

    def run(match: re.Match[str]) -> str:
        whole, rest = divmod(len(match.group()), 80)
        return "<|blank_80|>" * whole + (f"<|blank_{rest}|>" if rest >= 2 else " " * rest)

    return re.sub(" {2,}", run, text.replace("\n", "<n>").replace("\t", "<|tab|>"))


@pytest.mark.parametrize("text", TEXTS)
def test_encode_is_sentencepiece_on_the_preprocessed_text(tok, sp, text):
    assert preprocess(text) == reference_preprocess(text)
    assert tok.encode(text) == sp.encode(reference_preprocess(text))


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_strings_in_text_split_with_the_whitespace_around_them(tok):
    s = tok.special
    assert tok.encode("hello [MASK] world") == [*tok.encode("hello"), s.mask, *tok.encode("world")]
    assert tok.encode("hello<sop>world") == [*tok.encode("hello"), s.sop, *tok.encode("world")]
    # [gMASK] is left to SentencePiece (a user-defined piece there), as in the hub tokenizer
    assert s.gmask in tok.encode("hello [gMASK]")


# ------------------------------------------------------------------------------------------------ specials, decode
def test_encode_with_special_tokens_and_pair_layout(tok):
    s = tok.special
    a, b = tok.encode("hello world"), tok.encode("the lazy dog")
    assert tok.encode("hello world", add_special_tokens=True) == [*a, s.gmask, s.sop]
    assert tok.build_inputs_with_special_tokens(a, b) == [*a, s.gmask, s.sop, *b, s.eop]
    assert tok.encode("hello world") == a  # no special tokens by default: the layout adds them


def test_decode_drops_pads_always_and_specials_when_asked(tok):
    s = tok.special
    ids = [s.pad, s.pad, *tok.encode("hello world"), s.gmask, s.sop, *tok.encode("dog"), s.eop]
    assert tok.decode(ids) == "hello world dog"  # "dog" was encoded with its own word-start piece
    kept = tok.decode(ids, skip_special_tokens=False)
    assert "<pad>" not in kept and "[gMASK]<sop>" in kept and kept.endswith("<eop>")
    assert tok.decode([s.pad, *tok.encode("a\tb")], skip_special_tokens=False) == "a\tb"


def test_save_and_reload(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = GLMTokenizer.from_pretrained(tmp_path)
    assert again.fingerprint() == tok.fingerprint()
    assert again.special == tok.special
    assert all(again.encode(t) == tok.encode(t) for t in TEXTS)


# ------------------------------------------------------------------------------------------------ errors
def test_bad_inputs_and_files_raise_one_clear_error(tok, chatglm_dir, tmp_path):
    with pytest.raises(TokenizerError, match="not valid UTF-8"):
        tok.encode(b"caf\xe9")
    model = open(f"{chatglm_dir}/ice_text.model", "rb").read()
    cases = {
        "badjson": (b"{not json", "not valid JSON"),
        "notutf8": (b'{"mask_token": "\xff"}', "not valid UTF-8"),
        "missing_piece": (
            json.dumps({**HUB_CONFIG, "mask_token": "<nope>"}).encode(),
            "mask_token '<nope>' is not a piece",
        ),
        "offset": (json.dumps({**HUB_CONFIG, "num_image_tokens": -1}).encode(), "num_image_tokens"),
        "lower": (json.dumps({**HUB_CONFIG, "do_lower_case": "yes"}).encode(), "do_lower_case"),
    }
    for name, (config, message) in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / "ice_text.model").write_bytes(model)
        (d / "tokenizer_config.json").write_bytes(config)
        with pytest.raises(GLMError, match=message):
            GLMTokenizer.from_pretrained(d)
    d = tmp_path / "ids"
    d.mkdir()
    (d / "ice_text.model").write_bytes(model)
    (d / "tokenizer_config.json").write_text(json.dumps(HUB_CONFIG))
    (d / "config.json").write_text(json.dumps({"mask_token_id": 130000}))
    with pytest.raises(TokenizerError, match="config.json: mask_token_id is 130000, but the tokenizer files give 4"):
        GLMTokenizer.from_pretrained(d)
    d = tmp_path / "no_blanks"
    d.mkdir()
    write_chatglm_dir(d, pieces=COMMAND_PIECES)
    with pytest.raises(TokenizerError, match="has no piece '<n>'"):
        GLMTokenizer.from_pretrained(d)
    d = tmp_path / "garbage"
    d.mkdir()
    (d / "ice_text.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a valid SentencePiece model"):
        GLMTokenizer.from_pretrained(d)


# ------------------------------------------------------------------------------------------------ chat prompt
def test_chat_prompt_exact_strings():
    assert chat_prompt("你好") == "你好"  # chat() sends a first query with no history as it is
    history = [("你好", "你好👋!"), ("what is GLM?", "A model.")]
    assert chat_prompt("你好", bare_first_query=False) == "[Round 0]\n问：你好\n答："
    assert chat_prompt("thanks", history, bare_first_query=False) == chat_prompt("thanks", history)
    assert chat_prompt("thanks", history) == (
        "[Round 0]\n问：你好\n答：你好👋!\n[Round 1]\n问：what is GLM?\n答：A model.\n[Round 2]\n问：thanks\n答："
    )


# ------------------------------------------------------------------------------------------------ layout
def remote_position_rule(ids: list[int], sop: int, mask: int, gmask: int) -> np.ndarray:
    """The hub tokenizer's 2-D positions, written from its rule: context = tokens before <sop>; positions 0.. over
    the context and the mask's position from <sop> on ([MASK] if present, else [gMASK]); block ids 0 then 1, 2, ..."""
    n = len(ids)
    context = ids.index(sop) if sop in ids else n
    blank = mask if mask in ids else gmask
    positions = list(range(n))
    if blank in ids:
        positions[context:] = [ids.index(blank)] * (n - context)
    blocks = [0] * context + list(range(1, n - context + 1))
    return np.array([positions, blocks])


def test_scoring_layout_is_the_pair_layout(tok):
    s = tok.special
    a, b = tok.encode("hello world"), tok.encode("the lazy dog")
    sample = build_scoring_input(a, b, s)
    pair = tok.build_inputs_with_special_tokens(a, b)
    assert sample.input_ids.tolist() == pair[:-2]  # Part B is teacher-forced: <sop> b[:-1]
    assert sample.targets[sample.sep :].tolist() == b
    assert sample.sep == pair.index(s.sop)
    np.testing.assert_array_equal(sample.position_ids, remote_position_rule(pair[:-2], s.sop, s.mask, s.gmask))
    lambada = build_scoring_input(a, b, s, add_eos=True)  # ChatGLM has no eos after Part A
    assert lambada.input_ids.tolist() == sample.input_ids.tolist()


def test_generation_prompt_with_and_without_mask(tok):
    s = tok.special
    a = tok.encode("hello world")
    prompt = build_generation_prompt(a, s)
    assert prompt.input_ids.tolist() == [*a, s.gmask]  # no [CLS], no eos; generation feeds <sop> next
    assert prompt.mask_positions == (len(a),)
    mid = tok.encode("hello [MASK] world")
    prompt = build_generation_prompt(mid, s)
    assert prompt.input_ids.tolist() == [*mid, s.gmask]  # the generation mask is appended after a [MASK] too
    full = [*prompt.input_ids.tolist(), s.sop, 42]
    expected = remote_position_rule(full, s.sop, s.mask, s.gmask)
    assert prompt.mask_positions == (mid.index(s.mask),) == (expected[0, -1],)


def test_seq2seq_layout(tok):
    s = tok.special
    src, tgt = tok.encode("hello world"), tok.encode("dog")
    sample = build_seq2seq_input(src, s, target_ids=tgt, max_source_length=4)
    assert sample.input_ids.tolist() == [*src[:3], s.gmask, s.sop, *tgt]
    assert sample.targets[sample.sep :].tolist() == [*tgt, s.eop]
    np.testing.assert_array_equal(
        sample.position_ids, remote_position_rule(sample.input_ids.tolist(), s.sop, s.mask, s.gmask)
    )


def test_cloze_layout_with_a_mid_text_mask(tok):
    s = tok.special
    text = tok.encode("hello [MASK] world")
    candidate = tok.encode("lazy dog")
    sample = build_candidate_sequences(text, [candidate], s, append_eop=True)[0]
    pair = tok.build_inputs_with_special_tokens(text, candidate)  # text [gMASK] <sop> candidate <eop>
    assert sample.input_ids.tolist() == pair[:-1]
    assert sample.targets[sample.sep :].tolist() == [*candidate, s.eop]
    np.testing.assert_array_equal(sample.position_ids, remote_position_rule(pair[:-1], s.sop, s.mask, s.gmask))
