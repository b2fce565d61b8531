"""GLM training: blank-infilling pretraining (spec glm_reference §5) and cloze fine-tuning (spec §6.1) on torchrun.

One responsibility a module, the loop calling the others and none of them calling back up:

- :mod:`training.cli` — ``glm-train`` / ``python -m training`` (``pretrain``, ``finetune``, ``pretokenize``,
  ``export``);
- :mod:`training.loop` — the optimisation loop shared by pretraining and fine-tuning;
- :mod:`training.config` — :class:`~training.config.TrainConfig` and the learning-rate schedule;
- :mod:`training.distributed` — process group, collectives on the model's device, DDP / FSDP wrapping;
- :mod:`training.checkpointing` — training checkpoints and the final hub-layout model;
- :mod:`training.guard` — non-finite steps skipped, stop signals turned into a checkpoint;
  :mod:`training.resume` — what a resume may change; :mod:`training.options` — checkpoint intervals, skip limit,
  collective timeout; :mod:`training.recipes` — the paper's recipes, epochs, the best epoch;
  :mod:`training.run_record` — the reproducibility record heading ``log.jsonl``;
- :mod:`training.data` — corpus reading and tokenization; :mod:`training.pretokenized` — the memory-mapped token
  files of ``pretokenize``; :mod:`training.sampler` — span corruption; :mod:`training.batches` — batches built
  ahead in DataLoader worker processes;
- :mod:`training.tasks` — what the loop trains on; :mod:`training.finetune`, :mod:`training.superglue` — cloze
  fine-tuning and the SuperGLUE tasks as training data;
- :mod:`training.evaluation_hook` — the evaluation package's tasks run during training;
- :mod:`training.corpus` — the synthetic corpus glm-tiny was trained on.
"""
