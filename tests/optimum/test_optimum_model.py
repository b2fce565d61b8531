"""GLMORTModel (glm_optimum) against the project's own ONNX backend and generation.

References: ``OnnxBackend.step`` on the same export (a second, independent session) for logits and cache, and
``glm_core.generation.generate`` / ``generate_batch`` over that backend for the generated ids.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("optimum.onnxruntime")

import torch  # noqa: E402

from evaluation.backends.onnx import OnnxBackend  # noqa: E402
from glm_core.errors import ConfigError, ExportError, InputError  # noqa: E402
from glm_core.generation import GenerationConfig, generate_batch  # noqa: E402
from glm_core.layout import build_generation_prompt  # noqa: E402
from glm_optimum import MODEL_TYPE, GLMORTConfig, GLMORTModel  # noqa: E402
from glm_optimum.generation import open_first_blank  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PROMPTS = [
    "The capital of France is [MASK].",
    "Once upon a time [MASK] lived in a castle.",
    "[MASK] is the best way to learn.",
    "He went to the market to buy [MASK].",
]
SAME_LENGTH = ["The capital of France is [MASK].", "The [MASK] of France is Paris.", "A cat and a dog [MASK] together."]
MAX_NEW = 16


@pytest.fixture(scope="module")
def reference(export_dir: Path) -> OnnxBackend:
    return OnnxBackend(export_dir)


def _ours(backend: OnnxBackend, texts: list[str], same_chunks: bool = False, **settings) -> list[list[int]]:
    """glm_core.generation: the blank's tokens, then the stop token if one ended it.

    On the Part-A-only prompts (Part A prefilled, then [sop] fed as the next chunk), or with ``same_chunks`` on the
    prompts GLMORTModel runs (Part A + [sop] in one prefill).
    """
    tok = backend.tokenizer
    prompts = [build_generation_prompt(tok.encode(t), tok.special) for t in texts]
    if same_chunks:
        prompts = [open_first_blank(p, tok.special) for p in prompts]
    config = GenerationConfig(max_new_tokens=MAX_NEW, vocab_size=len(tok), **settings)
    results = generate_batch(backend, prompts, tok.special, config)
    return [r.blanks[0] + ([r.stop_tokens[0]] if r.stop_tokens[0] is not None else []) for r in results]


def _theirs(model: GLMORTModel, texts: list[str], **kwargs) -> list[list[int]]:
    """GLMORTModel.generate: the new ids up to and including the first stop token (pads after it dropped)."""
    inputs = model.tokenizer(texts)
    out = model.generate(**inputs, max_new_tokens=MAX_NEW, **kwargs)[:, inputs["input_ids"].shape[1] :].tolist()
    stops = set(model.generation_config.eos_token_id)
    rows = []
    for row in out:
        ends = [i for i, t in enumerate(row) if t in stops]
        rows.append(row[: ends[0] + 1] if ends else row)
    return rows


# ---------------------------------------------------------------------------------------------- forward and cache
def _chunks() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Prefill at B = 2 with different sep per row (Part A 6 + Part B 3, Part A 8 + Part B 1), then two decodes."""
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 2000, (2, 9))
    pos = np.zeros((2, 2, 9), dtype=np.int64)
    for b, (sep, mask) in enumerate([(6, 3), (8, 5)]):
        pos[b, 0, :sep] = np.arange(sep)
        pos[b, 0, sep:] = mask
        pos[b, 1, sep:] = np.arange(1, 10 - sep)
    chunks = [(ids, pos, np.array([6, 8]))]
    last = pos[:, :, -1:]
    for k in (1, 2):
        chunks.append((rng.integers(10, 2000, (2, 1)), last + np.array([0, k])[None, :, None], np.zeros(2, np.int64)))
    return chunks


