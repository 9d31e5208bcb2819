"""Word-level random masking: word units of a text, the keep-set sampler, and masked-copy construction.

Words are the whitespace-separated units of the WHOLE text (the paper's h_x); nothing is dropped before masking.
A text is tokenized once with offsets and each token is tied to the word whose characters it covers. A masked copy
keeps the subword tokens of its kept words and replaces every masked word by ONE mask token; it is compacted to the
left and only THEN cut to ``max_len`` tokens, on the device -- exactly the token ids one gets by writing the mask
token in place of each masked word, tokenizing the result and truncating it (tests check this for WordPiece and
byte-level BPE).

Why the order matters: for a text x' that substitutes some words of x, every keep set that avoids the substituted
words yields the identical model input, whatever the new words tokenize to, because the truncation reads only the
masked copy. Truncating x first would let a longer substitute push other words out of the window (and change h_x).

A word that tokenizes to nothing (a zero-width space, a soft hyphen, a control character) is still a word: kept, it
contributes no token; masked, it becomes one mask token. It occupies one "phantom" slot (``has_token`` false).

Truncation of a masked copy (``build_masked``): special tokens are always kept; with ``B = max_len - #specials``
content tokens to spare, a single text keeps its first B content tokens; a pair with side lengths a + b > B keeps
``min(shorter, B // 2)`` tokens of its shorter side (the first on a tie) and fills the rest of B from the longer
one -- what Hugging Face's "longest_first" truncation keeps. Both depend on the masked copy alone.

Device functions are pure and shape-static: a text is padded to a length bucket ``T`` (its full token length, which
may exceed ``max_len``); keep sets are boolean masks ``[n, W]`` over word slots, so texts of different lengths in one
bucket share one compilation.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
from typing import Literal, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

ALWAYS = -1  # word_index of tokens that are never masked (special tokens, the unmasked side of a pair)
PAD = -2  # word_index of padding slots

MaskSide = Literal["first", "second", "both"]
MIN_BUCKET = 16
DEFAULT_MIN_KEEP = 2  # the original code's floor on kept words


def keep_count(h: int, rate: float, min_keep: int = DEFAULT_MIN_KEEP) -> int:
    """k_x, the number of words kept out of h at masking rate ``rate``, as the original RanMASK code computes it:
    ``max(h - round(h * rate), min(min_keep, h))`` with Python's ``round`` of the float product (half to even).

    The sampler, training and the certificate all call this one function, so they cannot disagree.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"masking rate must be in [0, 1], got {rate}")
    if h < 0:
        raise ValueError(f"h must be >= 0, got {h}")
    if min_keep < 0:
        raise ValueError(f"min_keep must be >= 0, got {min_keep}")
    return max(h - round(h * rate), min(min_keep, h))


def bucket(n: int) -> int:
    """The length bucket of n: the smallest power of two >= max(n, 16)."""
    return max(MIN_BUCKET, 1 << max(int(n) - 1, 0).bit_length())


@dataclasses.dataclass(frozen=True)
class EncodedText:
    """A tokenized text with its maskable word units. Arrays are unpadded numpy, one entry per slot: a token, or a
    phantom slot standing for a maskable word that has no token."""

    token_ids: np.ndarray  # [L] int32, special tokens included (phantom slots: pad id)
    token_type_ids: np.ndarray  # [L] int32
    word_index: np.ndarray  # [L] int32: maskable word of each slot, or ALWAYS
    first_of_word: np.ndarray  # [L] bool: first slot of a maskable word (a masked word's mask token goes there)
    has_token: np.ndarray  # [L] bool: false for phantom slots
    segment: np.ndarray  # [L] int32: 0 special token, 1 first text, 2 second text of a pair
    words: tuple[str, ...]  # the h_x maskable words, in order
    num_specials: int  # special tokens (always kept by truncation)

    @property
    def h(self) -> int:
        return len(self.words)

    @property
    def num_tokens(self) -> int:
        """Tokens of the unmasked text, before any truncation."""
        return int(self.has_token.sum())

    def padded(self, length: int, pad_id: int) -> dict[str, np.ndarray]:
        """Arrays padded to ``length`` (a bucket), ready for ``build_masked``."""
        n = len(self.token_ids)
        if n > length:
            raise ValueError(f"text of {n} slots does not fit length {length}")

        def pad(a, value):
            return np.concatenate([a, np.full(length - n, value, a.dtype)])

        return {"token_ids": pad(self.token_ids, pad_id), "token_type_ids": pad(self.token_type_ids, 0),
                "word_index": pad(self.word_index, PAD), "first_of_word": pad(self.first_of_word, False),
                "has_token": pad(self.has_token, False), "segment": pad(self.segment, -1)}


