"""Checkpoint layouts (spec §4): hub .bin, sharded safetensors with ``glm.``, original MP shards; bad input."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glm_core.checkpoint import (
    load_model,
    merge_model_parallel,
    save_model,
    save_original,
    split_model_parallel,
)
from glm_core.errors import CheckpointError, UnknownPresetError, UnsafeCheckpointError


def _logits(model):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=g)
    with torch.no_grad():
        return model(ids, sep=[4, 9]).logits


def _save_hub_bin(model, directory: Path) -> Path:
    directory.mkdir(parents=True)
    torch.save({k: v.half() for k, v in model.state_dict().items()}, directory / "pytorch_model.bin")  # fp16, no prefix
    cfg = model.config.to_hf_config()
    cfg.pop("gelu")  # a real hub config.json has no gelu field
    (directory / "config.json").write_text(json.dumps(cfg))
    return directory


def test_three_layouts_load_to_identical_logits(tiny_model, tmp_path):
    half = tiny_model.half().float()  # every layout stores fp16 here, so compare against the fp16-rounded model
    hub_bin = _save_hub_bin(half, tmp_path / "hub_bin")
    sharded = save_model(half, tmp_path / "hub_sharded", max_shard_bytes=60_000, prefix="glm.", dtype=torch.float16)
    original = save_original(half, tmp_path / "orig", mp_size=2, dtype=torch.float16)
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    assert sorted(p.name for p in (original / "release").iterdir()) == [
        "mp_rank_00_model_states.pt",
        "mp_rank_01_model_states.pt",
    ]
    heads = tiny_model.config.num_attention_heads  # an original checkpoint of no released shape must be told
    models = [load_model(p, gelu="tanh", num_attention_heads=heads) for p in (hub_bin, sharded, original)]
    ref = _logits(half)
    for m in models:
        assert torch.equal(_logits(m), ref)


def test_gelu_default_follows_layout(tiny_model, tmp_path):
    hub = _save_hub_bin(tiny_model, tmp_path / "hub")
    orig = save_original(tiny_model, tmp_path / "orig")
    assert load_model(hub).config.gelu == "erf"  # bit-match the hub remote code (spec §1.4)
    heads = tiny_model.config.num_attention_heads
    assert load_model(orig, num_attention_heads=heads).config.gelu == "tanh"  # as the checkpoints were trained
    assert load_model(orig, gelu="erf", num_attention_heads=heads).config.gelu == "erf"


def test_mp_merge_uses_stride3_qkv_regroup(tiny_model):
    state = tiny_model.state_dict()
    shards = split_model_parallel(state, 2)
    qkv = "transformer.layers.0.attention.query_key_value.weight"
    h = tiny_model.config.hidden_size
    # rank 0 holds the first half of Q's rows, then the first half of K's, then of V's (spec §4.4)
    assert torch.equal(shards[0][qkv][: h // 2], state[qkv][: h // 2])
    assert torch.equal(shards[0][qkv][h // 2 : h], state[qkv][h : h + h // 2])
    merged = merge_model_parallel(shards)
    assert all(torch.equal(merged[k], state[k]) for k in state)
    naive = torch.cat([s[qkv] for s in shards], 0)
    assert not torch.equal(naive, state[qkv])  # plain concatenation would be wrong


def test_stray_heads_are_ignored_with_warning(tiny_model, tmp_path):
    d = tmp_path / "glm2b_like"
    d.mkdir()
    state = dict(tiny_model.state_dict())
    state["dense.weight"] = torch.zeros(3, 3)
    state["out_proj.bias"] = torch.zeros(3)
    torch.save(state, d / "pytorch_model.bin")
    tiny_model.config.save(d)
    with pytest.warns(UserWarning, match="ignoring 2 non-GLM key"):
        m = load_model(d)
    assert torch.equal(_logits(m), _logits(tiny_model))


def test_missing_unexpected_and_misshaped_keys_are_named(tiny_model, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    state = dict(tiny_model.state_dict())
    del state["transformer.final_layernorm.bias"]
    state["transformer.layers.0.mlp.extra"] = torch.zeros(1)
    state["transformer.position_embeddings.weight"] = torch.zeros(5, tiny_model.config.hidden_size)
    torch.save(state, d / "pytorch_model.bin")
    tiny_model.config.save(d)
    with pytest.raises(CheckpointError) as err:
        load_model(d)
    msg = str(err.value)
    assert "missing keys: transformer.final_layernorm.bias" in msg
    assert "unexpected keys: transformer.layers.0.mlp.extra" in msg
    assert "transformer.position_embeddings.weight (5, 128) != (65, 128)" in msg


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_MARKER",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "evil"
    d.mkdir()
    with open(d / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"word_embeddings.weight": _Evil()}, fh)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        load_model(d)
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_missing_truncated_and_unknown_inputs(tiny_model, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(UnknownPresetError, match="glm-huge"):
        load_model("glm-huge")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        load_model(empty)
    saved = save_model(tiny_model, tmp_path / "ok")
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(saved)
    orig = save_original(tiny_model, tmp_path / "orig")
    shard = orig / "release" / "mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(orig)


def test_config_shape_mismatch(tiny_model, tmp_path):
    saved = save_model(tiny_model, tmp_path / "m")
    cfg = json.loads((saved / "config.json").read_text())
    cfg["hidden_size"] = 256
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model(saved)


def test_convert_cli_merges_and_fails_cleanly(tiny_model, tmp_path):
    orig = save_original(tiny_model, tmp_path / "orig", mp_size=2, dtype=None)
    dst = tmp_path / "hub"

    def run(*args):
        cmd = [sys.executable, "-m", "glm_core.convert", *map(str, args)]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])

    unknown = run(orig, dst)  # no config.json and no released shape: the head count must be given
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "--num-attention-heads" in unknown.stderr
    ok = run(orig, dst, "--num-attention-heads", tiny_model.config.num_attention_heads)
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr.startswith("warning: ") and "no config.json" in ok.stderr and "tanh GeLU" in ok.stderr
    assert torch.equal(_logits(load_model(dst, gelu="tanh")), _logits(tiny_model))
    again = run(orig, dst, "--num-attention-heads", 2)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already exists" in again.stderr
    bad = run(tmp_path / "missing", tmp_path / "out2")
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    assert not (tmp_path / "out2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_presets_without_weights_need_explicit_random_weights():
    with pytest.raises(CheckpointError, match="no weights in this package"):
        load_model("glm-base")
    with pytest.warns(UserWarning, match="seeded random weights"):
        m = load_model("glm-base", random_weights=True, seed=0)
    assert m.config.num_layers == 12 and m.config.hidden_size == 768
    shipped = load_model("glm-tiny")
    assert shipped.config.hidden_size == 256 and shipped.word_embeddings.weight.dtype == torch.float32
