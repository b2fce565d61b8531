"""GLM core: configuration, model, checkpoints, tokenizers and the shared input layout.

Torch-dependent names (``GLMModel``, ``load_model``, ``save_model``) are imported lazily so that the torch-free
modules (``glm_core.config``, ``glm_core.tokenizer``, ``glm_core.layout``, ``glm_core.generation``) can be used in an
environment without torch.
"""

from __future__ import annotations

from typing import Any

from glm_core.config import PRESETS, ChatGLMConfig, GLMConfig
from glm_core.errors import GLMError

__version__ = "0.1.0"

_LAZY = {
    "GLMModel": "glm_core.model",
    "GLMOutput": "glm_core.model",
    "build_model": "glm_core.model",
    "ChatGLMModel": "glm_core.chatglm",
    "load_model": "glm_core.checkpoint",
    "save_model": "glm_core.checkpoint",
    "GLMTokenizer": "glm_core.tokenizer",
}

__all__ = ["PRESETS", "ChatGLMConfig", "GLMConfig", "GLMError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'glm_core' has no attribute {name!r}")
