"""The pretraining sampler and LR schedule against the rules of THUDM/GLM (commit 4f61ed7), one test per rule.

Each docstring quotes the original rule with its file:line; the sampler's own seeding scheme (module docstring of
``training/sampler.py``) is used only where a test controls a random draw.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from glm_core.errors import ConfigError
from glm_core.layout import GLMInput
from glm_core.special_tokens import sentencepiece_tokens
from training.config import CosineWithWarmup, TrainConfig
from training.sampler import MaskingConfig, PretrainSampler

TOKENS = sentencepiece_tokens(100)  # command tokens at 100..109, text ids below 100
EOS, PERIOD = TOKENS.eos, 7


def _stream(num_docs: int, sentences: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Documents of ``sentences`` (low, high) sentences of 4..12 tokens ending with PERIOD, each then eos."""
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for _ in range(num_docs):
        for _ in range(int(rng.integers(*sentences))):
            out += rng.integers(10, 100, size=int(rng.integers(3, 12))).tolist() + [PERIOD]
        out.append(EOS)
    return np.asarray(out)


SHORT_DOCS = _stream(400, (2, 6))  # 8..60 tokens: windows hold several documents
LONG_DOCS = _stream(12, (300, 301))  # ~2400 tokens each: most windows lie inside one document


def _sampler(stream: np.ndarray, masking: MaskingConfig, seq_length: int = 96, seed: int = 3) -> PretrainSampler:
    return PretrainSampler(stream, TOKENS, seq_length, masking, seed=seed, sentence_ends=[PERIOD])


def _is_suffix_branch(sample: GLMInput) -> bool:
    """The original's suffix branch leaves no [eop] in the targets; a placed (blank) span ends with one."""
    return TOKENS.eop not in sample.targets.tolist()


def _single_document(sampler: PretrainSampler, step: int, index: int, global_batch: int) -> bool:
    text = sampler.sample_text(step, index, global_batch)[: sampler.seq_length - 3]
    return not (text[:-1] == EOS).any()


DOCUMENT = dict(bert_prob=0.0, gap_sentence_prob=0.0)


# ------------------------------------------------------------------------------------------ 1. suffix vs infill
@pytest.mark.parametrize("infill_prob", [0.9, 0.1])
def test_document_suffix_is_taken_when_the_draw_is_below_gpt_infill_prob(infill_prob):
    """GLM:blocklm_utils.py:410 ``if multiple_doc or rng.random() < self.infill_prob:`` takes the suffix branch
    (411-432: ``division = len(sample['text']) - generation_length``); otherwise 434-436 place the span as a blank.
    So a single-document sample is a suffix with probability ``gpt_infill_prob``, not ``1 - gpt_infill_prob``.

    Checked exactly, by replaying the sample's first draw (its generator is seeded ``(seed, step, index)``), and
    by the rate over many samples."""
    sampler = _sampler(LONG_DOCS, MaskingConfig(**DOCUMENT, gpt_infill_prob=infill_prob))
    suffixes = total = 0
    for step in range(60):
        for i in range(8):
            if not _single_document(sampler, step, i, 8):
                continue
            suffix = _is_suffix_branch(sampler.sample(step, i, 8))
            draw = float(np.random.default_rng([sampler.seed, step, i]).random())
            assert suffix == (draw < infill_prob), (step, i, draw)
            suffixes += suffix
            total += 1
    # >= 300 samples: the binomial standard deviation of the rate is <= 0.018; 0.08 is > 4 sigma
    assert total >= 300
    assert suffixes / total == pytest.approx(infill_prob, abs=0.08)


@pytest.mark.parametrize("infill_prob", [0.0, 1.0])
def test_document_suffix_at_the_extreme_infill_probabilities(infill_prob):
    """GLM:blocklm_utils.py:410: ``rng.random() < 0.0`` never holds (every single-document sample is placed as a
    blank), ``rng.random() < 1.0`` always does (every sample is a suffix)."""
    sampler = _sampler(LONG_DOCS, MaskingConfig(**DOCUMENT, gpt_infill_prob=infill_prob))
    seen = 0
    for step in range(10):
        for i in range(8):
            if _single_document(sampler, step, i, 8):
                assert _is_suffix_branch(sampler.sample(step, i, 8)) == (infill_prob == 1.0)
                seen += 1
    assert seen > 40


def test_several_documents_always_take_the_suffix():
    """GLM:blocklm_utils.py:408-410: ``multiple_doc`` (an eos before the last token) takes the suffix branch
    whatever ``infill_prob`` is (and draws nothing)."""
    sampler = _sampler(SHORT_DOCS, MaskingConfig(**DOCUMENT, gpt_infill_prob=0.0))
    for step in range(6):
        for i in range(4):
            assert not _single_document(sampler, step, i, 4)
            assert _is_suffix_branch(sampler.sample(step, i, 4))


