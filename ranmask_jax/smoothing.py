"""The smoothed classifier g (RanMASK, Zeng et al. 2021, Sections 2-3): the statistical procedures on top of the
batched engine, for certification, attacks and purification.

Three pluggable parts, each in one place:

* the base classifier, any jittable ``logits_fn(params, input_ids, attention_mask, token_type_ids) -> [B, C]``
  (``SmoothedClassifier(model, ...)`` adapts an nnx model; ``SmoothedClassifier.from_logits_fn`` takes any), or
  any Python function on the host (``SmoothedClassifier.from_predict_fn``: masked strings or token ids in,
  scores out; ``ranmask_jax.host``);
* the keep-set distribution (``masking.KeepSets``, e.g. ``UniformKeepSets``: sampler, enumeration and what the
  certificate assumes);
* an optional copy transform between masking and the classifier (``transform(t_params, key, ids, attn, types)``,
  e.g. a masked-LM refill), with its own PRNG key.

The keep sets of each text are sampled on the device and deduplicated on the host (each distinct copy is
classified once and weighted by its multiplicity); ``ranmask_jax.engine.CopyEngine`` packs the copies of many texts
into fixed-shape device steps and returns each text's votes. Here: g's prediction (with Cohen et al.'s abstention),
its scores under an ensemble rule, and CERTIFY (selection and estimation copies, exact mode, streaming in passes).
The certificate arithmetic is ``ranmask_jax.certificate``, whose docstring says what each beta guarantees.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np

from ranmask_jax import ensembles
from ranmask_jax.certificate import ABSTAIN, Certificate, binomial_abstain, certificate_from_counts, monte_carlo_beta
from ranmask_jax.engine import CopyEngine, Votes, dedup, nnx_logits_fn
from ranmask_jax.host import HostEngine
from ranmask_jax.masking import DEFAULT_MIN_KEEP, EncodedText, KeepSets, UniformKeepSets, bucket

__all__ = ["ABSTAIN", "HostSmoothedClassifier", "Prediction", "SmoothedClassifier", "Votes", "dedup",
           "why_uncertifiable"]


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
    copies: int = 0  # distinct masked copies classified for this text


# estimation copies are sampled, deduplicated and classified in passes of at most this many per text: memory does
# not grow with n
STREAM_CHUNK = 1 << 14


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


def _check_call(keys, texts, pairs, *, exact_threshold, labels=None, **counts) -> None:
    """The arguments of a predict / certify call, checked as the command line checks its flags."""
    from ranmask_jax.config import check_exact_threshold

    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, got one string (use predict / certify for one text)")
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    sizes = {"keys": len(keys), "texts": len(texts)}
    if pairs is not None:
        sizes["pairs"] = len(pairs)
    if labels is not None:
        sizes["labels"] = len(labels)
    if len(set(sizes.values())) > 1:
        raise ValueError("keys, texts, pairs and labels must have one entry per text, got "
                         + ", ".join(f"{len_} {name}" for name, len_ in sizes.items()))
    check_exact_threshold(exact_threshold)


class SmoothedClassifier(CopyEngine):
    """RanMASK's g(x) on a base classifier: a ``CopyEngine`` (the device side) with a keep-set distribution.

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
        self._use(keep_sets if keep_sets is not None else UniformKeepSets(rho, min_keep))
        super().__init__(logits_fn, params, tokenizer, num_labels=model.cfg.num_labels,
                         max_positions=getattr(model.cfg, "max_positions", None), batch_size=batch_size,
                         max_len=max_len, mask_side=mask_side, mesh=mesh, texts_per_batch=texts_per_batch,
                         transform=transform, transform_params=transform_params)

    @classmethod
    def from_logits_fn(cls, logits_fn, params, tokenizer, keep_sets, *, num_labels: int,
                       max_positions: int | None = None, **kw) -> SmoothedClassifier:
        """The smoothed classifier of any jittable ``logits_fn(params, input_ids, attention_mask, token_type_ids)
        -> [B, num_labels]``, with a keep-set distribution such as ``UniformKeepSets(rho)``."""
        self = cls.__new__(cls)
        self._use(keep_sets)
        CopyEngine.__init__(self, logits_fn, params, tokenizer, num_labels=num_labels, max_positions=max_positions,
                            **kw)
        return self

    @classmethod
    def from_predict_fn(cls, predict_fn, keep_sets, *, num_labels: int, inputs: str = "text",
                        mask_token: str | None = None, tokenizer=None, max_len: int | None = None,
                        outputs: str = "logits", batch_size: int = 64, mask_side: str = "second",
                        name: str | None = None) -> SmoothedClassifier:
        """The smoothed classifier of ANY classifier that runs on the host (a PyTorch model, a transformers
        pipeline, an ONNX session, a model behind an API): ``predict_fn`` maps a batch of masked copies to
        ``[B, num_labels]`` logits (or probabilities, with ``outputs="probs"``). With ``inputs="text"`` the batch
        is a list of strings (pairs: ``(text, text_pair)`` tuples), each masked word written as ``mask_token``;
        with ``inputs="ids"``, ``(input_ids, attention_mask, token_type_ids)`` int64 arrays built with
        ``tokenizer`` exactly as the JAX engine builds them, each copy cut to ``max_len``. ``batch_size``: copies
        per call. The result has every method of the smoothed classifier (predict, scores, certify, the attacks);
        ``calls`` and ``forward_passes`` count the calls made and the inputs classified (``ranmask_jax.host``)."""
        self = HostSmoothedClassifier.__new__(HostSmoothedClassifier)
        self._use(keep_sets)
        HostEngine.__init__(self, predict_fn, num_labels=num_labels, inputs=inputs, mask_token=mask_token,
                            tokenizer=tokenizer, max_len=max_len, outputs=outputs, batch_size=batch_size,
                            mask_side=mask_side, name=name)
        return self

    def _use(self, keep_sets) -> None:
        if not isinstance(keep_sets, KeepSets):
            raise TypeError(f"keep_sets must follow masking.KeepSets (k, size, sample_text, certifiable), got "
                            f"{type(keep_sets).__name__}")
        self.keep_sets = keep_sets
        self.rho, self.min_keep = getattr(keep_sets, "rho", None), getattr(keep_sets, "min_keep", None)

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

    def distinct_keep_sets(self, key, enc: EncodedText, n: int, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        """The distinct keep sets of ``n`` drawn from ``key`` (or of all of them, ``exact``) and their
        multiplicities: the copies ``predict`` and ``certify`` classify."""
        keep = self.enumerate_keep_sets(enc) if exact else self.sample(key, enc, n)
        return dedup(keep) if len(keep) else (keep, np.zeros(0, np.int64))

    # -- the procedures ---------------------------------------------------------------------------------------------
    def predict_many(self, keys, texts: list[str], pairs: list[str | None] | None = None, *, n: int = 1000,
                     ensemble: str = "vote", alpha: float | None = None, exact_threshold: int | None = None
                     ) -> list[Prediction]:
        """g(x) for many texts at once (``keys[i]`` for text i); see ``predict``."""
        ensembles.check(ensemble)
        _check_call(keys, texts, pairs, n=n, exact_threshold=exact_threshold)
        if alpha is not None and not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        pairs = pairs or [None] * len(texts)
        encs = [self.encode(t, p) for t, p in zip(texts, pairs, strict=True)]
        thr = n if exact_threshold is None else exact_threshold
        exact = [self.exact_mode(e, thr) for e in encs]
        # every keep set of the exact texts at once; the sampled ones streamed in passes (memory flat in n)
        whole = [i for i, x in enumerate(exact) if x]
        streamed = [i for i, x in enumerate(exact) if not x]
        votes = dict(zip(whole, self.votes([(encs[i], *self.distinct_keep_sets(keys[i], encs[i], n, True))
                                            for i in whole]), strict=True))
        votes.update(zip(streamed, self._stream([keys[i] for i in streamed], [encs[i] for i in streamed], n,
                                                row_labels=False)[0], strict=True))
        out = []
        for enc, is_exact, v in zip(encs, exact, (votes[i] for i in range(len(encs))), strict=True):
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
                                  enc.h, self.keep_count(enc.h), p_value, v.copies))
        return out

    def predict(self, key, text: str, text_pair: str | None = None, *, n: int = 1000, ensemble: str = "vote",
                alpha: float | None = None, exact_threshold: int | None = None) -> Prediction:
        """g(x) from ``n`` random masked copies (all C(h, k) keep sets when that is <= ``exact_threshold``, default
        ``n``). ``ensemble``: a rule of ``ranmask_jax.ensembles`` ("vote", the majority of f's labels; "logit",
        "meanlogit", "prob", "majority", "onehot"); copies are weighted by multiplicity. With ``alpha``, returns
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
        self._check_certify_call(keys, texts, pairs, labels, alpha, exact_threshold, n=n, n0=n0)
        pairs = pairs or [None] * len(texts)
        encs = [self.encode(t, p) for t, p in zip(texts, pairs, strict=True)]
        thr = n if exact_threshold is None else exact_threshold
        exact = [self.exact_mode(e, thr) for e in encs]
        # selection copies (or every keep set, in exact mode)
        first = [(e, *self.distinct_keep_sets(jax.random.fold_in(k, 0), e, n0, x))
                 for k, e, x in zip(keys, encs, exact, strict=True)]
        v0 = self.votes(first, row_labels=beta == "mc")
        # estimation copies, unless exact, or the selection copies already picked a wrong class
        todo = [i for i, x in enumerate(exact) if not x and (labels[i] is None
                                                              or int(np.argmax(v0[i].counts)) == labels[i])]
        v1, est = self._stream([jax.random.fold_in(keys[i], 1) for i in todo], [encs[i] for i in todo], n,
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
                out.append(dataclasses.replace(certificate_from_counts(labels[i], v0[i].counts, None, h, k, alpha,
                                                                       beta), copies=v0[i].copies))
                continue
            mc = None
            if beta == "mc":
                is_c = votes.row_labels == int(np.argmax(v0[i].counts))
                rng = np.random.default_rng(np.asarray(jax.random.key_data(jax.random.fold_in(keys[i], 2))).ravel())
                mc = lambda d, u=uniq, w=weights, c=is_c, g=rng, hh=h: monte_carlo_beta(u, w, c, hh, d, n_r, g)  # noqa: E731
            cert = certificate_from_counts(labels[i], v0[i].counts, votes.counts, h, k, alpha, beta,
                                           exact=exact[i], mc_beta=mc)
            out.append(dataclasses.replace(cert, copies=v0[i].copies + (0 if exact[i] else votes.copies)))
        return out

    def certify_sequential_many(self, keys, texts: list[str], labels: list[int | None],
                                pairs: list[str | None] | None = None, *, n0: int = 100, n_max: int = 1600,
                                alpha: float = 0.05, beta: str = "one", exact_threshold: int | None = None,
                                first_block: int = 16) -> list[Certificate]:
        """CERTIFY with the sequential plan, every text of the call in flight at once; the certificates in the
        order of ``texts``. See ``certify_sequential_stream``."""
        out: list[Certificate | None] = [None] * len(texts)
        for i, cert, _ in self.certify_sequential_stream(keys, texts, labels, pairs, in_flight=max(len(texts), 1),
                                                         n0=n0, n_max=n_max, alpha=alpha, beta=beta,
                                                         exact_threshold=exact_threshold, first_block=first_block):
            out[i] = cert
        return out

    def certify_sequential_stream(self, keys, texts: list[str], labels: list[int | None],
                                  pairs: list[str | None] | None = None, *, in_flight: int = 64, n0: int = 100,
                                  n_max: int = 1600, alpha: float = 0.05, beta: str = "one",
                                  exact_threshold: int | None = None, first_block: int = 16):
        """CERTIFY with the sequential plan (``ranmask_jax.sequential``): every text draws its copies in blocks and
        stops as soon as more cannot change its answer or raise its radius. Selection: blocks of at most ``n0``
        copies in all (8, 16, 32, 64, then ``n0``) until a binomial test separates the top two classes at level
        ``alpha``; estimation: up to ``n_max`` copies in doubling blocks from ``first_block``, the bound the
        running maximum of an anytime-valid one (beta-binomial mixture at alpha / 2, and Clopper-Pearson at
        alpha / 2 once all ``n_max`` are in), so it holds with probability >= 1 - alpha whenever the text stops.
        Texts with C(h, k) <= ``exact_threshold`` enumerate their keep sets in a random order and stop once the
        rest cannot change the answer or the radii (the exact result, with probability 1); knowing p_A > 1/2 for
        certain takes more than C(h, k) / 2 keep sets, while a clear text sampled stops after 8 + ``first_block``
        copies, so the default is ``3 * first_block``.
        Up to ``in_flight`` texts are certified at once: each round classifies the next block of every unfinished
        text in one call of the engine, finished texts leave and the next ones enter. Yields ``(i, certificate,
        seconds)`` as text i finishes (seconds: its share of the rounds it was in, each round's time divided
        among the texts in it). Both radii are computed (``radius_one``, ``radius_pc`` with beta = the vote
        share at the stop); ``radius`` is the one ``beta`` ("one" or "pc") names. ``key`` as ``certify``:
        selection blocks from ``fold_in(fold_in(key, 0), j)``, estimation blocks from ``fold_in(fold_in(key, 1),
        j)``, the enumeration order from ``fold_in(key, 2)``."""
        import jax

        from ranmask_jax import sequential as sq

        if beta not in ("one", "pc"):
            raise ValueError(f"beta must be 'one' or 'pc' in the sequential plan, got {beta!r} (Monte Carlo beta "
                             "reads the fixed plan's copies)")
        self._check_certify_call(keys, texts, pairs, labels, alpha, exact_threshold, n0=n0, n_max=n_max,
                                 first_block=first_block, in_flight=in_flight)
        pairs = pairs or [None] * len(texts)
        thr = 3 * first_block if exact_threshold is None else exact_threshold
        sel_plan = [t for t in (8, 16, 32, 64) if t < n0] + [n0]
        est_plan = sq.schedule(n_max, min(first_block, n_max))
        encs = [self.encode(t, p) for t, p in zip(texts, pairs, strict=True)]  # bad texts fail before any work

        def start(i: int) -> dict:
            key, enc = keys[i], encs[i]
            st = {"i": i, "key": key, "enc": enc, "label": labels[i], "h": enc.h, "k": self.keep_count(enc.h),
                  "copies": 0, "votes0": Votes.empty(self.num_labels), "votes": Votes.empty(self.num_labels),
                  "block": 0, "done": False, "seconds": 0.0}
            if self.exact_mode(enc, thr):
                keep = self.enumerate_keep_sets(enc)
                order = jax.random.permutation(jax.random.fold_in(key, 2), len(keep))
                st.update(phase="exact", keep=keep[np.asarray(order)], plan=sq.schedule(len(keep), first_block))
            else:
                st.update(phase="select", bound=sq.SequentialBound(alpha, n_max))
            return st

        def request(st):
            if st["phase"] == "exact":
                lo = st["plan"][st["block"] - 1] if st["block"] else 0
                rows = st["keep"][lo:st["plan"][st["block"]]]
                return st["enc"], rows, np.ones(len(rows))
            plan, stream = (sel_plan, 0) if st["phase"] == "select" else (est_plan, 1)
            size = plan[st["block"]] - (plan[st["block"] - 1] if st["block"] else 0)
            key = jax.random.fold_in(jax.random.fold_in(st["key"], stream), st["block"])
            return (st["enc"], *self.distinct_keep_sets(key, st["enc"], size, False))

        def advance(st, got: Votes) -> None:
            st["copies"] += got.copies
            if st["phase"] == "exact":
                st["votes"].add(got)
                seen, total = st["plan"][st["block"]], len(st["keep"])
                st["block"] += 1
                label = st["label"] if st["label"] is not None else int(np.argmax(st["votes"].counts))
                st["done"] = seen == total or sq.exact_settled(st["votes"].counts, seen, total, label, st["h"],
                                                                st["k"])
            elif st["phase"] == "select":
                st["votes0"].add(got)
                st["block"] += 1
                if st["block"] == len(sel_plan) or sq.selection_done(st["votes0"].counts, alpha):
                    c = int(np.argmax(st["votes0"].counts))
                    st.update(phase="estimate", block=0, c=c)
                    st["done"] = st["label"] is not None and c != st["label"]  # wrong: no estimation copies
            else:
                st["votes"].add(got)
                t = est_plan[st["block"]]
                s = int(st["votes"].counts[st["c"]])
                st["bound"].update(s, t)
                st["block"] += 1
                st["done"] = sq.stop(st["bound"], s, t, st["h"], st["k"])

        waiting, active = iter(range(len(texts))), []
        while True:
            active += [start(i) for i in itertools.islice(waiting, in_flight - len(active))]
            if not active:
                return
            t0 = time.perf_counter()
            got = self.votes([request(st) for st in active])
            share = (time.perf_counter() - t0) / len(active)
            for st, v in zip(active, got, strict=True):
                st["seconds"] += share
                advance(st, v)
            for st in active:
                if st["done"]:
                    yield st["i"], self._sequential_certificate(st, beta), st["seconds"]
            active = [st for st in active if not st["done"]]

    def _sequential_certificate(self, st: dict, beta: str) -> Certificate:
        """The certificate of a finished text of ``certify_sequential_stream`` (``radius`` under ``beta``)."""
        from ranmask_jax import sequential as sq

        h, k, label = st["h"], st["k"], st["label"]
        if st["phase"] == "exact":
            counts, seen, total = st["votes"].counts, st["plan"][st["block"] - 1], len(st["keep"])
            pred = int(np.argmax(counts))
            p = counts[pred] / total  # the exact p_c when enumeration ran to the end; else its certain lower end
            (r_one, r_pc), _ = sq.exact_range(counts, seen, total, pred, h, k)
            extra = {"mode": "exact", "n": seen, "p_lower": float(p), "rate": float(p), "keep_sets": total}
        else:
            counts0, votes = st["votes0"].counts, st["votes"]
            counts, pred, n = votes.counts, int(np.argmax(counts0)), votes.n
            rate = int(counts[pred]) / n if n else 0.0
            (r_one, r_pc) = sq.radii(st["bound"].bound if n else 0.0, rate, h, k)
            extra = {"mode": "sampled", "n": n, "p_lower": float(st["bound"].bound if n else 0.0), "rate": rate,
                     "counts0": tuple(int(c) for c in counts0), "skipped_estimation": n == 0}
        label = pred if label is None else label
        if pred != label:
            r_one = r_pc = -1
        rate = extra.pop("rate")
        return Certificate(label=label, prediction=pred, correct=pred == label, counts=tuple(int(c) for c in counts),
                           h=h, k=k, radius=r_pc if beta == "pc" else r_one, beta_mode=beta,
                           beta=float(rate) if beta == "pc" else 1.0, radius_one=r_one, radius_pc=r_pc,
                           copies=st["copies"], plan="sequential", **extra)

    def _check_certify_call(self, keys, texts, pairs, labels, alpha: float, exact_threshold, **counts) -> None:
        """What every certification checks first: a certifiable smoothed classifier, well-formed arguments, alpha in
        (0, 1) and labels in range."""
        why = why_uncertifiable(self.keep_sets, self.transform)
        if why is not None:
            raise ValueError(f"no certificate: {why}, and Theorem 1 assumes uniform keep sets and a deterministic "
                             "base classifier; use predict for empirical robustness")
        _check_call(keys, texts, pairs, exact_threshold=exact_threshold, labels=labels, **counts)
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        for label in labels:
            if label is not None and (isinstance(label, bool) or not isinstance(label, int | np.integer)
                                      or not 0 <= label < self.num_labels):
                raise ValueError(f"label {label!r} out of range for {self.num_labels} classes")

    def _stream(self, keys, encs: list[EncodedText], n: int, row_labels: bool):
        """The votes of ``n`` sampled copies of each text (from ``keys[i]``), streamed: in passes of at most
        STREAM_CHUNK copies per text (pass c draws from ``fold_in(key, c)`` when there is more than one pass; one pass
        uses ``key`` itself), each sampled, deduplicated and classified before the next, so memory is flat in n.
        Returns the summed Votes and, per text, ``(None, distinct keep sets, weights)`` (concatenated over passes,
        kept only with ``row_labels``, which Monte Carlo beta needs)."""
        import jax

        passes = -(-n // STREAM_CHUNK)
        votes = [Votes.empty(self.num_labels, 0 if row_labels else None) for _ in encs]
        kept = [([], []) for _ in encs]
        from tqdm.auto import tqdm

        for c in tqdm(range(passes), desc=f"{n} copies", unit="pass", disable=True if passes < 8 else None,
                      leave=False):
            size = min(STREAM_CHUNK, n - c * STREAM_CHUNK)
            reqs = [(e, *self.distinct_keep_sets(k if passes == 1 else jax.random.fold_in(k, c), e, size, False))
                    for k, e in zip(keys, encs, strict=True)]
            for v, got, (_, keep, weights), store in zip(votes, self.votes(reqs, row_labels=row_labels), reqs, kept,
                                                         strict=True):
                v.add(got)
                if row_labels:
                    v.row_labels = np.concatenate([v.row_labels, got.row_labels])
                    v.row_logits = np.concatenate([v.row_logits, got.row_logits])
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


class HostSmoothedClassifier(SmoothedClassifier, HostEngine):
    """A smoothed classifier whose base classifier runs on the host (``SmoothedClassifier.from_predict_fn``): the
    procedures of ``SmoothedClassifier`` on the copies of ``ranmask_jax.host.HostEngine``."""

    def __init__(self, *args, **kwargs):
        raise TypeError("build it with SmoothedClassifier.from_predict_fn")
