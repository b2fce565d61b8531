"""The export wrapper: GLM as one flat ONNX graph that builds its own attention mask.

Signature (spec onnx_export §6, DESIGN.md step contract)::

    input_ids [B,S] int64, position_ids [B,2,S] int64, sep [B] int64,
    past_key_values.{i}.key / .value [B,H,P,D]          (P may be 0: the same graph serves prefill and decode)
    -> logits [B,S,V] float32, present.{i}.key / .value [B,H,P+S,D]

Inside: the visibility rule ``j < P or j-P < sep or j-P <= t`` (chunk-relative ``sep``, spec glm_reference §2.1)
is built once from ``sep`` and the past length and added to every layer's scores as an additive bias with
``finfo(dtype).min`` (spec onnx_export §3.1: the additive form is what onnxscript's MHA fusion recognises; never
``-inf``, §3.4-3). K is scaled by ``1/sqrt(d)`` before ``QKᵀ`` (spec glm_reference §1.3). The tied LM head is untied
into its own ``[h, V]`` constant so quantizers see a plain ``MatMul`` weight (spec onnx_export §6 pitfall 7).

The wrapper owns no copy of the model's weights except that head; it calls the model's own submodules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glm_core.model import GLMModel, visibility_mask

DEFAULT_OPSET = 20  # spec onnx_export §1.4: torch 2.13's default; standard Gelu(tanh) and LayerNormalization
MIN_OPSET = 18  # torchlib's base opset; lower asks for the version converter (spec §1.4)
MAX_OPSET = 23  # torch 2.13 ONNX_MAX_OPSET

# Example shapes for tracing: B>=2, S>=2, P>=1 so no dim is specialised to 0/1 (spec §3.3, pytorch #151582).
EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_PAST = 2, 8, 4
# Upper bounds of the named dims; the past may be empty (prefill).
MAX_BATCH, MAX_SEQ, MAX_PAST = 1024, 8192, 65536


KV_CACHE_LAYOUTS = ("concat", "buffer")
PAST_LENGTH = "past_length"  # buffer layout: the write position = valid rows of the buffers (int64 scalar)


@dataclass(frozen=True)
class GraphNames:
    """Input and output names of the exported graph, in order.

    ``kv_cache="buffer"`` adds the ``past_length`` input; its ``present.*`` outputs hold only the chunk's rows.
    """

    num_layers: int
    kv_cache: str = "concat"

    @property
    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]

    @property
    def present_names(self) -> list[str]:
        return [f"present.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]

    @property
    def inputs(self) -> list[str]:
        extra = [PAST_LENGTH] if self.kv_cache == "buffer" else []
        return ["input_ids", "position_ids", "sep", *extra, *self.past_names]

    @property
    def outputs(self) -> list[str]:
        return ["logits", *self.present_names]


def rule_visibility(sep: torch.Tensor, query_len: int, past_len: int, rule: str = "glm") -> torch.Tensor:
    """Boolean ``[B, 1, S, P+S]``: the GLM rule (glm_core.model.visibility_mask), or with ``rule="causal"`` a plain
    causal mask (``j-P <= t``, ``sep`` ignored) that benchmarks/onnx_cpu.py exports to measure the GLM rule's cost."""
    if rule == "glm":
        return visibility_mask(sep, query_len, past_len)
    keys = torch.arange(past_len + query_len, device=sep.device) - past_len
    causal = keys[None, :] <= torch.arange(query_len, device=sep.device)[:, None]  # [S, P+S]
    return causal.expand(sep.shape[0], 1, query_len, past_len + query_len)


def additive_mask(
    sep: torch.Tensor,
    query_len: torch.Tensor | int,
    past_len: torch.Tensor | int,
    dtype: torch.dtype,
    rule: str = "glm",
) -> torch.Tensor:
    """Additive bias ``[B, 1, S, P+S]``: 0 where key ``j`` is visible to query ``t``, ``finfo(dtype).min`` elsewhere.

    spec glm_reference §2.1 / DESIGN.md: visible iff ``j < P or j-P < sep[b] or j-P <= t``; ``j-P <= t`` already
    covers every past column, so the rule is two comparisons and an ``Or`` (spec onnx_export §3.1).
    """
    return _additive(rule_visibility(sep, query_len, past_len, rule), dtype)  # [B, 1, S, P+S]


