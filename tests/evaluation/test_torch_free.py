"""Everything in ``evaluation`` except the torch backend imports without torch (DESIGN.md, rules of the house)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import sys
sys.modules["torch"] = None  # any 'import torch' now raises ImportError
import evaluation, evaluation.scoring, evaluation.metrics, evaluation.runner, evaluation.cli, evaluation.result_cache
import evaluation.backends, evaluation.backends.info, evaluation.tasks
from evaluation.tasks import TASKS
from evaluation.cli import main
assert "torch" not in [m for m, v in sys.modules.items() if v is not None and m.split(".")[0] == "torch"]
sys.exit(main(["--model", "x", "--tasks", "nosuchtask"]))
"""


def test_evaluation_imports_and_runs_its_cli_without_torch() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120)
    # the CLI got as far as validating the task list: exit 2 with its one-line error, no ImportError
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("glm-eval: error: unknown task 'nosuchtask'")
