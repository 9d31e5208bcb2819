"""Word-level random masking: word spans of a text, the keep-set sampler, and masked-copy construction.

Words are whitespace-separated units (the paper's h_x). A text is tokenized once with offsets; each token is tied
to the word whose characters it covers. A masked copy keeps the subword tokens of its kept words and replaces every
masked word by ONE mask token, then is compacted to the left and padded -- exactly the token ids one gets by
writing the mask token in place of each masked word and tokenizing again (tests check this for WordPiece and
byte-level BPE).

Truncation: when a text is longer than ``max_len`` tokens, whole words are dropped from its end until it fits.
Dropped words do not count in h_x: the certificate is about the words the model reads.

Device functions are pure and shape-static: the per-text arrays are padded to a length bucket ``T`` and keep sets
are boolean masks ``[n, T]`` over word slots, so texts of different lengths in one bucket share one compilation.
"""

from __future__ import annotations

import dataclasses
import math
import re
from fractions import Fraction
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

ALWAYS = -1  # word_index of tokens that are never masked (special tokens, the unmasked side of a pair)
PAD = -2  # word_index of padding slots

MaskSide = Literal["first", "second", "both"]
BUCKETS = (16, 32, 64, 128, 256, 512)


def keep_count(h: int, rate: float, min_keep: int = 1) -> int:
    """k_x, the number of words kept out of h at masking rate ``rate``: ``h - round(rate * h)``.

    The rounding is half-up on the exact rational value of ``rate * h`` (0.3 * 5 = 1.5 masks 2 words); the result
    is then floored at ``min(min_keep, h)``. The certificate must use this same k_x (smoothing does).
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"masking rate must be in [0, 1], got {rate}")
    if h < 0:
        raise ValueError(f"h must be >= 0, got {h}")
    masked = math.floor(Fraction(rate).limit_denominator(10**9) * h + Fraction(1, 2))
    return max(h - masked, min(min_keep, h))


def bucket_length(n: int, max_len: int) -> int:
    """The smallest bucket >= n (buckets: 16, 32, 64, ... capped at max_len)."""
    for b in BUCKETS:
        if n <= b and b <= max_len:
            return b
    if n > max_len:
        raise ValueError(f"length {n} exceeds max_len {max_len}")
    return max_len


@dataclasses.dataclass(frozen=True)
class EncodedText:
    """A tokenized text with its maskable word units. Arrays are unpadded numpy, one entry per token."""

    token_ids: np.ndarray  # [L] int32, special tokens included
    token_type_ids: np.ndarray  # [L] int32
    word_index: np.ndarray  # [L] int32: maskable word of each token, or ALWAYS
    first_of_word: np.ndarray  # [L] bool: first subword token of a maskable word
    words: tuple[str, ...]  # the h_x maskable words, in order
    truncated_words: int  # maskable words dropped to fit max_len

    @property
    def h(self) -> int:
        return len(self.words)

    def padded(self, length: int, pad_id: int) -> dict[str, np.ndarray]:
        """Arrays padded to ``length`` (a bucket), ready for ``build_masked``."""
        n = len(self.token_ids)
        if n > length:
            raise ValueError(f"text of {n} tokens does not fit length {length}")

        def pad(a, value):
            return np.concatenate([a, np.full(length - n, value, a.dtype)])

        return {"token_ids": pad(self.token_ids, pad_id), "token_type_ids": pad(self.token_type_ids, 0),
                "word_index": pad(self.word_index, PAD), "first_of_word": pad(self.first_of_word, False)}


_WORD = re.compile(r"\S+")


def encode(tokenizer, text: str, text_pair: str | None = None, *, mask_side: MaskSide = "second",
           max_len: int = 128) -> EncodedText:
    """Tokenize ``text`` (and ``text_pair``) and tie each token to its whitespace word.

    For a pair, ``mask_side`` says which side's words are maskable ("second", the hypothesis, as in the paper;
    "first"; or "both"); tokens of the other side are always kept. Words that do not fit in ``max_len`` tokens are
    dropped from the end (of the longer side, for pairs) and do not count in h_x.
    """
    texts = [text] if text_pair is None else [text, text_pair]
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            side = "" if text_pair is None else f" (side {i + 1} of the pair)"
            raise ValueError(f"empty text{side}")
    enc = tokenizer(text, text_pair, return_offsets_mapping=True, add_special_tokens=True)
    ids = np.asarray(enc["input_ids"], np.int32)
    types = np.asarray(enc.get("token_type_ids", [0] * len(ids)), np.int32)
    seq = enc.sequence_ids()
    offsets = enc["offset_mapping"]
    spans = [[m.span() for m in _WORD.finditer(t)] for t in texts]
    # word number (within its side) of every token; -1 for special tokens
    side = np.array([-1 if s is None else s for s in seq])
    word = np.full(len(ids), -1)
    for i, (s, (a, b)) in enumerate(zip(seq, offsets, strict=True)):
        if s is None or b <= a:
            continue
        starts = [st for st, _ in spans[s]]
        j = int(np.searchsorted(starts, a, side="right")) - 1
        if j < 0 or a >= spans[s][j][1]:  # offsets inside whitespace: attach to the next word
            j = min(j + 1, len(spans[s]) - 1)
        word[i] = j
    for s in range(len(texts)):  # a word that produced no token (should not happen) would break the unit count
        covered = set(word[(side == s)].tolist()) - {-1}
        if len(covered) != len(spans[s]):
            missing = [texts[s][a:b] for j, (a, b) in enumerate(spans[s]) if j not in covered]
            raise ValueError(f"the tokenizer produced no token for words {missing[:5]!r}")
    # truncate whole words from the end until the sequence fits
    keep_tok = np.ones(len(ids), bool)
    n_words = [len(sp) for sp in spans]
    dropped = [0] * len(texts)
    while keep_tok.sum() > max_len:
        s = 0 if len(texts) == 1 else int(np.argmax([(keep_tok & (side == t)).sum() for t in range(len(texts))]))
        if n_words[s] - dropped[s] <= 1:
            raise ValueError(f"text does not fit max_len={max_len} tokens even with one word per side")
        dropped[s] += 1
        keep_tok &= ~((side == s) & (word == n_words[s] - dropped[s]))
    ids, types, side, word = ids[keep_tok], types[keep_tok], side[keep_tok], word[keep_tok]
    maskable_sides = {"first": [0], "second": [len(texts) - 1], "both": list(range(len(texts)))}[mask_side]
    if text_pair is None:
        maskable_sides = [0]
    # global index of maskable words: concatenate the maskable sides in order
    word_index = np.full(len(ids), ALWAYS, np.int32)
    words: list[str] = []
    for s in maskable_sides:
        kept = n_words[s] - dropped[s]
        sel = (side == s) & (word >= 0)
        word_index[sel] = word[sel] + len(words)
        words += [texts[s][a:b] for a, b in spans[s][:kept]]
    first = np.zeros(len(ids), bool)
    prev = None
    for i, w in enumerate(word_index):
        first[i] = w >= 0 and w != prev
        prev = w
    return EncodedText(ids, types, word_index, first, tuple(words),
                       sum(dropped[s] for s in maskable_sides))


# ---- device side ------------------------------------------------------------------------------------------------
def sample_keep(key: jax.Array, h: jax.Array, k: jax.Array, n: int, width: int) -> jax.Array:
    """``n`` keep sets, each a uniform k-subset of the words 0..h-1, as bool ``[n, width]``.

    Uniform without replacement by ranking i.i.d. uniform noise: a word is kept when its noise is among the k
    largest of the h valid words. The k-th largest value is read from ``lax.top_k`` over the full width, so ``h``
    and ``k`` are traced values: one compilation serves every text in a bucket.
    """
    noise = jax.random.uniform(key, (n, width))
    valid = jnp.arange(width) < h
    noise = jnp.where(valid, noise, -1.0)  # [n, W]
    top, _ = jax.lax.top_k(noise, width)  # [n, W] descending
    thresh = jnp.take_along_axis(top, jnp.broadcast_to(jnp.maximum(k - 1, 0), (n, 1)), axis=1)  # [n, 1]
    return valid & (noise >= thresh) & (k > 0)


def build_masked(token_ids: jax.Array, token_type_ids: jax.Array, word_index: jax.Array, first_of_word: jax.Array,
                 keep: jax.Array, mask_id: int, pad_id: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Masked copies of one text: ``(input_ids, token_type_ids, attention_mask)``, each ``[n, T]``.

    ``token_ids`` etc. are one text padded to T (``EncodedText.padded``); ``keep`` is ``[n, W]`` over word slots
    (W <= T). Kept words keep their tokens; a masked word becomes one mask token; the result is compacted left.
    """
    n = keep.shape[0]
    t = token_ids.shape[0]
    wi = jnp.clip(word_index, 0, keep.shape[1] - 1)
    word_kept = jnp.take(keep, wi, axis=1)  # [n, T]
    is_word = word_index >= 0
    tok_kept = jnp.where(is_word, word_kept, word_index == ALWAYS)  # [n, T]
    emit = tok_kept | (is_word & first_of_word)  # masked word: its first token slot carries the mask
    ids = jnp.where(tok_kept, token_ids, mask_id)
    dest = jnp.where(emit, jnp.cumsum(emit, axis=1) - 1, t)  # out-of-range slots are dropped
    rows = jnp.arange(n)[:, None]
    out_ids = jnp.full((n, t), pad_id, token_ids.dtype).at[rows, dest].set(ids, mode="drop")
    out_types = jnp.zeros((n, t), token_type_ids.dtype).at[rows, dest].set(
        jnp.broadcast_to(token_type_ids, (n, t)), mode="drop")
    attn = (jnp.arange(t) < emit.sum(axis=1, keepdims=True)).astype(jnp.int32)
    return out_ids, out_types, attn
