"""Soundness of the rigorous certificate end to end, against the attacker's worst cases.

A deterministic base classifier written here reads what truncation changes (the count of mask tokens that survive
the cut to max_len, or the token at a fixed position); keep sets are enumerated (exact mode), so p_c is exact and a
beta = 1 certificate must hold with probability 1. For every text certified at radius >= 1 (texts at and far
beyond max_len, single texts and pairs), no substitution of a word -- by a very long word, a word with no token, a
word of many pieces -- may change g. This is the property that truncating before masking broke.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ranmask_jax.smoothing import ABSTAIN, SmoothedClassifier

SUBSTITUTES = ["antidisestablishmentarianismpneumonoultramicroscopic", "\u200b", "\u00ad", "\x7f", "\ufeff", "x",
               "unbelievably", "12345678901234567890", "supercalifragilistic-expialidocious"]


@dataclasses.dataclass(frozen=True)
class _Cfg:
    num_labels: int = 2
    max_positions: int = 512


class RuleClassifier(nnx.Module):
    """f(copy) = 1 if ``rule(input_ids, attention_mask) >= threshold`` else 0, as logits [B, 2]. With
    ``histogram=True`` it is a 64-class classifier that answers the score itself, so that one exact vote gives the
    score's distribution over all keep sets. The threshold is state, so changing it does not recompile."""

    def __init__(self, rule, threshold: int, mask_id: int, histogram: bool = False):
        self.cfg = _Cfg(num_labels=64 if histogram else 2)
        self.rule, self.mask_id, self.histogram = rule, mask_id, histogram
        self.threshold = nnx.Variable(jnp.asarray(threshold, jnp.int32))

    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        score = self.rule(input_ids, attention_mask, self.mask_id)  # [B]
        if self.histogram:
            return jax.nn.one_hot(jnp.clip(score, 0, 63), 64)
        one = (score >= self.threshold[...]).astype(jnp.float32)
        return jnp.stack([1.0 - one, one], axis=-1)


def masks_in_window(ids, attn, mask_id):
    return jnp.sum((ids == mask_id) & (attn > 0), axis=-1)


def mask_at_position(pos):
    def rule(ids, attn, mask_id):
        return (ids[:, pos] == mask_id).astype(jnp.int32) * 10 + (ids[:, pos] % 7)

    return rule


