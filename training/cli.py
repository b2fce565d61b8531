"""Train GLM: blank-infilling pretraining (spec glm_reference §5) and cloze fine-tuning (spec §6.1).

    python -m training pretrain --model glm-tiny --from-scratch --corpus corpus.txt --out runs/tiny --steps 1000
    torchrun --nproc-per-node 2 -m training pretrain ...      # DDP (gloo on CPU, nccl on CUDA); --fsdp shards
    python -m training finetune --model runs/tiny/final --task demo --data-dir evaluation/data --out runs/ft
    python -m training pretokenize corpus.txt runs/corpus-tok --model glm-tiny    # then pretrain --data runs/corpus-tok

One loop serves both: AdamW (fused on CUDA; no weight decay on biases and LayerNorms), warmup + cosine decay, gradient
clipping and accumulation, bf16/fp16 autocast on fp32 master weights (fp16 with a GradScaler), activation checkpointing
per layer, ``--compile`` (each layer), ``--kernels``, ``--attention`` (:mod:`training.options`). The loss of a step is
normalised by the **global** count (Part-B tokens, or examples), so 1 process x 2 micro-batches and 2 processes x 1
micro-batch compute the same update (the same numbers only with dropout 0: each rank draws its own dropout masks).

Checkpoints (``OUT/checkpoints/step_XXXXXXX``) are sharded DCP directories (:mod:`training.checkpointing`), written
every ``--save-every`` steps or ``--save-every-minutes``, at the end, and on SIGTERM / SIGINT before the run stops
(:mod:`training.guard`); ``OUT/checkpoints/latest`` names the newest. ``--resume auto|PATH`` continues exactly: the
data of step ``k`` is a pure function of ``(seed, k)``; what a resume may change is in :mod:`training.resume`.
Non-finite steps are skipped and counted (:mod:`training.guard`); the first record of ``log.jsonl`` makes the run
reproducible (:mod:`training.run_record`); ``finetune --recipe superglue`` takes the paper's per-task settings
(:mod:`training.recipes`).

Logs: ``OUT/log.jsonl`` (one JSON object per logged step / evaluation), a tqdm bar, and ``--report-to
tensorboard|wandb|none`` (:mod:`training.reporting`). The evaluation hook is a
callback ``evaluate(model) -> dict``; :func:`main` builds it (importing ``evaluation`` only there, DESIGN.md layers).
Errors a user can cause print one line and exit with status 2 before anything is written.

Pretraining data comes from ``--corpus`` (UTF-8 text, tokenized by every process at start) or ``--data`` (a directory
written once by ``glm-train pretokenize``, memory-mapped: a process's memory does not grow with the corpus); both give
the same batches. ``--data-workers N`` builds the batches in N DataLoader worker processes ahead of the loop.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from glm_core.config import PRESETS, GLMConfig
from glm_core.errors import CheckpointError, ConfigError, GLMError, print_warnings_on_one_line
from glm_core.model import KERNEL_CHOICES, build_model
from glm_core.outputs import check_output
from training.checkpointing import STATE_FILE, export_checkpoint, find_latest_checkpoint, read_train_state
from training.config import DECAY_STYLES, PRECISIONS, TrainConfig
from training.distributed import init_distributed
from training.evaluation_hook import EvaluateFactory, evaluation_factory
from training.guard import RunInterrupted, finite_or_none, json_safe
from training.loop import LOG_FILE, append_log, train
from training.options import (
    add_attention_argument,
    add_packing_argument,
    add_safety_arguments,
    add_speed_arguments,
    check_attention_option,
    check_kernels_option,
    checkpoint_layers,
    compile_layers,
    pack_length_option,
)
from training.recipes import BestModel, add_recipe_arguments, resolve_recipe, steps_for_epochs
from training.reporting import REPORT_BACKENDS, ReportConfig, default_backend
from training.resume import (
    check_resume,
    check_run_outputs,
    packaged_data_dir,
    refuse_existing_run,
    resolve_resumed_schedule,
    resume_path,
)
from training.run_record import run_record
from training.superglue import TaskLoader, evaluation_task_loader
from training.tasks import PretrainTask, TrainingTask


# ==================================================================================================== CLI
def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="glm-tiny", help="preset name or checkpoint directory (default glm-tiny)")
    p.add_argument(
        "--from-scratch", action="store_true", help="seeded random weights (spec §1.5), not the checkpoint's"
    )
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    p.add_argument("--out", required=True, help="run directory: log.jsonl, checkpoints/, final/")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (fine-tuning: or --epochs)")
    p.add_argument("--micro-batch-size", type=int, default=None, help="default 8 (recipe: its batch / processes)")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=None, help="default: pretrain 4e-4, finetune 1e-5 (or the recipe's)")
    p.add_argument("--min-lr-ratio", type=float, default=None, help="the decay's floor, a share of --lr (0.1)")
    p.add_argument("--lr-decay-style", choices=DECAY_STYLES, default=None, help="pretrain cosine, finetune linear")
    p.add_argument(
        "--lr-decay-iters",
        type=int,
        default=None,
        help="step at which the decay reaches the floor, which then holds (default: --steps; on resume: the "
        "checkpoint's); warmup is --warmup-ratio of it",
    )
    p.add_argument("--warmup-ratio", type=float, default=None, help="pretrain 0.05, finetune 0.1")
    p.add_argument("--weight-decay", type=float, default=None, help="0.1")
    p.add_argument("--betas", type=float, nargs=2, default=None, help="pretrain 0.9 0.98, finetune 0.9 0.999")
    p.add_argument("--eps", type=float, default=None, help="Adam epsilon: pretrain 1e-6, finetune 1e-8")
    p.add_argument("--clip-grad", type=float, default=None, help="1.0 (0: no clipping)")
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32")
    p.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="the three dropout probabilities (pretrain: the model's; finetune 0.1)",
    )
    p.add_argument("--kernels", choices=KERNEL_CHOICES, default="auto")
    add_attention_argument(p)
    add_speed_arguments(p)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--fsdp", action="store_true", help="shard parameters with FSDP (under torchrun)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--log-every", type=int, default=10)
    add_safety_arguments(p)
    p.add_argument("--final-dir", default=None, help="where the final model goes (default OUT/final)")
    p.add_argument("--final-dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    p.add_argument("--no-eval", action="store_true", help="do not evaluate during or after training")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--report-to",
        choices=REPORT_BACKENDS,
        default=default_backend(),
        help="also send loss, lr, grad norm, tokens/s, MFU and eval scores to OUT/tensorboard/ or wandb "
        "(default: tensorboard when installed, else none)",
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s of one device for MFU")
    p.add_argument("--run-name", default=None, help="wandb run name (default $WANDB_NAME, else OUT's name)")
    p.add_argument("--wandb-project", default=None, help="wandb project (default $WANDB_PROJECT, else glm-harness)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glm-train",
        description="Pretrain GLM with blank infilling (spec §5) or fine-tune it on cloze tasks (spec §6.1).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python -m training.corpus corpus --out runs/corpus.txt\n"
            "  glm-train pretrain --model glm-tiny --from-scratch --corpus runs/corpus.txt --out runs/tiny \\\n"
            "      --steps 1000 --seq-length 128 --micro-batch-size 16\n"
            "  torchrun --nproc-per-node 2 -m training pretrain ...   (DDP; gloo on CPU, nccl on CUDA)\n"
            "  glm-train pretokenize runs/corpus.txt runs/corpus-tok --model glm-tiny\n"
            "  glm-train pretrain --model glm-tiny --from-scratch --data runs/corpus-tok --out runs/tiny --steps 1000\n"
            "  glm-train finetune --model runs/tiny/final --task demo --data-dir evaluation/data --out runs/ft --steps 200\n"
            "  glm-train export runs/tiny runs/tiny-hub --dtype fp16   (newest checkpoint -> hub layout)"
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("pretrain", help="blank-infilling pretraining on a UTF-8 text corpus")
    _add_common(pre)
    source = pre.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", help="UTF-8 text, documents separated by blank lines")
    source.add_argument("--data", help="a directory written by glm-train pretokenize (memory-mapped)")
    pre.add_argument(
        "--data-workers", type=int, default=2, help="DataLoader worker processes building batches (0: in the loop)"
    )
    pre.add_argument("--seq-length", type=int, default=512)
    pre.add_argument("--bert-prob", type=float, default=1.0, help="share of token-level [MASK] batches")
    pre.add_argument("--gap-sentence-prob", type=float, default=0.0, help="share of sentence-level [sMASK] batches")
    pre.add_argument("--bert-ratio", type=float, default=0.15)
    pre.add_argument("--gap-sentence-ratio", type=float, default=0.15)
    pre.add_argument("--gpt-min-ratio", type=float, default=0.5)
    pre.add_argument("--gpt-infill-prob", type=float, default=0.5)
    pre.add_argument("--no-shuffle-spans", action="store_true")
    pre.add_argument("--no-task-mask", action="store_true", help="[MASK] for every objective (GLM-Base/Large)")
    pre.add_argument(
        "--block-mask-prob", type=float, default=0.0, help="token objective: Part-B inputs -> [dBLOCK] (10B: 0.1)"
    )
    pre.add_argument(
        "--short-seq-prob",
        type=float,
        default=0.0,
        help="share of batches of shorter sentence-aligned chunks (several per window)",
    )
    pre.add_argument(
        "--single-span-prob",
        type=float,
        default=0.0,
        help="share of single-span batches (token objective, one Poisson span per sample)",
    )
    pre.add_argument("--eval-tasks", default="demo", help="evaluation tasks run by the eval hook ('' for none)")
    pre.add_argument(
        "--eval-data-dir", default=None, help="evaluation data (default: the evaluation package's own data/)"
    )
    pre.add_argument("--eval-limit", type=int, default=None, help="examples per evaluation task")
    tok = sub.add_parser(
        "pretokenize",
        help="tokenize a corpus once into a memory-mapped token file (for pretrain --data)",
        description=(
            "Tokenize CORPUS (UTF-8 text, documents separated by blank lines) into the directory OUT: tokens.bin "
            "(uint16 or int32 ids), doc_index.npy (document start offsets) and meta.json. The corpus is streamed; "
            "OUT appears only once complete."
        ),
    )
    tok.add_argument("corpus", help="UTF-8 text, documents separated by blank lines")
    tok.add_argument("out", help="directory to write (must not exist unless --overwrite)")
    tok.add_argument("--model", default="glm-tiny", help="preset name or checkpoint directory whose tokenizer is used")
    tok.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model's)")
    tok.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    ft = sub.add_parser(
        "finetune",
        help="cloze fine-tuning: CE over verbalizer / candidate scores (spec §6.1)",
        description=(
            "Cloze fine-tuning (spec §6.1). Tasks: demo; a cloze .jsonl ({text, choices, label}); the SuperGLUE "
            "tasks boolq, cb, multirc, rte, wic (single-token verbalizers, CE), copa (two candidates +eop, CE; "
            "training adds swapped-choice copies), wsc (span1 vs negatives +eop, mean log-prob, loss -score(gold) "
            "+ CE; trains on the label-true examples) and record (passage entities +eop, CE; training: gold plus "
            "at most 9 sampled negatives; evaluation EM/F1), with the evaluation package's patterns."
        ),
    )
    _add_common(ft)
    ft.add_argument(
        "--task",
        required=True,
        help="demo, boolq|cb|copa|multirc|record|rte|wic|wsc (optionally :PATTERN), or a .jsonl",
    )
    ft.add_argument("--data-dir", default=None, help="task data root (default: the evaluation package's data/)")
    ft.add_argument(
        "--val-file", default=None, help="validation .jsonl for a .jsonl --task (demo: DATA/demo/val.jsonl)"
    )
    ft.add_argument("--train-split", default="train", help="split trained on, for evaluation-package tasks")
    ft.add_argument("--val-split", default="val", help="split evaluated on, for evaluation-package tasks")
    ft.add_argument("--max-length", type=int, default=None, help="default 256 (recipe: the task's)")
    add_recipe_arguments(ft)
    add_packing_argument(ft)
    ft.add_argument(
        "--append-eop",
        choices=("auto", "yes", "no"),
        default="auto",
        help="end multi-token candidates with eop (SuperGLUE PVPs do, spec §2.4-2)",
    )
    exp = sub.add_parser(
        "export",
        help="a training checkpoint -> hub-layout model directory (safetensors + config.json + tokenizer)",
        description=(
            "Write the model of a training checkpoint (sharded torch.distributed.checkpoint files, written by any "
            "number of processes) as a hub-layout directory that glm_core.load_model, export.onnx and the "
            "evaluation harness read. Runs in one process."
        ),
    )
    exp.add_argument("run_dir", help="a run directory (its newest checkpoint) or a checkpoint directory step_N")
    exp.add_argument("out", help="output directory (hub layout)")
    exp.add_argument("--step", type=int, default=None, help="export checkpoints/step_N instead of the newest")
    exp.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    exp.add_argument("--overwrite", action="store_true", help="replace the weights of an existing OUT")
    return parser


def _train_config(args: argparse.Namespace, steps: int) -> TrainConfig:
    """The run's optimisation settings; the options left unset were filled by :func:`resolve_recipe`."""
    return TrainConfig(
        steps=steps,
        micro_batch_size=args.micro_batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        min_lr_ratio=args.min_lr_ratio,
        warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay,
        betas=tuple(args.betas),
        eps=args.eps,
        clip_grad=args.clip_grad,
        precision=args.precision,
        seed=args.seed,
        log_every=args.log_every,
        save_every=args.save_every,
        save_every_minutes=args.save_every_minutes,
        eval_every=args.eval_every,
        keep_checkpoints=args.keep_checkpoints,
        lr_decay_steps=args.lr_decay_iters,
        lr_decay_style=args.lr_decay_style,
        max_skipped_steps=args.max_skipped_steps,
    )


