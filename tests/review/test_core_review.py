"""Regression tests for defects found in a review of the GLM core (checkpoints, convert, CLI, model inputs).

Each test states the behaviour the spec / DESIGN.md asks for and pins the fix of one defect.
"""

from __future__ import annotations

import json
import os
import random
import warnings

import numpy as np
import pytest
import torch

from glm_core import checkpoint as ck
from glm_core.errors import CheckpointError, InputError

IDS = torch.tensor([[3, 17, 42, 99, 5, 250]])  # [1, 6]


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS, None, sep=4).logits


def _load(path: object, **kwargs: object) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ck.load_model(path, **kwargs)


def test_original_checkpoint_with_numpy_rng_state_loads(tiny_model, tmp_path):
    tag = tmp_path / "ckpt" / "release"
    tag.mkdir(parents=True)
    state = {k: v.half() for k, v in tiny_model.state_dict().items()}
    payload = {  # what GLM:utils.py save_checkpoint writes when --no-save-rng is not given
        "iteration": 0,
        "module": state,
        "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(),
        "torch_rng_state": torch.get_rng_state(),
    }
    torch.save(payload, tag / "mp_rank_00_model_states.pt")
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("release")
    model = _load(tmp_path / "ckpt", num_attention_heads=tiny_model.config.num_attention_heads)
    ref = tiny_model.half().float()  # the checkpoint holds fp16 weights
    torch.testing.assert_close(_logits(model), _logits(ref), rtol=0, atol=0)


def test_sharded_checkpoint_in_hf_cache_layout_loads(tiny_model, tmp_path):
    src = ck.save_model(tiny_model, tmp_path / "src", max_shard_bytes=200_000)
    blobs = tmp_path / "hub" / "blobs"
    snapshot = tmp_path / "hub" / "snapshots" / "0123abc"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in src.iterdir():
        (blobs / f.name).write_bytes(f.read_bytes())
        os.symlink(os.path.relpath(blobs / f.name, snapshot), snapshot / f.name)
    model = _load(snapshot)
    torch.testing.assert_close(_logits(model), _logits(tiny_model), rtol=0, atol=0)


def test_index_may_not_name_a_file_outside_the_directory(tiny_model, tmp_path):
    """The fix for the test above must keep this: '..' in a weight_map is refused (security)."""
    saved = ck.save_model(tiny_model, tmp_path / "m", max_shard_bytes=200_000)
    index_path = saved / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../outside.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside"):
        _load(saved)


def test_save_model_over_a_sharded_save_reloads_the_new_weights(tiny_config, tmp_path):
    from glm_core.model import build_model

    old = build_model(tiny_config, seed=1).eval()
    new = build_model(tiny_config, seed=2).eval()
    ck.save_model(old, tmp_path / "m", max_shard_bytes=200_000)
    ck.save_model(new, tmp_path / "m")
    torch.testing.assert_close(_logits(_load(tmp_path / "m")), _logits(new), rtol=0, atol=0)


def test_mp_shard_missing_a_key_is_a_checkpoint_error(tiny_model, tmp_path):
    out = ck.save_original(tiny_model, tmp_path / "orig", mp_size=2)
    shard = out / "release" / "mp_rank_01_model_states.pt"
    payload = torch.load(shard, weights_only=True)
    del payload["module"]["transformer.final_layernorm.bias"]
    torch.save(payload, shard)
    with pytest.raises(CheckpointError, match="final_layernorm.bias"):
        _load(out)


def test_mp_shards_of_mismatched_shapes_are_a_checkpoint_error(tiny_model, tmp_path):
    out = ck.save_original(tiny_model, tmp_path / "orig", mp_size=2)
    shard = out / "release" / "mp_rank_01_model_states.pt"
    payload = torch.load(shard, weights_only=True)
    payload["module"]["transformer.layers.0.attention.dense.weight"] = torch.zeros(7, 3, dtype=torch.float16)
    torch.save(payload, shard)
    with pytest.raises(CheckpointError):
        _load(out)


