"""Word spans, the keep-set sampler and masked-copy construction."""

from __future__ import annotations

import itertools
import math

import jax
import numpy as np
import pytest
from scipy import stats

from ranmask_jax.masking import ALWAYS, bucket_length, build_masked, encode, sample_keep
from tests.conftest import CORPUS


def _sample(seed, h, k, n, width=16):
    return np.asarray(jax.jit(sample_keep, static_argnames=("n", "width"))(jax.random.key(seed), h, k, n=n,
                                                                           width=width))


def test_sampler_exact_size_and_range():
    keep = _sample(0, 11, 4, 2000, width=16)
    assert (keep.sum(axis=1) == 4).all()
    assert not keep[:, 11:].any()
    assert not _sample(0, 5, 0, 10).any()
    assert (_sample(0, 5, 5, 10).sum(axis=1) == 5).all()


def test_sampler_uniform_over_positions_and_subsets():
    h, k, n = 6, 3, 40000
    keep = _sample(1, h, k, n)[:, :h]
    # positions: each word kept with probability k/h
    per_pos = keep.sum(axis=0)
    assert stats.chisquare(per_pos, np.full(h, n * k / h)).pvalue > 1e-3
    # subsets: all C(6, 3) = 20 equally likely
    index = {s: i for i, s in enumerate(itertools.combinations(range(h), k))}
    ids = np.array([index[tuple(np.flatnonzero(row))] for row in keep])
    counts = np.bincount(ids, minlength=len(index))
    assert stats.chisquare(counts).pvalue > 1e-3


def test_sampler_deterministic_for_a_key():
    a, b, c = _sample(7, 9, 4, 100), _sample(7, 9, 4, 100), _sample(8, 9, 4, 100)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def _mask_string(words, keep, mask_token):
    return " ".join(w if kp else mask_token for w, kp in zip(words, keep, strict=True))


def _construct(tok, enc, keep_rows):
    width = bucket_length(len(enc.token_ids), 512)
    p = enc.padded(width, tok.pad_token_id)
    keep = np.zeros((len(keep_rows), width), bool)
    keep[:, :enc.h] = keep_rows
    ids, types, attn = jax.jit(build_masked, static_argnames=("mask_id", "pad_id"))(
        p["token_ids"], p["token_type_ids"], p["word_index"], p["first_of_word"], keep,
        mask_id=tok.mask_token_id, pad_id=tok.pad_token_id)
    return np.asarray(ids), np.asarray(types), np.asarray(attn)


@pytest.mark.parametrize("which", ["bert", "roberta"])
def test_masked_ids_equal_retokenized_masked_string(which, bert_tokenizer, roberta_tokenizer):
    tok = bert_tokenizer if which == "bert" else roberta_tokenizer
    rng = np.random.default_rng(0)
    for text in CORPUS:
        enc = encode(tok, text, max_len=128)
        assert enc.words == tuple(text.split())
        rows = np.array([rng.random(enc.h) < 0.5 for _ in range(8)] + [np.ones(enc.h, bool), np.zeros(enc.h, bool)])
        ids, _, attn = _construct(tok, enc, rows)
        for row, got, m in zip(rows, ids, attn, strict=True):
            expected = tok(_mask_string(enc.words, row, tok.mask_token))["input_ids"]
            assert got[: m.sum()].tolist() == expected, (text, row)
            assert (got[m.sum():] == tok.pad_token_id).all()


def test_pairs_mask_only_the_chosen_side(bert_tokenizer):
    tok = bert_tokenizer
    premise, hyp = "A man plays a guitar on stage .", "Someone is making music ."
    enc = encode(tok, premise, hyp, mask_side="second")
    assert enc.words == tuple(hyp.split())
    rows = np.array([[True, False, True, False, False], [False] * 5])
    ids, types, attn = _construct(tok, enc, rows)
    for row, got, ty, m in zip(rows, ids, types, attn, strict=True):
        masked = _mask_string(enc.words, row, tok.mask_token)
        ref = tok(premise, masked)
        assert got[: m.sum()].tolist() == ref["input_ids"]
        assert ty[: m.sum()].tolist() == ref["token_type_ids"]
    enc1 = encode(tok, premise, hyp, mask_side="first")
    assert enc1.words == tuple(premise.split())
    both = encode(tok, premise, hyp, mask_side="both")
    assert both.h == len(premise.split()) + len(hyp.split())


def test_truncated_words_do_not_count(bert_tokenizer):
    text = " ".join(f"word{i}" for i in range(100))  # several subwords each
    enc = encode(bert_tokenizer, text, max_len=32)
    assert len(enc.token_ids) <= 32
    assert enc.h + enc.truncated_words == 100 and enc.truncated_words > 0
    assert enc.words == tuple(text.split()[: enc.h])
    # the kept prefix is exactly the tokenization of those words
    assert enc.token_ids.tolist() == bert_tokenizer(" ".join(enc.words))["input_ids"]
    assert (enc.word_index[1:-1] >= 0).all() and enc.word_index[0] == ALWAYS


def test_empty_text_is_an_error(bert_tokenizer):
    with pytest.raises(ValueError, match="empty text"):
        encode(bert_tokenizer, "   ")
    with pytest.raises(ValueError, match="side 2"):
        encode(bert_tokenizer, "fine", " ")


def test_bucket_length():
    assert [bucket_length(n, 128) for n in (1, 16, 17, 33, 100, 128)] == [16, 16, 32, 64, 128, 128]
    assert bucket_length(100, 100) == 100
    with pytest.raises(ValueError):
        bucket_length(129, 128)


def test_expected_keep_probability_helper():
    # sanity for the chi-square test above: C(6,3) = 20 subsets
    assert math.comb(6, 3) == 20
