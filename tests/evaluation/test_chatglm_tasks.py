"""Native glm-eval tasks on a tiny random ChatGLM hub directory, against references laid out by hand.

ChatGLM's layout is written out here from its tokenizer's rule (``context [gMASK] <sop> target``, no ``[CLS]``, no
eos; positions 0.. then the mask's; block ids 0 then 1, 2, ...) and run through the model in one forward pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluation.scoring import Scorer
from evaluation.tasks import get_task
from evaluation.tasks.base import EvalContext
from glm_core.errors import ConfigError

torch = pytest.importorskip("torch")

FIXTURES = Path(__file__).resolve().parents[2] / "evaluation" / "data" / "fixtures"


@pytest.fixture(scope="module")
def backend(tiny_chatglm_dir: Path):
    from evaluation.backends import load_backend

    return load_backend("torch", tiny_chatglm_dir)


@pytest.fixture
def ctx(backend) -> EvalContext:
    return EvalContext(backend=backend, scorer=Scorer(backend, batch_size=4))


def read(name: str):
    task = get_task(name)
    return task, task.read(FIXTURES, task.default_split, 3)


def test_lambada_is_argmax_over_context_gmask_sop_target(ctx, backend) -> None:
    task, examples = read("lambada")
    records = task.predict(examples, ctx)
    tok, s = backend.tokenizer, backend.special
    for ex, record in zip(examples, records, strict=True):
        context, target = tok.encode(ex.data["context"]), tok.encode(ex.data["target"])
        ids = [*context, s.gmask, s.sop, *target[:-1]]
        n_a, n_b = len(context) + 1, len(target)
        positions = [list(range(n_a)) + [n_a - 1] * n_b, [0] * n_a + list(range(1, n_b + 1))]
        with torch.no_grad():
            logits = backend.model(torch.tensor([ids]), torch.tensor([positions]), sep=torch.tensor([n_a])).logits[0]
        greedy = logits[n_a:].argmax(-1).numpy() == np.array(target)
        assert record["correct"] == int(greedy.all())
        assert record["num_tokens"] == n_b


def test_perplexity_scores_every_token_but_the_first(ctx, backend) -> None:
    task, examples = read("lm:stream")
    [record] = task.predict(examples, ctx)
    assert (
        record["num_scored"]
        == record["num_tokens"] - 1
        == len(backend.tokenizer.encode(examples[0].data["documents"][0])) - 1
    )
    assert np.isfinite(record["logprob"]) and record["logprob"] < 0


def test_tasks_with_the_original_cls_layout_refuse_chatglm(ctx) -> None:
    for name in ("squad_qg", "multichoice_uni"):
        task, examples = read(name)
        with pytest.raises(ConfigError, match="no \\[CLS\\]"):
            task.predict(examples, ctx)


@pytest.mark.slow  # the ONNX export of the tiny model (~40 s, shared per session)
def test_native_tasks_agree_on_both_backends(tiny_chatglm_dir: Path, tiny_chatglm_onnx_dir: Path) -> None:
    from evaluation.backends import load_backend
    from evaluation.runner import evaluate, read_tasks

    plan = read_tasks([get_task(n) for n in ("demo", "lambada", "lm", "xsum")], FIXTURES, split=None, limit=2)
    runs = [
        evaluate(load_backend(kind, path), plan, batch_size=2, progress=False, include_records=True)["tasks"]
        for kind, path in (("torch", tiny_chatglm_dir), ("onnx", tiny_chatglm_onnx_dir))
    ]
    for name, entry in runs[0].items():
        for a, b in zip(entry["records"], runs[1][name]["records"], strict=True):
            for key, value in a.items():
                numbers = value if isinstance(value, list) else [value]
                if numbers and all(isinstance(v, float) for v in numbers):
                    assert value == pytest.approx(b[key], abs=1e-4), (name, key)  # summed fp32 log-likelihoods
                else:
                    assert value == b[key], (name, key)  # choices, correctness, generated text
