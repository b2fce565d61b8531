"""Decode throughput: K/V cache (ours) versus the original hidden-state mems that recompute K/V every step.

glm-base dimensions (random weights), context 512, batch 1, CPU. Each engine runs in its own process; the first
round is discarded and the median of the rest is reported. Prints one JSON object.

    python -m benchmarks.kv_cache_decode [--context 512] [--steps 32] [--rounds 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks.common import machine_info, run_in_subprocess, summarize


def _engine(engine: str, preset: str, context: int, steps: int, rounds: int, threads: int) -> dict:
    import torch

    from glm_core.config import GLMConfig
    from glm_core.model import build_model

    torch.set_num_threads(threads)
    config = GLMConfig.from_preset(preset)
    model = build_model(config, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (1, context), generator=g)
    pos = torch.stack([torch.arange(context)[None], torch.zeros(1, context, dtype=torch.long)], 1)
    mask_pos = context - 1
    samples = []
    with torch.inference_mode():
        for _ in range(rounds):
            if engine == "kv":
                out = model(ids, pos, sep=context)
                past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                start = time.perf_counter()
                for k in range(steps):
                    step_pos = torch.tensor([[[mask_pos], [k + 1]]])
                    out = model(token, step_pos, sep=0, past_key_values=past)
                    past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            else:
                logits, mems = model.forward_mems(ids, pos, context)
                token = logits[:, -1].argmax(-1, keepdim=True)
                start = time.perf_counter()
                for k in range(steps):
                    step_pos = torch.tensor([[[mask_pos], [k + 1]]])
                    logits, mems = model.forward_mems(token, step_pos, 0, mems)
                    token = logits[:, -1].argmax(-1, keepdim=True)
            samples.append(steps / (time.perf_counter() - start))
    return {"engine": engine, "tokens_per_s": summarize(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="glm-base")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engine", choices=["kv", "mems"], help="run one engine in this process (internal)")
    args = parser.parse_args()
    if args.engine:
        print(json.dumps(_engine(args.engine, args.preset, args.context, args.steps, args.rounds, args.threads)))
        return
    common = [
        "--preset",
        args.preset,
        "--context",
        str(args.context),
        "--steps",
        str(args.steps),
        "--rounds",
        str(args.rounds),
        "--threads",
        str(args.threads),
    ]
    kv = run_in_subprocess("benchmarks.kv_cache_decode", ["--engine", "kv", *common])
    mems = run_in_subprocess("benchmarks.kv_cache_decode", ["--engine", "mems", *common])
    ratio = kv["tokens_per_s"]["median"] / mems["tokens_per_s"]["median"]
    print(
        json.dumps(
            {
                "benchmark": "kv_cache_decode",
                "preset": args.preset,
                "context": args.context,
                "batch": 1,
                "steps": args.steps,
                "kv_cache": kv["tokens_per_s"],
                "hidden_state_mems": mems["tokens_per_s"],
                "speedup": round(ratio, 2),
                "target": ">= 3x",
                "machine": machine_info(),
            }
        )
    )


if __name__ == "__main__":
    main()
