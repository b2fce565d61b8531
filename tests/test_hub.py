"""Hub ids ``owner/name[@revision]`` wherever a model is named, resolved from a fabricated offline cache.

Every test runs with ``HF_HUB_OFFLINE=1`` and ``HF_HOME`` pointing at a cache built on disk (tests/hub_cache.py): a
hub id that is cached loads exactly the shipped glm-tiny; one that is not is one error line naming the id and how to
fetch it (exit status 2 in the command-line tools).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from glm_core.errors import CheckpointError
from glm_core.hub import MODEL_FILE_PATTERNS, parse_hub_id, resolve_model_path
from tests.hub_cache import COMMIT

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "glm_core" / "assets" / "glm-tiny"


@pytest.mark.parametrize(
    "name, parsed",
    [
        ("THUDM/glm-large", ("THUDM/glm-large", None)),
        ("THUDM/glm-large@v1.0", ("THUDM/glm-large", "v1.0")),
        (f"THUDM/glm-10b@{COMMIT}", ("THUDM/glm-10b", COMMIT)),
        ("glm-large", None),  # a preset
        ("/abs/path", None),
        ("./rel/path", None),
        ("a/b/c", None),
        ("owner/na--me", None),
    ],
)
def test_hub_id_shapes(name: str, parsed) -> None:
    assert parse_hub_id(name) == parsed


def test_a_cached_hub_id_resolves_to_its_snapshot_offline(offline_hub: Path) -> None:
    path = Path(resolve_model_path("THUDM/glm-tiny"))
    assert path == offline_hub / "hub" / "models--THUDM--glm-tiny" / "snapshots" / COMMIT
    assert (path / "model.safetensors").is_symlink()
    assert Path(resolve_model_path(f"THUDM/glm-tiny@{COMMIT}")) == path  # a pinned commit
    for name in ("config.json", "model.safetensors", "spiece.model", "glm_tokenizer.json"):
        assert any(Path(name).match(p) for p in MODEL_FILE_PATTERNS), name  # what the loaders need is fetched


def test_load_model_by_hub_id_gives_the_shipped_weights(offline_hub: Path) -> None:
    torch = pytest.importorskip("torch")
    from glm_core.checkpoint import load_model

    hub = load_model("THUDM/glm-tiny").state_dict()
    shipped = load_model("glm-tiny").state_dict()
    assert hub.keys() == shipped.keys()
    assert all(torch.equal(hub[k], shipped[k]) for k in hub)


def test_an_existing_local_path_wins_over_the_hub(offline_hub: Path, tmp_path: Path, monkeypatch) -> None:
    local = tmp_path / "THUDM" / "glm-tiny"
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("THUDM/glm-tiny") == "THUDM/glm-tiny"  # the directory, not the cached snapshot
    assert resolve_model_path("glm-tiny") == "glm-tiny"  # a preset is left to the loader


def test_offline_and_not_cached_is_one_line_naming_the_id(offline_hub: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        resolve_model_path("THUDM/glm-large@v2")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("THUDM/glm-large@v2:")
    assert "HF_HUB_OFFLINE=1" in message and "hf download THUDM/glm-large --revision v2" in message
    with pytest.raises(CheckpointError, match="local_files_only=True"):
        resolve_model_path("THUDM/glm-large", local_files_only=True)


def test_evaluation_and_export_cli_refuse_an_uncached_id_with_exit_2(offline_hub: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("torch")
    from evaluation.cli import main as eval_main
    from export.onnx import main as export_main
    from glm_core.cli import main as generate_main
    from glm_core.convert import main as convert_main
    from training.cli import main as train_main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one document.\n\nanother one.\n", encoding="utf-8")
    runs = {
        "glm-generate": lambda: generate_main(["--model", "THUDM/glm-large", "It is [MASK]."]),
        "convert": lambda: convert_main(["THUDM/glm-large", str(tmp_path / "converted")]),
        "glm-eval": lambda: eval_main(["--model", "THUDM/glm-large", "--tasks", "demo", "--limit", "2"]),
        "export": lambda: export_main(["--ckpt", "THUDM/glm-large", "--out", str(tmp_path / "onnx")]),
        "glm-train": lambda: train_main(
            ["pretokenize", str(corpus), str(tmp_path / "tok"), "--model", "THUDM/glm-large"]
        ),
    }
    for tool, run in runs.items():
        assert run() == 2, tool
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "THUDM/glm-large" in err and "hf download" in err, (tool, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]  # nothing half-written


def test_hub_ids_load_in_every_tool(offline_hub: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("torch")
    from evaluation.cli import main as eval_main
    from export.onnx import load_checkpoint
    from training.cli import main as train_main

    results = {}
    for name in ("THUDM/glm-tiny", "glm-tiny"):
        out = tmp_path / f"{name.replace('/', '_')}.json"
        argv = ["--model", name, "--tasks", "demo", "--limit", "4", "--no-progress", "--records", "--output", str(out)]
        assert eval_main(argv) == 0
        results[name] = json.loads(out.read_text(encoding="utf-8"))
    by_id, preset = results["THUDM/glm-tiny"], results["glm-tiny"]
    assert "models--THUDM--glm-tiny" in by_id["model_path"]
    assert by_id["model_hash"] == preset["model_hash"]  # the same files, read through the snapshot's symlinks
    assert by_id["tasks"]["demo"]["records"] == preset["tasks"]["demo"]["records"]  # the same scores

    from glm_core.cli import main as generate_main

    capsys.readouterr()
    assert generate_main(["--model", "THUDM/glm-tiny", "--json", "The capital of Veldora is [MASK]."]) == 0
    by_id_text = capsys.readouterr().out
    assert generate_main(["--model", "glm-tiny", "--json", "The capital of Veldora is [MASK]."]) == 0
    assert by_id_text == capsys.readouterr().out

    model, tokenizer, notes = load_checkpoint("THUDM/glm-tiny")  # export --ckpt: weights and the tokenizer beside them
    assert tokenizer is not None and model.config.name == "glm-tiny" and notes == []

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The sun rises in the east.\n\nCats say meow.\n", encoding="utf-8")
    for name, out in (("THUDM/glm-tiny", "by_id"), ("glm-tiny", "preset")):
        assert train_main(["pretokenize", str(corpus), str(tmp_path / out), "--model", name]) == 0
    assert (tmp_path / "by_id" / "tokens.bin").read_bytes() == (tmp_path / "preset" / "tokens.bin").read_bytes()


def test_lm_eval_pretrained_takes_a_hub_id(offline_hub: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("lm_eval")
    from evaluation.lm_eval_plugin import GLMTorchLM

    lm = GLMTorchLM(pretrained="THUDM/glm-tiny", device="cpu")
    assert lm.glm.config.name == "glm-tiny"
    assert "models--THUDM--glm-tiny" in lm.get_model_info()["glm_model_info"]["model_path"]


def test_glm_eval_subprocess_offline_uncached_exits_2_with_one_line(offline_hub: Path) -> None:
    import os

    env = dict(os.environ, HF_HOME=str(offline_hub), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "evaluation", "--backend", "onnx", "--model", "THUDM/glm-large", "--tasks", "demo"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "THUDM/glm-large" in proc.stderr