def _additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    zero = torch.zeros((), dtype=dtype, device=visible.device)
    neg = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=visible.device)  # spec §3.4-3: never -inf
    return torch.where(visible, zero, neg)


def buffer_visibility(
    sep: torch.Tensor, query_len: int, window: int, past_length: torch.Tensor, rule: str = "glm"
) -> torch.Tensor:
    """Boolean ``[B, 1, S, W+S]`` of the buffer layout: buffer column ``j < W`` is visible iff it was written
    (``j < past_length``), the chunk's own columns follow the GLM rule with ``P = 0`` (``j < sep or j <= t``)."""
    B = sep.shape[0]
    written = torch.arange(window, device=sep.device) < past_length  # [W]
    own = rule_visibility(sep, query_len, 0, rule)  # [B, 1, S, S]
    return torch.cat([written.expand(B, 1, query_len, window), own], dim=-1)


def buffer_additive_mask(
    sep: torch.Tensor, query_len: int, window: int, past_length: torch.Tensor, dtype: torch.dtype, rule: str = "glm"
) -> torch.Tensor:
    """Additive bias ``[B, 1, S, W+S]`` of :func:`buffer_visibility`."""
    return _additive(buffer_visibility(sep, query_len, window, past_length, rule), dtype)


class GLMExportModule(nn.Module):
    """GLM's forward with a flat, named K/V-cache signature, for ``torch.onnx.export(dynamo=True)``."""

    def __init__(
        self, model: GLMModel, untie_head: bool = True, kv_cache: str = "concat", mask_rule: str = "glm"
    ) -> None:
        """``kv_cache``: ``concat`` (``present = Concat(past, new)``) or ``buffer`` (the past is a fixed-capacity
        buffer with ``past_length`` valid rows; the presents are the chunk's rows, written by the caller).
        ``mask_rule="causal"`` ignores ``sep`` (a plain causal mask; benchmarks measure the GLM rule's cost with it).
        """
        super().__init__()
        if kv_cache not in KV_CACHE_LAYOUTS:
            raise ValueError(f"kv_cache must be one of {KV_CACHE_LAYOUTS}, got {kv_cache!r}")
        self.kv_cache = kv_cache
        self.mask_rule = mask_rule
        self.model = model.eval()
        config = model.config
        self.num_layers = config.num_layers
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        # spec glm_reference §1.4 / §9: tanh or erf GeLU as the model computes it, written so that opset 20 gets one
        # standard Gelu node (approximate="tanh" or "none") instead of an elementwise decomposition
        self.gelu_approximate = "tanh" if config.gelu == "tanh" else "none"
        self.untie_head = untie_head
        if untie_head:
            # spec onnx_export §6: its own [h, V] constant -> MatMul(hidden, lm_head) with an initializer weight
            head = model.word_embeddings.weight.detach().t().contiguous()  # [h, V]
            self.register_buffer("lm_head", head, persistent=False)
        self.train(False)

    @property
    def names(self) -> GraphNames:
        return GraphNames(self.num_layers, self.kv_cache)

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, S] int64
        position_ids: torch.Tensor,  # [B, 2, S] int64
        sep: torch.Tensor,  # [B] int64
        *rest: torch.Tensor,  # concat: 2L tensors [B, H, P, D] (key_0, value_0, ...); buffer: past_length, 2L [B,H,W,D]
    ) -> tuple[torch.Tensor, ...]:
        model = self.model
        stack = model.transformer
        query_len = input_ids.shape[1]
        weight = model.word_embeddings.weight
        if self.kv_cache == "buffer":
            past_length, past = rest[0], rest[1:]
            window = past[0].shape[2]
            bias = buffer_additive_mask(sep, query_len, window, past_length, weight.dtype, self.mask_rule)
        else:
            past = rest
            bias = additive_mask(sep, query_len, past[0].shape[2], weight.dtype, self.mask_rule)  # [B,1,S,P+S], once

        # spec glm_reference §1.2 step 1: word + position + block-position embeddings
        x = (
            model.word_embeddings(input_ids)
            + stack.position_embeddings(position_ids[:, 0])
            + stack.block_position_embeddings(position_ids[:, 1])
        )  # [B, S, h]
        presents: list[torch.Tensor] = []
        for i, layer in enumerate(stack.layers):
            attn_out, key, value = self._attention(
                layer.attention, layer.input_layernorm(x), bias, past[2 * i], past[2 * i + 1]
            )
            presents += [key, value]
            x = x + attn_out
            mlp = layer.mlp
            hidden = F.gelu(mlp.dense_h_to_4h(layer.post_attention_layernorm(x)), approximate=self.gelu_approximate)
            x = x + mlp.dense_4h_to_h(hidden)  # [B, S, h]
        hidden = stack.final_layernorm(x)  # [B, S, h]
        if self.untie_head:
            logits = torch.matmul(hidden, self.lm_head)  # [B, S, V]
        else:
            logits = F.linear(hidden, weight)
        return (logits.float(), *presents)

    def _attention(
        self,
        attn: nn.Module,
        x: torch.Tensor,  # [B, S, h], input-LayerNormed
        bias: torch.Tensor,  # [B, 1, S, P+S]
        past_key: torch.Tensor,  # [B, H, P, D]
        past_value: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, S, h = x.shape
        q, k, v = attn.query_key_value(x).chunk(3, dim=-1)  # each [B, S, h] (spec §1.3: Q | K | V)
        q = q.view(B, S, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, S, D]
        k = k.view(B, S, self.num_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, S, self.num_heads, self.head_dim).transpose(1, 2)
        # 1/sqrt(d) scales Q (S rows), not the P+S rows of K: the same product, and the pattern onnxscript fuses
        # into MultiHeadAttention with past/present (``--optimize ort``)
        q = q * (1.0 / math.sqrt(self.head_dim))
        if self.kv_cache == "buffer":
            ctx = buffer_attention(q, k, v, past_key, past_value, bias)
            return attn.dense(ctx.transpose(1, 2).reshape(B, S, h)), k, v
        key = torch.cat([past_key, k], dim=2)  # [B, H, P+S, D]
        value = torch.cat([past_value, v], dim=2)
        scores = torch.matmul(q, key.transpose(-1, -2)) + bias  # [B, H, S, P+S]
        probs = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, value).transpose(1, 2).reshape(B, S, h)  # [B, S, h]
        return attn.dense(ctx), key, value

    # ------------------------------------------------------------------ export arguments
    def example_arguments(self) -> tuple[torch.Tensor, ...]:
        """(B=2, S=8, P=4) with different seps per row (spec onnx_export §6); the buffer layout's window holds
        P + 2 rows, 3 of them written."""
        ids, pos, sep, *past = self._example_concat()
        if self.kv_cache == "concat":
            return (ids, pos, sep, *past)
        B, H, P, D = past[0].shape
        window = [torch.zeros((B, H, P + 2, D), dtype=past[0].dtype) for _ in past]
        return (ids, pos, sep, torch.tensor(P - 1, dtype=torch.long), *window)

    def _example_concat(self) -> tuple[torch.Tensor, ...]:
        """(B=2, S=8, P=4) with different seps per row (spec onnx_export §6)."""
        config = self.model.config
        weight = self.model.word_embeddings.weight
        B, S, P = EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_PAST
        gen = torch.Generator().manual_seed(0)
        input_ids = torch.randint(0, config.vocab_size, (B, S), generator=gen)
        pos = torch.arange(P, P + S).expand(B, S)
        position_ids = torch.stack([pos, torch.zeros_like(pos)], dim=1).contiguous()  # [B, 2, S]
        sep = torch.tensor([3, 0][:B], dtype=torch.long)
        shape = (B, self.num_heads, P, self.head_dim)
        past = [torch.zeros(shape, dtype=weight.dtype) for _ in range(2 * self.num_layers)]
        return (input_ids, position_ids, sep, *past)

    def dynamic_shapes(self) -> tuple[object, ...]:
        """Named dims ``batch``, ``seq``, ``past`` (past may be 0); varargs past is one tuple (spec §3.4-2)."""
        Dim = torch.export.Dim
        batch = Dim("batch", min=1, max=MAX_BATCH)
        seq = Dim("seq", min=1, max=MAX_SEQ)
        past = Dim("past", min=0, max=MAX_PAST)
        past_shapes = tuple({0: batch, 2: past} for _ in range(2 * self.num_layers))
        if self.kv_cache == "buffer":
            past_shapes = (None, *past_shapes)  # past_length: a scalar
        return ({0: batch, 1: seq}, {0: batch, 2: seq}, {0: batch}, past_shapes)


