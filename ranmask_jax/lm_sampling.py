"""LM-based mask sampling (RanMASK Section 4.3, "+ LM"): words a masked LM finds surprising -- likely the ones an
attacker changed -- are masked first.

A masked LM reads the UNMASKED text (for pairs: the masked side); each token's cross-entropy against its own id is
its loss (special tokens 0); a word's score is the mean loss of its tokens, a token cut off by ``max_len`` counting
0 (a word with no token scores 0). The h - k masked words are drawn without replacement with probabilities
proportional to the scores (successive sampling, as ``numpy.random.choice(replace=False, p=...)`` in the original
code), here by the Gumbel-top-k trick on the device; every copy keeps exactly k words, k as for uniform sampling.
Scores are floored at 1e-6 of their mean so that any h - k words can be drawn.

The keep sets are NOT uniform, so RanMASK's certificate does not hold for them: ``LMKeepSets.certifiable`` is
False, the engine refuses to certify with it, and results made with it are empirical only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ranmask_jax.masking import DEFAULT_MIN_KEEP, EncodedText, bucket, encode, keep_count, keep_from_noise


@dataclasses.dataclass(frozen=True, eq=False)
class LMKeepSets:
    """k_x-subsets of the words kept, the masked words drawn in proportion to ``scores(enc)`` (``[h]``, > 0)."""

    rho: float
    scores: Callable[[EncodedText], np.ndarray]
    min_keep: int = DEFAULT_MIN_KEEP
    certifiable = False

    def k(self, h: int) -> int:
        return keep_count(h, self.rho, self.min_keep)

    def size(self, h: int) -> float:
        """Never enumerated: exact mode would weight every keep set alike."""
        return math.inf

    def sample_text(self, key: jax.Array, enc: EncodedText, n: int, width: int) -> jax.Array:
        w = np.zeros(width, np.float32)
        w[: enc.h] = self.scores(enc)
        return _lm_sample(key, jnp.asarray(w), enc.h, self.k(enc.h), n=n)

    def probabilities(self, enc: EncodedText) -> np.ndarray:
        """The first masked word's distribution over the h words (the normalised scores)."""
        s = np.asarray(self.scores(enc), np.float64)
        return s / s.sum()


def _lm_sample_impl(key, w, h, k, n):
    width = w.shape[0]
    valid = jnp.arange(width) < h
    logw = jnp.where(valid, jnp.log(jnp.maximum(w, 1e-30)), -jnp.inf)
    g = jax.random.gumbel(key, (n, width))
    # the h - k masked words are the top of log w + Gumbel; the kept ones the k smallest, i.e. the k largest of
    # the negation (invalid slots are pushed last by keep_from_noise)
    return keep_from_noise(-(logw + g), h, k)


_lm_sample = jax.jit(_lm_sample_impl, static_argnames=("n",))


def normalise(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    s = np.where(np.isfinite(s), s, 0.0)
    floor = 1e-6 * (s.mean() if s.sum() > 0 else 1.0)
    s = np.maximum(s, floor)
    return s / s.sum()


def mlm_word_scores(model, tokenizer, max_len: int) -> Callable[[EncodedText], np.ndarray]:
    """``scores(enc)``: the masked LM's mean token loss per word of ``enc`` (its h words, read unmasked and cut to
    ``max_len`` tokens), normalised. ``model``: an nnx MaskedLM; ``tokenizer`` its tokenizer. Cached per text."""
    from flax import nnx

    model.eval()
    graphdef, state = nnx.split(model)

    @jax.jit
    def token_losses(state, ids, attn):
        logits = nnx.merge(graphdef, state)(ids, attn, jnp.zeros_like(ids))  # [1, T, V]
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.take_along_axis(logp, ids[..., None], axis=-1)[..., 0]  # [1, T]

    memo: dict[str, np.ndarray] = {}

    def scores(enc: EncodedText) -> np.ndarray:
        text = " ".join(enc.words)
        if text in memo:
            return memo[text]
        e = encode(tokenizer, text)
        real = e.has_token
        ids, word = e.token_ids[real], e.word_index[real]
        pieces = np.bincount(word[word >= 0], minlength=enc.h)  # tokens per word, before the cut
        if len(ids) > max_len:  # truncation keeps the closing special token, as the tokenizer's would
            ids = np.concatenate([ids[: max_len - 1], ids[-1:]])
            word = np.concatenate([word[: max_len - 1], word[-1:]])
        t = bucket(len(ids))
        pad = np.full(t, tokenizer.pad_token_id, np.int32)
        pad[: len(ids)] = ids
        attn = (np.arange(t) < len(ids)).astype(np.int32)
        loss = np.asarray(token_losses(state, pad[None], attn[None]))[0, : len(ids)]
        loss = np.where(word >= 0, loss, 0.0)  # special tokens: 0
        # a word's score: the mean over ALL its tokens, those cut off counting 0 (as in the original code)
        total = np.bincount(word[word >= 0], weights=loss[word >= 0], minlength=enc.h)
        memo[text] = normalise(np.where(pieces > 0, total / np.maximum(pieces, 1), 0.0))
        return memo[text]

    return scores
