"""Word units, k_x, the keep-set sampler and masked-copy construction (mask first, truncate after)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ranmask_jax.masking import (
    ALWAYS,
    boundary_tie,
    bucket,
    build_masked,
    check_max_len,
    encode,
    keep_count,
    keep_from_noise,
    sample_keep,
)
from tests.conftest import CORPUS

# words that tokenize to nothing (BERT's normalizer drops them), and words that split into many pieces
ZERO_TOKEN_WORDS = ["\u200b", "\u00ad", "\x7f", "\ufeff", "\x96", "\x97", "\uf0b7"]
MANY_PIECES = "antidisestablishmentarianismpneumonoultramicroscopicsilicovolcano"


def _sample(seed, h, k, n, width=16):
    return np.asarray(jax.jit(sample_keep, static_argnames=("n", "width"))(jax.random.key(seed), h, k, n=n,
                                                                           width=width))


# ---- k_x ------------------------------------------------------------------------------------------------------------
def _original_keep(length: int, rate: float, min_keep: int = 2) -> int:
    """k as the original RanMASK code computes it (utils/mask.py: mask_sentence), written out independently."""
    mask_numbers = round(length * rate)
    if length - mask_numbers < min_keep:
        mask_numbers = length - min_keep if length - min_keep >= 0 else 0
    return length - mask_numbers


def test_keep_count_is_the_original_codes():
    for h in range(0, 600):
        for rho in (0.0, 0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0):
            assert keep_count(h, rho) == _original_keep(h, rho), (h, rho)
    # the cases where round-half-up would differ: Python's round of the float product, half to even
    assert keep_count(15, 0.3) == 11  # 4.5 -> 4 masked
    assert keep_count(5, 0.5) == 3 and keep_count(9, 0.5) == 5  # 2.5 -> 2, 4.5 -> 4
    assert keep_count(3, 0.9) == 2 and keep_count(1, 0.9) == 1 and keep_count(0, 0.9) == 0  # floor min(2, h)
    assert keep_count(3, 0.9, min_keep=1) == 1 and keep_count(5, 1.0, min_keep=0) == 0
    with pytest.raises(ValueError):
        keep_count(5, 1.5)
    with pytest.raises(ValueError):
        keep_count(5, 0.5, min_keep=-1)


# ---- the sampler -----------------------------------------------------------------------------------------------------
def test_sampler_exact_size_and_range():
    keep = _sample(0, 11, 4, 2000, width=16)
    assert (keep.sum(axis=1) == 4).all()
    assert not keep[:, 11:].any()
    assert not _sample(0, 5, 0, 10).any()
    assert (_sample(0, 5, 5, 10).sum(axis=1) == 5).all()
    assert (_sample(0, 5, 9, 10).sum(axis=1) == 5).all()  # k > h keeps every word, nothing beyond h


def test_ties_never_keep_an_extra_word():
    n, width = 64, 32
    for noise in (jnp.zeros((n, width)), jnp.ones((n, width)),
                  jnp.round(jax.random.uniform(jax.random.key(0), (n, width)) * 3) / 3):  # 4 distinct values
        for h, k in ((20, 7), (32, 31), (5, 1), (20, 20)):
            keep = np.asarray(keep_from_noise(noise, h, k))
            assert (keep.sum(axis=1) == k).all(), (h, k)
            assert not keep[:, h:].any()


def test_sampler_exact_k_at_long_lengths():
    keep = _sample(3, 512, 51, 20000, width=512)
    assert (keep.sum(axis=1) == 51).all()


def test_sampler_uniform_over_positions_and_subsets():
    h, k, n = 6, 3, 40000
    keep = _sample(1, h, k, n)[:, :h]
    per_pos = keep.sum(axis=0)  # each word kept with probability k/h
    assert stats.chisquare(per_pos, np.full(h, n * k / h)).pvalue > 1e-3
    index = {s: i for i, s in enumerate(itertools.combinations(range(h), k))}  # all C(6, 3) = 20 equally likely
    ids = np.array([index[tuple(np.flatnonzero(row))] for row in keep])
    assert stats.chisquare(np.bincount(ids, minlength=len(index))).pvalue > 1e-3


def _subset_pvalue(keep, h, k):
    index = {s: i for i, s in enumerate(itertools.combinations(range(h), k))}
    ids = np.array([index[tuple(np.flatnonzero(row[:h]))] for row in keep])
    return stats.chisquare(np.bincount(ids, minlength=len(index))).pvalue


def test_sampler_exactly_uniform_when_the_noise_ties():
    """Ties are redrawn, not broken by position: with noise of 2 random bits (4 values, ties in most rows) the kept
    sets are still uniform over all C(h, k) subsets, where ranking the same kind of noise with ``top_k``'s position
    rule is far from uniform (the first words win every tie)."""
    h, k, n = 6, 3, 40000
    coarse = np.asarray(jax.jit(sample_keep, static_argnames=("n", "width", "noise_bits"))(
        jax.random.key(4), h, k, n=n, width=16, noise_bits=2))
    assert (coarse.sum(axis=1) == k).all()
    assert _subset_pvalue(coarse, h, k) > 1e-3
    noise = jax.random.randint(jax.random.key(4), (n, 16), 0, 4)
    by_position = np.asarray(keep_from_noise(noise, h, k))
    assert np.asarray(boundary_tie(noise, h, k)).mean() > 0.3
    assert _subset_pvalue(by_position, h, k) < 1e-12  # the check can fail: the position rule is caught
    # and at a realistic size the sampler never leaves a boundary tie behind (it redraws those rows)
    assert (np.asarray(_sample(5, 2000, 200, 2000, width=2048)).sum(axis=1) == 200).all()


def test_sampler_deterministic_for_a_key():
    a, b, c = _sample(7, 9, 4, 100), _sample(7, 9, 4, 100), _sample(8, 9, 4, 100)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ---- masked copies ---------------------------------------------------------------------------------------------------
def _mask_string(words, keep, mask_token):
    return " ".join(w if kp else mask_token for w, kp in zip(words, keep, strict=True))


def _construct(tok, enc, keep_rows, max_len=512):
    t = bucket(len(enc.token_ids))
    keep = np.zeros((len(keep_rows), bucket(enc.h)), bool)
    keep[:, :enc.h] = keep_rows
    ids, types, attn = jax.jit(build_masked, static_argnames=("mask_id", "pad_id", "max_len", "out_len"))(
        **enc.padded(t, tok.pad_token_id), keep=keep, mask_id=tok.mask_token_id, pad_id=tok.pad_token_id,
        max_len=max_len, out_len=min(t, max_len))
    return np.asarray(ids), np.asarray(types), np.asarray(attn)


def _check_against_retokenized(tok, text, rows, max_len, pair=None, mask_side="second"):
    """Every masked copy equals: write the mask token for each masked word, tokenize, truncate to max_len."""
    enc = encode(tok, text, pair, mask_side=mask_side)
    ids, types, attn = _construct(tok, enc, rows, max_len)
    for row, got, ty, m in zip(rows, ids, types, attn, strict=True):
        masked = _mask_string(enc.words, row, tok.mask_token)
        if pair is None:
            ref = tok(masked, truncation=True, max_length=max_len)
        else:
            n1 = len(text.split()) if mask_side == "both" else 0
            first = masked if mask_side == "first" else (" ".join(masked.split(" ")[:n1]) if n1 else text)
            second = pair if mask_side == "first" else (" ".join(masked.split(" ")[n1:]) if n1 else masked)
            ref = tok(first, second, truncation="longest_first", max_length=max_len)
        assert got[: m.sum()].tolist() == ref["input_ids"], (text, row)
        if "token_type_ids" in ref:
            assert ty[: m.sum()].tolist() == ref["token_type_ids"]
        assert (got[m.sum():] == tok.pad_token_id).all()


@pytest.mark.parametrize("which", ["bert", "roberta"])
def test_masked_ids_equal_retokenized_masked_string(which, bert_tokenizer, roberta_tokenizer):
    tok = bert_tokenizer if which == "bert" else roberta_tokenizer
    rng = np.random.default_rng(0)
    for text in CORPUS:
        h = len(text.split())
        assert encode(tok, text).words == tuple(text.split())
        rows = np.array([rng.random(h) < 0.5 for _ in range(8)] + [np.ones(h, bool), np.zeros(h, bool)])
        for max_len in (512, 12, 7):  # no cut, and cuts after masking
            _check_against_retokenized(tok, text, rows, max_len)


@pytest.mark.parametrize("which", ["bert", "roberta"])
def test_words_without_tokens_are_words(which, bert_tokenizer, roberta_tokenizer):
    tok = bert_tokenizer if which == "bert" else roberta_tokenizer
    text = "the " + " a ".join(ZERO_TOKEN_WORDS) + " end"
    enc = encode(tok, text)
    assert enc.words == tuple(text.split()) and enc.h == len(text.split())
    if which == "bert":
        assert enc.num_tokens < len(enc.token_ids)  # phantom slots exist for the words with no token
    rng = np.random.default_rng(1)
    rows = np.array([rng.random(enc.h) < 0.5 for _ in range(10)] + [np.zeros(enc.h, bool)])
    _check_against_retokenized(tok, text, rows, 512)
    _check_against_retokenized(tok, text, rows, 9)
    only = encode(tok, "\u200b")  # a text whose only word has no token
    assert only.h == 1
    _check_against_retokenized(tok, "\u200b", np.array([[True], [False]]), 16)


def test_pairs_mask_only_the_chosen_side_and_truncate_like_longest_first(bert_tokenizer, roberta_tokenizer):
    premise = "A man plays a guitar on stage in front of a large and cheering crowd ."
    hyp = "Someone is making music " + MANY_PIECES + " \u200b ."
    rng = np.random.default_rng(2)
    for tok in (bert_tokenizer, roberta_tokenizer):
        for side, words in (("second", hyp.split()), ("first", premise.split()),
                            ("both", premise.split() + hyp.split())):
            enc = encode(tok, premise, hyp, mask_side=side)
            assert enc.words == tuple(words)
            rows = np.array([rng.random(enc.h) < 0.4 for _ in range(6)] + [np.zeros(enc.h, bool)])
            for max_len in (512, 24, 13, 9):
                _check_against_retokenized(tok, premise, rows, max_len, pair=hyp, mask_side=side)


def test_long_texts_keep_every_word(bert_tokenizer):
    words = [f"word{i}" for i in range(300)]  # several subwords each: far beyond max_len
    text = " ".join(words)
    enc = encode(bert_tokenizer, text)
    assert enc.h == 300 and enc.num_tokens > 600
    assert enc.token_ids.tolist() == bert_tokenizer(text)["input_ids"]
    assert (enc.word_index[1:-1] >= 0).all() and enc.word_index[0] == ALWAYS
    rng = np.random.default_rng(3)
    rows = np.array([rng.random(300) < 0.1 for _ in range(4)] + [rng.random(300) < 0.9 for _ in range(4)])
    _check_against_retokenized(bert_tokenizer, text, rows, 32)
    ids, _, attn = _construct(bert_tokenizer, enc, rows, 32)
    assert ids.shape[1] == 32 and (attn.sum(axis=1) == 32).all()


def test_a_substituted_word_changes_only_copies_that_keep_it(bert_tokenizer, roberta_tokenizer):
    """The property Theorem 1 needs: copies whose keep set avoids the changed word are identical, whatever the new
    word tokenizes to -- also when the text is far longer than max_len."""
    base = [f"w{i}" for i in range(40)]
    for tok in (bert_tokenizer, roberta_tokenizer):
        for new in [MANY_PIECES, *ZERO_TOKEN_WORDS[:3], "x"]:
            for pos in (0, 5, 39):
                changed = list(base)
                changed[pos] = new
                a, b = encode(tok, " ".join(base)), encode(tok, " ".join(changed))
                assert a.h == b.h == 40
                rows = np.random.default_rng(pos).random((50, 40)) < 0.5
                rows[:, pos] = False
                for max_len in (16, 64):
                    ia, ta, ma = _construct(tok, a, rows, max_len)
                    ib, tb, mb = _construct(tok, b, rows, max_len)
                    width = min(ia.shape[1], ib.shape[1])
                    np.testing.assert_array_equal(ia[:, :width], ib[:, :width])
                    np.testing.assert_array_equal(ma[:, :width], mb[:, :width])
                    assert not ma[:, width:].any() and not mb[:, width:].any()


def test_empty_text_and_too_small_max_len_are_errors(bert_tokenizer):
    with pytest.raises(ValueError, match="empty text"):
        encode(bert_tokenizer, "   ")
    with pytest.raises(ValueError, match="side 2"):
        encode(bert_tokenizer, "fine", " ")
    with pytest.raises(ValueError, match="mask_side"):
        encode(bert_tokenizer, "fine", "too", mask_side="bogus")
    with pytest.raises(ValueError, match="no room"):
        check_max_len(encode(bert_tokenizer, "a b c"), 2)
    with pytest.raises(ValueError, match="no room"):
        check_max_len(encode(bert_tokenizer, "a b", "c"), 4)
    check_max_len(encode(bert_tokenizer, "a b", "c"), 5)


def test_very_long_text_aligns_every_token(bert_tokenizer):
    words = ["word", "antidisestablishment", "\u200b", "x"] * 5000  # 20k words (one pass: well under a second)
    enc = encode(bert_tokenizer, " ".join(words))
    assert enc.h == 20000
    w = enc.word_index[enc.word_index >= 0]
    assert (np.diff(w) >= 0).all() and set(w.tolist()) == set(range(20000))


def test_bucket():
    assert [bucket(n) for n in (0, 1, 16, 17, 33, 100, 128, 129, 3000)] == [16, 16, 16, 32, 64, 128, 128, 256, 4096]