def buffer_attention(
    q: torch.Tensor,  # [B, H, S, D], already scaled by 1/sqrt(D)
    k: torch.Tensor,  # [B, H, S, D]: the chunk's rows
    v: torch.Tensor,
    buffer_key: torch.Tensor,  # [B, H, W, D]: the cache buffer's window (rows >= past_length are masked)
    buffer_value: torch.Tensor,
    bias: torch.Tensor,  # [B, 1, S, W+S]
) -> torch.Tensor:
    """Attention over the buffer and the chunk without concatenating them: scores against each, one softmax over
    both, then ``probs_buffer·V_buffer + probs_chunk·V_chunk``. Nothing of size W is written, only read."""
    window = buffer_key.shape[2]
    scores = torch.cat([torch.matmul(q, buffer_key.transpose(-1, -2)), torch.matmul(q, k.transpose(-1, -2))], -1)
    probs = torch.softmax(scores + bias, dim=-1)  # [B, H, S, W+S]
    return torch.matmul(probs[..., :window], buffer_value) + torch.matmul(probs[..., window:], v)  # [B, H, S, D]


def export_program(
    module: GLMExportModule,
    opset: int = DEFAULT_OPSET,
    example: tuple[torch.Tensor, ...] | None = None,
    optimize: bool = True,
) -> torch.onnx.ONNXProgram:
    """Trace with the dynamo exporter (spec onnx_export §0.1) and return the in-memory ONNX program.

    ``example``: the traced arguments (default ``module.example_arguments()``; the weightless trace passes them on
    the meta device). ``optimize``: the exporter's own graph optimisation (off for the weightless trace, whose
    initializers are placeholders that must not be folded).
    """
    names = module.names
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            module.example_arguments() if example is None else example,
            dynamo=True,
            opset_version=opset,
            input_names=names.inputs,
            output_names=names.outputs,
            dynamic_shapes=module.dynamic_shapes(),
            optimize=optimize,
            verbose=False,
        )
    if program is None:  # pragma: no cover - dynamo export always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    return program


