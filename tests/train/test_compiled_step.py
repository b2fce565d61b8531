"""A glm-tiny training step that ``torch.compile`` takes whole: no graph break, compiled == eager.

The batches come from the real sampler (Part-B rows from the host, validated there once); the model is glm-tiny's
architecture (hidden 256, 4 layers) built from a seed. Parity runs use the ``aot_eager`` backend (dynamo + AOT
autograd, the same graphs inductor would get, without its slow C++ compile on a 2-core machine); one end-to-end run
of ``glm-train --compile`` uses inductor itself.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo

from glm_core.checkpoint import SHIPPED_PRESETS
from glm_core.config import GLMConfig
from glm_core.errors import InputError
from glm_core.model import GLMModel, build_model
from training.options import compile_layers
from training.tasks import PretrainTask, host_checked, part_b_loss

REPO = Path(__file__).resolve().parents[2]
SEQ = 32


@pytest.fixture(scope="module")
def batches(tmp_path_factory) -> list[dict[str, np.ndarray]]:
    """Three micro-batches of 2 x 32 from the pretraining sampler on a small synthetic corpus (mixed objectives)."""
    from glm_core.tokenizer import GLMTokenizer
    from training.corpus import write_corpus
    from training.data import read_corpus, sentence_end_ids, tokenize_documents
    from training.sampler import MaskingConfig, PretrainSampler

    root = tmp_path_factory.mktemp("compiled")
    tokenizer = GLMTokenizer.from_pretrained(SHIPPED_PRESETS["glm-tiny"])
    corpus = write_corpus(str(root / "corpus.txt"), num_documents=60)
    stream = tokenize_documents(read_corpus(corpus), tokenizer)
    masking = MaskingConfig(bert_prob=0.5, gap_sentence_prob=0.25)
    sampler = PretrainSampler(
        stream, tokenizer.special, SEQ, masking, seed=0, sentence_ends=sentence_end_ids(tokenizer)
    )
    task = PretrainTask(sampler, 2, 1, 1)
    return [task.micro_batches(step, 0, 1)[0] for step in range(3)]


def _glm_tiny(**kwargs: object) -> GLMModel:
    config = GLMConfig.from_hf_config(str(SHIPPED_PRESETS["glm-tiny"]))
    return build_model(config, seed=0, **kwargs).train()


def test_the_training_loss_has_no_graph_break(batches):
    model = _glm_tiny()
    tensors = host_checked(model, batches[0])
    explained = torch._dynamo.explain(part_b_loss)(model, tensors)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1

    # the same loss with its checks inside (the eager API's default) does break: the test can see a break
    def checked(glm: GLMModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return glm.loss(batch["input_ids"], batch["position_ids"], batch["sep"], batch["targets"], batch["loss_mask"])

    assert torch._dynamo.explain(checked)(model, tensors).graph_break_count > 0


def test_host_check_refuses_a_bad_batch_before_the_step(batches):
    model = _glm_tiny()
    bad = {**batches[0], "input_ids": np.full_like(batches[0]["input_ids"], 5000)}  # vocab is 2048
    with pytest.raises(InputError, match="vocab_size"):
        host_checked(model, bad)
    empty = {**batches[0], "loss_mask": np.zeros_like(batches[0]["loss_mask"])}
    with pytest.raises(InputError, match="Part B is empty"):
        host_checked(model, empty)


def test_rows_from_the_host_give_the_nonzero_loss(batches):
    model = _glm_tiny()
    tensors = host_checked(model, batches[1])
    with torch.no_grad():
        by_rows = part_b_loss(model, tensors)
        by_mask = model.loss(
            tensors["input_ids"], tensors["position_ids"], tensors["sep"], tensors["targets"], tensors["loss_mask"]
        )
    assert torch.equal(by_rows, by_mask)


def _train_steps(model: GLMModel, batches: list[dict[str, np.ndarray]], step_fn) -> tuple[list[float], list]:  # noqa: ANN001
    """Three AdamW steps; the losses and every step's gradients."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    losses, grads = [], []
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = step_fn(model, host_checked(model, batch))
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        optimizer.step()
    return losses, grads


@pytest.mark.parametrize("region", ["whole", "layers"])
def test_compiled_loss_and_gradients_equal_eager(batches, region):
    torch._dynamo.reset()
    eager = _glm_tiny(gradient_checkpointing=[1, 3])  # two of the four layers recompute in the backward
    compiled = copy.deepcopy(eager)
    if region == "layers":
        compile_layers(compiled, backend="aot_eager")  # what glm-train --compile does, with inductor
        step = part_b_loss
    else:
        step = torch.compile(part_b_loss, backend="aot_eager", fullgraph=True)  # fullgraph: a break would raise
    want_losses, want_grads = _train_steps(eager, batches, part_b_loss)
    got_losses, got_grads = _train_steps(compiled, batches, step)
    np.testing.assert_allclose(got_losses, want_losses, rtol=0, atol=1e-5)
    for want, got in zip(want_grads, got_grads, strict=True):
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-5, msg=name)


def _flex_trains_on_the_cpu() -> bool:
    """torch <= 2.13 has no FlexAttention backward on the CPU (eager or compiled); a later one may."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    q = torch.zeros(1, 1, 8, 8, requires_grad=True)
    mask = create_block_mask(lambda b, h, qi, ki: ki <= qi, B=None, H=None, Q_LEN=8, KV_LEN=8, device="cpu")
    try:
        torch.compile(flex_attention, backend="aot_eager")(q, q, q, block_mask=mask).sum().backward()
    except (NotImplementedError, RuntimeError, torch._dynamo.exc.Unsupported):
        return False
    return True


def _train_cli(tmp_path: Path, name: str, *extra: str) -> list[float]:
    out = tmp_path / name
    args = [
        sys.executable, "-m", "training", "pretrain", "--model", "glm-tiny", "--from-scratch",
        "--corpus", str(tmp_path / "corpus.txt"), "--out", str(out), "--steps", "3", "--seq-length", "32",
        "--micro-batch-size", "2", "--log-every", "1", "--quiet", "--no-eval", "--data-workers", "0",
        "--report-to", "none", "--device", "cpu", "--save-every", "0", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["flex", "sdpa"])
def test_glm_train_compile_follows_the_eager_loss_curve(tmp_path, attention):
    """``glm-train --compile --attention A`` (inductor, each layer) trains glm-tiny with eager's loss curve."""
    if attention == "flex" and not _flex_trains_on_the_cpu():
        pytest.skip("this torch has no FlexAttention backward on the CPU; the flex run needs a CUDA device")
    from training.corpus import write_corpus

    write_corpus(str(tmp_path / "corpus.txt"), num_documents=60)
    eager = _train_cli(tmp_path, "eager", "--attention", attention)
    compiled = _train_cli(tmp_path, "compiled", "--attention", attention, "--compile")
    assert len(eager) == 3
    np.testing.assert_allclose(compiled, eager, rtol=0, atol=1e-4)
