"""Word transformations: each maps (text, word index, rng) to candidate replacement cores for that word.

* ``CharEdits`` -- DeepWordBug's four character edits (Gao et al. 2018; TextAttack's ``random_one`` variants):
  swap two neighbouring characters, substitute, delete, or insert one random letter a-zA-Z, each at a random
  position: one candidate per edit, four per word.
* ``NeighbourSwap`` -- TextFooler's candidates: a word's nearest neighbours in a word-vector space (a
  ``attacks.resources.Neighbours`` table), at most ``max_candidates``, cosine >= ``min_cos``.
"""

from __future__ import annotations

import string
from collections.abc import Callable

import numpy as np

from attacks.text import AttackText

LETTERS = string.ascii_letters

Transformation = Callable[[AttackText, int, np.random.Generator], list[str]]


def swap_neighbours(word: str, rng: np.random.Generator) -> str | None:
    if len(word) <= 1:
        return None
    i = int(rng.integers(0, len(word) - 1))
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def substitute(word: str, rng: np.random.Generator) -> str | None:
    if len(word) <= 1:
        return None
    i = int(rng.integers(0, len(word)))
    return word[:i] + LETTERS[int(rng.integers(0, len(LETTERS)))] + word[i + 1:]


def delete(word: str, rng: np.random.Generator) -> str | None:
    if len(word) <= 1:
        return None
    i = int(rng.integers(0, len(word)))
    return word[:i] + word[i + 1:]


def insert(word: str, rng: np.random.Generator) -> str | None:
    if len(word) <= 1:
        return None
    i = int(rng.integers(0, len(word)))
    return word[:i] + LETTERS[int(rng.integers(0, len(LETTERS)))] + word[i:]


class CharEdits:
    """DeepWordBug: one random instance of each of the four edits of word i's core (words of one character are
    left alone, as in TextAttack). Candidates equal to the word are dropped; duplicates are merged."""

    edits = (swap_neighbours, substitute, delete, insert)

    def __call__(self, text: AttackText, i: int, rng: np.random.Generator) -> list[str]:
        word = text.core(i)
        out = [e(word, rng) for e in self.edits]
        return list(dict.fromkeys(c for c in out if c and c != word))


class NeighbourSwap:
    """TextFooler: the nearest neighbours of word i's core (lower-cased lookup; the candidate keeps the word's
    capitalisation pattern when it is Title or UPPER case)."""

    def __init__(self, neighbours, max_candidates: int = 50, min_cos: float = 0.5):
        self.neighbours, self.max_candidates, self.min_cos = neighbours, max_candidates, min_cos

    def __call__(self, text: AttackText, i: int, rng: np.random.Generator) -> list[str]:
        word = text.core(i)
        cands = self.neighbours.lookup(word.lower(), self.max_candidates, self.min_cos)
        return [_recase(c, word) for c in cands if c != word.lower()]


def _recase(candidate: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return candidate.upper()
    if like[:1].isupper():
        return candidate[:1].upper() + candidate[1:]
    return candidate
