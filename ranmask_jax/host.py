"""Any classifier: the masked copies built on the host and classified by a Python function.

``HostEngine`` has the interface of ``ranmask_jax.engine.CopyEngine`` (``encode``, ``votes``, ``base_logits``), so
every procedure of the smoothed classifier (predict, scores, certify, the attacks' scorers) runs on top of it
unchanged; ``SmoothedClassifier.from_predict_fn`` builds one. The function sees batches of masked copies in one of
two forms:

* ``inputs="text"``: strings. Each copy is the text's words (``masking.split_words``; a pair's unmaskable side
  whole) with every masked word replaced by ``mask_token``, joined by single spaces; a pair is a ``(text,
  text_pair)`` tuple. Whatever a masked word was, its copy is the same string, so the certificate's premise (a copy
  that masks every changed word is the same input for x and x') holds for any function of the string: a
  transformers pipeline, an ONNX session, a model behind an API.
* ``inputs="ids"``: token ids from ``tokenizer``, built exactly as the JAX engine builds them (``masking.encode`` and
  ``masking.build_masked``: one mask token per masked word, the copy cut to ``max_len`` after masking); the function
  gets ``(input_ids, attention_mask, token_type_ids)``, int64 arrays ``[B, L]`` padded with the pad id to the
  longest copy of the batch.

It returns ``[B, num_labels]`` logits (``outputs="logits"``) or probabilities (``outputs="probs"``) as anything
``numpy.asarray`` reads (a list, a numpy array, a CPU torch tensor). Non-finite scores, another shape and
probabilities that do not sum to 1 are refused, as in the engine. The certificate assumes the function is a
deterministic function of the copy (no dropout, no sampling, no state).

Copies are classified text by text, each text's copies sorted by length, ``batch_size`` copies per call (a call
may hold copies of several texts). ``calls`` and ``forward_passes`` count the calls made and the inputs classified.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ranmask_jax import ensembles
from ranmask_jax.engine import CopyEngine, NonFiniteLogits, Votes, copy_bucket
from ranmask_jax.masking import MaskSide, bucket, checked_texts, copy_lengths, split_words

INPUTS = ("text", "ids")
OUTPUTS = ("logits", "probs")


@dataclasses.dataclass(frozen=True)
class WordText:
    """A text (or pair) as words, for ``inputs="text"``: each side's words, which sides are maskable, and the h
    maskable words in order (the first side's before the second's)."""

    sides: tuple[tuple[str, ...], ...]
    maskable: tuple[bool, ...]

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(w for side, m in zip(self.sides, self.maskable, strict=True) if m for w in side)

    @property
    def h(self) -> int:
        return sum(len(side) for side, m in zip(self.sides, self.maskable, strict=True) if m)


def word_text(text: str, text_pair: str | None, mask_side: MaskSide) -> WordText:
    """``text`` (and ``text_pair``) as words, with the same checks as ``masking.encode``."""
    texts = checked_texts(text, text_pair)
    if text_pair is None:
        maskable = (True,)
    else:
        maskable = {"first": (True, False), "second": (False, True), "both": (True, True)}[mask_side]
    return WordText(tuple(split_words(t) for t in texts), maskable)


def _fit(a: np.ndarray, width: int, pad: int) -> np.ndarray:
    """``a`` [m, L] as int64 [m, width]: cut, or padded with ``pad``."""
    out = np.full((len(a), width), pad, np.int64)
    out[:, :min(width, a.shape[1])] = a[:, :width]
    return out


class HostEngine(CopyEngine):
    """Classifies masked copies with a host function (module docstring). ``predict_fn``: batch -> ``[B,
    num_labels]``; ``inputs``: "text" (needs ``mask_token``) or "ids" (needs ``tokenizer`` and ``max_len``);
    ``outputs``: "logits" or "probs"; ``batch_size``: copies per call; ``name``: how errors name the classifier."""

    def __init__(self, predict_fn, *, num_labels: int, inputs: str = "text", mask_token: str | None = None,
                 tokenizer=None, max_len: int | None = None, outputs: str = "logits", batch_size: int = 64,
                 mask_side: MaskSide = "second", name: str | None = None):
        if not callable(predict_fn):
            raise TypeError(f"predict_fn must be callable, got {type(predict_fn).__name__}")
        if inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
        if outputs not in OUTPUTS:
            raise ValueError(f"outputs must be one of {', '.join(OUTPUTS)}, got {outputs!r}")
        if mask_side not in ("first", "second", "both"):
            raise ValueError(f"mask_side must be first, second or both, got {mask_side!r}")
        for what, value in (("num_labels", num_labels), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
        if num_labels < 2:
            raise ValueError(f"num_labels must be >= 2, got {num_labels}")
        self.predict_fn, self.inputs, self.outputs = predict_fn, inputs, outputs
        self.num_labels, self.batch_size, self.mask_side = num_labels, batch_size, mask_side
        self.name = name or f"predict_fn {getattr(predict_fn, '__qualname__', type(predict_fn).__name__)}"
        self.transform, self.texts_per_batch, self.traces = None, 1, 0
        self.calls = self.forward_passes = 0
        if inputs == "text":
            if not isinstance(mask_token, str) or not mask_token or mask_token != mask_token.strip() or \
                    len(mask_token.split()) != 1:
                raise ValueError(f"inputs='text' needs mask_token: the string written in place of a masked word "
                                 f"(one word, e.g. '[MASK]' or '<mask>'), got {mask_token!r}")
            self.mask_token, self.tokenizer, self.max_len = mask_token, tokenizer, max_len
            return
        if tokenizer is None or max_len is None:
            raise ValueError("inputs='ids' needs the classifier's tokenizer and max_len (its positions, or fewer)")
        if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a mask token and a pad token")
        import jax

        from ranmask_jax.masking import build_masked, special_layout

        specials = sum(special_layout(tokenizer, pair=False)[:3])
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len <= specials:
            raise ValueError(f"max_len must be an integer > the tokenizer's {specials} special tokens, got "
                             f"{max_len!r}")
        self.tokenizer, self.max_len, self.mask_token = tokenizer, max_len, tokenizer.mask_token
        self.mask_id, self.pad_id = int(tokenizer.mask_token_id), int(tokenizer.pad_token_id)
        self._build = jax.jit(build_masked, static_argnames=("mask_id", "pad_id", "max_len", "out_len"))

    def update_weights(self, model) -> None:
        raise TypeError(f"{self.name} runs on the host: its weights are its own")

    def encode(self, text: str, text_pair: str | None = None):
        """``inputs="ids"``: the tokenized text (``CopyEngine.encode``); ``"text"``: its words (``WordText``)."""
        if self.inputs == "ids":
            return super().encode(text, text_pair)
        return word_text(text, text_pair, self.mask_side)

    # -- copies -------------------------------------------------------------------------------------------------
    def _text_copies(self, enc: WordText, keep: np.ndarray) -> list:
        mask = self.mask_token
        h, out, start = enc.h, [], 0
        parts = []
        for side, m in zip(enc.sides, enc.maskable, strict=True):
            if m:
                parts.append((np.array(side, object), start))
                start += len(side)
            else:
                parts.append((" ".join(side), None))
        kept = keep[:, :h]
        for row in kept:
            sides = [p if s is None else " ".join(np.where(row[s:s + len(p)], p, mask)) for p, s in parts]
            out.append(sides[0] if len(sides) == 1 else tuple(sides))
        return out

    def _id_copies(self, enc, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``build_masked`` on ``keep`` (rows padded to a power of two, so few shapes compile)."""
        lengths = copy_lengths(enc, keep, self.max_len)
        out_len = copy_bucket(int(lengths.max()), self.max_len)
        width = bucket(len(enc.token_ids))
        arrays = enc.padded(width, self.pad_id)
        rows = bucket(len(keep))
        kp = np.zeros((rows, width), bool)
        kp[:len(keep), :keep.shape[1]] = keep
        ids, types, attn = self._build(*(arrays[k] for k in ("token_ids", "token_type_ids", "word_index",
                                                              "first_of_word", "has_token", "segment")),
                                       keep=kp, mask_id=self.mask_id, pad_id=self.pad_id, max_len=self.max_len,
                                       out_len=out_len)
        m = len(keep)
        return np.asarray(ids)[:m], np.asarray(attn)[:m], np.asarray(types)[:m]

    # -- classification -----------------------------------------------------------------------------------------
    def _scores(self, batch, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Call the function on one batch; ``(logits, probabilities)`` ``[rows, C]``, checked."""
        out = self.predict_fn(*batch) if self.inputs == "ids" else self.predict_fn(batch)
        self.calls += 1
        self.forward_passes += rows
        if hasattr(out, "detach"):  # a torch tensor
            out = out.detach().float().cpu().numpy()
        try:
            arr = np.asarray(out, np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self.name} returned something that is not a [{rows}, {self.num_labels}] array of "
                             f"numbers ({type(e).__name__}: {e})") from None
        if arr.shape != (rows, self.num_labels):
            raise ValueError(f"{self.name} returned scores of shape {arr.shape} for {rows} inputs; expected "
                             f"[{rows}, {self.num_labels}] (num_labels={self.num_labels})")
        bad = ~np.isfinite(arr).all(axis=-1)
        if bad.any():
            raise NonFiniteLogits(f"{self.name} returned NaN or inf scores for {int(bad.sum())} of {rows} masked "
                                  "copies; no vote is counted")
        if self.outputs == "logits":
            return arr, ensembles.softmax(arr)
        sums = arr.sum(axis=-1)
        if (arr < 0).any() or np.abs(sums - 1).max() > 1e-3:
            raise ValueError(f"{self.name} returned rows that are not probabilities (min {arr.min():.4g}, row sums "
                             f"{sums.min():.4g} to {sums.max():.4g}); pass outputs='logits' for raw scores")
        probs = arr / sums[:, None]
        return np.log(np.maximum(probs, np.finfo(np.float64).tiny)), probs

    def votes(self, requests, *, row_labels: bool = False) -> list[Votes]:
        """The votes of each request ``(enc, keep [m, W], weights [m])``, as ``CopyEngine.votes``."""
        out = [Votes.empty(self.num_labels, len(keep) if row_labels else None, len(keep)) for _, keep, _ in requests]
        pending: list[tuple[int, np.ndarray, object]] = []  # (request, copy indices, that text's copies)

        def flush() -> None:
            if not pending:
                return
            rows = sum(len(idx) for _, idx, _ in pending)
            if self.inputs == "text":
                batch = [c for _, _, copies in pending for c in copies]
            else:
                width = max(int(a.sum(axis=1).max()) for _, _, (_, a, _) in pending)
                batch = tuple(np.concatenate([_fit(part[j], width, self.pad_id if j == 0 else 0)
                                              for _, _, part in pending]) for j in range(3))
            logits, probs = self._scores(batch, rows)
            s = 0
            for i, idx, _ in pending:
                lg, pr = logits[s:s + len(idx)], probs[s:s + len(idx)]
                s += len(idx)
                out[i].add(Votes.from_logits(lg, np.asarray(requests[i][2], np.float64)[idx], pr))
                if row_labels:
                    out[i].row_labels[idx], out[i].row_logits[idx] = np.argmax(lg, axis=-1), lg
            pending.clear()

        filled = 0
        for i, (enc, keep, _) in enumerate(requests):
            keep = np.asarray(keep, bool)
            if not len(keep):
                continue
            if self.inputs == "text":
                copies = self._text_copies(enc, keep)
                order = np.argsort([len(c) if isinstance(c, str) else len(c[0]) + len(c[1]) for c in copies],
                                   kind="stable")
            else:
                ids, attn, types = self._id_copies(enc, keep)
                order = np.argsort(attn.sum(axis=1), kind="stable")
            pos = 0
            while pos < len(order):  # fill the call, then the next
                part = order[pos:pos + self.batch_size - filled]
                pos += len(part)
                pending.append((i, part, [copies[j] for j in part] if self.inputs == "text"
                                else (ids[part], attn[part], types[part])))
                filled += len(part)
                if filled == self.batch_size:
                    flush()
                    filled = 0
        flush()
        for v in out:
            v.counts = np.rint(v.counts).astype(np.int64)
        return out

    def base_logits(self, texts: list[str], pairs: list[str | None] | None = None) -> np.ndarray:
        """The function on the UNMASKED texts, ``[len(texts), C]`` logits (for probabilities: their logs); in
        batches of ``batch_size``; ids are tokenized with truncation to ``max_len``."""
        out = []
        for s in range(0, len(texts), self.batch_size):
            part = list(texts[s:s + self.batch_size])
            second = None if pairs is None else list(pairs[s:s + self.batch_size])
            has_pair = second is not None and any(p is not None for p in second)
            if self.inputs == "text":
                batch = [(t, p) for t, p in zip(part, second, strict=True)] if has_pair else part
            else:
                enc = self.tokenizer(part, second if has_pair else None, truncation=True, max_length=self.max_len,
                                     padding=True, return_tensors="np")
                ids = enc["input_ids"].astype(np.int64)
                types = enc.get("token_type_ids")
                batch = (ids, enc["attention_mask"].astype(np.int64),
                         np.zeros_like(ids) if types is None else types.astype(np.int64))
            out.append(self._scores(batch, len(part))[0])
        return np.concatenate(out) if out else np.zeros((0, self.num_labels))
