"""Tiny ChatGLM hub directories for the evaluation tests, made on disk by the tests (no third-party file).

A SentencePiece ``ice_text.model`` trained on the packaged evaluation texts with ChatGLM's user-defined pieces, a
``tokenizer_config.json`` written like the hub's, and a seeded random :class:`glm_core.config.ChatGLMConfig` model
saved in hub layout whose special ids are the tokenizer's (``<pad>`` 3, ``[MASK]`` 4, ``[gMASK]`` 5, ``<sop>`` 8,
``<eop>`` 9: the order the pieces are given to the trainer).
"""

from __future__ import annotations

import json
from pathlib import Path

from glm_core.chatglm_tokenizer import whitespace_pieces
from glm_core.tokenizer import train_sentencepiece

REPO = Path(__file__).resolve().parents[1]
COMMAND_PIECES = ["<pad>", "[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>"]
TINY_IDS = {"pad_token_id": 3, "mask_token_id": 4, "gmask_token_id": 5, "bos_token_id": 8, "eos_token_id": 9}
TOKENIZER_CONFIG = {
    "name_or_path": "tiny-chatglm",
    "bos_token": "<sop>",
    "eos_token": "<eop>",
    "end_token": "</s>",
    "gmask_token": "[gMASK]",
    "mask_token": "[MASK]",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "remove_space": False,
    "do_lower_case": False,
    "tokenizer_class": "ChatGLMTokenizer",
    "num_image_tokens": 0,
}


def _corpus() -> list[str]:
    """Every string of the packaged demo / lm-eval task data: the tiny vocabulary covers the test texts."""
    lines = []
    files = [
        REPO / "evaluation" / "data" / "demo" / "val.jsonl",
        *sorted((REPO / "evaluation" / "lm_eval_tasks" / "data").glob("*.jsonl")),
    ]
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            values = json.loads(line).values() if line.strip() else []
            for value in values:
                items = value if isinstance(value, list) else [value]
                lines += [" ".join(str(v).split()) for v in items if isinstance(v, str)]
    return [*lines, "问：你好 答：你好", "[Round 0]"]


def write_chatglm_tokenizer(directory: Path, vocab_size: int = 400) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    train_sentencepiece(
        _corpus(),
        directory,
        vocab_size=vocab_size,
        model_prefix="ice_text",
        user_defined_symbols=COMMAND_PIECES + whitespace_pieces(),
    )
    (directory / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2), encoding="utf-8")
    return directory


def write_tiny_chatglm(directory: Path, seed: int = 0) -> Path:
    """A hub-layout ChatGLM directory: 2 layers, hidden 32, 4 heads, 128 positions, random weights (``seed``)."""
    import torch

    from glm_core.checkpoint import save_model
    from glm_core.config import ChatGLMConfig
    from glm_core.model import build_model

    write_chatglm_tokenizer(directory)
    config = ChatGLMConfig(
        vocab_size=448, hidden_size=32, num_layers=2, num_attention_heads=4, max_sequence_length=128, **TINY_IDS
    )
    with torch.no_grad():
        model = build_model(config, seed=seed)
    save_model(model, directory)
    return directory