def test_infer_config_of_glm_roberta_large_shapes_gives_roberta_family():
    state = {
        "word_embeddings.weight": torch.empty(50304, 1024, device="meta"),
        "transformer.position_embeddings.weight": torch.empty(513, 1024, device="meta"),
    }
    for i in range(24):
        state[f"transformer.layers.{i}.input_layernorm.weight"] = torch.empty(1024, device="meta")
    config = ck.infer_config(state, "test", "tanh")
    assert config.name == "glm-roberta-large"
    assert config.tokenizer_family == "roberta"


def test_convert_keeps_the_source_dtype_by_default(tiny_model, tmp_path):
    from safetensors import safe_open

    from glm_core.convert import main

    src = ck.save_original(tiny_model, tmp_path / "orig", dtype=torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        heads = str(tiny_model.config.num_attention_heads)
        assert main([str(src), str(tmp_path / "hub"), "--num-attention-heads", heads]) == 0
    with safe_open(str(tmp_path / "hub" / "model.safetensors"), "pt") as fh:
        assert fh.get_tensor("word_embeddings.weight").dtype == torch.float16


def test_generate_cli_checks_tokenizer_files_before_building_a_model(monkeypatch, capsys):
    from glm_core import cli

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("a random preset model was built before the tokenizer check")

    monkeypatch.setattr(ck, "_random_preset", no_build)
    assert cli.main(["--model", "glm-10b", "hello [MASK]"]) == 2
    assert "tokenizer" in capsys.readouterr().err


def test_past_of_another_batch_size_is_an_input_error(tiny_model):
    with torch.no_grad():
        past = tiny_model(IDS, None, sep=4).past_key_values  # batch 1
        with pytest.raises(InputError, match="past"):
            tiny_model(torch.tensor([[1], [2]]), None, sep=0, past_key_values=past)  # batch 2


# spec §1.6 table: (L, h, n, P, V, family, params in millions [DERIVED], rounded as the table prints them)
SPEC_1_6 = {
    "glm-base": (12, 768, 12, 512, 30592, "bert", 109.3),
    "glm-large": (24, 1024, 16, 512, 30592, "bert", 334.7),
    "glm-doc": (24, 1024, 16, 512, 30592, "bert", 334.7),
    "glm-410m": (30, 1024, 16, 512, 30592, "bert", 410.3),
    "glm-515m": (30, 1152, 18, 512, 30592, "bert", 514.6),
    "glm-roberta-large": (24, 1024, 16, 512, 50304, "roberta", 354.9),
    "glm-large-chinese": (24, 1024, 16, 1024, 50048, "sentencepiece", 355.7),
    "glm-2b": (36, 2048, 32, 1024, 50304, "gpt2", 1920.0),
    "glm-10b": (48, 4096, 64, 1024, 50304, "gpt2", 9880.0),
    "glm-10b-chinese": (48, 4096, 64, 1024, 50048, "sentencepiece", 9880.0),
}


@pytest.mark.parametrize("name", sorted(SPEC_1_6))
def test_presets_match_spec_table_and_round_trip_through_hub_config(name):
    from glm_core.config import GLMConfig

    L, h, n, P, V, family, params_m = SPEC_1_6[name]
    c = GLMConfig.from_preset(name)
    assert (c.num_layers, c.hidden_size, c.num_attention_heads, c.max_sequence_length, c.vocab_size) == (L, h, n, P, V)
    assert c.head_dim == 64 and c.num_position_rows == P + 1 and c.tokenizer_family == family
    # compare at the precision the table prints: 0.1M below 1B, 0.01B above (1.92B, 9.88B)
    if params_m < 1000:
        assert round(c.num_parameters() / 1e6, 1) == params_m
    else:
        assert round(c.num_parameters() / 1e9, 2) == params_m / 1000
    assert GLMConfig.from_dict(c.to_hf_config()) == c