@pytest.mark.parametrize("io_binding", [False, True], ids=["plain", "io-binding"])
def test_forward_and_cache_equal_the_onnx_backend(export_dir, reference, io_binding):
    model = GLMORTModel.from_pretrained(export_dir, use_io_binding=io_binding)
    assert model.use_io_binding is io_binding
    past, ref_past = None, None
    for ids, pos, sep in _chunks():
        out = model(torch.from_numpy(ids), torch.from_numpy(pos), torch.from_numpy(sep), past_key_values=past)
        ref_logits, ref_past = reference.step(ids, pos, sep, ref_past)
        # the same graph on the same ORT build: equal, not merely close
        np.testing.assert_array_equal(out.logits.numpy(), ref_logits)
        assert len(out.past_key_values) == reference.num_layers
        flat = [t.numpy() for pair in out.past_key_values for t in pair]
        for mine, theirs in zip(flat, ref_past, strict=True):
            np.testing.assert_array_equal(mine, theirs.numpy())
        past = out.past_key_values


@pytest.mark.parametrize("layout", ["buffer", "fp16", "int8", "int4", "optimize-ort"])
def test_other_export_layouts(layout_dirs, layout):
    directory = layout_dirs[layout]
    reference = OnnxBackend(directory)
    ids, pos, sep = _chunks()[0]
    logits, present = reference.step(ids, pos, sep)
    if layout == "buffer":
        with pytest.raises(ConfigError, match="IO binding needs an export with --kv-cache concat"):
            GLMORTModel.from_pretrained(directory, use_io_binding=True)
    for io_binding in (False,) if layout == "buffer" else (False, True):
        model = GLMORTModel.from_pretrained(directory, use_io_binding=io_binding)
        assert model.config.kv_dtype == ("float16" if layout == "fp16" else "float32")
        out = model(torch.from_numpy(ids), torch.from_numpy(pos), torch.from_numpy(sep))
        np.testing.assert_array_equal(out.logits.numpy(), logits)
        flat = [t for pair in out.past_key_values for t in pair]
        assert flat[0].dtype == (torch.float16 if layout == "fp16" else torch.float32)
        for mine, theirs in zip(flat, present, strict=True):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
        # int8 quantizes activations per tensor at run time, so its logits depend on how the tokens are chunked:
        # compared on the same chunks (the other layouts give these ids on the Part-A-only prompts too)
        assert _theirs(model, SAME_LENGTH) == _ours(reference, SAME_LENGTH, same_chunks=True)
        if layout != "int8":
            assert _theirs(model, SAME_LENGTH) == _ours(reference, SAME_LENGTH)


def test_numpy_inputs_give_numpy_outputs(model, reference):
    ids, pos, sep = _chunks()[0]
    out = model(ids, pos, sep)
    assert isinstance(out.logits, np.ndarray)
    np.testing.assert_array_equal(out.logits, reference.step(ids, pos, sep)[0])


def test_forward_refuses_inputs_glm_cannot_take(model):
    ids, pos, sep = (torch.from_numpy(a) for a in _chunks()[0])
    with pytest.raises(InputError, match="position_ids"):
        model(ids)
    with pytest.raises(InputError, match="attention_mask"):
        model(ids, pos, sep, attention_mask=torch.zeros_like(ids))
    with pytest.raises(InputError, match="sep must lie"):
        model(ids, pos, torch.tensor([6, 10]))  # the backend's own step checks


# ---------------------------------------------------------------------------------------------- generation
def test_prompt_is_part_a_then_sop_at_the_blank(model):
    tok = model.tokenizer
    special = tok.special
    inputs = tok(PROMPTS[0])
    ids = inputs["input_ids"][0].tolist()
    text_ids = tok.tokenizer.encode(PROMPTS[0])
    assert ids == [special.cls, *text_ids, special.eos, special.sop]  # [CLS] ... [MASK] ... [eos] [sop]
    mask_pos = ids.index(special.mask)
    assert inputs["sep"].tolist() == [len(ids) - 1]
    assert inputs["position_ids"][0, 0].tolist() == [*range(len(ids) - 1), mask_pos]
    assert inputs["position_ids"][0, 1].tolist() == [0] * (len(ids) - 1) + [1]


def test_greedy_ids_equal_ours(model, reference):
    for text in PROMPTS:
        assert _theirs(model, [text]) == _ours(reference, [text])
    # one batch, one length, blanks at different positions (each row keeps its own positions)
    assert _theirs(model, SAME_LENGTH) == _ours(reference, SAME_LENGTH)


