"""What users hit in lm-eval (0.4.13) with the GLM models, through its Python API (and one CLI call): each case either
works or is one clear error, the same on both backends.

- ``--apply_chat_template``: refused before any request is built (GLM has no chat template); under the CLI one line,
  exit status 2.
- ``tokenizer=`` in ``--model_args``: a model directory, preset or hub id, on either backend.
- ``device=`` / ``batch_size=`` in ``--model_args`` beside lm-eval's own (always passed) values: the model args win.
- ``dtype=`` on ``glm-onnx``: the graph's own precision (or ``auto``) is accepted and recorded, any other is an error.
- lm-eval's ``--seed`` (its numpy slot) decides sampled generations unless ``seed=`` is given explicitly.
"""

from __future__ import annotations

from pathlib import Path

import lm_eval
import pytest
from lm_eval.tasks import TaskManager

import evaluation._lmeval_bootstrap as bootstrap
from evaluation.lm_eval_plugin import GLMTorchLM
from evaluation.lm_eval_tasks import task_dir
from glm_core.errors import ConfigError, GLMError


def evaluate(model: str, model_args: str, tasks: list[str], **kwargs):
    bootstrap.install()
    options = dict(device="cpu", batch_size=1, limit=2)
    options.update(kwargs)
    return lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=tasks,
        task_manager=TaskManager(include_path=task_dir(), include_defaults=False),
        **options,
    )


def models(tiny_onnx_dir: Path) -> list[tuple[str, str]]:
    pytest.importorskip("torch")
    return [("glm-torch", "glm-tiny"), ("glm-onnx", str(tiny_onnx_dir))]


# ---------------------------------------------------------------------------------------------- chat template
def test_apply_chat_template_is_refused_before_any_request(tiny_onnx_dir: Path) -> None:
    for model, path in models(tiny_onnx_dir):
        with pytest.raises(ConfigError, match="--apply_chat_template is not supported: GLM .* without a chat template"):
            evaluate(model, f"pretrained={path}", ["glm_demo"], apply_chat_template=True)


def test_apply_chat_template_on_the_cli_is_one_line_and_exit_2(lm_eval_cli, tiny_onnx_dir: Path, tmp_path) -> None:
    argv = ["--model", "glm-onnx", "--model_args", f"pretrained={tiny_onnx_dir}", "--device", "cpu"]
    argv += ["--include_path", task_dir(), "--tasks", "glm_demo", "--limit", "2", "--apply_chat_template"]
    proc = lm_eval_cli(argv, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        "glm-onnx: error: --apply_chat_template is not supported: GLM is a blank-infilling model "
        "without a chat template; run without --apply_chat_template (and --fewshot_as_multiturn); "
        "ChatGLM's chat rounds: chat_prompt=true"
    ]
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------- tokenizer=
def build(model: str, model_args: str, **lm_eval_values):
    """The model as lm-eval builds it: ``create_from_arg_string(--model_args, {batch_size, max_batch_size, device})``."""
    from lm_eval.api.registry import get_model

    bootstrap.install()
    values = {"batch_size": 1, "max_batch_size": None, "device": "cpu", **lm_eval_values}
    return get_model(model).create_from_arg_string(model_args, values)


REQUESTS = [("What is the capital of Farara? It is [MASK].", " Solton"), ("Cats say", " meow")]


def scores(lm) -> list[tuple[float, bool]]:
    from lm_eval.api.instance import Instance

    return lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(REQUESTS)])


def test_tokenizer_argument_works_the_same_on_both_backends(tiny_onnx_dir: Path) -> None:
    shipped = Path(__file__).resolve().parents[2] / "glm_core" / "assets" / "glm-tiny"
    for model, path in models(tiny_onnx_dir):
        base = scores(build(model, f"pretrained={path}"))
        for tokenizer in ("glm-tiny", str(shipped)):
            assert scores(build(model, f"pretrained={path},tokenizer={tokenizer}")) == base, (model, tokenizer)


def test_a_missing_tokenizer_is_the_same_error_on_both_backends(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    messages = []
    for model, path in models(tiny_onnx_dir):
        with pytest.raises(GLMError) as info:
            build(model, f"pretrained={path},tokenizer={tmp_path / 'nowhere'}")
        messages.append((type(info.value), str(info.value)))
    assert messages[0] == messages[1] and f"tokenizer={tmp_path / 'nowhere'}" in messages[0][1]


# ---------------------------------------------------------------------------------------------- device / batch_size
def test_device_and_batch_size_in_model_args_win_over_lm_evals_values(tiny_onnx_dir: Path) -> None:
    for model, path in models(tiny_onnx_dir):
        # lm-eval's CLI always passes device (default cuda:0) and batch_size (default 1) besides the model args
        lm = build(model, f"pretrained={path},device=cpu,batch_size=2", device="cuda:0", batch_size="1")
        assert lm.device == "cpu" and lm.batch_setting.size == 2
    results = evaluate("glm-onnx", f"pretrained={tiny_onnx_dir},device=cpu,batch_size=2", ["glm_demo"], limit=1)
    assert results["config"]["glm_batch_size"] == 2 and results["config"]["glm_model_info"]["device"] == "cpu"


# ---------------------------------------------------------------------------------------------- dtype on glm-onnx
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "int4", "int8"])
def test_onnx_dtype_the_graph_does_not_have_is_an_error(tiny_onnx_dir: Path, dtype: str) -> None:
    with pytest.raises(ConfigError, match=f"dtype={dtype} but this ONNX graph computes in fp32"):
        build("glm-onnx", f"pretrained={tiny_onnx_dir},dtype={dtype}")


def test_onnx_records_the_graphs_own_dtype(tiny_onnx_dir: Path) -> None:
    for dtype in ("fp32", "float32", "auto"):
        assert (
            build("glm-onnx", f"pretrained={tiny_onnx_dir},dtype={dtype}").get_model_info()["glm_model_info"]["dtype"]
            == "fp32"
        )
    results = evaluate("glm-onnx", f"pretrained={tiny_onnx_dir},dtype=float32", ["glm_demo"], limit=1)
    assert results["config"]["glm_model_info"]["dtype"] == "fp32"  # what lm-eval writes into results_*.json


# ---------------------------------------------------------------------------------------------- --seed
def sampled(model_args: str, numpy_seed: int) -> list[str]:
    results = evaluate(
        "glm-torch",
        model_args,
        ["glm_summarization"],
        gen_kwargs="do_sample=True,temperature=1.0,max_gen_toks=10",
        numpy_random_seed=numpy_seed,  # what lm_eval --seed A,B,C,D sets from B (a single --seed N: all four)
        log_samples=True,
        limit=1,
    )
    return [s["filtered_resps"][0] for s in results["samples"]["glm_summarization"]]


def test_lm_eval_seed_decides_sampled_generations_unless_seed_is_explicit() -> None:
    pytest.importorskip("torch")
    first = sampled("pretrained=glm-tiny", 1)
    assert sampled("pretrained=glm-tiny", 1) == first  # reproducible under one --seed
    assert sampled("pretrained=glm-tiny", 2) != first  # another --seed, other samples
    pinned = sampled("pretrained=glm-tiny,seed=7", 1)
    assert sampled("pretrained=glm-tiny,seed=7", 2) == pinned  # seed= in the model args wins over --seed


def test_seed_is_recorded() -> None:
    pytest.importorskip("torch")
    assert GLMTorchLM(pretrained="glm-tiny", device="cpu", seed=7).get_model_info()["glm_seed"] == 7
