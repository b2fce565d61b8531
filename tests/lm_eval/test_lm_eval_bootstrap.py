"""The ``glm_harness_lmeval.pth`` bootstrap: lazy, registers after lm-eval's built-ins, idempotent, never raises.

One fresh interpreter (with the hook activated as in conftest.py) checks what only a clean start-up can show and
reports JSON; ``--model dummy`` resolution goes through ``simple_evaluate(model="dummy")``, the same registry lookup
the CLI does (spec lm_eval_integration §1.1).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import evaluation._lmeval_bootstrap as bootstrap
from evaluation.lm_eval_tasks import task_dir

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import json
def hooks():
    return sum(1 for f in sys.meta_path if getattr(f, "_glm_harness_lmeval_hook", False))
report = {{"hooks_at_start": hooks(), "lm_eval_at_start": "lm_eval" in sys.modules,
           "plugin_at_start": "evaluation.lm_eval_plugin" in sys.modules,
           "heavy_at_start": [m for m in ("numpy", "tokenizers", "evaluation.backends") if m in sys.modules]}}
import evaluation._lmeval_bootstrap as bootstrap
bootstrap.install(); bootstrap.install()  # idempotent (the .pth and a PEP 829 .start may both call it)
report["hooks_after_reinstall"] = hooks()

from lm_eval.api.registry import get_model, model_registry
report["hooks_after_registry_import"] = hooks()
onnx_cls = get_model("glm-onnx")
report["glm_onnx"] = f"{{onnx_cls.__module__}}:{{onnx_cls.__name__}}"
report["torch_after_glm_onnx"] = "torch" in sys.modules
torch_cls = get_model("glm-torch")
report["glm_torch"] = f"{{torch_cls.__module__}}:{{torch_cls.__name__}}"
dummy = get_model("dummy")
report["dummy"] = f"{{dummy.__module__}}:{{dummy.__name__}}"
report["builtin_count"] = len(model_registry)

import lm_eval
from lm_eval.tasks import TaskManager
results = lm_eval.simple_evaluate(model="dummy", tasks=["glm_demo"], limit=2,
    task_manager=TaskManager(include_path={tasks!r}, include_defaults=False))
report["dummy_acc"] = results["results"]["glm_demo"]["acc,none"]
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def child_report(python_with_plugin, tmp_path_factory: pytest.TempPathFactory) -> dict:
    proc = python_with_plugin(CHILD.format(tasks=task_dir()), tmp_path_factory.mktemp("child"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    return json.loads(line[len("REPORT ") :])


def test_pth_file_is_one_import_line_and_start_file_names_install() -> None:
    assert (REPO / "evaluation/glm_harness_lmeval.pth").read_text() == "import evaluation._lmeval_bootstrap\n"
    assert (REPO / "evaluation/glm_harness_lmeval.start").read_text() == "evaluation._lmeval_bootstrap:install\n"


def test_start_up_only_installs_one_hook_and_imports_nothing_else(child_report: dict) -> None:
    assert child_report["hooks_at_start"] == 1
    assert child_report["hooks_after_reinstall"] == 1
    assert not child_report["lm_eval_at_start"]
    assert not child_report["plugin_at_start"]


def test_start_up_imports_no_heavy_module(child_report: dict) -> None:
    assert child_report["heavy_at_start"] == []


def test_importing_lm_eval_registry_registers_both_models_and_removes_the_hook(child_report: dict) -> None:
    assert child_report["hooks_after_registry_import"] == 0
    assert child_report["glm_onnx"] == "evaluation.lm_eval_plugin:GLMOnnxLM"
    assert child_report["glm_torch"] == "evaluation.lm_eval_plugin:GLMTorchLM"
    assert not child_report["torch_after_glm_onnx"]  # resolving glm-onnx needs no torch


def test_builtin_dummy_model_still_resolves_and_runs(child_report: dict) -> None:
    assert child_report["dummy"] == "lm_eval.models.dummy:DummyLM"
    assert child_report["builtin_count"] > 10  # built-ins were registered first (spec §1.3 E1)
    assert 0.0 <= child_report["dummy_acc"] <= 1.0


def test_a_registration_error_is_reported_not_raised(monkeypatch, capsys) -> None:
    def broken() -> None:
        raise RuntimeError("registry exploded")

    monkeypatch.setattr(bootstrap, "register", broken)
    bootstrap._register_quietly()
    assert "registry exploded" in capsys.readouterr().err


def test_an_existing_name_is_never_overwritten(monkeypatch) -> None:
    from lm_eval.api.registry import get_model

    bootstrap.register()
    monkeypatch.setattr(bootstrap, "MODELS", {"dummy": "evaluation.lm_eval_plugin:GLMOnnxLM"})
    bootstrap.register()  # built-ins (and entry-point plugins, once lm-eval reads them) win
    assert get_model("dummy").__name__ == "DummyLM"
    assert get_model("glm-onnx").__name__ == "GLMOnnxLM"


def test_install_registers_at_once_when_lm_eval_is_already_imported(monkeypatch) -> None:
    import lm_eval.api.registry  # noqa: F401

    calls: list[str] = []
    monkeypatch.setattr(bootstrap, "register", lambda: calls.append("register"))
    before = list(sys.meta_path)
    bootstrap.install()
    assert calls == ["register"]
    assert sys.meta_path == before  # no hook left behind


def test_wrapper_entry_point_registers_before_running_the_lm_eval_cli(monkeypatch) -> None:
    import lm_eval.__main__
    from lm_eval.api.registry import model_registry

    seen: list[bool] = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: seen.append("glm-onnx" in model_registry))
    bootstrap.lm_eval_main()
    assert seen == [True]
