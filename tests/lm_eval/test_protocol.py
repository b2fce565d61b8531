"""One protocol in both harnesses: the native tasks and the lm-eval models lay a request out the same way.

- A cloze request (the context holds its own blank, as in ``glm_demo``): ``[CLS] context [eos] | [sop] candidate``
  with ``[eop]`` closing the candidate, as the original multi-token PVPs do (GLM tasks/superglue/pvp.py:232-233) and
  as the native ``demo`` task does. Pinned here per question and per choice, on both backends: the lm-eval
  ``glm_demo`` task and the native ``demo`` task give the same log-likelihoods, the same predictions and so the same
  accuracy (on all 260 questions: 72.3 % both; lm-eval's ``acc_norm`` divides by the choice's length in bytes, a
  normalisation of lm-eval's own, and is not the paper's metric).
- A plain ``loglikelihood`` with ``context_eos=true``: ``[CLS] context [gMASK] [eos] | [sop] target`` = the
  original LAMBADA layout (GLM tasks/language_model/dataset.py:111-134, ``build_input_from_ids(add_eos=True)``) and
  the native ``lambada`` task.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.backends import load_backend
from evaluation.lm_eval_plugin import GLMOnnxLM, GLMTorchLM
from evaluation.lm_eval_tasks import DATA_DIR, task_dir
from evaluation.runner import evaluate, read_tasks
from evaluation.scoring import Scorer
from evaluation.tasks import expand_task_list
from evaluation.tasks.base import EvalContext, Example
from evaluation.tasks.lambada import Lambada

NATIVE_DATA = Path(__file__).resolve().parents[2] / "evaluation" / "data"
LIMIT = 24  # questions; the per-sample agreement below implies equal accuracy on any subset and on all 260
LL_TOL = 1e-5  # same layout, same backend: only the batching differs


def native_records(kind: str, path: str) -> list[dict]:
    backend = load_backend(kind, path)
    plan = read_tasks(expand_task_list("demo"), NATIVE_DATA, split=None, limit=LIMIT)
    return evaluate(backend, plan, progress=False, include_records=True)["tasks"]["demo"]["records"]


def lm_eval_samples(model: str, path: str) -> tuple[list[dict], dict]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    import evaluation._lmeval_bootstrap as bootstrap

    bootstrap.install()
    results = lm_eval.simple_evaluate(
        model=model,
        model_args={"pretrained": path},
        tasks=["glm_demo"],
        task_manager=TaskManager(include_path=task_dir(), include_defaults=False),
        limit=LIMIT,
        device="cpu",
        batch_size=8,
        log_samples=True,
    )
    return sorted(results["samples"]["glm_demo"], key=lambda s: s["doc_id"]), results["results"]["glm_demo"]


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_glm_demo_through_lm_eval_equals_the_native_demo_task(kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "torch":
        pytest.importorskip("torch")
        path = "glm-tiny"
    else:
        path = str(request.getfixturevalue("tiny_onnx_dir"))
    native = native_records(kind, path)
    samples, metrics = lm_eval_samples(f"glm-{kind}", path)
    assert len(native) == len(samples) == LIMIT
    for record, sample in zip(native, samples, strict=True):
        lls = [float(ll) for ll, _ in sample["filtered_resps"]]
        assert lls == pytest.approx(record["scores"], abs=LL_TOL)  # every choice, [eop] included on both sides
        assert max(range(len(lls)), key=lls.__getitem__) == record["pred"]  # the same prediction
        assert sample["acc"] == float(record["pred"] == sample["doc"]["label"])
    native_acc = sum(r["pred"] == s["doc"]["label"] for r, s in zip(native, samples, strict=True)) / LIMIT
    assert metrics["acc,none"] == pytest.approx(native_acc, abs=1e-12)


def test_context_eos_reproduces_the_native_lambada_layout() -> None:
    pytest.importorskip("torch")
    lm = GLMTorchLM(pretrained="glm-tiny", device="cpu", context_eos=True)
    texts = [json.loads(line)["text"] for line in (DATA_DIR / "lambada_openai.jsonl").read_text().splitlines()]
    examples = []
    for i, text in enumerate(texts):
        context, word = text.rsplit(" ", 1)  # lm-eval's lambada_openai: words[:-1] joined, target " " + last word
        examples.append(Example(str(i), {"context": context.strip(), "target": " " + word}))
    ctx = EvalContext(backend=lm.glm, scorer=Scorer(lm.glm, batch_size=4))
    native = Lambada().predict(examples, ctx)
    from lm_eval.api.instance import Instance

    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=(e.data["context"], e.data["target"]), idx=0)
        for e in examples
    ]
    for record, (ll, greedy) in zip(native, lm.loglikelihood(requests), strict=True):
        assert ll == pytest.approx(record["logprob"], abs=LL_TOL)
        assert int(greedy) == record["correct"]  # lambada_openai's acc = the original "argmax at every token"


def test_default_loglikelihood_has_no_eos_and_the_cloze_can_drop_eop(tiny_onnx_dir: Path) -> None:
    from lm_eval.api.instance import Instance

    plain = GLMOnnxLM(pretrained=str(tiny_onnx_dir), device="cpu")
    with_eos = GLMOnnxLM(pretrained=str(tiny_onnx_dir), device="cpu", context_eos="true")
    no_eop = GLMOnnxLM(pretrained=str(tiny_onnx_dir), device="cpu", cloze_eop="false")
    pair = [Instance(request_type="loglikelihood", doc={}, arguments=("Cats say", " meow"), idx=0)]
    cloze = [Instance(request_type="loglikelihood", doc={}, arguments=("Cats say [MASK].", " meow"), idx=0)]
    assert plain.loglikelihood(pair)[0][0] != with_eos.loglikelihood(pair)[0][0]
    assert plain.loglikelihood(cloze)[0][0] < no_eop.loglikelihood(cloze)[0][0]  # p(eop) < 1 is part of the score
    assert plain.get_model_info()["glm_cloze_eop"] is True and no_eop.get_model_info()["glm_cloze_eop"] is False
