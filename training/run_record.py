"""The record a run leaves so that it can be reproduced from its outputs alone.

The first line of ``OUT/log.jsonl`` (``{"step": 0, "run": {...}}``; a resumed run appends ``{"step": k, "resume":
{...}}``) holds the resolved settings (architecture, task, optimisation), the command line, the seed, the versions
of Python and the packages, the source commit when the code runs from a git checkout (with ``dirty`` when it has
uncommitted changes), the number of processes and a fingerprint of the training data (SHA-256 of the token stream
for pretraining, of the laid-out examples for fine-tuning).
"""

from __future__ import annotations

import hashlib
import pickle
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

PACKAGES = ("glm-harness", "torch", "numpy", "safetensors", "sentencepiece", "tokenizers")
SOURCE_ROOT = Path(__file__).resolve().parents[1]
HASH_CHUNK = 1 << 24  # tokens hashed per update

__all__ = ["data_fingerprint", "package_versions", "run_record", "source_commit"]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def source_commit(root: Path = SOURCE_ROOT) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the checkout the code runs from, or ``None`` outside a git checkout."""
    if not (root / ".git").exists():
        return None
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha, "dirty": bool(status.strip())}


def data_fingerprint(task: Any) -> str | None:
    """SHA-256 of what ``task`` trains on: the pretraining token stream, or the fine-tuning examples as laid out."""
    digest = hashlib.sha256()
    sampler = getattr(task, "sampler", None)
    if sampler is not None:
        stream = sampler.stream
        for start in range(0, len(stream), HASH_CHUNK):
            digest.update(np.ascontiguousarray(stream[start : start + HASH_CHUNK], dtype=np.int64).tobytes())
        return "sha256:" + digest.hexdigest()
    items = getattr(task, "encoded", None)
    if items is None:
        return None
    for item in items:
        for sample in item.samples:
            digest.update(np.ascontiguousarray(sample.input_ids, dtype=np.int64).tobytes())
        digest.update(pickle.dumps((item.choice_ids, item.label), protocol=4))
    return "sha256:" + digest.hexdigest()


def run_record(meta: dict[str, Any], task: Any, world_size: int, argv: list[str] | None = None) -> dict[str, Any]:
    """The reproducibility record of a run (see the module docstring)."""
    train = meta.get("train") or {}
    return {
        "argv": list(sys.argv if argv is None else argv),
        "seed": train.get("seed"),
        "config": meta,
        "versions": package_versions(),
        "source": source_commit(),
        "world_size": world_size,
        "data_fingerprint": data_fingerprint(task),
    }