def _model_config(args: argparse.Namespace) -> tuple[GLMConfig, str | None]:
    """The architecture and, unless training from scratch, the checkpoint directory to load."""
    from glm_core.checkpoint import SHIPPED_PRESETS

    name = args.model
    if os.path.isdir(name):
        config = GLMConfig.from_hf_config(name) if os.path.isfile(os.path.join(name, "config.json")) else None
        if config is None:
            raise ConfigError(f"{name}: no config.json; expected a hub-layout checkpoint directory")
        path: str | None = name
    elif name in SHIPPED_PRESETS:
        path = str(SHIPPED_PRESETS[name])
        config = GLMConfig.from_hf_config(path)
    elif name in PRESETS:
        config, path = GLMConfig.from_preset(name, gelu="tanh"), None
        if not args.from_scratch:
            raise ConfigError(
                f"preset {name!r} has no weights in this package; pass --from-scratch or a checkpoint directory"
            )
    else:
        raise ConfigError(
            f"--model {name!r} is neither a checkpoint directory nor a preset ({', '.join(sorted(PRESETS))})"
        )
    if args.dropout is not None:
        if not 0.0 <= args.dropout < 1.0:
            raise ConfigError(f"--dropout must lie in [0, 1), got {args.dropout}")
        config = config.replace(
            embedding_dropout_prob=args.dropout, attention_dropout_prob=args.dropout, output_dropout_prob=args.dropout
        )
    return config, (None if args.from_scratch else path)


