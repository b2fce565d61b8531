"""Pretokenized pretraining data: ``glm-train pretokenize``, ``pretrain --data`` (memmap) and DataLoader workers.

The token file must hold exactly the stream that ``--corpus`` builds in memory, the sampler must read it without
loading it, and neither the data source nor the number of worker processes may change a single batch or loss.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from glm_core.config import GLMConfig
from glm_core.errors import ConfigError, DataError
from glm_core.model import build_model
from glm_core.outputs import MARKER
from glm_core.special_tokens import sentencepiece_tokens
from glm_core.tokenizer import GLMTokenizer
from tests.train.tiny_setup import make_tiny_run_inputs
from training import pretokenized as pretok
from training.batches import step_batches
from training.cli import main
from training.config import TrainConfig
from training.data import iter_corpus_documents, read_corpus, sentence_end_ids, tokenize_documents
from training.distributed import DistContext
from training.loop import train
from training.pretokenized import open_pretokenized, pretokenize
from training.sampler import MaskingConfig, PretrainSampler, dblock_id
from training.tasks import PretrainTask

REPO = Path(__file__).resolve().parents[2]
MIXED = MaskingConfig(bert_prob=0.4, gap_sentence_prob=0.3, short_seq_prob=0.3, single_span_prob=0.3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """glm-tiny's tokenizer, a tiny model using it (hidden 64, 2 layers), a 300-document corpus, its token files."""
    made = make_tiny_run_inputs(tmp_path_factory.mktemp("pretokenized"), "pretokenized-test", num_documents=300)
    root, model_dir, corpus = made["root"], made["model"], made["corpus"]
    tokenizer = GLMTokenizer.from_pretrained(model_dir)
    data = root / "corpus-tok"
    pretokenize(corpus, data, tokenizer)
    return {"root": root, "model": model_dir, "corpus": corpus, "tokenizer": tokenizer, "data": data}


def _whole_file_documents(data: bytes) -> list[str]:
    """The document split of the whole text at once (the reference for the streamed reader)."""
    text = data.decode("utf-8").lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return [d for d in (block.strip() for block in text.split("\n\n")) if d]


def _sampler(stream, tokenizer, masking=MIXED, seq_length=32) -> PretrainSampler:
    return PretrainSampler(
        stream,
        tokenizer.special,
        seq_length,
        masking,
        seed=11,
        sentence_ends=sentence_end_ids(tokenizer),
        dblock=dblock_id(tokenizer.family, tokenizer.special),
    )


# ------------------------------------------------------------------------------------------------ reading text
@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 64, 1 << 22])
def test_streamed_documents_equal_the_whole_file_split_at_every_chunk_size(tmp_path, chunk_bytes):
    text = (
        "\ufeff\ufeffFirst doc.\r\nstill first\r\n\r\nsecond € doc 😀\r\r"
        "third\n\n\n\nfourth\u2028line\n \n\t\nfifth\r\n\r\n\r\n"
    )
    path = tmp_path / "c.txt"
    path.write_bytes(text.encode("utf-8"))
    expected = _whole_file_documents(text.encode("utf-8"))
    assert len(expected) == 4  # "\\n \\n" is no blank line: the split is on "\\n\\n" only
    assert list(iter_corpus_documents(path, chunk_bytes=chunk_bytes)) == expected
    assert read_corpus(path) == expected


@pytest.mark.parametrize("chunk_bytes", [1, 2, 7, 1 << 22])
def test_streamed_reader_reports_the_offset_of_the_first_bad_byte(tmp_path, chunk_bytes):
    path = tmp_path / "c.txt"
    path.write_bytes("ok é\n\n€ then ".encode() + b"\xe2\x82 and\n")
    with pytest.raises(DataError, match=r"not valid UTF-8 \(byte 0xe2 at offset 16\)"):
        list(iter_corpus_documents(path, chunk_bytes=chunk_bytes))


