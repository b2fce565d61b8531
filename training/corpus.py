"""The synthetic English corpus that ``glm-tiny`` is pretrained on, and the demo cloze task about it (torch-free).

Provenance and licence: every sentence comes from this module, written by the glm-harness developers and released
under Apache-2.0 with the package; nothing is downloaded or copied from a third-party data set.

The corpus describes a small **world** of facts, each a ``(relation, subject, answer)`` triple:

- ``capital``: capitals of invented countries (names built from syllables with a seeded draw),
- ``colour``: colours of everyday things, ``sound``: what animals say, ``opposite``: pairs of opposite words,
- ``next_day`` / ``next_month`` / ``next_number``: the order of the days, the months and the number words one..twenty;

plus background sentences about 1,600 invented people (never asked about; their names give the 2000-piece
tokenizer enough distinct words to train on).

Every fact is written out through many **training templates** (different phrasings); documents are short paragraphs
of such sentences, plus plain lists ("Monday, Tuesday, ..."). Two further sets of templates never appear in the
corpus: ``finetune`` phrasings (the demo task's ``train.jsonl``) and ``heldout`` phrasings (``val.jsonl``), so the
demo task asks about the corpus facts in words the model has not seen them in.

Determinism: all draws use :class:`random.Random` through its ``random()`` method only, whose output sequence Python
guarantees across versions; the same seed gives the same world, corpus and questions on every machine.

Command line::

    python -m training.corpus corpus --out corpus.txt            # the pretraining corpus (UTF-8 text)
    python -m training.corpus demo --out-dir evaluation/data/demo  # train.jsonl + val.jsonl of the demo task
    python -m training.corpus tokenizer --out-dir DIR              # glm-tiny's SentencePiece tokenizer
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from glm_core.atomic import write_text_atomically

DEFAULT_SEED = 1234
DEFAULT_NUM_DOCUMENTS = 20000
NUM_COUNTRIES = 16
MASK = "[MASK]"

__all__ = [
    "DEFAULT_NUM_DOCUMENTS",
    "DEFAULT_SEED",
    "Fact",
    "TEMPLATES",
    "World",
    "build_world",
    "demo_questions",
    "generate_documents",
    "main",
    "sentence_lines",
    "train_tokenizer",
    "write_corpus",
    "write_demo_task",
]


# ---------------------------------------------------------------------------------------------------- seeded draws
class Draw:
    """Seeded choices built on ``random.Random.random()`` only (its sequence is stable across Python versions)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def below(self, n: int) -> int:
        return min(int(self._rng.random() * n), n - 1)

    def choice(self, items: Sequence[str]) -> str:
        return items[self.below(len(items))]

    def shuffled(self, items: Sequence[str]) -> list[str]:
        out = list(items)
        for i in range(len(out) - 1, 0, -1):  # Fisher-Yates
            j = self.below(i + 1)
            out[i], out[j] = out[j], out[i]
        return out

    def between(self, low: int, high: int) -> int:
        """Uniform integer in ``[low, high]``."""
        return low + self.below(high - low + 1)


# ---------------------------------------------------------------------------------------------------- the world
@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str
    answer: str


