"""The device side of the smoothed classifier: masked copies of many texts, packed into fixed-shape batches,
built, (optionally transformed and) classified on the device, their votes summed per text on the device.

``CopyEngine.votes(requests)`` takes, per text, its distinct keep sets with multiplicities and returns the per-text
sums (``Votes``): f's label counts, raw logits and softmax probabilities, weighted by multiplicity. Copies of MANY
texts are grouped by the masked copy's own length after the cut to ``max_len`` (fine length buckets), with a text
index per row; batches are dispatched without waiting and the host fetches only the per-text sums. One compilation
per (batch rows, texts per batch, text bucket, copy bucket).

The statistics on top of these votes (prediction, abstention, certificates) are in ``ranmask_jax.smoothing``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ranmask_jax import ensembles
from ranmask_jax.masking import EncodedText, bucket, copy_lengths, special_layout


@dataclasses.dataclass
class Votes:
    """What the classifier said about the copies of one text, summed over copies (weighted by multiplicity)."""

    counts: np.ndarray  # [C] int64: copies per predicted class
    logit_sum: np.ndarray  # [C] float64: sum of raw logits
    prob_sum: np.ndarray  # [C] float64: sum of softmax probabilities
    unit_sum: np.ndarray  # [C] float64: sum of L2-normalised logits
    row_labels: np.ndarray | None = None  # [m] f's class for each distinct copy (when asked for)
    copies: int = 0  # distinct copies classified (each weighted by its multiplicity in the sums)
    row_logits: np.ndarray | None = None  # [m, C] float32: f's raw logits for each distinct copy (with row_labels)

    @classmethod
    def empty(cls, num_labels: int, rows: int | None = None, copies: int = 0) -> Votes:
        """No votes yet (with room for ``rows`` row labels and logits when given)."""
        z = np.zeros(num_labels)
        return cls(np.zeros(num_labels, np.int64), z, z.copy(), z.copy(),
                   None if rows is None else np.zeros(rows, np.int64), copies,
                   None if rows is None else np.zeros((rows, num_labels), np.float32))

    @classmethod
    def from_logits(cls, logits: np.ndarray, weights: np.ndarray, probs: np.ndarray | None = None) -> Votes:
        """The weighted sums of copies whose raw logits (``[m, C]``) are known on the host (``probs``: their
        probabilities when given, else the softmax); ``copies`` is left 0."""
        logits = np.asarray(logits, np.float64)
        w = np.asarray(weights, np.float64)[:, None]
        probs = ensembles.softmax(logits) if probs is None else probs
        counts = np.rint((np.eye(logits.shape[-1])[np.argmax(logits, axis=-1)] * w).sum(0)).astype(np.int64)
        return cls(counts, (logits * w).sum(0), (probs * w).sum(0), (ensembles.unit_rows(logits) * w).sum(0))

    def add(self, other: Votes) -> None:
        """Add ``other``'s sums and copies (row labels are the caller's)."""
        self.counts, self.logit_sum = self.counts + other.counts, self.logit_sum + other.logit_sum
        self.prob_sum, self.unit_sum = self.prob_sum + other.prob_sum, self.unit_sum + other.unit_sum
        self.copies += other.copies

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def scores(self, ensemble: str) -> np.ndarray:
        """The ``ensemble`` rule's class scores (``ranmask_jax.ensembles``)."""
        n = max(self.n, 1)
        return ensembles.scores(ensemble, self.counts, self.logit_sum / n, self.prob_sum / n, self.unit_sum / n)


@dataclasses.dataclass
class _Request:
    enc: EncodedText
    keep: np.ndarray  # [m, W] distinct keep sets
    weights: np.ndarray  # [m] multiplicities


# at most IN_FLIGHT device steps are queued before the host collects their sums
IN_FLIGHT = 32


class NonFiniteLogits(ValueError):
    """The classifier returned NaN or inf logits: no vote, certificate or score may be made of them."""


def check_logits_shape(logits, rows: int, num_labels: int, name: str) -> None:
    """``logits`` must be ``[rows, num_labels]`` (checked once, when the step is traced)."""
    if tuple(logits.shape) != (rows, num_labels):
        raise ValueError(f"{name} returned logits of shape {tuple(logits.shape)} for {rows} inputs; "
                         f"expected [{rows}, {num_labels}] (num_labels={num_labels})")


