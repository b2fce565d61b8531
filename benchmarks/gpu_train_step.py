"""GLM training step on one device, in the variants that make it fast: eager, Triton kernels, compiled, compiled with
the best attention backend, and the latter sharded with FSDP2 (on one GPU: what sharding costs with no one to share).

GLM-Large dimensions (24 x 1024, 16 heads, vocab 30592), batch 32 x 512, bf16 autocast on fp32 master weights,
dropout on, the project's own step: batches from the pretraining sampler (glm-tiny's tokenizer on the synthetic
corpus: real Part A / Part B layouts, mixed objectives), checked on the host, Part-B rows from the batch
(:func:`training.tasks.host_checked`), AdamW from :func:`training.loop.build_optimizer` (fused on CUDA), regional
``torch.compile`` (:func:`training.options.compile_layers`), FSDP2 through :func:`training.distributed.wrap_model`.

Tokens/s and MFU two ways against the card's dense bf16 peak:

- ``mfu_6n``: the usual convention, ``6·N + 12·L·h·T`` FLOPs per token (N = all parameters);
- ``mfu_executed``: the FLOPs the step executes: ``3 x`` (forward) where the forward is ``2·12h²`` per token and layer
  (the four linears), ``4·h`` per visible (query, key) pair and layer (attention scores and values over the pairs the
  mask leaves visible), and ``2·h·V`` per Part-B row (the LM head runs on Part B only).

Each variant is timed after warm-up (compilation excluded), median of the timed steps. Used by
``python -m benchmarks.gpu_kernels``; runnable alone (``--smoke``: a tiny GLM on the CPU, every variant's code path):

    python -m benchmarks.gpu_train_step [--preset glm-large] [--batch 32] [--seq 512] [--steps 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

PEAK_BF16_TFLOPS = {"H100": 989.5, "H200": 989.5, "A100": 312.0}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way to run the step: fused-op setting, attention backend, regional compile, FSDP2 (one process)."""

    kernels: str
    attention: str
    compile: bool = False
    fsdp: bool = False


