"""ranmask_jax.certificate against independent computations: brute force, exact binomials, simulation."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import optimize, stats

from ranmask_jax.certificate import (
    NOT_CERTIFIED,
    binomial_abstain,
    certificate_from_counts,
    certified_radius,
    clopper_pearson_lower,
    delta,
    delta_fraction,
    keep_count,
    monte_carlo_beta,
    radius_from_bound,
    risk_probability,
)


@pytest.mark.parametrize("h", range(1, 9))
def test_delta_matches_subset_enumeration(h):
    for k in range(h + 1):
        subsets = list(itertools.combinations(range(h), k))
        for d in range(h + 1):
            touched = {i for i in range(d)}  # by symmetry any d words will do
            meets = sum(1 for s in subsets if touched.intersection(s))
            assert delta_fraction(h, k, d) == Fraction(meets, len(subsets))


def test_delta_long_texts_exact():
    # IMDB-length texts: exact integers, no overflow, monotone in d
    h, k = 600, 420
    vals = [delta(h, k, d) for d in range(0, 12)]
    assert vals[0] == 0.0 and all(a < b for a, b in zip(vals, vals[1:], strict=False))
    # independent: product form 1 - prod_{i<d} (h - k - i) / (h - i)
    for d in range(12):
        prod = math.prod(Fraction(h - k - i, h - i) for i in range(d))
        assert delta_fraction(h, k, d) == 1 - prod


@pytest.mark.parametrize("n_c,n", [(1, 10), (5, 10), (10, 10), (95, 100), (4990, 5000), (812, 1000), (1, 1)])
def test_clopper_pearson_matches_tail_inversion(n_c, n):
    alpha = 0.05
    # independent: the p at which P[Bin(n, p) >= n_c] = alpha, by root finding on the binomial tail
    tail = lambda p: stats.binom.sf(n_c - 1, n, p) - alpha  # noqa: E731
    expected = optimize.brentq(tail, 1e-12, 1 - 1e-12, xtol=1e-14)
    assert clopper_pearson_lower(n_c, n, alpha) == pytest.approx(expected, abs=1e-9)
    assert clopper_pearson_lower(0, n, alpha) == 0.0


def test_clopper_pearson_coverage():
    rng = np.random.default_rng(0)
    alpha, n, trials = 0.05, 200, 3000
    for p in (0.55, 0.8, 0.97):
        draws = rng.binomial(n, p, size=trials)
        lows = np.array([clopper_pearson_lower(int(c), n, alpha) for c in draws])
        miss = (lows > p).mean()
        # conservative by construction: at most alpha, up to sampling noise (3 sigma)
        assert miss <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


def _radius_reference(n_c, n, h, k, alpha, beta):
    p = stats.beta.ppf(alpha, n_c, n - n_c + 1) if n_c > 0 else 0.0
    b = n_c / n if beta == "pc" else 1.0
    certified = [d for d in range(h + 1)
                 if p - b * (1 - math.comb(h - d, k) / math.comb(h, k)) > 0.5]
    return max(certified) if certified else -1


def test_certified_radius_reference_grid():
    for h in (5, 12, 40, 200):
        for rho in (0.3, 0.5, 0.7, 0.9):
            k = keep_count(h, rho)
            for n_c in (400, 700, 900, 990, 1000):
                for beta in ("pc", "one"):
                    got = certified_radius(n_c, 1000, h, k, alpha=0.05, beta=beta)
                    assert got == _radius_reference(n_c, 1000, h, k, 0.05, beta), (h, rho, n_c, beta)


def test_radius_is_largest_certified_not_plus_one():
    h, k, n_c, n = 20, 14, 4990, 5000
    r = certified_radius(n_c, n, h, k, beta="one")
    p = clopper_pearson_lower(n_c, n, 0.05)
    assert r >= 0
    assert p - delta(h, k, r) > 0.5  # r is certified
    assert not p - delta(h, k, r + 1) > 0.5  # r + 1 is not


def test_not_certified_when_bound_at_most_half():
    assert certified_radius(520, 1000, 10, 7) == NOT_CERTIFIED
    assert certified_radius(0, 1000, 10, 7) == NOT_CERTIFIED
    with pytest.raises(ValueError, match="beta"):
        certified_radius(10, 10, 5, 3, beta="mc")
    with pytest.raises(ValueError, match="n_c"):
        certified_radius(11, 10, 5, 3)


def test_risk_probability_integer_case():
    # h = 10, rho = 0.3, gamma = 0.1: C(9, 6) / C(10, 3)
    assert risk_probability(10, 0.3, 0.1) == pytest.approx(math.comb(9, 6) / math.comb(10, 3))
    with pytest.raises(ValueError):
        risk_probability(10, 0.8, 0.3)


def test_binomial_abstain():
    assert binomial_abstain(np.array([90, 10]), 0.05)[0] == 0
    assert binomial_abstain(np.array([52, 48]), 0.05)[0] == -1
    assert binomial_abstain(np.array([3, 40, 5]), 0.05)[0] == 1


# ---- Theorem 1, exhaustively, on a small deterministic base classifier ------------------------------------------
ALPHABET = "abc"


def _f(words, keep):
    """Base classifier on a masked copy: class 1 iff kept 'a's outnumber kept 'b's, else 0."""
    kept = [w for w, kp in zip(words, keep, strict=True) if kp]
    return int(kept.count("a") > kept.count("b"))


def _exact(words, k):
    h = len(words)
    subsets = list(itertools.combinations(range(h), k))
    votes = [_f(words, [i in s for i in range(h)]) for s in subsets]
    return subsets, votes


@pytest.mark.parametrize(("h", "k", "reach"), [(7, 2, 1), (5, 1, 2)])
def test_theorem1_and_rigorous_radius_exhaustive(h, k, reach):
    """Theorem 1 with its exact beta, and the beta = 1 radius from exact p, against every text over a 3-letter
    alphabet. (h, k) are chosen so that radii up to ``reach`` occur (at h 6, k 3 no radius >= 1 is possible, so a
    test there would check x alone), and the test requires that they do."""
    texts = list(itertools.product(ALPHABET, repeat=h))
    p1 = {}
    for x in texts:
        _, votes = _exact(x, k)
        p1[x] = Fraction(sum(votes), len(votes))
    rng = np.random.default_rng(0)
    extreme = [i for i, x in enumerate(texts) if p1[x] >= Fraction(9, 10) or p1[x] <= Fraction(1, 10)]
    chosen = list(rng.choice(len(texts), size=30, replace=False)) + list(rng.choice(extreme, size=30, replace=False))
    radii = []
    for idx in chosen:
        x = texts[idx]
        subsets, votes = _exact(x, k)
        c = int(p1[x] > Fraction(1, 2))
        pc = p1[x] if c == 1 else 1 - p1[x]
        for xp in texts:
            diff = [i for i in range(h) if x[i] != xp[i]]
            d = len(diff)
            pcp = p1[xp] if c == 1 else 1 - p1[xp]
            # Theorem 1 with the exact beta = P(f(M(x,H)) = c | H meets the changed words)
            meets = [v for s, v in zip(subsets, votes, strict=True) if set(s) & set(diff)]
            beta = Fraction(sum(1 for v in meets if v == c), len(meets)) if meets else Fraction(0)
            assert pc - pcp <= beta * delta_fraction(h, k, d)
        # Corollary with beta = 1: the rigorous radius (p exact) is never broken
        cert = certificate_from_counts(c, np.bincount(votes, minlength=2), np.bincount(votes, minlength=2),
                                       h, k, 0.05, "one", exact=True)
        radii.append(cert.radius)
        broken = [xp for xp in texts if sum(a != b for a, b in zip(x, xp, strict=True)) <= cert.radius
                  and (p1[xp] > Fraction(1, 2)) != (c == 1)]
        assert not broken, (x, cert.radius, broken[:3])
    assert max(radii) >= reach, radii  # radii that say something were checked


def test_pc_beta_is_not_a_guarantee():
    """The paper's beta = p_c can certify a radius that some x' breaks (the docs say so); beta = 1 cannot."""
    h, k = 7, 2
    x, x_adv = tuple("aaacccc"), tuple("baacccc")  # one word changed
    subsets, votes = _exact(x, k)
    counts = np.bincount(votes, minlength=2)
    assert counts.tolist() == [6, 15]  # p_1(x) = 15/21
    pc = certificate_from_counts(1, counts, counts, h, k, 0.05, "pc", exact=True)
    one = certificate_from_counts(1, counts, counts, h, k, 0.05, "one", exact=True)
    assert pc.radius == 1 and one.radius == NOT_CERTIFIED + 1  # "one" certifies d = 0 only
    _, adv_votes = _exact(x_adv, k)
    assert Fraction(sum(adv_votes), len(adv_votes)) == Fraction(9, 21)  # g(x') = 0: the pc radius is broken


def test_monte_carlo_beta_matches_exact_average():
    h, k = 7, 4
    words = tuple("aabacba")
    subsets, votes = _exact(words, k)
    keep = np.zeros((len(subsets), h), bool)
    for i, s in enumerate(subsets):
        keep[i, list(s)] = True
    is_c = np.array(votes) == 1
    weights = np.ones(len(subsets))
    for d in (1, 2, 3):
        exact = np.mean([is_c[keep[:, list(a)].any(axis=1)].mean() for a in itertools.combinations(range(h), d)])
        mc = monte_carlo_beta(keep, weights, is_c, h, d, 4000, np.random.default_rng(d))
        assert mc == pytest.approx(exact, abs=0.01)


def test_monte_carlo_beta_is_conservative_where_no_copy_meets_the_set():
    # only keep sets {0, 1} were seen: a set a inside {2, ..., 5} meets none of them -> beta counts as 1, not 0
    keep = np.zeros((3, 6), bool)
    keep[:, :2] = True
    beta = monte_carlo_beta(keep, np.array([3, 2, 1]), np.array([True, True, False]), 6, 1, 500,
                            np.random.default_rng(0))
    # a = {0} or {1} (1/3 of draws): 5/6; a in {2..5} (2/3): 1
    assert beta == pytest.approx(1 / 3 * 5 / 6 + 2 / 3, abs=0.05)
    assert monte_carlo_beta(keep, np.ones(3), np.zeros(3, bool), 6, 1, 50, np.random.default_rng(0)) > 0.5


def test_per_d_beta_stops_at_the_first_failure():
    h, k, p = 10, 3, 0.75
    # d = 1 fails (beta 1), d = 2 would pass with a tiny beta: a radius must certify every smaller d too
    betas = np.array([0.0, 1.0, 0.01] + [1.0] * 8)
    assert p - 1.0 * delta(h, k, 1) <= 0.5 and p - 0.01 * delta(h, k, 2) > 0.5
    assert radius_from_bound(p, betas, h, k) == 0
    assert radius_from_bound(p, 0.0, h, k) == h  # beta = 0: every d


def test_mc_radius_stops_at_the_first_failure():
    counts = np.array([25, 75])  # exact p_c = 0.75; d = 1 fails with beta 1 (Delta(1) = 0.3)
    betas = {1: 1.0, 2: 0.0}
    cert = certificate_from_counts(1, counts, counts, 10, 3, 0.05, "mc", exact=True, mc_beta=lambda d: betas.get(d, 0))
    assert cert.radius == cert.radius_mc == 0


def test_k_zero_certifies_every_d():
    # one keep set (the empty one): every x' with h words gets the same single copy, so g cannot change
    cert = certificate_from_counts(0, np.array([1, 0]), np.array([1, 0]), 7, 0, 0.05, "one", exact=True)
    assert cert.radius == cert.radius_one == cert.radius_pc == 7
    assert delta(7, 0, 7) == 0.0


def test_both_radii_from_the_same_votes():
    counts0, counts = np.array([3, 97]), np.array([40, 960])
    h, k = 20, 6
    for beta in ("one", "pc"):
        cert = certificate_from_counts(1, counts0, counts, h, k, 0.05, beta)
        assert cert.radius_one == certified_radius(960, 1000, h, k, beta="one")
        assert cert.radius_pc == certified_radius(960, 1000, h, k, beta="pc")
        assert cert.radius == (cert.radius_one if beta == "one" else cert.radius_pc)
        assert cert.radius_mc is None and cert.counts0 == (3, 97)
    assert cert.radius_one <= cert.radius_pc
    wrong = certificate_from_counts(0, counts0, counts, h, k, 0.05, "pc")
    assert (wrong.radius, wrong.radius_one, wrong.radius_pc, wrong.correct) == (-1, -1, -1, False)
    skipped = certificate_from_counts(0, counts0, None, h, k, 0.05, "one")
    assert skipped.skipped_estimation and skipped.n == 0 and skipped.radius == -1 and not skipped.correct
