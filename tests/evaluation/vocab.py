"""The test vocabulary: BERT's command-token layout plus a few hundred words with knowable ids.

``[PAD]`` 0, ``[UNK]`` 100, ``[CLS]`` 101, ``[SEP]`` 102, ``[MASK]`` 103; sop/eop at 30522/30523 (spec §3.2), then the
words below from id 104 on, one id per word: ``WORD_IDS["yes"] == 104 + WORDS.index("yes")``.
"""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "yes no maybe true false . , ? \" ' : - * ( ) the a is it was of to and in what does pronoun refer "
    "question answer based on previous passage following because so or similar sense same meaning both sentences "
    "have cat dog sat mat ran fast sun hot water wet city council feared violence demonstrators refused permit "
    "they he she man woman bird flew sky rain fell my body cast shadow over grass rose grew sentence one two "
    "red blue big small house tree car road went home bank river money summary about people news today said "
    "@ highlight bob alice paris london visited capital france refers / for did who sit visit"
).split()
WORD_IDS = {w: 104 + i for i, w in enumerate(WORDS)}
CLS, SEP, MASK, PAD, UNK = 101, 102, 103, 0, 100
SOP, EOP = 30522, 30523
EOS = 0  # spec §3.2 trap 1: the original BERT-model eos is [PAD]


def write_vocab(directory: Path) -> Path:
    lines = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(WORDS)
    assert len(lines) == 104 + len(WORDS)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "vocab.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