# ------------------------------------------------------------------------------------------ 2. no eop on a suffix
def test_suffix_part_b_is_sop_plus_the_span_without_its_last_token_and_has_no_eop():
    """GLM:blocklm_utils.py:415-419 (suffix branch): ``tokens = source + [gMASK, sop] + target[:-1]``,
    ``targets = source + [gMASK] + target``, loss on the target only; 423-428: Part B at the position of [gMASK]
    (``position_ids[len(source) + 1:] = len(source)``), block positions 1..len(target). No [eop] is appended,
    unlike a blank (make_block_data, GLM:blocklm_utils.py:199-201: ``[sop] span`` -> ``span [eop]``)."""
    sampler = _sampler(SHORT_DOCS, MaskingConfig(**DOCUMENT))
    for step in range(6):
        _, fraction = sampler.batch_plan(step)
        for i in range(4):
            sample = sampler.sample(step, i, 4)
            window = sampler.window_tokens(step * 4 + i).tolist()
            n = sampler.seq_length - 3  # the document objective keeps seq_length - 3 text tokens
            length = min(max(1, math.floor(fraction * n)), n - 1)
            prefix, span = window[: n - length], window[n - length : n]
            assert sample.input_ids.tolist() == [TOKENS.cls, *prefix, TOKENS.gmask, TOKENS.sop, *span[:-1]]
            sep = len(prefix) + 2
            assert sample.sep == sep and len(sample) == n + 2
            assert sample.targets[sep:].tolist() == span
            assert TOKENS.eop not in sample.targets.tolist()
            assert sample.position_ids[0].tolist() == [*range(sep), *[sep - 1] * length]
            assert sample.position_ids[1].tolist() == [0] * sep + list(range(1, length + 1))
            assert sample.loss_mask.tolist() == [0.0] * sep + [1.0] * length


def test_placed_document_span_keeps_its_eop():
    """GLM:blocklm_utils.py:434-436: the non-suffix branch is ``generate_blank_data(..., task='generation')``,
    i.e. make_block_data, whose targets are ``span [eop]`` (GLM:blocklm_utils.py:200-201)."""
    sampler = _sampler(LONG_DOCS, MaskingConfig(**DOCUMENT, gpt_infill_prob=0.0))
    for step in range(4):
        for i in range(8):
            if _single_document(sampler, step, i, 8):
                sample = sampler.sample(step, i, 8)
                assert sample.targets[-1] == TOKENS.eop and sample.input_ids[sample.sep] == TOKENS.sop
                assert len(sample) == sampler.seq_length  # n + 3: [CLS], [gMASK], [sop]/[eop]


# ------------------------------------------------------------------------------------------ 3. single span per batch
def _blank_count(sample: GLMInput) -> int:
    return int(np.isin(sample.input_ids[: sample.sep], TOKENS.mask_ids()).sum())


def test_single_span_is_drawn_once_per_batch_and_forces_the_token_objective():
    """GLM:blocklm_utils.py:324-326: ``rand = rng.random(); single_span = rand < self.single_span_prob;
    rand = 0.0 if single_span else rng.random()`` — one draw per batch (``construct_blocks`` builds a batch), and a
    single-span batch sets the objective draw to 0.0, so ``rand < self.bert_prob`` (328) picks the token objective;
    331-334: then every sample of the batch gets exactly one Poisson span."""
    masking = MaskingConfig(bert_prob=0.4, gap_sentence_prob=0.3, single_span_prob=0.5)
    sampler = _sampler(SHORT_DOCS, masking, seq_length=128)
    without = _sampler(SHORT_DOCS, MaskingConfig(bert_prob=0.4, gap_sentence_prob=0.3), seq_length=128)
    steps, singles, tokens, budget_batches = 300, 0, 0, 0
    for step in range(steps):
        single = sampler.single_span(step)
        objective = sampler.batch_plan(step)[0]
        singles += single
        tokens += objective == "token"
        if single:
            assert objective == "token"
            assert all(_blank_count(sampler.sample(step, i, 4)) == 1 for i in range(4)), "the whole batch"
        elif step < 60:
            # the rest of the batch draws are those of a sampler without the option: same batch, bit for bit
            assert objective == without.batch_plan(step)[0]
            a, b = sampler.batch(step, 4), without.batch(step, 4)
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
            if objective == "token":
                budget_batches += 1
                assert max(_blank_count(sampler.sample(step, i, 4)) for i in range(4)) > 1, "15 % budget"
    assert budget_batches > 3
    # binomial over 300 batches: standard deviation <= 0.029; 0.1 is > 3.4 sigma
    assert singles / steps == pytest.approx(0.5, abs=0.1)
    assert tokens / steps == pytest.approx(0.5 + 0.5 * 0.4, abs=0.1)


