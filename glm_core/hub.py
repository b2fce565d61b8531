"""Model names of the Hugging Face hub (``owner/name[@revision]``) resolved to a local snapshot directory (torch-free).

Everywhere a model is named (``load_model``, ``python -m export.onnx --ckpt``, ``python -m evaluation --model``,
lm-eval's ``pretrained=``, ``glm-train --model``) the name is one of, in this order of precedence:

1. an **existing local path** (a directory or file): used as is, even when it also looks like a hub id
   (``out/glm-tiny-onnx`` written by the export is a path, not a repository);
2. a **preset** (``glm-tiny``, ``glm-large``, ...): presets have no ``/``, so they never look like a hub id;
3. a **hub id** ``owner/name`` or ``owner/name@revision`` (a branch, tag or commit): resolved with
   :func:`huggingface_hub.snapshot_download`, which reads the local cache (``HF_HOME`` / ``HF_HUB_CACHE``) and
   downloads only what is missing, unless ``HF_HUB_OFFLINE=1`` or ``local_files_only=True``. Only the files a loader
   reads are fetched (:data:`MODEL_FILE_PATTERNS`: configs, weights, tokenizer, an ONNX export), never the rest of
   the repository.

``huggingface_hub`` is imported only when a hub id is resolved, so local paths and presets need no hub client.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from glm_core.errors import CheckpointError, ConfigError

# What the loaders read (glm_core.checkpoint, glm_core.tokenizer, evaluation.backends.onnx): nothing else is fetched.
MODEL_FILE_PATTERNS = (
    # configs
    "config.json",
    "glm_config.json",
    # weights: hub layout (single or sharded) and the original THUDM layout
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
    "latest_checkpointed_iteration.txt",
    "latest",
    "*/mp_rank_*_model_states.pt",
    # tokenizer
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",
    "tokenizer_config.json",
    "added_tokens.json",
    "special_tokens_map.json",
    "glm_tokenizer.json",
    # an exported ONNX model directory
    "*.onnx",
    "*.onnx.data",
)

# owner/name: the hub's own rules (letters, digits, '-', '_', '.'; no leading/trailing '-' or '.', no '--' / '..');
# revision: a branch, tag or commit (a branch may hold '/').
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
HUB_ID_RE = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[A-Za-z0-9_.][A-Za-z0-9_./-]*))?$")


def parse_hub_id(name: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision or None)`` when ``name`` has the shape of a hub id, else ``None``."""
    match = HUB_ID_RE.match(name)
    if match is None or "--" in match["repo"] or ".." in match["repo"]:
        return None
    return match["repo"], match["revision"]


def is_hub_id(name: str | os.PathLike[str]) -> bool:
    """True for ``owner/name[@revision]`` that is *not* an existing local path (a local path always wins)."""
    text = os.fspath(name)
    return not os.path.exists(text) and parse_hub_id(text) is not None


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (read at call time, so a changed environment is honoured)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def cache_dir() -> str | None:
    """The hub cache the environment names now (``HF_HUB_CACHE``, else ``HF_HOME/hub``); ``None`` = the default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def resolve_model_path(name: str | os.PathLike[str], *, local_files_only: bool | None = None) -> str:
    """The local path for ``name``: unchanged for an existing path or anything that is not a hub id (presets, typos:
    the caller reports those), the snapshot directory for a hub id.

    ``local_files_only``: ``None`` follows ``HF_HUB_OFFLINE``; ``True`` never touches the network. A hub id that
    cannot be resolved raises :class:`CheckpointError` with one line naming the id and how to get it.
    """
    text = os.fspath(name)
    if os.path.exists(text):
        return text
    parsed = parse_hub_id(text)
    if parsed is None:
        return text
    return str(snapshot_path(*parsed, local_files_only=local_files_only))


def snapshot_path(repo_id: str, revision: str | None = None, *, local_files_only: bool | None = None) -> Path:
    """``snapshot_download(repo_id, revision)`` limited to :data:`MODEL_FILE_PATTERNS`; one-line errors."""
    label = repo_id + (f"@{revision}" if revision else "")
    only_local = offline() if local_files_only is None else bool(local_files_only)
    fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise ConfigError(
            f"{label!r} is not a local path, and as a hub id it needs huggingface_hub: "
            "pip install 'glm-harness[torch]' (or huggingface_hub)"
        ) from None
    try:
        path = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir(),
            local_files_only=only_local,
            allow_patterns=list(MODEL_FILE_PATTERNS),
        )
    except LocalEntryNotFoundError:
        if only_local:
            where = "HF_HUB_OFFLINE=1" if local_files_only is None else "local_files_only=True"
        else:
            where = "the hub could not be reached"
        raise CheckpointError(
            f"{label}: no such local path, and the hub model is not in the Hugging Face cache "
            f"({cache_dir() or 'the default cache'}; {where}); fetch it once with `{fetch}` while online, "
            "or pass an existing model directory"
        ) from None
    except GatedRepoError:
        raise CheckpointError(f"{label}: gated hub repository; accept its terms and log in (`hf auth login`)") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{label}: revision {revision!r} not found on the hub") from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{label}: no such local path, and no such hub repository (or it is private: log in with `hf auth login`)"
        ) from None
    except (OSError, ValueError) as exc:  # network failures, HTTP errors, malformed ids
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{label}: cannot fetch from the hub ({first[:200]}); try again or `{fetch}`") from None
    return Path(path)


__all__ = ["MODEL_FILE_PATTERNS", "is_hub_id", "parse_hub_id", "resolve_model_path", "snapshot_path"]
