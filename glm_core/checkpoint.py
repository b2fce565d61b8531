"""Load and save GLM checkpoints in every released layout (spec glm_reference §4).

Layouts read by :func:`load_model`:

* **hub** directories: ``config.json`` plus ``model.safetensors`` / ``pytorch_model.bin``, single or sharded through
  ``*.index.json``; keys with or without the ``glm.`` prefix; fp16 weights; stray classifier heads ignored with a
  warning (spec §4.3);
* the **original** THUDM layout: ``latest_checkpointed_iteration.txt`` (or DeepSpeed ``latest``) naming a tag,
  ``<tag>/mp_rank_XX_model_states.pt`` with the weights under ``module``, model-parallel shards merged with the
  stride-3 QKV regroup (spec §4.1, §4.4);
* **hub ids** ``owner/name[@revision]``: the snapshot in the Hugging Face cache (:mod:`glm_core.hub`);
* **presets**: ``glm-tiny`` ships with the package; the other presets have no public weights here and are built
  with seeded random weights (useful for export and benchmarks), with a warning.

Every ``torch.load`` uses ``weights_only=True``: a pickle that would run code is refused, never executed.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from glm_core.atomic import chmod_default
from glm_core.config import CHATGLM_FULL_PRECISION_REPO, PRESETS, GLMConfig
from glm_core.errors import CheckpointError, ConfigError, GLMWarning, UnknownPresetError, UnsafeCheckpointError
from glm_core.hub import resolve_model_path
from glm_core.model import GLMModel, model_class

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
SHIPPED_PRESETS = {"glm-tiny": ASSETS_DIR / "glm-tiny"}

HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HUB_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TRACKER_FILES = ("latest_checkpointed_iteration.txt", "latest")
MP_SHARD_RE = re.compile(r"^mp_rank_(\d{2})_model_states\.pt$")

# Heads that fine-tuned or HF-wrapped checkpoints carry beside the language model (spec §4.2, §4.3): ignored.
STRAY_PREFIXES = ("dense.", "out_proj.", "pool_layer.", "multichoice_head.", "prompt_spell.", "classifier.", "score.")
IGNORED_KEYS = ("position_ids", "lm_head.weight")  # HF buffers; the LM head is tied (spec §4.3)
# ChatGLM: the head is untied (kept); the rotary frequencies are recomputed by the model (glm_core.chatglm), so the
# checkpoint's copies are accepted and dropped. Quantized repos store int weights beside these scales.
CHATGLM_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
CHATGLM_QUANTIZED_SUFFIXES = (".weight_scale",)

StateDict = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------- reading files
def _numpy_data_globals() -> list[object]:
    """numpy's array/dtype reconstructors: data only, no code. The original code saves ``np.random.get_state()``
    beside ``module`` (spec §4.1), which ``weights_only=True`` refuses unless these are allowed."""
    import numpy as np

    allowed: list[object] = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    allowed.append(_reconstruct)
    # files written under numpy 1.x name the old module path
    allowed.append((_reconstruct, "numpy.core.multiarray._reconstruct"))
    return allowed


def _torch_load(path: Path) -> object:
    """``torch.load`` with ``weights_only=True``; map every failure to one clear error."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as exc:
        text = str(exc)
        named = re.search(r"GLOBAL ([\w.]+)", text)
        if named or "weights_only" in text or "Unsupported global" in text:
            what = f"names {named.group(1)}, which is" if named else "references"
            raise UnsafeCheckpointError(
                f"{path}: refused to load: the pickle {what} code outside the tensor allow-list of "
                "torch.load(weights_only=True); only tensors and plain data are loaded (prefer safetensors)"
            ) from None
        first = text.splitlines()[0] if text else "unsupported pickle content"
        raise CheckpointError(f"{path}: corrupt checkpoint ({_clip(first)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({_clip(first)})") from None


