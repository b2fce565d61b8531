"""GLMTokenizer against hand-computed tokenizations and the spec §3.2 id tables.

Every vocabulary is built here: a BERT vocab.txt with the real reserved positions, hand-written byte-level BPE
vocabularies (merges chosen so the expected pieces can be worked out by hand), and a SentencePiece model trained on a
few sentences (its raw ``SentencePieceProcessor`` is the reference for the text pieces).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import sentencepiece as spm

from glm_core.errors import ConfigError, TokenizerError
from glm_core.special_tokens import sentencepiece_tokens, special_tokens_for
from glm_core.tokenizer import GLMTokenizer, padded_size, train_sentencepiece

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------------ vocab builders
def gpt2_byte_alphabet() -> list[str]:
    """The 256 printable stand-ins GPT-2 uses for raw bytes, in byte order (written from the GPT-2 paper's scheme:
    printable Latin-1 bytes stand for themselves, the others map to U+0100 upwards)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {}
    extra = 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


BERT_WORDS = [".", ",", "!", "(", ")", "the", "quick", "brown", "fox", "jump", "##s", "##ed", "over", "lazy", "dog"]
BERT_WORDS += ["ng", "is", "an", "professor", "at", "stanford", "formerly", "hello", "world", "cafe"]
BERT_RESERVED = ["[PAD]", *[f"[unused{i}]" for i in range(99)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Merge ranks chosen so that "formerly" needs every one of them, in order; "Ġ(" and "Ġis" are single merges.
BPE_MERGES = [("Ġ", "i"), ("Ġi", "s"), ("Ġ", "("), ("f", "o"), ("fo", "r"), ("for", "m"), ("e", "r")]
BPE_MERGES += [("form", "er"), ("l", "y"), ("former", "ly")]
ROBERTA_PREFIX = ["<s>", "<pad>", "</s>", "<unk>"]


def write_bert_vocab(directory, tokens=None) -> None:
    tokens = BERT_RESERVED + BERT_WORDS if tokens is None else tokens
    (directory / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")


def write_bpe(directory, prefix=()) -> dict[str, int]:
    tokens = [*prefix, *gpt2_byte_alphabet(), *(a + b for a, b in BPE_MERGES)]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in BPE_MERGES)
    (directory / "merges.txt").write_text(merges, encoding="utf-8")
    return vocab


SP_CORPUS = [
    "Ng is an adjunct professor at Stanford University (formerly associate professor).",
    "The quick brown fox jumps over the lazy dog.",
    "A language model fills in the blank with a span of text.",
    "Blank infilling predicts the missing span autoregressively.",
    "Stanford University is in California, and the professor teaches there.",
]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bert")
    write_bert_vocab(d)
    return d


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt2")
    write_bpe(d)
    return d


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("roberta")
    write_bpe(d, prefix=ROBERTA_PREFIX)
    return d


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    train_sentencepiece(SP_CORPUS * 4, d, vocab_size=64, model_prefix="spiece")
    return d


@pytest.fixture(scope="module")
def sp_ref(sp_dir):
    return spm.SentencePieceProcessor(model_file=str(sp_dir / "spiece.model"))


def bert_id(token: str) -> int:
    return (BERT_RESERVED + BERT_WORDS).index(token)


# ------------------------------------------------------------------------------------------------------- BERT
def test_bert_trap1_eos_is_pad_in_original_and_sep_in_hf(bert_dir):
    original = GLMTokenizer.from_pretrained(bert_dir)
    hf = GLMTokenizer.from_pretrained(bert_dir, convention="hf")
    assert (original.family, original.convention) == ("bert", "original")
    # spec §3.2 BERT column; trap 1: the original Part A ends with [PAD] = 0, the hub tokenizer with [SEP] = 102.
    assert original.eos_id == 0 and hf.eos_id == 102
    for tok in (original, hf):
        assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
        assert (tok.sop_id, tok.eop_id, tok.gmask_id, tok.smask_id) == (30522, 30523, None, None)
        assert tok.vocab_size == len(tok) == 30524 and tok.padded_vocab_size == 30592  # spec table: padded V 30592


def test_bert_encode_gives_hand_computed_wordpieces(bert_dir):
    tok = GLMTokenizer.from_pretrained(bert_dir)
    ids = tok.encode("The quick brown fox jumps [MASK] the lazy dog.")
    expected = [bert_id(t) for t in ("the", "quick", "brown", "fox", "jump", "##s")]
    expected += [103] + [bert_id(t) for t in ("the", "lazy", "dog", ".")]
    assert ids == expected
    # Lowercasing and accent stripping (uncased BERT), unknown word -> [UNK] = 100, no [CLS]/eos added.
    assert tok.encode("Hello, CAFÉ zebra!") == [bert_id("hello"), bert_id(","), bert_id("cafe"), 100, bert_id("!")]
    assert tok.tokenize("jumped") == ["jump", "##ed"]


def test_bert_decode_round_trip(bert_dir):
    tok = GLMTokenizer.from_pretrained(bert_dir)
    text = "the quick brown fox jumps [MASK] the lazy dog."
    ids = tok.encode(text)
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.decode(ids) == "the quick brown fox jumps the lazy dog."
    assert tok.decode([101, *ids, 0]) == "the quick brown fox jumps the lazy dog."


def test_bert_vocab_with_mask_at_another_id_is_refused(tmp_path):
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the"]
    write_bert_vocab(tmp_path, tokens)
    with pytest.raises(TokenizerError, match=r"vocab\.txt.*'\[UNK\]' at id 1.*expects it at id 100"):
        GLMTokenizer.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------------------- GPT-2
def test_gpt2_special_ids_follow_the_table(gpt2_dir):
    tok = GLMTokenizer.from_pretrained(gpt2_dir)
    assert (tok.family, tok.convention) == ("gpt2", "original")
    s = tok.special
    # spec §3.2 GPT-2 column (glm-2b, glm-10b), identical in both conventions.
    expected = dict(pad=50256, eos=50256, sop=50257, eop=50258, cls=50259, mask=50260, sep=50261, unk=50262)
    assert s.to_dict() == {**expected, "gmask": 50263, "smask": 50264, "bad_words": ()}
    assert GLMTokenizer.from_pretrained(gpt2_dir, convention="hf").special == s
    assert tok.vocab_size == 50265 and tok.padded_vocab_size == 50304
    text = "[gMASK][sMASK]<|startofpiece|><|endofpiece|><|endoftext|>[CLS]"
    assert tok.encode(text) == [50263, 50264, 50257, 50258, 50256, 50259]


def test_gpt2_whitespace_rule_keeps_the_space_after_a_mask(gpt2_dir):
    tok = GLMTokenizer.from_pretrained(gpt2_dir)
    vocab = json.loads((gpt2_dir / "vocab.json").read_text(encoding="utf-8"))
    ids = tok.encode("Ng is [MASK] (formerly")
    # Hand-computed BPE: "Ng" has no merge; "Ġis" and "Ġ(" are merges 1-3; "formerly" uses merges 4-10 in order.
    assert ids == [vocab["N"], vocab["g"], vocab["Ġis"], 50260, vocab["Ġ("], vocab["formerly"]]
    assert tok.convert_ids_to_tokens(ids[4]).startswith("Ġ(")
    # Only the whitespace before the mask goes (spec §3.2; the 4.2x HF tokenizers also strip after it: "(").
    assert tok.encode("Ng is[MASK] (formerly") == ids
    assert tok.encode("Ng is \n\t [MASK] (formerly") == ids
    assert tok.encode("Ng is [MASK](formerly")[4] == vocab["("]
    # Non-blank command tokens strip nothing.
    assert tok.encode("a <|startofpiece|> b") == [vocab["a"], vocab["Ġ"], 50257, vocab["Ġ"], vocab["b"]]


def test_gpt2_round_trip_of_arbitrary_unicode(gpt2_dir):
    tok = GLMTokenizer.from_pretrained(gpt2_dir)
    text = "Hello, wörld! 東京 🙂  two spaces\ttab\nnew line "
    assert tok.decode(tok.encode(text)) == text
    masked = "Ng is [MASK] (formerly associate professor) [gMASK]"
    assert tok.decode(tok.encode(masked), skip_special_tokens=False) == masked
    assert tok.decode(tok.encode(masked)) == "Ng is (formerly associate professor)"


def test_gpt2_add_prefix_space_matches_a_leading_space(gpt2_dir):
    tok = GLMTokenizer.from_pretrained(gpt2_dir)
    assert tok.encode("Yes", add_prefix_space=True) == tok.encode(" Yes")
    assert tok.tokenize(" Yes") == ["Ġ", "Y", "e", "s"]
    assert tok.tokenize("Yes") == ["Y", "e", "s"]
    assert tok.encode(" Yes", add_prefix_space=True) == tok.encode(" Yes")  # never a second space


def test_unassigned_rows_decode_as_unused(gpt2_dir):
    tok = GLMTokenizer.from_pretrained(gpt2_dir)
    assert tok.decode([1000]) == ""
    assert tok.convert_ids_to_tokens(1000) == "<|unused_1000|>"
    assert tok.convert_tokens_to_ids("<|unused_1000|>") == 1000
    assert tok.decode([50303]) == ""  # last padding row
    for bad in ([50304], [-1]):
        with pytest.raises(TokenizerError, match="out of range"):
            tok.decode(bad)


# ----------------------------------------------------------------------------------------------------- RoBERTa
def test_roberta_trap2_mask_is_50264_original_and_50267_hf(roberta_dir):
    original = GLMTokenizer.from_pretrained(roberta_dir)  # detected from "<s>" at id 0
    hf = GLMTokenizer.from_pretrained(roberta_dir, convention="hf")
    assert original.family == "roberta" and original.convention == "original"
    assert original.mask_id == 50264 and hf.mask_id == 50267
    assert original.encode("[MASK]") == [50264] and hf.encode("[MASK]") == [50267]
    for tok in (original, hf):
        assert (tok.pad_id, tok.eos_id, tok.cls_id, tok.unk_id, tok.sop_id, tok.eop_id) == (2, 2, 0, 3, 50265, 50266)
        assert tok.gmask_id is None and tok.smask_id is None and tok.padded_vocab_size == 50304
    assert original.vocab_size == 50267 and hf.vocab_size == 50268
    # "a" follows the 4 reserved tokens at its byte value; [CLS] and <|endoftext|> are the original command strings.
    assert original.encode("[CLS]a<|endoftext|>") == [0, 4 + ord("a"), 2]


def test_roberta_hf_convention_is_checked_against_added_tokens(tmp_path):
    write_bpe(tmp_path, prefix=ROBERTA_PREFIX)
    added = {"<|startofpiece|>": 50265, "<|endofpiece|>": 50266, "[MASK]": 50267}  # hub glm-roberta-large
    (tmp_path / "added_tokens.json").write_text(json.dumps(added), encoding="utf-8")
    assert GLMTokenizer.from_pretrained(tmp_path, convention="hf").mask_id == 50267
    assert GLMTokenizer.from_pretrained(tmp_path).mask_id == 50264  # original ids ignore the hub table
    (tmp_path / "added_tokens.json").write_text(json.dumps({**added, "[MASK]": 50264}), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"added_tokens\.json.*'\[MASK\]' to 50264.*has 50267"):
        GLMTokenizer.from_pretrained(tmp_path, convention="hf")


# ------------------------------------------------------------------------------------------------ SentencePiece
def test_sentencepiece_command_tokens_follow_the_pieces(sp_dir, sp_ref):
    tok = GLMTokenizer.from_pretrained(sp_dir)
    n = sp_ref.get_piece_size()
    assert (tok.family, tok.convention, tok.base_vocab_size) == ("sentencepiece", "hf", n)
    # sentencepiece_tokens(num_pieces) layout; n + 5 is the hub's [UNUSED2], no role.
    offsets = dict(eos=0, pad=0, sep=1, cls=2, mask=3, unk=4, sop=6, eop=7, smask=8, gmask=9)
    assert {role: getattr(tok, f"{role}_id") for role in offsets} == {r: n + k for r, k in offsets.items()}
    assert tok.bad_words_ids == ()
    assert tok.vocab_size == n + 10 and tok.padded_vocab_size == padded_size(n + 10) == 128
    assert sp_ref.id_to_piece(0) == "<unk>"


def test_sentencepiece_segments_match_the_raw_model(sp_dir, sp_ref):
    tok = GLMTokenizer.from_pretrained(sp_dir)
    n = sp_ref.get_piece_size()
    ids = tok.encode("Ng is an adjunct professor at [MASK] (formerly associate professor).")
    expected = sp_ref.encode("Ng is an adjunct professor at") + [n + 3]
    expected += sp_ref.encode(" (formerly associate professor).")
    assert ids == expected
    assert 0 in tok.encode("a snowman ☃")  # spec §3.2 / issue #140: unseen characters become <unk> = 0
    text = "the quick brown fox jumps over the lazy dog."
    assert tok.decode(tok.encode(text)) == text
    masked = "Ng is [MASK] (formerly professor)"
    assert tok.decode(tok.encode(masked), skip_special_tokens=False) == masked
    assert tok.decode(tok.encode(masked)) == "Ng is (formerly professor)"


def test_trap3_glm_10b_chinese_gmask(sp_dir, sp_ref):
    n = sp_ref.get_piece_size()
    original = GLMTokenizer.from_pretrained(sp_dir, convention="original", model_name="glm-10b-chinese")
    hf = GLMTokenizer.from_pretrained(sp_dir, convention="hf", model_name="glm-10b-chinese")
    fixed = GLMTokenizer.from_pretrained(sp_dir, convention="original", model_name="glm-large-chinese")
    # No --fix-command-token in the 10B-Chinese run: gMASK got eop's id.
    assert original.gmask_id == original.eop_id == n + 7 and original.bad_words_ids == ()
    assert original.encode("[gMASK]") == [n + 7]
    assert original.convert_ids_to_tokens(n + 7) == "<|endofpiece|>"
    # The hub uses the copied row n + 9 and bans generating it.
    assert hf.gmask_id == n + 9 and hf.bad_words_ids == (n + 9,) and hf.encode("[gMASK]") == [n + 9]
    assert fixed.gmask_id == n + 9 and fixed.bad_words_ids == ()


def test_trap3_absolute_ids_for_the_real_50000_piece_vocabulary():
    original = special_tokens_for("sentencepiece", "original", model_name="glm-10b-chinese", num_pieces=50000)
    hf = special_tokens_for("sentencepiece", "hf", model_name="glm-10b-chinese", num_pieces=50000)
    large = special_tokens_for("sentencepiece", "original", model_name="glm-large-chinese", num_pieces=50000)
    assert original.gmask == original.eop == 50007
    assert (hf.gmask, hf.bad_words) == (50009, (50009,))
    assert (large.gmask, large.smask, large.bad_words) == (50009, 50008, ())
    assert sentencepiece_tokens(50000).mask == 50003


def test_hub_tokenizer_config_gives_family_and_model_name(tmp_path, sp_dir, sp_ref):
    (tmp_path / "cog-pretrain.model").write_bytes((sp_dir / "spiece.model").read_bytes())
    config = {"tokenizer_class": "GLMChineseTokenizer", "name_or_path": "THUDM/glm-10b-chinese"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tok = GLMTokenizer.from_pretrained(tmp_path)
    n = sp_ref.get_piece_size()
    assert (tok.family, tok.model_name, tok.convention) == ("sentencepiece", "glm-10b-chinese", "hf")
    assert tok.bad_words_ids == (n + 9,)


def test_train_sentencepiece_is_deterministic(tmp_path, sp_dir):
    a = train_sentencepiece(SP_CORPUS * 4, tmp_path / "a", vocab_size=64)
    b = train_sentencepiece(iter(SP_CORPUS * 4), tmp_path / "b", vocab_size=64)
    assert a.endswith("spiece.model")
    with open(a, "rb") as fa, open(b, "rb") as fb:
        data = fa.read()
        assert data == fb.read() == (sp_dir / "spiece.model").read_bytes()
    pieces = spm.SentencePieceProcessor(model_proto=data)
    assert [pieces.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]  # cog-pretrain layout


def test_train_sentencepiece_errors(tmp_path):
    with pytest.raises(TokenizerError, match="Vocabulary size too high"):
        train_sentencepiece(["tiny corpus"], tmp_path, vocab_size=5000)
    with pytest.raises(TokenizerError, match="empty corpus"):
        train_sentencepiece(["", "  "], tmp_path, vocab_size=50)
    with pytest.raises(TokenizerError, match="not valid UTF-8"):
        train_sentencepiece([b"caf\xe9"], tmp_path, vocab_size=50)


# ----------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize(
    "fixture, kwargs, files",
    [
        ("bert_dir", {"convention": "hf"}, ["vocab.txt"]),
        ("gpt2_dir", {}, ["vocab.json", "merges.txt"]),
        ("roberta_dir", {"convention": "hf"}, ["vocab.json", "merges.txt"]),
        ("sp_dir", {"convention": "original", "model_name": "glm-10b-chinese"}, ["spiece.model"]),
    ],
)
def test_save_pretrained_round_trips_exactly(request, tmp_path, fixture, kwargs, files):
    source = request.getfixturevalue(fixture)
    tok = GLMTokenizer.from_pretrained(source, **kwargs)
    written = tok.save_pretrained(tmp_path / "out")
    assert sorted(os.path.basename(p) for p in written) == sorted([*files, "glm_tokenizer.json"])
    for name in files:
        assert (tmp_path / "out" / name).read_bytes() == (source / name).read_bytes()
    meta = json.loads((tmp_path / "out" / "glm_tokenizer.json").read_text(encoding="utf-8"))
    assert (meta["family"], meta["convention"], meta["vocab_size"]) == (tok.family, tok.convention, tok.vocab_size)

    again = GLMTokenizer.from_pretrained(tmp_path / "out")  # no arguments: everything comes from the files
    assert (again.family, again.convention, again.model_name) == (tok.family, tok.convention, tok.model_name)
    assert again.special == tok.special
    assert (again.vocab_size, again.padded_vocab_size) == (tok.vocab_size, tok.padded_vocab_size)
    text = "The professor is at [MASK] (formerly [gMASK]) <|startofpiece|> Stanford"
    assert again.encode(text) == tok.encode(text)
    assert again.decode(tok.encode(text), skip_special_tokens=False) == tok.decode(tok.encode(text), False)


def test_glm_tokenizer_json_fields_are_validated(tmp_path):
    write_bpe(tmp_path)
    meta = tmp_path / "glm_tokenizer.json"
    meta.write_text(json.dumps({"family": "klingon"}), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"glm_tokenizer\.json.*'family' must be one of"):
        GLMTokenizer.from_pretrained(tmp_path)
    special = {**special_tokens_for("gpt2").to_dict(), "mask": "50260"}
    meta.write_text(json.dumps({"family": "gpt2", "convention": "original", "special": special}), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"special\.mask must be a non-negative integer"):
        GLMTokenizer.from_pretrained(tmp_path)
    meta.write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        GLMTokenizer.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------------- errors
def test_missing_directory_and_files(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer directory not found"):
        GLMTokenizer.from_pretrained(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(TokenizerError, match="expected a tokenizer directory"):
        GLMTokenizer.from_pretrained(tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenizerError, match=r"no tokenizer files found; expected vocab\.txt"):
        GLMTokenizer.from_pretrained(empty)
    with pytest.raises(TokenizerError, match=r"vocab\.txt: file not found; expected BERT WordPiece"):
        GLMTokenizer.from_pretrained(empty, family="bert")
    with pytest.raises(TokenizerError, match="no SentencePiece model found"):
        GLMTokenizer.from_pretrained(empty, family="sentencepiece")
    (empty / "vocab.json").write_text('{"a": 0}', encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"merges\.txt is missing"):
        GLMTokenizer.from_pretrained(empty)
    with pytest.raises(ConfigError, match="unknown tokenizer family"):
        GLMTokenizer.from_pretrained(empty, family="wordpiece")
    with pytest.raises(ConfigError, match="convention must be one of"):
        GLMTokenizer.from_pretrained(empty, family="gpt2", convention="new")


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "expected a non-empty JSON object"),
        ('{"a": 0', "not valid JSON"),
        ('{"a": "0"}', "id of token 'a' must be a non-negative integer"),
        ('{"a": 0, "b": 0}', "id 0 is used by both"),
        ('{"a": 0, "b": 2}', "id 1 is missing"),
    ],
)
def test_malformed_vocab_json(tmp_path, content, message):
    (tmp_path / "vocab.json").write_text(content, encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=message) as info:
        GLMTokenizer.from_pretrained(tmp_path, family="gpt2")
    assert "vocab.json" in str(info.value)


def test_malformed_merges_and_vocab_txt(tmp_path):
    (tmp_path / "vocab.json").write_text('{"a": 0, "b": 1}', encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"merges\.txt: line 2: expected two tokens"):
        GLMTokenizer.from_pretrained(tmp_path)
    (tmp_path / "merges.txt").write_text("a b\n", encoding="utf-8")  # "ab" is missing from vocab.json
    with pytest.raises(TokenizerError, match=r"merges\.txt: line 1: merge 'a b' uses 'ab'"):
        GLMTokenizer.from_pretrained(tmp_path)

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "vocab.txt").write_bytes(b"[PAD]\n[UNK]\ncaf\xe9\n")
    with pytest.raises(TokenizerError, match=r"vocab\.txt: not valid UTF-8 \(byte 0xe9 at offset 15\)"):
        GLMTokenizer.from_pretrained(bert)
    (bert / "vocab.txt").write_text("[PAD]\n\n[UNK]\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="line 2 is empty"):
        GLMTokenizer.from_pretrained(bert)
    (bert / "vocab.txt").write_text("[PAD]\nthe\nthe\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="'the' appears on lines 2 and 3"):
        GLMTokenizer.from_pretrained(bert)


def test_corrupt_sentencepiece_model(tmp_path):
    (tmp_path / "spiece.model").write_bytes(b"this is not a protobuf")
    with pytest.raises(TokenizerError, match=r"spiece\.model: not a valid SentencePiece model"):
        GLMTokenizer.from_pretrained(tmp_path)


def test_bytes_input_must_be_utf8(gpt2_dir):
    tok = GLMTokenizer.from_pretrained(gpt2_dir)
    assert tok.encode("café [MASK]".encode()) == tok.encode("café [MASK]")
    with pytest.raises(TokenizerError, match="not valid UTF-8: byte 0xff at position 3"):
        tok.encode(b"abc\xff")
    with pytest.raises(TokenizerError, match="not valid Unicode: surrogates not allowed at position 1"):
        tok.encode("a\ud800b")
    with pytest.raises(TokenizerError, match="must be str or UTF-8 bytes"):
        tok.encode(42)
    with pytest.raises(TokenizerError, match="'nonsense' is not in the gpt2 vocabulary"):
        tok.convert_tokens_to_ids("nonsense")


def test_whitespace_only_text_encodes_to_nothing(gpt2_dir, sp_dir):
    for directory in (gpt2_dir, sp_dir):
        tok = GLMTokenizer.from_pretrained(directory)
        assert tok.encode("") == [] and tok.encode(" \n ") == []


def test_tokenizer_module_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import glm_core.tokenizer; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
