"""The optimum stack stays out of the ONNX path: it runs with torch, transformers and optimum unimportable.

Runs in every env (no optimum needed); tests/test_layering.py checks that no package imports glm_optimum.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "transformers", "optimum")

PROBE = f"""
import json, sys

class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(f"{{name}} is blocked in this interpreter")
        return None

sys.meta_path.insert(0, _Blocked())
import evaluation.backends.onnx, evaluation.compare, evaluation.scoring, glm_core.generation, glm_core.tokenizer
try:
    import glm_optimum  # noqa: F401
    optimum_layer = "imported"
except ImportError:
    optimum_layer = "needs the optimum stack"
loaded = sorted({{m.split(".")[0] for m, v in sys.modules.items() if v is not None}} & set({BLOCKED!r}))
print(json.dumps({{"loaded": loaded, "optimum_layer": optimum_layer}}))
"""


def test_the_onnx_path_imports_without_torch_transformers_optimum() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == {"loaded": [], "optimum_layer": "needs the optimum stack"}
