"""The ONNX path needs no torch (DESIGN.md): OnnxBackend runs in a process where ``import torch`` fails.

The parent computes PyTorch logits (and a greedy generation) on inputs the export never saw and saves them as
``.npy``; a fresh interpreter with a meta-path finder that refuses ``torch`` reproduces them from the model directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

BLOCK_TORCH = '''
import sys

class _NoTorch:
    """Refuse torch and every torch submodule, as if it were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch is blocked in this interpreter ({name})")
        return None

sys.meta_path.insert(0, _NoTorch())
'''

CHILD = """
import json, sys
import numpy as np

try:
    import torch  # noqa: F401
except ImportError:
    torch_blocked = True
else:
    torch_blocked = False

from evaluation.backends.onnx import OnnxBackend
from glm_core.generation import GenerationConfig, generate
from glm_core.layout import build_generation_prompt
from glm_core.special_tokens import sentencepiece_tokens

work = sys.argv[1]
backend = OnnxBackend(sys.argv[2], threads=1)
ids, pos, sep = (np.load(f"{work}/{name}.npy") for name in ("ids", "pos", "sep"))
logits, present = backend.step(ids, pos, sep, None)
next_logits, _ = backend.step(ids[:, :1], pos[:, :, -1:] + np.array([0, 1])[None, :, None], np.zeros(len(sep)), present)
np.save(f"{work}/onnx_logits.npy", logits)
np.save(f"{work}/onnx_next.npy", next_logits)
spec = json.load(open(f"{work}/generation.json"))
tokens = sentencepiece_tokens(num_pieces=spec["num_pieces"])
result = generate(backend, build_generation_prompt(spec["text"], tokens), tokens,
                  GenerationConfig(max_new_tokens=spec["max_new_tokens"]))
json.dump({"torch_blocked": torch_blocked, "torch_loaded": any(m == "torch" or m.startswith("torch.")
           for m in sys.modules), "blanks": result.blanks}, open(f"{work}/child.json", "w"))
"""


def test_onnx_backend_reproduces_torch_without_torch(exported_dir: Path, tiny_torch_model, tmp_path: Path) -> None:
    import torch

    from glm_core.generation import GenerationConfig, generate
    from glm_core.layout import build_generation_prompt
    from glm_core.special_tokens import sentencepiece_tokens
    from glm_core.step import TorchStep

    # inputs unlike the export's example (B=2, S=8, P=4) and its validation grid
    rng = np.random.default_rng(99)
    B, S = 3, 9
    V = tiny_torch_model.config.vocab_size
    ids = rng.integers(0, V, (B, S))
    pos = np.repeat(np.stack([np.arange(S), np.zeros(S, np.int64)])[None], B, axis=0)
    sep = np.array([9, 0, 4])
    with torch.inference_mode():
        out = tiny_torch_model(torch.as_tensor(ids), torch.as_tensor(pos), sep=torch.as_tensor(sep))
        step_pos = torch.as_tensor(pos[:, :, -1:] + np.array([0, 1])[None, :, None])
        nxt = tiny_torch_model(
            torch.as_tensor(ids[:, :1]),
            step_pos,
            sep=torch.zeros(B, dtype=torch.long),
            past_key_values=out.past_key_values,
        )
    for name, array in {"ids": ids, "pos": pos, "sep": sep}.items():
        np.save(tmp_path / f"{name}.npy", array)
    np.save(tmp_path / "torch_logits.npy", out.logits.numpy())
    np.save(tmp_path / "torch_next.npy", nxt.logits.numpy())
    num_pieces = V - 10
    tokens = sentencepiece_tokens(num_pieces=num_pieces)
    text = [11, 12, 13, tokens.mask, 14, 15]
    spec = {"num_pieces": num_pieces, "text": text, "max_new_tokens": 6}
    (tmp_path / "generation.json").write_text(json.dumps(spec))
    expected = generate(
        TorchStep(tiny_torch_model), build_generation_prompt(text, tokens), tokens, GenerationConfig(max_new_tokens=6)
    )

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_TORCH)
    (tmp_path / "child.py").write_text(textwrap.dedent(CHILD))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "child.py"), str(tmp_path), str(exported_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]

    child = json.loads((tmp_path / "child.json").read_text())
    assert child["torch_blocked"] and not child["torch_loaded"]
    for name in ("logits", "next"):
        np.testing.assert_allclose(
            np.load(tmp_path / f"onnx_{name}.npy"), np.load(tmp_path / f"torch_{name}.npy"), atol=1e-4, rtol=1e-4
        )
    assert child["blanks"] == expected.blanks
