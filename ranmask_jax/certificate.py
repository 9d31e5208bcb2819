"""The certificate's arithmetic (RanMASK, Zeng et al. 2021, Section 3; Levine & Feizi's bound): pure functions of
vote counts, with exact integer binomials and scipy's beta quantiles, so that each can be checked against brute
force. The device code that produces the votes is in ``ranmask_jax.smoothing``.

Guarantees, in plain words (``docs/CERTIFICATE.md`` has the details):

* beta = 1 ("one"): with probability >= 1 - alpha over the sampling, no text x' that differs from x in at most
  ``radius`` of its h_x words makes g(x') differ from g(x). Rigorous.
* beta = n_c / n ("pc", the paper's choice): Theorem 1 needs beta = P(f = c | the keep set touches a changed
  word), which can exceed p_c, so this radius is an estimate, NOT a guarantee; it reproduces the paper's numbers.
* Monte Carlo beta ("mc", Algorithm 1): also an estimate.
* exact mode: when all C(h_x, k_x) keep sets are enumerated, p_c is known exactly and no confidence level is
  involved; with beta = 1 the certificate holds with probability 1.

Radius convention: the LARGEST d that is certified (-1 when even d = 0 is not). The original code and Algorithm 2
as printed return the first d that is not certified, i.e. this value + 1; ``metrics`` reports both.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Literal

import numpy as np
from scipy import stats

from ranmask_jax.masking import keep_count

Beta = Literal["pc", "one", "mc"]
NOT_CERTIFIED = -1
ABSTAIN = -1  # class returned by predict() when the binomial test cannot separate the top two classes


def clopper_pearson_lower(n_c: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on p from n_c successes in n trials."""
    _check_counts(n_c, n)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return 0.0 if n_c == 0 else float(stats.beta.ppf(alpha, n_c, n - n_c + 1))


def delta_fraction(h: int, k: int, d: int) -> Fraction:
    """Delta(d) = 1 - C(h - d, k) / C(h, k) as an exact fraction: the chance that a uniform k-subset of h words
    contains at least one of d given words (Theorem 1)."""
    if not 0 <= k <= h:
        raise ValueError(f"need 0 <= k <= h, got h={h}, k={k}")
    if d < 0:
        raise ValueError(f"d must be >= 0, got {d}")
    if d > h:
        d = h
    return 1 - Fraction(math.comb(h - d, k), math.comb(h, k))


def delta(h: int, k: int, d: int) -> float:
    """Delta(d) as a float (exact integer arithmetic, one rounding at the end)."""
    return float(delta_fraction(h, k, d))


def radius_from_bound(p_lower: float, beta, h: int, k: int) -> int:
    """Largest d in [0, h] such that ``p_lower - beta_e * Delta(e) > 1/2`` for every e <= d; -1 if d = 0 fails.

    ``beta`` is one number, an array indexed by d, or a function of d (Monte Carlo beta, estimated only for the d
    that are reached). The search stops at the first failure: a radius certifies every smaller number of changes
    too, so no d beyond a failed one is ever reported. This is the one radius loop of the project.
    """
    if callable(beta):
        beta_of = beta
    else:
        table = np.broadcast_to(np.asarray(beta, float), (h + 1,))
        beta_of = table.__getitem__
    radius = NOT_CERTIFIED
    for d in range(h + 1):
        if not p_lower - (beta_of(d) if d else 0.0) * delta(h, k, d) > 0.5:
            break
        radius = d
    return radius


def certified_radius(n_c: int, n: int, h: int, k: int, alpha: float = 0.05, beta: str = "pc") -> int:
    """Largest number of words d such that g's answer is certified for every x' within d word changes.

    ``n_c`` of ``n`` masked copies (each keeping ``k`` of the ``h`` words) were classified as the predicted
    class. The (1 - alpha) Clopper-Pearson lower bound p of p_c must satisfy ``p - beta * Delta(d) > 1/2`` with
    ``beta = n_c / n`` ("pc", the paper) or ``beta = 1`` ("one", rigorous). Returns -1 when not certified even at
    d = 0 (the lower bound is not above 1/2).
    """
    if beta not in ("pc", "one"):
        raise ValueError(f"beta must be 'pc' or 'one' here, got {beta!r} (Monte Carlo beta needs the copies)")
    _check_counts(n_c, n)
    p_lower = clopper_pearson_lower(n_c, n, alpha)
    return radius_from_bound(p_lower, n_c / n if beta == "pc" else 1.0, h, k)


