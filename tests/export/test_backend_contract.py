"""OnnxBackend at the edges of its contract: bad step inputs, a graph that disagrees with its config, the model
file's metadata, execution providers (a fallback from CUDA is an error; option parsing), device-side gathers
exercised on the CPU, and one backend shared by threads."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import evaluation.backends.onnx as onnx_backend
from evaluation.backends.devices import parse_device
from evaluation.backends.onnx import OnnxBackend
from evaluation.backends.onnx_device import DeviceGather, parse_providers
from glm_core.errors import ConfigError, ExportError, InputError
from tests.export.conftest import TINY_EXPORT

V, L, H = TINY_EXPORT["vocab_size"], TINY_EXPORT["num_layers"], TINY_EXPORT["num_attention_heads"]
D = TINY_EXPORT["hidden_size"] // H


def positions(batch: int, start: int, length: int) -> np.ndarray:
    pos = np.arange(start, start + length)
    return np.repeat(np.stack([pos, np.zeros_like(pos)])[None], batch, axis=0).astype(np.int64)


@pytest.fixture(scope="module")
def backend(concat_dir: Path) -> OnnxBackend:
    """The concat layout: the one the CUDA path (I/O binding, device gathers) runs; the buffer layout's own checks
    are in test_kv_cache.py."""
    return OnnxBackend(concat_dir)


@pytest.fixture(scope="module")
def cache(backend: OnnxBackend) -> list:
    _, past = backend.step(np.array([[1, 2, 3], [4, 5, 6]]), positions(2, 0, 3), np.array([1, 0]), None)
    return past


# ------------------------------------------------------------------------------------------------ step inputs
def _past_with(cache: list, index: int, array: np.ndarray) -> list:
    past = [p.numpy() for p in cache]
    past[index] = array
    return past


def bad_inputs(cache: list) -> dict[str, tuple[tuple, str]]:
    ids, pos, sep = np.array([[7], [8]]), positions(2, 3, 1), np.zeros(2, np.int64)
    return {
        "float ids": ((ids.astype(np.float32) + 0.5, pos, sep, None), "input_ids must hold integers"),
        "float positions": ((ids, pos + 0.25, sep, None), "position_ids must hold integers"),
        "bool ids": ((ids > 7, pos, sep, None), "input_ids must hold integers"),
        "float sep": ((ids, pos, np.array([0.7, 0.0]), None), "sep must hold integers"),
        "short sep": ((ids, pos, np.zeros(1, np.int64), None), "sep must hold one value per row"),
        "long sep": ((ids, pos, np.zeros(3, np.int64), None), "sep must hold one value per row"),
        "empty batch": ((np.zeros((0, 1), np.int64), np.zeros((0, 2, 1), np.int64), sep[:0], None), "empty batch"),
        "past dtype": (
            (ids, pos, sep, [p.numpy().astype(np.float64) for p in cache]),
            "past layer 0 key has dtype float64; this model's cache is float32",
        ),
        "past B of a later layer": (
            (ids, pos, sep, _past_with(cache, 2 * L - 1, cache[-1].numpy()[:1])),
            f"past layer {L - 1} value must be \\[2, {H}, P, {D}\\]",
        ),
        "past P of a later layer": (
            (ids, pos, sep, _past_with(cache, 2, cache[2].numpy()[:, :, :2])),
            "past layer 1 key holds 2 positions, layer 0 key holds 3",
        ),
        "past count": ((ids, pos, sep, list(cache)[:-1]), f"past must hold {2 * L} tensors"),
    }


CASES = [
    "float ids",
    "bool ids",
    "float positions",
    "float sep",
    "short sep",
    "long sep",
    "empty batch",
    "past dtype",
    "past B of a later layer",
    "past P of a later layer",
    "past count",
]


@pytest.mark.parametrize("case", CASES)
def test_step_rejects_what_it_cannot_run(backend: OnnxBackend, cache: list, case: str) -> None:
    args, message = bad_inputs(cache)[case]
    calls = backend.calls
    with pytest.raises(InputError, match=message) as info:
        backend.step(*args)
    assert "\n" not in str(info.value)
    assert backend.calls == calls  # nothing ran


def test_valid_steps_still_run(backend: OnnxBackend, cache: list) -> None:
    ids, pos = np.array([[7], [8]], dtype=np.int32), positions(2, 3, 1).astype(np.int32)  # any integer dtype
    logits, present = backend.step(ids, pos, 0, cache)  # a scalar sep is every row's
    assert logits.shape == (2, 1, V) and backend.past_length(present) == 4
    last, _ = backend.step(np.array([[1, 2, 3]]), positions(1, 0, 3), np.array([1]), None, last_logits_only=True)
    full, _ = backend.step(np.array([[1, 2, 3]]), positions(1, 0, 3), np.array([1]), None)
    np.testing.assert_array_equal(last, full[:, -1:])


# ------------------------------------------------------------------------------------------------ load-time checks
def _copy(exported_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(exported_dir, target)
    return target


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_attention_heads", H + 1, "heads"),
        ("head_dim", D * 2, "head_dim"),
        ("num_layers", L + 1, "graph inputs/outputs do not match"),
        ("vocab_size", V + 1, "logits have shape"),
    ],
)
def test_config_that_disagrees_with_the_graph_is_refused(
    exported_dir: Path, tmp_path: Path, field: str, value: int, message: str
) -> None:
    model_dir = _copy(exported_dir, tmp_path)
    path = model_dir / "glm_config.json"
    cfg = json.loads(path.read_text())
    cfg[field] = value
    path.write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match=message):
        OnnxBackend(model_dir)


def test_model_file_describes_itself(exported_dir: Path, backend: OnnxBackend) -> None:
    props = {p.key: p.value for p in onnx.load(str(exported_dir / "model.onnx")).metadata_props}
    assert props["glm.format_version"] == "1"
    assert props["glm.mask_rule"] == "j < P or (j - P) < sep[b] or (j - P) <= t"
    config = json.loads(props["glm.config"])
    assert (config["num_layers"], config["num_attention_heads"], config["head_dim"]) == (L, H, D)
    assert json.loads(props["glm.tokenizer"])["family"] == "sentencepiece"
    assert backend.metadata["config"] == config and backend.metadata["format_version"] == 1


@pytest.mark.parametrize(("version", "message"), [("2", "format version '2' is not supported"), (None, "no glm")])
def test_unknown_model_format_version_is_refused(
    exported_dir: Path, tmp_path: Path, version: str | None, message: str
) -> None:
    model_dir = _copy(exported_dir, tmp_path)
    model = onnx.load(str(model_dir / "model.onnx"))
    kept = [p for p in model.metadata_props if p.key != "glm.format_version"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if version is not None:
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in kept}, "glm.format_version": version})
    onnx.save(model, str(model_dir / "model.onnx"))
    with pytest.raises(ExportError, match=message):
        OnnxBackend(model_dir)


# ------------------------------------------------------------------------------------------------ providers
class _SessionOn:
    """A real CPU session that reports other providers (what ORT does after a fallback, or on a GPU machine)."""

    reported: list[str] = ["CPUExecutionProvider"]
    options: dict[str, dict[str, str]] = {}
    requested: list = []

    def __init__(self, path: str, sess_options=None, providers=None) -> None:
        type(self).requested = list(providers or [])
        self._session = _REAL_SESSION(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    def get_providers(self) -> list[str]:
        return list(self.reported)

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        return dict(self.options)

    def __getattr__(self, name: str):
        return getattr(self._session, name)


_REAL_SESSION = ort.InferenceSession


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch):
    """onnxruntime as if it were onnxruntime-gpu: CUDA is listed as available; sessions are fakes over the CPU."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", _SessionOn)
    monkeypatch.setattr(_SessionOn, "reported", ["CPUExecutionProvider"])
    monkeypatch.setattr(_SessionOn, "options", {})
    return _SessionOn


