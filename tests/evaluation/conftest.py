"""Fixtures for the evaluation tests: a tiny WordPiece tokenizer with knowable ids and a tiny random GLM.

The vocabulary follows BERT's layout for the command tokens (``[PAD]`` 0, ``[UNK]`` 100, ``[CLS]`` 101, ``[SEP]``
102, ``[MASK]`` 103; sop/eop at 30522/30523, spec §3.2), then the words below from id 104 on, one id per word, so a
test can compute every expected id by hand: ``WORD_IDS["yes"] == 104 + WORDS.index("yes")``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.evaluation.vocab import write_vocab


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from glm_core.tokenizer import GLMTokenizer

    d = tmp_path_factory.mktemp("tok")
    write_vocab(d)
    GLMTokenizer.from_pretrained(d, family="bert").save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path):
    from glm_core.tokenizer import GLMTokenizer

    return GLMTokenizer.from_pretrained(tokenizer_dir)


def make_model_dir(directory: Path, tokenizer_dir: Path, *, seed: int = 0, max_sequence_length: int = 128) -> Path:
    """A tiny random GLM (2 layers, h=32) saved in hub layout with the tokenizer beside it."""
    from glm_core.checkpoint import save_model
    from glm_core.config import GLMConfig
    from glm_core.model import build_model

    config = GLMConfig(
        vocab_size=30592,
        hidden_size=32,
        num_layers=2,
        num_attention_heads=4,
        max_sequence_length=max_sequence_length,
        tokenizer_family="bert",
        name="test-tiny",
    )
    model = build_model(config, seed=seed)
    save_model(model, directory)
    for f in tokenizer_dir.iterdir():
        (directory / f.name).write_bytes(f.read_bytes())
    return directory


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("model"), tokenizer_dir)


@pytest.fixture(scope="session")
def torch_backend(model_dir: Path):
    from evaluation.backends import load_backend

    return load_backend("torch", model_dir)
