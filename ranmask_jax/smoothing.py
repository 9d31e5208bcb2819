"""The smoothed classifier g (RanMASK, Zeng et al. 2021, Sections 2-3): one batched engine for certification,
attacks and purification.

Three pluggable parts, each in one place:

* the base classifier, any jittable ``logits_fn(params, input_ids, attention_mask, token_type_ids) -> [B, C]``
  (``SmoothedClassifier(model, ...)`` adapts an nnx model; ``SmoothedClassifier.from_logits_fn`` takes any);
* the keep-set distribution (``masking.UniformKeepSets``: sampler, enumeration and what the certificate assumes);
* an optional copy transform between masking and the classifier (``transform(t_params, key, ids, attn, types)``,
  e.g. a masked-LM refill), with its own PRNG key.

How the work is done: the keep sets of each text are sampled on the device, deduplicated on the host (each
distinct copy is classified once and weighted by its multiplicity), and the copies of MANY texts are packed into
fixed-shape batches, grouped by the masked copy's own length after the cut to ``max_len`` (fine length buckets),
with a text index per row. Each batch builds its copies on the device, classifies them and sums the votes, logits
and probabilities per text ON the device; batches are dispatched without waiting and the host fetches only the
per-text sums. One compilation per (batch rows, texts per batch, text bucket, copy bucket).

The certificate is computed from the votes by ``ranmask_jax.certificate``, whose docstring says what each beta
guarantees.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ranmask_jax import ensembles
from ranmask_jax.certificate import ABSTAIN, Certificate, binomial_abstain, certificate_from_counts, monte_carlo_beta
from ranmask_jax.masking import DEFAULT_MIN_KEEP, EncodedText, KeepSets, UniformKeepSets, bucket, copy_lengths


@dataclasses.dataclass(frozen=True)
class Prediction:
    """g(x) for one text. ``scores``: the ensemble rule's class scores (``ranmask_jax.ensembles``: vote shares,
    softmax of the mean raw logits, mean probabilities, ...), summing to 1. ``label`` is ABSTAIN when the binomial
    test could not separate the top two vote counts at level alpha (only when ``alpha`` was given)."""

    label: int
    scores: tuple[float, ...]
    counts: tuple[int, ...]
    n: int
    h: int
    k: int
    p_value: float | None = None


@dataclasses.dataclass
class Votes:
    """What the classifier said about the copies of one text, summed over copies (weighted by multiplicity)."""

    counts: np.ndarray  # [C] int64: copies per predicted class
    logit_sum: np.ndarray  # [C] float64: sum of raw logits
    prob_sum: np.ndarray  # [C] float64: sum of softmax probabilities
    row_labels: np.ndarray | None = None  # [m] f's class for each distinct copy (when asked for)

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def scores(self, ensemble: str) -> np.ndarray:
        """The ``ensemble`` rule's class scores (``ranmask_jax.ensembles``)."""
        n = max(self.n, 1)
        return ensembles.scores(ensemble, self.counts, self.logit_sum / n, self.prob_sum / n)


@dataclasses.dataclass
class _Request:
    enc: EncodedText
    keep: np.ndarray  # [m, W] distinct keep sets
    weights: np.ndarray  # [m] multiplicities


# estimation copies are sampled, deduplicated and classified in passes of at most this many per text, and at most
# IN_FLIGHT device steps are queued before the host collects their sums: memory does not grow with n
STREAM_CHUNK = 1 << 14
IN_FLIGHT = 32


def why_uncertifiable(keep_sets, transform) -> str | None:
    """Why Theorem 1's certificate does not cover this smoothed classifier, or None when it does: the keep sets must
    be uniform k-subsets (``keep_sets.certifiable``) and the base classifier, copy transform included, a function
    of the masked copy alone. A transform is random unless it declares ``transform.deterministic = True``: with a
    random one, every distinct copy is classified once and weighted by its multiplicity, so the votes are not
    independent draws and no confidence bound holds."""
    if not getattr(keep_sets, "certifiable", False):
        return f"{type(keep_sets).__name__} keep sets are not uniform k-subsets"
    if transform is not None and not getattr(transform, "deterministic", False):
        return "the copy transform is random beyond the keep set (it does not declare deterministic = True)"
    return None