def _clip(text: str, limit: int = 200) -> str:
    """A library's message shortened at a word boundary, marked as shortened."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _safetensors_load(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({str(exc)[:200]})") from None


def _load_weight_file(path: Path) -> StateDict:
    if path.suffix == ".safetensors":
        return _safetensors_load(path)
    obj = _torch_load(path)
    return _as_state_dict(obj, path)


def _as_state_dict(obj: object, path: Path) -> StateDict:
    if isinstance(obj, Mapping) and "module" in obj and isinstance(obj["module"], Mapping):
        obj = obj["module"]  # original layout nests the model under 'module' (spec §4.1)
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping) and not _has_tensors(obj):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not _has_tensors(obj):
        raise CheckpointError(f"{path}: no tensors found; expected a state dict (or one under 'module')")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _has_tensors(obj: Mapping[object, object]) -> bool:
    return any(isinstance(v, torch.Tensor) for v in obj.values())


def _read_index(path: Path) -> list[Path]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        weight_map = data["weight_map"]
        if not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("every weight_map value must be a file name")
        files = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{path}: malformed index file; expected JSON with a 'weight_map' object ({exc})"
        ) from None
    root = path.parent
    shards = []
    for name in files:
        # Names are checked, not resolved: a hub cache snapshot's shards are symlinks into ../../blobs.
        if os.path.isabs(name) or ".." in Path(name).parts:
            raise CheckpointError(f"{path}: shard {name!r} points outside the checkpoint directory")
        shards.append(root / name)
    return shards


# ---------------------------------------------------------------------------------------- layout detection
def detect_layout(path: Path) -> str:
    """``"hub"`` or ``"original"`` for a checkpoint directory (or a single weight file)."""
    if path.is_file():
        return "original" if MP_SHARD_RE.match(path.name) else "hub"
    if any((path / f).exists() for f in HUB_WEIGHT_FILES + HUB_INDEX_FILES):
        return "hub"
    if any((path / f).is_file() for f in TRACKER_FILES) or any(MP_SHARD_RE.match(p.name) for p in path.iterdir()):
        return "original"
    raise CheckpointError(
        f"{path}: no checkpoint found; expected {', '.join(HUB_WEIGHT_FILES)} (hub layout) or "
        f"latest_checkpointed_iteration.txt with <tag>/mp_rank_XX_model_states.pt (original layout)"
    )


def read_hub_state_dict(path: Path) -> StateDict:
    for index_name in HUB_INDEX_FILES:
        index = path / index_name
        if index.is_file():
            state: StateDict = {}
            for shard in _read_index(index):
                state.update(_load_weight_file(shard))
            return state
    for name in HUB_WEIGHT_FILES:
        if (path / name).exists():
            return _load_weight_file(path / name)
    raise CheckpointError(f"{path}: no weight file; expected one of {', '.join(HUB_WEIGHT_FILES + HUB_INDEX_FILES)}")


def original_shard_paths(path: Path) -> list[Path]:
    """The ``mp_rank_XX`` files of an original-layout checkpoint, in rank order (spec §4.1)."""
    tag_dir = path
    for tracker in TRACKER_FILES:
        if (path / tracker).is_file():
            tag = (path / tracker).read_text(encoding="utf-8", errors="replace").strip()
            if not tag or "/" in tag or "\\" in tag or tag in (".", ".."):
                raise CheckpointError(f"{path / tracker}: invalid tag {tag!r}; expected an iteration or 'release'")
            tag_dir = path / tag
            if not tag_dir.is_dir():
                raise CheckpointError(f"{path / tracker}: names tag {tag!r} but {tag_dir} does not exist")
            break
    shards = sorted((p for p in tag_dir.iterdir() if MP_SHARD_RE.match(p.name)), key=lambda p: p.name)
    if not shards:
        raise CheckpointError(f"{tag_dir}: no mp_rank_XX_model_states.pt files")
    ranks = [int(MP_SHARD_RE.match(p.name).group(1)) for p in shards]  # type: ignore[union-attr]
    if ranks != list(range(len(ranks))):
        raise CheckpointError(f"{tag_dir}: model-parallel ranks {ranks} are not 0..{len(ranks) - 1}")
    return shards


# ----------------------------------------------------------------------------------- model-parallel merge
def merge_model_parallel(shards: list[StateDict]) -> StateDict:
    """Merge ``R`` model-parallel state dicts into one (spec §4.4, ``change_mp.py`` semantics)."""
    if len(shards) == 1:
        return dict(shards[0])
    for rank, shard in enumerate(shards[1:], start=1):
        if set(shard) != set(shards[0]):
            diff = sorted(set(shards[0]) ^ set(shard))
            raise CheckpointError(f"model-parallel rank {rank} has different keys than rank 0: {_short(diff)}")
    merged: StateDict = {}
    for key, first in shards[0].items():
        parts = [s[key] for s in shards]
        try:
            merged[key] = _merge_key(key, first, parts)
        except RuntimeError:
            shapes = ", ".join(f"rank {r}: {tuple(p.shape)}" for r, p in enumerate(parts))
            raise CheckpointError(f"model-parallel shards of {key!r} cannot be merged ({shapes})") from None
    return merged


def _merge_key(key: str, first: torch.Tensor, parts: list[torch.Tensor]) -> torch.Tensor:
    kind = _parallel_kind(key)
    if kind == "qkv":
        # column-parallel with stride 3: each shard is [Q_r; K_r; V_r] -> [cat Q_r; cat K_r; cat V_r]
        chunks = [p.chunk(3, dim=0) for p in parts]
        return torch.cat([torch.cat([c[i] for c in chunks], dim=0) for i in range(3)], dim=0)
    if kind == "rows":
        return torch.cat(parts, dim=0)  # vocab-parallel / column-parallel
    if kind == "cols":
        return torch.cat(parts, dim=1)  # row-parallel: split on input features
    return first  # LayerNorms, position tables, row-parallel biases: replicated


def _parallel_kind(key: str) -> str:
    """How a parameter is split across model-parallel ranks (spec §4.4)."""
    if key.endswith("query_key_value.weight") or key.endswith("query_key_value.bias"):
        return "qkv"
    if key.endswith("word_embeddings.weight") or "dense_h_to_4h" in key:
        return "rows"
    if key.endswith("attention.dense.weight") or key.endswith("dense_4h_to_h.weight"):
        return "cols"
    return "replicated"


def split_model_parallel(state: StateDict, ranks: int) -> list[StateDict]:
    """Inverse of :func:`merge_model_parallel` (what ``change_mp.py`` does to split a checkpoint)."""
    out: list[StateDict] = [{} for _ in range(ranks)]
    for key, t in state.items():
        kind = _parallel_kind(key)
        if kind == "qkv":
            q, k, v = (c.chunk(ranks, dim=0) for c in t.chunk(3, dim=0))
            for r in range(ranks):
                out[r][key] = torch.cat([q[r], k[r], v[r]], dim=0).clone()
        elif kind in ("rows", "cols"):
            for r, part in enumerate(t.chunk(ranks, dim=0 if kind == "rows" else 1)):
                out[r][key] = part.clone()
        else:
            for r in range(ranks):
                out[r][key] = t.clone()
    return out


# --------------------------------------------------------------------------------------- key handling
def normalise_keys(state: StateDict, source: str, architecture: str = "glm") -> StateDict:
    """Strip the ``glm.`` prefix of HF re-saves; drop stray heads with a warning (spec §4.3).

    ``architecture="chatglm"``: keep ``lm_head.weight`` (untied), drop ``rotary_emb.inv_freq`` buffers, refuse the
    quantized int4/int8 repos (their ``weight_scale`` tensors).
    """
    if architecture == "chatglm":
        quantized = [k for k in state if k.endswith(CHATGLM_QUANTIZED_SUFFIXES)]
        if quantized:
            raise CheckpointError(
                f"{source}: quantized ChatGLM weights ({quantized[0]}) need their own kernels and are not supported; "
                f"use the full-precision repo {CHATGLM_FULL_PRECISION_REPO}"
            )
        return {k: v for k, v in state.items() if not k.endswith(CHATGLM_IGNORED_SUFFIXES)}
    out: StateDict = {}
    stray: list[str] = []
    for key, value in state.items():
        name = key[4:] if key.startswith("glm.") else key
        if name in IGNORED_KEYS or name.endswith(".position_ids"):
            continue
        if name.startswith(STRAY_PREFIXES):
            stray.append(key)
            continue
        out[name] = value
    if stray:
        warnings.warn(
            f"{source}: ignoring {len(stray)} non-GLM key(s) (classifier heads): {', '.join(stray[:6])}", stacklevel=3
        )
    return out


def infer_config(state: StateDict, source: str, gelu: str, num_attention_heads: int | None = None) -> GLMConfig:
    """Read the architecture off the tensor shapes (original checkpoints carry no config.json).

    The head count is not in any shape: a preset whose shapes match gives it, else ``num_attention_heads`` must.
    """
    if "transformer.word_embeddings.weight" in state:
        return _infer_chatglm_config(state, source)
    try:
        V, h = state["word_embeddings.weight"].shape
        rows = state["transformer.position_embeddings.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"{source}: cannot infer the architecture: key {exc.args[0]!r} is missing") from None
    layer_ids = {int(m.group(1)) for k in state for m in [re.match(r"transformer\.layers\.(\d+)\.", k)] if m}
    if not layer_ids:
        raise CheckpointError(f"{source}: cannot infer the architecture: no transformer.layers.N keys")
    candidates = [
        n
        for n, p in PRESETS.items()
        if p["vocab_size"] == V
        and p["hidden_size"] == h
        and p["num_layers"] == len(layer_ids)
        and p["max_sequence_length"] == rows - 1
    ]
    # glm-large / glm-doc have identical shapes; prefer the released blank-infilling name
    name = candidates[0] if candidates else "custom"
    preset = PRESETS.get(name)
    # d = 64 for every released model (spec §1.6); a matched preset also settles the tokenizer family
    # (glm-roberta-large and glm-2b/10b share V = 50304).
    if num_attention_heads is not None:
        heads = num_attention_heads
    elif preset is not None:
        heads = preset["num_attention_heads"]
    else:
        raise CheckpointError(
            f"{source}: the weights (vocab {V}, hidden {h}, {len(layer_ids)} layers, {rows - 1} positions) match no "
            "known GLM and carry no config.json, so the number of attention heads is unknown; pass it "
            "(--num-attention-heads N, or num_attention_heads=/config= in Python) or add a config.json"
        )
    if h % heads:
        raise CheckpointError(f"{source}: hidden size {h} is not divisible by {heads} attention heads")
    family = (
        preset["tokenizer_family"] if preset else {30592: "bert", 50048: "sentencepiece", 50304: "gpt2"}.get(V, "bert")
    )
    return GLMConfig(
        vocab_size=V,
        hidden_size=h,
        num_layers=max(layer_ids) + 1,
        num_attention_heads=heads,
        max_sequence_length=rows - 1,
        gelu=gelu,
        tokenizer_family=family,
        name=name,
    )


def _infer_chatglm_config(state: StateDict, source: str) -> GLMConfig:
    """ChatGLM weights without config.json: only the chatglm-6b preset's shapes are recognised (heads, ids)."""
    V, h = state["transformer.word_embeddings.weight"].shape
    layers = {int(m.group(1)) for k in state for m in [re.match(r"transformer\.layers\.(\d+)\.", k)] if m}
    preset = PRESETS["chatglm-6b"]
    if (V, h, len(layers)) == (preset["vocab_size"], preset["hidden_size"], preset["num_layers"]):
        return GLMConfig.from_preset("chatglm-6b")
    raise CheckpointError(
        f"{source}: ChatGLM weights (vocab {V}, hidden {h}, {len(layers)} layers) that match no preset and carry no "
        "config.json; add the checkpoint's config.json (model_type chatglm)"
    )


