"""ChatGLM fidelity: our ChatGLMModel versus the hub remote code, fp32 logits on a tiny random hub-layout checkpoint.

The remote code (``modeling_chatglm.py`` + ``configuration_chatglm.py`` of ChatGLM-6B's final v1 revision) is the
user's own copy, passed with ``--remote-code DIR``; nothing of it is copied into the project. Where ``transformers``
is missing, the few names the remote code imports are stubbed here (plain nn.Module / dict stand-ins: the forward
pass uses none of their behaviour).

One tiny config with the real key names and config fields is saved as a hub-layout directory (fp16
``pytorch_model-0000N-of-0000M.bin`` shards + ``pytorch_model.bin.index.json``, ``rotary_emb.inv_freq`` buffers
included), loaded with ``glm_core.load_model`` and into the remote ``ChatGLMForConditionalGeneration`` (then
``.float()``), and compared on:

- ``prefill_mixed_context``: a batch whose rows have different context lengths (``sep`` = index of ``<sop>``);
  the remote code builds its own masks and positions from the ids;
- ``prefill_mask_row``: a ``[MASK]`` mid-text row (no ``[gMASK]``: the position is the ``[MASK]``'s) beside a
  ``[gMASK]`` row;
- ``prefill_left_padded``: a left-padded batch with the tokenizer's padded masks and positions (pads masked as rows
  and columns, position 0); non-pad positions compared; our side takes the same mask as an explicit
  ``attention_mask``;
- ``decode_mixed_context`` / ``decode_left_padded``: cached decode steps after those prefills, greedy tokens fed back.

Each figure is ``max |ours - remote| / max |remote|`` over the compared logits. Prints one JSON object.

``--dtype fp16`` runs both models in fp16 instead (the remote code's ``.half()``), where the fp16 rotary angles and
the layer scaling matter most.

    python -m benchmarks.chatglm_fidelity --remote-code /path/to/chatglm-6b [--steps 4] [--seed 0] [--dtype fp16]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

from benchmarks.common import machine_info

MASK, GMASK, SMASK, SOP, EOP, PAD = 190, 191, 192, 194, 195, 3
VOCAB = 200


def tiny_config() -> dict[str, Any]:
    """The hub config.json's fields and names, tiny sizes, special ids inside the small vocabulary."""
    return {
        "architectures": ["ChatGLMModel"],
        "model_type": "chatglm",
        "bos_token_id": SOP,
        "eos_token_id": EOP,
        "mask_token_id": MASK,
        "gmask_token_id": GMASK,
        "pad_token_id": PAD,
        "hidden_size": 64,
        "inner_hidden_size": 96,
        "layernorm_epsilon": 1e-05,
        "max_sequence_length": 128,
        "num_attention_heads": 4,
        "num_layers": 3,
        "position_encoding_2d": True,
        "quantization_bit": 0,
        "pre_seq_len": None,
        "prefix_projection": False,
        "torch_dtype": "float16",
        "use_cache": True,
        "vocab_size": VOCAB,
    }


