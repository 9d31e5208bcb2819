"""Ensemble rules: how the masked copies of one text become the smoothed classifier's class scores.

One table, and each name means one thing everywhere (``SmoothedClassifier.predict``, the attack harness, MaskPure,
the command lines). Every rule reads a text's per-copy sums (``Votes``: f's label counts, the sums of raw logits, of
L2-normalised logits and of softmax probabilities over the copies, weighted by multiplicity) and returns scores
``[C]`` that sum to 1; g's class is their argmax.

| name | scores |
|---|---|
| ``vote`` | share of the copies f labels c (RanMASK's vote; the certificate is about this rule) |
| ``logit`` | softmax of the mean L2-normalised logits: the original RanMASK code's "logit" ensemble (each copy's logits
  divided by their Euclidean norm, a zero vector left as it is; averaged; TextAttack's goal function then applies
  the softmax to scores that do not sum to 1) |
| ``meanlogit`` | softmax of the mean raw logits |
| ``prob`` | mean softmax probabilities (MaskPure's "logit" mode) |
| ``majority`` | vote shares; an exact tie of the top shares goes to the class with the larger mean probability |
| ``onehot`` | one-hot of the ``majority`` class |
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.asarray(x, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def unit_rows(logits: np.ndarray) -> np.ndarray:
    """Each row divided by its Euclidean norm; a zero row stays zero (as scikit-learn's ``normalize``)."""
    z = np.asarray(logits, np.float64)
    norm = np.linalg.norm(z, axis=-1, keepdims=True)
    return z / np.where(norm == 0, 1.0, norm)


def _vote(counts, logit_mean, prob_mean, unit_mean):
    return counts / max(counts.sum(), 1)


def _majority_class(counts, prob_mean) -> int:
    top = np.flatnonzero(counts == counts.max())
    return int(top[np.argmax(prob_mean[top])])


def _majority(counts, logit_mean, prob_mean, unit_mean):
    shares = counts / max(counts.sum(), 1)
    shares[_majority_class(counts, prob_mean)] += 1e-9  # the tie-break, without moving any untied share
    return shares / shares.sum()


def _onehot(counts, logit_mean, prob_mean, unit_mean):
    return np.eye(len(counts))[_majority_class(counts, prob_mean)]


RULES: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "vote": _vote,
    "logit": lambda counts, logit_mean, prob_mean, unit_mean: softmax(unit_mean),
    "meanlogit": lambda counts, logit_mean, prob_mean, unit_mean: softmax(logit_mean),
    "prob": lambda counts, logit_mean, prob_mean, unit_mean: prob_mean,
    "majority": _majority,
    "onehot": _onehot,
}
NAMES = tuple(RULES)
DESCRIPTIONS = {
    "vote": "vote shares of f's labels",
    "logit": "softmax of the mean L2-normalised logits",
    "meanlogit": "softmax of the mean raw logits",
    "prob": "mean softmax probabilities",
    "majority": "vote shares, an exact tie to the larger mean probability",
    "onehot": "one-hot of the majority class, an exact tie to the larger mean probability",
}


def describe(name: str) -> str:
    """What the rule ``name`` computes, in words (recorded with results, so that a renamed rule is noticed)."""
    return DESCRIPTIONS[check(name)]


def check(name: str) -> str:
    if name not in RULES:
        raise ValueError(f"ensemble must be one of {', '.join(NAMES)}, got {name!r}")
    return name


def scores(name: str, counts, logit_mean, prob_mean, unit_mean) -> np.ndarray:
    """The ``name`` rule's scores ``[C]`` from a text's vote counts and its copies' mean raw logits, mean
    probabilities and mean L2-normalised logits."""
    return RULES[check(name)](*(np.asarray(x, np.float64) for x in (counts, logit_mean, prob_mean, unit_mean)))
