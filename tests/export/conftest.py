"""Fixtures for the export tests: a tiny random GLM checkpoint and its ONNX export, made once per session.

The dynamo exporter takes several seconds even for a tiny model, so every test that only reads an exported
directory shares one export.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_EXPORT = dict(vocab_size=320, hidden_size=128, num_layers=2, num_attention_heads=2, max_sequence_length=128)
SEED = 4321


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub-layout checkpoint directory (config.json + model.safetensors) of a seeded random tiny GLM."""
    from glm_core.checkpoint import save_model
    from glm_core.config import GLMConfig
    from glm_core.model import build_model

    config = GLMConfig(name="export-tiny", tokenizer_family="sentencepiece", gelu="tanh", **TINY_EXPORT)
    directory = tmp_path_factory.mktemp("ckpt") / "export-tiny"
    save_model(build_model(config, seed=SEED), directory)
    return directory


@pytest.fixture(scope="session")
def tiny_torch_model(tiny_ckpt: Path):
    from glm_core.checkpoint import load_model

    return load_model(tiny_ckpt, dtype="fp32")


@pytest.fixture(scope="session")
def exported_dir(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m export.onnx --ckpt <tiny>`` (fp32, validated), run in-process."""
    from export.onnx import main

    out = tmp_path_factory.mktemp("onnx") / "export-tiny-onnx"
    assert main(["--ckpt", str(tiny_ckpt), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def concat_dir(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same checkpoint exported with the concat layout, validated (validation drives the backend's step)."""
    from export.onnx import main

    out = tmp_path_factory.mktemp("onnx") / "concat"
    assert main(["--ckpt", str(tiny_ckpt), "--out", str(out), "--kv-cache", "concat"]) == 0
    return out