COLOURS = {
    "banana": "yellow", "lemon": "yellow", "tomato": "red", "cherry": "red", "strawberry": "red",
    "carrot": "orange", "pumpkin": "orange", "plum": "purple", "violet": "purple", "leaf": "green",
    "cucumber": "green", "lime": "green", "swan": "white", "cloud": "white", "coal": "black", "crow": "black",
    "chocolate": "brown", "bear": "brown", "sapphire": "blue", "blueberry": "blue",
}  # fmt: skip
SOUNDS = {
    "cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa", "lion": "roar", "owl": "hoot",
    "pig": "oink", "horse": "neigh", "snake": "hiss", "bee": "buzz", "mouse": "squeak", "frog": "croak",
    "donkey": "bray", "wolf": "howl", "hen": "cluck",
}  # fmt: skip
OPPOSITE_PAIRS = (
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"), ("old", "new"),
    ("open", "closed"), ("wet", "dry"), ("early", "late"), ("full", "empty"), ("high", "low"), ("hard", "soft"),
    ("loud", "quiet"), ("strong", "weak"), ("near", "far"), ("thick", "thin"), ("up", "down"), ("tall", "short"),
    ("rich", "poor"), ("clean", "dirty"),
)  # fmt: skip
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
    "December",
)  # fmt: skip
NUMBERS = (
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "thirteen",
    "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty",
)  # fmt: skip

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "tr", "st")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "m")
_COUNTRY_ENDINGS = ("ia", "land", "mark", "istan", "ovia", "ara")
_CITY_ENDINGS = ("ton", "burg", "ville", "port", "holm", "ford")
_FIRST_ENDINGS = ("a", "o", "i", "an", "el", "en", "is", "ra", "na", "y")
_LAST_ENDINGS = ("son", "er", "ley", "man", "wick", "dale", "stone", "wood", "ing", "ard")
JOBS = (
    "baker", "farmer", "teacher", "doctor", "sailor", "painter", "singer", "builder", "pilot", "miner", "nurse",
    "tailor", "fisher", "guard", "cook", "driver", "writer", "potter", "hunter", "gardener",
)  # fmt: skip
NUM_FIRST_NAMES = 1600
NUM_LAST_NAMES = 1600
NUM_PEOPLE = 1600


def _invented_name(draw: Draw, endings: Sequence[str], syllables: int) -> str:
    parts = [draw.choice(_ONSETS) + draw.choice(_VOWELS) + draw.choice(_CODAS) for _ in range(syllables)]
    return ("".join(parts) + draw.choice(endings)).capitalize()


@dataclass(frozen=True)
class Person:
    """A citizen of the world: background text only (never asked about in the demo task)."""

    first: str
    last: str
    job: str
    city: str
    pet: str
    pet_colour: str


@dataclass(frozen=True)
class World:
    facts: tuple[Fact, ...]
    people: tuple[Person, ...] = ()

    def relations(self) -> list[str]:
        return sorted({f.relation for f in self.facts})

    def facts_of(self, relation: str) -> list[Fact]:
        return [f for f in self.facts if f.relation == relation]

    def answers_of(self, relation: str) -> list[str]:
        """The answer pool of a relation (distractors for the demo task), in first-seen order."""
        return list(dict.fromkeys(f.answer for f in self.facts_of(relation)))


def build_world(seed: int = DEFAULT_SEED) -> World:
    """The facts of the corpus; invented country and capital names depend on ``seed``."""
    draw = Draw(seed)
    used: set[str] = set()

    def fresh(endings: Sequence[str]) -> str:
        while True:
            name = _invented_name(draw, endings, draw.between(1, 2))
            if name not in used and 5 <= len(name) <= 12:
                used.add(name)
                return name

    facts: list[Fact] = []
    for _ in range(NUM_COUNTRIES):
        country = fresh(_COUNTRY_ENDINGS)
        facts.append(Fact("capital", country, fresh(_CITY_ENDINGS)))
    facts += [Fact("colour", s, a) for s, a in COLOURS.items()]
    facts += [Fact("sound", s, a) for s, a in SOUNDS.items()]
    for a, b in OPPOSITE_PAIRS:
        facts += [Fact("opposite", a, b), Fact("opposite", b, a)]
    for name, seq, cyclic in (("next_day", DAYS, True), ("next_month", MONTHS, True), ("next_number", NUMBERS, False)):
        stop = len(seq) if cyclic else len(seq) - 1
        facts += [Fact(name, seq[i], seq[(i + 1) % len(seq)]) for i in range(stop)]
    capitals = [f.answer for f in facts if f.relation == "capital"]
    firsts = [fresh(_FIRST_ENDINGS) for _ in range(NUM_FIRST_NAMES)]
    lasts = [fresh(_LAST_ENDINGS) for _ in range(NUM_LAST_NAMES)]
    people = []
    for i in range(NUM_PEOPLE):
        # every first and last name is used at least once: they give the tokenizer its breadth (2000 pieces)
        first = firsts[i] if i < len(firsts) else draw.choice(firsts)
        last = lasts[i] if i < len(lasts) else draw.choice(lasts)
        pet = draw.choice(sorted(SOUNDS))
        people.append(
            Person(
                first, last, draw.choice(JOBS), draw.choice(capitals), pet, draw.choice(sorted(set(COLOURS.values())))
            )
        )
    return World(tuple(facts), tuple(people))


