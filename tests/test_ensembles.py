"""The ensemble rules, one table: each name against a direct computation on constructed votes."""

from __future__ import annotations

import numpy as np
import pytest

from ranmask_jax import ensembles
from ranmask_jax.smoothing import Votes


def test_each_rule_on_constructed_votes():
    counts, logit_mean, probs = np.array([5, 5, 1]), np.array([0.2, 1.0, -3.0]), np.array([0.3, 0.5, 0.2])
    unit_mean = np.array([0.1, -0.4, 0.3])
    s = lambda name: ensembles.scores(name, counts, logit_mean, probs, unit_mean)  # noqa: E731
    np.testing.assert_allclose(s("vote"), counts / 11)
    e = np.exp(logit_mean - logit_mean.max())
    np.testing.assert_allclose(s("meanlogit"), e / e.sum())
    u = np.exp(unit_mean)
    np.testing.assert_allclose(s("logit"), u / u.sum())
    np.testing.assert_allclose(s("prob"), probs)
    maj = s("majority")
    assert maj.argmax() == 1 and np.isclose(maj.sum(), 1) and np.allclose(maj, counts / 11, atol=1e-8)
    assert s("onehot").tolist() == [0, 1, 0]  # the 5 : 5 tie goes to the larger mean probability
    assert ensembles.scores("onehot", [1, 7, 3], logit_mean, [0.9, 0.05, 0.05], unit_mean).tolist() == [0, 1, 0]
    for name in ensembles.NAMES:
        assert np.isclose(s(name).sum(), 1)
    with pytest.raises(ValueError, match="ensemble must be one of vote, logit, meanlogit, prob, majority, onehot"):
        s("mean")


def test_the_engine_votes_use_the_table():
    v = Votes(np.array([3, 1]), np.array([4.0, -2.0]), np.array([2.5, 1.5]), np.array([0.8, -1.2]))
    for name in ensembles.NAMES:
        np.testing.assert_allclose(v.scores(name), ensembles.scores(name, [3, 1], [1.0, -0.5], [0.625, 0.375],
                                                                    [0.2, -0.3]))


def test_logit_is_the_original_codes_rule():
    """The original RanMASK code's "logit" ensemble, computed as it does: scikit-learn's ``normalize`` of each
    copy's logits (here written out: rows divided by their L2 norm, a zero row kept), the mean over copies, and
    TextAttack's softmax of scores that do not sum to 1. A zero row (all logits 0) must not make NaN."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 3)) * rng.uniform(0.1, 20, size=(7, 1))
    logits[3] = 0.0
    norms = np.sqrt((logits ** 2).sum(1))
    normalised = np.array([row / n if n > 0 else row for row, n in zip(logits, norms, strict=True)])
    want = np.exp(normalised.mean(0)) / np.exp(normalised.mean(0)).sum()
    counts = np.bincount(logits.argmax(1), minlength=3)
    probs = ensembles.softmax(logits)
    got = ensembles.scores("logit", counts, logits.mean(0), probs.mean(0), ensembles.unit_rows(logits).mean(0))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # scale-free per copy: one copy's huge logits do not outvote the others (they do under meanlogit)
    big = np.array([[100.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    mean = lambda x: x.mean(0)  # noqa: E731
    args = (np.bincount(big.argmax(1), minlength=2), mean(big), mean(ensembles.softmax(big)),
            mean(ensembles.unit_rows(big)))
    assert ensembles.scores("logit", *args).argmax() == 1 and ensembles.scores("meanlogit", *args).argmax() == 0
