"""One data-parallel lm-eval run of glm-torch (or one process, without a launcher): what each rank scored, and on
rank 0 the gathered per-sample results. Used by test_lm_eval_distributed.py: ``dp_run.py OUT_DIR LIMIT``."""

import atexit
import json
import os
import sys
from pathlib import Path

import lm_eval
from lm_eval.tasks import TaskManager

from evaluation.lm_eval_plugin import GLMTorchLM
from evaluation.lm_eval_tasks import task_dir

out, limit = Path(sys.argv[1]), int(sys.argv[2])


def record_exit() -> None:  # registered first, so it runs after every later atexit handler (LIFO)
    import torch.distributed as dist

    rank = os.environ.get("RANK", "0")
    (out / f"rank{rank}.exit.json").write_text(json.dumps({"group_initialized": dist.is_initialized()}))


atexit.register(record_exit)
lm = GLMTorchLM(pretrained="glm-tiny", device="cpu", batch_size="1")
results = lm_eval.simple_evaluate(
    model=lm,
    tasks=["glm_demo", "glm_demo_ppl"],
    task_manager=TaskManager(include_path=task_dir(), include_defaults=False),
    limit=limit,
    log_samples=True,
)
report = {"rank": lm.rank, "world_size": lm.world_size, "device": lm.device, "scored": dict(lm.requests_scored)}
(out / f"rank{lm.rank}.json").write_text(json.dumps(report), encoding="utf-8")
if results is not None:
    samples = {task: {str(s["doc_id"]): s["filtered_resps"] for s in rows} for task, rows in results["samples"].items()}
    (out / "results.json").write_text(json.dumps({"samples": samples, "results": results["results"]}, default=str))
