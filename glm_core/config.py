"""GLM configuration: one dataclass, presets for every released model, hub config.json I/O.

Torch-free (DESIGN.md). Values of the presets are spec glm_reference §1.6.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from glm_core.errors import ConfigError, UnknownPresetError

GELU_VARIANTS = ("tanh", "erf")
TOKENIZER_FAMILIES = ("bert", "gpt2", "roberta", "sentencepiece", "chatglm")
ARCHITECTURES = ("glm", "chatglm")
CHATGLM_FULL_PRECISION_REPO = "zai-org/chatglm-6b"


@dataclass
class GLMConfig:
    """Architecture of one GLM. Field names follow the hub ``config.json`` where one exists.

    ``architecture`` names the block: ``"glm"`` (this class: learned 2-D position tables, pre-LN, tied head) or
    ``"chatglm"`` (:class:`ChatGLMConfig`: the GLM-130B block of ChatGLM-6B). Code that builds a model dispatches on it.
    """

    architecture: ClassVar[str] = "glm"

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    max_sequence_length: int  # position tables have max_sequence_length + 1 rows (spec §1.6)
    layernorm_epsilon: float = 1e-5  # hard-coded in the original code (spec §1.5)
    gelu: str = "tanh"  # "tanh" as the checkpoints were trained, "erf" as the hub remote code computes (spec §1.4)
    embedding_dropout_prob: float = 0.1
    attention_dropout_prob: float = 0.1
    output_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    tokenizer_family: str = "bert"
    name: str = "custom"
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ derived
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def ffn_hidden_size(self) -> int:
        return 4 * self.hidden_size  # FFN = 4h, hard-coded (spec §1.6)

    @property
    def num_position_rows(self) -> int:
        return self.max_sequence_length + 1

    def num_parameters(self) -> int:
        h, L = self.hidden_size, self.num_layers
        per_layer = 12 * h * h + 13 * h  # spec §4.2
        return self.vocab_size * h + 2 * self.num_position_rows * h + L * per_layer + 2 * h

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        ints = ("vocab_size", "hidden_size", "num_layers", "num_attention_heads", "max_sequence_length")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"config field {name!r} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"config field 'hidden_size' ({self.hidden_size}) must be divisible by "
                f"'num_attention_heads' ({self.num_attention_heads})"
            )
        if self.gelu not in GELU_VARIANTS:
            raise ConfigError(f"config field 'gelu' must be one of {GELU_VARIANTS}, got {self.gelu!r}")
        if self.tokenizer_family not in TOKENIZER_FAMILIES:
            raise ConfigError(
                f"config field 'tokenizer_family' must be one of {TOKENIZER_FAMILIES}, got {self.tokenizer_family!r}"
            )
        for name in ("embedding_dropout_prob", "attention_dropout_prob", "output_dropout_prob"):
            p = getattr(self, name)
            if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
                raise ConfigError(f"config field {name!r} must be a probability in [0, 1), got {p!r}")
        if not isinstance(self.layernorm_epsilon, (int, float)) or self.layernorm_epsilon <= 0:
            raise ConfigError(f"config field 'layernorm_epsilon' must be > 0, got {self.layernorm_epsilon!r}")

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GLMConfig:
        if name not in PRESETS:
            raise UnknownPresetError(f"unknown preset {name!r}; expected one of: {', '.join(sorted(PRESETS))}")
        values = dict(PRESETS[name])
        values.update(overrides)
        target = CONFIG_CLASSES[values.pop("architecture", "glm")]
        return target(name=name, **values)

    def replace(self, **changes: Any) -> GLMConfig:
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- hub I/O
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> GLMConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if cls is GLMConfig and data.get("model_type") == "chatglm":
            return ChatGLMConfig.from_dict(data, source)
        if data.get("relative_encoding"):
            raise ConfigError(f"{source}: relative_encoding=true is not supported (no released GLM uses it)")
        if data.get("block_position_encoding") is False:
            raise ConfigError(f"{source}: block_position_encoding=false is not supported (every released GLM uses it)")
        scale = data.get("attention_scale", 1.0)
        if scale != 1.0:
            raise ConfigError(f"{source}: attention_scale={scale} is not supported (released configs use 1.0)")
        missing = [k for k in ("vocab_size", "hidden_size", "num_layers", "num_attention_heads") if k not in data]
        if missing:
            raise ConfigError(f"{source}: missing field(s) {', '.join(missing)}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: data[k] for k in known if k in data}
        values.setdefault("max_sequence_length", data.get("max_position_embeddings", 512))
        values.setdefault("tokenizer_family", _guess_family(data))
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(extra=extra, **values)

    @classmethod
    def from_hf_config(cls, path: str | os.PathLike[str]) -> GLMConfig:
        """Read a hub ``config.json`` (a file or the directory that holds it)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.isfile(path):
            raise ConfigError(f"{path}: config file not found")
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source=path)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        return out

    def to_hf_config(self) -> dict[str, Any]:
        """The hub ``config.json`` of this model, plus our explicit fields (gelu, eps, tokenizer family)."""
        out = self.to_dict()
        out.update(
            {
                "model_type": "glm",
                "architectures": ["GLMModel"],
                "block_position_encoding": True,
                "relative_encoding": False,
                "attention_scale": 1.0,
                "checkpoint_activations": False,
                "checkpoint_num_layers": 1,
                "output_predict": True,
                "parallel_output": True,
            }
        )
        return out

    def save(self, directory: str | os.PathLike[str]) -> str:
        path = os.path.join(os.fspath(directory), "config.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_hf_config(), fh, indent=2, sort_keys=True)
            fh.write("\n")
        return path


@dataclass
class ChatGLMConfig(GLMConfig):
    """ChatGLM-6B's block (the GLM-130B layer), fields as in its hub ``config.json`` (``model_type: chatglm``).

    What differs from GLM is fixed by the block, not configured: rotary 2-D positions instead of position tables,
    post-LN residuals scaled by ``sqrt(2 * 28)``, per-layer attention scaling, -10000 masking, an untied LM head
    (:mod:`glm_core.chatglm`). The special ids are fields because the hub config carries them and the input layout
    depends on them: ``bos_token_id`` is ``<sop>`` (the start of Part B, so ``sep`` is its index),
    ``eos_token_id`` is ``<eop>``, ``mask_token_id`` / ``gmask_token_id`` are ``[MASK]`` / ``[gMASK]``.
    """

    architecture: ClassVar[str] = "chatglm"

    inner_hidden_size: int | None = None  # None = 4 * hidden_size (the remote code's default)
    position_encoding_2d: bool = True
    bos_token_id: int = 130004
    eos_token_id: int = 130005
    mask_token_id: int = 130000
    gmask_token_id: int = 130001
    pad_token_id: int = 3
    # no dropout anywhere in the block (the remote code has none)
    embedding_dropout_prob: float = 0.0
    attention_dropout_prob: float = 0.0
    output_dropout_prob: float = 0.0
    tokenizer_family: str = "chatglm"

    @property
    def ffn_hidden_size(self) -> int:
        return self.inner_hidden_size if self.inner_hidden_size is not None else 4 * self.hidden_size

    @property
    def rotary_dim(self) -> int:
        """Each half of a head is rotated separately (position id, block id): the rotary width is ``head_dim / 2``."""
        return self.head_dim // 2

    def num_parameters(self) -> int:
        h, L, f, V = self.hidden_size, self.num_layers, self.ffn_hidden_size, self.vocab_size
        per_layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h  # qkv + dense, MLP, two LayerNorms
        return 2 * V * h + L * per_layer + 2 * h  # embeddings, untied head, final LayerNorm

    def validate(self) -> None:
        super().validate()
        if self.inner_hidden_size is not None and (
            isinstance(self.inner_hidden_size, bool)
            or not isinstance(self.inner_hidden_size, int)
            or self.inner_hidden_size <= 0
        ):
            raise ConfigError(
                f"config field 'inner_hidden_size' must be a positive integer, got {self.inner_hidden_size!r}"
            )
        if self.position_encoding_2d is not True:
            raise ConfigError(
                "config field 'position_encoding_2d' must be true (ChatGLM-6B's 2-D rotary positions; the 1-D variant "
                "has no (position, block) input and is not supported)"
            )
        if self.head_dim % 4:
            raise ConfigError(
                f"ChatGLM head size {self.head_dim} (hidden_size / num_attention_heads) must be divisible by 4 "
                "(two rotary halves, each rotated by halves)"
            )
        for name in ("bos_token_id", "eos_token_id", "mask_token_id", "gmask_token_id", "pad_token_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ConfigError(f"config field {name!r} must be a token id in [0, {self.vocab_size}), got {value!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ChatGLMConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        bits = data.get("quantization_bit") or 0
        if bits:
            raise ConfigError(
                f"{source}: quantization_bit={bits}: the int{bits} ChatGLM checkpoints need their own quantized "
                f"kernels and are not supported; use the full-precision repo {CHATGLM_FULL_PRECISION_REPO}"
            )
        if data.get("pre_seq_len") is not None:
            raise ConfigError(
                f"{source}: pre_seq_len={data['pre_seq_len']!r} (a P-tuning prefix encoder) is not supported; expected "
                "null (the base ChatGLM-6B model)"
            )
        missing = [k for k in ("vocab_size", "hidden_size", "num_layers", "num_attention_heads") if k not in data]
        if missing:
            raise ConfigError(f"{source}: missing field(s) {', '.join(missing)}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: data[k] for k in known if k in data}
        values.setdefault("max_sequence_length", 2048)
        extra = {k: v for k, v in data.items() if k not in known and k != "model_type"}
        return cls(extra=extra, **values)

    def to_hf_config(self) -> dict[str, Any]:
        """The hub ``config.json`` of this model (the remote code's field names) plus our explicit fields."""
        out = self.to_dict()
        out.update({"model_type": "chatglm", "architectures": ["ChatGLMModel"], "quantization_bit": 0})
        if self.inner_hidden_size is None:
            out["inner_hidden_size"] = self.ffn_hidden_size
        return out


CONFIG_CLASSES: dict[str, type[GLMConfig]] = {"glm": GLMConfig, "chatglm": ChatGLMConfig}


def _guess_family(data: dict[str, Any]) -> str:
    vocab = data.get("vocab_size")
    if vocab == 30592:
        return "bert"
    if vocab == 50048:
        return "sentencepiece"
    if vocab == 50304:
        name = str(data.get("_name_or_path", "")).lower()
        return "roberta" if "roberta" in name else "gpt2"
    return "bert"


def _preset(L: int, h: int, n: int, P: int, V: int, family: str) -> dict[str, Any]:
    return {
        "num_layers": L,
        "hidden_size": h,
        "num_attention_heads": n,
        "max_sequence_length": P,
        "vocab_size": V,
        "tokenizer_family": family,
    }


# spec glm_reference §1.6 (one line per released model) + our shipped glm-tiny.
PRESETS: dict[str, dict[str, Any]] = {
    "glm-tiny": _preset(4, 256, 4, 512, 2048, "sentencepiece"),
    "glm-base": _preset(12, 768, 12, 512, 30592, "bert"),
    "glm-large": _preset(24, 1024, 16, 512, 30592, "bert"),
    "glm-doc": _preset(24, 1024, 16, 512, 30592, "bert"),
    "glm-410m": _preset(30, 1024, 16, 512, 30592, "bert"),
    "glm-515m": _preset(30, 1152, 18, 512, 30592, "bert"),
    "glm-roberta-large": _preset(24, 1024, 16, 512, 50304, "roberta"),
    "glm-large-chinese": _preset(24, 1024, 16, 1024, 50048, "sentencepiece"),
    "glm-2b": _preset(36, 2048, 32, 1024, 50304, "gpt2"),
    "glm-10b": _preset(48, 4096, 64, 1024, 50304, "gpt2"),
    "glm-10b-chinese": _preset(48, 4096, 64, 1024, 50048, "sentencepiece"),
    # hub zai-org/chatglm-6b config.json (the GLM-130B block, spec in glm_core.chatglm)
    "chatglm-6b": {
        **_preset(28, 4096, 32, 2048, 130528, "chatglm"),
        "architecture": "chatglm",
        "inner_hidden_size": 16384,
    },
}