_WORD = re.compile(r"\S+")


def canonical_text(text: str) -> str:
    r"""The text every path masks and tokenizes: its words (``str.split``: every run of Unicode whitespace, as Python
    counts it, separates two words) joined by single ASCII spaces.

    This is what makes the words the tokenizer's units. Python counts ``\x0b \x0c \x1c-\x1f \x85`` as
    whitespace, but the BERT normaliser deletes them as control characters, so in the raw text ``foot\x0cball``
    is one token covering two words and a copy that masks ``ball`` still reads it. After this rewrite every word
    boundary is a plain space, which every supported tokenizer splits on, while the words themselves (and so h_x, the
    words an attacker changes, and the radius) are exactly those of the raw text.
    """
    return " ".join(split_words(text))


def split_words(text: str) -> tuple[str, ...]:
    """The maskable word units of a text (the h_x of the paper): its whitespace-separated words."""
    return tuple(text.split())


_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.S)


def split_core(word: str) -> tuple[str, str, str]:
    """(leading punctuation, core, trailing punctuation) of a whitespace word: the core is what a word substitution
    (an attack's swap, SAFER's smoothing) replaces, keeping the punctuation around it."""
    return _CORE.match(word).groups()


def word_cores(text: str) -> list[tuple[str, str, str]]:
    """The whitespace words of ``text`` (the units RanMASK masks), each split by ``split_core``."""
    return [split_core(w) for w in split_words(text)]


@functools.lru_cache(maxsize=8)
def special_layout(tokenizer, pair: bool) -> tuple[int, int, int, tuple[int, ...]]:
    """How many special tokens the tokenizer puts before the first text, between the texts and after the last, and
    the token type of each text's content."""
    enc = tokenizer("a", "b" if pair else None)
    seq = enc.sequence_ids()
    types = enc.get("token_type_ids") or [0] * len(seq)
    first = [i for i, s in enumerate(seq) if s == 0]
    if not pair:
        return first[0], 0, len(seq) - first[-1] - 1, (types[first[0]],)
    second = [i for i, s in enumerate(seq) if s == 1]
    return first[0], second[0] - first[-1] - 1, len(seq) - second[-1] - 1, (types[first[0]], types[second[0]])


