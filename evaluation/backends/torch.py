"""The PyTorch backend: :class:`glm_core.step.TorchStep` over a checkpoint, plus the tokenizer of the same directory.

The only module of ``evaluation`` that imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed  # noqa: F401  (evaluation.lm_eval_distributed reaches it as torch.distributed)

from evaluation.backends.info import backend_info, model_hash
from glm_core.checkpoint import SHIPPED_PRESETS, load_model
from glm_core.errors import CheckpointError, TokenizerError
from glm_core.hub import resolve_model_path
from glm_core.model import GLMModel
from glm_core.step import TorchStep
from glm_core.tokenizer import GLMTokenizer

_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_CHECKPOINT_MARKERS = ("config.json", "latest_checkpointed_iteration.txt", "latest")


def resolve_model_dir(path: str | os.PathLike[str]) -> Path:
    """The checkpoint directory for ``path`` (a directory, or the name of a preset shipped with weights)."""
    name = resolve_model_path(path)
    if not os.path.exists(name) and name in SHIPPED_PRESETS:
        return Path(SHIPPED_PRESETS[name])
    root = Path(name)
    if not root.is_dir():
        raise CheckpointError(
            f"{root}: not a model directory; expected a checkpoint directory (config.json + weights, or the original "
            f"layout) or a shipped preset ({', '.join(sorted(SHIPPED_PRESETS))})"
        )
    if not any((root / m).is_file() for m in _CHECKPOINT_MARKERS):
        raise CheckpointError(
            f"{root}: not a checkpoint directory; expected config.json with model weights, or "
            "latest_checkpointed_iteration.txt (original layout)"
        )
    return root


class TorchBackend:
    """Step contract + tokenizer for a PyTorch GLM (see :class:`evaluation.backends.EvalBackend`)."""

    name = "torch"

    def __init__(
        self,
        path: str | os.PathLike[str],
        device: str = "cpu",
        dtype: str | None = None,
        *,
        kernels: str = "torch",
        attention: str = "auto",
        tokenizer: GLMTokenizer | None = None,
        gelu: str | None = None,
    ) -> None:
        root = resolve_model_dir(path)
        model = load_model(root, dtype=dtype, gelu=gelu, device=device, kernels=kernels)  # gelu None: the checkpoint's
        model.set_attention(attention)  # glm_core.attention_backends: auto = the fastest exact one here
        if tokenizer is None:
            try:
                tokenizer = GLMTokenizer.from_pretrained(root)
            except TokenizerError as exc:
                raise TokenizerError(f"{root}: no usable tokenizer next to the weights ({exc})") from None
        self._setup(model, tokenizer, path=root)

    @classmethod
    def from_model(
        cls, model: GLMModel, tokenizer: GLMTokenizer, *, path: str | os.PathLike[str] | None = None
    ) -> TorchBackend:
        """Wrap a model already in memory (the training loop's evaluate callback, tests)."""
        backend = cls.__new__(cls)
        backend._setup(model, tokenizer, path=None if path is None else Path(path))
        return backend

    def _setup(self, model: GLMModel, tokenizer: GLMTokenizer, path: Path | None) -> None:
        self._step = TorchStep(model)
        self.model = model
        self.config = model.config
        self.tokenizer = tokenizer
        self.special = tokenizer.special
        self.max_length = self.config.max_sequence_length
        self.path = path
        self._hash: str | None = None
        largest = max(i for i in tokenizer.special.to_dict().values() if isinstance(i, int))
        if largest >= self.config.vocab_size:
            raise TokenizerError(
                f"the tokenizer's command-token id {largest} does not fit the model's vocab_size "
                f"{self.config.vocab_size}; the tokenizer belongs to another model"
            )

    # ------------------------------------------------------------------ step contract
    def step(
        self, input_ids: np.ndarray, position_ids: np.ndarray, sep: np.ndarray, past: Any = None
    ) -> tuple[np.ndarray, Any]:
        return self._step.step(input_ids, position_ids, sep, past)

    def reorder_past(self, past: Any, index: np.ndarray) -> Any:
        return self._step.reorder_past(past, index)

    def past_length(self, past: Any) -> int:
        return self._step.past_length(past)

    @property
    def calls(self) -> int:
        return self._step.calls

    @property
    def tokens_seen(self) -> int:
        return self._step.tokens_seen

    def reset_counters(self) -> None:
        self._step.calls = 0
        self._step.tokens_seen = 0

    # ------------------------------------------------------------------ description
    def model_hash(self) -> str | None:
        if self._hash is None and self.path is not None:
            self._hash = model_hash(self.path)
        return self._hash

    def info(self) -> dict[str, Any]:
        device = str(self._step.device)
        return backend_info(
            backend=self.name,
            path=self.path,
            device=device,
            provider="torch-" + self._step.device.type,
            dtype=_DTYPE_NAMES.get(self._step.dtype, str(self._step.dtype)),
            packages=("torch",),
            hash_value=self.model_hash(),
            extra={"model_name": self.config.name, "tokenizer_family": self.tokenizer.family},
        )