# ------------------------------------------------------------------------------------------- transformers stub
def install_transformers_stub() -> None:
    """Just the names modeling_chatglm.py / configuration_chatglm.py import, when transformers is not installed."""
    import logging

    import torch

    def passthrough(*_a: Any, **_k: Any) -> Any:
        return lambda f: f

    class PretrainedConfig:
        def __init__(self, **kwargs: Any) -> None:
            self.output_attentions = False
            self.output_hidden_states = False
            self.use_return_dict = True
            for key, value in kwargs.items():
                setattr(self, key, value)

    class PreTrainedModel(torch.nn.Module):
        def __init__(self, config: Any, *_a: Any, **_k: Any) -> None:
            super().__init__()
            self.config = config

    class ModelOutput(dict):
        def __getattr__(self, name: str) -> Any:
            try:
                return self[name]
            except KeyError:
                raise AttributeError(name) from None

        def __getitem__(self, key: Any) -> Any:
            if isinstance(key, int):
                return [v for v in self.values() if v is not None][key]
            return dict.__getitem__(self, key)

    def output(**fields: Any) -> ModelOutput:
        return ModelOutput(**fields)

    class LoggerModule(types.ModuleType):
        @staticmethod
        def get_logger(name: str) -> logging.Logger:
            return logging.getLogger(name)

    mods = {
        name: types.ModuleType(name)
        for name in (
            "transformers",
            "transformers.utils",
            "transformers.modeling_outputs",
            "transformers.modeling_utils",
            "transformers.configuration_utils",
            "transformers.generation",
            "transformers.generation.logits_process",
            "transformers.generation.utils",
        )
    }
    utils = mods["transformers.utils"]
    utils.add_code_sample_docstrings = passthrough
    utils.add_start_docstrings = passthrough
    utils.add_start_docstrings_to_model_forward = passthrough
    utils.logging = LoggerModule("transformers.utils.logging")
    for name in ("BaseModelOutputWithPast", "CausalLMOutputWithPast", "BaseModelOutputWithPastAndCrossAttentions"):
        setattr(mods["transformers.modeling_outputs"], name, output)
    mods["transformers.modeling_utils"].PreTrainedModel = PreTrainedModel
    mods["transformers.configuration_utils"].PretrainedConfig = PretrainedConfig
    mods["transformers.generation.logits_process"].LogitsProcessor = object
    gen_utils = mods["transformers.generation.utils"]
    gen_utils.LogitsProcessorList = list
    gen_utils.StoppingCriteriaList = list
    gen_utils.GenerationConfig = dict
    gen_utils.ModelOutput = ModelOutput
    sys.modules.update(mods)


