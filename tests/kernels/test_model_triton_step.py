"""A full training step of a tiny GLM with ``kernels="triton"`` (interpreted on CPU) matches ``kernels="torch"``.

Dropout is off so both paths compute the same function; every fused op (LayerNorm, bias-GeLU, attention, Part-B LM
head + CE) is on the triton path, which the model reports in ``kernels_used``.
"""

from __future__ import annotations

import pytest
import torch

from glm_core.config import GLMConfig
from glm_core.model import build_model

pytest.importorskip("triton")

CONFIG = GLMConfig(
    vocab_size=96,
    hidden_size=64,
    num_layers=2,
    num_attention_heads=2,
    max_sequence_length=32,
    embedding_dropout_prob=0.0,
    attention_dropout_prob=0.0,
    output_dropout_prob=0.0,
    tokenizer_family="sentencepiece",
    name="step-test",
)


def _batch():
    g = torch.Generator().manual_seed(0)
    B, T = 2, 20
    ids = torch.randint(0, CONFIG.vocab_size, (B, T), generator=g)
    sep = torch.tensor([13, 7])
    cols = torch.arange(T)[None]
    part_b = cols >= sep[:, None]
    block = torch.where(part_b, cols - sep[:, None] + 1, torch.zeros_like(cols))
    pos = torch.where(part_b, sep[:, None] - 1, cols.expand(B, T))
    return ids, torch.stack([pos, block], 1), sep, torch.roll(ids, -1, 1), part_b.float()


def _train_step(kernels: str):
    model = build_model(CONFIG, seed=3, kernels=kernels).train()
    # SGD keeps the update linear in the gradient; Adam's g/sqrt(v) would amplify rounding noise of near-zero grads
    optim = torch.optim.SGD(model.parameters(), lr=1e-1)
    ids, pos, sep, targets, loss_mask = _batch()
    loss = model.loss(ids, pos, sep, targets, loss_mask)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    optim.step()
    return loss.detach(), grads, {n: p.detach().clone() for n, p in model.named_parameters()}, dict(model.kernels_used)


def test_triton_training_step_matches_torch():
    loss_t, grads_t, params_t, used_t = _train_step("torch")
    loss_k, grads_k, params_k, used_k = _train_step("triton")
    assert set(used_t.values()) == {"torch"}
    assert used_k == {"attention": "triton", "layernorm": "triton", "bias_gelu": "triton", "lm_head_ce": "triton"}
    assert abs(loss_k.item() - loss_t.item()) <= 1e-5 * abs(loss_t.item())
    for name, ref in grads_t.items():
        err = (grads_k[name] - ref).abs().max().item() / max(ref.abs().max().item(), 1e-12)
        assert err <= 1e-4, f"{name}: max-rel grad error {err:.2e}"  # fp32 everywhere; reductions in other orders
    for name, ref in params_t.items():
        torch.testing.assert_close(params_k[name], ref, rtol=1e-5, atol=1e-6)
