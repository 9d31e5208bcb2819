"""MaskPure: the refill transform, its voting modes, and the certified MaskPure (a deterministic refill keeps
Theorem 1): exhaustive keep sets, and no substitution within the radius flips the answer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ranmask_jax.models import build_model, tiny
from ranmask_jax.purify import RefillError, mlm_refill
from tests.test_soundness import SINGLE, _check_text, _exact_counts, _smoothed


def ids_divisible_by_three(ids, attn, mask_id):
    """A rule that reads every token the classifier sees, refilled ones included."""
    return jnp.sum((ids % 3 == 0) & (attn > 0) & (ids != mask_id), axis=-1)


@pytest.fixture(scope="module")
def refill(bert_tokenizer):
    mlm = build_model(tiny(vocab_size=len(bert_tokenizer), max_position_embeddings=128), "mlm", rngs=nnx.Rngs(3))
    return mlm_refill(mlm, bert_tokenizer, bert_tokenizer)


def test_refill_replaces_every_mask_and_nothing_else(bert_tokenizer, refill):
    fn, params = refill
    mask = bert_tokenizer.mask_token_id
    ids = jnp.array([[101, 2023, mask, 2003, mask, 102, 0, 0]])
    attn = jnp.array([[1, 1, 1, 1, 1, 1, 0, 0]])
    out, a2, t2 = fn(params, jax.random.key(0), ids, attn, jnp.zeros_like(ids))
    out = np.asarray(out)
    assert (out[0, [0, 1, 3, 5, 6, 7]] == np.asarray(ids)[0, [0, 1, 3, 5, 6, 7]]).all()
    assert mask not in out[0, :6] and not set(out[0, [2, 4]]) & set(bert_tokenizer.all_special_ids)
    again, _, _ = fn(params, jax.random.key(1), ids, attn, jnp.zeros_like(ids))
    assert np.array_equal(np.asarray(again), out)  # argmax: the key does not matter
    assert fn.deterministic


def test_refill_decoding_only_the_masks_gives_the_dense_fills(bert_tokenizer):
    """``mask_share``: the masks alone go through the vocabulary decoder, a capped chunk at a time; a batch over the
    cap takes several chunks. Both give the fills of the dense refill, padding and non-masks untouched."""
    mlm = build_model(tiny(vocab_size=len(bert_tokenizer), max_position_embeddings=128), "mlm", rngs=nnx.Rngs(3))
    dense, params = mlm_refill(mlm, bert_tokenizer, bert_tokenizer)
    sparse, _ = mlm_refill(mlm, bert_tokenizer, bert_tokenizer, mask_share=0.3)
    mask = bert_tokenizer.mask_token_id
    rng = np.random.default_rng(0)
    R, T = 24, 40
    ids = rng.integers(1000, 20000, (R, T))
    lengths = rng.integers(5, T + 1, R)
    attn = (np.arange(T) < lengths[:, None]).astype(np.int32)
    ids[:, 0] = 101
    ids[np.arange(R), lengths - 1] = 102
    ids[attn == 0] = 0
    for share in (0.1, 0.9):  # under the cap (0.3 of 960 slots + 32), then over it (three chunks)
        m = (rng.random((R, T)) < share) & (attn > 0) & (ids != 101) & (ids != 102)
        m[:, -1] |= attn[:, -1] == 0  # a mask token in padding is not a mask
        x = jnp.asarray(np.where(m, mask, ids))
        a, t = jnp.asarray(attn), jnp.zeros_like(x)
        want, _, _ = jax.jit(dense)(params, jax.random.key(0), x, a, t)
        got, _, _ = jax.jit(sparse)(params, jax.random.key(0), x, a, t)
        assert np.array_equal(np.asarray(got), np.asarray(want)), share
        assert (np.asarray(got)[np.asarray(x) != mask] == np.asarray(x)[np.asarray(x) != mask]).all()
        assert (np.asarray(got)[m & (attn > 0)] != mask).all()
    with pytest.raises(RefillError, match="mask_share"):
        mlm_refill(mlm, bert_tokenizer, bert_tokenizer, mask_share=0)


def test_refill_needs_the_same_vocabulary(bert_tokenizer, roberta_tokenizer):
    mlm = build_model(tiny(vocab_size=len(roberta_tokenizer)), "mlm", rngs=nnx.Rngs(0))
    with pytest.raises(RefillError, match="vocabulary"):
        mlm_refill(mlm, roberta_tokenizer, bert_tokenizer)


def neighbour_refill(t_params, key, ids, attn, types):
    """A cheap deterministic refill that reads the context like a masked LM: a mask becomes a token id made from
    its two neighbours (masks filled left to right see the fills before them)."""
    mask = t_params
    left = jnp.roll(ids, 1, axis=1)
    right = jnp.roll(ids, -1, axis=1)
    fill = 1000 + (left * 7 + right * 13) % 997
    return jnp.where((ids == mask) & (attn > 0), fill, ids), attn, types


neighbour_refill.deterministic = True


def test_certified_maskpure_no_substitution_breaks_it(bert_tokenizer):
    """The RanMASK certificate of mask -> refill -> classify: rigorous (beta = 1) certificates on exhaustive keep
    sets hold against every single-word substitution (and word pairs where the radius is >= 2), within and beyond
    max_len; the refill is not vacuous: it changes the vote distribution."""
    refill = (neighbour_refill, jnp.int32(bert_tokenizer.mask_token_id))
    certified = tried = moved = 0
    for text in SINGLE:
        for max_len in (12, 64):
            c, t, m = _check_text(bert_tokenizer, ids_divisible_by_three, 0.75, max_len, text, transform=refill)
            certified, tried, moved = certified + c, tried + t, moved + m
    assert certified >= 2 and tried >= 100 and moved >= tried // 10, (certified, tried, moved)
    plain, _ = _exact_counts(_smoothed(bert_tokenizer, ids_divisible_by_three, 0, 0.75, 64, histogram=True),
                             SINGLE[1])
    purified, _ = _exact_counts(_smoothed(bert_tokenizer, ids_divisible_by_three, 0, 0.75, 64, histogram=True,
                                          transform=refill), SINGLE[1])
    assert not np.array_equal(plain, purified)


def test_certified_maskpure_with_a_masked_lm_refill(bert_tokenizer, refill):
    """The same property with the real refill (a random tiny masked LM, argmax), on one text beyond max_len."""
    c, t, m = _check_text(bert_tokenizer, ids_divisible_by_three, 0.75, 10, "a b c d e f g h", transform=refill)
    assert c >= 1 and t >= 8, (c, t, m)


def test_a_copy_gets_the_same_refill_and_class_in_any_batch(bert_tokenizer):
    """The base classifier is a function of the copy alone: a copy's fills and f's class do not depend on how many
    rows its batch has, how far it is padded, or how many masks its neighbours hold (the refill's decode path is one,
    whatever the batch; float differences across batch shapes are discussed in docs/CERTIFICATE.md)."""
    mlm = build_model(tiny(vocab_size=len(bert_tokenizer), max_position_embeddings=128), "mlm", rngs=nnx.Rngs(5))
    fn, params = mlm_refill(mlm, bert_tokenizer, bert_tokenizer, mask_share=0.3)
    mask = bert_tokenizer.mask_token_id
    rng = np.random.default_rng(1)
    T = 24
    copy = rng.integers(1000, 20000, T)
    copy[0], copy[T - 1] = 101, 102
    copy[[3, 7, 8, 15]] = mask
    jitted = jax.jit(fn)
    fills = []
    for rows, width, neighbour_share in ((1, T, 0.0), (16, T, 0.1), (16, 48, 0.9), (64, 32, 1.0), (7, 64, 0.5)):
        ids = rng.integers(1000, 20000, (rows, width))
        ids = np.where(rng.random((rows, width)) < neighbour_share, mask, ids)  # neighbours: up to all masks
        attn = np.ones((rows, width), np.int32)
        r = int(rng.integers(rows))
        ids[r] = 0
        ids[r, :T], attn[r] = copy, np.arange(width) < T
        out, _, _ = jitted(params, jax.random.key(rows), jnp.asarray(ids), jnp.asarray(attn), jnp.zeros_like(ids))
        fills.append(np.asarray(out)[r, :T])
    assert all(np.array_equal(f, fills[0]) for f in fills), fills
    assert mask not in fills[0]

    # through the engine: the votes and each copy's class of one text, alone and packed with texts of other lengths
    from ranmask_jax.masking import UniformKeepSets
    from ranmask_jax.smoothing import SmoothedClassifier

    def reads_every_fill(p, ids, attn, types):  # f reads every token, refilled ones included
        return jax.nn.one_hot(jnp.sum(ids * attn, axis=-1) % 3, 3)

    sc = SmoothedClassifier.from_logits_fn(reads_every_fill, None, bert_tokenizer, UniformKeepSets(0.5),
                                           num_labels=3, max_len=64, transform=fn, transform_params=params,
                                           batch_size=64)
    text = "the quiet film finds its warmth in small and patient moments of grace"
    others = [" ".join(["word"] * n) for n in (3, 9, 30)]
    enc = sc.encode(text)
    keep, weights = sc.distinct_keep_sets(jax.random.key(0), enc, 40, exact=False)
    alone = sc.votes([(enc, keep, weights)], row_labels=True)[0]
    mixed = sc.votes([(sc.encode(o), *sc.distinct_keep_sets(jax.random.key(i), sc.encode(o), 60, exact=False))
                      for i, o in enumerate(others)] + [(enc, keep, weights)], row_labels=True)[-1]
    assert np.array_equal(alone.row_labels, mixed.row_labels) and np.array_equal(alone.counts, mixed.counts)
    assert len(set(alone.row_labels.tolist())) > 1  # the copies' classes differ: the check is not vacuous