def expected_shapes(config: GLMConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = model_class(config)(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state_dict(state: StateDict, config: GLMConfig, source: str) -> None:
    """Missing, unexpected and mis-shaped keys each raise one error that names them."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    problems = []
    if missing:
        problems.append(f"missing keys: {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    if wrong:
        detail = ", ".join(f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in wrong[:4])
        problems.append(f"shape mismatch (checkpoint vs config): {detail}{' ...' if len(wrong) > 4 else ''}")
    if problems:
        raise CheckpointError(f"{source}: weights do not match the config ({config.name}): " + "; ".join(problems))


def _short(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" ... (+{len(keys) - n} more)" if len(keys) > n else "")


# ---------------------------------------------------------------------------------------------- public
def load_state_dict(path: str | os.PathLike[str], architecture: str = "glm") -> tuple[StateDict, str]:
    """Read raw weights (merged, prefix-stripped) and return them with the layout name."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint path does not exist")
    layout = detect_layout(p)
    if layout == "hub":
        state = _load_weight_file(p) if p.is_file() else read_hub_state_dict(p)
    else:
        files = [p] if p.is_file() else original_shard_paths(p)
        state = merge_model_parallel([_as_state_dict(_torch_load(f), f) for f in files])
    if architecture == "glm" and "transformer.word_embeddings.weight" in state:
        architecture = "chatglm"  # ChatGLM weights without a config.json
    return normalise_keys(state, str(p), architecture), layout


def load_model(
    path_or_preset: str | os.PathLike[str],
    dtype: torch.dtype | str | None = None,
    gelu: str | None = None,
    *,
    config: GLMConfig | None = None,
    device: str | torch.device = "cpu",
    kernels: str = "torch",
    copy_gmask_row: bool | None = None,
    random_weights: bool = False,
    seed: int = 0,
    num_attention_heads: int | None = None,
    local_files_only: bool | None = None,
) -> GLMModel:
    """Load a GLM from a checkpoint directory/file, a preset name or a hub id (``owner/name[@revision]``), in eval
    mode.

    Precedence (:mod:`glm_core.hub`): an existing local path, then a preset, then a hub id, which is resolved through
    the Hugging Face cache (``local_files_only``: ``None`` follows ``HF_HUB_OFFLINE``).

    ``gelu``: ``None`` picks ``config.json``'s ``gelu`` if present, else ``"erf"`` for hub-layout checkpoints (to
    bit-match the hub remote code) and ``"tanh"`` for original-layout ones (as trained), spec §1.4.
    ``copy_gmask_row``: for an original glm-10b-chinese checkpoint, copy embedding row 50007 to 50009 as the hub
    conversion does (spec §3.2 trap 3); ``None`` = do it when the inferred model is glm-10b-chinese.
    ``random_weights``: presets other than ``glm-tiny`` have no weights in this package; with ``True`` they are built
    with seeded random weights (export and benchmark work), otherwise asking for one is an error.
    ``dtype="auto"`` keeps the checkpoint's own dtype (e.g. fp16 hub weights stay fp16).
    ``num_attention_heads``: for a checkpoint without ``config.json`` whose shapes match no preset (the head count
    is in no tensor shape); without it such a checkpoint is an error, never a guess.
    A checkpoint without ``config.json`` loads with a :class:`GLMWarning` that says what was inferred.
    """
    torch_dtype = None if dtype == "auto" else _as_dtype(dtype)
    name = resolve_model_path(path_or_preset, local_files_only=local_files_only)
    if not os.path.exists(name):
        if name in SHIPPED_PRESETS:
            name = str(SHIPPED_PRESETS[name])
        elif name in PRESETS:
            if not random_weights:
                raise CheckpointError(
                    f"preset {name!r} has no weights in this package: pass the directory of your {name} checkpoint "
                    f"(hub or original layout), or ask for seeded random weights explicitly (--random-weights where a "
                    "command offers it, random_weights=True in Python)"
                )
            return _random_preset(name, torch_dtype or torch.float32, gelu, device, kernels, seed)
        elif os.sep not in name and not name.startswith("."):
            raise UnknownPresetError(
                f"{name!r} is neither an existing checkpoint path nor a known preset; presets: {', '.join(sorted(PRESETS))}"
            )
        else:
            raise CheckpointError(f"{name}: checkpoint path does not exist")

    root = Path(name)
    cfg_dir = root if root.is_dir() else root.parent
    from_file = config is None and (cfg_dir / "config.json").is_file()
    if from_file:
        config = GLMConfig.from_hf_config(cfg_dir / "config.json")  # before the weights: it picks the key rules
    state, layout = load_state_dict(root, config.architecture if config is not None else "glm")
    # a GLM hub config.json has no gelu field: pick by layout (ChatGLM's block is always tanh)
    if from_file and config is not None and config.architecture == "glm" and "gelu" not in _raw_config_keys(cfg_dir):
        config = config.replace(gelu="erf" if layout == "hub" else "tanh")
    if config is None:
        chosen = gelu or ("erf" if layout == "hub" else "tanh")
        config = infer_config(state, str(root), chosen, num_attention_heads)
        if config.architecture == "chatglm":
            chosen = config.gelu  # the block's own tanh GeLU, not the GLM hub-layout default
        warnings.warn(
            GLMWarning(
                f"{root}: no config.json; inferred {config.name} from the tensor shapes ({config.num_layers} "
                f"layers, hidden {config.hidden_size}, {config.num_attention_heads} heads, vocab "
                f"{config.vocab_size}, {config.tokenizer_family} tokenizer) with {chosen} GeLU"
                + (
                    " (given)"
                    if gelu
                    else f" (the default for {layout}-layout weights; pass gelu= / --gelu to change it)"
                )
            ),
            stacklevel=2,
        )
    if gelu is not None:
        config = config.replace(gelu=gelu)
    if copy_gmask_row is None:
        copy_gmask_row = layout == "original" and config.name == "glm-10b-chinese"
    if copy_gmask_row:
        emb = state["word_embeddings.weight"].clone()
        emb[50009] = emb[50007]  # spec §3.2 trap 3 / convert_glm_checkpoint_to_transformers.py
        state["word_embeddings.weight"] = emb
    check_state_dict(state, config, str(root))
    model = _assemble(config, state, torch_dtype, kernels)
    return model.to(device).eval()


def _raw_config_keys(directory: Path) -> set[str]:
    try:
        return set(json.loads((directory / "config.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return set()


def _assemble(config: GLMConfig, state: StateDict, dtype: torch.dtype | None, kernels: str) -> GLMModel:
    """Build on the meta device and adopt the loaded tensors one by one: at most one extra tensor in memory.

    ``dtype=None`` keeps each tensor's stored dtype (all must agree).
    """
    with torch.device("meta"):
        model = model_class(config)(config, kernels=kernels)
    if dtype is None:
        dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
        if len(dtypes) > 1:
            dtype = torch.float32  # mixed files: the one dtype every tensor converts to losslessly enough
    for key in list(state):
        tensor = state.pop(key)
        state[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _random_preset(
    name: str, dtype: torch.dtype, gelu: str | None, device: str | torch.device, kernels: str, seed: int
) -> GLMModel:
    warnings.warn(
        f"preset {name!r} has no weights in this package; building it with seeded random weights (seed={seed}). "
        "Pass a checkpoint directory to load real weights.",
        stacklevel=3,
    )
    config = GLMConfig.from_preset(name, **({"gelu": gelu} if gelu else {}))
    from glm_core.model import build_model

    model = build_model(config, seed=seed, kernels=kernels)
    return model.to(device=device, dtype=dtype).eval()


def _as_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """``None`` means float32 (the default of :func:`load_model`)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "fp16": torch.float16,
        "float16": torch.float16,
        "half": torch.float16,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
    }
    if dtype not in table:
        raise ConfigError(f"unknown dtype {dtype!r}; expected one of fp32, fp16, bf16")
    return table[dtype]


def save_model(
    model: GLMModel,
    directory: str | os.PathLike[str],
    *,
    max_shard_bytes: int | None = None,
    prefix: str = "",
    dtype: torch.dtype | None = None,
    extra_files: Iterable[Path] = (),
) -> Path:
    """Write hub layout: safetensors (sharded with an index when over ``max_shard_bytes``) + ``config.json``."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    # A stale index or shard from an earlier save would shadow the new weights on reload.
    for stale in [*HUB_INDEX_FILES, *HUB_WEIGHT_FILES, *(p.name for p in out.glob("model-*-of-*.safetensors"))]:
        (out / stale).unlink(missing_ok=True)
    state = {
        prefix + k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    if max_shard_bytes is None or sum(t.numel() * t.element_size() for t in state.values()) <= max_shard_bytes:
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        chmod_default(out / "model.safetensors", 0o666)  # safetensors writes 0600; model files are shared
    else:
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for key, t in state.items():
            nbytes = t.numel() * t.element_size()
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][key] = t
            size += nbytes
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / fname), metadata={"format": "pt"})
            chmod_default(out / fname, 0o666)
            weight_map.update({k: fname for k in shard})
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": weight_map,
        }
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    model.config.save(out)
    for f in extra_files:
        (out / Path(f).name).write_bytes(Path(f).read_bytes())
    return out


def save_original(
    model: GLMModel,
    directory: str | os.PathLike[str],
    *,
    mp_size: int = 1,
    tag: str = "release",
    dtype: torch.dtype | None = torch.float16,
) -> Path:
    """Write the original THUDM layout (tracker + ``<tag>/mp_rank_XX_model_states.pt``), e.g. for tests."""
    out = Path(directory)
    (out / tag).mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None else v).detach().cpu() for k, v in model.state_dict().items()}
    for rank, shard in enumerate(split_model_parallel(state, mp_size)):
        torch.save(
            {"module": shard, "iteration": 0, "mp_world_size": mp_size},
            out / tag / f"mp_rank_{rank:02d}_model_states.pt",
        )
    (out / "latest_checkpointed_iteration.txt").write_text(tag, encoding="utf-8")
    return out
