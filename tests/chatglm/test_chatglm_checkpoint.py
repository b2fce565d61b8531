"""ChatGLM checkpoints: the hub layout (fp16 .bin shards + index, inv_freq buffers), safetensors (+ index),
glm-convert, hub ids from a fabricated cache, and one-line refusals of quantized repos."""

from __future__ import annotations

import json

import pytest
import torch

from glm_core.chatglm import ChatGLMModel
from glm_core.checkpoint import load_model, save_model
from glm_core.config import GLMConfig
from glm_core.errors import CheckpointError, ConfigError
from tests.chatglm.fixtures import GMASK, SOP, hub_config, random_hub_state, write_hub_dir

IDS = torch.tensor([[7, 8, 9, GMASK, SOP, 10, 11]])
POS = torch.tensor([[[0, 1, 2, 3, 3, 3, 3], [0, 0, 0, 0, 1, 2, 3]]])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_hub_dir(tmp_path_factory.mktemp("hub"))


def _logits(model):
    with torch.no_grad():
        return model(IDS, POS, sep=4).logits


def test_config_json_is_recognised_and_round_trips(ckpt, tmp_path):
    config = GLMConfig.from_hf_config(ckpt)
    assert config.architecture == "chatglm"
    assert (config.inner_hidden_size, config.bos_token_id, config.gmask_token_id) == (80, SOP, GMASK)
    assert config.tokenizer_family == "chatglm" and config.gelu == "tanh"
    config.save(tmp_path)
    again = GLMConfig.from_hf_config(tmp_path)
    assert again == config and json.loads((tmp_path / "config.json").read_text())["model_type"] == "chatglm"


def test_preset_has_the_published_dimensions():
    config = GLMConfig.from_preset("chatglm-6b")
    assert config.architecture == "chatglm"
    dims = (config.num_layers, config.hidden_size, config.num_attention_heads, config.ffn_hidden_size)
    assert dims == (28, 4096, 32, 16384)
    assert (config.vocab_size, config.max_sequence_length) == (130528, 2048)
    assert (config.mask_token_id, config.gmask_token_id, config.bos_token_id, config.eos_token_id) == (
        130000,
        130001,
        130004,
        130005,
    )
    # embeddings + untied head + 28 layers + final LayerNorm (the 6.2B "6B" plus the 130,528-row head)
    assert (
        config.num_parameters()
        == 2 * 130528 * 4096 + 28 * (4 * 4096**2 + 4 * 4096 + 2 * 4096 * 16384 + 16384 + 4096 + 4 * 4096) + 2 * 4096
    )


def test_hub_layout_loads_with_the_hub_key_names(ckpt):
    model = load_model(ckpt, dtype="auto")
    assert isinstance(model, ChatGLMModel)
    assert model.lm_head.weight.dtype == torch.float16  # "auto" keeps the checkpoint's fp16
    state = random_hub_state(hub_config())
    ours = model.state_dict()
    assert set(ours) == {k for k in state if not k.endswith("rotary_emb.inv_freq")}
    assert all(torch.equal(ours[k], state[k]) for k in ours)


def test_inv_freq_buffers_are_ignored(ckpt, tmp_path):
    """A checkpoint whose inv_freq copies are garbage gives the same logits: the model recomputes them."""
    index = json.loads((ckpt / "pytorch_model.bin.index.json").read_text())
    for name in sorted(set(index["weight_map"].values())):
        part = torch.load(ckpt / name, weights_only=True)
        part = {k: (torch.full_like(v, 7.0) if k.endswith("inv_freq") else v) for k, v in part.items()}
        torch.save(part, tmp_path / name)
    for name in ("pytorch_model.bin.index.json", "config.json"):
        (tmp_path / name).write_bytes((ckpt / name).read_bytes())
    assert torch.equal(_logits(load_model(tmp_path)), _logits(load_model(ckpt)))


def test_safetensors_sharded_round_trip(ckpt, tmp_path):
    model = load_model(ckpt)
    save_model(model, tmp_path, max_shard_bytes=20_000)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    again = load_model(tmp_path)
    assert isinstance(again, ChatGLMModel)
    assert torch.equal(_logits(again), _logits(model))


def test_convert_cli_writes_a_loadable_safetensors_dir(ckpt, tmp_path):
    from glm_core.convert import main

    (ckpt / "ice_text.model").write_bytes(b"stand-in tokenizer bytes")  # tokenizer files travel with the weights
    dst = tmp_path / "converted"
    assert main([str(ckpt), str(dst)]) == 0
    assert (dst / "model.safetensors").is_file() and (dst / "ice_text.model").is_file()
    assert json.loads((dst / "config.json").read_text())["model_type"] == "chatglm"
    assert torch.equal(_logits(load_model(dst)), _logits(load_model(ckpt)))


def test_hub_id_resolves_from_the_cache(ckpt, tmp_path, monkeypatch):
    from tests.hub_cache import fabricate_snapshot

    fabricate_snapshot(tmp_path, "zai-org/chatglm-6b", ckpt)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model("zai-org/chatglm-6b")
    assert isinstance(model, ChatGLMModel)
    assert torch.equal(_logits(model), _logits(load_model(ckpt)))


def test_quantized_config_is_refused_naming_the_full_precision_repo(tmp_path):
    write_hub_dir(tmp_path, hub_config(quantization_bit=4))
    with pytest.raises(ConfigError) as err:
        load_model(tmp_path)
    message = str(err.value)
    assert "\n" not in message and "quantization_bit=4" in message and "zai-org/chatglm-6b" in message


def test_quantized_weight_names_are_refused(ckpt, tmp_path):
    state = random_hub_state(hub_config())
    state["transformer.layers.0.attention.query_key_value.weight_scale"] = torch.ones(3 * 64).half()
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_bytes((ckpt / "config.json").read_bytes())
    with pytest.raises(CheckpointError, match="weight_scale.*zai-org/chatglm-6b"):
        load_model(tmp_path)


def test_missing_weight_is_named(ckpt, tmp_path):
    state = random_hub_state(hub_config())
    del state["lm_head.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_bytes((ckpt / "config.json").read_bytes())
    with pytest.raises(CheckpointError, match="missing keys: lm_head.weight"):
        load_model(tmp_path)


def test_random_preset_builds_a_chatglm(monkeypatch):
    """The preset path (seeded random weights) builds the ChatGLM class; on a shrunken copy of the preset (the real
    vocabulary and special ids, one narrow layer) to stay small."""
    import glm_core.config as config_module

    small = dict(config_module.PRESETS["chatglm-6b"], num_layers=1, hidden_size=16, num_attention_heads=2)
    small.update(inner_hidden_size=32, max_sequence_length=16)
    monkeypatch.setitem(config_module.PRESETS, "chatglm-6b", small)
    with pytest.warns(UserWarning, match="seeded random weights"):
        model = load_model("chatglm-6b", random_weights=True)
    assert isinstance(model, ChatGLMModel) and model.config.name == "chatglm-6b"
    ids = torch.tensor([[5, 130001, 130004]])
    with torch.no_grad():
        out = model(ids, torch.tensor([[[0, 1, 1], [0, 0, 1]]]), sep=2)
    assert out.logits.shape == (1, 3, 130528)


def test_convert_refuses_the_glm_prefix_in_one_line(ckpt, tmp_path, capsys):
    from glm_core.convert import main

    dst = tmp_path / "prefixed"
    assert main([str(ckpt), str(dst), "--prefix"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--prefix" in err[0] and "chatglm" in err[0]
    assert not dst.exists()