def _tie_tokens_to_words(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Word number of each token of one text, in one pass (offsets and spans are both sorted). A token that starts
    in whitespace belongs to the next word (or the last word at the end)."""
    out, j = [], 0
    for a, _ in offsets:
        while j < len(spans) - 1 and spans[j][1] <= a:
            j += 1
        out.append(j)
    return out


def checked_texts(text: str, text_pair: str | None = None) -> list[str]:
    """``[text]`` or ``[text, text_pair]``; each must be a string with a word in it (the error names the side)."""
    texts = [text] if text_pair is None else [text, text_pair]
    for i, t in enumerate(texts):
        side = "" if text_pair is None else f" (side {i + 1} of the pair)"
        if not isinstance(t, str):
            raise ValueError(f"text{side} must be a string, got {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"empty text{side}")
    return texts


def encode(tokenizer, text: str, text_pair: str | None = None, *, mask_side: MaskSide = "second") -> EncodedText:
    """Tokenize ``text`` (and ``text_pair``) whole, as ``canonical_text`` writes it, and tie each token to its word.

    For a pair, ``mask_side`` says which side's words are maskable ("second", the hypothesis, as in the paper;
    "first"; or "both"); tokens of the other side are always kept. Nothing is truncated here: ``build_masked`` cuts
    each masked copy to ``max_len``.
    """
    texts = [canonical_text(t) for t in checked_texts(text, text_pair)]
    text, text_pair = texts[0], (texts[1] if text_pair is not None else None)
    if mask_side not in ("first", "second", "both"):
        raise ValueError(f"mask_side must be first, second or both, got {mask_side!r}")
    enc = tokenizer(text, text_pair, return_offsets_mapping=True, add_special_tokens=True, truncation=False,
                    verbose=False)
    ids = np.asarray(enc["input_ids"], np.int32)
    types = np.asarray(enc.get("token_type_ids") or [0] * len(ids), np.int32)
    seq = np.array([-1 if s is None else s for s in enc.sequence_ids()])
    offsets = enc["offset_mapping"]
    pre, mid, post, side_types = special_layout(tokenizer, text_pair is not None)
    maskable = {"first": {0}, "second": {len(texts) - 1}, "both": set(range(len(texts)))}[mask_side]
    if text_pair is None:
        maskable = {0}

    cols: dict[str, list] = {k: [] for k in ("ids", "types", "word", "first", "has", "seg")}

    def put(tok_id, typ, word, first, has, seg):
        for k, v in zip(cols, (tok_id, typ, word, first, has, seg), strict=True):
            cols[k].append(v)

    specials = np.flatnonzero(seq < 0)
    if len(specials) != pre + mid + post:
        raise ValueError(f"unexpected special-token layout from the tokenizer: {enc['input_ids']}")
    words: list[str] = []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for s, t in enumerate(texts):
        head = specials[:pre] if s == 0 else specials[pre:pre + mid]
        for i in head:
            put(ids[i], types[i], ALWAYS, False, True, 0)
        tok = np.flatnonzero(seq == s)
        spans = [m.span() for m in _WORD.finditer(t)]
        word_of = _tie_tokens_to_words([offsets[i] for i in tok], spans)
        for i, w in zip(tok, word_of, strict=True):
            if offsets[i][1] > spans[w][1]:  # never with a tokenizer that splits on spaces
                raise ValueError(f"{type(tokenizer).__name__} makes one token of {t[offsets[i][0]:offsets[i][1]]!r}, "
                                 "across a word boundary; its words cannot be masked independently")
        by_word: list[list[int]] = [[] for _ in spans]
        for i, w in zip(tok, word_of, strict=True):
            by_word[w].append(int(i))
        for w, toks in enumerate(by_word):
            if s in maskable:
                g = len(words)
                if not toks:  # a word with no token: one phantom slot, so that masking it emits a mask token
                    put(pad_id, side_types[s], g, True, False, s + 1)
                for n_, i in enumerate(toks):
                    put(ids[i], types[i], g, n_ == 0, True, s + 1)
                words.append(t[spans[w][0]:spans[w][1]])
            else:
                for i in toks:
                    put(ids[i], types[i], ALWAYS, False, True, s + 1)
    for i in specials[pre + mid:]:
        put(ids[i], types[i], ALWAYS, False, True, 0)
    return EncodedText(np.asarray(cols["ids"], np.int32), np.asarray(cols["types"], np.int32),
                       np.asarray(cols["word"], np.int32), np.asarray(cols["first"], bool),
                       np.asarray(cols["has"], bool), np.asarray(cols["seg"], np.int32), tuple(words),
                       num_specials=len(specials))


def check_max_len(enc: EncodedText, max_len: int) -> None:
    """``max_len`` must leave room for the special tokens and at least one content token per text."""
    sides = int(enc.segment.max()) if len(enc.segment) else 1
    if max_len - enc.num_specials < sides:
        raise ValueError(f"max_len={max_len} leaves no room for text beside the {enc.num_specials} special tokens")


# ---- device side ------------------------------------------------------------------------------------------------
def _ranked(noise: jax.Array, h: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Noise values in descending order and the word slot of each, ``[n, W]`` each (padding slots, >= h, last)."""
    width = noise.shape[1]
    low = jnp.iinfo(noise.dtype).min if jnp.issubdtype(noise.dtype, jnp.integer) else -jnp.inf
    return jax.lax.top_k(jnp.where(jnp.arange(width) < h, noise, low), width)


def _keep_from_order(order: jax.Array, h: jax.Array, k: jax.Array) -> jax.Array:
    n, width = order.shape
    rank = jnp.zeros((n, width), jnp.int32).at[jnp.arange(n)[:, None], order].set(jnp.arange(width, dtype=jnp.int32))
    return (jnp.arange(width) < h) & (rank < k)


def _boundary_tie(vals: jax.Array, h: jax.Array, k: jax.Array) -> jax.Array:
    width = vals.shape[1]
    kth = jnp.take(vals, jnp.clip(k - 1, 0, width - 1), axis=1)
    nxt = jnp.take(vals, jnp.clip(k, 0, width - 1), axis=1)
    return (k > 0) & (k < h) & (kth == nxt)


def keep_from_noise(noise: jax.Array, h: jax.Array, k: jax.Array) -> jax.Array:
    """Keep sets from noise ``[n, W]``: in each row, the k word slots among 0..h-1 with the largest noise, ranked
    by ``lax.top_k`` (equal values are ranked by position), so every row keeps exactly ``min(k, h)`` words."""
    return _keep_from_order(_ranked(noise, h)[1], h, k)


