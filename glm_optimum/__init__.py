"""GLM exports as an ``optimum.onnxruntime`` model: ``from_pretrained``, ``save_pretrained``, ``generate()``, IO binding.

An opt-in layer over the directory ``python -m export.onnx`` writes (``pip install "glm-harness[optimum]"``). It
imports torch, transformers and optimum, so nothing else in the project imports it (the ONNX path stays
torch-free)::

    from glm_optimum import GLMORTModel

    model = GLMORTModel.from_pretrained("glm-tiny-onnx", use_io_binding=True)
    inputs = model.tokenizer("The capital of France is [MASK].")
    out = model.generate(**inputs, max_new_tokens=16)
    print(model.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :]))

Importing the package registers :class:`GLMORTConfig` with ``transformers.AutoConfig`` under its own model type
``"glm_harness"`` (never ``"glm"``, which transformers maps to GLM-4).
"""

from __future__ import annotations

from glm_optimum.generation import GLMLogitsProcessor, GLMPromptTokenizer
from glm_optimum.modeling import MODEL_TYPE, GLMORTConfig, GLMORTModel

__all__ = ["MODEL_TYPE", "GLMLogitsProcessor", "GLMORTConfig", "GLMORTModel", "GLMPromptTokenizer"]
