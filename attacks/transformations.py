"""Word transformations: each maps (text, word index, rng) to candidate replacement cores for that word.

* ``CharEdits`` -- DeepWordBug's four character edits (Gao et al. 2018; TextAttack's ``random_one`` variants):
  swap two neighbouring characters, substitute, delete, or insert one random letter a-zA-Z, each at a random
  position: one candidate per edit, four per word.
* ``NeighbourSwap`` -- TextFooler's candidates: a word's nearest neighbours in a word-vector space (a
  ``attacks.resources.Neighbours`` table), at most ``max_candidates``, cosine >= ``min_cos``.
* ``WordNetSwap`` -- PWWS's candidates: a word's one-word WordNet synonyms.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable

import numpy as np

from attacks.text import AttackText
from ranmask_jax.masking import split_words

LETTERS = string.ascii_letters

Transformation = Callable[[AttackText, int, np.random.Generator], list[str]]


def swap_neighbours(word: str, rng: np.random.Generator) -> str | None:
    if len(word) <= 1:
        return None
    i = int(rng.integers(0, len(word) - 1))
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def substitute(word: str, rng: np.random.Generator) -> str | None:
    if len(word) <= 1:
        return None
    i = int(rng.integers(0, len(word)))
    return word[:i] + LETTERS[int(rng.integers(0, len(LETTERS)))] + word[i + 1:]


def delete(word: str, rng: np.random.Generator) -> str | None:
    if len(word) <= 1:
        return None
    i = int(rng.integers(0, len(word)))
    return word[:i] + word[i + 1:]


def insert(word: str, rng: np.random.Generator) -> str | None:
    if len(word) <= 1:
        return None
    i = int(rng.integers(0, len(word)))
    return word[:i] + LETTERS[int(rng.integers(0, len(LETTERS)))] + word[i:]


class CharEdits:
    """DeepWordBug: one random instance of each of the four edits of word i's core (words of one character are
    left alone, as in TextAttack). Candidates equal to the word are dropped; duplicates are merged."""

    edits = (swap_neighbours, substitute, delete, insert)

    def __call__(self, text: AttackText, i: int, rng: np.random.Generator) -> list[str]:
        word = text.core(i)
        out = [e(word, rng) for e in self.edits]
        return list(dict.fromkeys(c for c in out if c and c != word))


class NeighbourSwap:
    """TextFooler: the nearest neighbours of word i's core (lower-cased lookup; the candidate keeps the word's
    capitalisation pattern when it is Title or UPPER case)."""

    def __init__(self, neighbours, max_candidates: int = 50, min_cos: float = 0.5):
        self.neighbours, self.max_candidates, self.min_cos = neighbours, max_candidates, min_cos

    def __call__(self, text: AttackText, i: int, rng: np.random.Generator) -> list[str]:
        word = text.core(i)
        cands = self.neighbours.lookup(word.lower(), self.max_candidates, self.min_cos)
        return [_recase(c, word) for c in cands if c != word.lower()]


class WordNetSwap:
    """PWWS (TextAttack's WordSwapWordNet): every one-word WordNet synonym of word i's core (lemmas of all its
    synsets, phrases left out), as WordNet spells them; the core itself is not a candidate."""

    def __init__(self, wordnet):
        self.wordnet = wordnet

    def __call__(self, text: AttackText, i: int, rng: np.random.Generator) -> list[str]:
        word = text.core(i)
        return [w for w in self.wordnet.synonyms(word) if "_" not in w and len(split_words(w)) == 1
                and _CORE_ONLY.fullmatch(w)]


_CORE_ONLY = re.compile(r"\w(.*\w)?", re.S)  # a candidate that is all core: no punctuation to strip at its ends


def _recase(candidate: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return candidate.upper()
    if like[:1].isupper():
        return candidate[:1].upper() + candidate[1:]
    return candidate


class MLMSwap:
    """BERT-Attack (Li et al. 2020): a masked LM reads the current text UNMASKED; a word whose core is one token gets
    the LM's top ``k`` tokens at its position (whole-word tokens only: no ``##`` continuation, no special token),
    kept if they form one alphabetic word different from the original. A word of several tokens gets no candidate
    with ``subwords="single"`` (the original RanMASK code's TextAttack 0.2), or with ``"beam"`` the top ``k`` token
    sequences of a beam over its positions (scored by summed log-probabilities). ``k`` = 48 in the paper and the
    original code (TextAttack 0.3.11 uses 8). Tokens beyond ``max_len`` have no prediction: such words get no
    candidate."""

    def __init__(self, mlm_model, tokenizer, k: int = 48, max_len: int = 256, beam: int = 48,
                 subwords: str = "single"):
        if subwords not in ("single", "beam"):
            raise ValueError(f"subwords must be single or beam, got {subwords!r}")
        self.subwords = subwords
        import jax
        from flax import nnx

        mlm_model.eval()
        graphdef, state = nnx.split(mlm_model)
        self.tokenizer, self.k, self.max_len, self.beam = tokenizer, k, max_len, beam
        self._state = state
        self._logp = jax.jit(lambda s, ids, attn: jax.nn.log_softmax(
            nnx.merge(graphdef, s)(ids, attn, ids * 0), axis=-1)[0])  # [T, V]
        self._bad = np.zeros(mlm_model.cfg.vocab_size, bool)
        self._bad[[i for i in tokenizer.all_special_ids if i < len(self._bad)]] = True
        self._memo: dict[str, tuple] = {}

    def _analyse(self, text: str):
        from ranmask_jax.masking import bucket, encode

        if text not in self._memo:
            e = encode(self.tokenizer, text)
            real = e.has_token
            ids, word = e.token_ids[real][: self.max_len], e.word_index[real][: self.max_len]
            t = bucket(len(ids))
            pad = np.full((1, t), self.tokenizer.pad_token_id, np.int32)
            pad[0, : len(ids)] = ids
            attn = (np.arange(t) < len(ids)).astype(np.int32)[None]
            logp = np.asarray(self._logp(self._state, pad, attn))[: len(ids)]
            self._memo = {text: (word, ids, logp)}  # the search moves on: keep only the current text
        return self._memo[text]

    def __call__(self, text: AttackText, i: int, rng: np.random.Generator) -> list[str]:
        word, ids, logp = self._analyse(text.text)
        # whitespace word i of the text is maskable word i (single texts); its punctuation tokens are not replaced
        pos = [p for p in np.flatnonzero(word == i)
               if any(c.isalnum() for c in self.tokenizer.convert_ids_to_tokens(int(ids[p])))]
        if len(pos) == 0 or (len(pos) > 1 and self.subwords == "single"):
            return []
        beams = [((), 0.0)]
        for p in pos:
            lp = np.where(self._bad, -np.inf, logp[p])
            top = np.argpartition(-lp, self.beam)[: self.beam]
            beams = sorted(((b + (int(t),), s + float(lp[t])) for b, s in beams for t in top), key=lambda x: -x[1])
            beams = beams[: self.beam]
        core = text.core(i)
        out = []
        for toks, _ in beams:
            cand = self.tokenizer.convert_tokens_to_string(self.tokenizer.convert_ids_to_tokens(list(toks))).strip()
            if cand.isalpha() and cand.lower() != core.lower() and cand not in out:
                out.append(cand)
            if len(out) == self.k:
                break
        return out
