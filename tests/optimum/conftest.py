"""Fixtures for the optimum tests: the shipped glm-tiny exported twice (weights inline, and in ``model.onnx.data``).

The exports run in-process (``export.onnx.main``) once per session. The tests need the ``[optimum]`` extra
(``tox -e optimum``); without it the modules that use it are skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def _export(out: Path, *flags: str) -> Path:
    from export.onnx import main

    assert main(["--ckpt", "glm-tiny", "--out", str(out), "--no-validate", *flags]) == 0
    return out


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # "glm" in the path on purpose: transformers guesses GLM-4 from such a name when it has no config to read
    return _export(tmp_path_factory.mktemp("onnx") / "glm-tiny-onnx")


@pytest.fixture(scope="session")
def external_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("onnx") / "glm-tiny-onnx-ext", "--external-data", "always")


@pytest.fixture(scope="session")
def model(export_dir: Path):
    from glm_optimum import GLMORTModel

    return GLMORTModel.from_pretrained(export_dir)


@pytest.fixture(scope="session")
def fp16_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("onnx") / "glm-tiny-onnx-fp16", "--dtype", "fp16")