def mask_in_second_half(ids, attn, mask_id):
    pos = jnp.arange(ids.shape[1])
    return jnp.sum((ids == mask_id) & (attn > 0) & (pos >= attn.sum(-1, keepdims=True) // 2), axis=-1)


_CACHE: dict = {}


def _smoothed(tok, rule, threshold, rho, max_len, histogram=False, transform=None):
    """One SmoothedClassifier (one set of compilations) per setting; the threshold is swapped in as state.
    ``transform``: ``(fn, params)``, a copy transform between masking and the classifier (MaskPure's refill)."""
    key = (id(tok), rule, rho, max_len, histogram, None if transform is None else id(transform[0]))
    model = RuleClassifier(rule, threshold, tok.mask_token_id, histogram)
    if key not in _CACHE:
        fn, params = transform if transform is not None else (None, None)
        _CACHE[key] = SmoothedClassifier(model, tok, rho, batch_size=256, max_len=max_len, min_keep=1,
                                         transform=fn, transform_params=params)
    else:
        _CACHE[key].update_weights(model)
    return _CACHE[key]


def _exact_counts(sc, text, pair=None):
    pr = sc.predict(jax.random.key(0), text, pair, n=1, exact_threshold=10**6)
    return np.array(pr.counts), pr


def _thresholds(tok, rule, text, pair, rho, max_len, transform=None):
    """Thresholds that make f mostly (75-97%) say one class on x: a classifier an attacker would love to flip."""
    hist, _ = _exact_counts(_smoothed(tok, rule, 0, rho, max_len, histogram=True, transform=transform), text, pair)
    at_least = np.cumsum(hist[::-1])[::-1] / hist.sum()  # P(score >= t)
    share = np.maximum(at_least, 1 - at_least)
    return [int(t) for t in np.flatnonzero((share >= 0.76) & (share <= 0.97))[:2]]


SINGLE = [
    " ".join(f"w{i}" for i in range(12)),  # fits
    "the quintessentially overwrought melodrama never stops congratulating itself on its own profundity",
    "an antidisestablishmentarian film , oddly sentimental and unapologetically schmaltzy , yet charming",
    "a b \u200b c internationalization d e f g localization h",
]
PAIRS = [
    ("A man in an orange vest leans over a pickup truck parked beside the road .",
     "a person is standing near an extraordinarily enormous vehicle"),
    ("Two dogs run .", "the animals are internationally photographed outdoors running quickly together"),
]


def _check_text(tok, rule, rho, max_len, text, pair=None, transform=None):
    """Returns (certified texts, substitutions tried, substitutions that changed p_c)."""
    certified = tried = moved = 0
    for t in _thresholds(tok, rule, text, pair, rho, max_len, transform):
        sc = _smoothed(tok, rule, t, rho, max_len, transform=transform)
        cert = sc.certify(jax.random.key(0), text, None, pair, beta="one", exact_threshold=10**6)
        assert cert.mode == "exact"
        if cert.radius_one < 1:
            continue
        certified += 1
        base, _ = _exact_counts(sc, text, pair)
        words = (pair if pair is not None else text).split(" ")
        for i, new in itertools.product(range(len(words)), SUBSTITUTES):
            changed = list(words)
            changed[i] = new
            joined = " ".join(changed)
            counts, pr = _exact_counts(sc, text if pair is not None else joined, joined if pair is not None else None)
            assert pr.h == cert.h and pr.k == cert.k
            tried += 1
            moved += not np.array_equal(counts, base)
            assert counts.argmax() == cert.prediction and counts.max() > counts.sum() / 2, (text, pair, i, new, counts)
        if cert.radius_one >= 2:  # every pair of positions, one substitute per position
            for i, j in itertools.combinations(range(len(words)), 2):
                changed = list(words)
                changed[i], changed[j] = SUBSTITUTES[0], SUBSTITUTES[(i + j) % len(SUBSTITUTES)]
                joined = " ".join(changed)
                counts, _ = _exact_counts(sc, text if pair is not None else joined,
                                          joined if pair is not None else None)
                tried += 1
                assert counts.argmax() == cert.prediction and counts.max() > counts.sum() / 2
    return certified, tried, moved


@pytest.mark.parametrize("rule", [masks_in_window, mask_at_position(5), mask_in_second_half],
                         ids=["mask-count", "token-at-5", "mask-count-second-half"])
def test_no_substitution_breaks_a_rigorous_certificate(bert_tokenizer, rule):
    certified = tried = moved = 0
    for text in SINGLE:
        for max_len in (10, 16, 64):  # far beyond, just beyond, and within max_len
            c, t, m = _check_text(bert_tokenizer, rule, 0.75, max_len, text)
            certified, tried, moved = certified + c, tried + t, moved + m
    for premise, hyp in PAIRS:
        for max_len in (14, 20):
            c, t, m = _check_text(bert_tokenizer, rule, 0.75, max_len, premise, hyp)
            certified, tried, moved = certified + c, tried + t, moved + m
    # not vacuous: certificates were issued and many substitutions did move the vote
    assert certified >= 4 and tried >= 300 and moved >= tried // 4, (certified, tried, moved)


def test_roberta_tokenizer_too(roberta_tokenizer):
    c, t, m = _check_text(roberta_tokenizer, masks_in_window, 0.75, 12, SINGLE[1])
    c2, t2, m2 = _check_text(roberta_tokenizer, masks_in_window, 0.75, 16, *PAIRS[1])
    assert c + c2 >= 1 and t + t2 > 0


def test_exact_predict_abstains_only_on_exact_ties(bert_tokenizer):
    # 10 keep sets; f = 1 iff the mask lands at position 1 or 2 -> exact votes (6, 4) or similar: no abstention
    sc = _smoothed(bert_tokenizer, mask_at_position(1), 10, 0.4, 64)
    pr = sc.predict(jax.random.key(0), "a gripping and warm ride", alpha=0.05)
    assert pr.n == 10 and sorted(pr.counts) == [4, 6] and pr.label == int(np.argmax(pr.counts))
    sampled = sc.predict(jax.random.key(0), "a gripping and warm ride", n=10, alpha=0.05, exact_threshold=0)
    assert sampled.label == ABSTAIN  # 10 random copies cannot separate 60/40 at level 0.05
    # an exact tie: h = 4, k = 2, f = 1 iff word 1 is masked -> 3 of 6 keep sets
    tie = sc.predict(jax.random.key(0), "one two three four", alpha=0.05)
    assert tie.n == 6 and tie.counts == (3, 3) and tie.label == ABSTAIN


def test_k_zero_exact_mode(bert_tokenizer):
    sc = SmoothedClassifier(RuleClassifier(masks_in_window, 1, bert_tokenizer.mask_token_id), bert_tokenizer, 1.0,
                            min_keep=0, max_len=32)
    cert = sc.certify(jax.random.key(0), "every word is masked here", None, beta="one")
    assert (cert.k, cert.n, cert.mode) == (0, 1, "exact") and cert.radius_one == cert.h == 5


def test_long_and_zero_token_texts_are_classified(bert_tokenizer):
    sc = _smoothed(bert_tokenizer, masks_in_window, 3, 0.5, 16)
    long_text = " ".join(f"word{i}" for i in range(300))
    pr = sc.predict(jax.random.key(0), long_text, n=50)
    assert pr.h == 300 and pr.k == 150 and pr.n == 50
    pr = sc.predict(jax.random.key(0), "a \u200b b", n=50)
    assert pr.h == 3


def test_max_len_beyond_the_positions_is_refused(bert_tokenizer):
    model = RuleClassifier(masks_in_window, 1, bert_tokenizer.mask_token_id)
    with pytest.raises(ValueError, match="exceeds the model's 512 positions"):
        SmoothedClassifier(model, bert_tokenizer, 0.3, max_len=513)


def test_wrong_selection_skips_the_estimation_copies(bert_tokenizer):
    sc = _smoothed(bert_tokenizer, masks_in_window, 0, 0.5, 64)  # f always says 1
    text = " ".join(f"w{i}" for i in range(40))
    wrong = sc.certify(jax.random.key(0), text, 0, n0=20, n=500)
    assert wrong.skipped_estimation and wrong.n == 0 and wrong.radius == -1 and wrong.counts0 == (0, 20)
    right = sc.certify(jax.random.key(0), text, 1, n0=20, n=500)
    assert not right.skipped_estimation and right.n == 500 and right.radius_one >= 0
