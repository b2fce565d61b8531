"""The attention backends behind ``attention=`` (glm_core.attention_backends) against the ``math`` reference.

Every backend is compared with ``math`` on the CPU in float32: forward logits and the gradients of every parameter
(the Q/K/V projection included) on mixed ``sep`` (0, S and in between), a padded row and an odd length; with a K/V
cache (decode); attention dropout per backend; and ``glm-train --attention`` end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from glm_core.attention_backends import DROPOUT_SUPPORTED, flex_block_mask, resolve_attention, run_flex, run_sdpa
from glm_core.config import GLMConfig
from glm_core.errors import InputError, KernelUnavailableError
from glm_core.kernels import triton_available
from glm_core.model import build_model, glm_attention_math, visibility_mask
from tests.train.tiny_setup import make_tiny_run_inputs

REPO = Path(__file__).resolve().parents[1]
# fp32: SDPA and FlexAttention scale Q·Kᵀ instead of K and sum in another order than the reference. Tolerance:
# max |backend - math| <= 1e-5 * max |math| per tensor (gradients reach ~10 here, so absolute 1e-5 would be ~1 ulp).
RTOL = 1e-5
B, S, H = 3, 7, 2  # odd T
SEP = torch.tensor([0, S, 3])  # pure causal, all prefix, in between
PAD_ID = 0


def _config() -> GLMConfig:
    return GLMConfig(vocab_size=96, hidden_size=32, num_layers=2, num_attention_heads=H, max_sequence_length=32)


def _model(attention: str, dropout: float = 0.0):
    config = _config().replace(embedding_dropout_prob=0.0, attention_dropout_prob=dropout, output_dropout_prob=0.0)
    return build_model(config, seed=0, attention=attention)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 96, (B, S), generator=gen)
    ids[2, 5:] = PAD_ID  # a padded row: two pad tokens at the end
    pos = torch.arange(S).expand(B, S)
    return ids, torch.stack([pos, torch.zeros_like(pos)], dim=1)


def _forward_backward(attention: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, str]]:
    model = _model(attention).train()
    ids, pos = _batch()
    out = model(ids, pos, sep=SEP, use_cache=False)
    weights = torch.linspace(-1.0, 1.0, out.logits.numel()).view_as(out.logits)  # every logit matters
    (out.logits * weights).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return out.logits.detach(), grads, out.kernels_used


def _close(a: torch.Tensor, ref: torch.Tensor) -> bool:
    return float((a - ref).abs().max()) <= RTOL * max(float(ref.abs().max()), 1.0)


def _all_close(a: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> bool:
    return all(_close(a[n], ref[n]) for n in ref)


def test_sdpa_matches_math_forward_and_backward():
    ref_logits, ref_grads, used = _forward_backward("math")
    assert used["attention"] == "torch"
    logits, grads, used = _forward_backward("sdpa")
    assert used["attention"] == "sdpa"
    assert _close(logits, ref_logits)
    assert _all_close(grads, ref_grads)
    assert float(grads["transformer.layers.0.attention.query_key_value.weight"].abs().max()) > 0


def test_auto_on_the_cpu_is_the_math_reference_bit_for_bit():
    ref_logits, ref_grads, _ = _forward_backward("math")
    logits, grads, used = _forward_backward("auto")
    assert used["attention"] == "torch"
    assert torch.equal(logits, ref_logits)
    assert all(torch.equal(grads[n], ref_grads[n]) for n in grads)


@pytest.mark.skipif(not triton_available(), reason="the Triton kernel needs CUDA or TRITON_INTERPRET=1")
def test_triton_matches_math_forward_and_backward():
    ref_logits, ref_grads, _ = _forward_backward("math")
    logits, grads, used = _forward_backward("triton")
    assert used["attention"] == "triton"
    assert _close(logits, ref_logits)
    assert _all_close(grads, ref_grads)


def test_flex_matches_math_forward_in_inference():
    ids, pos = _batch()
    with torch.inference_mode():
        ref = _model("math").eval()(ids, pos, sep=SEP, use_cache=False).logits
        out = _model("flex").eval()(ids, pos, sep=SEP, use_cache=False)
    assert out.kernels_used["attention"] == "flex"
    assert _close(out.logits, ref)


def test_flex_refuses_to_train_on_the_cpu():
    # torch has no FlexAttention backward on the CPU (eager or compiled); the model says so instead of crashing later
    model = _model("flex").train()
    ids, pos = _batch()
    with pytest.raises(KernelUnavailableError, match="no backward on the CPU"):
        model(ids, pos, sep=SEP, use_cache=False)


@pytest.mark.parametrize("past_len", [0, 2])
def test_attention_level_parity_with_past(past_len):
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(B, H, S, 8, generator=gen)
    k = torch.randn(B, H, past_len + S, 8, generator=gen)
    v = torch.randn(B, H, past_len + S, 8, generator=gen)
    visible = visibility_mask(SEP, S, past_len)
    ref = glm_attention_math(q, k, v, visible)
    assert _close(run_sdpa(q, k, v, visible, 0.0), ref)
    assert _close(run_flex(q, k, v, flex_block_mask(SEP, S, past_len)), ref)
    # sdpa backward on the q/k/v inputs
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    g = torch.randn(ref.shape, generator=gen)
    (run_sdpa(*leaves, visible, 0.0) * g).sum().backward()
    (glm_attention_math(*ref_leaves, visible) * g).sum().backward()
    for a, b in zip(leaves, ref_leaves, strict=True):
        assert _close(a.grad, b.grad)


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_decode_with_a_cache_matches_math(attention):
    ids, pos = _batch()
    prefix = 4
    sep = torch.tensor([0, prefix, 2])
    results = {}
    with torch.inference_mode():
        for name in ("math", attention):
            model = _model(name).eval()
            first = model(ids[:, :prefix], pos[:, :, :prefix], sep=sep)
            step = model(ids[:, prefix:], pos[:, :, prefix:], sep=0, past_key_values=first.past_key_values)
            results[name] = (first.logits, step.logits, step.kernels_used["attention"])
    assert results[attention][2] == attention
    for a, b in zip(results["math"][:2], results[attention][:2], strict=True):
        assert _close(a, b)


# ---------------------------------------------------------------------------------------------------- dropout
def test_dropout_support_table_and_auto_never_drops_it():
    assert DROPOUT_SUPPORTED == {"math": True, "sdpa": True, "flex": False, "triton": True}
    for device in ("cpu", "cuda"):
        for kernel_impl in ("torch", "triton"):
            picked = resolve_attention(
                "auto",
                device=torch.device(device),
                dtype=torch.float32,
                kernel_impl=kernel_impl,
                sep_layout=True,
                has_past=False,
                dropout_p=0.1,
                needs_grad=True,
            )
            assert DROPOUT_SUPPORTED[picked], (device, kernel_impl, picked)
    assert resolve_attention(
        "auto", device=torch.device("cpu"), dtype=torch.float32, kernel_impl="torch", sep_layout=True,
        has_past=True, dropout_p=0.0, needs_grad=False,
    ) == "math"  # fmt: skip
    assert (
        resolve_attention(
            "auto",
            device=torch.device("cuda"),
            dtype=torch.float32,
            kernel_impl="torch",
            sep_layout=False,
            has_past=False,
            dropout_p=0.0,
            needs_grad=False,
        )
        == "math"
    )  # fmt: skip  (explicit masks stay on math: a row seeing no key is NaN in SDPA)


def test_flex_with_attention_dropout_in_training_is_refused():
    model = _model("flex", dropout=0.1).train()
    ids, pos = _batch()
    with torch.no_grad(), pytest.raises(KernelUnavailableError, match="no attention dropout"):
        model(ids, pos, sep=SEP, use_cache=False)


def test_sdpa_dropout_keeps_the_right_fraction_and_scale():
    # q = k = 0: every visible key has probability 1/n_visible; v = identity over keys exposes each kept probability
    p, T, heads = 0.25, 33, 8
    sep = torch.tensor([0, 10])
    q = torch.zeros(2, heads, T, 4)
    v = torch.eye(T).expand(2, heads, T, T).contiguous()
    visible = visibility_mask(sep, T, 0)
    torch.manual_seed(0)
    out = run_sdpa(q, torch.zeros(2, heads, T, 4), v, visible, dropout_p=p)  # [2, heads, T, T]
    n_visible = visible.sum(-1, keepdim=True).float()  # [2, 1, T, 1]
    expected_kept = (1.0 / n_visible) / (1.0 - p)
    vis = visible.expand_as(out)
    assert float(out[~vis].abs().max()) == 0.0  # never a masked key
    kept = (out != 0) & vis
    assert torch.allclose(out[kept], expected_kept.expand_as(out)[kept], atol=1e-6)  # kept: scaled by 1/(1-p)
    rate = float(kept.sum()) / float(vis.sum())
    n = float(vis.sum())
    assert abs(rate - (1 - p)) < 4 * ((p * (1 - p) / n) ** 0.5)  # within 4 standard deviations of 1-p
    # same RNG state, same mask (torch's generator); eval mode (p = 0 passed) is the exact softmax
    torch.manual_seed(0)
    assert torch.equal(run_sdpa(q, torch.zeros(2, heads, T, 4), v, visible, dropout_p=p), out)


def test_model_dropout_in_training_uses_it_and_eval_does_not():
    ids, pos = _batch()
    model = _model("sdpa", dropout=0.5)
    with torch.no_grad():
        model.eval()
        a = model(ids, pos, sep=SEP, use_cache=False).logits
        b = _model("math", dropout=0.5).eval()(ids, pos, sep=SEP, use_cache=False).logits
        assert _close(a, b)  # dropout off in eval: the same function as math
        model.train()
        torch.manual_seed(3)
        c = model(ids, pos, sep=SEP, use_cache=False).logits
    assert float((c - a).abs().max()) > 1e-3  # attention dropout is applied in training


def test_unknown_attention_is_one_clear_error():
    with pytest.raises(InputError, match="attention must be one of"):
        _model("fast")


# ---------------------------------------------------------------------------------------------------- glm-train
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_tiny_run_inputs(tmp_path_factory.mktemp("attn"), "attn-test", num_documents=120)


def _train(setup, out: Path, attention: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    args = [
        "pretrain", "--model", str(setup["model"]), "--from-scratch", "--corpus", str(setup["corpus"]),
        "--out", str(out), "--steps", "4", "--seq-length", "32", "--micro-batch-size", "2", "--log-every", "1",
        "--quiet", "--no-eval", "--dropout", "0", "--attention", attention,
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "training", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def _losses(out: Path) -> list[float]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def test_glm_train_sdpa_loss_curve_equals_math(setup, tmp_path):
    runs = {}
    for attention in ("math", "sdpa"):
        proc = _train(setup, tmp_path / attention, attention)
        assert proc.returncode == 0, proc.stderr
        runs[attention] = _losses(tmp_path / attention)
    assert len(runs["math"]) == 4
    assert max(abs(a - b) for a, b in zip(runs["math"], runs["sdpa"], strict=True)) < 1e-4


def test_glm_train_flex_on_the_cpu_exits_2_and_writes_nothing(setup, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: flex can train there")
    proc = _train(setup, tmp_path / "out", "flex")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--attention flex cannot train on the CPU" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_generation_through_torch_step_matches_math(attention):
    from glm_core.generation import GenerationConfig, generate
    from glm_core.layout import build_generation_prompt
    from glm_core.special_tokens import sentencepiece_tokens
    from glm_core.step import TorchStep

    tokens = sentencepiece_tokens(num_pieces=80)  # special ids 80.. fit the 96-token test vocabulary
    prompt = build_generation_prompt([5, 17, 42, tokens.mask, 9, 3, 25], tokens)
    config = GenerationConfig(max_new_tokens=5, strategy="beam", num_beams=2)
    ref = generate(TorchStep(_model("math")), prompt, tokens, config)
    ours = generate(TorchStep(_model(attention)), prompt, tokens, config)
    assert sum(len(b) for b in ref.blanks) > 0  # something was generated
    assert ours.sequence == ref.sequence and ours.blanks == ref.blanks


def test_torch_backend_takes_the_switch(setup):
    import numpy as np

    from evaluation.backends import load_backend

    ids = np.array([[5, 17, 42, 9, 3]], dtype=np.int64)
    pos = np.stack([np.arange(5), np.zeros(5, dtype=np.int64)])[None]
    sep = np.array([3], dtype=np.int64)
    logits = {}
    for attention in ("math", "sdpa", "flex"):
        backend = load_backend("torch", setup["model"], attention=attention)
        assert backend.model.attention == attention
        logits[attention], _ = backend.step(ids, pos, sep, None)
    for attention in ("sdpa", "flex"):
        assert _close(torch.from_numpy(logits[attention]), torch.from_numpy(logits["math"]))