# ---------------------------------------------------------------------------------------------------- templates
# {s} = subject, {a} = answer. "corpus" phrasings make the pretraining text; "finetune" and "heldout" phrasings never
# appear in it (demo task train.jsonl / val.jsonl). Every template ends its sentence, so sentence-level blanks work.
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "capital": {
        "corpus": (
            "The capital of {s} is {a}.",
            "{a} is the capital of {s}.",
            "The capital city of {s} is called {a}.",
            "The king of {s} lives in {a}.",
            "In {s}, most people have visited {a}, the capital.",
            "{a}, the capital of {s}, is a large city.",
            "Trains from all over {s} go to {a}.",
            "The biggest market of {s} is in its capital, {a}.",
        ),
        "finetune": ("Which city is the capital of {s}? It is {a}.", "The king of {s} has a home in {a}."),
        "heldout": ("What is the capital of {s}? It is {a}.", "Most people in {s} work in the capital, {a}."),
    },
    "colour": {
        "corpus": (
            "The {s} is {a}.",
            "A {s} is usually {a}.",
            "Everyone knows that the colour of the {s} is {a}.",
            "The colour of a {s} is {a}.",
            "She drew a picture of a {a} {s}.",
            "If you look at the {s}, you will see that it is {a}.",
            "My {s} is {a}, like every {s}.",
            "What a nice {a} {s} that is.",
        ),
        "finetune": ("The colour of my {s} is {a}.", "Every {s} is {a}."),
        "heldout": ("What colour is the {s}? It is {a}.", "Look, that {s} is {a}."),
    },
    "sound": {
        "corpus": (
            "The {s} says {a}.",
            "A {s} goes {a}.",
            "We heard the {s} say {a} all night.",
            "When a {s} is hungry it says {a}.",
            "The sound a {s} makes is {a}.",
            "The old {s} said {a} again.",
            "Every morning the {s} says {a} to the children.",
        ),
        "finetune": ("The hungry {s} said {a}.", "We heard an old {s} say {a}."),
        "heldout": ("What does the {s} say? It says {a}.", "At night the {s} goes {a}."),
    },
    "opposite": {
        "corpus": (
            "The opposite of {s} is {a}.",
            "The word {s} means the opposite of {a}.",
            "Something {s} is never {a}.",
            "We learned that {s} and {a} are opposites.",
            "The teacher said that the opposite of {s} is {a}.",
            "If a thing is not {s}, maybe it is {a}.",
        ),
        "finetune": ("The word that means the opposite of {s} is {a}.", "Something that is {s} is not {a}."),
        "heldout": ("What is the opposite of {s}? It is {a}.", "The teacher knows that {s} is the opposite of {a}."),
    },
    "next_day": {
        "corpus": (
            "After {s} comes {a}.",
            "The day after {s} is {a}.",
            "{s} is followed by {a}.",
            "Yesterday was {s}, so today is {a}.",
            "We work on {s} and we rest on {a}.",
        ),
        "finetune": ("The day that comes after {s} is {a}.", "On {s} we work and then comes {a}."),
        "heldout": ("What day comes after {s}? It is {a}.", "Today is {s}, so the next day is {a}."),
    },
    "next_month": {
        "corpus": (
            "After {s} comes {a}.",
            "The month after {s} is {a}.",
            "{s} is followed by {a}.",
            "Last month was {s}, so this month is {a}.",
            "The snow of {s} melts in {a}.",
        ),
        "finetune": ("The month that comes after {s} is {a}.", "After the month of {s} comes {a}."),
        "heldout": ("What month comes after {s}? It is {a}.", "This month is {s}, so the next month is {a}."),
    },
    "next_number": {
        "corpus": (
            "After {s} comes {a}.",
            "The number after {s} is {a}.",
            "{s} plus one is {a}.",
            "I counted {s} and then {a}.",
            "She had {s} apples and found one more, so she had {a}.",
        ),
        "finetune": ("The number that comes after {s} is {a}.", "{s} and one more is {a}."),
        "heldout": ("What number comes after {s}? It is {a}.", "I had {s} apples and then one more, so I had {a}."),
    },
}

