"""LM-based mask sampling: the keep-set distribution against exact successive sampling, exactly k kept, word scores
against the original code's computation, and no certificate."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from ranmask_jax.lm_sampling import LMKeepSets, mlm_word_scores, normalise
from ranmask_jax.masking import bucket, keep_count
from ranmask_jax.models import build_model, tiny
from ranmask_jax.smoothing import SmoothedClassifier
from tests.test_smoothing import tiny_classifier


def successive(w: np.ndarray, m: int) -> dict[frozenset, float]:
    """Exact law of the set of m items drawn one by one without replacement, each with probability proportional
    to its weight among those left (numpy.random.choice(replace=False, p=w))."""
    out: dict[frozenset, float] = {}
    for order in itertools.permutations(range(len(w)), m):
        p, left = 1.0, w.sum()
        for i in order:
            p *= w[i] / left
            left -= w[i]
        out[frozenset(order)] = out.get(frozenset(order), 0.0) + p
    return out


def test_masked_sets_follow_successive_sampling_and_keep_exactly_k(bert_tokenizer):
    text = "alpha bravo charlie delta echo foxtrot"  # h = 6
    weights = np.array([0.05, 0.4, 0.1, 0.25, 0.15, 0.05])
    ks = LMKeepSets(0.5, lambda enc: weights)
    sc = SmoothedClassifier(tiny_classifier(bert_tokenizer), bert_tokenizer, 0.5, max_len=32, keep_sets=ks)
    enc = sc.encode(text)
    k = keep_count(6, 0.5)
    n = 30000
    keep = sc.sample(jax.random.key(0), enc, n)[:, :6]
    assert (keep.sum(1) == k).all() and not keep[:, 6:].any()
    law = successive(weights, 6 - k)
    sets = [frozenset(np.flatnonzero(~row)) for row in keep]
    observed = np.array([sum(s == key for s in sets) for key in law])
    expected = np.array(list(law.values())) * n
    assert np.isclose(expected.sum(), n)
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    p = ks.probabilities(enc)
    assert np.isclose(p.sum(), 1) and np.allclose(p, weights / weights.sum())


def test_lm_sampling_has_no_certificate_and_no_exact_mode(bert_tokenizer):
    ks = LMKeepSets(0.5, lambda enc: np.ones(enc.h))
    sc = SmoothedClassifier(tiny_classifier(bert_tokenizer), bert_tokenizer, 0.5, max_len=32, keep_sets=ks)
    with pytest.raises(ValueError, match="no certificate"):
        sc.certify(jax.random.key(0), "a b c", None)
    pr = sc.predict(jax.random.key(0), "a b c", n=7)
    assert pr.n == 7  # sampled: C(3, 2) = 3 keep sets are never enumerated with uneven weights


def test_normalise_floors_zero_scores():
    p = normalise(np.array([0.0, 2.0, np.nan, 2.0]))
    assert np.isclose(p.sum(), 1) and (p > 0).all() and p[1] == p[3]


def test_word_scores_match_the_original_computation(bert_tokenizer, tmp_path):
    """The original code: the MLM reads the unmasked text; each word's tokens are the tokenizer's encoding of that
    word alone, laid end to end after [CLS]; its score is the mean cross-entropy of those tokens against their own
    ids (tokens beyond max_len: 0); normalised."""
    import torch
    from transformers import AutoModelForMaskedLM

    from ranmask_jax.models import export_pretrained

    cfg = tiny(vocab_size=len(bert_tokenizer), max_position_embeddings=64)
    mlm = build_model(cfg, "mlm", rngs=nnx.Rngs(5))
    export_pretrained(mlm, bert_tokenizer, cfg, tmp_path / "mlm", head="mlm")
    ref = AutoModelForMaskedLM.from_pretrained(str(tmp_path / "mlm")).eval()
    max_len = 12
    scores = mlm_word_scores(mlm, bert_tokenizer, max_len)
    for text in ["the movie was unbelievably good", "a \u200b b internationalization c d e f g h"]:
        sc = SmoothedClassifier(tiny_classifier(bert_tokenizer), bert_tokenizer, 0.5, max_len=max_len)
        enc = sc.encode(text)
        pieces = [bert_tokenizer.encode(w, add_special_tokens=False) for w in text.split()]
        enc_t = bert_tokenizer(text, truncation=True, max_length=max_len, return_tensors="pt")
        with torch.no_grad():
            logits = ref(**enc_t).logits[0]
        ids = enc_t["input_ids"][0]
        loss = torch.nn.functional.cross_entropy(logits, ids, reduction="none").numpy()
        loss[[0, len(ids) - 1]] = 0.0  # [CLS], [SEP]
        want, pos = [], 1
        for p in pieces:
            ls = [loss[i] if i <= max_len - 2 else 0.0 for i in range(pos, pos + len(p))]
            want.append(np.mean(ls) if ls else 0.0)
            pos += len(p)
        np.testing.assert_allclose(scores(enc), normalise(np.array(want)), rtol=2e-4, atol=1e-7)
        assert bucket(len(ids)) >= len(ids)
