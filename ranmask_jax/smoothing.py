"""The smoothed classifier g (RanMASK, Zeng et al. 2021, Sections 2-3) on a base classifier: masked copies built
and classified on the device(s), votes counted, and the certificate computed from them by
``ranmask_jax.certificate`` (re-exported here), whose docstring says what each beta guarantees.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

from ranmask_jax.certificate import (  # noqa: F401  (re-exported: the public certificate API)
    ABSTAIN,
    NOT_CERTIFIED,
    Certificate,
    binomial_abstain,
    certificate_from_counts,
    certified_radius,
    clopper_pearson_lower,
    delta,
    delta_fraction,
    monte_carlo_beta,
    radius_from_bound,
    risk_probability,
)
from ranmask_jax.masking import DEFAULT_MIN_KEEP, keep_count

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