def _load_tokenizer(args: argparse.Namespace, weights_dir: str | None) -> Any:
    from glm_core.checkpoint import SHIPPED_PRESETS
    from glm_core.tokenizer import GLMTokenizer

    directory = args.tokenizer or weights_dir
    if directory is None and args.model in SHIPPED_PRESETS:
        directory = str(SHIPPED_PRESETS[args.model])
    if directory is None and os.path.isdir(args.model):
        directory = args.model
    if directory is None:
        raise ConfigError(f"--model {args.model!r} ships no tokenizer; pass --tokenizer DIR")
    return GLMTokenizer.from_pretrained(directory)


def _check_fit(config: GLMConfig, tokenizer: Any, seq_length: int) -> None:
    """A config that does not fit the model is a user error (exit 2), caught before any work."""
    if tokenizer.vocab_size > config.vocab_size:
        raise ConfigError(
            f"tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is {config.vocab_size}; "
            "expected a tokenizer that fits the embedding table"
        )
    if seq_length > config.num_position_rows:
        raise ConfigError(
            f"--seq-length {seq_length} does not fit the model: max_sequence_length is {config.max_sequence_length} "
            f"(positions 0..{config.max_sequence_length}); expected at most {config.num_position_rows}"
        )


def run(
    args: argparse.Namespace,
    evaluate_factory: EvaluateFactory | None = None,
    task_loader: TaskLoader | None = None,
) -> dict[str, Any]:
    if args.fsdp and int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise ConfigError("--fsdp shards the model over processes; expected a launch by torchrun --nproc-per-node N>=2")
    ctx = init_distributed(args.device, args.dist_timeout_minutes)
    if args.grad_accum < 1 or (args.micro_batch_size is not None and args.micro_batch_size < 1):
        raise ConfigError("--micro-batch-size and --grad-accum must be positive")
    resolved = resolve_recipe(args, ctx.world_size)
    epochs = getattr(args, "epochs", None)
    if (args.steps is None) == (epochs is None):
        expected = "--steps or --epochs (one of them)" if args.command == "finetune" else "--steps"
        raise ConfigError(f"glm-train {args.command} needs {expected}")
    resume = resume_path(args.resume, args.out)
    check_run_outputs(args)
    if args.command == "finetune" and args.data_dir is None:
        args.data_dir = str(packaged_data_dir())  # the packaged tasks, whatever the working directory
    if resume is None:
        refuse_existing_run(args.out)  # nothing in a directory that holds a run is truncated
    stored_task = read_train_state(resume)["meta"].get("task", {}) if resume is not None else {}
    config, weights_dir = _model_config(args)
    tokenizer = _load_tokenizer(args, weights_dir)
    seq_length = args.seq_length if args.command == "pretrain" else args.max_length
    _check_fit(config, tokenizer, seq_length)
    check_kernels_option(args.kernels, ctx.device, PRECISIONS[args.precision])
    check_attention_option(args.attention, ctx.device, PRECISIONS[args.precision], config.attention_dropout_prob)
    layers = checkpoint_layers(args.activation_checkpointing, args.gradient_checkpointing, config.num_layers)
    report = ReportConfig(args.report_to, args.peak_tflops, project=args.wandb_project, run_name=args.run_name)

    if args.command == "pretrain":
        from training.data import read_corpus, sentence_end_ids, tokenize_documents
        from training.sampler import MaskingConfig, PretrainSampler, dblock_id

        masking = MaskingConfig(
            bert_prob=args.bert_prob,
            gap_sentence_prob=args.gap_sentence_prob,
            bert_ratio=args.bert_ratio,
            gap_sentence_ratio=args.gap_sentence_ratio,
            gpt_min_ratio=args.gpt_min_ratio,
            gpt_infill_prob=args.gpt_infill_prob,
            shuffle_spans=not args.no_shuffle_spans,
            task_mask=not args.no_task_mask,
            block_mask_prob=args.block_mask_prob,
            short_seq_prob=args.short_seq_prob,
            single_span_prob=args.single_span_prob,
        )
        dblock = dblock_id(tokenizer.family, tokenizer.special)
        if masking.block_mask_prob > 0 and dblock is not None and dblock >= config.vocab_size:
            raise ConfigError(
                f"--block-mask-prob needs the [dBLOCK] row {dblock}, but the model's vocab_size is {config.vocab_size}; "
                "expected a model whose embedding table holds it (spec §3.2)"
            )
        if args.data_workers < 0:
            raise ConfigError(f"--data-workers must be >= 0, got {args.data_workers}")
        if args.data is not None:
            from training.pretokenized import open_pretokenized

            stream = open_pretokenized(args.data, tokenizer)  # read-only memmap: pages are read as windows are
        else:
            stream = tokenize_documents(read_corpus(args.corpus), tokenizer, source=args.corpus)
        sampler = PretrainSampler(
            stream,
            tokenizer.special,
            seq_length,
            masking,
            seed=args.seed,
            sentence_ends=sentence_end_ids(tokenizer),
            dblock=dblock,
            # the objective is drawn per micro-batch of the run's first split; kept when a resume changes the split
            objective_group=int(stored_task.get("objective_group", args.micro_batch_size)),
        )
        task: TrainingTask = PretrainTask(sampler, args.micro_batch_size, args.grad_accum, ctx.world_size)
        evaluate = evaluate_factory(tokenizer) if evaluate_factory is not None else None
    else:
        from training.finetune import ClozeEvaluator, ClozeTask, encode_examples, load_task_examples

        loss, metric = "ce", None
        if task_loader is not None:  # a task of the evaluation package (SuperGLUE), laid out by its patterns
            train_split = task_loader(args.train_split, tokenizer, seq_length, True)
            train_items, loss = train_split.items, train_split.loss
            val_items = []
            if not args.no_eval:
                val_split = task_loader(args.val_split, tokenizer, seq_length, False)
                val_items, metric = val_split.items, val_split.metric
        else:
            train_examples, val_examples = load_task_examples(args.task, args.data_dir, args.val_file)
            # one scoring mode for train and val (single-token only if every choice of both is one token)
            items = encode_examples(
                [*train_examples, *val_examples], tokenizer, max_length=seq_length, append_eop=args.append_eop
            )
            train_items, val_items = items[: len(train_examples)], items[len(train_examples) :]
        name = Path(args.task).stem if args.task.endswith(".jsonl") else args.task
        task = ClozeTask(
            train_items,
            tokenizer,
            args.micro_batch_size,
            args.grad_accum,
            ctx.world_size,
            seed=args.seed,
            name=name,
            loss=loss,
            pack_length=pack_length_option(args.pack_length, ctx.device),
        )
        evaluate = (
            None if (args.no_eval or not val_items) else ClozeEvaluator(val_items, tokenizer, name=name, metric=metric)
        )

    global_batch = args.micro_batch_size * args.grad_accum * ctx.world_size
    steps = args.steps if epochs is None else steps_for_epochs(epochs, len(task.encoded), global_batch)
    cfg = _train_config(args, steps)
    if epochs is not None and not args.eval_every:
        cfg.eval_every = steps // epochs  # after every epoch
    if resume is not None:
        cfg = resolve_resumed_schedule(cfg, resume, decay_given=args.lr_decay_iters is not None)
    meta = {
        "train": cfg.to_dict(),
        "task": task.describe(),
        "model_config": config.to_dict(),
        "world_size": ctx.world_size,
        "resolved": {**resolved, "epochs": epochs},
    }
    if resume is not None:
        check_resume(resume, meta, allow_batch_change=args.allow_batch_change)
    best = BestModel(Path(args.out) / "best", tokenizer) if epochs is not None and evaluate is not None else None

    model = build_model(
        config,
        seed=args.seed,
        kernels=args.kernels,
        gradient_checkpointing=layers,
        attention=args.attention,
    )
    if weights_dir is not None and resume is None:
        from glm_core.checkpoint import load_model

        loaded = load_model(weights_dir, config=config, kernels=args.kernels)
        model.load_state_dict(loaded.state_dict())
    if args.compile:
        compile_layers(model)
    final_dir = Path(args.final_dir) if args.final_dir else Path(args.out) / "final"
    result = train(
        model,
        task,
        cfg,
        out_dir=args.out,
        ctx=ctx,
        evaluate=evaluate,
        resume=resume,
        meta=meta,
        tokenizer=tokenizer,
        fsdp=args.fsdp,
        final_dir=final_dir,
        final_dtype=DTYPES[args.final_dtype],
        progress=not args.quiet,
        report=report,
        data_workers=args.data_workers if args.command == "pretrain" else 0,
        record=run_record(meta, task, ctx.world_size, getattr(args, "argv", None)) if ctx.is_main else None,
        on_evaluation=best,
    )
    summary = {
        "command": args.command,
        "steps": result.steps,
        "final_loss": finite_or_none(result.final_loss),
        "first_loss": finite_or_none(result.losses[0]) if result.losses else None,
        "count": result.tokens,
        "wall_s": round(result.wall_s, 2),
        "world_size": ctx.world_size,
        "kernels": result.kernels,
        "evaluation": result.evaluations[-1] if result.evaluations else None,
        "checkpoint": result.checkpoint,
        "final_dir": str(final_dir),
        "skipped_steps": result.skipped_steps,
    }
    if best is not None:
        summary["best"] = best.summary()
    if ctx.is_main:
        append_log(Path(args.out) / LOG_FILE, {"step": result.steps, "summary": summary})
    return summary


