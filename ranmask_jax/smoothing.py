"""The smoothed classifier g and its certificate (RanMASK, Zeng et al. 2021, Sections 2-3).

Statistics live on the host (exact integer binomials, scipy's beta quantiles); votes are counted on the device
(``ranmask_jax.classifier``). The pure functions here take counts, so they can be checked against brute force.

Guarantees, in plain words (``docs/CERTIFICATE.md`` has the details):

* ``beta="one"`` (Levine & Feizi): with probability >= 1 - alpha over the sampling, no text x' that differs from x
  in at most ``radius`` of its h_x words makes g(x') differ from g(x). Rigorous.
* ``beta="pc"`` (the paper's choice, beta = n_c / n): uses the observed vote share as beta in Theorem 1. Theorem 1
  needs beta = P(f = c | the keep set touches a changed word), which can exceed p_c, so this radius is an
  estimate, NOT a guarantee; it reproduces the paper's numbers.
* ``beta="mc"``: Algorithm 1's Monte Carlo estimate of beta from the same copies. Also an estimate.
* exact mode: when all C(h_x, k_x) keep sets are enumerated, p_c is known exactly and no confidence level is
  involved; with ``beta="one"`` the certificate holds with probability 1.

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

from ranmask_jax.masking import DEFAULT_MIN_KEEP, keep_count

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


def radius_from_bound(p_lower: float, beta: float | np.ndarray, h: int, k: int) -> int:
    """Largest d in [0, h] such that ``p_lower - beta_e * Delta(e) > 1/2`` for every e <= d; -1 if d = 0 fails.

    ``beta`` is one number, or an array indexed by d (Monte Carlo beta). The search stops at the first failure:
    a radius certifies every smaller number of changes too, so no d beyond a failed one is ever reported.
    """
    betas = np.broadcast_to(np.asarray(beta, float), (h + 1,))
    radius = NOT_CERTIFIED
    for d in range(h + 1):
        if not p_lower - betas[d] * delta(h, k, d) > 0.5:
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

    @property
    def certified_rate(self) -> float:
        return self.radius / self.h if self.radius >= 0 else float("-inf")


def _mc_radius(p_lower: float, h: int, k: int, mc_beta) -> tuple[int, float]:
    """Monte Carlo beta radius: beta is estimated afresh for each d, and the search stops at the first failure."""
    radius, beta_used = 0, 0.0
    for d in range(1, h + 1):
        beta_used = mc_beta(d)
        if not p_lower - beta_used * delta(h, k, d) > 0.5:
            break
        radius = d
    return radius, beta_used


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
    radii = {"one": NOT_CERTIFIED, "pc": NOT_CERTIFIED, "mc": None}
    beta_used = {"one": 1.0, "pc": n_c / n if n else 0.0, "mc": 0.0}
    if pred == label and p_lower > 0.5:
        radii["one"] = radius_from_bound(p_lower, 1.0, h, k)
        radii["pc"] = radius_from_bound(p_lower, beta_used["pc"], h, k)
        if beta_mode == "mc":
            if mc_beta is None:
                raise ValueError("beta='mc' needs the classified copies (mc_beta)")
            radii["mc"], beta_used["mc"] = _mc_radius(p_lower, h, k, mc_beta)
    elif beta_mode == "mc":
        radii["mc"] = NOT_CERTIFIED
    return Certificate(label=label, prediction=pred, correct=pred == label, counts=tuple(int(c) for c in counts),
                       n=n, p_lower=float(p_lower), beta=float(beta_used[beta_mode]), h=h, k=k,
                       radius=radii[beta_mode], mode="exact" if exact else "sampled", beta_mode=beta_mode,
                       radius_one=radii["one"], radius_pc=radii["pc"], radius_mc=radii["mc"],
                       counts0=None if exact else tuple(int(c) for c in counts0), skipped_estimation=skipped)


__all__ = ["ABSTAIN", "NOT_CERTIFIED", "Certificate", "binomial_abstain", "certificate_from_counts",
           "certified_radius", "clopper_pearson_lower", "delta", "delta_fraction", "keep_count",
           "monte_carlo_beta", "radius_from_bound", "risk_probability"]


# ---- the smoothed classifier on a model ---------------------------------------------------------------------------
Ensemble = Literal["vote", "logit", "prob"]


@dataclasses.dataclass(frozen=True)
class Prediction:
    """g(x) for one text. ``scores``: vote shares ("vote"), mean raw logits ("logit") or mean softmax
    probabilities ("prob") over the copies. ``label`` is ABSTAIN when the binomial test could not separate the
    top two vote counts at level alpha (only when ``alpha`` was given)."""

    label: int
    scores: tuple[float, ...]
    counts: tuple[int, ...]
    n: int
    h: int
    k: int
    p_value: float | None = None


class SmoothedClassifier:
    """RanMASK's g(x) on a base classifier: masked copies built and classified on the device(s), votes counted.

    ``model``: a ``SequenceClassifier`` (put in eval mode here). ``rho``: masking rate; each copy keeps
    ``k_x = keep_count(h_x, rho, min_keep)`` of ALL h_x words of the text. ``max_len``: each masked copy is cut to
    this many tokens after masking (``ranmask_jax.masking``); it may not exceed the model's position table.
    ``batch_size``: copies per device step (a multiple of the device count); the last batch is padded and the
    padding ignored. One compilation per (text bucket, copy width, batch rows).
    """

    def __init__(self, model, tokenizer, rho: float, *, batch_size: int = 256, max_len: int = 128,
                 mask_side: str = "second", min_keep: int = DEFAULT_MIN_KEEP, mesh=None):
        import jax
        from flax import nnx

        from ranmask_jax import distributed

        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a mask token and a pad token")
        keep_count(1, rho, min_keep)  # validates rho and min_keep
        if mask_side not in ("first", "second", "both"):
            raise ValueError(f"mask_side must be first, second or both, got {mask_side!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        positions = getattr(getattr(model, "cfg", None), "max_positions", None)
        if positions is not None and max_len > positions:
            raise ValueError(f"max_len {max_len} exceeds the model's {positions} positions")
        self.mesh = mesh if mesh is not None else distributed.make_mesh()
        n_dev = self.mesh.devices.size
        if batch_size % n_dev:
            raise ValueError(f"batch_size {batch_size} is not a multiple of the {n_dev} devices")
        model.eval()
        self.tokenizer, self.rho, self.batch_size, self.max_len = tokenizer, rho, batch_size, max_len
        self.mask_side, self.min_keep = mask_side, min_keep
        self.mask_id, self.pad_id = int(tokenizer.mask_token_id), int(tokenizer.pad_token_id)
        self.num_labels = model.cfg.num_labels
        graphdef, state = nnx.split(model)
        self._state = distributed.replicate(state, self.mesh)
        self.traces = 0  # how many times the forward was traced (compiled)
        from ranmask_jax.masking import build_masked, sample_keep

        def forward(state, text, keep, out_len):
            self.traces += 1
            ids, types, attn = build_masked(**text, keep=keep, mask_id=self.mask_id, pad_id=self.pad_id,
                                            max_len=self.max_len, out_len=out_len)
            return nnx.merge(graphdef, state)(ids, attn, types)  # [B, C]

        self._forward = jax.jit(forward, static_argnames=("out_len",))
        self._sample = jax.jit(sample_keep, static_argnames=("n", "width"))
        self._shard = distributed.batch_sharded(self.mesh)
        self._rep = distributed.replicated(self.mesh)

    def update_weights(self, model) -> None:
        """Swap in new weights of the same architecture (no recompilation)."""
        from flax import nnx

        from ranmask_jax import distributed

        self._state = distributed.replicate(nnx.state(model), self.mesh)

    # -- pieces ---------------------------------------------------------------------------------------------------
    def encode(self, text: str, text_pair: str | None = None):
        """The whole text with its h_x maskable words (nothing is truncated before masking)."""
        from ranmask_jax.masking import check_max_len, encode

        enc = encode(self.tokenizer, text, text_pair, mask_side=self.mask_side)
        check_max_len(enc, self.max_len)
        return enc

    def keep_count(self, h: int) -> int:
        return keep_count(h, self.rho, self.min_keep)

    @staticmethod
    def word_width(enc) -> int:
        """Width of the keep-set arrays of ``enc``: the bucket of h_x."""
        from ranmask_jax.masking import bucket

        return bucket(enc.h)

    def sample(self, key, enc, n: int) -> np.ndarray:
        """``n`` keep sets of ``enc``'s words (bool ``[n, W]``), sampled on the device."""
        return np.asarray(self._sample(key, enc.h, self.keep_count(enc.h), n=n, width=self.word_width(enc)))

    def enumerate_keep_sets(self, enc) -> np.ndarray:
        """All C(h, k) keep sets of ``enc``'s words, bool ``[C(h, k), W]`` (one empty set when k = 0)."""
        import itertools

        k = self.keep_count(enc.h)
        combos = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(enc.h), k)), np.int64)
        combos = combos.reshape(math.comb(enc.h, k), k)
        keep = np.zeros((len(combos), self.word_width(enc)), bool)
        np.put_along_axis(keep, combos, True, axis=1)
        return keep

    def logits(self, enc, keep: np.ndarray) -> np.ndarray:
        """Base-classifier logits ``[m, C]`` of the masked copies given by ``keep`` ``[m, W]``."""
        import jax

        from ranmask_jax.distributed import pad_rows
        from ranmask_jax.masking import bucket, output_length

        text = jax.device_put(enc.padded(bucket(len(enc.token_ids)), self.pad_id), self._rep)
        out_len = output_length(len(enc.token_ids), self.max_len)
        rows = self.batch_rows(len(keep))
        out = []
        for start in range(0, len(keep), rows):
            chunk = keep[start:start + rows]
            batch = jax.device_put(pad_rows(chunk, rows), self._shard)
            out.append(np.asarray(self._forward(self._state, text, batch, out_len=out_len))[:len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, self.num_labels), np.float32)

    def batch_rows(self, m: int) -> int:
        """Rows per device step for ``m`` copies: ``batch_size``, or for fewer copies the smallest power of two
        >= m (at least 16, a multiple of the device count), so that small calls do not pay for a full batch while
        only a handful of shapes is ever compiled."""
        if m >= self.batch_size:
            return self.batch_size
        n_dev = self.mesh.devices.size
        rows = max(16, 1 << max(m - 1, 0).bit_length())
        return min(self.batch_size, -(-rows // n_dev) * n_dev)

    def classify(self, enc, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Classify each DISTINCT keep set once. Returns (unique keep sets, multiplicities, logits)."""
        packed = np.packbits(keep, axis=1)
        _, first, counts = np.unique(packed, axis=0, return_index=True, return_counts=True)
        uniq = keep[first]
        return uniq, counts, self.logits(enc, uniq)

    def _votes(self, logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return np.bincount(logits.argmax(axis=1), weights=weights, minlength=self.num_labels).astype(np.int64)

    def exact_mode(self, enc, threshold: int) -> bool:
        return math.comb(enc.h, self.keep_count(enc.h)) <= threshold

    # -- the two procedures -----------------------------------------------------------------------------------------
    def predict(self, key, text: str, text_pair: str | None = None, *, n: int = 1000, ensemble: Ensemble = "vote",
                alpha: float | None = None, exact_threshold: int | None = None) -> Prediction:
        """g(x) from ``n`` random masked copies (all C(h, k) keep sets when that is <= ``exact_threshold``, default
        ``n``). ``ensemble``: "vote" (majority of f's labels), "logit" (argmax of the mean raw logits) or "prob"
        (argmax of the mean softmax probabilities); copies are weighted by multiplicity. With ``alpha``, returns
        ABSTAIN unless a binomial test separates the top two vote counts (Cohen et al.'s PREDICT); in exact mode
        the counts are the population itself, so g abstains only when the top two exactly tie."""
        if ensemble not in ("vote", "logit", "prob"):
            raise ValueError(f"ensemble must be 'vote', 'logit' or 'prob', got {ensemble!r}")
        enc = self.encode(text, text_pair)
        exact = self.exact_mode(enc, n if exact_threshold is None else exact_threshold)
        keep = self.enumerate_keep_sets(enc) if exact else self.sample(key, enc, n)
        _, weights, logits = self.classify(enc, keep)
        counts = self._votes(logits, weights)
        if ensemble == "vote":
            scores = counts / counts.sum()
        else:
            vals = logits if ensemble == "logit" else _softmax(logits)
            scores = (vals * weights[:, None]).sum(axis=0) / weights.sum()
        label, p_value = int(np.argmax(scores)), None
        if alpha is not None:
            if exact:
                top = np.sort(counts)[::-1]
                tied = len(top) > 1 and top[0] == top[1]
                label, p_value = (ABSTAIN if tied else int(np.argmax(counts))), (1.0 if tied else 0.0)
            else:
                label, p_value = binomial_abstain(counts, alpha)
            if ensemble != "vote" and label != ABSTAIN:
                label = int(np.argmax(scores))
        return Prediction(label, tuple(float(s) for s in scores), tuple(int(c) for c in counts), int(counts.sum()),
                          enc.h, self.keep_count(enc.h), p_value)

    def certify(self, key, text: str, label: int | None, text_pair: str | None = None, *, n0: int = 100, n: int = 5000,
                alpha: float = 0.05, beta: str = "pc", exact_threshold: int | None = None, n_r: int = 200
                ) -> Certificate:
        """CERTIFY: g(x) from ``n0`` selection copies, a (1 - alpha) lower bound on its vote share from ``n``
        independent estimation copies, then the largest certified radius under beta = 1 (rigorous), beta = p_c
        (the paper's) and, with ``beta="mc"``, Monte Carlo beta; ``radius`` is the one ``beta`` names (see the
        module docstring for what each guarantees). When C(h, k) <= ``exact_threshold`` (default ``n``) every keep
        set is classified once and p_c is exact ("exact" mode). When ``label`` is given and the selection copies
        pick another class, the estimation copies are skipped (the radius is -1 either way;
        ``skipped_estimation``). ``key`` should be ``fold_in(root, example_index)``; the selection and estimation
        streams are derived from it."""
        import jax

        if label is not None and not 0 <= label < self.num_labels:
            raise ValueError(f"label {label} out of range for {self.num_labels} classes")
        if beta not in ("pc", "one", "mc"):
            raise ValueError(f"beta must be 'pc', 'one' or 'mc', got {beta!r}")
        if beta == "mc" and n_r < 1:
            raise ValueError(f"Monte Carlo beta needs n_r >= 1 perturbation sets, got {n_r}")
        enc = self.encode(text, text_pair)
        h, k = enc.h, self.keep_count(enc.h)
        exact = self.exact_mode(enc, n if exact_threshold is None else exact_threshold)
        if exact:
            keep = self.enumerate_keep_sets(enc)
            uniq, weights, logits = self.classify(enc, keep)
            counts0 = counts = self._votes(logits, weights)
        else:
            k_sel, k_est = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
            _, w0, l0 = self.classify(enc, self.sample(k_sel, enc, n0))
            counts0 = self._votes(l0, w0)
            if label is not None and int(np.argmax(counts0)) != label:
                return certificate_from_counts(label, counts0, None, h, k, alpha, beta)
            uniq, weights, logits = self.classify(enc, self.sample(k_est, enc, n))
            counts = self._votes(logits, weights)
        mc = None
        if beta == "mc":
            pred = int(np.argmax(counts0))
            is_c = logits.argmax(axis=1) == pred
            rng = np.random.default_rng(np.asarray(jax.random.key_data(jax.random.fold_in(key, 2))).ravel())
            mc = lambda d: monte_carlo_beta(uniq, weights, is_c, h, d, n_r, rng)  # noqa: E731
        return certificate_from_counts(label, counts0, counts, h, k, alpha, beta, exact=exact, mc_beta=mc)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
