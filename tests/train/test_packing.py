"""Sequence packing for fine-tuning: several cloze inputs per row, each with its own positions and sep rule, the
attention never crossing them — scores equal the padded batch's, one input per row."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glm_core.checkpoint import SHIPPED_PRESETS
from glm_core.config import GLMConfig
from glm_core.errors import LayoutError
from glm_core.layout import collate, pack
from glm_core.model import build_model
from glm_core.tokenizer import GLMTokenizer
from training.finetune import ClozeExample, ClozeScorer, ClozeTask, encode_examples, load_task_examples
from training.resume import packaged_data_dir

EXAMPLES = [
    ClozeExample("The capital of Pamtrulia is [MASK].", ("Kasmulton", "Solton", "twenty"), 0),
    ClozeExample("After nineteen comes [MASK].", ("twenty", "Monday"), 1),
    ClozeExample("A cat says [MASK] and a dog says woof, as everyone in the village knows.", ("meow", "moo"), 0),
]


@pytest.fixture(scope="module")
def tokenizer():
    return GLMTokenizer.from_pretrained(SHIPPED_PRESETS["glm-tiny"])


def _model():
    config = GLMConfig(
        vocab_size=2048, hidden_size=64, num_layers=2, num_attention_heads=1, max_sequence_length=128,
        tokenizer_family="sentencepiece", name="packing-test", embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0, output_dropout_prob=0.0,
    )  # fmt: skip
    return build_model(config, seed=0).eval()


def test_pack_places_samples_first_fit_with_a_block_diagonal_mask(tokenizer):
    samples = [s for item in encode_examples(EXAMPLES, tokenizer) for s in item.samples]
    lengths = [len(s) for s in samples]
    batch = pack(samples, tokenizer.special.pad, max_len=64)
    padded = collate(samples, tokenizer.special.pad)
    rows, width = batch["input_ids"].shape
    assert rows < len(samples) and width <= 64 and int(batch["lengths"].sum()) == sum(lengths)
    assert batch["input_ids"].size < padded["input_ids"].size  # fewer token slots than one sample per row
    mask = batch["attention_mask"]
    for index, sample in enumerate(samples):
        where = np.argwhere(batch["segment"] == index)
        row, start = int(where[0, 0]), int(where[0, 1])
        assert len(where) == len(sample) and (where[:, 0] == row).all()
        block = slice(start, start + len(sample))
        np.testing.assert_array_equal(batch["input_ids"][row, block], sample.input_ids)
        np.testing.assert_array_equal(batch["position_ids"][row, :, block], sample.position_ids)  # its own positions
        i, j = np.arange(len(sample))[:, None], np.arange(len(sample))[None, :]
        np.testing.assert_array_equal(mask[row, block, block], ((j < sample.sep) | (j <= i)).astype(np.int64))
        outside = np.ones(width, dtype=bool)
        outside[block] = False
        assert not mask[row, block][:, outside].any()  # never sees another sample (nor a pad)
        assert batch["sample_sep_index"][index] == row * width + start + sample.sep


def test_pack_refuses_a_sample_longer_than_a_row(tokenizer):
    samples = encode_examples(EXAMPLES[:1], tokenizer)[0].samples
    with pytest.raises(LayoutError):
        pack(samples, tokenizer.special.pad, max_len=len(samples[0]) - 1)


@pytest.mark.parametrize("single_token", [False, True])
def test_packed_scores_and_gradients_equal_padded(tokenizer, single_token):
    examples = EXAMPLES if not single_token else [ClozeExample(e.text, ("the", "a"), 0) for e in EXAMPLES]
    items = encode_examples(examples, tokenizer)
    assert items[0].single_token == single_token
    scorer = ClozeScorer(tokenizer)
    padded_model, packed_model = _model(), _model()
    padded = scorer.scores(padded_model, items, torch.device("cpu"))
    packed = scorer.scores(packed_model, items, torch.device("cpu"), pack_length=64)
    # the same function of each input; another summation order in rows of other lengths
    torch.testing.assert_close(packed, padded, rtol=0, atol=1e-5)
    padded.clamp(min=-1e4).sum().backward()
    packed.clamp(min=-1e4).sum().backward()
    for (name, a), b in zip(padded_model.named_parameters(), packed_model.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_packed_fine_tuning_loss_equals_padded_on_the_demo_task(tokenizer):
    train_examples, _ = load_task_examples("demo", str(packaged_data_dir()))
    items = encode_examples(train_examples[:8], tokenizer)
    batch = {"index": np.arange(8)}
    losses = [
        float(
            ClozeTask(items, tokenizer, 8, 1, 1, pack_length=length)
            .loss_sum(_model(), batch, torch.device("cpu"))
            .detach()
        )
        for length in (0, 256)
    ]
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)


def test_packing_is_the_default_on_the_cpu_only():
    from glm_core.errors import ConfigError
    from training.options import CPU_PACK_LENGTH, pack_length_option

    assert pack_length_option(None, torch.device("cpu")) == CPU_PACK_LENGTH > 0
    assert pack_length_option(None, torch.device("cuda")) == 0
    assert pack_length_option(0, torch.device("cpu")) == 0
    with pytest.raises(ConfigError, match="--pack-length"):
        pack_length_option(-1, torch.device("cpu"))
