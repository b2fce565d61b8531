"""GLMOnnxLM / GLMTorchLM through lm-eval's Python API, against references built by hand in this file.

The references lay out one full GLM sequence per request (spec glm_reference §2.3, §3.1: Part A positions 0..n-1
with block 0, Part B at the blank's position with blocks 1..), run it through the backend's step with no cache and
take a float64 log-softmax, so they check the adapter's layout, the shared Part A and the K/V-cache reuse at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from lm_eval.api.instance import Instance

from evaluation.lm_eval_plugin import GLMOnnxLM, GLMTorchLM, is_out_of_memory, parse_batch_size
from evaluation.lm_eval_tasks import task_dir
from glm_core.errors import ConfigError

# fp32 logits from a cached Part A vs one full sequence: ~1e-6 apart; sums over a few tokens stay well inside 1e-5.
LL_TOL = 1e-5


@pytest.fixture(scope="module")
def onnx_lm(tiny_onnx_dir: Path) -> GLMOnnxLM:
    return GLMOnnxLM(pretrained=str(tiny_onnx_dir), device="cpu", batch_size="4", max_gen_toks=12)


@pytest.fixture(scope="module")
def torch_lm() -> GLMTorchLM:
    pytest.importorskip("torch")
    return GLMTorchLM(pretrained="glm-tiny", device="cpu", batch_size="4", max_gen_toks=12)


def requests(kind: str, *args: tuple) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def reference_logprobs(lm, part_a: list[int], mask_pos: int, answer: list[int]) -> tuple[float, bool]:
    """log p(answer | Part A) from one uncached full sequence ``part_a + [sop] + answer[:-1]``, float64."""
    sop = lm.special.sop
    ids = [*part_a, sop, *answer[:-1]]
    n_a, n_b = len(part_a), len(answer)
    positions = np.array([list(range(n_a)) + [mask_pos] * n_b, [0] * n_a + list(range(1, n_b + 1))])
    logits, _ = lm.glm.step(np.array([ids]), positions[None], np.array([n_a]), None)
    rows = logits[0, n_a:].astype(np.float64)  # the rows that predict answer[0..]
    logp = (
        rows - np.log(np.exp(rows - rows.max(-1, keepdims=True)).sum(-1, keepdims=True)) - rows.max(-1, keepdims=True)
    )
    total = float(sum(logp[i, t] for i, t in enumerate(answer)))
    greedy = all(int(np.argmax(rows[i])) == t for i, t in enumerate(answer))
    return total, greedy


def left_to_right_reference(lm, context: str, continuation: str) -> tuple[float, bool]:
    s = lm.special
    part_a = [s.cls, *lm.tok_encode(context), s.gmask]  # spec §6.2: [CLS] context [gMASK]
    return reference_logprobs(lm, part_a, len(part_a) - 1, lm.tok_encode(continuation))


def test_loglikelihood_matches_one_full_sequence_per_request(onnx_lm: GLMOnnxLM) -> None:
    pairs = [("The capital of Farara is", " Solton"), ("The capital of Farara is", " Temholm"), ("Cats say", " meow")]
    got = onnx_lm.loglikelihood(requests("loglikelihood", *pairs))
    for (context, continuation), (total, greedy) in zip(pairs, got, strict=True):
        ref_total, ref_greedy = left_to_right_reference(onnx_lm, context, continuation)
        assert total == pytest.approx(ref_total, abs=LL_TOL)
        assert greedy == ref_greedy


def test_choices_of_one_context_run_part_a_once(onnx_lm: GLMOnnxLM) -> None:
    context = "Most people in Pamtrulia work in the capital,"
    choices = [" Lanburg", " Kasmulton", " Temholm", " Panbiport"]
    part_a = len(onnx_lm.tok_encode(context)) + 2  # [CLS] context [gMASK]
    longest = max(len(onnx_lm.tok_encode(c)) for c in choices)
    before = onnx_lm.glm.tokens_seen
    onnx_lm.loglikelihood(requests("loglikelihood", *[(context, c) for c in choices]))
    seen = onnx_lm.glm.tokens_seen - before
    # one Part A, then the four Part-B chunks (each at most `longest` tokens, padded to it)
    assert seen <= part_a + len(choices) * longest
    assert seen < 2 * part_a


def test_context_with_its_own_blank_is_scored_as_a_cloze(onnx_lm: GLMOnnxLM) -> None:
    context, continuation = "What is the capital of Farara? It is [MASK].", " Solton"
    s = onnx_lm.special
    text = onnx_lm.tok_encode(context)
    assert s.mask in text
    part_a = [s.cls, *text, s.eos]  # spec §2.4-2: [CLS] text [eos], the blank stays where the text has it
    # the candidate fills the blank exactly: its span ends with eop (GLM tasks/superglue/pvp.py:233)
    ref = reference_logprobs(onnx_lm, part_a, part_a.index(s.mask), [*onnx_lm.tok_encode(continuation), s.eop])
    (got,) = onnx_lm.loglikelihood(requests("loglikelihood", (context, continuation)))
    assert got[0] == pytest.approx(ref[0], abs=LL_TOL)
    assert got[1] == ref[1]


def test_empty_context_is_an_empty_part_a(onnx_lm: GLMOnnxLM) -> None:
    s = onnx_lm.special
    answer = onnx_lm.tok_encode("The sun rises in the east")
    ref = reference_logprobs(onnx_lm, [s.cls, s.gmask], 1, answer)
    (got,) = onnx_lm.loglikelihood(requests("loglikelihood", ("", "The sun rises in the east")))
    assert got[0] == pytest.approx(ref[0], abs=LL_TOL)


def test_rolling_loglikelihood_scores_every_token_once_after_eos(onnx_lm: GLMOnnxLM) -> None:
    s = onnx_lm.special
    text = "The sun rises in the east. Cats say meow and dogs say woof."
    tokens = onnx_lm.tok_encode(text)
    # one window (the text is far shorter than 512): Part A = [CLS] eos [gMASK], Part B scores every text token
    ref, _ = reference_logprobs(onnx_lm, [s.cls, s.eos, s.gmask], 2, tokens)
    (got,) = onnx_lm.loglikelihood_rolling(requests("loglikelihood_rolling", (text,)))
    assert got == pytest.approx(ref, abs=1e-4)  # a sum over ~20 tokens


def greedy_reference(lm, context: str, max_new: int) -> str:
    """Greedy blank filling by full recomputation (no cache): feed sop, then each argmax, until eop/eos."""
    s = lm.special
    part_a = [s.cls, *lm.tok_encode(context), s.gmask]
    generated: list[int] = []
    for _ in range(max_new):
        ids = [*part_a, s.sop, *generated]
        n_a, n_b = len(part_a), 1 + len(generated)
        pos = np.array([list(range(n_a)) + [n_a - 1] * n_b, [0] * n_a + list(range(1, n_b + 1))])
        logits, _ = lm.glm.step(np.array([ids]), pos[None], np.array([n_a]), None)
        token = int(np.argmax(logits[0, -1]))
        if token in (s.eop, s.eos):
            break
        generated.append(token)
    return lm.tok_decode(generated)


def test_generate_until_is_greedy_blank_filling_cut_at_the_first_stop_string(onnx_lm: GLMOnnxLM) -> None:
    context = "The town council met on Tuesday. Summary:"
    free = {"until": [], "max_gen_toks": 12, "do_sample": False}
    (text,) = onnx_lm.generate_until(requests("generate_until", (context, free)))
    assert text == greedy_reference(onnx_lm, context, 12)
    assert len(text) > 4
    stop = text[2:4]
    cut = {"until": [stop], "max_gen_toks": 12, "do_sample": False}
    (short,) = onnx_lm.generate_until(requests("generate_until", (context, cut)))
    assert short == text[: text.index(stop)]


def test_torch_and_onnx_agree_on_every_request_type(onnx_lm: GLMOnnxLM, torch_lm: GLMTorchLM) -> None:
    ll = requests("loglikelihood", ("Cats say", " meow"), ("What is the capital of Farara? It is [MASK].", " Solton"))
    for (a, ga), (b, gb) in zip(torch_lm.loglikelihood(ll), onnx_lm.loglikelihood(ll), strict=True):
        assert abs(a - b) <= 1e-4 and ga == gb
    rolling = requests("loglikelihood_rolling", ("Rivers carry water from the mountains to the sea.",))
    assert torch_lm.loglikelihood_rolling(rolling) == pytest.approx(onnx_lm.loglikelihood_rolling(rolling), abs=1e-4)
    gen = requests("generate_until", ("The library was quiet.", {"until": ["\n"], "max_gen_toks": 8}))
    assert torch_lm.generate_until(gen) == onnx_lm.generate_until(gen)


def test_simple_evaluate_resolves_glm_onnx_by_name(tiny_onnx_dir: Path) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    import evaluation._lmeval_bootstrap as bootstrap

    bootstrap.install()  # what the .pth does at start-up; registers now since lm_eval's registry is imported
    results = lm_eval.simple_evaluate(
        model="glm-onnx",
        model_args=f"pretrained={tiny_onnx_dir},max_gen_toks=8",
        tasks=["glm_demo_ppl", "glm_summarization"],
        task_manager=TaskManager(include_path=task_dir(), include_defaults=False),
        limit=2,
        device="cpu",
        batch_size="auto",
        max_batch_size=4,
    )
    assert results["config"]["glm_backend"] == "onnx"
    assert results["config"]["batch_sizes"] == [4, 4]
    assert results["results"]["glm_demo_ppl"]["bits_per_byte,none"] > 0
    assert 0.0 <= results["results"]["glm_summarization"]["rouge1,none"] <= 1.0


# ---------------------------------------------------------------------------------------------- constructor arguments
@pytest.mark.parametrize(
    "value, limit, size, auto",
    [
        ("8", None, 8, False),
        (3, None, 3, False),
        ("auto", None, 64, True),
        ("auto:4", 16, 16, True),
        (None, None, 1, False),
    ],
)
def test_batch_size_strings_as_lm_eval_passes_them(value, limit, size, auto) -> None:
    setting = parse_batch_size(value, limit)
    assert (setting.size, setting.auto) == (size, auto)


@pytest.mark.parametrize("value", ["0", "-2", "eight", "auto:x", "automatic"])
def test_bad_batch_size_is_a_config_error(value) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        parse_batch_size(value, None)


def test_auto_batch_size_halves_on_out_of_memory(tiny_onnx_dir: Path, monkeypatch) -> None:
    lm = GLMOnnxLM(pretrained=str(tiny_onnx_dir), device="cpu", batch_size="auto", max_batch_size=8)
    real_scorer = lm._scorer

    class OutOfMemoryError(RuntimeError):  # the name torch.cuda.OutOfMemoryError has
        pass

    def scorer(batch_size: int, progress: bool):
        if batch_size > 2:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_scorer(batch_size, progress)

    monkeypatch.setattr(lm, "_scorer", scorer)
    (got,) = lm.loglikelihood(requests("loglikelihood", ("Cats say", " meow")))
    assert got[0] < 0
    assert lm.batch_sizes == {"loglikelihood": 2}
    assert is_out_of_memory(RuntimeError("[ONNXRuntimeError] : 6 : Failed to allocate memory for requested buffer"))
    assert not is_out_of_memory(ValueError("bad input"))


def test_a_fixed_batch_size_does_not_hide_errors(onnx_lm: GLMOnnxLM, monkeypatch) -> None:
    def scorer(batch_size: int, progress: bool):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(onnx_lm, "_scorer", scorer)
    with pytest.raises(RuntimeError, match="out of memory"):
        onnx_lm.loglikelihood(requests("loglikelihood", ("Cats say", " meow")))


def test_the_default_device_is_the_best_available_and_a_missing_cuda_asked_for_is_an_error(
    tiny_onnx_dir: Path, caplog
) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here: the default is cuda:0 and an explicit cuda runs")
    with caplog.at_level(logging.INFO, logger="evaluation.lm_eval_plugin"):
        lm = GLMOnnxLM(pretrained=str(tiny_onnx_dir))  # no device: the best available, silently
        cli = GLMOnnxLM.create_from_arg_string(f"pretrained={tiny_onnx_dir}", {"device": "cuda:0"})  # lm-eval's default
    assert lm.device == "cpu" and cli.device == "cpu"
    assert "CUDA" not in caplog.text  # nothing asked for CUDA, so nothing to warn about
    for asked in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=f"device '{asked}' asked for, but this installation has no usable CUDA"):
            GLMOnnxLM(pretrained=str(tiny_onnx_dir), device=asked)
    with pytest.raises(ConfigError, match="no usable CUDA"):
        GLMOnnxLM.create_from_arg_string(f"pretrained={tiny_onnx_dir},device=cuda:0", {"device": "cuda:0"})


def test_max_length_and_device_are_checked(tiny_onnx_dir: Path) -> None:
    with pytest.raises(ConfigError, match="max_length=4096 exceeds"):
        GLMOnnxLM(pretrained=str(tiny_onnx_dir), device="cpu", max_length=4096)
    with pytest.raises(ConfigError, match="device 'tpu'"):
        GLMOnnxLM(pretrained=str(tiny_onnx_dir), device="tpu")
    with pytest.raises(ConfigError, match=r"unknown model argument\(s\) \['trust_remote_code'\]"):
        GLMOnnxLM(pretrained=str(tiny_onnx_dir), device="cpu", trust_remote_code=True)


def test_shorter_max_length_truncates_the_context_from_the_left(tiny_onnx_dir: Path) -> None:
    lm = GLMOnnxLM(pretrained=str(tiny_onnx_dir), device="cpu", max_length=12)
    context, continuation = "one two three four five six seven eight nine ten eleven twelve", " thirteen"
    cont = lm.tok_encode(continuation)
    keep = 12 - 2 - len(cont)  # [CLS] + context + [gMASK] + |continuation| fit in 12
    s = lm.special
    part_a = [s.cls, *lm.tok_encode(context)[-keep:], s.gmask]
    ref = reference_logprobs(lm, part_a, len(part_a) - 1, cont)
    (got,) = lm.loglikelihood(requests("loglikelihood", (context, continuation)))
    assert got[0] == pytest.approx(ref[0], abs=LL_TOL)


def test_model_info_names_backend_weights_and_settings(onnx_lm: GLMOnnxLM, tiny_onnx_dir: Path) -> None:
    info = onnx_lm.get_model_info()
    assert info["glm_backend"] == "onnx"
    assert info["glm_model_info"]["model_hash"].startswith("sha256:")
    assert info["glm_max_length"] == 512 and info["glm_max_gen_toks"] == 12 and info["glm_batch_size"] == 4
