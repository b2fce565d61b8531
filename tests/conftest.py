"""Shared fixtures. Everything is made here: seeded tiny GLMs, no downloads."""

from __future__ import annotations

import os

# Triton kernels run under the interpreter on CPU-only machines; the flag is read when kernels are decorated,
# so it must be set before any kernel module is imported (spec fused_ops §3).
os.environ.setdefault("TRITON_INTERPRET", "1")
# No test reaches the network: a name that looks like a hub id (owner/name) resolves from the local cache or fails.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

TINY = dict(
    vocab_size=320, hidden_size=128, num_layers=2, num_attention_heads=2, max_sequence_length=64
)  # d = 64 as in every released GLM


@pytest.fixture
def tiny_config():
    from glm_core.config import GLMConfig

    return GLMConfig(name="test-tiny", tokenizer_family="sentencepiece", **TINY)


@pytest.fixture
def tiny_model(tiny_config):
    from glm_core.model import build_model

    return build_model(tiny_config, seed=1234).eval()


@pytest.fixture(scope="session")
def hub_home(tmp_path_factory):
    """An ``HF_HOME`` whose hub cache holds the shipped glm-tiny as ``THUDM/glm-tiny`` (see tests/hub_cache.py)."""
    from pathlib import Path

    import glm_core
    from tests.hub_cache import fabricate_snapshot

    home = tmp_path_factory.mktemp("hf_home")
    fabricate_snapshot(home, "THUDM/glm-tiny", Path(glm_core.__file__).resolve().parent / "assets" / "glm-tiny")
    return home


@pytest.fixture
def offline_hub(hub_home, monkeypatch):
    """``HF_HOME`` = the fabricated cache, ``HF_HUB_OFFLINE=1``: hub ids resolve from disk and never reach the network."""
    monkeypatch.setenv("HF_HOME", str(hub_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_home


@pytest.fixture(scope="session")
def tiny_chatglm_dir(tmp_path_factory):
    """A hub-layout ChatGLM directory with its tiny tokenizer (tests/chatglm_dirs.py); needs torch to write."""
    pytest.importorskip("torch")
    from tests.chatglm_dirs import write_tiny_chatglm

    return write_tiny_chatglm(tmp_path_factory.mktemp("chatglm") / "tiny-chatglm")


@pytest.fixture(scope="session")
def tiny_chatglm_onnx_dir(tiny_chatglm_dir, tmp_path_factory):
    """``tiny_chatglm_dir`` exported by ``python -m export.onnx`` (~40 s on 2 cores, made once per session)."""
    from export.onnx import main

    out = tmp_path_factory.mktemp("chatglm_onnx") / "tiny-chatglm-onnx"
    assert main(["--ckpt", str(tiny_chatglm_dir), "--out", str(out), "--no-validate"]) == 0
    return out
