"""Fine-tuning throughput with the cloze inputs packed several to a row versus one per padded row (CPU).

    OMP_NUM_THREADS=2 python -m benchmarks.finetune_packing [--micro-batch-size 16] [--steps 12] [--pack-length 256]

The shipped glm-tiny fine-tuned on the packaged demo task (its train split), the training step of ``glm-train
finetune`` (:class:`training.finetune.ClozeTask` loss, backward, AdamW) with ``pack_length`` 0 (padding) and N
(packing); the two modes alternate step by step on the same micro-batches so machine noise hits both alike. Reports
the **useful** tokens per second (the inputs' own tokens, pads excluded: the same work in both modes), the token
slots computed (pads included) and the median step time, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

from benchmarks.common import run_conditions


def measure(micro_batch_size: int, steps: int, pack_length: int, max_length: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from glm_core.checkpoint import SHIPPED_PRESETS, load_model
    from glm_core.layout import collate, pack
    from glm_core.tokenizer import GLMTokenizer
    from training.finetune import ClozeTask, encode_examples, load_task_examples
    from training.resume import packaged_data_dir

    torch.manual_seed(0)
    tokenizer = GLMTokenizer.from_pretrained(SHIPPED_PRESETS["glm-tiny"])
    examples, _ = load_task_examples("demo", packaged_data_dir())
    items = encode_examples(examples, tokenizer, max_length=max_length)
    modes = {"padded": 0, "packed": pack_length}
    models = {mode: load_model(SHIPPED_PRESETS["glm-tiny"], dtype=torch.float32).train() for mode in modes}
    tasks = {
        mode: ClozeTask(items, tokenizer, micro_batch_size, 1, 1, pack_length=length) for mode, length in modes.items()
    }
    optimizers = {mode: torch.optim.AdamW(models[mode].parameters(), lr=1e-5, foreach=True) for mode in modes}
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    slots: dict[str, int] = {mode: 0 for mode in modes}
    useful = 0
    for step in range(steps + 1):  # step 0 warms up
        batch = tasks["padded"].micro_batches(step, 0, 1)[0]
        samples = [s for i in batch["index"] for s in items[int(i)].samples]
        if step > 0:
            useful += sum(len(s) for s in samples)
            slots["padded"] += collate(samples, tokenizer.special.pad)["input_ids"].size
            slots["packed"] += pack(samples, tokenizer.special.pad, pack_length)["input_ids"].size
        for mode in modes:
            t0 = time.perf_counter()
            loss = tasks[mode].loss_sum(models[mode], batch, torch.device("cpu"))
            loss.backward()
            optimizers[mode].step()
            optimizers[mode].zero_grad(set_to_none=True)
            if step > 0:
                times[mode].append(time.perf_counter() - t0)
    out: dict[str, Any] = {}
    for mode in modes:
        total = sum(times[mode])
        out[mode] = {
            "useful_tokens_per_s": useful / total,
            "token_slots_per_s": slots[mode] / total,
            "pad_share": 1.0 - useful / slots[mode],
            "step_s_median": statistics.median(times[mode]),
            "step_s_min": min(times[mode]),
            "step_s_max": max(times[mode]),
        }
    out["packed_over_padded"] = out["packed"]["useful_tokens_per_s"] / out["padded"]["useful_tokens_per_s"]
    out["samples_per_step"] = len(samples)
    out["mean_sample_tokens"] = float(np.mean([len(s) for item in items for s in item.samples]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--micro-batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--pack-length", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    load = os.getloadavg()
    result = measure(args.micro_batch_size, args.steps, args.pack_length, args.max_length)
    print(json.dumps({"benchmark": "finetune_packing", "args": vars(args), "result": result, **run_conditions(load)}))


if __name__ == "__main__":
    main()