# "best" attention: the backend the attention section measured fastest with dropout at this T (default: auto)
VARIANTS = {
    "eager": Variant("torch", "math"),
    "triton": Variant("triton", "auto"),  # every fused kernel, LayerNorm and bias-GeLU included
    "compile": Variant("torch", "math", compile=True),
    "compile_best": Variant("auto", "best", compile=True),
    "fsdp2_compile_best": Variant("auto", "best", compile=True, fsdp=True),
}
DEFAULT_ENGINES = tuple(VARIANTS)


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def sampler_batches(config: Any, batch: int, seq: int, count: int) -> list[dict[str, Any]]:
    """``count`` micro-batches of ``batch x seq`` from the pretraining sampler (token, sentence and document
    objectives mixed) on the synthetic corpus, host-side numpy as the training loop gets them."""
    from glm_core.checkpoint import SHIPPED_PRESETS
    from glm_core.tokenizer import GLMTokenizer
    from training.corpus import write_corpus
    from training.data import read_corpus, sentence_end_ids, tokenize_documents
    from training.sampler import MaskingConfig, PretrainSampler
    from training.tasks import PretrainTask

    tokenizer = GLMTokenizer.from_pretrained(SHIPPED_PRESETS["glm-tiny"])
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"glm-tiny's tokenizer ({tokenizer.vocab_size} ids) does not fit vocab {config.vocab_size}")
    with tempfile.TemporaryDirectory() as tmp:
        documents = max(200, batch * seq * count // 40)  # ~80 tokens a document; the sampler wraps around
        corpus = write_corpus(str(Path(tmp) / "corpus.txt"), num_documents=documents)
        stream = tokenize_documents(read_corpus(corpus), tokenizer)
    masking = MaskingConfig(bert_prob=0.5, gap_sentence_prob=0.25)
    sampler = PretrainSampler(
        stream, tokenizer.special, seq, masking, seed=0, sentence_ends=sentence_end_ids(tokenizer)
    )
    task = PretrainTask(sampler, batch, 1, 1)
    return [task.micro_batches(step, 0, 1)[0] for step in range(count)]


def executed_flops(config: Any, batch: dict[str, Any]) -> float:
    """FLOPs one fwd+bwd step executes on ``batch`` (module docstring): linears, visible attention pairs, Part-B head."""
    import numpy as np

    h, layers = config.hidden_size, config.num_layers
    sep = np.asarray(batch["sep"], dtype=np.int64)
    seq = np.asarray(batch["input_ids"]).shape[1]
    tokens = sep.size * seq
    t = np.arange(seq)
    visible = int(np.maximum(sep[:, None], t[None, :] + 1).sum())  # query t sees keys j < max(sep, t + 1)
    part_b_rows = int((np.asarray(batch["loss_mask"]) > 0).sum())
    forward = layers * (2 * 12 * h * h * tokens + 4 * h * visible) + 2 * h * config.vocab_size * part_b_rows
    return 3.0 * forward


def _process_group(device: Any) -> None:
    """A one-process group for FSDP2 (nccl on CUDA, gloo on the CPU), as torchrun would give one rank."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    store = Path(tempfile.mkdtemp()) / "store"
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)


def time_variant(
    name: str,
    config: Any,
    batches: list[dict[str, Any]],
    device: Any,
    steps: int,
    warmup: int,
    best_attention: str = "auto",
    precision: str = "bf16",
    compile_backend: str = "inductor",
) -> dict[str, Any]:
    import torch

    from glm_core.model import build_model
    from training.config import TrainConfig
    from training.distributed import DistContext, model_call, wrap_model
    from training.loop import build_optimizer
    from training.options import compile_layers
    from training.tasks import host_checked, part_b_loss

    variant = VARIANTS[name]
    attention = best_attention if variant.attention == "best" else variant.attention
    model = build_model(config, seed=0, kernels=variant.kernels, attention=attention).to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    if variant.compile:
        compile_layers(model, backend=compile_backend)
    ctx = DistContext(device=device)
    if variant.fsdp:
        _process_group(device)
    wrapped = wrap_model(model, ctx, variant.fsdp, precision)
    optimizer = build_optimizer(wrapped, TrainConfig(steps=steps + warmup, precision=precision))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    host = [host_checked(model, b) for b in batches]  # checked once on the host, as the loop does

    def one_step(i: int) -> torch.Tensor:
        batch = {k: v.to(device, non_blocking=True) for k, v in host[i % len(host)].items()}
        with autocast:
            loss = model_call(wrapped, part_b_loss, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(wrapped.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for i in range(warmup):
        one_step(i)
    sync()
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(steps):
        sync()
        start = time.perf_counter()
        losses.append(one_step(warmup + i))
        sync()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    batch_size, seq = host[0]["input_ids"].shape
    tokens = batch_size * seq
    flops_6n = (6 * n_params + 12 * config.num_layers * config.hidden_size * seq) * tokens
    flops_exec = statistics.mean(executed_flops(config, b) for b in batches)
    peak = peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    out = {
        "engine": name,
        "variant": dataclasses.asdict(variant) | {"attention": attention},
        "kernels_used": dict(model.kernels_used),
        "step_s_median": step_s,
        "step_s_spread": (max(times) - min(times)) / step_s,
        "tokens_per_s": tokens / step_s,
        "tflops_6n": flops_6n / step_s / 1e12,
        "tflops_executed": flops_exec / step_s / 1e12,
        "mfu_6n": flops_6n / step_s / 1e12 / peak if peak else None,
        "mfu_executed": flops_exec / step_s / 1e12 / peak if peak else None,
        "peak_tflops": peak,
        "warmup_s": warmup_s,
        "loss_first_last": [float(losses[0]), float(losses[-1])],
        "params": n_params,
        "optimizer": "fused" if optimizer.param_groups[0].get("fused") else "foreach",
    }
    out["mfu"] = out["mfu_6n"]  # the field earlier reports used
    if device.type == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def run(
    preset: str = "glm-large",
    batch: int = 32,
    seq: int = 512,
    steps: int = 20,
    warmup: int = 3,
    engines: tuple[str, ...] = DEFAULT_ENGINES,
    best_attention: str = "auto",
    config: Any = None,
    device: Any = None,
    compile_backend: str = "inductor",
) -> dict[str, Any]:
    """Every variant in ``engines`` on the same sampler batches; a failing variant is recorded, the rest go on."""
    import gc

    import torch
    import torch.distributed as dist

    from glm_core.config import GLMConfig

    device = device or torch.device("cuda")
    config = config or GLMConfig.from_preset(preset, gelu="tanh")
    batches = sampler_batches(config, batch, seq, 4)
    results: dict[str, Any] = {}
    for engine in engines:
        try:
            results[engine] = time_variant(
                engine, config, batches, device, steps, warmup, best_attention, compile_backend=compile_backend
            )
        except Exception as exc:  # record and go on: one failing variant must not hide the others
            results[engine] = {"engine": engine, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
        torch._dynamo.reset()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if dist.is_initialized():
        dist.destroy_process_group()
    base = results.get("eager", {}).get("tokens_per_s")
    for r in results.values():
        if base and "tokens_per_s" in r:
            r["speedup_vs_eager"] = r["tokens_per_s"] / base
    return {"preset": preset, "batch": batch, "seq": seq, "steps": steps, "compile_backend": compile_backend,
            "best_attention": best_attention, "results": results}  # fmt: skip


def smoke_config() -> Any:
    """A GLM small enough for the CPU (2 layers, h=128, d=64), glm-tiny's vocabulary."""
    from glm_core.config import GLMConfig

    return GLMConfig.from_preset("glm-tiny", num_layers=2, hidden_size=128, num_attention_heads=2,
                                 max_sequence_length=64)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="glm-large")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--engines", default=",".join(DEFAULT_ENGINES), help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--best-attention", default="auto", help="the attention of the *_best variants")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny GLM on the CPU, 2 steps, compiled by aot_eager: the code paths only",
    )
    args = parser.parse_args()
    if args.smoke:
        import torch

        os.environ.setdefault("OMP_NUM_THREADS", "2")
        out = run("glm-tiny", 2, 16, 2, 1, tuple(args.engines.split(",")), args.best_attention,
                  config=smoke_config(), device=torch.device("cpu"), compile_backend="aot_eager")  # fmt: skip
    else:
        out = run(args.preset, args.batch, args.seq, args.steps, args.warmup, tuple(args.engines.split(",")),
                  args.best_attention)  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
