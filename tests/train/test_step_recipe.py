"""The training step's recipe: activation checkpointing per layer, the AdamW implementation, FSDP per whole layer
with bf16 mixed precision (on a one-process gloo group: FSDP2 runs on the CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

from glm_core.config import GLMConfig
from glm_core.errors import ConfigError, InputError
from glm_core.model import GLMLayer, GLMModel, build_model
from training.config import TrainConfig
from training.distributed import DistContext, fsdp_units, unwrap, wrap_model
from training.loop import build_optimizer
from training.options import checkpoint_layers

CONFIG = GLMConfig(
    name="recipe-tiny", tokenizer_family="sentencepiece", vocab_size=96, hidden_size=64, num_layers=4,
    num_attention_heads=1, max_sequence_length=32, embedding_dropout_prob=0.0, attention_dropout_prob=0.0,
    output_dropout_prob=0.0,
)  # fmt: skip


def _batch() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, CONFIG.vocab_size, (2, 12), generator=g)
    positions = torch.stack([torch.arange(12).expand(2, 12), torch.zeros(2, 12, dtype=torch.long)], dim=1)
    sep = torch.tensor([4, 7])
    loss_mask = (torch.arange(12)[None, :] >= sep[:, None]).float()
    return ids, positions, sep, ids.roll(-1, 1), loss_mask


@pytest.mark.parametrize(
    ("spec", "expected"),
    [(None, []), ("none", []), ("all", [0, 1, 2, 3]), ("every:2", [0, 2]), ("every:3", [0, 3]), ("3,1", [1, 3])],
)
def test_activation_checkpointing_names_layers(spec, expected):
    assert checkpoint_layers(spec, False, 4) == expected


@pytest.mark.parametrize("spec", ["4", "every:0", "1,x", "-1", "half"])
def test_a_bad_layer_selection_is_a_config_error(spec):
    with pytest.raises(ConfigError, match="--activation-checkpointing"):
        checkpoint_layers(spec, False, 4)


def test_gradient_checkpointing_is_all_layers_and_refuses_a_contradiction():
    assert checkpoint_layers(None, True, 3) == [0, 1, 2]
    with pytest.raises(ConfigError, match="contradicts"):
        checkpoint_layers("0", True, 3)
    with pytest.raises(InputError, match=r"\[0, 4\)"):
        build_model(CONFIG, gradient_checkpointing=[4])


def test_only_the_selected_layers_recompute_and_the_gradients_stay_the_same():
    plain = build_model(CONFIG, seed=1).train()
    selected = copy.deepcopy(plain)
    selected.set_activation_checkpointing([1, 2])
    calls = {i: 0 for i in range(CONFIG.num_layers)}
    for i, layer in enumerate(selected.transformer.layers):
        layer.register_forward_pre_hook(lambda module, args, i=i: calls.__setitem__(i, calls[i] + 1))
    plain.loss(*_batch()).backward()
    selected.loss(*_batch()).backward()
    assert calls == {0: 1, 1: 2, 2: 2, 3: 1}  # layers 1 and 2 ran again in the backward
    for (name, a), b in zip(plain.named_parameters(), selected.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name


def test_adamw_runs_multi_tensor_on_the_cpu():
    model = build_model(CONFIG, seed=0)
    optimizer = build_optimizer(model, TrainConfig(steps=1))
    assert all(group["foreach"] and not group["fused"] for group in optimizer.param_groups)
    assert {len(group["params"]) for group in optimizer.param_groups} != {0}


@pytest.fixture
def one_process_group(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield DistContext()
    dist.destroy_process_group()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fsdp_shards_every_whole_layer_with_the_precision_policy(one_process_group, precision):
    from torch.distributed.fsdp import FSDPModule

    reference = build_model(CONFIG, seed=2).train()
    model = copy.deepcopy(reference)
    wrapped = wrap_model(model, one_process_group, fsdp=True, precision=precision)
    glm: GLMModel = unwrap(wrapped)
    units = fsdp_units(glm)
    assert len(units) == CONFIG.num_layers and all(isinstance(u, GLMLayer) for u in units)
    assert all(isinstance(u, FSDPModule) for u in units) and isinstance(wrapped, FSDPModule)
    assert not isinstance(glm.transformer.final_layernorm, FSDPModule)  # with the root unit
    policy = units[0]._get_fsdp_state()._mp_policy
    if precision == "bf16":
        assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    else:
        assert policy.param_dtype is None and policy.reduce_dtype is None
    assert all(p.dtype == torch.float32 for p in wrapped.parameters())  # fp32 master weights (sharded)

    loss = wrapped(lambda g, *batch: g.loss(*batch), *_batch())
    loss.backward()
    want = reference.loss(*_batch())
    want.backward()
    # fp32: one process holds every shard, the same numbers; bf16: 8 mantissa bits in the layers' compute
    tolerance = 1e-6 if precision == "fp32" else 2e-2
    torch.testing.assert_close(loss, want, rtol=tolerance, atol=tolerance)
    grad = dict(wrapped.named_parameters())["glm.transformer.layers.0.mlp.dense_h_to_4h.weight"].grad
    assert grad.dtype == torch.float32
    torch.testing.assert_close(
        grad.full_tensor(), reference.transformer.layers[0].mlp.dense_h_to_4h.weight.grad, rtol=0.05, atol=tolerance
    )


def test_the_fsdp1_fallback_wraps_each_layer_with_the_same_precision(monkeypatch):
    """FSDP1 needs an accelerator, so on the CPU its plan is checked: one unit per GLMLayer, bf16 compute, fp32
    reduction, original parameters kept (the optimizer's weight-decay groups need their names)."""
    import torch.distributed.fsdp as fsdp

    from training.distributed import ModelCall, _shard_fsdp1, fsdp_mixed_precision

    seen: dict = {}

    def fake_fsdp(module, **kwargs):  # noqa: ANN001, ANN003, ANN202
        seen.update(kwargs, module=module)
        return module

    monkeypatch.setattr(fsdp, "FullyShardedDataParallel", fake_fsdp)
    model = build_model(CONFIG, seed=0)
    wrapped = _shard_fsdp1(ModelCall(model), model, fsdp_mixed_precision("bf16"))
    policy = seen["auto_wrap_policy"]
    assert wrapped is seen["module"] and seen["use_orig_params"] is True
    assert policy._module_classes == {GLMLayer}
    mixed = seen["mixed_precision"]
    assert (mixed.param_dtype, mixed.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert fsdp_mixed_precision("fp32") is None and fsdp_mixed_precision("fp16") is None