@pytest.mark.parametrize(("gap_sentence_prob", "objective"), [(0.5, "sentence"), (0.0, "document")])
def test_single_span_batch_with_no_token_objective_takes_the_first_objective_of_positive_probability(
    gap_sentence_prob, objective
):
    """GLM:blocklm_utils.py:326-328, 361: with ``bert_prob`` 0 the forced ``rand = 0.0`` fails ``0.0 < 0.0`` and
    falls to ``rand < bert_prob + gap_sentence_prob`` (sentence when that is > 0), else the document objective."""
    sampler = _sampler(
        SHORT_DOCS, MaskingConfig(bert_prob=0.0, gap_sentence_prob=gap_sentence_prob, single_span_prob=1.0)
    )
    assert {sampler.batch_plan(step)[0] for step in range(20)} == {objective}


# ------------------------------------------------------------------------------------------ 4. short sequences
def _piece_of(chunk: list[int], window: list[int]) -> bool:
    return any(window[k : k + len(chunk)] == chunk for k in range(len(window) - len(chunk) + 1))


def test_short_batch_cuts_each_window_into_several_chunks_and_keeps_the_global_batch_size():
    """GLM:blocklm_utils.py:284-285: ``target_length = rng.randrange(32, max_seq_length - 1)``,
    ``num_splits = (max_seq_length - 1) // target_length``; 289-309: every sample yields ``num_splits`` chunks, each
    from its own random start. Ours fills the global batch with those chunks in order and cuts it back to the global
    batch size: slot ``i`` holds a chunk of window ``step * B + i // k`` (module docstring, ``short_seq_prob``)."""
    sampler = _sampler(SHORT_DOCS, MaskingConfig(short_seq_prob=1.0), seq_length=256)
    batch_size, ks = 8, set()
    for step in range(30):
        length = sampler.short_length(step)
        k = sampler.window // length
        ks.add(k)
        batch = sampler.batch(step, batch_size)
        assert batch["input_ids"].shape == (batch_size, sampler.seq_length) and len(batch["lengths"]) == batch_size
        chunks: dict[int, list[list[int]]] = {}
        for i in range(batch_size):
            chunk = sampler.sample_text(step, i, batch_size).tolist()
            window = step * batch_size + i // k
            assert sampler.source_window(step, i, batch_size) == window
            assert len(chunk) <= length and _piece_of(chunk, sampler.window_tokens(window).tolist())
            chunks.setdefault(window, []).append(chunk)
        assert len(chunks) == math.ceil(batch_size / k), "the step reads ceil(B / k) windows"
        if k >= 2:
            assert any(len({tuple(c) for c in cs}) > 1 for cs in chunks.values()), "chunks are drawn independently"
    assert max(ks) >= 3 and 1 in ks  # w = 255: k = 1 (L > 127) .. 7 (L <= 36)


