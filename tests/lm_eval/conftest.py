"""Fixtures for the lm-eval integration tests: glm-tiny exported to ONNX, and child interpreters with the plugin hook.

Models: ``glm-tiny`` (shipped under ``glm_core/assets/glm-tiny``) for ``glm-torch``, and its ONNX export, made once
per session in-process with ``export.onnx.main`` (needs torch). In the torch-free tox env ``onnx`` there is no torch
to export with: that env exports first (tox env ``onnx-export``) and passes the directory in ``GLM_TEST_ONNX_DIR``.

Child interpreters (``python_with_plugin``): lm-eval finds ``glm-torch`` / ``glm-onnx`` through the one-line
``glm_harness_lmeval.pth`` that an installed glm-harness puts in site-packages (``pip install .[dev]``, editable
installs too). Where the package is installed the hook is already active when the child starts; in a plain checkout
the child first processes the repository's ``.pth`` with ``site.addsitedir`` (the very function ``site`` uses for
the installed file) and then runs lm-eval's console entry point ``lm_eval.__main__.cli_evaluate``, so both cases
exercise the same bootstrap on a fresh interpreter. ``PYTHONPATH`` puts the working tree first, so the code under
test is always the checkout's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PTH_FILE = REPO / "evaluation" / "glm_harness_lmeval.pth"
CHILD_TIMEOUT_S = 900

# Runs first in every child: activate the hook the way site-packages would, unless an installed .pth already did.
_PRELUDE = """\
import site, sys
if "lm_eval.api.registry" not in sys.modules and not any(
    getattr(f, "_glm_harness_lmeval_hook", False) for f in sys.meta_path
):
    site.addsitedir({site_dir!r})
"""


def offline_env() -> dict[str, str]:
    """The child's environment: no network for datasets / the hub, the working tree first on the path."""
    env = dict(os.environ)
    env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUTF8="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


@pytest.fixture(scope="session")
def pth_site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a copy of the repository's ``glm_harness_lmeval.pth`` (a stand-in site-packages)."""
    directory = tmp_path_factory.mktemp("site")
    shutil.copy(PTH_FILE, directory / PTH_FILE.name)
    return directory


@pytest.fixture(scope="session")
def python_with_plugin(pth_site_dir: Path):
    """``run(code, cwd) -> CompletedProcess``: run ``code`` in a fresh interpreter with the plugin hook active."""

    def run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        script = _PRELUDE.format(site_dir=str(pth_site_dir)) + code
        return subprocess.run(
            [sys.executable, "-c", script],
            cwd=cwd,
            env=offline_env(),
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )

    return run


@pytest.fixture(scope="session")
def lm_eval_cli(python_with_plugin):
    """``run(argv, cwd) -> CompletedProcess``: ``lm_eval <argv>`` in a fresh interpreter, as the console script runs it."""

    def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
        code = (
            "from lm_eval.__main__ import cli_evaluate\n"
            f"sys.argv = ['lm_eval', *{json.dumps(argv)}]\n"
            "sys.exit(cli_evaluate())\n"
        )
        return python_with_plugin(code, cwd)

    return run


@pytest.fixture(scope="session")
def tiny_onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """glm-tiny exported by ``python -m export.onnx`` (fp32; the export's own validation is left to tests/export)."""
    given = os.environ.get("GLM_TEST_ONNX_DIR")
    if given:
        path = Path(given)
        assert (path / "glm_config.json").is_file(), f"GLM_TEST_ONNX_DIR={given} is not an exported model directory"
        return path
    pytest.importorskip("torch", reason="exporting glm-tiny needs torch (or set GLM_TEST_ONNX_DIR)")
    from export.onnx import main

    out = tmp_path_factory.mktemp("onnx") / "glm-tiny-onnx"
    assert main(["--ckpt", "glm-tiny", "--out", str(out), "--no-validate"]) == 0
    return out
