"""glm-generate: blank filling through the shipped glm-tiny, and its bad-input behaviour."""

from __future__ import annotations

import json

from glm_core.cli import main


def test_generate_fills_blank_with_glm_tiny(capsys):
    assert main(["--model", "glm-tiny", "--max-new-tokens", "4", "--json", "The sky is [MASK] today."]) == 0
    record = json.loads(capsys.readouterr().out.strip())
    assert record["text"] == "The sky is [MASK] today."
    assert len(record["blanks"]) == 1
    assert "[MASK]" not in record["filled"] and record["filled"].startswith("The sky is")
    assert len(record["scores"]) == 1 and record["scores"][0] <= 0.0  # a sum of log-probabilities


def test_beam_and_greedy_agree_with_one_beam(capsys):
    args = ["--model", "glm-tiny", "--max-new-tokens", "3", "--json", "A cat says [MASK]."]
    assert main(args) == 0
    greedy = json.loads(capsys.readouterr().out)
    assert main([*args, "--strategy", "beam", "--num-beams", "1"]) == 0
    beam = json.loads(capsys.readouterr().out)
    assert greedy["blanks"] == beam["blanks"]


def test_unknown_model_exits_2_with_one_line(capsys):
    assert main(["--model", "glm-nonexistent", "hello [MASK]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "glm-nonexistent" in err