def test_short_batches_stay_a_function_of_seed_and_step_and_ranks_read_only_their_own_windows():
    """The global batch of a short step is a pure function of (seed, step) (module docstring), so every world size
    gives the same global batch, and rank ``r`` builds only the slots of its slice (it reads only their windows)."""
    masking = MaskingConfig(bert_prob=0.5, gap_sentence_prob=0.3, short_seq_prob=1.0)
    reference = _sampler(SHORT_DOCS, masking, seq_length=128, seed=9)
    batch_size, world = 8, 4
    for step in (7, 2, 11, 0):  # out of order, as a resumed run
        whole = reference.batch(step, batch_size)
        again = _sampler(SHORT_DOCS, masking, seq_length=128, seed=9).batch(step, batch_size)
        k = reference.window // reference.short_length(step)
        parts = []
        for rank in range(world):
            sampler = _sampler(SHORT_DOCS, masking, seq_length=128, seed=9)
            read: list[int] = []
            original = sampler.window_tokens

            def recording(g: int, _read=read, _original=original) -> np.ndarray:
                _read.append(int(g))
                return _original(g)

            sampler.window_tokens = recording  # type: ignore[method-assign]
            parts.append(sampler.batch(step, batch_size, rank=rank, world_size=world))
            slots = range(rank * batch_size // world, (rank + 1) * batch_size // world)
            assert set(read) == {step * batch_size + i // k for i in slots}
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
            np.testing.assert_array_equal(again[key], whole[key])


# ------------------------------------------------------------------------------------------ 5. --lr-decay-iters
def test_cosine_decay_ends_at_lr_decay_steps_and_then_holds_the_floor():
    """GLM:train_utils.py:223-226: ``num_iters = args.lr_decay_iters`` when given, else ``args.train_iters``;
    231-235: ``warmup_iter = args.warmup * num_iters`` and the decay spans ``num_iters - warmup_iter``;
    GLM:learning_rates.py:49: ``decay_step_ratio = min(1.0, ...)``, so after the decay the rate stays at the floor
    even when training runs longer."""
    cfg = TrainConfig(steps=1000, lr_decay_steps=200, warmup_ratio=0.05, min_lr_ratio=0.1)
    assert cfg.decay_steps == 200 and cfg.warmup_steps == 10  # warmup: 5 % of the decay iterations
    schedule = CosineWithWarmup.for_config(cfg)
    assert schedule == CosineWithWarmup(warmup=10, total=200, min_ratio=0.1)
    assert schedule(9) == pytest.approx(1.0)
    assert schedule(105) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert schedule(150) > schedule(180) > 0.1
    assert [schedule(s) for s in (200, 201, 500, 999)] == pytest.approx([0.1] * 4)


def test_lr_decay_steps_default_is_the_run_length_and_changes_nothing():
    """GLM:train_utils.py:225-226: without ``--lr-decay-iters`` the decay spans ``train_iters``."""
    cfg = TrainConfig(steps=300, warmup_ratio=0.05, min_lr_ratio=0.1)
    assert cfg.lr_decay_steps is None and cfg.decay_steps == 300 and cfg.warmup_steps == 15
    assert CosineWithWarmup.for_config(cfg) == CosineWithWarmup(warmup=15, total=300, min_ratio=0.1)
    assert cfg.to_dict()["lr_decay_steps"] is None


@pytest.mark.parametrize("bad", [0, -5, True, 2.5, "100"])
def test_lr_decay_steps_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError, match="lr_decay_steps"):
        TrainConfig(steps=100, lr_decay_steps=bad)


def test_lr_decay_iters_flag_reaches_the_train_config_and_the_loop(tmp_path):
    """``--lr-decay-iters`` -> ``TrainConfig.lr_decay_steps`` -> the loop's schedule (logged learning rates)."""
    from glm_core.config import GLMConfig
    from glm_core.model import build_model
    from training.cli import _train_config, build_parser
    from training.loop import train
    from training.recipes import resolve_recipe
    from training.tasks import PretrainTask

    common = ["pretrain", "--out", str(tmp_path), "--corpus", "c.txt", "--steps", "4"]
    parser = build_parser()

    def resolved(*argv: str) -> TrainConfig:
        args = parser.parse_args([*common, *argv])
        resolve_recipe(args, 1)
        return _train_config(args, args.steps)

    assert resolved().lr_decay_steps is None
    cfg = resolved("--lr-decay-iters", "2", "--warmup-ratio", "0", "--lr", "1e-3")
    assert cfg.lr_decay_steps == 2 and cfg.decay_steps == 2

    config = GLMConfig(
        vocab_size=128, hidden_size=32, num_layers=1, num_attention_heads=1, max_sequence_length=64,
        tokenizer_family="sentencepiece", name="lr-decay-test",
    )  # fmt: skip
    sampler = _sampler(SHORT_DOCS, MaskingConfig(), seq_length=32, seed=0)
    cfg.log_every = 1
    train(build_model(config, seed=0), PretrainTask(sampler, 2, 1, 1), cfg, out_dir=tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
    # the rate each step's update used: cosine from 1e-3 to 1e-4 over 2 steps, then the floor
    assert [lrs[s] for s in (1, 2, 3, 4)] == pytest.approx([1e-3, 5.5e-4, 1e-4, 1e-4])


def test_resume_compares_the_resolved_decay_length(monkeypatch, tmp_path):
    """The resume check treats a missing/None ``lr_decay_steps`` (checkpoints from before the option, or the
    default) as ``steps``; a different decay length is a different run."""
    import training.resume as resume

    old_train = TrainConfig(steps=50).to_dict()
    del old_train["lr_decay_steps"]  # a checkpoint written before the option existed
    stored = {"train": old_train, "task": {"task": "pretrain"}, "model_config": {"name": "m"}}
    monkeypatch.setattr(resume, "read_train_state", lambda path: {"meta": stored, "step": 10})

    def meta(**train: int) -> dict[str, object]:
        return {**stored, "train": TrainConfig(steps=50, **train).to_dict()}

    resume.check_resume(tmp_path, meta())  # default: compatible
    resume.check_resume(tmp_path, meta(lr_decay_steps=50))  # the same schedule, spelled out
    with pytest.raises(ConfigError, match="lr_decay_steps was 50 in the checkpoint, this run has 30"):
        resume.check_resume(tmp_path, meta(lr_decay_steps=30))
