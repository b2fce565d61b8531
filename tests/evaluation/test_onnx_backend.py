"""``load_backend("onnx", ...)`` on an export of the tiny test model: the same engine, the same scores as torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
export_onnx = pytest.importorskip("export.onnx")

from evaluation.backends import load_backend  # noqa: E402
from evaluation.cli import main  # noqa: E402
from evaluation.scoring import Scorer  # noqa: E402
from evaluation.tasks import get_task  # noqa: E402
from evaluation.tasks.base import EvalContext  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "evaluation" / "data" / "fixtures"


@pytest.fixture(scope="module")
def onnx_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "export"
    # validation against torch is the export tests' job; here the scores below compare the two backends
    assert export_onnx.main(["--ckpt", str(model_dir), "--out", str(out), "--no-validate"]) == 0
    return out


@pytest.fixture(scope="module")
def onnx_backend(onnx_dir: Path):
    return load_backend("onnx", onnx_dir)


def test_onnx_backend_describes_itself(onnx_backend, torch_backend) -> None:
    assert onnx_backend.name == "onnx"
    assert onnx_backend.special == torch_backend.special
    assert onnx_backend.max_length == torch_backend.max_length
    info = onnx_backend.info()
    assert info["backend"] == "onnx" and info["provider"] == "CPUExecutionProvider" and info["dtype"] == "fp32"
    assert info["model_hash"].startswith("sha256:") and "onnxruntime" in info["versions"]


@pytest.mark.parametrize("name", ["demo", "copa", "boolq", "record", "lambada"])
def test_task_scores_agree_with_torch(name: str, onnx_backend, torch_backend) -> None:
    task = get_task(name)
    examples = task.read(FIXTURES, task.default_split, None)
    records = {}
    for label, backend in (("onnx", onnx_backend), ("torch", torch_backend)):
        ctx = EvalContext(backend=backend, scorer=Scorer(backend, batch_size=4, share_part_a=True))
        records[label] = task.predict(examples, ctx)
    for a, b in zip(records["onnx"], records["torch"], strict=True):
        sa = np.asarray(a.get("scores", a.get("logprob")), dtype=np.float64)
        sb = np.asarray(b.get("scores", b.get("logprob")), dtype=np.float64)
        # fp32 graph vs fp32 eager: reduction order differs, 1e-4 on summed log-probs (spec onnx_export §6 fp32 atol)
        np.testing.assert_allclose(sa, sb, rtol=0, atol=1e-4, err_msg=name)


def test_cli_runs_the_onnx_backend(onnx_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "onnx.json"
    args = ["--backend", "onnx", "--model", str(onnx_dir), "--tasks", "demo", "--data-dir", str(FIXTURES)]
    assert main([*args, "--output", str(out), "--no-progress"]) == 0
    results = json.loads(out.read_text())
    assert results["backend"] == "onnx" and results["tasks"]["demo"]["num_examples"] == 3
    capsys.readouterr()
