"""A language-modelling corpus generated from a fixed grammar: no download, the same everywhere.

Every sequence is a run of short "documents", each of one of four kinds, chosen so that
predicting the next word needs context a few to a few dozen tokens back:

* agreement: ``the cat that the dogs see runs .``: the main verb agrees with the subject
  across a relative clause whose own verb agrees with its own subject;
* brackets: ``( a [ b { c } ] d )``: each closing bracket matches the innermost open one;
* recall: ``set k3 v5 ; set k1 v2 ; get k3 v5 ;``: a key asked for later comes back with its value;
* counting: ``count n4 n5 n6 n7 end``: numbers that count up by one.

Words are tokens (:data:`VOCABULARY`, 75 of them, ``<bos>`` first); a sequence is ``<bos>``
plus :data:`SEQUENCE` tokens; the inputs are its first :data:`SEQUENCE` tokens and the
targets the same shifted by one, so the model predicts every next token.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlprune.data.embedded import cached_arrays

SEQUENCE = 64
"""Tokens per input sequence (and per target sequence)."""

NOUNS = ("cat", "dog", "bird", "fox")
VERBS = ("run", "sleep", "eat", "sing")
LETTERS = tuple("abcdefgh")
BRACKETS = (("(", ")"), ("[", "]"), ("{", "}"))
KEYS = tuple(f"k{i}" for i in range(8))
VALUES = tuple(f"v{i}" for i in range(8))
NUMBERS = tuple(f"n{i}" for i in range(20))
VOCABULARY: tuple[str, ...] = (
    "<bos>",
    ".",
    ";",
    "the",
    "that",
    "set",
    "get",
    "count",
    "end",
    *NOUNS,
    *(f"{n}s" for n in NOUNS),
    *VERBS,
    *(f"{v}s" for v in VERBS),
    *LETTERS,
    *(b for pair in BRACKETS for b in pair),
    *KEYS,
    *VALUES,
    *NUMBERS,
)
TOKEN = {word: i for i, word in enumerate(VOCABULARY)}


def _agreement(rng: np.random.Generator) -> list[str]:
    def noun(plural: bool) -> str:
        return str(rng.choice(NOUNS)) + ("s" if plural else "")

    def verb(plural: bool) -> str:  # a singular subject takes the verb with an s
        return str(rng.choice(VERBS)) + ("" if plural else "s")

    subject = bool(rng.integers(2))
    words = ["the", noun(subject)]
    if rng.random() < 0.6:
        inner = bool(rng.integers(2))
        words += ["that", "the", noun(inner), verb(inner)]
    return [*words, verb(subject), "."]


def _brackets(rng: np.random.Generator, depth: int = 0) -> list[str]:
    opening, closing = BRACKETS[int(rng.integers(len(BRACKETS)))]
    inside: list[str] = []
    for _ in range(int(rng.integers(1, 4))):
        if depth < 3 and rng.random() < 0.4:
            inside += _brackets(rng, depth + 1)
        else:
            inside.append(str(rng.choice(LETTERS)))
    return [opening, *inside, closing]


def _recall(rng: np.random.Generator) -> list[str]:
    keys = rng.choice(len(KEYS), size=int(rng.integers(2, 5)), replace=False)
    values = {int(k): str(rng.choice(VALUES)) for k in keys}
    words: list[str] = []
    for k in keys:
        words += ["set", KEYS[k], values[int(k)], ";"]
    for k in rng.choice(keys, size=int(rng.integers(1, 3)), replace=False):
        words += ["get", KEYS[k], values[int(k)], ";"]
    return words


def _counting(rng: np.random.Generator) -> list[str]:
    length = int(rng.integers(3, 9))
    start = int(rng.integers(0, len(NUMBERS) - length + 1))
    return ["count", *NUMBERS[start : start + length], "end"]


DOCUMENTS = (_agreement, _brackets, _recall, _counting)


def generate_tokens(count: int, seed: int) -> np.ndarray:
    """``count`` sequences of token ids, ``<bos>`` first, shaped ``(count, SEQUENCE + 1)``."""
    rng = np.random.default_rng(seed)
    rows = np.empty((count, SEQUENCE + 1), dtype=np.int64)
    for i in range(count):
        words = ["<bos>"]
        while len(words) < SEQUENCE + 1:
            words += DOCUMENTS[int(rng.integers(len(DOCUMENTS)))](rng)
        rows[i] = [TOKEN[w] for w in words[: SEQUENCE + 1]]
    return rows


def load_text_arrays(cache_dir: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The grammar corpus as ``(x, y, x_test, y_test)``: 4000 train / 1000 test sequences.

    ``x`` holds token ids shaped ``(N, SEQUENCE)`` and ``y`` the next token at every position,
    both int64. Train and test come from different seeds (0 and 1). Cached like MNIST-1D.
    """

    def make() -> dict[str, np.ndarray]:
        train, test = generate_tokens(4000, seed=0), generate_tokens(1000, seed=1)
        return {"x": train[:, :-1], "y": train[:, 1:], "x_test": test[:, :-1], "y_test": test[:, 1:]}

    return cached_arrays(Path(cache_dir) / "text.npz", make)