def load_remote(directory: Path) -> types.ModuleType:
    """Import DIR/modeling_chatglm.py as a package module (it imports ``.configuration_chatglm``)."""
    for name in ("modeling_chatglm.py", "configuration_chatglm.py"):
        if not (directory / name).is_file():
            raise SystemExit(f"error: {directory / name}: not found; expected the ChatGLM-6B remote code directory")
    try:
        import transformers  # noqa: F401
    except ImportError:
        install_transformers_stub()
    pkg = types.ModuleType("chatglm_remote")
    pkg.__path__ = [str(directory)]
    sys.modules["chatglm_remote"] = pkg
    spec = importlib.util.spec_from_file_location("chatglm_remote.modeling_chatglm", directory / "modeling_chatglm.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# --------------------------------------------------------------------------------------------- checkpoint
def write_hub_dir(directory: Path, config: dict[str, Any], seed: int, shards: int = 2) -> None:
    """Random weights under the hub's key names, fp16, sharded .bin files + index, with inv_freq buffers."""
    import torch

    from glm_core.chatglm import rotary_inv_freq

    g = torch.Generator().manual_seed(seed)
    h, f, V, L = config["hidden_size"], config["inner_hidden_size"], config["vocab_size"], config["num_layers"]
    head_dim = h // config["num_attention_heads"]

    def rnd(*shape: int, std: float = 0.1, mean: float = 0.0) -> torch.Tensor:
        return (mean + std * torch.randn(*shape, generator=g)).half()

    state: dict[str, torch.Tensor] = {"transformer.word_embeddings.weight": rnd(V, h, std=1.0)}
    for i in range(L):
        p = f"transformer.layers.{i}."
        state.update(
            {
                p + "input_layernorm.weight": rnd(h, mean=1.0),
                p + "input_layernorm.bias": rnd(h),
                p + "attention.query_key_value.weight": rnd(3 * h, h, std=0.3),
                p + "attention.query_key_value.bias": rnd(3 * h),
                p + "attention.rotary_emb.inv_freq": rotary_inv_freq(head_dim // 2),
                p + "attention.dense.weight": rnd(h, h),
                p + "attention.dense.bias": rnd(h),
                p + "post_attention_layernorm.weight": rnd(h, mean=1.0),
                p + "post_attention_layernorm.bias": rnd(h),
                p + "mlp.dense_h_to_4h.weight": rnd(f, h),
                p + "mlp.dense_h_to_4h.bias": rnd(f),
                p + "mlp.dense_4h_to_h.weight": rnd(h, f),
                p + "mlp.dense_4h_to_h.bias": rnd(h),
            }
        )
    state["transformer.final_layernorm.weight"] = rnd(h, mean=1.0)
    state["transformer.final_layernorm.bias"] = rnd(h)
    state["lm_head.weight"] = rnd(V, h, std=0.3)
    keys = list(state)
    per = -(-len(keys) // shards)
    weight_map = {}
    for n in range(shards):
        name = f"pytorch_model-{n + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[n * per : (n + 1) * per]}
        torch.save(part, directory / name)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


# ------------------------------------------------------------------------------------------------ inputs
def layout(ids: list[int]) -> tuple[list[int], list[int], int]:
    """The ChatGLM rule: sep = index of <sop>; positions 0.. then the mask's; blocks 0 then 1, 2, ..."""
    sep = ids.index(SOP)
    mask_tok = GMASK if GMASK in ids else MASK
    mask_pos = ids.index(mask_tok)
    positions = [i if i < sep else mask_pos for i in range(len(ids))]
    blocks = [0 if i < sep else i - sep + 1 for i in range(len(ids))]
    return positions, blocks, sep


def rel(ours: Any, ref: Any) -> float:
    ours, ref = ours.double(), ref.double()
    return float((ours - ref).abs().max() / ref.abs().max())


def run(remote_dir: Path, steps: int, seed: int, dtype: str = "fp32") -> dict[str, Any]:
    import torch

    from glm_core import load_model

    torch.manual_seed(seed)
    remote = load_remote(remote_dir)
    cfg = tiny_config()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp)
        write_hub_dir(ckpt, cfg, seed)
        ours = load_model(ckpt, dtype=dtype)  # the checkpoint is fp16; fp32 is the fidelity target
        ref_cfg = remote.ChatGLMConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
        theirs = remote.ChatGLMForConditionalGeneration(ref_cfg, empty_init=False)
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(ckpt.glob("pytorch_model-*.bin")):
            state.update(torch.load(shard, weights_only=True))
        missing, unexpected = theirs.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise SystemExit(f"error: key names differ from the remote model: {missing} {unexpected}")
        ours_keys = set(ours.state_dict())
        hub_keys = {k for k in state if not k.endswith("rotary_emb.inv_freq")}
        if ours_keys != hub_keys:
            raise SystemExit(f"error: our key names differ from the hub's: {sorted(ours_keys ^ hub_keys)}")
        theirs = (theirs.float() if dtype == "fp32" else theirs.half()).eval()

        g = torch.Generator().manual_seed(seed + 1)

        def text(n: int) -> list[int]:
            return torch.randint(5, 180, (n,), generator=g).tolist()

        def remote_fwd(ids: Any, **kw: Any) -> Any:
            out = theirs(
                input_ids=ids,
                use_cache=True,
                return_dict=True,
                output_attentions=False,
                output_hidden_states=False,
                **kw,
            )
            return out["logits"], out["past_key_values"]

        with torch.no_grad():
            # 1. prefill, mixed context lengths (same total length, no padding) + cached decode
            rows = [text(9) + [GMASK, SOP] + text(5), text(4) + [GMASK, SOP] + text(10), text(13) + [GMASK, SOP, 7]]
            ids = torch.tensor(rows)
            lay = [layout(r) for r in rows]
            pos = torch.tensor([[p, b] for p, b, _ in lay])
            sep = torch.tensor([s for _, _, s in lay])
            ref_logits, ref_past = remote_fwd(ids)  # the remote code derives masks and positions from the ids
            out = ours(ids, pos, sep=sep)
            results["prefill_mixed_context"] = rel(out.logits, ref_logits)
            past, seqs, worst = out.past_key_values, [list(r) for r in rows], 0.0
            for _ in range(steps):
                nxt = ref_logits[:, -1].argmax(-1)
                for s, t in zip(seqs, nxt.tolist(), strict=True):
                    s.append(t)
                full = torch.tensor(seqs)
                ref_logits, ref_past = remote_fwd(full[:, -1:], past_key_values=ref_past, **_remote_decode_pos(seqs))
                step_pos = torch.tensor([[[layout(s)[0][-1]], [len(s) - layout(s)[2]]] for s in seqs])
                out = ours(full[:, -1:], step_pos, sep=0, past_key_values=past)
                past = out.past_key_values
                worst = max(worst, rel(out.logits, ref_logits))
            results["decode_mixed_context"] = worst

            # 2. a [MASK] mid-text row (no [gMASK]) beside a [gMASK] row
            rows = [text(3) + [MASK] + text(5) + [SOP] + text(4), text(6) + [GMASK, SOP] + text(6)]
            ids = torch.tensor(rows)
            lay = [layout(r) for r in rows]
            ref_logits, _ = remote_fwd(ids)
            out = ours(ids, torch.tensor([[p, b] for p, b, _ in lay]), sep=torch.tensor([s for *_, s in lay]))
            results["prefill_mask_row"] = rel(out.logits, ref_logits)

            # 3. left-padded batch: the tokenizer's padded mask (True = masked) and positions (pads at 0)
            raw = [text(3) + [GMASK, SOP] + text(2), text(8) + [GMASK, SOP] + text(5), text(5) + [GMASK, SOP]]
            width = max(len(r) for r in raw)
            ids_rows, pos_rows, masks = [], [], []
            for r in raw:
                d = width - len(r)
                p, b, s = layout(r)
                m = torch.ones(len(r), len(r)).tril()
                m[:, :s] = 1
                full_m = torch.zeros(width, width)
                full_m[d:, d:] = m
                ids_rows.append([PAD] * d + r)
                pos_rows.append([[0] * d + p, [0] * d + b])
                masks.append(full_m)
            ids = torch.tensor(ids_rows)
            pos = torch.tensor(pos_rows)
            visible = torch.stack(masks)[:, None]  # [B, 1, S, S], 1 = visible
            real = ids != PAD
            ref_logits, ref_past = remote_fwd(ids, position_ids=pos, attention_mask=visible < 0.5)
            out = ours(ids, pos, attention_mask=visible)
            results["prefill_left_padded"] = rel(out.logits[real], ref_logits[real])
            past, seqs, worst = out.past_key_values, [list(r) for r in ids_rows], 0.0
            cur_pos, vis = pos, visible
            for _ in range(steps):
                nxt = ref_logits[:, -1].argmax(-1)
                for s, t in zip(seqs, nxt.tolist(), strict=True):
                    s.append(t)
                new_pos = cur_pos[..., -1:].clone()
                new_pos[:, 1] += 1
                cur_pos = torch.cat([cur_pos, new_pos], dim=-1)
                row = torch.cat([vis[:, :, -1:], torch.ones(len(seqs), 1, 1, 1)], dim=-1)  # pads stay hidden
                vis = torch.cat([torch.cat([vis, torch.zeros(*vis.shape[:3], 1)], dim=-1), row], dim=2)
                last = torch.tensor([[s[-1]] for s in seqs])
                ref_logits, ref_past = remote_fwd(
                    last, past_key_values=ref_past, position_ids=new_pos, attention_mask=vis[:, :, -1:] < 0.5
                )
                out = ours(last, new_pos, attention_mask=vis[:, :, -1:], past_key_values=past)
                past = out.past_key_values
                worst = max(worst, rel(out.logits, ref_logits))
            results["decode_left_padded"] = worst
    return results


def _remote_decode_pos(seqs: list[list[int]]) -> dict[str, Any]:
    """The remote code's own decode positions (``prepare_inputs_for_generation``): (mask position, t - context)."""
    import torch

    pos = [[layout(s)[0][-1], len(s) - s.index(SOP)] for s in seqs]
    return {"position_ids": torch.tensor(pos)[..., None]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--remote-code", required=True, type=Path, help="directory holding modeling_chatglm.py")
    parser.add_argument("--steps", type=int, default=4, help="cached decode steps after each prefill")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="both models' compute dtype")
    args = parser.parse_args()
    import torch

    figures = run(args.remote_code, args.steps, args.seed, args.dtype)
    report = {
        "benchmark": "chatglm_fidelity",
        "metric": f"max |ours - remote| / max |remote| over the logits, both models in {args.dtype}",
        "target": 1e-5,
        "config": {k: tiny_config()[k] for k in ("num_layers", "hidden_size", "num_attention_heads", "vocab_size")},
        "results": figures,
        "within_target": all(v <= 1e-5 for v in figures.values()),
        "torch": torch.__version__,
        "machine": machine_info(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
