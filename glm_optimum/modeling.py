"""``GLMORTModel``: an ``optimum.onnxruntime.ORTModelForCausalLM`` over a directory ``python -m export.onnx`` wrote.

The directory is read by the project's own ONNX backend (:class:`evaluation.backends.onnx.OnnxBackend`):
``glm_config.json`` gives the names, dims and dtypes, ``check_external_data`` refuses external-data paths that
leave the directory **before** a session is created, and ``OnnxBackend.step`` (its input checks included) runs every
forward that does not use IO binding. optimum contributes the rest: the hub, providers and session options, IO
binding through its documented ``_prepare_io_binding`` (torch buffers bound by pointer, on CPU or a CUDA device),
``save_pretrained`` / ``push_to_hub``, and ``generate()`` through transformers' generation utilities.

No GLM-4 confusion: the config class has its own ``model_type`` (``"glm_harness"``), it is built from
``glm_config.json`` (a ``config.json`` beside it is not needed, and one with another ``model_type`` is ignored), and
the external data read is the file list ``glm_config.json`` records (``model.onnx.data``), locally and from the hub.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from optimum.onnxruntime import ORTModelForCausalLM
from optimum.onnxruntime.utils import prepare_providers_and_provider_options
from transformers import AutoConfig, GenerationConfig, PretrainedConfig
from transformers.generation import LogitsProcessorList
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import is_offline_mode

from evaluation.backends.onnx import CONFIG_FILE, OnnxBackend, _escapes, check_step_inputs, read_model_config
from glm_core.errors import ConfigError, ExportError, InputError
from glm_optimum.generation import (
    TAKEN_OVER,
    GLMLogitsProcessor,
    GLMPromptTokenizer,
    advance_positions,
    glm_generation_config,
)

logger = logging.getLogger(__name__)

MODEL_TYPE = "glm_harness"  # never "glm": transformers maps that to GLM-4
EXTRA_FILES = ("export_report.json",)  # copied by save_pretrained when present
TOKENIZER_META = "glm_tokenizer.json"
KV_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class GLMORTConfig(PretrainedConfig):
    """The transformers config of a GLM Harness ONNX export, built from its ``glm_config.json``."""

    model_type = MODEL_TYPE
    attribute_map = {"num_hidden_layers": "num_layers"}

    def __init__(
        self,
        vocab_size: int = 0,
        hidden_size: int = 0,
        num_layers: int = 0,
        num_attention_heads: int = 0,
        head_dim: int = 0,
        max_sequence_length: int = 0,
        kv_dtype: str = "float32",
        glm_model_name: str = "",
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_attention_heads = num_attention_heads
        self.head_dim = head_dim
        self.max_sequence_length = max_sequence_length
        self.kv_dtype = kv_dtype
        self.glm_model_name = glm_model_name
        kwargs.setdefault("use_cache", True)
        super().__init__(**kwargs)

    @classmethod
    def from_export(cls, config: dict[str, Any]) -> GLMORTConfig:
        """From the parsed ``glm_config.json`` (:func:`evaluation.backends.onnx.read_model_config`)."""
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config.get("hidden_size", config["num_attention_heads"] * config["head_dim"])),
            num_layers=int(config["num_layers"]),
            num_attention_heads=int(config["num_attention_heads"]),
            head_dim=int(config["head_dim"]),
            max_sequence_length=int(config["max_sequence_length"]),
            kv_dtype=str(config["kv_dtype"]),
            glm_model_name=str(config.get("model_name", "")),
        )


AutoConfig.register(MODEL_TYPE, GLMORTConfig, exist_ok=True)


# ------------------------------------------------------------------------------------------------ model directory
def resolve_model_dir(
    model_id: str | os.PathLike[str],
    *,
    subfolder: str = "",
    revision: str | None = None,
    cache_dir: str | None = None,
    token: bool | str | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
) -> Path:
    """A local export directory, or the hub snapshot holding every file ``glm_config.json`` names.

    From the hub: ``glm_config.json`` first, then its ``model_file``, each of its ``external_data`` files (the names
    our export writes, ``model.onnx.data``), the tokenizer files ``glm_tokenizer.json`` lists, and the optional
    ``config.json`` / ``generation_config.json`` / ``export_report.json``.
    """
    local = Path(model_id) / subfolder
    if Path(model_id).is_dir():
        read_model_config(local)  # one clear error for a directory that is not our export
        return local
    from huggingface_hub import hf_hub_download

    def fetch(name: str, required: bool = True) -> Path | None:
        try:
            path = hf_hub_download(
                str(model_id),
                name,
                subfolder=subfolder or None,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                force_download=force_download,
                local_files_only=local_files_only,
            )
        except Exception as exc:  # hub errors: not found, offline, no access
            if not required:
                return None
            where = "not a local directory, and " if name == CONFIG_FILE else ""
            raise ExportError(
                f"{model_id}: {where}{name} could not be fetched from the hub ({type(exc).__name__}); "
                "expected an export written by `python -m export.onnx`"
            ) from None
        return Path(path)

    root = fetch(CONFIG_FILE).parent  # type: ignore[union-attr]
    config = read_model_config(root)
    names = [config["model_file"], *config.get("external_data", [])]
    if config.get("tokenizer"):
        names.append(TOKENIZER_META)
    for name in names:
        if not isinstance(name, str) or _escapes(root, name):
            raise ExportError(f"{root / CONFIG_FILE}: file {name!r} must be a relative path inside the model directory")
        fetch(name)
    if config.get("tokenizer"):
        meta = json.loads((root / TOKENIZER_META).read_text(encoding="utf-8"))
        for name in meta.get("files", []):
            if not isinstance(name, str) or _escapes(root, name):
                raise ExportError(
                    f"{root / TOKENIZER_META}: file {name!r} must be a relative path inside the directory"
                )
            fetch(name)
    for name in ("config.json", "generation_config.json", *EXTRA_FILES):
        fetch(name, required=False)
    return root


def default_generation_config(backend: OnnxBackend) -> GenerationConfig:
    """Stop on ``eop`` or ``eos`` (spec §2.3a), pad with ``pad``; 32 new tokens as ``glm_core.generation``."""
    special = backend.special_tokens
    if special is None:
        return GenerationConfig(max_new_tokens=32)
    return GenerationConfig(
        max_new_tokens=32, eos_token_id=sorted({special.eop, special.eos}), pad_token_id=special.pad
    )


# ------------------------------------------------------------------------------------------------ the model
class GLMORTModel(ORTModelForCausalLM):
    """GLM (2-D positions, ``sep``) as an ``ORTModelForCausalLM``; see the module docstring.

    ``forward(input_ids [B,S], position_ids [B,2,S], sep [B], past_key_values)`` -> logits ``[B,S,V]`` and the
    cache as ``L`` ``(key, value)`` pairs ``[B,H,P+S,D]``, equal to ``OnnxBackend.step``.
    """

    _supports_cache_class = False

    def __init__(
        self,
        *,
        config: GLMORTConfig,
        backend: OnnxBackend,
        use_io_binding: bool | None = None,
        generation_config: GenerationConfig | None = None,
        model_save_dir: str | Path | None = None,
    ) -> None:
        self.backend = backend
        if backend.kv_cache == "buffer":  # the bound path feeds the concat graph's inputs (the CUDA layout)
            if use_io_binding:
                raise ConfigError(
                    f"{backend.model_dir}: IO binding needs an export with --kv-cache concat (this one has the CPU "
                    "buffer layout, which the plain path runs); pass use_io_binding=False or re-export"
                )
            use_io_binding = False
        super().__init__(
            config=config,
            session=backend.session,
            use_io_binding=use_io_binding,
            generation_config=generation_config or default_generation_config(backend),
            model_save_dir=model_save_dir or backend.model_dir,
        )
        self.num_key_value_heads = backend.num_heads
        self.embed_size_per_head = backend.head_dim
        self._prompt_tokenizer: GLMPromptTokenizer | None = None

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        model_id: str | os.PathLike[str],
        config: GLMORTConfig | None = None,
        *,
        export: bool = False,
        subfolder: str = "",
        revision: str | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        cache_dir: str | None = None,
        token: bool | str | None = None,
        provider: str = "CPUExecutionProvider",
        providers: list[str] | None = None,
        provider_options: Any = None,
        session_options: Any = None,
        use_io_binding: bool | None = None,
        use_cache: bool = True,
        generation_config: GenerationConfig | None = None,
        **kwargs: Any,
    ) -> GLMORTModel:
        """Load an export directory or hub repository (see :func:`resolve_model_dir`).

        ``provider`` / ``providers`` / ``provider_options`` / ``session_options`` / ``use_io_binding`` as in
        optimum. ``export=True`` is refused: GLM is exported by ``python -m export.onnx``.
        """
        if export:
            raise ConfigError("export=True is not supported for GLM; export with `python -m export.onnx --ckpt ...`")
        if not use_cache:
            raise ConfigError("use_cache=False is not supported: the GLM graph always returns its K/V cache")
        if kwargs:
            raise ConfigError(f"unsupported from_pretrained argument(s): {', '.join(sorted(kwargs))}")
        if config is not None and not isinstance(config, GLMORTConfig):
            raise ConfigError(f"config must be a GLMORTConfig (model_type {MODEL_TYPE!r}), got {type(config).__name__}")
        if is_offline_mode():
            local_files_only = True
        model_dir = resolve_model_dir(
            model_id,
            subfolder=subfolder,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            force_download=force_download,
            local_files_only=local_files_only,
        )
        _warn_on_foreign_config(model_dir)
        providers, provider_options = prepare_providers_and_provider_options(
            provider=provider, providers=providers, provider_options=provider_options
        )
        # OnnxBackend reads glm_config.json and runs check_external_data before it creates the session.
        backend = OnnxBackend(
            model_dir, providers=providers, session_options=session_options, provider_options=provider_options
        )
        return cls(
            config=config or GLMORTConfig.from_export(backend.config),
            backend=backend,
            use_io_binding=use_io_binding,
            generation_config=generation_config,
            model_save_dir=model_dir,
        )

    def _save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:
        """The graph, its external data, ``glm_config.json``, the export report and the tokenizer files."""
        target = Path(save_directory)
        source = self.backend.model_dir
        names = [self.backend.config["model_file"], *self.backend.external_data, CONFIG_FILE, *EXTRA_FILES]
        for name in names:
            src, dst = source / name, target / name
            if src.is_file() and not (dst.exists() and dst.resolve() == src.resolve()):
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
        if self.backend.config.get("tokenizer"):
            self.backend.tokenizer.save_pretrained(target)

    @property
    def tokenizer(self) -> GLMPromptTokenizer:
        """The export's tokenizer, building GLM generation prompts (:class:`GLMPromptTokenizer`)."""
        if self._prompt_tokenizer is None:
            self._prompt_tokenizer = GLMPromptTokenizer(self.backend.tokenizer, self.backend.max_position)
        return self._prompt_tokenizer

    # ------------------------------------------------------------------ forward
    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor | np.ndarray,
        position_ids: torch.Tensor | np.ndarray | None = None,
        sep: torch.Tensor | np.ndarray | int | None = None,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | np.ndarray | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        use_torch = isinstance(input_ids, torch.Tensor)
        self.raise_on_numpy_input_io_binding(use_torch)
        if position_ids is None or sep is None:
            raise InputError(
                "GLM needs position_ids [batch, 2, seq] and sep [batch] (chunk-relative); build them with "
                "model.tokenizer(text) or glm_core.layout"
            )
        if attention_mask is not None and not bool((_numpy(attention_mask) != 0).all()):
            raise InputError("attention_mask has zeros; GLM has no padding mask (attention follows sep), use ones")
        past = _flat_past(past_key_values)
        if self.use_io_binding:
            logits, present = self._forward_io_binding(input_ids, position_ids, sep, past)
        else:
            host_past = None if past is None else [_numpy(p) for p in past]
            logits_np, present_ort = self.backend.step(_numpy(input_ids), _numpy(position_ids), _numpy(sep), host_past)
            present_np = [value.numpy() for value in present_ort]
            if use_torch:
                logits, present = torch.from_numpy(logits_np), [torch.from_numpy(v) for v in present_np]
            else:
                logits, present = logits_np, present_np
        keep = use_cache if use_cache is not None else self.config.use_cache
        pairs = tuple((present[i], present[i + 1]) for i in range(0, len(present), 2)) if keep else None
        return CausalLMOutputWithPast(logits=logits, past_key_values=pairs)

    def _forward_io_binding(
        self, input_ids: torch.Tensor, position_ids: Any, sep: Any, past: list[Any] | None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """optimum's IO binding: inputs and outputs are torch buffers on ``self.device``, bound by pointer."""
        backend = self.backend
        ids, pos, sep_arr = check_step_inputs(backend, _numpy(input_ids), _numpy(position_ids), _numpy(sep), past)
        B, S = ids.shape
        device = self.device
        kv_dtype = KV_TORCH_DTYPES[backend.config["kv_dtype"]]
        if past is None:
            empty = torch.zeros((B, backend.num_heads, 0, backend.head_dim), dtype=kv_dtype, device=device)
            past = [empty] * len(backend.past_names)
        P = backend.past_length(past)
        inputs = {
            "input_ids": torch.from_numpy(ids).to(device),
            "position_ids": torch.from_numpy(pos).to(device),
            "sep": torch.tensor(sep_arr, device=device),
        }
        inputs.update({name: value.to(device) for name, value in zip(backend.past_names, past, strict=True)})
        present_shape = (B, backend.num_heads, P + S, backend.head_dim)
        shapes = {"logits": (B, S, backend.vocab_size), **dict.fromkeys(backend.present_names, present_shape)}
        _, buffers = self._prepare_io_binding(inputs, known_output_shapes=shapes)
        if device.type == "cpu":
            self.session.run_with_iobinding(self._io_binding)
        else:
            self._io_binding.synchronize_inputs()
            self.session.run_with_iobinding(self._io_binding)
            self._io_binding.synchronize_outputs()
        backend.calls += 1
        backend.tokens_seen += int(ids.size)
        logits = buffers["logits"].view(shapes["logits"])
        return logits, [buffers[name].view(present_shape) for name in backend.present_names]

    # ------------------------------------------------------------------ generation
    def prepare_inputs_for_generation(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        sep: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Prefill: the whole prompt with its ``sep``. Then the last token alone, at the last column of
        ``position_ids`` (advanced by :meth:`_update_model_kwargs_for_generation`), with ``sep = 0``."""
        if position_ids is None or sep is None:
            raise InputError("generate() needs position_ids and sep: pass **model.tokenizer(text)")
        if past_key_values is not None:
            input_ids = input_ids[:, -1:]
            position_ids = position_ids[:, :, -1:]
            sep = torch.zeros(input_ids.shape[0], dtype=torch.int64, device=input_ids.device)
        return {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "sep": sep,
            "past_key_values": past_key_values,
            "attention_mask": attention_mask,
            "use_cache": use_cache,
        }

    def _update_model_kwargs_for_generation(self, outputs: Any, model_kwargs: dict[str, Any], *args: Any, **kw: Any):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kw)
        model_kwargs["position_ids"] = advance_positions(model_kwargs["position_ids"])
        return model_kwargs

    def generate(  # type: ignore[override]
        self,
        inputs: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """transformers' ``generate`` with GLM's choice rules (:class:`GLMLogitsProcessor`, the last processor).

        ``seed`` seeds the sampler as ``glm_core.generation.GenerationConfig.seed``. Greedy, seeded sampling and beam
        search with ``early_stopping=False`` (transformers' default; any ``length_penalty``) give the ids of
        ``glm_core.generation.generate`` (README, "Using the export with optimum").
        """
        hf = copy.deepcopy(generation_config if generation_config is not None else self.generation_config)
        model_kwargs = hf.update(**kwargs)
        input_ids = inputs if inputs is not None else model_kwargs.pop("input_ids", None)
        if input_ids is None:
            raise InputError("generate() needs input_ids: pass **model.tokenizer(text)")
        prompt_length = int(input_ids.shape[1])
        max_new = hf.max_new_tokens if hf.max_new_tokens is not None else int(hf.max_length) - prompt_length
        vocab = len(self.backend.tokenizer) if self.backend.config.get("tokenizer") else None
        glm = glm_generation_config(hf, max_new, seed, vocab)
        special = self.backend.special_tokens
        if special is None:
            raise ExportError(f"{self.backend.model_dir}: {CONFIG_FILE} records no special tokens; cannot generate")
        for name, value in TAKEN_OVER.items():
            setattr(hf, name, value)
        hf.max_new_tokens = max_new
        model_kwargs.setdefault("attention_mask", torch.ones_like(input_ids))
        self._glm_stop_ids = torch.tensor(sorted({special.eop, special.eos}), device=input_ids.device)
        processors = LogitsProcessorList([*(logits_processor or []), GLMLogitsProcessor(glm, special, prompt_length)])
        return super().generate(input_ids, generation_config=hf, logits_processor=processors, **model_kwargs)

    # Beam search with glm_core.generation's _BeamHypotheses rules (transformers' rules before its beam rewrite):
    # a hypothesis ended by a stop token is scored over its length without the stop token (at least 1), and
    # early_stopping=False stops once the step's best candidate, over the length before the step, cannot beat
    # the worst kept hypothesis. transformers 4.57 counts the stop token and uses the best running beam over the
    # length after the step; the two overrides below restore the former (both are called with keywords only).
    def _update_finished_beams(self, **kwargs: Any) -> Any:
        topk = kwargs["topk_log_probs"]
        self._glm_best_candidate = topk[:, :1].clone()  # topk is sorted: the step's best candidate, stops included
        length_penalty = kwargs["length_penalty"]
        if length_penalty:
            cur_len = kwargs["cur_len"]
            generated = cur_len + 1 - kwargs["decoder_prompt_len"]  # transformers' length, stop token counted
            is_stop = torch.isin(kwargs["topk_running_sequences"][:, :, cur_len], self._glm_stop_ids)
            factor = (generated / max(generated - 1, 1)) ** length_penalty
            kwargs["topk_log_probs"] = torch.where(is_stop, topk * factor, topk)
        return super()._update_finished_beams(**kwargs)

    def _check_early_stop_heuristic(self, **kwargs: Any) -> Any:  # type: ignore[override]
        if kwargs["early_stopping"] is not False:
            return ORTModelForCausalLM._check_early_stop_heuristic(**kwargs)
        before = kwargs["cur_len"] - 1 - kwargs["decoder_prompt_len"]  # tokens generated before this step
        best = self._glm_best_candidate / (max(before, 1) ** kwargs["length_penalty"])
        finished = kwargs["is_sent_finished"]
        worst = torch.where(finished, torch.min(kwargs["beam_scores"], dim=1, keepdim=True)[0], -1.0e9)
        return kwargs["is_early_stop_heuristic_unsatisfied"] & torch.any(best > worst, dim=-1, keepdim=True)


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _flat_past(past: Any) -> list[Any] | None:
    """``L`` ``(key, value)`` pairs (or a flat ``2L`` sequence) -> a flat list; ``None`` stays ``None``."""
    if past is None:
        return None
    flat: list[Any] = []
    for item in past:
        if isinstance(item, (tuple, list)):
            flat.extend(item)
        else:
            flat.append(item)
    return flat


def _warn_on_foreign_config(model_dir: Path) -> None:
    path = model_dir / "config.json"
    if not path.is_file():
        return
    try:
        model_type = json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if model_type != MODEL_TYPE:
        logger.warning(
            "%s: model_type %r is not %r; ignored (the model is read from %s)",
            path,
            model_type,
            MODEL_TYPE,
            CONFIG_FILE,
        )