def test_cuda_request_that_fell_back_to_the_cpu_is_an_error(exported_dir: Path, fake_cuda) -> None:
    with pytest.raises(ConfigError, match="asked onnxruntime for CUDAExecutionProvider but the session runs on CPU"):
        OnnxBackend(exported_dir, providers="cuda:1")
    assert fake_cuda.requested == [("CUDAExecutionProvider", {"device_id": "1"}), ("CPUExecutionProvider", {})]


def test_device_and_options_are_read_from_the_session(exported_dir: Path, fake_cuda, monkeypatch) -> None:
    monkeypatch.setattr(fake_cuda, "reported", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(fake_cuda, "options", {"CUDAExecutionProvider": {"device_id": "3", "arena": "x"}})
    options = {"device_id": 3, "gpu_mem_limit": 1 << 30}
    backend = OnnxBackend(exported_dir, providers=[("CUDAExecutionProvider", options), "CPUExecutionProvider"])
    assert (backend.on_cuda, backend.device_type, backend.device_id) == (True, "cuda", 3)
    assert fake_cuda.requested[0] == ("CUDAExecutionProvider", {"device_id": "3", "gpu_mem_limit": str(1 << 30)})


def test_validation_refuses_a_fallback_in_one_line(exported_dir: Path, tmp_path: Path, fake_cuda, capsys) -> None:
    from export.validate import main

    report = tmp_path / "report.json"
    argv = ["--model-dir", str(exported_dir), "--reference", str(tmp_path / "r.npz"), "--report", str(report)]
    assert main([*argv, "--device", "cuda:1"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "asked onnxruntime for CUDAExecutionProvider but the session runs on CPU" in err[0]
    assert not report.exists()


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (None, (("CPUExecutionProvider", {}),)),
        ("cpu", (("CPUExecutionProvider", {}),)),
        ("CPUExecutionProvider", (("CPUExecutionProvider", {}),)),
        (
            [("CPUExecutionProvider", {"arena_extend_strategy": 1})],
            (("CPUExecutionProvider", {"arena_extend_strategy": "1"}),),
        ),
    ],
)
def test_provider_requests_parse(request_, expected) -> None:
    assert parse_providers(request_).providers == expected


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ("cuda:x", "device 'cuda:x' is not supported"),
        ("cuda:1", "CUDAExecutionProvider' is not available"),
        (["NoSuchExecutionProvider"], "is not available"),
        ([("CPUExecutionProvider", "device_id=1")], "must be a provider name or a \\(name, options dict\\) pair"),
        (["CPUExecutionProvider", "CPUExecutionProvider"], "listed twice"),
        ([], "at least one"),
    ],
)
def test_bad_provider_requests_are_config_errors(request_, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_providers(request_)


def test_device_strings() -> None:
    assert [parse_device(d) for d in ("cpu", "cuda", "cuda:1", "CUDA:12")] == [
        ("cpu", 0),
        ("cuda", 0),
        ("cuda", 1),
        ("cuda", 12),
    ]


def test_load_backend_passes_the_device_index(exported_dir: Path, fake_cuda, monkeypatch) -> None:
    from evaluation.backends import load_backend

    monkeypatch.setattr(fake_cuda, "reported", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(fake_cuda, "options", {"CUDAExecutionProvider": {"device_id": "1"}})
    backend = load_backend("onnx", exported_dir, device="cuda:1")
    assert fake_cuda.requested[0] == ("CUDAExecutionProvider", {"device_id": "1"})
    assert backend.info()["device"] == "cuda:1"


# ------------------------------------------------------------------------------------------------ device paths
def test_device_gather_runs_the_gather_graph(backend: OnnxBackend, cache: list) -> None:
    gather = DeviceGather(parse_providers("cpu"), "cpu", 0)
    index = np.array([1, 0, 1])
    out = gather(cache, index)
    assert len(out) == len(cache)
    for got, value in zip(out, cache, strict=True):
        np.testing.assert_array_equal(got.numpy(), value.numpy()[index])
    (last,) = gather([cache[0]], np.array([2]), axis=2)
    np.testing.assert_array_equal(last.numpy(), cache[0].numpy()[:, :, 2:3])


def test_bound_step_equals_the_plain_step(backend: OnnxBackend, cache: list) -> None:
    """The CUDA code path (I/O binding, device gathers), run with device type cpu."""
    ids, pos, sep = np.array([[7], [8]]), positions(2, 3, 1), np.zeros(2, np.int64)
    plain, present = backend.step(ids, pos, sep, cache)
    bound, bound_present = backend._run_device(ids, pos, sep, cache)
    np.testing.assert_array_equal(bound, plain)
    last, _ = backend._run_device(ids, pos, sep, cache, last_logits_only=True)
    np.testing.assert_array_equal(last, plain[:, -1:])
    for a, b in zip(bound_present, present, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize(("index", "message"), [([], "non-empty"), ([0.5], "integer"), ([2], "must lie in")])
def test_reorder_index_is_checked(backend: OnnxBackend, cache: list, index, message: str) -> None:
    with pytest.raises(InputError, match=message):
        backend.reorder_past(cache, np.asarray(index))


# ------------------------------------------------------------------------------------------------ threads
def test_one_backend_serves_several_threads(exported_dir: Path) -> None:
    shared = OnnxBackend(exported_dir, threads=1)
    rng = np.random.default_rng(5)
    requests = [rng.integers(0, V, (2, 6)) for _ in range(4)]
    expected = [shared.step(ids, positions(2, 0, 6), np.array([3, 0]), None)[0] for ids in requests]
    before = (shared.calls, shared.tokens_seen)
    results: dict[tuple[int, int], np.ndarray] = {}

    def work(worker: int) -> None:
        for n in range(10):
            ids = requests[(worker + n) % 4]
            results[worker, n] = shared.step(ids, positions(2, 0, 6), np.array([3, 0]), None)[0]

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (shared.calls - before[0], shared.tokens_seen - before[1]) == (40, 40 * 12)
    for (worker, n), logits in results.items():
        np.testing.assert_array_equal(logits, expected[(worker + n) % 4])


def test_module_names_the_step_check() -> None:
    assert callable(onnx_backend.check_step_inputs)


class _Loaded(Exception):
    pass


def test_lm_eval_device_reaches_the_session(exported_dir: Path, fake_cuda, monkeypatch) -> None:
    pytest.importorskip("lm_eval")
    from evaluation import lm_eval_plugin

    monkeypatch.setattr(fake_cuda, "reported", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(fake_cuda, "options", {"CUDAExecutionProvider": {"device_id": "1"}})
    loaded = []
    real = lm_eval_plugin.load_backend

    def opened(*args, **kwargs):
        loaded.append(real(*args, **kwargs))
        raise _Loaded  # the tiny export has no tokenizer; the device is all this test is about

    monkeypatch.setattr(lm_eval_plugin, "load_backend", opened)
    with pytest.raises(_Loaded):
        lm_eval_plugin.GLMOnnxLM(pretrained=str(exported_dir), device="cuda:1")
    assert fake_cuda.requested[0] == ("CUDAExecutionProvider", {"device_id": "1"})
    assert (loaded[0].device_type, loaded[0].device_id) == ("cuda", 1)


def test_onnx_gpu_extra_replaces_onnxruntime() -> None:
    import tomllib

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    names = [req.split(">")[0].split("=")[0].strip() for req in extras["onnx-gpu"]]
    assert "onnxruntime-gpu" in names and "onnxruntime" not in names