def test_greedy_ids_equal_ours_with_io_binding(export_dir, reference):
    model = GLMORTModel.from_pretrained(export_dir, use_io_binding=True)
    assert _theirs(model, SAME_LENGTH) == _ours(reference, SAME_LENGTH)


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0])
def test_beam_ids_equal_ours(model, reference, length_penalty):
    settings = dict(num_beams=3, length_penalty=length_penalty)
    for text in PROMPTS:
        # early_stopping=False is transformers' default and glm_core's (HF BeamHypotheses) rule
        assert _theirs(model, [text], early_stopping=False, **settings) == _ours(
            reference, [text], strategy="beam", **settings
        )
    # a batch: beams of each row kept apart, glm_core's stopping test applied per row
    assert _theirs(model, SAME_LENGTH, **settings) == _ours(reference, SAME_LENGTH, strategy="beam", **settings)


def test_seeded_sampling_ids_equal_ours(model, reference):
    knobs = dict(temperature=0.9, top_k=40, top_p=0.95)
    for seed, text in enumerate(PROMPTS[:3]):
        assert _theirs(model, [text], do_sample=True, seed=seed, **knobs) == _ours(
            reference, [text], strategy="sample", seed=seed, **knobs
        )
    # one generator over the batch, one draw per unfinished row in row order
    assert _theirs(model, SAME_LENGTH, do_sample=True, seed=11, **knobs) == _ours(
        reference, SAME_LENGTH, strategy="sample", seed=11, **knobs
    )
    draws = {tuple(_theirs(model, [PROMPTS[0]], do_sample=True, seed=s, **knobs)[0]) for s in range(4)}
    assert len(draws) > 1  # the seed matters: sampling is not greedy in disguise


def test_min_length_and_no_repeat_ngram_count_inside_the_blank(model, reference):
    text = PROMPTS[2]
    assert _theirs(model, [text], min_new_tokens=6, no_repeat_ngram_size=2) == _ours(
        reference, [text], min_length=6, no_repeat_ngram_size=2
    )
    assert len(_theirs(model, [text], min_new_tokens=6)[0]) >= 7


def test_generation_settings_glm_cannot_honour_are_refused(model):
    inputs = model.tokenizer(PROMPTS[0])
    with pytest.raises(ConfigError, match="beam sampling"):
        model.generate(**inputs, do_sample=True, num_beams=2)
    with pytest.raises(InputError, match="different lengths"):
        model.tokenizer(PROMPTS[:2])


# ---------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("layout", ["inline", "external"])
def test_save_pretrained_round_trip(export_dir, external_dir, reference, tmp_path, layout):
    source = export_dir if layout == "inline" else external_dir
    model = GLMORTModel.from_pretrained(source)
    assert model.backend.external_data == ([] if layout == "inline" else ["model.onnx.data"])
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    names = {p.name for p in saved.iterdir()}
    expected = {"model.onnx", "glm_config.json", "glm_tokenizer.json", "spiece.model", "config.json"}
    assert expected | {"generation_config.json"} <= names
    assert ("model.onnx.data" in names) is (layout == "external")
    assert json.loads((saved / "config.json").read_text())["model_type"] == MODEL_TYPE

    again = GLMORTModel.from_pretrained(saved)
    assert again.backend.external_data == model.backend.external_data
    ids, pos, sep = _chunks()[0]
    np.testing.assert_array_equal(again(ids, pos, sep).logits, reference.step(ids, pos, sep)[0])
    assert _theirs(again, [PROMPTS[0]]) == _ours(reference, [PROMPTS[0]])


