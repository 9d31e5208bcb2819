"""Sequential certification: the statistics (pure functions of vote counts, each checked against an independent
computation in ``tests/test_sequential.py``; the argument is in ``docs/CERTIFICATE.md``).

The fixed plan bounds p_A from a number of estimation copies fixed in advance. The sequential plan looks at the
votes after every block and stops as soon as more copies cannot raise the radius, so it needs a lower bound that
holds at every sample size at once, including one chosen by looking at the data. An ordinary Clopper-Pearson bound
checked after every block does not (its error grows with every look); these do:

* ``mixture_lower``: the lower end of Robbins' beta-binomial mixture confidence sequence. For any prior pi on p,
  ``M_t(p0) = [integral of q^S (1 - q)^(t - S) dpi(q)] / (p0^S (1 - p0)^(t - S))`` (S successes in t copies) is a
  nonnegative martingale with mean 1 when p0 is the true p, so by Ville's inequality it ever reaches 1/alpha with
  probability at most alpha. ``{p0 : M_t(p0) < 1/alpha}`` is therefore a (1 - alpha) confidence sequence: it
  holds at every t simultaneously, and so at any stopping time. With a Beta(a, b) prior the numerator is
  ``B(a + S, b + t - S) / B(a, b)``; M_t decreases in p0 below S / t, so the lower end is one root.
* the plan's bound (``SequentialBound``): the running maximum of the mixture bound at level ``alpha / 2``; when
  the budget ``n_max`` is spent, also the Clopper-Pearson bound of all ``n_max`` copies at level ``alpha / 2`` (a
  fixed sample size, looked at once). A union bound over the two events keeps the total error at most alpha;
  a text that runs to its budget gets a bound as tight as the fixed plan's with ``n_max`` copies at alpha / 2.
* exact mode (all C(h, k) keep sets enumerated in a random order): after t of the N keep sets with S votes for
  the class, ``S / N <= p_A <= (S + N - t) / N`` with certainty, so enumeration stops when both ends give the same
  radius (and the same answer of g); the result is the one full enumeration gives, with probability 1.

The stop rule (``stop``) changes only how many copies a text costs, never the validity of its bound: the radius
still reachable by the budget is computed as if the remaining copies voted at the upper end of the confidence
sequence, and the text stops when that is no larger than the radius it already has.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import optimize, special, stats

from ranmask_jax.certificate import clopper_pearson_lower, radius_from_bound

PRIOR = (1.0, 1.0)  # Beta(a, b) mixing distribution of the confidence sequence: uniform


def log_mixture_martingale(s, t, p0, prior: tuple[float, float] = PRIOR):
    """log M_t(p0) of the beta-binomial mixture (numpy broadcasting over s, t and p0)."""
    a, b = prior
    s, t, p0 = np.asarray(s, float), np.asarray(t, float), np.asarray(p0, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        lik = special.xlogy(s, p0) + special.xlog1py(t - s, -p0)
    return special.betaln(a + s, b + t - s) - special.betaln(a, b) - lik


def mixture_lower(s: int, t: int, alpha: float, prior: tuple[float, float] = PRIOR) -> float:
    """Lower end of the (1 - alpha) beta-binomial mixture confidence sequence after ``s`` successes in ``t``
    copies: the smallest p0 with M_t(p0) < 1/alpha (0 when s = 0)."""
    _check(s, t, alpha)
    if s == 0:
        return 0.0
    target = -math.log(alpha)
    top = s / t  # M_t(s / t) <= 1 < 1/alpha (a mixture of likelihood ratios never beats the best one)
    f = lambda p: float(log_mixture_martingale(s, t, p, prior)) - target  # noqa: E731
    lo = 1e-300
    if f(lo) < 0:
        return 0.0
    if s == t:  # the root is (for the uniform prior exactly) (alpha B(a + t, b) / B(a, b))^(1/t); solve in log p
        g = lambda x: f(math.exp(x))  # noqa: E731
        return math.exp(optimize.brentq(g, math.log(lo), 0.0, xtol=1e-15, rtol=1e-15))
    return float(optimize.brentq(f, lo, top, xtol=1e-15, rtol=1e-15))


def mixture_upper(s: int, t: int, alpha: float, prior: tuple[float, float] = PRIOR) -> float:
    """Upper end of the same confidence sequence (by the symmetry p -> 1 - p of the likelihood)."""
    return 1.0 - mixture_lower(t - s, t, alpha, prior[::-1])


def _check(s: int, t: int, alpha: float) -> None:
    if t <= 0 or not 0 <= s <= t:
        raise ValueError(f"need 0 <= s <= t and t > 0, got s={s}, t={t}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


@dataclasses.dataclass
class SequentialBound:
    """The lower bound on p_A of the sequential plan for one text: ``update(s, t)`` after every block (s votes for
    the selected class among the t estimation copies so far; at t = ``n_max`` the Clopper-Pearson bound joins in),
    ``bound`` the running maximum. Error at most ``alpha`` over every look (module docstring)."""

    alpha: float
    n_max: int
    prior: tuple[float, float] = PRIOR
    bound: float = 0.0

    def update(self, s: int, t: int) -> float:
        if t > self.n_max:
            raise ValueError(f"{t} copies exceed the budget n_max = {self.n_max}")
        self.bound = max(self.bound, mixture_lower(s, t, self.alpha / 2, self.prior))
        if t == self.n_max:
            self.bound = max(self.bound, clopper_pearson_lower(s, t, self.alpha / 2))
        return self.bound

    def best_case(self, s: int, t: int, p_up: float) -> float:
        """The bound the plan would hold at its budget if the remaining copies voted at rate ``p_up``."""
        s_end = min(self.n_max, s + int(math.ceil((self.n_max - t) * p_up)))
        return max(self.bound, mixture_lower(s_end, self.n_max, self.alpha / 2, self.prior),
                   clopper_pearson_lower(s_end, self.n_max, self.alpha / 2))


def radii(bound: float, rate: float, h: int, k: int, correct: bool = True) -> tuple[int, int]:
    """(radius under beta = 1, radius under beta = ``rate``) of a lower bound on p_A; (-1, -1) when g's answer is
    not the label or the bound is not above 1/2."""
    if not correct or bound <= 0.5:
        return -1, -1
    return radius_from_bound(bound, 1.0, h, k), radius_from_bound(bound, rate, h, k)


def stop(bound: SequentialBound, s: int, t: int, h: int, k: int) -> bool:
    """Whether a sampled text can stop after t estimation copies with s votes for its class: the budget is spent,
    or neither radius can grow by it (the remaining copies voting at the upper end of the confidence sequence at
    level alpha)."""
    if t >= bound.n_max:
        return True
    now = radii(bound.bound, s / t, h, k)
    p_up = mixture_upper(s, t, bound.alpha)
    best = radii(bound.best_case(s, t, p_up), max(s / t, p_up), h, k)
    return best[0] <= now[0] and best[1] <= now[1]


def exact_range(counts: np.ndarray, seen: int, total: int, c: int, h: int, k: int) -> tuple[tuple, tuple]:
    """Exact mode after ``seen`` of the ``total`` keep sets (``counts``: votes per class so far) for class ``c``:
    the radii (beta = 1, beta = p_c) at the two ends of what the remaining keep sets can make of p_c."""
    rest = total - seen
    lo, hi = counts[c] / total, (counts[c] + rest) / total
    return radii(lo, lo, h, k), radii(hi, hi, h, k)


def exact_settled(counts: np.ndarray, seen: int, total: int, c: int, h: int, k: int) -> bool:
    """Whether the rest of the enumeration can change neither g's answer (the class with the most votes over all
    keep sets; ties to the lower index, as argmax) nor the radii for class ``c``."""
    counts = np.asarray(counts, np.int64)
    rest = total - seen
    top = int(np.argmax(counts))
    others = [j for j in range(len(counts)) if j != top]
    # top stays the argmax whatever the rest votes: every other class, given all the rest, stays below (or ties
    # from a higher index)
    answer_fixed = all(counts[j] + rest < counts[top] or (counts[j] + rest == counts[top] and j > top)
                       for j in others)
    if not answer_fixed:
        return False
    if top != c:
        return True
    low, high = exact_range(counts, seen, total, c, h, k)
    return low == high


def selection_done(counts: np.ndarray, alpha: float) -> bool:
    """The selection copies may stop: a two-sided binomial test separates the top class from the runner-up at
    level ``alpha`` (the choice needs no validity, only independence from the estimation copies)."""
    top = np.sort(np.asarray(counts, np.int64))[::-1]
    n_a, n_b = int(top[0]), int(top[1]) if len(top) > 1 else 0
    return n_a + n_b > 0 and float(stats.binomtest(n_a, n_a + n_b, 0.5).pvalue) <= alpha


def schedule(n_max: int, first: int = 16) -> list[int]:
    """Cumulative estimation copies after each block: doubling from ``first``, then ``n_max``."""
    out, t = [], first
    while t < n_max:
        out.append(t)
        t *= 2
    return [*out, n_max]
