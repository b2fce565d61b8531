"""glm-torch on a tiny random ChatGLM hub directory, through lm-eval's Python API, against references built here.

The references lay out ChatGLM's own sequence for each request, ``context [gMASK] <sop> continuation`` with the hub
tokenizer's positions (0.. over the context, the mask's position from ``<sop>`` on; block ids 0, then 1, 2, ...),
run it through the backend's step with no cache and take a float64 log-softmax; generation is re-run greedily one
full sequence per token. So they check the ChatGLM layout, the shared Part A and the K/V cache at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from lm_eval.api.instance import Instance

from evaluation.lm_eval_plugin import GLMTorchLM
from glm_core.errors import ConfigError

torch = pytest.importorskip("torch")

# fp32 logits from a cached Part A vs one full sequence: ~1e-6 apart; sums over a few tokens stay well inside 1e-5.
LL_TOL = 1e-5


@pytest.fixture(scope="module")
def chatglm_dir(tiny_chatglm_dir: Path) -> Path:
    return tiny_chatglm_dir


@pytest.fixture(scope="module")
def torch_lm(chatglm_dir: Path) -> GLMTorchLM:
    return GLMTorchLM(pretrained=str(chatglm_dir), device="cpu", batch_size="4", max_gen_toks=6)


def requests(kind: str, *args: tuple) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def chatglm_positions(ids: list[int], sop: int, mask: int, gmask: int) -> np.ndarray:
    """The hub tokenizer's rule: context = tokens before <sop>; the blank is the first [MASK], else the first [gMASK]."""
    n, context = len(ids), ids.index(sop)
    blank = ids.index(mask) if mask in ids else ids.index(gmask)
    return np.array([list(range(context)) + [blank] * (n - context), [0] * context + list(range(1, n - context + 1))])


def full_logits(lm: GLMTorchLM, ids: list[int]) -> np.ndarray:
    s = lm.special
    positions = chatglm_positions(ids, s.sop, s.mask, s.gmask)
    logits, _ = lm.glm.step(np.array([ids]), positions[None], np.array([ids.index(s.sop)]), None)
    return logits[0].astype(np.float64)


def reference_score(lm: GLMTorchLM, part_a: list[int], answer: list[int]) -> tuple[float, bool]:
    """log p(answer | part_a) from the uncached sequence ``part_a <sop> answer[:-1]``, float64."""
    rows = full_logits(lm, [*part_a, lm.special.sop, *answer[:-1]])[len(part_a) :]
    logp = rows - rows.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    total = float(sum(logp[i, t] for i, t in enumerate(answer)))
    return total, all(int(np.argmax(rows[i])) == t for i, t in enumerate(answer))


def test_loglikelihood_left_to_right_and_cloze(torch_lm: GLMTorchLM) -> None:
    s, enc = torch_lm.special, torch_lm.tok_encode
    plain = ("The town council met on Tuesday", " to discuss the new park")
    cloze = ("The fox jumps over the [MASK] dog.", " lazy")
    got = torch_lm.loglikelihood(requests("loglikelihood", plain, cloze))
    expected_plain = reference_score(torch_lm, [*enc(plain[0]), s.gmask], enc(plain[1]))
    # a context with its own [MASK]: [gMASK] still appended, the candidate fills the [MASK] and is closed by <eop>
    expected_cloze = reference_score(torch_lm, [*enc(cloze[0]), s.gmask], [*enc(cloze[1]), s.eop])
    for (value, greedy), (ref, ref_greedy) in zip(got, [expected_plain, expected_cloze], strict=True):
        assert value == pytest.approx(ref, abs=LL_TOL) and greedy == ref_greedy


def test_rolling_loglikelihood_scores_every_token_after_eop(torch_lm: GLMTorchLM) -> None:
    s = torch_lm.special
    text = "Rivers carry water from the mountains to the sea."
    (total,) = torch_lm.loglikelihood_rolling(requests("loglikelihood_rolling", (text,)))
    # one window: Part A = <eop> [gMASK] (the prefix token, no [CLS]), every text token scored in Part B
    ref, _ = reference_score(torch_lm, [s.eop, s.gmask], torch_lm.tok_encode(text))
    assert total == pytest.approx(ref, abs=LL_TOL)