def copy_bucket(n: int, max_len: int) -> int:
    """Fine length buckets for masked copies: multiples of 8 up to 64, of 16 up to 128, of 32 up to 256, then of
    64; at least 16, at most ``max_len``."""
    step = 8 if n <= 64 else 16 if n <= 128 else 32 if n <= 256 else 64
    return min(max(16, -(-n // step) * step), max_len)


def nnx_logits_fn(model):
    """``(logits_fn, params)`` of an nnx ``SequenceClassifier`` (in eval mode)."""
    from flax import nnx

    model.eval()
    graphdef, state = nnx.split(model)

    def logits_fn(state, input_ids, attention_mask, token_type_ids):
        return nnx.merge(graphdef, state)(input_ids, attention_mask, token_type_ids)

    return logits_fn, state


def dedup(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keep sets and their multiplicities (the vote statistics are unchanged; each is classified once)."""
    packed = np.packbits(keep, axis=1)
    _, first, counts = np.unique(packed, axis=0, return_index=True, return_counts=True)
    return keep[first], counts


class SmoothedClassifier:
    """RanMASK's g(x) on a base classifier (see the module docstring for how the work is batched).

    ``SmoothedClassifier(model, tokenizer, rho)`` wraps an nnx ``SequenceClassifier``; ``from_logits_fn`` any
    jittable classifier. ``rho``: masking rate; each copy keeps ``k_x = keep_count(h_x, rho, min_keep)`` of ALL h_x
    words of the text and is cut to ``max_len`` tokens after masking (``ranmask_jax.masking``); ``max_len`` may not
    exceed the model's positions. ``batch_size``: copies per device step (a multiple of the device count);
    ``texts_per_batch``: how many texts one step may hold.
    """

    def __init__(self, model, tokenizer, rho: float, *, batch_size: int = 256, max_len: int = 128,
                 mask_side: str = "second", min_keep: int = DEFAULT_MIN_KEEP, mesh=None, texts_per_batch: int = 32,
                 transform=None, transform_params=None, keep_sets=None):
        logits_fn, params = nnx_logits_fn(model)
        keep_sets = keep_sets if keep_sets is not None else UniformKeepSets(rho, min_keep)
        self._setup(logits_fn, params, tokenizer, keep_sets, num_labels=model.cfg.num_labels,
                    max_positions=getattr(model.cfg, "max_positions", None), batch_size=batch_size, max_len=max_len,
                    mask_side=mask_side, mesh=mesh, texts_per_batch=texts_per_batch, transform=transform,
                    transform_params=transform_params)

    @classmethod
    def from_logits_fn(cls, logits_fn, params, tokenizer, keep_sets, *, num_labels: int,
                       max_positions: int | None = None, **kw) -> SmoothedClassifier:
        """The smoothed classifier of any jittable ``logits_fn(params, input_ids, attention_mask, token_type_ids)
        -> [B, num_labels]``, with a keep-set distribution such as ``UniformKeepSets(rho)``."""
        self = cls.__new__(cls)
        self._setup(logits_fn, params, tokenizer, keep_sets, num_labels=num_labels, max_positions=max_positions,
                    **kw)
        return self

    def _setup(self, logits_fn, params, tokenizer, keep_sets, *, num_labels: int, max_positions: int | None,
               batch_size: int = 256, max_len: int = 128, mask_side: str = "second", mesh=None,
               texts_per_batch: int = 32, transform=None, transform_params=None):
        import jax
        import jax.numpy as jnp

        from ranmask_jax import distributed
        from ranmask_jax.masking import build_masked

        if not isinstance(keep_sets, KeepSets):
            raise TypeError(f"keep_sets must follow masking.KeepSets (k, size, sample_text, certifiable), got "
                            f"{type(keep_sets).__name__}")
        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a mask token and a pad token")
        if mask_side not in ("first", "second", "both"):
            raise ValueError(f"mask_side must be first, second or both, got {mask_side!r}")
        if batch_size < 1 or texts_per_batch < 1:
            raise ValueError(f"batch_size and texts_per_batch must be >= 1, got {batch_size}, {texts_per_batch}")
        if max_positions is not None and max_len > max_positions:
            raise ValueError(f"max_len {max_len} exceeds the model's {max_positions} positions")
        self.mesh = mesh if mesh is not None else distributed.make_mesh()
        n_dev = self.mesh.devices.size
        if batch_size % n_dev:
            raise ValueError(f"batch_size {batch_size} is not a multiple of the {n_dev} devices")
        self.tokenizer, self.keep_sets, self.batch_size, self.max_len = tokenizer, keep_sets, batch_size, max_len
        self.rho, self.min_keep = getattr(keep_sets, "rho", None), getattr(keep_sets, "min_keep", None)
        self.mask_side, self.texts_per_batch, self.num_labels = mask_side, texts_per_batch, num_labels
        self.transform = transform
        self.mask_id, self.pad_id = int(tokenizer.mask_token_id), int(tokenizer.pad_token_id)
        self._params = distributed.replicate(params, self.mesh)
        self._t_params = distributed.replicate(transform_params, self.mesh) if transform is not None else None
        self._transform_key = jax.random.key(0x5EED)
        self._batches = 0
        self.traces = 0  # how many times the device step was traced (compiled)

        def step(params, t_params, t_key, table, row_text, keep, weight, out_len):
            self.traces += 1
            rows = [a[row_text] for a in table]  # [R, T] each: the text of every row

            def one(kp, *text):
                out = build_masked(*text, keep=kp[None], mask_id=self.mask_id, pad_id=self.pad_id,
                                   max_len=self.max_len, out_len=out_len)
                return tuple(o[0] for o in out)

            ids, types, attn = jax.vmap(one)(keep, *rows)  # [R, out_len]
            if transform is not None:
                ids, attn, types = transform(t_params, t_key, ids, attn, types)
            logits = logits_fn(params, ids, attn, types).astype(jnp.float32)  # [R, C]
            label = jnp.argmax(logits, axis=-1)  # [R]
            w = weight[:, None]
            per_text = lambda x: jax.ops.segment_sum(x * w, row_text, num_segments=table[0].shape[0])  # noqa: E731
            return (per_text(jax.nn.one_hot(label, logits.shape[-1])), per_text(logits),
                    per_text(jax.nn.softmax(logits, axis=-1)), label)

        self._step = jax.jit(step, static_argnames=("out_len",))
        self._shard = distributed.batch_sharded(self.mesh)
        self._rep = distributed.replicated(self.mesh)
        self._plain = jax.jit(lambda params, ids, attn, types: logits_fn(params, ids, attn, types).astype(jnp.float32))

    def update_weights(self, model) -> None:
        """Swap in new weights of the same architecture (no recompilation)."""
        from flax import nnx

        from ranmask_jax import distributed

        self._params = distributed.replicate(nnx.state(model), self.mesh)

    # -- pieces ---------------------------------------------------------------------------------------------------
    def encode(self, text: str, text_pair: str | None = None) -> EncodedText:
        """The whole text with its h_x maskable words (nothing is truncated before masking)."""
        from ranmask_jax.masking import check_max_len, encode

        enc = encode(self.tokenizer, text, text_pair, mask_side=self.mask_side)
        check_max_len(enc, self.max_len)
        return enc

    def keep_count(self, h: int) -> int:
        return self.keep_sets.k(h)

    @staticmethod
    def word_width(enc: EncodedText) -> int:
        """Width of the keep-set arrays of ``enc``: the bucket of h_x."""
        return bucket(enc.h)

    def sample(self, key, enc: EncodedText, n: int) -> np.ndarray:
        """``n`` keep sets of ``enc``'s words (bool ``[n, W]``), sampled on the device."""
        return np.asarray(self.keep_sets.sample_text(key, enc, n, self.word_width(enc)))

    def enumerate_keep_sets(self, enc: EncodedText) -> np.ndarray:
        """All C(h, k) keep sets of ``enc``'s words, bool ``[C(h, k), W]`` (one empty set when k = 0)."""
        return self.keep_sets.enumerate(enc.h, self.word_width(enc))

    def exact_mode(self, enc: EncodedText, threshold: int) -> bool:
        return self.keep_sets.size(enc.h) <= threshold

    def batch_rows(self, m: int) -> int:
        """Rows per device step for ``m`` copies: ``batch_size``, or for fewer copies the smallest power of two
        >= m (at least 16, a multiple of the device count), so that small calls do not pay for a full batch while
        only a handful of shapes is ever compiled."""
        if m >= self.batch_size:
            return self.batch_size
        n_dev = self.mesh.devices.size
        rows = max(16, 1 << max(m - 1, 0).bit_length())
        return min(self.batch_size, -(-rows // n_dev) * n_dev)

    # -- the engine ------------------------------------------------------------------------------------------------
    def votes(self, requests: list[tuple[EncodedText, np.ndarray, np.ndarray]], *, row_labels: bool = False
              ) -> list[Votes]:
        """Classify the masked copies of many texts at once. Each request is ``(enc, keep [m, W], weights [m])``
        (distinct keep sets with multiplicities); returns per request the weighted votes and sums of logits and
        probabilities (and f's class per distinct copy with ``row_labels``)."""
        import jax

        reqs = [_Request(e, np.asarray(k, bool), np.asarray(w, np.float32)) for e, k, w in requests]
        out = [Votes(np.zeros(self.num_labels), np.zeros(self.num_labels), np.zeros(self.num_labels),
                     np.zeros(len(r.keep), np.int64) if row_labels else None) for r in reqs]
        # every copy, tagged with its length bucket after masking and the cut to max_len
        tags = [np.stack([np.full(len(r.keep), i), np.arange(len(r.keep)),
                          [copy_bucket(int(x), self.max_len) for x in copy_lengths(r.enc, r.keep, self.max_len)]], 1)
                for i, r in enumerate(reqs) if len(r.keep)]
        if not tags:
            return out
        tags = np.concatenate(tags)
        tags = tags[np.lexsort((tags[:, 1], tags[:, 0], tags[:, 2]))]  # by bucket, then text, then copy
        pending = []

        def collect(take, result) -> None:
            counts, logit_sum, prob_sum, labels = jax.device_get(result)
            texts = np.unique(take[:, 0])
            for slot, i in enumerate(texts):
                out[i].counts = out[i].counts + counts[slot]
                out[i].logit_sum = out[i].logit_sum + logit_sum[slot]
                out[i].prob_sum = out[i].prob_sum + prob_sum[slot]
            if row_labels:
                for j, (i, r, _) in enumerate(take):
                    out[i].row_labels[r] = labels[j]

        for out_len in np.unique(tags[:, 2]):
            group = tags[tags[:, 2] == out_len]
            rows = self.batch_rows(len(group))
            slots = min(self.texts_per_batch, rows)
            start = 0
            while start < len(group):
                # as many rows as fit, from at most `slots` texts (rows are sorted by text: a prefix)
                chunk = group[start:start + rows]
                take = chunk[chunk[:, 0] <= np.unique(chunk[:, 0])[:slots][-1]]
                start += len(take)
                pending.append((take, self._dispatch(reqs, take, rows, slots, int(out_len))))
                if len(pending) > IN_FLIGHT:  # the device runs ahead, but not unboundedly
                    collect(*pending.pop(0))
        for take, result in pending:
            collect(take, result)
        for v in out:
            v.counts = np.rint(v.counts).astype(np.int64)
        return out

    def _dispatch(self, reqs: list[_Request], take: np.ndarray, rows: int, slots: int, out_len: int):
        """Build one batch (rows ``take`` = [(request, copy, bucket)]) and start it on the device."""
        import jax

        texts = np.unique(take[:, 0])
        width = max(bucket(len(reqs[i].enc.token_ids)) for i in texts)
        padded = [reqs[i].enc.padded(width, self.pad_id) for i in texts]
        names = ("token_ids", "token_type_ids", "word_index", "first_of_word", "has_token", "segment")
        table = [np.stack([p[k] for p in padded] + [padded[0][k]] * (slots - len(texts))) for k in names]
        keep = np.zeros((rows, width), bool)
        weight = np.zeros(rows, np.float32)
        row_text = np.zeros(rows, np.int32)
        for slot, i in enumerate(texts):  # one vectorised copy per text, not per row
            sel = np.flatnonzero(take[:, 0] == i)
            kp = reqs[i].keep[take[sel, 1]]
            keep[sel, :kp.shape[1]] = kp
            weight[sel] = reqs[i].weights[take[sel, 1]]
            row_text[sel] = slot
        t_key = jax.random.fold_in(self._transform_key, self._batches)
        self._batches += 1
        return self._step(self._params, self._t_params, t_key, jax.device_put(table, self._rep),
                          *jax.device_put((row_text, keep, weight), self._shard), out_len=out_len)

    def _keep_sets(self, key, enc: EncodedText, n: int, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        keep = self.enumerate_keep_sets(enc) if exact else self.sample(key, enc, n)
        return dedup(keep) if len(keep) else (keep, np.zeros(0, np.int64))

    def base_logits(self, texts: list[str], pairs: list[str | None] | None = None) -> np.ndarray:
        """The base classifier f on the UNMASKED texts, ``[len(texts), C]`` raw logits (a plain, undefended model's
        answer; the texts are tokenized with truncation to ``max_len``). Batches of ``batch_rows`` rows padded to
        the power-of-two bucket of their longest text, so few shapes compile."""
        import jax

        out = []
        for s in range(0, len(texts), self.batch_size):
            part = texts[s:s + self.batch_size]
            second = None if pairs is None else pairs[s:s + self.batch_size]
            enc = self.tokenizer(part, second, truncation=True, max_length=self.max_len) if second and any(
                second) else self.tokenizer(part, truncation=True, max_length=self.max_len)
            width = min(self.max_len, bucket(max(len(x) for x in enc["input_ids"])))
            rows = self.batch_rows(len(part))
            ids = np.full((rows, width), self.pad_id, np.int32)
            attn, types = np.zeros((rows, width), np.int32), np.zeros((rows, width), np.int32)
            for r, x in enumerate(enc["input_ids"]):
                ids[r, :len(x)], attn[r, :len(x)] = x, 1
                if "token_type_ids" in enc:
                    types[r, :len(x)] = enc["token_type_ids"][r]
            batch = jax.device_put((ids, attn, types), self._shard)
            out.append(np.asarray(self._plain(self._params, *batch))[: len(part)])
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, self.num_labels))

    # -- the procedures ---------------------------------------------------------------------------------------------
    def predict_many(self, keys, texts: list[str], pairs: list[str | None] | None = None, *, n: int = 1000,
                     ensemble: str = "vote", alpha: float | None = None, exact_threshold: int | None = None
                     ) -> list[Prediction]:
        """g(x) for many texts at once (``keys[i]`` for text i); see ``predict``."""
        ensembles.check(ensemble)
        pairs = pairs or [None] * len(texts)
        encs = [self.encode(t, p) for t, p in zip(texts, pairs, strict=True)]
        thr = n if exact_threshold is None else exact_threshold
        exact = [self.exact_mode(e, thr) for e in encs]
        requests = [(e, *self._keep_sets(k, e, n, x)) for k, e, x in zip(keys, encs, exact, strict=True)]
        out = []
        for enc, is_exact, v in zip(encs, exact, self.votes(requests), strict=True):
            scores = v.scores(ensemble)
            label, p_value = int(np.argmax(scores)), None
            if alpha is not None:
                if is_exact:  # the counts are the population itself: only an exact tie is undecided
                    top = np.sort(v.counts)[::-1]
                    tied = len(top) > 1 and top[0] == top[1]
                    label, p_value = (ABSTAIN if tied else int(np.argmax(v.counts))), (1.0 if tied else 0.0)
                else:
                    label, p_value = binomial_abstain(v.counts, alpha)
                if ensemble != "vote" and label != ABSTAIN:
                    label = int(np.argmax(scores))
            out.append(Prediction(label, tuple(float(s) for s in scores), tuple(int(c) for c in v.counts), v.n,
                                  enc.h, self.keep_count(enc.h), p_value))
        return out

    def predict(self, key, text: str, text_pair: str | None = None, *, n: int = 1000, ensemble: str = "vote",
                alpha: float | None = None, exact_threshold: int | None = None) -> Prediction:
        """g(x) from ``n`` random masked copies (all C(h, k) keep sets when that is <= ``exact_threshold``, default
        ``n``). ``ensemble``: a rule of ``ranmask_jax.ensembles`` ("vote", the majority of f's labels; "logit",
        "prob", "majority", "onehot"); copies are weighted by multiplicity. With ``alpha``, returns
        ABSTAIN unless a binomial test separates the top two vote counts (Cohen et al.'s PREDICT); in exact mode
        the counts are the population itself, so g abstains only when the top two exactly tie."""
        return self.predict_many([key], [text], [text_pair], n=n, ensemble=ensemble, alpha=alpha,
                                 exact_threshold=exact_threshold)[0]

    def scores(self, key, texts: list[str], pairs: list[str | None] | None = None, *, n: int = 100,
               ensemble: str = "vote") -> np.ndarray:
        """Scores of g for a batch of texts, ``[len(texts), C]``: the ``ensemble`` rule's scores over ``n`` masked
        copies each (all keep sets when there are at most ``n``); text i uses
        ``fold_in(key, i)``. The entry point for black-box attacks."""
        import jax

        keys = [jax.random.fold_in(key, i) for i in range(len(texts))]
        preds = self.predict_many(keys, texts, pairs, n=n, ensemble=ensemble)
        return np.array([p.scores for p in preds], np.float64).reshape(len(texts), self.num_labels)

    def certify_many(self, keys, texts: list[str], labels: list[int | None], pairs: list[str | None] | None = None,
                     *, n0: int = 100, n: int = 5000, alpha: float = 0.05, beta: str = "pc",
                     exact_threshold: int | None = None, n_r: int = 200) -> list[Certificate]:
        """CERTIFY for many texts at once (``keys[i]``, ``labels[i]`` for text i); see ``certify``."""
        import jax

        if beta not in ("pc", "one", "mc"):
            raise ValueError(f"beta must be 'pc', 'one' or 'mc', got {beta!r}")
        if beta == "mc" and n_r < 1:
            raise ValueError(f"Monte Carlo beta needs n_r >= 1 perturbation sets, got {n_r}")
        why = why_uncertifiable(self.keep_sets, self.transform)
        if why is not None:
            raise ValueError(f"no certificate: {why}, and Theorem 1 assumes uniform keep sets and a deterministic "
                             "base classifier; use predict for empirical robustness")
        for label in labels:
            if label is not None and not 0 <= label < self.num_labels:
                raise ValueError(f"label {label} out of range for {self.num_labels} classes")
        pairs = pairs or [None] * len(texts)
        encs = [self.encode(t, p) for t, p in zip(texts, pairs, strict=True)]
        thr = n if exact_threshold is None else exact_threshold
        exact = [self.exact_mode(e, thr) for e in encs]
        # selection copies (or every keep set, in exact mode)
        first = [(e, *self._keep_sets(jax.random.fold_in(k, 0), e, n0, x))
                 for k, e, x in zip(keys, encs, exact, strict=True)]
        v0 = self.votes(first, row_labels=beta == "mc")
        # estimation copies, unless exact, or the selection copies already picked a wrong class
        todo = [i for i, x in enumerate(exact) if not x and (labels[i] is None
                                                              or int(np.argmax(v0[i].counts)) == labels[i])]
        v1, est = self._estimate([jax.random.fold_in(keys[i], 1) for i in todo], [encs[i] for i in todo], n,
                                 row_labels=beta == "mc")
        v1, est = dict(zip(todo, v1, strict=True)), dict(zip(todo, est, strict=True))
        out = []
        for i, enc in enumerate(encs):
            h, k = enc.h, self.keep_count(enc.h)
            if exact[i]:
                votes, (_, uniq, weights) = v0[i], first[i]
            elif i in v1:
                votes, (_, uniq, weights) = v1[i], est[i]
            else:
                out.append(certificate_from_counts(labels[i], v0[i].counts, None, h, k, alpha, beta))
                continue
            mc = None
            if beta == "mc":
                is_c = votes.row_labels == int(np.argmax(v0[i].counts))
                rng = np.random.default_rng(np.asarray(jax.random.key_data(jax.random.fold_in(keys[i], 2))).ravel())
                mc = lambda d, u=uniq, w=weights, c=is_c, g=rng, hh=h: monte_carlo_beta(u, w, c, hh, d, n_r, g)  # noqa: E731
            out.append(certificate_from_counts(labels[i], v0[i].counts, votes.counts, h, k, alpha, beta,
                                               exact=exact[i], mc_beta=mc))
        return out

    def _estimate(self, keys, encs: list[EncodedText], n: int, row_labels: bool):
        """The estimation votes of each text (``n`` copies from ``keys[i]``), streamed: in passes of at most
        STREAM_CHUNK copies per text (pass c draws from ``fold_in(key, c)`` when there is more than one pass; one pass
        uses ``key`` itself), each sampled, deduplicated and classified before the next, so memory is flat in n.
        Returns the summed Votes and, per text, ``(None, distinct keep sets, weights)`` (concatenated over passes,
        kept only with ``row_labels``, which Monte Carlo beta needs)."""
        import jax

        passes = -(-n // STREAM_CHUNK)
        votes = [Votes(np.zeros(self.num_labels, np.int64), np.zeros(self.num_labels), np.zeros(self.num_labels),
                       np.zeros(0, np.int64) if row_labels else None) for _ in encs]
        kept = [([], []) for _ in encs]
        for c in range(passes):
            size = min(STREAM_CHUNK, n - c * STREAM_CHUNK)
            reqs = [(e, *self._keep_sets(k if passes == 1 else jax.random.fold_in(k, c), e, size, False))
                    for k, e in zip(keys, encs, strict=True)]
            for v, got, (_, keep, weights), store in zip(votes, self.votes(reqs, row_labels=row_labels), reqs, kept,
                                                         strict=True):
                v.counts, v.logit_sum, v.prob_sum = v.counts + got.counts, v.logit_sum + got.logit_sum, \
                    v.prob_sum + got.prob_sum
                if row_labels:
                    v.row_labels = np.concatenate([v.row_labels, got.row_labels])
                    store[0].append(keep)
                    store[1].append(weights)
        est = [(None, np.concatenate(k) if k else None, np.concatenate(w) if w else None) for k, w in kept]
        return votes, est

    def certify(self, key, text: str, label: int | None, text_pair: str | None = None, *, n0: int = 100, n: int = 5000,
                alpha: float = 0.05, beta: str = "pc", exact_threshold: int | None = None, n_r: int = 200
                ) -> Certificate:
        """CERTIFY: g(x) from ``n0`` selection copies, a (1 - alpha) lower bound on its vote share from ``n``
        independent estimation copies, then the largest certified radius under beta = 1 (rigorous), beta = p_c
        (the paper's) and, with ``beta="mc"``, Monte Carlo beta; ``radius`` is the one ``beta`` names. When
        C(h, k) <= ``exact_threshold`` (default ``n``) every keep set is classified once and p_c is exact ("exact"
        mode). When ``label`` is given and the selection copies pick another class, the estimation copies are
        skipped (the radius is -1 either way; ``skipped_estimation``). ``key`` should be ``fold_in(root,
        example_index)``; the selection and estimation streams are ``fold_in(key, 0)`` and ``fold_in(key, 1)``."""
        return self.certify_many([key], [text], [label], [text_pair], n0=n0, n=n, alpha=alpha, beta=beta,
                                 exact_threshold=exact_threshold, n_r=n_r)[0]
