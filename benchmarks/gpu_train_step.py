"""GLM training step on one GPU: fused Triton kernels versus eager and versus ``torch.compile``.

GLM-Large dimensions (24 x 1024, 16 heads, vocab 30592), batch 32 x 512, bf16 autocast, dropout on, AdamW(fused).
Tokens/s and MFU with FLOPs/token = 6·N + 12·L·h·T (N = all parameters; spec fused_ops §5.1) against the card's
dense bf16 peak. Each engine is timed on fresh inputs after warm-up (compilation excluded); the median step time of
the timed steps is reported. Used by ``python -m benchmarks.gpu_kernels``; runnable alone:

    python -m benchmarks.gpu_train_step [--preset glm-large] [--batch 32] [--seq 512] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

PEAK_BF16_TFLOPS = {"H100": 989.5, "H200": 989.5, "A100": 312.0}


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def make_batch(config: Any, batch: int, seq: int, device: Any, seed: int) -> dict[str, Any]:
    """Random GLM training batch: Part A of ~82% of the sequence (±10% per sample), loss on Part B only."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=g)
    frac = 0.82 + 0.1 * (torch.rand(batch, generator=g) - 0.5) * 2
    sep = (frac * seq).long().clamp(1, seq - 1)
    pos = torch.arange(seq).expand(batch, seq).clone()
    block = torch.zeros(batch, seq, dtype=torch.long)
    cols = torch.arange(seq)[None]
    part_b = cols >= sep[:, None]
    block[part_b] = (cols - sep[:, None] + 1)[part_b]
    pos = torch.where(part_b, sep[:, None] - 1, pos)  # Part B at its mask position (spec §3.1)
    targets = torch.roll(ids, -1, 1)
    return {
        "input_ids": ids.to(device),
        "position_ids": torch.stack([pos, block], 1).to(device),
        "sep": sep.to(device),
        "targets": targets.to(device),
        "loss_mask": part_b.float().to(device),
    }


def time_engine(engine: str, preset: str, batch: int, seq: int, steps: int, warmup: int) -> dict[str, Any]:
    import torch

    from glm_core.config import GLMConfig
    from glm_core.model import build_model

    device = torch.device("cuda")
    config = GLMConfig.from_preset(preset)
    kernels = "triton" if engine == "triton" else "torch"
    # the eager engines keep the reference attention (math), as the recorded eager figures did
    attention = "auto" if engine == "triton" else "math"
    model = build_model(config, seed=0, kernels=kernels, attention=attention).to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    loss_fn = model.loss
    if engine == "compile":
        loss_fn = torch.compile(model.loss)
    batches = [make_batch(config, batch, seq, device, seed) for seed in range(4)]

    def one_step(b: dict[str, Any]) -> float:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(b["input_ids"], b["position_ids"], b["sep"], b["targets"], b["loss_mask"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        return float(loss.detach())

    t0 = time.perf_counter()
    for i in range(warmup):
        one_step(batches[i % len(batches)])
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    times, losses = [], []
    torch.cuda.reset_peak_memory_stats()
    for i in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        losses.append(one_step(batches[i % len(batches)]))
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    step_s = statistics.median(times)
    tokens = batch * seq
    flops_per_token = 6 * n_params + 12 * config.num_layers * config.hidden_size * seq
    achieved = flops_per_token * tokens / step_s / 1e12
    peak = peak_tflops(torch.cuda.get_device_name())
    return {
        "engine": engine,
        "kernels_used": dict(model.kernels_used),
        "step_s_median": step_s,
        "tokens_per_s": tokens / step_s,
        "tflops": achieved,
        "mfu": achieved / peak if peak else None,
        "peak_tflops": peak,
        "warmup_s": warmup_s,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30,
        "loss_first_last": [losses[0], losses[-1]],
        "params": n_params,
    }


def run(
    preset: str = "glm-large",
    batch: int = 32,
    seq: int = 512,
    steps: int = 20,
    warmup: int = 3,
    engines: tuple[str, ...] = ("eager", "triton", "compile"),
) -> dict[str, Any]:
    import gc

    import torch

    results: dict[str, Any] = {}
    for engine in engines:
        try:
            results[engine] = time_engine(engine, preset, batch, seq, steps, warmup)
        except Exception as exc:  # record and go on: one failing engine must not hide the others
            results[engine] = {"engine": engine, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
        gc.collect()
        torch.cuda.empty_cache()
    base = results.get("eager", {}).get("tokens_per_s")
    for r in results.values():
        if base and "tokens_per_s" in r:
            r["speedup_vs_eager"] = r["tokens_per_s"] / base
    return {"preset": preset, "batch": batch, "seq": seq, "steps": steps, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="glm-large")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--engines", default="eager,triton,compile")
    args = parser.parse_args()
    print(json.dumps(run(args.preset, args.batch, args.seq, args.steps, args.warmup, tuple(args.engines.split(",")))))


if __name__ == "__main__":
    main()
