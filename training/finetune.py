"""Cloze fine-tuning (spec glm_reference §6.1): cross-entropy over the scores of a task's choices.

An example is ``{"text": "... [MASK] ...", "choices": [...], "label": i}`` (the demo task's format; SuperGLUE tasks are
turned into it by their patterns). Scores, as the original ``--cloze-eval`` computes them (spec §2.4, §6.1):

- **single-token** (every choice is one token): the raw logit at the ``sop`` position, indexed at the choice ids
  (``glm_core.layout.build_single_token_cloze``);
- **multi-token**: one sequence per choice, score = sum of log-softmax over the choice's tokens (plus ``eop`` when
  ``append_eop``, as SuperGLUE PVPs do; ``glm_core.layout.build_candidate_sequences``).

Multi-token scores may be length-normalised, ``sum / len**length_penalty`` over the scored tokens (incl. eop);
WSC uses ``length_penalty = 1`` (the mean), every other task 0 (the sum) (spec §6.1).

The loss of an example is ``CE(scores, label)`` (``loss="ce"``), or for WSC ``-score(label) + CE(scores, label)``
(``loss="mix"``, GLM:finetune_glm.py:140-156); :class:`ClozeTask` feeds the training loop of :mod:`training.loop`,
:class:`ClozeEvaluator` reports accuracy or a task's own metric. Choices are encoded as ``" " + choice`` (a word after
a space, as the verbalizers of spec §3.2 carry a leading space).

Supported tasks (``glm-train finetune --task``): ``demo``, any cloze ``.jsonl``, and through the evaluation package's
SuperGLUE patterns BoolQ, CB, COPA (training adds the swapped-choice copies), MultiRC, ReCoRD (training: the gold plus
at most 9 sampled negatives; evaluation: EM/F1), RTE, WiC and WSC (``mix`` loss, mean log-prob).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from glm_core.data_files import iter_jsonl
from glm_core.errors import ConfigError, DataError
from glm_core.layout import GLMInput, build_candidate_sequences, build_single_token_cloze, collate, pack
from glm_core.model import GLMModel
from training.distributed import model_call

SCORE_PAD = -10000.0  # spec §2.4-2: padded (missing) choices get -10000
EVAL_BATCH_EXAMPLES = 32
LOSSES = ("ce", "mix")  # spec §6.1: CE over the choice scores; WSC's mix = -score(gold) + CE

__all__ = [
    "ClozeEvaluator",
    "ClozeExample",
    "ClozeItem",
    "ClozeScorer",
    "ClozeSplit",
    "ClozeTask",
    "LOSSES",
    "Metric",
    "cloze_losses",
    "encode_examples",
    "load_task_examples",
    "read_cloze_jsonl",
]


@dataclass(frozen=True)
class ClozeExample:
    text: str
    choices: tuple[str, ...]
    label: int


def read_cloze_jsonl(path: str | os.PathLike[str]) -> list[ClozeExample]:
    """Examples of a ``.jsonl`` file; :class:`DataError` naming the line for anything malformed."""
    name = os.fspath(path)
    examples = []
    for n, row in iter_jsonl(name, kind="task file", record="a JSON object with text, choices, label"):
        text_, choices, label = row.get("text"), row.get("choices"), row.get("label")
        if not isinstance(text_, str) or "[MASK]" not in text_:
            raise DataError(f"{name}:{n}: 'text' must be a string holding [MASK]")
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c.strip() for c in choices)
        ):
            raise DataError(f"{name}:{n}: 'choices' must be a list of at least two non-empty strings")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise DataError(f"{name}:{n}: 'label' must be an index into choices (0..{len(choices) - 1}), got {label!r}")
        examples.append(ClozeExample(text_, tuple(choices), label))
    if not examples:
        raise DataError(f"{name}: no examples; expected JSON lines with text, choices, label")
    return examples


def load_task_examples(
    task: str, data_dir: str | os.PathLike[str], val_file: str | None = None
) -> tuple[list[ClozeExample], list[ClozeExample]]:
    """``demo`` -> ``DATA/demo/{train,val}.jsonl``; a ``.jsonl`` path -> that file (+ ``val_file``)."""
    if task == "demo":
        root = Path(data_dir) / "demo"
        train = read_cloze_jsonl(root / "train.jsonl")
        val = read_cloze_jsonl(val_file or root / "val.jsonl")
        return train, val
    if task.endswith(".jsonl"):
        return read_cloze_jsonl(task), (read_cloze_jsonl(val_file) if val_file else [])
    raise ConfigError(f"unknown fine-tuning task {task!r}; expected 'demo' or a .jsonl file here")


# ------------------------------------------------------------------------------------------------------- scoring
@dataclass
class ClozeItem:
    """One scored unit, already laid out: ``samples`` is one ``[CLS] A [eos] [sop]`` input (single-token cloze,
    scored at the ids ``choice_ids[i][0]``) or one input per choice (multi-token); ``label`` indexes the choices.

    ``length_penalty`` divides a multi-token score by ``len**length_penalty`` (spec §6.1: WSC 1, else 0); ``meta`` holds
    what a task's own metric needs (ReCoRD: candidate texts and gold answers; WSC: the example's true/false label)."""

    samples: list[GLMInput]
    choice_ids: list[list[int]]
    label: int
    length_penalty: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def single_token(self) -> bool:
        return len(self.samples) == 1 and len(self.choice_ids) > 1


class ClozeScorer:
    """Turns examples into GLM inputs once (``glm_core.layout``) and scores them with a model."""

    def __init__(self, tokenizer: Any, *, max_length: int | None = None, append_eop: str | bool = "auto") -> None:
        self.tokenizer = tokenizer
        self.tokens = tokenizer.special
        self.max_length = max_length
        self.append_eop_setting = append_eop

    def resolve_mode(self, examples: Sequence[ClozeExample]) -> tuple[bool, bool]:
        """``(single_token, append_eop)`` for a whole task: single-token when every choice is one token and eop
        is not asked for; multi-token candidates end with eop unless told otherwise (spec §6.1 PVPs)."""
        setting = self.append_eop_setting
        if setting in (True, "yes"):
            return False, True
        if all(len(self.encode_choice(c)) == 1 for ex in examples for c in ex.choices):
            return True, False
        return False, setting not in (False, "no")

    def encode_choice(self, choice: str) -> list[int]:
        ids = self.tokenizer.encode(" " + choice.strip())
        if not ids:
            raise DataError(f"choice {choice!r} encodes to no tokens")
        return ids

    def encode(self, example: ClozeExample, single_token: bool, append_eop: bool) -> ClozeItem:
        text_ids = self.tokenizer.encode(example.text)
        choice_ids = [self.encode_choice(c) for c in example.choices]
        if single_token:
            sample = build_single_token_cloze(text_ids, self.tokens, max_length=self.max_length)
            return ClozeItem([sample], choice_ids, example.label)
        samples = build_candidate_sequences(
            text_ids, choice_ids, self.tokens, append_eop=append_eop, max_length=self.max_length
        )
        return ClozeItem(samples, choice_ids, example.label)

    def scores(
        self, model: nn.Module, encoded: Sequence[ClozeItem], device: torch.device, pack_length: int = 0
    ) -> torch.Tensor:
        """``[N, C_max]`` float32 scores, :data:`SCORE_PAD` where an example has fewer choices.

        ``pack_length > 0``: the inputs are packed several to a row of at most that many tokens
        (:func:`glm_core.layout.pack`, attention never crossing samples) instead of one per padded row; the scores
        are the same up to rounding (the rows hold other sums), fewer pad tokens are computed.
        """
        if not encoded:
            raise DataError("no examples to score")
        width = max(len(e.choice_ids) for e in encoded)
        single = encoded[0].single_token
        if any(e.single_token != single for e in encoded):
            raise DataError("a batch mixes single-token and multi-token items; score them separately")
        if single:
            flat = [e.samples[0] for e in encoded]
        else:
            flat = [s for e in encoded for s in e.samples]
        if pack_length > 0:
            batch = pack(flat, self.tokens.pad, max(pack_length, max(len(s) for s in flat)))
        else:
            batch = collate(flat, self.tokens.pad)
        tensors = {k: torch.from_numpy(v).to(device) for k, v in batch.items() if k != "lengths"}
        if single:
            verbalizers = torch.full((len(encoded), width), 0, dtype=torch.long)
            valid = torch.zeros((len(encoded), width), dtype=torch.bool)
            for i, e in enumerate(encoded):
                verbalizers[i, : len(e.choice_ids)] = torch.tensor([c[0] for c in e.choice_ids])
                valid[i, : len(e.choice_ids)] = True
            raw = model_call(model, _single_token_scores, tensors, verbalizers.to(device))  # [N, C]
        else:
            per_sample = model_call(model, _candidate_log_likelihood, tensors)  # [sum C]
            divisors = torch.tensor(_length_divisors(encoded), dtype=per_sample.dtype, device=per_sample.device)
            per_sample = per_sample / divisors  # spec §6.1: sum / len**length_penalty
            raw = torch.full((len(encoded), width), SCORE_PAD, device=per_sample.device)
            valid = torch.zeros((len(encoded), width), dtype=torch.bool)
            offset = 0
            for i, e in enumerate(encoded):
                n = len(e.samples)
                raw[i, :n] = per_sample[offset : offset + n]
                valid[i, :n] = True
                offset += n
        return torch.where(valid.to(raw.device), raw, torch.full_like(raw, SCORE_PAD))


def _length_divisors(encoded: Sequence[ClozeItem]) -> list[float]:
    """``len**length_penalty`` per candidate sequence, ``len`` = its scored tokens (incl. eop); 1 for a plain sum."""
    out = []
    for e in encoded:
        for sample in e.samples:
            n = float(np.sum(sample.loss_mask > 0))
            out.append(n**e.length_penalty if e.length_penalty else 1.0)
    return out


def _hidden(glm: GLMModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Final hidden states ``[R, S, h]`` of a collated batch (sep rule) or a packed one (explicit block mask)."""
    mask = batch.get("attention_mask")
    out = glm(
        batch["input_ids"],
        batch["position_ids"],
        sep=batch["sep"],
        attention_mask=None if mask is None else mask[:, None],
        use_cache=False,
        return_logits=False,
    )
    return out.hidden_states


