"""The Triton kernels as torch custom ops: ``torch.library.opcheck`` accepts each (schema, fake implementation,
autograd registration, AOT dispatch), and ``torch.compile`` keeps them inside one graph of the training loss.

Tiny shapes under the Triton interpreter (spec fused_ops §3); the compiled-vs-eager comparison uses ``aot_eager``
(dynamo + AOT autograd: the graphs inductor would get, with the custom ops as opaque nodes).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo

pytestmark = pytest.mark.triton


def _seed(value: int = 7) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.int64)


def _randn(*shape: int, grad: bool = True, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + len(shape) * 31 + sum(shape))
    return torch.randn(*shape, generator=g).requires_grad_(grad)


def _opcheck(op, args: tuple) -> None:  # noqa: ANN001
    results = torch.library.opcheck(op, args)
    failed = {name: outcome for name, outcome in results.items() if outcome != "SUCCESS"}
    assert not failed, failed


@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_opcheck_attention(dropout_p):
    from glm_core.kernels.attention import attention_bwd, attention_fwd

    q, k, v = (_randn(2, 1, 20, 16, seed=i) for i in range(3))
    sep = torch.tensor([0, 7])
    _opcheck(attention_fwd, (q, k, v, sep, _seed(), dropout_p, False, 0))
    out, lse = attention_fwd(q, k, v, sep, _seed(), dropout_p, False, 0)
    dout = _randn(2, 1, 20, 16, grad=False, seed=9)
    plain = (q.detach(), k.detach(), v.detach())
    _opcheck(attention_bwd, (*plain, sep, out.detach(), lse.detach(), dout, _seed(), dropout_p, False, 0))


def test_opcheck_bias_gelu():
    from glm_core.kernels.gelu import bias_gelu_bwd, bias_gelu_fwd

    x, bias = _randn(3, 5, 24), _randn(24, seed=1)
    _opcheck(bias_gelu_fwd, (x, bias, True))
    _opcheck(bias_gelu_bwd, (x.detach(), bias.detach(), _randn(3, 5, 24, grad=False, seed=2), True))


@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_opcheck_add_dropout_layernorm(with_residual, dropout_p):
    from glm_core.kernels.layernorm import layernorm_bwd, layernorm_fwd

    x = _randn(4, 3, 32)
    residual = _randn(4, 3, 32, seed=1) if with_residual else None
    weight, bias = _randn(32, seed=2), _randn(32, seed=3)
    _opcheck(layernorm_fwd, (x, residual, weight, bias, 1e-5, dropout_p, _seed()))
    _, s, mean, rstd = layernorm_fwd(x, residual, weight, bias, 1e-5, dropout_p, _seed())
    stored = s.detach() if s.numel() else x.detach()
    dy = _randn(4, 3, 32, grad=False, seed=4)
    args = (dy, None, stored, weight.detach(), mean.detach(), rstd.detach(), dropout_p, _seed(), with_residual)
    _opcheck(layernorm_bwd, (*args, torch.float32))


def test_opcheck_partb_lm_head_ce():
    from glm_core.kernels.lm_head_ce import lm_head_ce_bwd, lm_head_ce_fwd

    hidden_b, weight = _randn(6, 16), _randn(40, 16, seed=1)
    targets = torch.tensor([0, 3, 39, 7, 12, 20])
    _opcheck(lm_head_ce_fwd, (hidden_b, weight, targets, 16))
    _, lse = lm_head_ce_fwd(hidden_b, weight, targets, 16)
    grad = torch.tensor(1.0)
    _opcheck(lm_head_ce_bwd, (hidden_b.detach(), weight.detach(), targets, lse.detach(), grad, 16, True, True))


def test_compiled_triton_loss_has_no_graph_break_and_equals_eager(tiny_config):
    """Every fused op on (``kernels="triton"``): the loss compiles into one graph that keeps the four custom ops,
    and its value and gradients equal eager's."""
    from glm_core.model import build_model
    from training.tasks import host_checked, part_b_loss

    config = tiny_config.replace(max_sequence_length=64)
    eager = build_model(config, seed=3, kernels="triton", attention="triton").train()
    compiled = copy.deepcopy(eager)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (2, 24), generator=g)
    positions = torch.stack([torch.arange(24).expand(2, 24), torch.zeros(2, 24, dtype=torch.long)], dim=1)
    sep = torch.tensor([10, 17])
    loss_mask = (torch.arange(24)[None, :] >= sep[:, None]).float()
    batch = {
        "input_ids": ids,
        "position_ids": positions,
        "sep": sep,
        "targets": ids.roll(-1, 1),
        "loss_mask": loss_mask,
    }

    seen: set[str] = set()

    def backend(gm: torch.fx.GraphModule, inputs: list) -> object:  # noqa: ANN001
        seen.update(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch._dynamo.reset()  # fullgraph=True: any graph break raises instead of splitting the graph
    torch.compile(part_b_loss, backend=backend, fullgraph=True)(compiled, host_checked(compiled, batch))
    for op in ("attention_fwd", "bias_gelu_fwd", "add_dropout_layernorm_fwd", "partb_lm_head_ce_fwd"):
        assert any(f"glm.{op}" in target for target in seen), (op, sorted(seen))

    torch._dynamo.reset()
    step = torch.compile(part_b_loss, backend="aot_eager", fullgraph=True)
    torch.manual_seed(5)  # dropout on (p = 0.1 everywhere): the same RNG stream for both runs
    want = part_b_loss(eager, host_checked(eager, batch))
    torch.manual_seed(5)
    got = step(compiled, host_checked(compiled, batch))
    want.backward()
    got.backward()
    assert compiled.kernels_used == eager.kernels_used and eager.kernels_used["attention"] == "triton"
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(p_compiled.grad, p_eager.grad, rtol=0, atol=1e-5, msg=name)
