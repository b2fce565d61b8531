"""Benchmark: multiple-choice scoring with and without Part A sharing (spec §2.4-3 "fast decode"); prints JSON.

Workload: ``--examples`` 4-choice cloze examples with a ``--context``-token Part A and 1-4-token candidates (+eop), on a
random GLM with the glm-tiny preset's dimensions (4 layers, h=256, V=2048) and the shipped glm-tiny tokenizer.
With sharing, each example's Part A runs once and the candidates run as cached chunks; without, one full sequence
per candidate. Reported: examples/s (best of ``--repeats``), tokens sent to the backend, speed-up.

    python benchmarks/part_a_sharing.py --output benchmarks/results/part_a_sharing.json
    python benchmarks/part_a_sharing.py --export-onnx       # also the ONNX Runtime backend (exports to a temp dir)
    python benchmarks/part_a_sharing.py --onnx-dir DIR      # ... or an existing export of the same model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.backends import load_backend  # noqa: E402
from evaluation.scoring import Scorer  # noqa: E402
from glm_core.layout import GLMInput, build_candidate_sequences  # noqa: E402


def build_workload(special, num_text_ids: int, examples: int, context: int, choices: int, seed: int) -> list[GLMInput]:
    """Random text ids (ordinary tokens only) with one [MASK] in the middle; candidates of 1-4 tokens."""
    rng = np.random.default_rng(seed)
    samples: list[GLMInput] = []
    text_len = context - 2  # [CLS] text [eos] = context tokens of Part A
    for _ in range(examples):
        text = rng.integers(5, num_text_ids, size=text_len).tolist()
        text[text_len // 2] = special.mask
        cands = [rng.integers(5, num_text_ids, size=int(rng.integers(1, 5))).tolist() for _ in range(choices)]
        samples.extend(build_candidate_sequences(text, cands, special, append_eop=True))
    return samples


def time_scoring(backend, samples: list[GLMInput], *, share: bool, batch_size: int, repeats: int) -> dict[str, object]:
    Scorer(backend, batch_size=batch_size, share_part_a=share).score_samples(samples[: 4 * batch_size])  # warm-up
    best = float("inf")
    scores = None
    tokens = 0
    for _ in range(repeats):
        scorer = Scorer(backend, batch_size=batch_size, share_part_a=share)
        start = time.perf_counter()
        scores = scorer.score_samples(samples)
        best = min(best, time.perf_counter() - start)
        tokens = scorer.stats.total_tokens
    return {"seconds": round(best, 4), "tokens_sent": tokens, "scores": np.asarray([s.total for s in scores or []])}


def make_model_dir(directory: Path, seed: int) -> Path:
    """A random model with the glm-tiny preset dims, saved with the shipped glm-tiny tokenizer."""
    from glm_core.checkpoint import SHIPPED_PRESETS, save_model
    from glm_core.config import GLMConfig
    from glm_core.model import build_model

    model = build_model(GLMConfig.from_preset("glm-tiny"), seed=seed).eval()
    save_model(model, directory)
    for name in ("spiece.model", "glm_tokenizer.json"):
        (directory / name).write_bytes((Path(SHIPPED_PRESETS["glm-tiny"]) / name).read_bytes())
    return directory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--context", type=int, default=256, help="Part A length in tokens")
    parser.add_argument("--choices", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--onnx-dir", type=Path, default=None, help="ONNX export of the same random model")
    parser.add_argument("--export-onnx", action="store_true", help="export the random model with export.onnx first")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model_dir(Path(tmp) / "model", args.seed)
        backends = [("torch", load_backend("torch", model_dir))]
        onnx_dir = args.onnx_dir
        if args.export_onnx and onnx_dir is None:
            onnx_dir = Path(tmp) / "onnx"
            subprocess.run(
                [sys.executable, "-m", "export.onnx", "--ckpt", str(model_dir), "--out", str(onnx_dir)],
                check=True,
                cwd=Path(__file__).resolve().parents[1],
                stdout=subprocess.DEVNULL,
            )
        if onnx_dir is not None:
            backends.append(("onnx", load_backend("onnx", onnx_dir, allow_spinning=False)))

        special = backends[0][1].special
        # SentencePiece: the command tokens follow the pieces, so ids below pad are ordinary text
        samples = build_workload(special, special.pad, args.examples, args.context, args.choices, args.seed)
        results = []
        speedups = {}
        for name, backend in backends:
            runs = {
                share: time_scoring(backend, samples, share=share, batch_size=args.batch_size, repeats=args.repeats)
                for share in (True, False)
            }
            max_diff = float(np.max(np.abs(runs[True]["scores"] - runs[False]["scores"])))
            for share, run in runs.items():
                results.append(
                    {
                        "backend": name,
                        "share_part_a": share,
                        "seconds": run["seconds"],
                        "examples_per_s": round(args.examples / run["seconds"], 2),
                        "tokens_sent": run["tokens_sent"],
                        "provider": backend.info().get("provider"),
                    }
                )
            speedups[name] = {
                "speedup": round(runs[False]["seconds"] / runs[True]["seconds"], 2),
                "max_abs_score_diff": max_diff,
            }

    report = {
        "benchmark": "part_a_sharing",
        "model": "random GLM, glm-tiny preset dims (L=4, h=256, heads=4, V=2048), fp32",
        "workload": {
            "examples": args.examples,
            "choices": args.choices,
            "context_tokens": args.context,
            "candidate_tokens": "1-4 (+eop)",
            "batch_size": args.batch_size,
            "repeats": args.repeats,
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "results": results,
        "summary": speedups,
        "target": "sharing >= 2.5x",
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