def test_autoconfig_never_returns_glm4(model, tmp_path):
    from transformers import AutoConfig

    saved = tmp_path / "glm-saved"
    model.save_pretrained(saved)
    config = AutoConfig.from_pretrained(saved)
    assert isinstance(config, GLMORTConfig) and config.model_type == MODEL_TYPE != "glm"
    assert (config.num_hidden_layers, config.num_attention_heads) == (model.backend.num_layers, model.backend.num_heads)
    # an interpreter that never imported glm_optimum: transformers does not know the type, so it refuses
    probe = (
        "import sys\nfrom transformers import AutoConfig\n"
        "try:\n    c = AutoConfig.from_pretrained(sys.argv[1])\n"
        "except ValueError as e:\n    print('refused', 'glm_harness' in str(e))\n"
        "else:\n    print('loaded', type(c).__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe, str(saved)], capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["refused", "True"], proc.stderr[-2000:]


def test_config_comes_from_glm_config_json(export_dir, tmp_path):
    # the export has no config.json, and its path says "glm": the config is still ours
    assert "glm" in export_dir.name and not (export_dir / "config.json").exists()
    model = GLMORTModel.from_pretrained(export_dir)
    assert type(model.config) is GLMORTConfig and model.config.glm_model_name == "glm-tiny"
    # a config.json of another type beside the export (the torch checkpoint's, "glm") is ignored
    copy = tmp_path / "with-foreign-config"
    shutil.copytree(export_dir, copy)
    (copy / "config.json").write_text(json.dumps({"model_type": "glm", "num_layers": 99}))
    assert type(GLMORTModel.from_pretrained(copy).config) is GLMORTConfig


def test_a_directory_that_is_not_our_export_is_one_clear_error(tmp_path):
    from glm_core.checkpoint import SHIPPED_PRESETS

    with pytest.raises(ExportError, match=r"glm_config\.json: missing; expected a model directory written by"):
        GLMORTModel.from_pretrained(SHIPPED_PRESETS["glm-tiny"])  # a torch checkpoint, config.json says "glm"
    with pytest.raises(ConfigError, match="export=True"):
        GLMORTModel.from_pretrained(tmp_path, export=True)


def test_session_options_and_provider_reach_the_session(export_dir):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    model = GLMORTModel.from_pretrained(export_dir, session_options=options, provider="CPUExecutionProvider")
    assert model.session.get_session_options().intra_op_num_threads == 1
    assert model.providers == ["CPUExecutionProvider"]


def test_external_data_outside_the_directory_is_refused_before_a_session(external_dir, tmp_path, monkeypatch):
    import onnx
    import onnxruntime as ort

    root = tmp_path / "outer"
    inner = root / "model"
    shutil.copytree(external_dir, inner)
    (inner / "model.onnx.data").rename(root / "secret.data")
    proto = onnx.load(str(inner / "model.onnx"), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../secret.data"
    onnx.save(proto, str(inner / "model.onnx"))

    def no_session(*args, **kwargs):
        raise AssertionError("a session was created for a model whose external data escapes its directory")

    monkeypatch.setattr(ort, "InferenceSession", no_session)
    with pytest.raises(ExportError, match="outside the model directory"):
        GLMORTModel.from_pretrained(inner)


def _hub_cache(tmp_path: Path, export: Path, repo: str) -> Path:
    """A hub cache as huggingface_hub lays it out (refs/main -> snapshots/<commit>/files), made offline."""
    commit = "0" * 40
    storage = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(export, storage / "snapshots" / commit)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)
    return tmp_path / "hub"


def test_hub_download_reads_the_data_file_our_export_writes(external_dir, reference, tmp_path):
    cache = _hub_cache(tmp_path, external_dir, "glm-harness/glm-tiny-onnx")
    model = GLMORTModel.from_pretrained("glm-harness/glm-tiny-onnx", cache_dir=str(cache), local_files_only=True)
    snapshot = model.backend.model_dir
    assert model.backend.external_data == ["model.onnx.data"] and not (snapshot / "model.onnx_data").exists()
    ids, pos, sep = _chunks()[0]
    np.testing.assert_array_equal(model(ids, pos, sep).logits, reference.step(ids, pos, sep)[0])
    assert _theirs(model, [PROMPTS[1]]) == _ours(reference, [PROMPTS[1]])

    (snapshot / "model.onnx.data").unlink()
    with pytest.raises(ExportError, match=r"model\.onnx\.data could not be fetched"):
        GLMORTModel.from_pretrained("glm-harness/glm-tiny-onnx", cache_dir=str(cache), local_files_only=True)
    with pytest.raises(ExportError, match=r"not a local directory, and glm_config\.json could not be fetched"):
        GLMORTModel.from_pretrained("glm-harness/nothing-here", cache_dir=str(cache), local_files_only=True)
