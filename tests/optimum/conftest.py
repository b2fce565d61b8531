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
    # the concat cache layout: the one IO binding (and CUDA) runs; the default buffer layout is in LAYOUTS
    return _export(tmp_path_factory.mktemp("onnx") / "glm-tiny-onnx", "--kv-cache", "concat")


@pytest.fixture(scope="session")
def external_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(
        tmp_path_factory.mktemp("onnx") / "glm-tiny-onnx-ext", "--external-data", "always", "--kv-cache", "concat"
    )


@pytest.fixture(scope="session")
def model(export_dir: Path):
    from glm_optimum import GLMORTModel

    return GLMORTModel.from_pretrained(export_dir)


LAYOUTS = {
    "buffer": ("--kv-cache", "buffer"),  # the CPU default: the plain path only (IO binding feeds the concat graph)
    "fp16": ("--dtype", "fp16", "--kv-cache", "concat"),  # concat: these are also run with IO binding
    "int8": ("--quantize", "int8", "--kv-cache", "concat"),
    "int4": ("--quantize", "int4", "--kv-cache", "concat"),
    "optimize-ort": ("--optimize", "ort"),
}


@pytest.fixture(scope="session")
def layout_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Exports in the other layouts, made on first use (one per layout)."""

    class _Exports(dict):
        def __missing__(self, name: str) -> Path:
            self[name] = _export(tmp_path_factory.mktemp("onnx") / f"glm-tiny-onnx-{name}", *LAYOUTS[name])
            return self[name]

    return _Exports()