def boundary_tie(noise: jax.Array, h: jax.Array, k: jax.Array) -> jax.Array:
    """``[n]`` bool: rows whose k-th and (k+1)-th largest noise values among the h words are equal, so that
    ``keep_from_noise`` would decide the kept set by position rather than by the noise."""
    return _boundary_tie(_ranked(noise, h)[0], h, k)


NOISE_BITS = 31


def sample_keep(key: jax.Array, h: jax.Array, k: jax.Array, n: int, width: int, noise_bits: int = NOISE_BITS
                ) -> jax.Array:
    """``n`` keep sets, each an exactly uniform k-subset of the words 0..h-1, as bool ``[n, width]``; every row keeps
    exactly ``min(k, h)`` words.

    Each row ranks i.i.d. integer noise of ``noise_bits`` random bits and keeps its k largest; a row whose k-th and
    (k+1)-th values tie is drawn again (from ``fold_in(key, round)``) until none does. The noise is exchangeable and
    "no tie at the boundary" is an event that does not depend on the order of the words, so conditioned on it the
    kept set is uniform over the C(h, k) subsets: exactly, not up to float resolution (a float32 uniform takes only
    2^23 values, and ``top_k`` breaks a tie by position). With 31 bits about one row in 10^6 is redrawn at h = 2000.
    ``h`` and ``k`` are traced values: one compilation serves every text in a bucket.
    """
    def draw(i):
        bits = jax.random.bits(jax.random.fold_in(key, i), (n, width), jnp.uint32)
        return (bits >> (32 - noise_bits)).astype(jnp.int32)

    def redraw(state):  # the tied rows only, from the next key
        i, noise, vals, _ = state
        noise = jnp.where(_boundary_tie(vals, h, k)[:, None], draw(i), noise)
        return i + 1, noise, *_ranked(noise, h)

    noise = draw(0)
    state = jax.lax.while_loop(lambda s: _boundary_tie(s[2], h, k).any(), redraw, (1, noise, *_ranked(noise, h)))
    return _keep_from_order(state[3], h, k)


