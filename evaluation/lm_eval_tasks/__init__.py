"""lm-eval task configs shipped with the package, for data on local disk (spec lm_eval_integration §3).

Use them with ``lm_eval --include_path "$(python -m evaluation.lm_eval_tasks --path)" --tasks <name>``:

- ``glm_demo``: multiple choice over ``{"text": "... [MASK] ...", "choices": [...], "label": int}`` records
  (``acc``, ``acc_norm``) over ``evaluation/data/demo/val.jsonl``; ``--limit 20`` for smoke tests;
- ``glm_demo_ppl``: rolling log-likelihood over a few bundled paragraphs (word/byte perplexity, bits per byte);
- ``glm_summarization``: ``generate_until`` with ROUGE-1/2/Lsum from ``rouge-score`` (ROUGE is not an lm-eval
  built-in metric and its fallback needs the network, spec §3 "Metrics");
- ``glm_local_superglue``: lm-eval's own boolq, cb, copa, wic, multirc, sglue_rte and lambada_openai task configs,
  with only their data source repointed at local JSONL in the Hugging Face field layout (spec §3 "Pointing built-in
  tasks at local files"). Needs lm-eval's built-in task index (do not pass ``include_defaults=False``).

Every task reads its data through :mod:`evaluation.lm_eval_tasks.local_data` (lm-eval's ``custom_dataset`` hook), so
files are found relative to this package, never relative to the working directory (spec §3 gotchas). Point a task at
your own copies with ``--metadata '{"glm_data_dir": "/path/to/dir"}'``: the same relative file names are then read from
that directory.
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
DATA_DIR = TASKS_DIR / "data"
TASK_NAMES = ("glm_demo", "glm_demo_ppl", "glm_summarization")
GROUP_NAMES = ("glm_local_superglue",)


def task_dir() -> str:
    """The directory to pass to ``lm_eval --include_path`` or ``TaskManager(include_path=...)``."""
    return str(TASKS_DIR)