_ARTICLE = re.compile(r"\b([Aa]) ([aeiou])")
SEQUENCES = {"next_day": DAYS, "next_month": MONTHS, "next_number": NUMBERS}


def render(template: str, fact: Fact, answer: str | None = None) -> str:
    """Fill a template; ``answer`` replaces the fact's answer (``MASK`` for a cloze question)."""
    text = template.format(s=fact.subject, a=fact.answer if answer is None else answer)
    text = _ARTICLE.sub(r"\1n \2", text)  # "a owl" -> "an owl", "a orange" -> "an orange"
    return text[0].upper() + text[1:]


# ---------------------------------------------------------------------------------------------------- the corpus
PERSON_TEMPLATES = (
    "{first} {last} is a {job} who lives in {city}.",
    "{first} {last} works as a {job} in {city}.",
    "{first} has a {pet_colour} {pet}.",
    "Every day {first} {last} walks to work in {city}.",
    "The {job} {first} {last} likes the {pet} at home.",
    "{first} and the {pet} went to the market of {city}.",
    "Where does {first} live? {first} lives in {city}.",
    "What does {first} {last} do? {first} works as a {job}.",
    "The next day {first} went to {city} with the {pet}.",
)


def _person_paragraph(world: World, draw: Draw) -> str:
    sentences = []
    for _ in range(2):  # two neighbours per paragraph
        person = world.people[draw.below(len(world.people))]
        fields = {f: getattr(person, f) for f in ("first", "last", "job", "city", "pet", "pet_colour")}
        for _ in range(draw.between(1, 3)):
            text = _ARTICLE.sub(r"\1n \2", draw.choice(PERSON_TEMPLATES).format(**fields))
            sentences.append(text[0].upper() + text[1:])
    return " ".join(sentences)


def _fact_paragraph(world: World, draw: Draw) -> str:
    relation = draw.choice(world.relations())
    facts = world.facts_of(relation)
    templates = TEMPLATES[relation]["corpus"]
    count = draw.between(3, 7)
    return " ".join(render(draw.choice(templates), draw.choice(facts)) for _ in range(count))


def _mixed_paragraph(world: World, draw: Draw) -> str:
    sentences = []
    for _ in range(draw.between(3, 6)):
        fact = world.facts[draw.below(len(world.facts))]
        sentences.append(render(draw.choice(TEMPLATES[fact.relation]["corpus"]), fact))
    return " ".join(sentences)


def _list_paragraph(draw: Draw) -> str:
    name = draw.choice(sorted(SEQUENCES))
    seq = SEQUENCES[name]
    start = draw.below(len(seq))
    length = draw.between(4, len(seq))
    items = (
        [seq[(start + i) % len(seq)] for i in range(length)] if name != "next_number" else seq[start : start + length]
    )
    if len(items) < 3:
        items = seq[:length]
    text = ", ".join(items) + "."
    return text[0].upper() + text[1:]


def generate_documents(num_documents: int = DEFAULT_NUM_DOCUMENTS, seed: int = DEFAULT_SEED) -> Iterator[str]:
    """The corpus, one paragraph per document: 50% single-topic facts, 25% mixed facts, 15% people of the world
    (background text), 10% lists of a sequence."""
    world = build_world(seed)
    draw = Draw(seed + 1)
    for _ in range(num_documents):
        kind = draw.below(20)
        if kind < 10:
            yield _fact_paragraph(world, draw)
        elif kind < 15:
            yield _mixed_paragraph(world, draw)
        elif kind < 18:
            yield _person_paragraph(world, draw)
        else:
            yield _list_paragraph(draw)


def sentence_lines(documents: Sequence[str] | Iterator[str]) -> Iterator[str]:
    """One sentence per line (what the SentencePiece trainer reads)."""
    for doc in documents:
        start = 0
        for i, ch in enumerate(doc):
            if ch in ".?" and (i + 1 == len(doc) or doc[i + 1] == " "):
                yield doc[start : i + 1].strip()
                start = i + 1
        if doc[start:].strip():
            yield doc[start:].strip()