def run_pretokenize(args: argparse.Namespace) -> dict[str, Any]:
    """``glm-train pretokenize``: the tokenizer resolved as for ``pretrain`` (``--tokenizer``, else the model's)."""
    from training.pretokenized import pretokenize

    if args.tokenizer is None and not os.path.isdir(args.model) and args.model not in PRESETS:
        raise ConfigError(
            f"--model {args.model!r} is neither a checkpoint directory nor a preset ({', '.join(sorted(PRESETS))})"
        )
    tokenizer = _load_tokenizer(args, None)
    meta = pretokenize(args.corpus, args.out, tokenizer, overwrite=args.overwrite)
    return {"command": "pretokenize", "out": args.out, **meta}


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def run_export(args: argparse.Namespace) -> dict[str, Any]:
    """``glm-train export RUN_DIR OUT``: the checkpoint's model in the hub layout."""
    check_output(args.out, overwrite=args.overwrite, flag="OUT", make_parents=True, error=CheckpointError)
    source = Path(args.run_dir)
    if args.step is not None:
        source = source / "checkpoints" / f"step_{args.step:07d}"
    elif not (source / STATE_FILE).is_file():
        found = find_latest_checkpoint(source)
        if found is None:
            raise CheckpointError(
                f"{args.run_dir}: no training checkpoint; expected a run directory with checkpoints/ or OUT/checkpoints/step_N"
            )
        source = found
    read_train_state(source)  # a clear error before anything is written
    out = Path(args.out)
    export_checkpoint(source, out, DTYPES[args.dtype])
    return {"command": "export", "checkpoint": str(source), "out": str(out), "dtype": args.dtype}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv if argv is None else ["glm-train", *argv])  # for the run record
    print_warnings_on_one_line()
    try:
        if getattr(args, "model", None):
            from glm_core.hub import resolve_model_path

            args.model = resolve_model_path(args.model)  # a hub id becomes its snapshot directory
        if args.command == "export":
            summary = run_export(args)
        elif args.command == "pretokenize":
            summary = run_pretokenize(args)
        else:
            summary = run(args, evaluation_factory(args), evaluation_task_loader(args))
    except RunInterrupted as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"glm-train: {exc}", file=sys.stderr)
        return exc.exit_code
    except GLMError as exc:
        print(f"glm-train: error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(json_safe(summary), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