def build_masked(token_ids: jax.Array, token_type_ids: jax.Array, word_index: jax.Array, first_of_word: jax.Array,
                 has_token: jax.Array, segment: jax.Array, keep: jax.Array, mask_id: int, pad_id: int, max_len: int,
                 out_len: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Masked copies of one text: ``(input_ids, token_type_ids, attention_mask)``, each ``[n, out_len]``.

    The text's arrays are padded to T (``EncodedText.padded``); ``keep`` is ``[n, W]`` over word slots (W <= T).
    Kept words keep their tokens; a masked word becomes one mask token; the copy is compacted left and then cut to
    ``max_len`` tokens (module docstring), which must be <= ``out_len`` or the copies are cut at ``out_len``.
    """
    n = keep.shape[0]
    wi = jnp.clip(word_index, 0, keep.shape[1] - 1)
    word_kept = jnp.take(keep, wi, axis=1)  # [n, T]
    is_word = word_index >= 0
    tok_kept = jnp.where(is_word, word_kept, word_index == ALWAYS)  # [n, T]
    emit = (tok_kept & has_token) | (is_word & first_of_word & ~word_kept)  # [n, T]
    ids = jnp.where(tok_kept, token_ids, mask_id)
    # truncation of the masked copy: specials stay, the content of each side is cut to its budget
    budget = max_len - jnp.sum(segment == 0)
    seg1, seg2 = emit & (segment == 1), emit & (segment == 2)
    a, b = seg1.sum(axis=1, keepdims=True), seg2.sum(axis=1, keepdims=True)  # [n, 1]
    over, a_shorter = a + b > budget, a <= b
    short = jnp.minimum(jnp.where(a_shorter, a, b), budget // 2)  # the shorter side keeps up to half the budget
    a_keep = jnp.where(over, jnp.where(a_shorter, short, budget - short), a)
    b_keep = jnp.where(over, jnp.where(a_shorter, budget - short, short), b)
    emit = emit & ((segment == 0) | (seg1 & (jnp.cumsum(seg1, axis=1) <= a_keep))
                   | (seg2 & (jnp.cumsum(seg2, axis=1) <= b_keep)))
    dest = jnp.where(emit, jnp.cumsum(emit, axis=1) - 1, out_len)  # out-of-range slots are dropped
    rows = jnp.arange(n)[:, None]
    out_ids = jnp.full((n, out_len), pad_id, token_ids.dtype).at[rows, dest].set(ids, mode="drop")
    out_types = jnp.zeros((n, out_len), token_type_ids.dtype).at[rows, dest].set(
        jnp.broadcast_to(token_type_ids, ids.shape), mode="drop")
    attn = (jnp.arange(out_len) < emit.sum(axis=1, keepdims=True)).astype(jnp.int32)
    return out_ids, out_types, attn


def copy_lengths(enc: EncodedText, keep: np.ndarray, max_len: int) -> np.ndarray:
    """Token length of each masked copy of ``enc`` (keep rows ``[m, W]``) after the cut to ``max_len``: what
    ``build_masked`` produces, computed on the host from token counts alone (to pack copies by length)."""
    maskable = enc.word_index >= 0
    words = enc.word_index[maskable & enc.first_of_word]  # [h] in order
    tok = np.bincount(enc.word_index[maskable & enc.has_token], minlength=enc.h)[:enc.h]  # tokens per word
    side = enc.segment[maskable & enc.first_of_word]  # [h]: 1 or 2
    assert len(words) == enc.h
    kept = keep[:, :enc.h].astype(np.int64)  # [m, h]
    fixed = [int(np.sum((enc.segment == s) & ~maskable & enc.has_token)) for s in (1, 2)]
    # a kept word brings its tokens, a masked one a single mask token
    a = fixed[0] + (side == 1).sum() + kept[:, side == 1] @ (tok[side == 1] - 1)
    b = fixed[1] + (side == 2).sum() + kept[:, side == 2] @ (tok[side == 2] - 1)
    budget = max_len - enc.num_specials
    short = np.minimum(np.where(a <= b, a, b), budget // 2)
    over = a + b > budget
    a_keep = np.where(over, np.where(a <= b, short, budget - short), a)
    b_keep = np.where(over, np.where(a <= b, budget - short, short), b)
    return enc.num_specials + a_keep + b_keep


@runtime_checkable
class KeepSets(Protocol):
    """A keep-set distribution: the one object that sampling, certification and training read.

    ``k(h)``: words each copy keeps of h; ``size(h)``: how many keep sets there are (``inf``: never enumerated, so
    no exact mode); ``sample_text(key, enc, n, width)``: n keep sets of a text, bool ``[n, width]`` on the device;
    ``certifiable``: whether Theorem 1's certificate assumes exactly this distribution. A finite ``size`` needs
    ``enumerate(h, width)``; training needs ``sample_traced(key, h, k, n, width)`` (h, k traced, under jit).
    """

    certifiable: bool

    def k(self, h: int) -> int: ...

    def size(self, h: int) -> float: ...

    def sample_text(self, key: jax.Array, enc: EncodedText, n: int, width: int) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class UniformKeepSets:
    """The keep-set distribution of RanMASK: a uniform k_x-subset of the h_x words, k_x = ``keep_count``. The
    sampler, the exact enumeration, training and the certificate all read it, so they cannot drift apart;
    ``certifiable`` says that Theorem 1's certificate assumes exactly this distribution."""

    rho: float
    min_keep: int = DEFAULT_MIN_KEEP
    certifiable = True

    def __post_init__(self):
        keep_count(1, self.rho, self.min_keep)  # validates rho and min_keep

    def k(self, h: int) -> int:
        return keep_count(h, self.rho, self.min_keep)

    def size(self, h: int) -> int:
        """How many keep sets there are: C(h, k)."""
        return math.comb(h, self.k(h))

    def sample(self, key: jax.Array, h: int, n: int, width: int) -> jax.Array:
        """``n`` keep sets ``[n, width]`` on the device; one compilation per (n, width)."""
        return _sample_jit(key, h, self.k(h), n=n, width=width)

    @staticmethod
    def sample_traced(key: jax.Array, h: jax.Array, k: jax.Array, n: int, width: int) -> jax.Array:
        """``sample_keep`` with h and k (= ``k(h)``, computed on the host) as traced values, for use under jit and
        vmap (training masks every example of a batch in one step)."""
        return sample_keep(key, h, k, n, width)

    def sample_text(self, key: jax.Array, enc: EncodedText, n: int, width: int) -> jax.Array:
        """``n`` keep sets of ``enc``'s words (the uniform distribution reads only h)."""
        return self.sample(key, enc.h, n, width)

    def enumerate(self, h: int, width: int) -> np.ndarray:
        """All C(h, k) keep sets, bool ``[C(h, k), width]`` (one empty set when k = 0)."""
        k = self.k(h)
        combos = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(h), k)), np.int64)
        keep = np.zeros((math.comb(h, k), width), bool)
        np.put_along_axis(keep, combos.reshape(len(keep), k), True, axis=1)
        return keep


_sample_jit = jax.jit(sample_keep, static_argnames=("n", "width", "noise_bits"))
