"""lm-eval across processes: two CPU processes under torchrun (gloo) give the per-sample results of one process,
and every request is scored by exactly one process (lm_eval_distributed; lm-eval's evaluator.py:530-700)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
from tests.lm_eval.conftest import REPO, offline_env  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "dp_run.py"
LIMIT = 3  # odd: the second rank gets fewer documents and lm-eval pads it with a repeat of its last request


def run(out: Path, processes: int) -> dict:
    out.mkdir()
    env = offline_env()
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env["OMP_NUM_THREADS"] = "1"
    launcher = [sys.executable]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    proc = subprocess.run(
        [*launcher, str(SCRIPT), str(out), str(LIMIT)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]
    return {"ranks": ranks, "out": str(out), **json.loads((out / "results.json").read_text())}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    base = tmp_path_factory.mktemp("dp")
    return run(base / "one", 1), run(base / "two", 2)


def test_two_processes_know_their_rank_and_world_size(runs) -> None:
    _, two = runs
    assert [(r["rank"], r["world_size"]) for r in two["ranks"]] == [(0, 2), (1, 2)]
    assert all(r["device"] == "cpu" for r in two["ranks"])  # CPU run; on CUDA each takes cuda:{LOCAL_RANK}


def test_per_sample_results_equal_the_one_process_run(runs) -> None:
    one, two = runs
    assert one["samples"].keys() == two["samples"].keys() == {"glm_demo", "glm_demo_ppl"}
    for task in one["samples"]:
        assert one["samples"][task].keys() == two["samples"][task].keys() and len(one["samples"][task]) == LIMIT
    # multiple choice: the same Part A and candidate batches in both runs, so the very same numbers
    assert one["samples"]["glm_demo"] == two["samples"]["glm_demo"]
    # a rolling total sums ~600 fp32 log-probs over several windows; the CPU GEMMs of another process (other buffer
    # addresses, other blocking) move it in its last digits (measured: 6.4e-6 on -464.87, 1.4e-8 relative), far
    # below the 1e-4 the backends are held to
    for doc, (total,) in one["samples"]["glm_demo_ppl"].items():
        assert two["samples"]["glm_demo_ppl"][doc][0] == pytest.approx(total, rel=1e-7, abs=0)
    assert one["results"]["glm_demo"] == two["results"]["glm_demo"]


def test_each_request_is_scored_by_one_process_once(runs) -> None:
    one, two = runs
    (single,) = one["ranks"]
    assert single["scored"] == {"loglikelihood": LIMIT * 4, "loglikelihood_rolling": LIMIT}  # 4 choices a question
    for kind, count in single["scored"].items():
        shares = [r["scored"].get(kind, 0) for r in two["ranks"]]
        assert sum(shares) == count and all(shares), (kind, shares)  # split, none twice, the pad not rescored


def test_each_process_leaves_its_process_group_at_exit(runs) -> None:
    """A gloo group left to the interpreter's teardown can abort a rank after its results are written."""
    _, two = runs
    out = Path(two["out"])
    for rank in range(2):
        assert json.loads((out / f"rank{rank}.exit.json").read_text()) == {"group_initialized": False}


def test_each_process_takes_the_gpu_of_its_local_rank(monkeypatch) -> None:
    import types

    from evaluation import backends
    from evaluation.lm_eval_distributed import ProcessGroup

    group = ProcessGroup(rank=3, world_size=4, local_rank=1)
    assert group.device("cuda:0") == group.device("cuda") == "cuda:1"  # lm-eval passes cuda:0 to every process
    assert group.device("cpu") == "cpu" and ProcessGroup().device("cuda:0") == "cuda:0"

    seen = {}

    class FakeOnnxBackend:  # the ONNX backend's signature: the device is named by its providers ("cuda:N")
        def __init__(self, model_dir, providers=None, *, dtype=None, tokenizer=None):
            seen.update(providers=providers)

    module = types.ModuleType("fake_onnx_backend")
    module.FakeOnnxBackend = FakeOnnxBackend
    monkeypatch.setitem(sys.modules, "fake_onnx_backend", module)
    monkeypatch.setitem(backends.BACKENDS, "fake", ("fake_onnx_backend", "FakeOnnxBackend"))
    backends.load_backend("fake", str(REPO), device=group.device("cuda:0"))
    assert seen == {"providers": "cuda:1"}  # the CUDA execution provider's device_id 1 (onnx_device.parse_providers)


def test_without_a_launcher_there_is_one_process(monkeypatch) -> None:
    from evaluation.lm_eval_distributed import ProcessGroup
    from glm_core.errors import ConfigError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert ProcessGroup.from_environment(on_cuda=False) == ProcessGroup(0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two'"):
        ProcessGroup.from_environment(on_cuda=False)