def release_exporter_caches() -> int:
    """Drop the last exported graph that onnxscript's rewrite rules keep alive; returns how many were cleared.

    onnxscript 0.7's module-level rewrite rules keep a reference to the last graph they matched (their
    ``SimplePatternMatcher._graph``), and through it to every exported weight: the traced model's memory then
    outlives the export (measured: glm-large's 1.5 GB stayed resident). Clearing it lets the weights go.
    """
    import gc

    cleared = 0
    for obj in gc.get_objects():
        module = getattr(type(obj), "__module__", None)
        if not (isinstance(module, str) and module.startswith("onnxscript.rewriter")):
            continue
        if getattr(obj, "_graph", None) is not None:
            for attr in ("_graph", "_current_node", "_match"):
                if hasattr(obj, attr):
                    setattr(obj, attr, None)
            cleared += 1
    gc.collect()
    return cleared


def describe_kv_cache(glm_config: dict, kv_cache: str) -> dict:
    """Record the cache layout in ``glm_config.json`` (``kv_cache``); the buffer layout's I/O differs from concat's:
    a ``past_length`` input, past tensors that are the buffer's window, presents that hold the chunk's rows."""
    glm_config["kv_cache"] = kv_cache
    if kv_cache != "buffer":
        return glm_config
    position = next(i for i, e in enumerate(glm_config["inputs"]) if e["name"] == "sep") + 1
    glm_config["inputs"].insert(position, {"name": PAST_LENGTH, "dtype": "int64", "shape": []})
    for entry in glm_config["outputs"]:
        if entry["name"].startswith("present."):
            entry["shape"] = [*entry["shape"][:2], "seq", entry["shape"][3]]
    glm_config["dims"]["past"] = (
        "rows of the cache buffers passed in (>= past_length; the rows from past_length on are masked)"
    )
    glm_config["dims"][PAST_LENGTH] = "valid rows of the buffer = the write position of this chunk's rows"
    return glm_config
