"""The paper's recipes as presets, the objective drawn per micro-batch, and the smaller run options.

Values pinned against the original THUDM/GLM (commit 4f61ed7), file:line cited per row.
"""

from __future__ import annotations

import argparse
import datetime
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.train.test_finetune import FIXTURES, model_dir  # noqa: F401
from tests.train.test_pretrain_data import PERIOD, TOKENS, _stream
from training import cli
from training.config import CosineWithWarmup
from training.recipes import SUPERGLUE, resolve_recipe
from training.sampler import MaskingConfig, PretrainSampler
from training.tasks import PretrainTask

# GLM:config_tasks/task_boolq.sh (LR_SINGLE=1e-5 :6, EPOCH_SINGLE=20 :7, BATCH_SIZE=16 :25, MAX_SEQ_LEN=256 :4,
# TRAIN_ARGS --lr-decay-style linear --warmup 0.1 --weight-decay 1.0e-1 :11-14); GLM:arguments.py: --adam-beta1 0.9,
# --adam-beta2 0.999, --adam-eps 1e-8 (:379-381), --hidden-dropout / --attention-dropout / --output-dropout 0.1
# (:52, :39, :54), --clip-grad 1.0 (:129), --lr-decay-ratio 0.1 (:152)
BOOLQ = {
    "lr": 1e-5,
    "epochs": 20,
    "global_batch": 16,
    "max_length": 256,
    "lr_decay_style": "linear",
    "warmup_ratio": 0.1,
    "weight_decay": 0.1,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "dropout": 0.1,
    "clip_grad": 1.0,
    "min_lr_ratio": 0.1,
}


def _parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


@pytest.mark.parametrize("world_size", [1, 2])
def test_recipe_superglue_boolq_resolves_to_the_original_settings(world_size):
    args = _parse("finetune", "--model", "glm-tiny", "--task", "boolq", "--out", "x", "--recipe", "superglue")
    resolved = resolve_recipe(args, world_size)
    got = {k: resolved[k] for k in BOOLQ if k in resolved}
    got["epochs"] = args.epochs
    got["global_batch"] = args.micro_batch_size * args.grad_accum * world_size
    assert got == BOOLQ
    assert resolved["source"] == "recipe:superglue/boolq"
    cfg = cli._train_config(args, steps=100)
    assert (cfg.lr, list(cfg.betas), cfg.eps, cfg.lr_decay_style) == (1e-5, [0.9, 0.999], 1e-8, "linear")


def test_options_given_explicitly_win_over_the_recipe():
    args = _parse("finetune", "--model", "glm-tiny", "--task", "cb", "--out", "x", "--recipe", "superglue",
                  "--lr", "3e-5", "--dropout", "0", "--steps", "7")  # fmt: skip
    resolved = resolve_recipe(args, 1)
    assert resolved["lr"] == 3e-5 and resolved["dropout"] == 0.0 and args.epochs is None  # --steps, not epochs
    assert resolved["eps"] == 1e-8 and args.micro_batch_size == SUPERGLUE["cb"].batch_size


def test_superglue_recipe_table_matches_the_task_scripts():
    # GLM:config_tasks/task_<t>.sh: (LR_SINGLE, EPOCH_SINGLE, BATCH_SIZE, MAX_SEQ_LEN)
    original = {
        "boolq": (1e-5, 20, 16, 256), "cb": (1e-5, 50, 16, 256), "copa": (1e-5, 50, 16, 256),
        "multirc": (1e-5, 15, 64, 512), "record": (1e-5, 5, 64, 512), "rte": (1e-5, 50, 16, 256),
        "wic": (1e-5, 30, 16, 256), "wsc": (1e-5, 50, 16, 128),
    }  # fmt: skip
    assert {t: (r.lr, r.epochs, r.batch_size, r.max_length) for t, r in SUPERGLUE.items()} == original


def test_pretraining_defaults_are_glm_base_with_eps_1e6():
    args = _parse("pretrain", "--model", "glm-tiny", "--corpus", "c", "--out", "x", "--steps", "5")
    resolved = resolve_recipe(args, 1)
    # GLM:config/config_block_base.json:15-22: lr 4e-4, weight decay 0.1, betas (0.9, 0.98), eps 1e-6
    assert (resolved["lr"], resolved["weight_decay"], resolved["betas"], resolved["eps"]) == (
        4e-4, 0.1, [0.9, 0.98], 1e-6,
    )  # fmt: skip
    assert resolved["lr_decay_style"] == "cosine" and args.micro_batch_size == 8


def test_plain_finetuning_defaults_are_the_originals_and_ignore_the_checkpoints_dropout():
    args = _parse("finetune", "--model", "glm-tiny", "--task", "demo", "--out", "x", "--steps", "5")
    resolved = resolve_recipe(args, 1)
    # GLM:arguments.py:379-381 (Adam), :39/:52/:54 (dropout 0.1), :155 + task scripts (warmup 0.1, linear decay)
    assert (resolved["betas"], resolved["eps"], resolved["dropout"]) == ([0.9, 0.999], 1e-8, 0.1)
    assert (resolved["lr_decay_style"], resolved["warmup_ratio"], resolved["source"]) == ("linear", 0.1, "defaults")
    config, _ = cli._model_config(args)  # glm-tiny's config.json says 0.0
    assert config.output_dropout_prob == config.attention_dropout_prob == config.embedding_dropout_prob == 0.1


