"""A Hugging Face hub cache fabricated on disk, laid out as ``huggingface_hub`` writes it (no network involved).

<HF_HOME>/hub/models--<owner>--<name>/
    blobs/<sha256 of the file>        the bytes, once per distinct file
    refs/main                         the commit the ``main`` branch points at
    snapshots/<commit>/<file>         relative symlinks into ../../blobs
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

COMMIT = "4f61ed7c0ffee0ddba11deadbeef0123456789ab"


def fabricate_snapshot(hf_home: Path, repo_id: str, source_dir: Path, commit: str = COMMIT) -> Path:
    """Put every file of ``source_dir`` into the cache as ``repo_id`` at ``commit`` (``refs/main``); its snapshot."""
    owner, name = repo_id.split("/")
    repo = hf_home / "hub" / f"models--{owner}--{name}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in sorted(source_dir.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / path.relative_to(source_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    return snapshot
