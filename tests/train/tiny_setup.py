"""The training tests' fixture data: a tiny seeded GLM directory with glm-tiny's tokenizer, and a synthetic corpus."""

from __future__ import annotations

import shutil
from pathlib import Path

from glm_core.checkpoint import SHIPPED_PRESETS, save_model
from glm_core.config import GLMConfig
from glm_core.model import build_model

TOKENIZER_FILES = ("spiece.model", "glm_tokenizer.json")


def make_tiny_run_inputs(root: Path, name: str, num_documents: int) -> dict[str, Path]:
    """``root/tiny-model`` (hidden 64, 2 layers, glm-tiny's SentencePiece tokenizer) and ``root/corpus.txt``."""
    from training.corpus import write_corpus

    model_dir = root / "tiny-model"
    config = GLMConfig(
        vocab_size=2048, hidden_size=64, num_layers=2, num_attention_heads=1, max_sequence_length=64,
        tokenizer_family="sentencepiece", name=name,
    )  # fmt: skip
    save_model(build_model(config, seed=0), model_dir)
    for file_name in TOKENIZER_FILES:
        shutil.copy(SHIPPED_PRESETS["glm-tiny"] / file_name, model_dir / file_name)
    corpus = write_corpus(str(root / "corpus.txt"), num_documents=num_documents)
    return {"root": root, "model": model_dir, "corpus": Path(corpus)}
