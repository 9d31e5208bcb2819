"""Soundness at the raw-text edge: the words RanMASK masks and counts are the units the tokenizer sees.

A raw text may hold any character: ones Python counts as whitespace but a tokenizer deletes (``\\x0c``), ones a
tokenizer deletes inside a word (``\\u200b``, a soft hyphen), every Unicode space, combining marks. For each such
character, with a WordPiece and a byte-level BPE tokenizer, and for every word of the text and a list of hostile
substitutes, every keep set that avoids the changed word must give the same model input for x and x' (exhaustive over
keep sets, through the engine's own copy construction). Then a certificate end to end, on the text that broke it.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import unicodedata

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ranmask_jax.masking import build_masked, canonical_text, encode, split_words
from ranmask_jax.smoothing import SmoothedClassifier


def _hostile_characters() -> list[str]:
    """Every character Python or Unicode calls a space or a line/paragraph separator, every control and format
    character of the Basic Multilingual Plane, and a few combining marks, replacement and private-use characters."""
    out = []
    for c in map(chr, range(0x10000)):
        cat = unicodedata.category(c)
        if c.isspace() or cat in ("Cc", "Cf", "Zs", "Zl", "Zp"):
            out.append(c)
    out += ["\u0301", "\u0308", "\u20dd", "\u034f", "\ufffd", "\ue000", "\U000e0001", "\U0001d173"]
    return out


HOSTILE = _hostile_characters()
# what an attacker puts in place of a word: nothing the tokenizer keeps, many pieces, special-token strings
SUBSTITUTES = ["zzqq", "\u200b", "\u00ad", "\x7f", "antidisestablishmentarianism", "[MASK]", "<mask>", "[CLS]",
               "\u0301", "a\u200bb", "x\ufeffy"]
MAX_LEN, T, W = 512, 64, 16
_build = jax.jit(build_masked, static_argnames=("mask_id", "pad_id", "max_len", "out_len"))


def _templates(c: str) -> list[str]:
    """Texts holding ``c`` between two words, at the start and end of words, and as a word of its own."""
    return [f"a great foot{c}ball game today", f"{c}lead mid{c}dle tail{c} end", f"one {c} two{c}{c}three"]


def _copies(tok, enc, keep):
    ids, types, attn = _build(**enc.padded(T, tok.pad_token_id), keep=keep, mask_id=tok.mask_token_id,
                              pad_id=tok.pad_token_id, max_len=MAX_LEN, out_len=T)
    return np.asarray(ids), np.asarray(types), np.asarray(attn)


def _all_keep_sets_avoiding(h: int, i: int) -> np.ndarray:
    rows = []
    for bits in itertools.product((False, True), repeat=h - 1):
        row = np.zeros(W, bool)
        row[[j for j in range(h) if j != i]] = bits
        rows.append(row)
    return np.array(rows)


def _violations(tok, text: str) -> list[tuple]:
    words = split_words(text)
    enc = encode(tok, text)
    assert enc.words == words and enc.h == len(words)
    bad = []
    for i, new in itertools.product(range(len(words)), SUBSTITUTES):
        changed = " ".join(words[:i] + (new,) + words[i + 1:])
        enc2 = encode(tok, changed)
        assert enc2.h == enc.h
        keep = _all_keep_sets_avoiding(enc.h, i)
        a, b = _copies(tok, enc, keep), _copies(tok, enc2, keep)
        if not all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)):
            bad.append((text, i, new))
    return bad


@pytest.mark.parametrize("which", ["bert", "roberta"])
def test_every_keep_set_avoiding_a_changed_word_gives_the_same_input(which, bert_tokenizer, roberta_tokenizer):
    tok = bert_tokenizer if which == "bert" else roberta_tokenizer
    bad = []
    for c in HOSTILE:
        for text in _templates(c):
            bad += _violations(tok, text)
    assert not bad, f"{len(bad)} substitutions change copies that mask them, e.g. {bad[:5]}"


def test_the_words_are_the_raw_texts_and_only_spaces_separate_them(bert_tokenizer):
    text = "a\x0cgreat\x85foot\u3000ball\u2028game\x1ctoday\u200bnow"
    assert split_words(text) == ("a", "great", "foot", "ball", "game", "today\u200bnow")
    assert canonical_text(text) == "a great foot ball game today\u200bnow"
    enc = encode(bert_tokenizer, "foot\x0cball", "x\x1fy", mask_side="both")
    assert enc.words == ("foot", "ball", "x", "y")


def test_a_tokenizer_that_merges_words_is_refused(bert_tokenizer):
    class Merging:  # a tokenizer whose one token spans two words (what the raw text edge looked like)
        def __init__(self, inner):
            self.inner = inner
            self.pad_token_id, self.mask_token_id = inner.pad_token_id, inner.mask_token_id

        def __call__(self, text, pair=None, **kw):
            enc = self.inner(text, pair, **kw)
            if kw.get("return_offsets_mapping"):
                offs = list(enc["offset_mapping"])
                offs[1] = (offs[1][0], offs[2][1])  # token 1 now covers word 2 too
                enc["offset_mapping"] = offs
            return enc

    with pytest.raises(ValueError, match="across a word boundary"):
        encode(Merging(bert_tokenizer), "foot ball game")


@dataclasses.dataclass(frozen=True)
class _Cfg:
    num_labels: int = 2
    max_positions: int = 512


class FootOrPiece(nnx.Module):
    """f = 0 if the copy holds the token ``foot`` or any ``##`` piece, else 1."""

    def __init__(self, tok):
        self.cfg = _Cfg()
        vocab = tok.get_vocab()
        flags = np.zeros(len(vocab), bool)
        flags[[i for t, i in vocab.items() if t.startswith("##") or t == "foot"]] = True
        self.flags = nnx.Variable(jnp.asarray(flags))

    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        hit = (self.flags[...][input_ids] & (attention_mask > 0)).any(-1)
        return jnp.stack([hit, ~hit], -1).astype(jnp.float32)


def test_a_certificate_on_a_raw_text_holds_against_every_substitution(bert_tokenizer):
    """The text that broke the certificate: ``foot\\x0cball`` read as one token ``football`` gave radius_one = 1,
    and changing ``ball`` to ``zzqq`` flipped g (exact counts 9 : 6). Every x' within radius_one of every text
    here must keep g's label, computed exactly over all keep sets."""
    sc = SmoothedClassifier(FootOrPiece(bert_tokenizer), bert_tokenizer, 0.7, max_len=64)
    texts = ["a great foot\x0cball game today", "a great foot\x1cball\x85game today",
             "the match of foot\u2028ball fans", "play foot\x0bball , then sleep well",
             "a great basket\x0cball game today", "nice basket\u3000ball\x1cgame today"]
    certified = 0
    for text in texts:
        cert = sc.certify(jax.random.key(0), text, None, beta="one", exact_threshold=10**6)
        assert cert.mode == "exact"
        words = split_words(text)
        for d in range(1, cert.radius_one + 1):
            for pos in itertools.combinations(range(len(words)), d):
                for new in itertools.product(SUBSTITUTES[:5], repeat=d):
                    changed = list(words)
                    for p, w in zip(pos, new, strict=True):
                        changed[p] = w
                    pr = sc.predict(jax.random.key(1), " ".join(changed), n=1, exact_threshold=10**6)
                    assert pr.label == cert.prediction, (text, pos, new, pr.counts)
        certified += cert.radius_one >= 1
    assert certified >= 1  # not vacuous: some text is certified at radius >= 1


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