def _single_token_scores(glm: GLMModel, batch: dict[str, torch.Tensor], verbalizers: torch.Tensor) -> torch.Tensor:
    """spec §2.4-1: raw logits at the sop position (``sep``) at the verbalizer ids."""
    hidden_states = _hidden(glm, batch)
    if "sample_sep_index" in batch:  # packed: each sample's sop position in the flattened rows
        hidden = hidden_states.reshape(-1, hidden_states.shape[-1])[batch["sample_sep_index"]]  # [N, h]
    else:
        rows = torch.arange(batch["input_ids"].shape[0], device=batch["sep"].device)
        hidden = hidden_states[rows, batch["sep"]]  # [N, h]
    logits = glm.lm_logits(hidden)  # [N, V] float32
    return torch.gather(logits, 1, verbalizers)  # [N, C]


def _candidate_log_likelihood(glm: GLMModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """spec §2.4-2: sum of log-softmax of each sequence's targets over its scored (loss_mask) tokens."""
    hidden_states = _hidden(glm, batch)
    mask = batch["loss_mask"] > 0  # [R, S]
    hidden = hidden_states[mask]  # [T, h]
    logp = F.log_softmax(glm.lm_logits(hidden), dim=-1)  # [T, V]
    token_scores = torch.gather(logp, 1, batch["targets"][mask][:, None])[:, 0]  # [T]
    if "segment" in batch:  # packed: the sample each token belongs to
        sample_of_token = batch["segment"][mask]
        count = batch["sample_sep_index"].shape[0]
    else:
        sample_of_token = torch.nonzero(mask)[:, 0]  # [T]
        count = mask.shape[0]
    sums = torch.zeros(count, dtype=token_scores.dtype, device=token_scores.device)
    return sums.index_add(0, sample_of_token, token_scores)  # [M]


# ------------------------------------------------------------------------------------------------------- training
Metric = Callable[[Sequence[ClozeItem], Sequence[int]], dict[str, float]]  # (items, argmax predictions) -> metrics


@dataclass
class ClozeSplit:
    """One split of a fine-tuning task: its items, the training loss (:data:`LOSSES`) and, for evaluation, the task's
    own metric (``None``: accuracy of the argmax against ``item.label``)."""

    items: list[ClozeItem]
    loss: str = "ce"
    metric: Metric | None = None


def cloze_losses(scores: torch.Tensor, labels: torch.Tensor, loss: str) -> torch.Tensor:
    """``[N]`` per-example losses from ``[N, C]`` scores (spec §6.1, GLM:finetune_glm.py:140-156):
    ``ce`` = CE(scores, label); ``mix`` = -scores[label] + CE(scores, label)."""
    if loss not in LOSSES:
        raise ConfigError(f"unknown fine-tuning loss {loss!r}; expected one of {', '.join(LOSSES)}")
    ce = F.cross_entropy(scores, labels, reduction="none")  # [N]
    if loss == "ce":
        return ce
    gold = scores.gather(1, labels[:, None])[:, 0]  # [N]
    return ce - gold


class ClozeTask:
    """Fine-tuning data for :func:`training.loop.train`: step ``k``'s global batch is items
    ``perm_e[(k * B + i) % N]`` (epoch permutations seeded by ``(seed, e)``), sliced per rank and micro-batch;
    the loss is ``loss`` (:data:`LOSSES`) over the items' choice scores."""

    def __init__(
        self,
        items: Sequence[ClozeItem],
        tokenizer: Any,
        micro_batch_size: int,
        grad_accum: int,
        world_size: int,
        *,
        seed: int = 0,
        name: str = "cloze",
        loss: str = "ce",
        pack_length: int = 0,
    ) -> None:
        if not items:
            raise DataError("fine-tuning needs at least one training example")
        if loss not in LOSSES:
            raise ConfigError(f"unknown fine-tuning loss {loss!r}; expected one of {', '.join(LOSSES)}")
        if isinstance(pack_length, bool) or not isinstance(pack_length, int) or pack_length < 0:
            raise ConfigError(f"--pack-length must be an integer >= 0 (0: no packing), got {pack_length!r}")
        if len({item.single_token for item in items}) > 1:
            raise DataError("a fine-tuning task mixes single-token and multi-token items; expected one kind")
        self.encoded = list(items)
        self.scorer = ClozeScorer(tokenizer)
        self.single_token = self.encoded[0].single_token
        self.micro_batch_size = micro_batch_size
        self.grad_accum = grad_accum
        self.global_batch_size = micro_batch_size * grad_accum * world_size
        self.seed = seed
        self.name = name
        self.loss = loss
        self.pack_length = pack_length  # > 0: the micro-batch's inputs packed into rows of this many tokens

    def _example_index(self, global_index: int) -> int:
        epoch, i = divmod(global_index, len(self.encoded))
        perm = np.random.default_rng([self.seed, epoch, 0xF17E]).permutation(len(self.encoded))
        return int(perm[i])

    def micro_batches(self, step: int, rank: int, world_size: int) -> list[dict[str, Any]]:
        per_rank = self.global_batch_size // world_size
        first = step * self.global_batch_size + rank * per_rank
        indices = [self._example_index(first + j) for j in range(per_rank)]
        size = self.micro_batch_size
        return [{"index": np.asarray(indices[i * size : (i + 1) * size])} for i in range(self.grad_accum)]

    def count(self, batch: dict[str, Any]) -> float:
        return float(len(batch["index"]))

    def loss_sum(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        encoded = [self.encoded[int(i)] for i in batch["index"]]
        scores = self.scorer.scores(model, encoded, device, self.pack_length)  # [N, C]
        labels = torch.tensor([e.label for e in encoded], device=scores.device)
        return cloze_losses(scores.float(), labels, self.loss).sum()  # spec §6.1: CE (or mix) over the choice scores

    def describe(self) -> dict[str, Any]:
        return {
            "task": f"finetune:{self.name}",
            "items": len(self.encoded),
            "single_token": self.single_token,
            "loss": self.loss,
            "seed": self.seed,
        }


class ClozeEvaluator:
    """``evaluate(model) -> {"<name>_<metric>": ..., "<name>_items": ...}`` for the training loop's hook: accuracy of
    the argmax against ``item.label``, or the metrics of ``metric(items, predictions)`` (ReCoRD EM/F1, WSC)."""

    def __init__(
        self, items: Sequence[ClozeItem], tokenizer: Any, *, name: str = "cloze", metric: Metric | None = None
    ) -> None:
        if not items:
            raise DataError("no evaluation examples")
        self.name = name
        self.scorer = ClozeScorer(tokenizer)
        self.encoded = list(items)
        self.metric = metric

    def predictions(self, model: nn.Module) -> list[int]:
        """The argmax choice of every item, in order."""
        device = next(model.parameters()).device
        out: list[int] = []
        with torch.no_grad():
            for start in range(0, len(self.encoded), EVAL_BATCH_EXAMPLES):
                chunk = self.encoded[start : start + EVAL_BATCH_EXAMPLES]
                scores = self.scorer.scores(model, chunk, device)
                out.extend(int(p) for p in scores.argmax(dim=1).cpu().tolist())
        return out

    def __call__(self, model: GLMModel) -> dict[str, Any]:
        predictions = self.predictions(model)
        if self.metric is None:
            correct = sum(int(p == e.label) for p, e in zip(predictions, self.encoded, strict=True))
            values = {"accuracy": correct / len(self.encoded)}
        else:
            values = self.metric(self.encoded, predictions)
        return {**{f"{self.name}_{k}": v for k, v in values.items()}, f"{self.name}_items": len(self.encoded)}


def encode_examples(
    examples: Sequence[ClozeExample], tokenizer: Any, *, max_length: int | None = None, append_eop: str | bool = "auto"
) -> list[ClozeItem]:
    """Lay out ``{"text", "choices", "label"}`` examples; one scoring mode for the whole set (see the module doc)."""
    scorer = ClozeScorer(tokenizer, max_length=max_length, append_eop=append_eop)
    single, eop = scorer.resolve_mode(examples)
    return [scorer.encode(e, single, eop) for e in examples]
