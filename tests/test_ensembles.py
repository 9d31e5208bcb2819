"""The ensemble rules, one table: each name against a direct computation on constructed votes."""

from __future__ import annotations

import numpy as np
import pytest

from ranmask_jax import ensembles
from ranmask_jax.smoothing import Votes


def test_each_rule_on_constructed_votes():
    counts, logit_mean, probs = np.array([5, 5, 1]), np.array([0.2, 1.0, -3.0]), np.array([0.3, 0.5, 0.2])
    s = lambda name: ensembles.scores(name, counts, logit_mean, probs)  # noqa: E731
    np.testing.assert_allclose(s("vote"), counts / 11)
    e = np.exp(logit_mean - logit_mean.max())
    np.testing.assert_allclose(s("logit"), e / e.sum())
    np.testing.assert_allclose(s("prob"), probs)
    maj = s("majority")
    assert maj.argmax() == 1 and np.isclose(maj.sum(), 1) and np.allclose(maj, counts / 11, atol=1e-8)
    assert s("onehot").tolist() == [0, 1, 0]  # the 5 : 5 tie goes to the larger mean probability
    assert ensembles.scores("onehot", [1, 7, 3], logit_mean, [0.9, 0.05, 0.05]).tolist() == [0, 1, 0]
    for name in ensembles.NAMES:
        assert np.isclose(s(name).sum(), 1)
    with pytest.raises(ValueError, match="ensemble must be one of vote, logit, prob, majority, onehot"):
        s("mean")


def test_the_engine_votes_use_the_table():
    v = Votes(np.array([3, 1]), np.array([4.0, -2.0]), np.array([2.5, 1.5]))
    for name in ensembles.NAMES:
        np.testing.assert_allclose(v.scores(name), ensembles.scores(name, [3, 1], [1.0, -0.5], [0.625, 0.375]))