def risk_probability(h: float, rho: float, gamma: float) -> float:
    """Eq. 10: C((1-gamma) h, (1-gamma-rho) h) / C(h, rho h), the chance that a copy keeps all of gamma*h perturbed
    words... as printed in the paper, evaluated with the generalised binomial (Gamma functions), so ``h`` may be an
    average length. Requires gamma + rho <= 1."""
    if not (0 <= rho <= 1 and 0 <= gamma <= 1 and gamma + rho <= 1):
        raise ValueError(f"need 0 <= rho, gamma and gamma + rho <= 1, got rho={rho}, gamma={gamma}")

    def log_comb(a: float, b: float) -> float:
        return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)

    return math.exp(log_comb((1 - gamma) * h, (1 - gamma - rho) * h) - log_comb(h, rho * h))


def binomial_abstain(counts: np.ndarray, alpha: float) -> tuple[int, float]:
    """Cohen et al.'s PREDICT test: the top class if a two-sided binomial test of top vs runner-up rejects
    equality at level alpha, else ABSTAIN. Returns (class or ABSTAIN, p-value)."""
    order = np.argsort(counts)[::-1]
    n_a, n_b = int(counts[order[0]]), int(counts[order[1]]) if len(counts) > 1 else 0
    if n_a + n_b == 0:
        return ABSTAIN, 1.0
    p = float(stats.binomtest(n_a, n_a + n_b, 0.5).pvalue)
    return (int(order[0]) if p <= alpha else ABSTAIN), p


def _check_counts(n_c: int, n: int) -> None:
    if n <= 0 or not 0 <= n_c <= n:
        raise ValueError(f"need 0 <= n_c <= n and n > 0, got n_c={n_c}, n={n}")


# ---- Monte Carlo beta (Algorithm 1) ---------------------------------------------------------------------------
def monte_carlo_beta(keep: np.ndarray, weights: np.ndarray, is_c: np.ndarray, h: int, d: int, n_r: int,
                     rng: np.random.Generator) -> float:
    """Algorithm 1: the mean over ``n_r`` random perturbation sets a (|a| = d) of P(f = c | the keep set meets a),
    each estimated from the classified copies (``keep`` [m, W] bool, multiplicities ``weights``, ``is_c`` whether f
    gave class c). Where no copy meets a, the conditional probability is unknown and counts as 1, its most
    conservative value (it only shrinks the radius). An estimate of beta, not a bound: the attacker picks the worst
    a, not a random one."""
    if d == 0:
        return 0.0
    total = 0.0
    for _ in range(n_r):
        a = rng.choice(h, size=d, replace=False)
        meets = keep[:, a].any(axis=1)
        w = weights[meets]
        total += float((w * is_c[meets]).sum() / w.sum()) if w.sum() > 0 else 1.0
    return total / n_r