def greedy_reference(lm: GLMTorchLM, context: str, max_new: int) -> str:
    s = lm.special
    ids = [*lm.tok_encode(context), s.gmask, s.sop]
    out: list[int] = []
    for _ in range(max_new):
        row = full_logits(lm, [*ids, *out])[-1, : len(lm.glm_tokenizer)]  # ids with a token only
        token = int(np.argmax(row))
        if token == s.eop:
            break
        out.append(token)
    return lm.tok_decode(out)


def test_generate_until_is_greedy_after_gmask_sop(torch_lm: GLMTorchLM) -> None:
    contexts = ["The library was quiet.", "Heavy rain fell across the region\nfor three days."]
    got = torch_lm.generate_until(
        requests("generate_until", *((c, {"until": [], "max_gen_toks": 5}) for c in contexts))
    )
    assert got == [greedy_reference(torch_lm, c, 5) for c in contexts]


def test_chat_prompt_sends_each_context_as_one_round(chatglm_dir: Path, torch_lm: GLMTorchLM) -> None:
    chat = GLMTorchLM(pretrained=str(chatglm_dir), device="cpu", chat_prompt="true", max_gen_toks=4)
    prompt = chat._generation_prompt("你好", 4)
    assert prompt.input_ids.tolist() == [*chat.tok_encode("[Round 0]\n问：你好\n答："), chat.special.gmask]
    assert torch_lm._generation_prompt("你好", 4).input_ids.tolist() == [*chat.tok_encode("你好"), chat.special.gmask]
    (text,) = chat.generate_until(requests("generate_until", ("你好", {"until": [], "max_gen_toks": 4})))
    assert text == greedy_reference(chat, "[Round 0]\n问：你好\n答：", 4)
    assert chat.get_model_info()["glm_chat_prompt"] is True


def test_chat_prompt_needs_a_chatglm_model() -> None:
    with pytest.raises(ConfigError, match="chat_prompt=true needs a ChatGLM model"):
        GLMTorchLM(pretrained="glm-tiny", device="cpu", chat_prompt="true")


# ---------------------------------------------------------------------------------------------- glm-torch vs glm-onnx
def per_sample(model: str, pretrained: Path) -> dict[str, list]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    import evaluation._lmeval_bootstrap as bootstrap
    from evaluation.lm_eval_tasks import task_dir

    bootstrap.install()
    results = lm_eval.simple_evaluate(
        model=model,
        model_args=f"pretrained={pretrained},max_gen_toks=6",
        tasks=["glm_demo", "glm_demo_ppl", "glm_summarization"],
        task_manager=TaskManager(include_path=task_dir(), include_defaults=False),
        limit=2,
        device="cpu",
        batch_size=2,
        log_samples=True,
    )
    return {task: [s["filtered_resps"] for s in samples] for task, samples in results["samples"].items()}


@pytest.mark.slow  # the ONNX export of the tiny model (~40 s, shared per session) and two lm-eval runs (~18 s)
def test_glm_torch_and_glm_onnx_agree_per_sample(chatglm_dir: Path, tiny_chatglm_onnx_dir: Path) -> None:
    torch_samples = per_sample("glm-torch", chatglm_dir)
    onnx_samples = per_sample("glm-onnx", tiny_chatglm_onnx_dir)
    assert sorted(torch_samples) == ["glm_demo", "glm_demo_ppl", "glm_summarization"]
    for task in torch_samples:
        assert len(torch_samples[task]) == len(onnx_samples[task]) == 2
        for a, b in zip(torch_samples[task], onnx_samples[task], strict=True):
            if task == "glm_summarization":
                assert a == b  # greedy text: the same tokens
            elif task == "glm_demo":  # per choice: (log-likelihood, is_greedy)
                for (la, ga), (lb, gb) in zip(a, b, strict=True):
                    assert la == pytest.approx(lb, abs=LL_TOL) and ga == gb
            else:
                assert a == pytest.approx(b, abs=1e-4)  # a document's summed log-likelihood over ~25 tokens
