"""export.reference_steps.chunk_after_past: the validation reference's chunk after a long past, in one pass.

Reference: the two calls it replaces (prefill the past with its sep, then step the chunk with its own
chunk-relative sep), on GLM and on ChatGLM (whose cache holds rotated keys), for chunk seps 0, S and in between.
"""

from __future__ import annotations

import numpy as np
import pytest

from export.reference_steps import chunk_after_past, prefill_cache
from glm_core.step import TorchStep
from tests.chatglm.fixtures import hub_config, write_hub_dir


@pytest.fixture(scope="module")
def chatglm_model(tmp_path_factory: pytest.TempPathFactory):
    from glm_core.checkpoint import load_model

    ckpt = write_hub_dir(tmp_path_factory.mktemp("chatglm") / "chatglm-tiny", hub_config(max_sequence_length=128))
    return load_model(ckpt, dtype="fp32")


def _two_calls(model, ids, pos, past_sep: int, chunk_sep: int, past: int):
    step = TorchStep(model)
    row_past = prefill_cache(model, step, ids[:, :past], pos[:, :, :past], np.array([past_sep]))
    logits, present = step.step(ids[:, past:], pos[:, :, past:], np.array([chunk_sep]), row_past)
    return logits, np.stack([t[:, :, past:].detach().numpy() for layer in present for t in layer])


@pytest.mark.parametrize("which", ["glm", "chatglm"])
@pytest.mark.parametrize(("past_sep", "chunk_sep"), [(16, 0), (16, 5), (40, 2), (0, 5)])
def test_one_pass_equals_prefill_then_step(
    which: str, past_sep: int, chunk_sep: int, tiny_torch_model, chatglm_model
) -> None:
    model = tiny_torch_model if which == "glm" else chatglm_model
    rng = np.random.default_rng(past_sep * 7 + chunk_sep)
    past, S = 45, 5
    ids = rng.integers(0, model.config.vocab_size, (1, past + S))
    pos = np.stack([np.arange(past + S), np.zeros(past + S, dtype=np.int64)])[None].astype(np.int64)
    want_logits, want_rows = _two_calls(model, ids, pos, past_sep, chunk_sep, past)
    logits, rows = chunk_after_past(model, ids, pos, past_sep, chunk_sep, past)
    assert logits.shape == want_logits.shape == (1, S, model.config.vocab_size)
    assert rows.shape == want_rows.shape and rows.shape[3] == S  # [2L, 1, H, S, D]: only the chunk's rows
    # fp32 both ways; the same products in another grouping (one pass vs two calls)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rows, want_rows, rtol=1e-5, atol=1e-5)
    assert all(not layer._forward_hooks for layer in model.transformer.layers)  # the hooks are gone


def test_a_wrong_mask_is_seen(tiny_torch_model) -> None:
    """The comparison above can tell masks apart: the chunk stepped with another sep differs."""
    model = tiny_torch_model
    rng = np.random.default_rng(3)
    past, S = 45, 5
    ids = rng.integers(0, model.config.vocab_size, (1, past + S))
    pos = np.stack([np.arange(past + S), np.zeros(past + S, dtype=np.int64)])[None].astype(np.int64)
    want, _ = _two_calls(model, ids, pos, 16, 5, past)
    got, _ = chunk_after_past(model, ids, pos, 16, 2, past)
    assert np.abs(got - want).max() > 1e-3
    got, _ = chunk_after_past(model, ids, pos, 30, 5, past)  # the past's own sep matters too
    assert np.abs(got - want).max() > 1e-3