# ------------------------------------------------------------------------------------------------ the token file
def test_pretokenize_writes_the_stream_of_tokenize_documents_and_its_document_index(setup, tmp_path, monkeypatch):
    tokenizer = setup["tokenizer"]
    expected = tokenize_documents(read_corpus(setup["corpus"]), tokenizer)
    monkeypatch.setattr(pretok, "BATCH_TOKENS", 100)  # many appends to tokens.bin
    out = tmp_path / "nested" / "tok"
    meta = pretokenize(setup["corpus"], out, tokenizer, chunk_bytes=1000)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "doc_index.npy", "meta.json", "tokens.bin"]
    assert meta == json.loads((out / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["tokens"] == len(expected) and meta["documents"] == 300
    assert meta["tokenizer"] == {
        "family": "sentencepiece",
        "vocab_size": tokenizer.vocab_size,
        "fingerprint": tokenizer.fingerprint(),
        "eos": tokenizer.special.eos,
    }
    assert meta["source"] == {"name": "corpus.txt", "bytes": setup["corpus"].stat().st_size}
    stream = open_pretokenized(out, tokenizer)
    assert isinstance(stream, np.memmap) and stream.dtype == np.uint16 and not stream.flags.writeable
    np.testing.assert_array_equal(stream, expected)
    index = pretok.document_index(out)
    assert index.dtype == np.int64 and index[0] == 0 and index[-1] == len(expected)
    documents = read_corpus(setup["corpus"])
    for d in (0, 1, 150, 299):
        ids = [*tokenizer.encode(documents[d]), tokenizer.special.eos]
        assert stream[index[d] : index[d + 1]].tolist() == ids
    assert not list(tmp_path.glob("nested/.*")), "no staging files left beside OUT"


class _WideTokenizer:
    """A tokenizer whose ids need more than 16 bits: one id per word, counting up from 65530."""

    family = "test"
    vocab_size = 70_000
    special = sentencepiece_tokens(69_990)

    def encode(self, text: str) -> list[int]:
        return [65_530 + i for i, _ in enumerate(text.split())]

    def fingerprint(self) -> str:
        return "wide"


def test_ids_beyond_16_bits_are_stored_as_int32(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a b c d e f g h\n\ni j\n", encoding="utf-8")
    meta = pretokenize(corpus, tmp_path / "tok", _WideTokenizer())
    assert meta["dtype"] == "int32"
    stream = open_pretokenized(tmp_path / "tok", _WideTokenizer())
    eos = _WideTokenizer.special.eos
    assert stream.tolist() == [*range(65_530, 65_538), eos, 65_530, 65_531, eos]


# ------------------------------------------------------------------------------------------------ same batches
def test_memmap_batches_are_bit_identical_to_raw_text_batches(setup):
    tokenizer = setup["tokenizer"]
    raw = _sampler(tokenize_documents(read_corpus(setup["corpus"]), tokenizer), tokenizer)
    mapped = _sampler(open_pretokenized(setup["data"], tokenizer), tokenizer)
    objectives = {raw.batch_plan(step)[0] for step in range(16)}
    assert objectives == {"token", "sentence", "document"}
    for step in range(16):
        for rank, world in ((0, 1), (0, 2), (1, 2)):
            a, b = raw.batch(step, 8, rank, world), mapped.batch(step, 8, rank, world)
            assert sorted(a) == sorted(b)
            for key in a:
                assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (step, rank, key)


def test_the_sampler_reads_windows_from_the_memmap_and_never_copies_the_stream(tmp_path):
    tokens = sentencepiece_tokens(100)
    values = np.random.default_rng(0).integers(10, 100, size=2_000_000).astype(np.uint16)
    values[::50] = tokens.eos  # documents of 50 tokens
    values[7::9] = 7  # sentence ends
    values.tofile(tmp_path / "tokens.bin")
    del values
    stream = np.memmap(tmp_path / "tokens.bin", dtype=np.uint16, mode="r")
    tracemalloc.start()
    try:
        sampler = PretrainSampler(
            stream, tokens, 32, MIXED, seed=11, sentence_ends=[7], dblock=dblock_id("sentencepiece", tokens)
        )
        for step in range(6):
            sampler.batch(step, 8, 1, 2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sampler.stream is stream and isinstance(sampler.stream, np.memmap)
    # an int64 copy of the stream would take 4x its 4 MB; the window permutation (8 bytes per 31 tokens) is the
    # largest thing built
    assert peak < stream.nbytes // 4, (peak, stream.nbytes)
    held = [v for v in vars(sampler).values() if isinstance(v, np.ndarray) and v is not stream]
    held += list(sampler._permutations.values())
    assert held and all(a.nbytes < stream.nbytes // 4 for a in held)
    window = sampler.window_tokens(5)
    assert window.dtype == np.int64 and len(window) == 31 and not np.shares_memory(window, stream)


def test_a_rank_builds_only_its_own_samples(setup):
    tokenizer = setup["tokenizer"]
    sampler = _sampler(open_pretokenized(setup["data"], tokenizer), tokenizer)
    built: list[int] = []
    original = sampler.sample

    def recording(step, index, global_batch_size):
        built.append(index)
        return original(step, index, global_batch_size)

    sampler.sample = recording  # type: ignore[method-assign]
    sampler.batch(3, 8, rank=1, world_size=2)
    assert built == [4, 5, 6, 7]


# ------------------------------------------------------------------------------------------------ workers
def _task(setup) -> PretrainTask:
    tokenizer = setup["tokenizer"]
    return PretrainTask(_sampler(open_pretokenized(setup["data"], tokenizer), tokenizer), 2, 2, 1)


def test_worker_batches_equal_in_loop_batches_from_any_start_step(setup):
    task = _task(setup)
    ctx = DistContext()
    got = list(step_batches(task, 3, 7, ctx, workers=2))
    assert len(got) == 4
    for step, micro in zip(range(3, 7), got, strict=True):
        expected = task.micro_batches(step, 0, 1)
        assert len(micro) == len(expected) == 2
        for m, e in zip(micro, expected, strict=True):
            assert all(isinstance(m[k], torch.Tensor) and np.array_equal(m[k].numpy(), e[k]) for k in e)
    with pytest.raises(ConfigError, match="data workers"):
        step_batches(task, 0, 1, ctx, workers=-1)


def test_losses_with_two_data_workers_equal_those_built_in_the_loop(setup, tmp_path):
    config = GLMConfig.from_hf_config(setup["model"])  # dropout 0.1 on: the workers must not draw from torch's RNG
    cfg = TrainConfig(steps=3, micro_batch_size=2, grad_accum=2, log_every=1)
    losses = {}
    for workers in (0, 2):
        torch.manual_seed(0)
        model = build_model(config, seed=0)
        result = train(model, _task(setup), cfg, out_dir=tmp_path / f"w{workers}", progress=False, data_workers=workers)
        losses[workers] = result.losses
    assert len(losses[0]) == 3 and losses[2] == losses[0]


# ------------------------------------------------------------------------------------------------ command line
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _pretrain(setup, out: Path, *source: str) -> list[str]:
    return [
        "pretrain", "--model", str(setup["model"]), "--from-scratch", *source, "--out", str(out), "--steps", "3",
        "--seq-length", "32", "--micro-batch-size", "2", "--log-every", "1", "--quiet", "--no-eval",
        "--bert-prob", "0.5", "--gap-sentence-prob", "0.3",
    ]  # fmt: skip


def _losses(out: Path) -> list[float]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def test_pretrain_on_pretokenized_data_with_workers_equals_raw_text_in_the_loop(setup, tmp_path):
    tok = tmp_path / "tok"
    made = subprocess.run(
        [sys.executable, "-m", "training", "pretokenize", str(setup["corpus"]), str(tok), "--model", str(setup["model"])],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout.strip().splitlines()[-1])["tokens"] == len(open_pretokenized(tok, setup["tokenizer"]))
    runs = [
        _pretrain(setup, tmp_path / "raw", "--corpus", str(setup["corpus"]), "--data-workers", "0"),
        _pretrain(setup, tmp_path / "mapped", "--data", str(tok), "--data-workers", "2"),
    ]
    for args in runs:
        proc = subprocess.run(
            [sys.executable, "-m", "training", *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240
        )
        assert proc.returncode == 0, proc.stderr
    assert len(_losses(tmp_path / "raw")) == 3
    assert _losses(tmp_path / "mapped") == _losses(tmp_path / "raw")
    a = load_file(str(tmp_path / "raw" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "mapped" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _one_line_exit_2(capsys, argv: list[str], fragment: str) -> None:
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("glm-train: error: ") and fragment in err[0], err


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "corpus file not found"), (b"", "corpus is empty"), (b"ok\n\ncaf\xe9 au lait\n", "not valid UTF-8")],
)
def test_pretokenize_bad_corpus_exits_2_and_leaves_nothing(setup, tmp_path, capsys, content, fragment):
    corpus = tmp_path / "bad.txt"
    if content is not None:
        corpus.write_bytes(content)
    before = sorted(tmp_path.iterdir())
    _one_line_exit_2(capsys, ["pretokenize", str(corpus), str(tmp_path / "a" / "b" / "tok")], fragment)
    assert sorted(tmp_path.iterdir()) == before, "no OUT, no staging directory, no parent directories"


def test_pretokenize_refuses_an_existing_out_unless_overwrite(setup, tmp_path, capsys):
    out = tmp_path / "tok"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["pretokenize", str(setup["corpus"]), str(out), "--model", str(setup["model"])]
    _one_line_exit_2(capsys, argv, "already exists; pass --overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    # --overwrite replaces only an earlier pretokenized corpus: a directory of someone else's files is refused
    _one_line_exit_2(capsys, [*argv, "--overwrite"], "is not a pretokenized corpus")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    out.rmdir()
    assert main(argv) == 0
    first = (out / "tokens.bin").read_bytes()
    # a bad corpus with --overwrite: the old OUT stays as it was
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff")
    _one_line_exit_2(capsys, ["pretokenize", str(bad), str(out), "--overwrite"], "not valid UTF-8")
    assert (out / "tokens.bin").read_bytes() == first
    assert main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "doc_index.npy", "meta.json", "tokens.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "tok"]


def test_an_interrupted_pretokenize_leaves_no_out(setup, tmp_path, monkeypatch):
    tokenizer = GLMTokenizer.from_pretrained(setup["model"])
    calls = {"n": 0}
    encode = tokenizer.encode

    def interrupted(text):
        calls["n"] += 1
        if calls["n"] == 200:
            raise KeyboardInterrupt
        return encode(text)

    monkeypatch.setattr(tokenizer, "encode", interrupted)
    monkeypatch.setattr(pretok, "BATCH_TOKENS", 100)  # tokens.bin already holds data when it stops
    with pytest.raises(KeyboardInterrupt):
        pretokenize(setup["corpus"], tmp_path / "tok", tokenizer)
    assert list(tmp_path.iterdir()) == []


def test_pretrain_data_from_another_tokenizer_or_damaged_is_refused(setup, tmp_path, capsys):
    tokenizer = setup["tokenizer"]
    tok = tmp_path / "tok"
    shutil.copytree(setup["data"], tok)
    meta = json.loads((tok / "meta.json").read_text())
    meta["tokenizer"]["fingerprint"] = "0" * 64
    (tok / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="another tokenizer \\(fingerprint"):
        open_pretokenized(tok, tokenizer)
    _one_line_exit_2(capsys, _pretrain(setup, tmp_path / "run", "--data", str(tok)), "another tokenizer")
    assert not (tmp_path / "run").exists()
    meta["tokenizer"]["fingerprint"] = tokenizer.fingerprint()
    meta["tokenizer"]["vocab_size"] = 50_000
    (tok / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="vocabulary size 50000"):
        open_pretokenized(tok, tokenizer)
    meta["tokenizer"]["vocab_size"] = tokenizer.vocab_size
    (tok / "meta.json").write_text(json.dumps(meta))
    with open(tok / "tokens.bin", "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(DataError, match="100 bytes, expected"):
        open_pretokenized(tok, tokenizer)
    with pytest.raises(DataError, match="pretokenized data not found"):
        open_pretokenized(tmp_path / "missing", tokenizer)
    with pytest.raises(DataError, match="no meta.json"):
        open_pretokenized(tmp_path, tokenizer)


def test_pretrain_takes_exactly_one_of_corpus_and_data(setup, tmp_path, capsys):
    for source in ([], ["--corpus", str(setup["corpus"]), "--data", str(setup["data"])]):
        with pytest.raises(SystemExit) as exc:
            main(_pretrain(setup, tmp_path / "run", *source))
        assert exc.value.code == 2
    assert "--corpus" in capsys.readouterr().err
    _one_line_exit_2(
        capsys, _pretrain(setup, tmp_path / "run", "--data", str(setup["data"]), "--data-workers", "-1"), ">= 0"
    )
    assert not (tmp_path / "run").exists()