def test_linear_decay_follows_the_original_annealing_formula():
    # GLM:learning_rates.py:43-46: start_lr - start_lr * (1 - 1 / decay_ratio) * (n - warmup) / end_iter, with
    # decay_ratio = 1 / --lr-decay-ratio (:34) and end_iter = train_iters - warmup (GLM:train_utils.py:231-235)
    warmup, total, floor = 10, 110, 0.1
    schedule = CosineWithWarmup(warmup, total, floor, style="linear")
    for n in (10, 35, 60, 109):
        original = 1.0 - (1.0 - floor) * (n - warmup) / (total - warmup)
        assert schedule(n) == pytest.approx(original)
    assert schedule(110) == pytest.approx(floor) and schedule(400) == pytest.approx(floor)


def test_finetuning_by_epochs_evaluates_each_epoch_and_keeps_the_best(model_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "ft"
    code = cli.main(["finetune", "--model", str(model_dir), "--task", "rte", "--data-dir", str(FIXTURES),
                     "--train-split", "val", "--recipe", "superglue", "--epochs", "2", "--max-length", "64",
                     "--micro-batch-size", "4", "--grad-accum", "4", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval" in r]
    per_epoch = summary["steps"] // 2
    assert [r["step"] for r in evals] == [per_epoch, 2 * per_epoch]  # after every epoch
    best = max(evals, key=lambda r: r["eval"]["rte_accuracy"])  # ties: the earlier epoch (max keeps the first)
    assert summary["best"]["step"] == best["step"] and summary["best"]["score"] == best["eval"]["rte_accuracy"]
    assert (out / "best" / "model.safetensors").is_file()
    assert json.loads((out / "best" / "best_score.json").read_text())["step"] == best["step"]
    run = records[0]["run"]
    assert run["config"]["model_config"]["output_dropout_prob"] == 0.1  # the recipe's dropout, not the model's
    assert run["config"]["resolved"]["source"] == "recipe:superglue/rte"


# ------------------------------------------------------------------------------------------------ objectives
def _mixed_sampler(group: int) -> PretrainSampler:
    # the GLM-10B mix: token 0.5, sentence 0.3, document 0.2
    masking = MaskingConfig(bert_prob=0.5, gap_sentence_prob=0.3)
    return PretrainSampler(_stream(), TOKENS, 64, masking, seed=3, sentence_ends=[PERIOD], objective_group=group)


def test_the_objective_is_drawn_per_micro_batch_with_the_configured_probabilities():
    sampler = _mixed_sampler(group=2)
    draws = [sampler.batch_plan(step, 2 * g)[0] for step in range(400) for g in range(6)]  # 2400 groups
    counts = Counter(draws)
    for objective, p in (("token", 0.5), ("sentence", 0.3), ("document", 0.2)):
        sd = (p * (1 - p) / len(draws)) ** 0.5
        assert abs(counts[objective] / len(draws) - p) < 4 * sd, counts
    # a global batch of 12 micro-batches mixes objectives (one draw per step never would)
    assert sum(len({sampler.batch_plan(s, 2 * g)[0] for g in range(12)}) > 1 for s in range(50)) > 40
    # the two samples of a group share the draw
    assert all(sampler.batch_plan(s, 2 * g) == sampler.batch_plan(s, 2 * g + 1) for s in range(20) for g in range(6))


def test_per_micro_batch_objectives_keep_the_global_batch_and_its_normalisation_for_any_split():
    sampler = _mixed_sampler(group=2)
    whole = PretrainTask(sampler, 2, 4, 1).micro_batches(5, 0, 1)  # 1 process x 4 micro-batches of 2
    split = [b for r in range(2) for b in PretrainTask(sampler, 2, 2, 2).micro_batches(5, r, 2)]  # 2 x 2 x 2
    for a, b in zip(whole, split, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    # the loss is normalised by the Part-B tokens of the whole global batch, the same number for every split
    task = PretrainTask(sampler, 2, 4, 1)
    assert (
        sum(task.count(b) for b in whole)
        == sum(task.count(b) for b in split)
        == float(sum(sampler.batch(5, 8)["loss_mask"].sum() for _ in [0]))
    )


# ------------------------------------------------------------------------------------------------ smaller items
def test_fsdp_without_torchrun_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code = cli.main(["pretrain", "--model", "glm-tiny", "--corpus", "c", "--out", str(tmp_path / "o"), "--steps",
                     "2", "--fsdp"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "torchrun" in err[0]
    assert not (tmp_path / "o").exists()


def test_collectives_get_the_configured_timeout(monkeypatch):
    from training import distributed

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: seen.update(kw))
    distributed.init_distributed("cpu", timeout_minutes=7)
    assert seen == {"backend": "gloo", "timeout": datetime.timedelta(minutes=7)}


def test_the_pretraining_evaluation_data_does_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    from training.evaluation_hook import evaluation_factory

    monkeypatch.chdir(tmp_path)  # evaluation/data is not below here
    args = _parse("pretrain", "--model", "glm-tiny", "--corpus", "c", "--out", "x", "--steps", "1",
                  "--eval-limit", "2")  # fmt: skip
    assert args.eval_data_dir is None
    factory = evaluation_factory(args)  # reads the tasks up front: fails if the data were looked up in the cwd
    assert callable(factory) and Path.cwd() == tmp_path
