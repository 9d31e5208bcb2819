"""Constraints on candidate swaps. A pre-transformation constraint says whether word i may be modified at all;
a candidate constraint maps candidates (texts that differ from ``current`` at word i) to a keep mask, and may
report a similarity per candidate (used to pick among successful swaps, as TextAttack does)."""

from __future__ import annotations

import math

import numpy as np

from attacks.text import AttackText


# -- which words may be modified --------------------------------------------------------------------------------------
class Stopwords:
    """Stopwords are never modified (compared lower-cased)."""

    def __init__(self, words: frozenset[str]):
        self.words = words

    def __call__(self, text: AttackText, i: int) -> bool:
        return text.core(i).lower() not in self.words


def not_modified_yet(text: AttackText, i: int) -> bool:
    """Each word is modified at most once (TextAttack's RepeatModification)."""
    return i not in text.modified


class WithinFirst:
    """Only the first ``n`` words may be modified: those the model reads (the others lie past ``max_len``; the
    original search attacks the truncated input)."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, text: AttackText, i: int) -> bool:
        return i < self.n


# -- which candidates are kept -----------------------------------------------------------------------------------------
class MaxEditDistance:
    """Levenshtein distance of the whole candidate text to the ORIGINAL text <= ``limit`` (DeepWordBug: 30)."""

    def __init__(self, limit: int = 30):
        self.limit = limit

    def __call__(self, cands, current, original, i):
        from rapidfuzz.distance import Levenshtein

        return np.array([Levenshtein.distance(original.text, c.text) <= self.limit for c in cands], bool), None


class MaxWordsPerturbed:
    """At most ``fraction`` of the original's words changed (BERT-Attack: 0.4)."""

    def __init__(self, fraction: float = 0.4):
        self.fraction = fraction

    def __call__(self, cands, current, original, i):
        return np.array([c.words_changed(original) <= self.fraction * len(original) for c in cands], bool), None


class PartOfSpeech:
    """The candidate shares a part of speech with the word it replaces, by WordNet's index (no tagger model is
    available offline); nouns and verbs may swap (TextFooler's allow_verb_noun_swap). A word WordNet does not know
    (names, numbers, function words) puts no constraint on its replacement."""

    def __init__(self, wordnet, allow_verb_noun_swap: bool = True):
        self.wordnet, self.swap = wordnet, allow_verb_noun_swap

    def _tags(self, word: str) -> set[str]:
        tags = self.wordnet.pos(word)
        return tags | {"n", "v"} if self.swap and tags & {"n", "v"} else tags

    def __call__(self, cands, current, original, i):
        before = self._tags(current.core(i))
        if not before:
            return np.ones(len(cands), bool), None
        return np.array([bool(before & self._tags(c.core(i))) for c in cands], bool), None


class SentenceSimilarity:
    """Sentence-encoder similarity between the candidate and a reference >= ``threshold``. ``metric``: "angular"
    (1 - arccos(cos) / pi, TextFooler's 0.840845) or "cosine" (BERT-Attack's 0.2). ``window``: compare only the
    ``window`` words around the swapped word (TextFooler: 15; texts shorter than the window pass, as in
    TextFooler); ``against_original``: reference = the original text, else the current one (TextFooler)."""

    def __init__(self, encoder, threshold: float, metric: str = "angular", window: int | None = 15,
                 against_original: bool = False):
        if metric not in ("angular", "cosine"):
            raise ValueError(f"metric must be angular or cosine, got {metric!r}")
        self.encoder, self.threshold, self.metric = encoder, threshold, metric
        self.window, self.against_original = window, against_original

    def __call__(self, cands, current, original, i):
        ref = original if self.against_original else current
        if not cands:
            return np.zeros(0, bool), np.zeros(0)
        if self.window is not None and len(ref) < self.window:
            return np.ones(len(cands), bool), np.ones(len(cands))
        show = (lambda t: t.window(i, self.window)) if self.window else (lambda t: t.text)
        emb = self.encoder.encode([show(ref)] + [show(c) for c in cands])
        cos = np.clip(emb[1:] @ emb[0], -1.0, 1.0).astype(np.float64)
        sim = 1.0 - np.arccos(cos) / math.pi if self.metric == "angular" else cos
        return sim >= self.threshold, sim