def write_corpus(path: str, num_documents: int = DEFAULT_NUM_DOCUMENTS, seed: int = DEFAULT_SEED) -> str:
    """Write the corpus as UTF-8 text, documents separated by a blank line (the format ``pretrain_data`` reads)."""
    write_text_atomically(path, "\n\n".join(generate_documents(num_documents, seed)) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------- demo task
def demo_questions(split: str, seed: int = DEFAULT_SEED, num_choices: int = 4) -> list[dict[str, object]]:
    """Multiple-choice cloze questions ``{"text", "choices", "label"}`` about every fact of the world.

    ``split="val"`` uses the ``heldout`` phrasings, ``split="train"`` the ``finetune`` ones; neither appears in the
    corpus. Distractors are other answers of the same relation, so knowing the kind of answer is not enough: chance
    is ``1 / num_choices``.
    """
    kinds = {"val": "heldout", "train": "finetune"}
    if split not in kinds:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    world = build_world(seed)
    draw = Draw(seed + (2 if split == "train" else 3))
    out: list[dict[str, object]] = []
    for fact in world.facts:
        pool = [a for a in world.answers_of(fact.relation) if a != fact.answer]
        for template in TEMPLATES[fact.relation][kinds[split]]:
            distractors = draw.shuffled(pool)[: num_choices - 1]
            choices = draw.shuffled([fact.answer, *distractors])
            out.append(
                {
                    "text": render(template, fact, answer=MASK),
                    "choices": choices,
                    "label": choices.index(fact.answer),
                    "relation": fact.relation,
                }
            )
    return out


def write_demo_task(out_dir: str, seed: int = DEFAULT_SEED) -> list[str]:
    paths = []
    for split in ("train", "val"):
        lines = [json.dumps(q, ensure_ascii=False) for q in demo_questions(split, seed)]
        path = os.path.join(out_dir, f"{split}.jsonl")
        write_text_atomically(path, "\n".join(lines) + "\n")
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------- tokenizer
TOKENIZER_PIECES = 2000  # + 10 command tokens at 2000..2009 (spec §3.2 SentencePiece layout), padded vocab 2048


def train_tokenizer(
    out_dir: str,
    num_documents: int = DEFAULT_NUM_DOCUMENTS,
    seed: int = DEFAULT_SEED,
    vocab_size: int = TOKENIZER_PIECES,
) -> str:
    """Train glm-tiny's SentencePiece tokenizer on the corpus (one sentence per line) and save it to ``out_dir``."""
    from glm_core.tokenizer import GLMTokenizer, train_sentencepiece

    with tempfile.TemporaryDirectory() as tmp:
        train_sentencepiece(sentence_lines(generate_documents(num_documents, seed)), tmp, vocab_size, seed=seed)
        tokenizer = GLMTokenizer.from_pretrained(tmp, family="sentencepiece")
        tokenizer.save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.corpus",
        description="Write glm-tiny's synthetic pretraining corpus or its demo cloze task (deterministic).",
        epilog="example: python -m training.corpus corpus --out runs/corpus.txt --num-documents 20000",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_corpus = sub.add_parser("corpus", help="write the pretraining corpus (UTF-8, blank line between documents)")
    p_corpus.add_argument("--out", required=True)
    p_corpus.add_argument("--num-documents", type=int, default=DEFAULT_NUM_DOCUMENTS)
    p_corpus.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p_demo = sub.add_parser("demo", help="write train.jsonl and val.jsonl of the demo task")
    p_demo.add_argument("--out-dir", required=True)
    p_demo.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p_tok = sub.add_parser("tokenizer", help="train the 2000-piece SentencePiece tokenizer on the corpus")
    p_tok.add_argument("--out-dir", required=True)
    p_tok.add_argument("--num-documents", type=int, default=DEFAULT_NUM_DOCUMENTS)
    p_tok.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    if args.command in ("corpus", "tokenizer") and args.num_documents <= 0:
        print(f"error: --num-documents must be positive, got {args.num_documents}", file=sys.stderr)
        return 2
    if args.command == "tokenizer":
        print(train_tokenizer(args.out_dir, args.num_documents, args.seed))
    elif args.command == "corpus":
        print(write_corpus(args.out, args.num_documents, args.seed))
    else:
        for path in write_demo_task(args.out_dir, args.seed):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
