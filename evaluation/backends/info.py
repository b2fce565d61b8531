"""What a backend reports about itself: model hash, package versions, device / provider, dtype (torch-free).

Both backends put the same keys in ``info()`` so that a results file says exactly which weights, runtime and
precision produced its numbers, and ``evaluation.compare`` can refuse to compare runs of different models.
"""

from __future__ import annotations

import hashlib
import os
import platform
from importlib import metadata
from pathlib import Path

from glm_core.errors import CheckpointError
from glm_core.outputs import is_model_file

HASH_CHUNK_BYTES = 1 << 20
_IGNORED_DIRS = ("__pycache__", ".glm-eval-cache", ".git")


def model_files(path: str | os.PathLike[str]) -> list[Path]:
    """Files that define a model directory (weights, graph, configs, tokenizer), sorted by relative path."""
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise CheckpointError(f"{root}: model path does not exist")
    files = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        hidden = any(part in _IGNORED_DIRS or part.startswith(".") for part in rel.parts)
        if hidden or not p.is_file() or not is_model_file(p.name):
            continue
        files.append(p)
    return files


def model_hash(path: str | os.PathLike[str]) -> str:
    """``sha256:<hex>`` over every model file's relative name and bytes (streamed, so 20 GB checkpoints are fine).

    The same directory always gives the same hash wherever it is copied; changing a weight, the graph, the config or
    a tokenizer file changes it; reports, results and model cards do not (:func:`model_files`).
    """
    root = Path(path)
    digest = hashlib.sha256()
    for f in model_files(root):
        rel = f.name if root.is_file() else f.relative_to(root).as_posix()
        digest.update(rel.encode("utf-8") + b"\0")
        digest.update(str(f.stat().st_size).encode("ascii") + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of ``names`` (read from package metadata, nothing is imported) plus Python's."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def backend_info(
    *,
    backend: str,
    path: str | os.PathLike[str] | None,
    device: str,
    provider: str,
    dtype: str,
    packages: tuple[str, ...],
    hash_value: str | None = None,
    extra: dict[str, object] | None = None,
) -> dict[str, object]:
    """The common ``info()`` dict: ``backend, model_path, model_hash, device, provider, dtype, versions`` (+ extra)."""
    info: dict[str, object] = {
        "backend": backend,
        "model_path": None if path is None else os.fspath(path),
        "model_hash": hash_value if hash_value is not None else (model_hash(path) if path is not None else None),
        "device": device,
        "provider": provider,
        "dtype": dtype,
        "versions": package_versions("glm-harness", "numpy", *packages),
    }
    info.update(extra or {})
    return info