def copy_bucket(n: int, max_len: int) -> int:
    """Fine length buckets for masked copies: multiples of 8 up to 64, of 16 up to 128, of 32 up to 256, then of
    64; at least 16, at most ``max_len``."""
    step = 8 if n <= 64 else 16 if n <= 128 else 32 if n <= 256 else 64
    return min(max(16, -(-n // step) * step), max_len)


def text_rows(m: int, limit: int, multiple: int = 1) -> int:
    """Rows of a step that classifies ``m`` whole texts (a plain model's answer, a sentence encoder): the next
    multiple of 8 (and of ``multiple``, the device count), at most ``limit``. A black-box attack asks about a few
    texts at a time, and on a CPU a step's cost grows with its rows, so the rows follow the call closely; the
    shapes stay few (8 row counts below 64)."""
    rows = -(-max(m, 1) // 8) * 8
    return min(limit, -(-rows // multiple) * multiple)


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


class CopyEngine:
    """Classifies the masked copies of many texts at once (see the module docstring). ``logits_fn(params,
    input_ids, attention_mask, token_type_ids) -> [B, num_labels]`` is any jittable classifier; ``transform(t_params,
    key, ids, attn, types)`` an optional copy transform between masking and the classifier (MaskPure's refill);
    ``batch_size``: copies per device step (a multiple of the device count); ``texts_per_batch``: how many texts one
    step may hold; ``max_len``: the cut of every masked copy, at most the model's ``max_positions``."""

    def __init__(self, logits_fn, params, tokenizer, *, num_labels: int, max_positions: int | None = None,
                 batch_size: int = 256, max_len: int = 128, mask_side: str = "second", mesh=None,
                 texts_per_batch: int = 32, transform=None, transform_params=None):
        import jax
        import jax.numpy as jnp

        from ranmask_jax import distributed
        from ranmask_jax.masking import build_masked

        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a mask token and a pad token")
        if mask_side not in ("first", "second", "both"):
            raise ValueError(f"mask_side must be first, second or both, got {mask_side!r}")
        if batch_size < 1 or texts_per_batch < 1:
            raise ValueError(f"batch_size and texts_per_batch must be >= 1, got {batch_size}, {texts_per_batch}")
        if max_positions is not None and max_len > max_positions:
            raise ValueError(f"max_len {max_len} exceeds the model's {max_positions} positions")
        specials = sum(special_layout(tokenizer, pair=False)[:3])
        if max_len <= specials:
            raise ValueError(f"max_len {max_len} leaves no room for text beside the tokenizer's {specials} special "
                             f"tokens (need at least {specials + 1})")
        self.mesh = mesh if mesh is not None else distributed.make_mesh()
        n_dev = self.mesh.devices.size
        if batch_size % n_dev:
            raise ValueError(f"batch_size {batch_size} is not a multiple of the {n_dev} devices")
        self.tokenizer, self.batch_size, self.max_len = tokenizer, batch_size, max_len
        self.mask_side, self.texts_per_batch, self.num_labels = mask_side, texts_per_batch, num_labels
        self.transform = transform
        self.name = "the classifier"  # how errors name the model (a run directory sets its path)
        self.mask_id, self.pad_id = int(tokenizer.mask_token_id), int(tokenizer.pad_token_id)
        self._params = distributed.replicate(params, self.mesh)
        self._t_params = distributed.replicate(transform_params, self.mesh) if transform is not None else None
        self._transform_key = jax.random.key(0x5EED)
        self._batches = 0
        self.traces = 0  # how many times the device step was traced (compiled)
        self.calls = 0  # device steps dispatched (each classifies up to batch_size inputs)
        self.forward_passes = 0  # inputs classified: distinct masked copies, and unmasked texts (base_logits)

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
            logits = logits_fn(params, ids, attn, types)
            check_logits_shape(logits, ids.shape[0], num_labels, self.name)
            logits = logits.astype(jnp.float32)  # [R, C]
            label = jnp.argmax(logits, axis=-1)  # [R]
            # copies that vote (weight > 0) with any NaN or inf logit: counted here, refused on the host
            bad = jnp.sum(~jnp.all(jnp.isfinite(logits), axis=-1) & (weight > 0))
            w = weight[:, None]
            per_text = lambda x: jax.ops.segment_sum(x * w, row_text, num_segments=table[0].shape[0])  # noqa: E731
            norm = jnp.linalg.norm(logits, axis=-1, keepdims=True)
            unit = logits / jnp.where(norm == 0, 1.0, norm)  # ensembles.unit_rows
            return (per_text(jax.nn.one_hot(label, logits.shape[-1])), per_text(logits),
                    per_text(jax.nn.softmax(logits, axis=-1)), per_text(unit), logits, bad)

        self._step = jax.jit(step, static_argnames=("out_len",))
        self._shard = distributed.batch_sharded(self.mesh)
        self._rep = distributed.replicated(self.mesh)

        def plain(params, ids, attn, types):
            logits = logits_fn(params, ids, attn, types)
            check_logits_shape(logits, ids.shape[0], num_labels, self.name)
            return logits.astype(jnp.float32)

        self._plain = jax.jit(plain)

    def update_weights(self, model) -> None:
        """Swap in new weights of the same architecture (no recompilation)."""
        from flax import nnx

        from ranmask_jax import distributed

        self._params = distributed.replicate(nnx.state(model), self.mesh)

    def encode(self, text: str, text_pair: str | None = None) -> EncodedText:
        """The whole text with its h_x maskable words (nothing is truncated before masking)."""
        from ranmask_jax.masking import check_max_len, encode

        enc = encode(self.tokenizer, text, text_pair, mask_side=self.mask_side)
        check_max_len(enc, self.max_len)
        return enc

    def batch_rows(self, m: int) -> int:
        """Rows per device step for ``m`` copies: ``batch_size``, or for fewer copies the smallest power of two
        >= m (at least 16, a multiple of the device count), so that small calls do not pay for a full batch while
        only a handful of shapes is ever compiled."""
        if m >= self.batch_size:
            return self.batch_size
        n_dev = self.mesh.devices.size
        rows = max(16, 1 << max(m - 1, 0).bit_length())
        return min(self.batch_size, -(-rows // n_dev) * n_dev)

    def votes(self, requests: list[tuple[EncodedText, np.ndarray, np.ndarray]], *, row_labels: bool = False
              ) -> list[Votes]:
        """Classify the masked copies of many texts at once. Each request is ``(enc, keep [m, W], weights [m])``
        (distinct keep sets with multiplicities); returns per request the weighted votes and sums of logits and
        probabilities (and f's class and raw logits per distinct copy with ``row_labels``)."""
        import jax

        reqs = [_Request(e, np.asarray(k, bool), np.asarray(w, np.float32)) for e, k, w in requests]
        out = [Votes.empty(self.num_labels, len(r.keep) if row_labels else None, len(r.keep)) for r in reqs]
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
            counts, logit_sum, prob_sum, unit_sum, logits, bad = jax.device_get(result)
            if bad:
                texts = sorted({int(i) for i in take[:, 0]})
                raise NonFiniteLogits(f"{self.name} returned NaN or inf logits for {int(bad)} masked copies (of "
                                      f"text {', '.join(map(str, texts[:5]))} of this call); no vote is counted. "
                                      "Check the model's weights and dtype.")
            texts = np.unique(take[:, 0])
            for slot, i in enumerate(texts):
                out[i].counts = out[i].counts + counts[slot]
                out[i].logit_sum = out[i].logit_sum + logit_sum[slot]
                out[i].prob_sum = out[i].prob_sum + prob_sum[slot]
                out[i].unit_sum = out[i].unit_sum + unit_sum[slot]
            if row_labels:
                for i in texts:
                    sel = take[:, 0] == i
                    out[i].row_logits[take[sel, 1]] = logits[: len(take)][sel]
                    out[i].row_labels[take[sel, 1]] = np.argmax(logits[: len(take)][sel], axis=-1)

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
        self.calls += 1
        self.forward_passes += len(take)
        return self._step(self._params, self._t_params, t_key, jax.device_put(table, self._rep),
                          *jax.device_put((row_text, keep, weight), self._shard), out_len=out_len)

    def base_logits(self, texts: list[str], pairs: list[str | None] | None = None) -> np.ndarray:
        """The base classifier f on the UNMASKED texts, ``[len(texts), C]`` raw logits (a plain, undefended model's
        answer; the texts are tokenized with truncation to ``max_len``). Batches of ``text_rows`` rows, padded to
        the length bucket (``copy_bucket``) of their longest text, so few shapes compile."""
        import jax

        out = []
        for s in range(0, len(texts), self.batch_size):
            part = texts[s:s + self.batch_size]
            second = None if pairs is None else pairs[s:s + self.batch_size]
            enc = self.tokenizer(part, second, truncation=True, max_length=self.max_len) if second and any(
                second) else self.tokenizer(part, truncation=True, max_length=self.max_len)
            width = copy_bucket(max(len(x) for x in enc["input_ids"]), self.max_len)
            rows = text_rows(len(part), self.batch_size, self.mesh.devices.size)
            ids = np.full((rows, width), self.pad_id, np.int32)
            attn, types = np.zeros((rows, width), np.int32), np.zeros((rows, width), np.int32)
            for r, x in enumerate(enc["input_ids"]):
                ids[r, :len(x)], attn[r, :len(x)] = x, 1
                if "token_type_ids" in enc:
                    types[r, :len(x)] = enc["token_type_ids"][r]
            batch = jax.device_put((ids, attn, types), self._shard)
            logits = np.asarray(self._plain(self._params, *batch))[: len(part)]
            self.calls, self.forward_passes = self.calls + 1, self.forward_passes + len(part)
            if not np.isfinite(logits).all():
                raise NonFiniteLogits(f"{self.name} returned NaN or inf logits for "
                                      f"{int((~np.isfinite(logits).all(-1)).sum())} of {len(part)} texts")
            out.append(logits)
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, self.num_labels))