@dataclasses.dataclass(frozen=True)
class Certificate:
    """The outcome of certifying one text.

    ``radius``: largest certified d under ``beta_mode`` (-1: not certified or misclassified). ``radius_one``: the
    same votes under beta = 1 (rigorous); ``radius_pc``: under beta = n_c / n (the paper's estimate); ``radius_mc``:
    under Monte Carlo beta (only with ``beta_mode="mc"``). ``prediction``: g(x) from the selection samples (or
    exactly, in exact mode). ``correct``: prediction == label. ``mode``: "sampled" or "exact".
    """

    label: int
    prediction: int
    correct: bool
    counts: tuple[int, ...]  # votes of the estimation copies per class (exact mode: of all keep sets)
    n: int  # number of estimation copies (exact mode: C(h, k))
    p_lower: float  # Clopper-Pearson lower bound (exact mode: the exact p_c)
    beta: float  # beta of beta_mode (mc: at d = radius + 1 or the last d tried)
    h: int
    k: int
    radius: int
    mode: str
    beta_mode: str
    radius_one: int = NOT_CERTIFIED
    radius_pc: int = NOT_CERTIFIED
    radius_mc: int | None = None
    counts0: tuple[int, ...] | None = None  # votes of the selection copies (sampled mode)
    skipped_estimation: bool = False  # the selection copies already picked a wrong class: no estimation copies ran
    copies: int = 0  # distinct masked copies classified for this text (selection and estimation)
    plan: str = "fixed"  # fixed (n0 + n copies) or sequential (ranmask_jax.sequential: blocks until settled)
    keep_sets: int | None = None  # sequential exact mode: C(h, k), of which ``n`` were enumerated


def certificate_from_counts(label: int | None, counts0: np.ndarray, counts: np.ndarray | None, h: int, k: int,
                            alpha: float, beta_mode: str, *, exact: bool = False, mc_beta=None) -> Certificate:
    """CERTIFY (Algorithm 2) given vote counts: predict from ``counts0`` (selection), bound from ``counts``
    (estimation). In exact mode both are the exact counts over all keep sets and p_c is used as is.
    ``mc_beta(d) -> float`` supplies Monte Carlo beta for ``beta_mode="mc"``. ``label=None`` certifies g's own
    answer (no ground truth). ``counts=None``: the estimation copies were skipped because g's answer from the
    selection copies is not ``label`` (the radius is -1 either way)."""
    if beta_mode not in ("pc", "one", "mc"):
        raise ValueError(f"beta must be 'pc', 'one' or 'mc', got {beta_mode!r}")
    counts0 = np.asarray(counts0, np.int64)
    pred = int(np.argmax(counts0))
    if label is None:
        label = pred
    skipped = counts is None
    counts = np.zeros_like(counts0) if skipped else np.asarray(counts, np.int64)
    n = int(counts.sum())
    n_c = int(counts[pred])
    p_lower = 0.0 if n == 0 else (n_c / n if exact else clopper_pearson_lower(n_c, n, alpha))
    betas = {"one": 1.0, "pc": n_c / n if n else 0.0}
    if beta_mode == "mc":
        seen: list[float] = [0.0]  # the Monte Carlo beta of the last d tried, for the row

        def betas_mc(d: int) -> float:
            seen[0] = mc_beta(d)
            return seen[0]

        betas["mc"] = betas_mc
    radii = {b: NOT_CERTIFIED for b in betas}
    if pred == label and p_lower > 0.5:  # one beta dispatch: every beta goes through the same radius loop
        if beta_mode == "mc" and mc_beta is None:
            raise ValueError("beta='mc' needs the classified copies (mc_beta)")
        radii = {b: radius_from_bound(p_lower, beta, h, k) for b, beta in betas.items()}
    beta_used = seen[0] if beta_mode == "mc" else betas[beta_mode]
    return Certificate(label=label, prediction=pred, correct=pred == label, counts=tuple(int(c) for c in counts),
                       n=n, p_lower=float(p_lower), beta=float(beta_used), h=h, k=k,
                       radius=radii[beta_mode], mode="exact" if exact else "sampled", beta_mode=beta_mode,
                       radius_one=radii["one"], radius_pc=radii["pc"], radius_mc=radii.get("mc"),
                       counts0=None if exact else tuple(int(c) for c in counts0), skipped_estimation=skipped)


__all__ = ["ABSTAIN", "NOT_CERTIFIED", "Certificate", "binomial_abstain", "certificate_from_counts",
           "certified_radius", "clopper_pearson_lower", "delta", "delta_fraction", "keep_count",
           "monte_carlo_beta", "radius_from_bound", "risk_probability"]


