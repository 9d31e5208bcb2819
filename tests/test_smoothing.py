"""The smoothed classifier: exact mode, sampling, dedup, ensembles, compilation, devices. The statistical checks use
a base classifier whose votes split between the classes (``tests.classifiers.BagOfWords``) and assert that they do;
the compilation checks use the tiny transformer."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ranmask_jax.masking import UniformKeepSets, bucket
from ranmask_jax.models import build_model, tiny
from ranmask_jax.smoothing import ABSTAIN, SmoothedClassifier, dedup
from tests.classifiers import BagOfWords


def tiny_classifier(tokenizer, num_labels=2, seed=0):
    cfg = tiny(vocab_size=len(tokenizer), num_labels=num_labels, max_position_embeddings=128)
    return build_model(cfg, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def smoothed(bert_tokenizer):
    return SmoothedClassifier(BagOfWords(len(bert_tokenizer)), bert_tokenizer, rho=0.4, batch_size=64, max_len=64)


TEXT5 = "a gripping and warm ride"  # h = 5, k = 3, C(5, 3) = 10
TEXT = "the movie was a gripping , funny and warm ride"


def split(counts) -> bool:
    """Both classes got votes: a check on these votes compares something."""
    return min(counts) > 0


def test_exact_mode_enumerates_every_keep_set_once(smoothed):
    cert = smoothed.certify(jax.random.key(0), TEXT5, label=0, n0=100, n=1000)
    assert cert.mode == "exact" and (cert.h, cert.k) == (5, 3) and cert.n == math.comb(5, 3)
    assert sum(cert.counts) == 10 and split(cert.counts)
    enc = smoothed.encode(TEXT5)
    keep = smoothed.enumerate_keep_sets(enc)
    assert len({tuple(r) for r in keep}) == 10 and (keep.sum(axis=1) == 3).all()
    # exact: p_lower is the exact vote share and the prediction is the exact argmax
    assert cert.p_lower == max(cert.counts) / 10 and cert.prediction == int(np.argmax(cert.counts))


def test_sampling_converges_to_exact(smoothed):
    exact = smoothed.predict(jax.random.key(1), TEXT5, n=1000)
    sampled = smoothed.predict(jax.random.key(1), TEXT5, n=4000, exact_threshold=0)
    p, phat = exact.scores[0], sampled.scores[0]
    assert sampled.n == 4000 and exact.n == 10 and split(exact.counts)
    assert abs(phat - p) <= 4 * math.sqrt(max(p * (1 - p), 1e-4) / 4000)


def test_distinct_copies_classified_once(smoothed):
    enc = smoothed.encode(TEXT5)
    keep = smoothed.sample(jax.random.key(2), enc, 500)
    uniq, weights = dedup(keep)
    assert len(uniq) <= 10 and weights.sum() == 500
    # multiplicity-weighted votes and sums equal those over all copies
    once, every = smoothed.votes([(enc, uniq, weights), (enc, keep, np.ones(len(keep)))], row_labels=True)
    np.testing.assert_array_equal(once.counts, every.counts)
    assert split(once.counts)
    np.testing.assert_allclose(once.logit_sum, every.logit_sum, rtol=1e-5)
    np.testing.assert_array_equal(np.bincount(once.row_labels, weights=weights, minlength=2).astype(int),
                                  once.counts)


def test_same_key_same_certificate(smoothed):
    text = "the movie was a gripping , funny and warm ride with lovely actors"
    a = smoothed.certify(jax.random.key(3), text, label=None, n0=50, n=300)
    b = smoothed.certify(jax.random.key(3), text, label=None, n0=50, n=300)
    assert a == b and a.mode == "sampled" and split(a.counts)
    assert smoothed.certify(jax.random.key(4), text, label=None, n0=50, n=300).counts != a.counts
    enc = smoothed.encode(text)
    s3, s4 = smoothed.sample(jax.random.key(3), enc, 50), smoothed.sample(jax.random.key(4), enc, 50)
    assert not np.array_equal(s3, s4)


def test_compile_once_per_bucket(bert_tokenizer):
    sc = SmoothedClassifier(tiny_classifier(bert_tokenizer), bert_tokenizer, rho=0.3, batch_size=32, max_len=64)
    keys = [jax.random.key(i) for i in range(3)]
    sc.predict_many(keys, ["one two three four five six seven", "a b c d e f g h i j k", "short text here ok ."],
                    n=100, exact_threshold=0)
    assert sc.traces == 1  # every copy is <= 16 tokens: one shape (32 rows, 16-token texts, 16-token copies)
    sc.predict_many(keys, ["another text of eight words right here", "x y z w v u t s r q p", "tiny one here ."],
                    n=100, exact_threshold=0)
    assert sc.traces == 1  # other texts in the same buckets: no new compilation
    sc.predict(jax.random.key(1), "and one more short text", n=100, exact_threshold=0)
    assert sc.traces == 2  # its 10 distinct copies run as a small batch of 16 rows
    sc.predict(jax.random.key(1), "and yet one more text", n=100, exact_threshold=0)
    assert sc.traces == 2
    sc.predict(jax.random.key(0), " ".join(["word"] * 25), n=100, exact_threshold=0)
    assert sc.traces == 3  # 27-token copies of a 32-token text: a new bucket
    sc.predict(jax.random.key(2), " ".join(["other"] * 24), n=100, exact_threshold=0)
    assert sc.traces == 3


def test_many_texts_in_one_call_equal_one_at_a_time(bert_tokenizer):
    sc = SmoothedClassifier(BagOfWords(len(bert_tokenizer)), bert_tokenizer, rho=0.4, batch_size=64, max_len=24,
                            texts_per_batch=3)
    texts = ["the movie was a gripping , funny and warm ride", "a dull mess", " ".join(f"w{i}" for i in range(40)),
             "Season grades for every college football team this fall .", "ok", "a b c d e f g h"]
    keys = [jax.random.key(10 + i) for i in range(len(texts))]
    together = sc.certify_many(keys, texts, [None] * len(texts), n0=30, n=200, exact_threshold=20)
    alone = [sc.certify(k, t, None, n0=30, n=200, exact_threshold=20) for k, t in zip(keys, texts, strict=True)]
    assert together == alone
    assert sum(split(c.counts) for c in together) >= 3  # the votes compared are not constants
    preds = sc.predict_many(keys, texts, n=50, ensemble="logit")
    for k, t, p in zip(keys, texts, preds, strict=True):
        q = sc.predict(k, t, n=50, ensemble="logit")
        assert p.counts == q.counts and np.allclose(p.scores, q.scores, atol=1e-5)
    assert sum(split(p.counts) for p in preds) >= 3


def test_host_copy_lengths_match_the_device(bert_tokenizer, roberta_tokenizer):
    from ranmask_jax.masking import build_masked, copy_lengths, encode

    rng = np.random.default_rng(0)
    cases = [("the movie was a gripping , funny and warm ride", None), (" ".join(f"w{i}" for i in range(60)), None),
             ("a \u200b b antidisestablishmentarianism c", None),
             ("A man plays a guitar on stage in front of a crowd .", "Someone is making music \u200b loudly")]
    for tok in (bert_tokenizer, roberta_tokenizer):
        for text, pair in cases:
            for side in ("first", "second", "both"):
                enc = encode(tok, text, pair, mask_side=side)
                keep = rng.random((20, bucket(len(enc.token_ids)))) < 0.5
                keep[:, enc.h:] = False
                for max_len in (8, 13, 32, 512):
                    t = bucket(len(enc.token_ids))
                    _, _, attn = build_masked(**enc.padded(t, tok.pad_token_id), keep=keep, mask_id=1, pad_id=0,
                                              max_len=max_len, out_len=min(t, max_len))
                    np.testing.assert_array_equal(np.asarray(attn).sum(1), copy_lengths(enc, keep, max_len))


def test_any_jittable_classifier_and_a_copy_transform(bert_tokenizer):
    """A plain function as the base classifier, and a transform between masking and the classifier."""
    mask = bert_tokenizer.mask_token_id

    def logits_fn(params, ids, attn, types):  # class 1 iff the copy holds at least `params` mask tokens
        many = (jnp.sum((ids == mask) & (attn > 0), axis=-1) >= params).astype(jnp.float32)
        return jnp.stack([1 - many, many], axis=-1)

    def unmask(t_params, key, ids, attn, types):  # a "refill": every mask token becomes t_params
        return jnp.where(ids == mask, t_params, ids), attn, types

    text = "one two three four five six seven eight nine ten"
    plain = SmoothedClassifier.from_logits_fn(logits_fn, jnp.int32(3), bert_tokenizer, UniformKeepSets(0.5),
                                              num_labels=2, max_len=32)
    pr = plain.predict(jax.random.key(0), text, n=100)
    assert pr.counts == (0, 100) and pr.k == 5  # 5 of 10 words masked: always >= 3 mask tokens
    refilled = SmoothedClassifier.from_logits_fn(logits_fn, jnp.int32(3), bert_tokenizer, UniformKeepSets(0.5),
                                                 num_labels=2, max_len=32, transform=unmask,
                                                 transform_params=jnp.int32(1037))
    assert refilled.predict(jax.random.key(0), text, n=100).counts == (100, 0)
    scores = plain.scores(jax.random.key(1), [text, "a b c d e f"], n=20)
    assert scores.shape == (2, 2) and np.allclose(scores.sum(1), 1)


def test_estimation_streams_in_passes(bert_tokenizer, monkeypatch):
    """n beyond STREAM_CHUNK is drawn in passes (pass c from fold_in(key, c)); the votes equal a host count over
    exactly those keep sets, for every beta; with one pass the key itself is used."""
    import ranmask_jax.engine as engine
    import ranmask_jax.smoothing as smoothing

    three = bert_tokenizer.convert_tokens_to_ids("three")

    def logits_fn(params, ids, attn, types):  # class 1 iff the copy still reads "three"
        hit = jnp.any((ids == three) & (attn > 0), axis=-1).astype(jnp.float32)
        return jnp.stack([1 - hit, hit], axis=-1)

    sc = SmoothedClassifier.from_logits_fn(logits_fn, None, bert_tokenizer, UniformKeepSets(0.5), num_labels=2,
                                           max_len=32, batch_size=16)
    text = "one two three four five six seven eight nine ten eleven twelve"  # "three" is word 2; C(12, 6) = 924
    enc = sc.encode(text)
    key = jax.random.key(7)
    est = jax.random.fold_in(key, 1)

    def host_votes(keeps):
        hits = sum(int(k[:, 2].sum()) for k in keeps)
        return hits, sum(len(k) for k in keeps) - hits

    one = sc.certify(key, text, None, n0=20, n=50, exact_threshold=0)
    hits, misses = host_votes([sc.sample(est, enc, 50)])
    assert one.counts == (misses, hits)
    monkeypatch.setattr(smoothing, "STREAM_CHUNK", 64)
    monkeypatch.setattr(engine, "IN_FLIGHT", 1)
    for beta in ("pc", "mc"):
        cert = sc.certify(key, text, None, n0=20, n=200, exact_threshold=0, beta=beta, n_r=20)
        hits, misses = host_votes([sc.sample(jax.random.fold_in(est, c), enc, m)
                                   for c, m in enumerate((64, 64, 64, 8))])
        assert cert.n == 200 and cert.counts == (misses, hits), beta
        assert 0 < misses < 200 and 0 < hits < 200


def test_non_uniform_keep_sets_have_no_certificate(bert_tokenizer):
    class Weighted(UniformKeepSets):
        certifiable = False

    sc = SmoothedClassifier.from_logits_fn(lambda p, i, a, t: jnp.zeros((i.shape[0], 2)), None, bert_tokenizer,
                                           Weighted(0.5), num_labels=2)
    with pytest.raises(ValueError, match="Weighted keep sets are not uniform"):
        sc.certify(jax.random.key(0), "a b c", None)
    assert sc.predict(jax.random.key(0), "a b c", n=5).n == 3  # C(3, 2) = 3 keep sets, enumerated
    with pytest.raises(TypeError, match="masking.KeepSets"):  # not a keep-set distribution at all
        SmoothedClassifier.from_logits_fn(lambda p, i, a, t: jnp.zeros((i.shape[0], 2)), None, bert_tokenizer, 0.5,
                                          num_labels=2)


def test_a_random_copy_transform_has_no_certificate(bert_tokenizer):
    """A transform that draws from its key (a sampled refill, or noise) makes f random beyond the keep set; the
    engine refuses to certify it unless it declares itself deterministic."""
    def noisy(t_params, key, ids, attn, types):
        flip = jax.random.bernoulli(key, 0.5, ids.shape) & (attn > 0) & (ids > 999)
        return jnp.where(flip, ids + 1, ids), attn, types

    def first_token_parity(p, ids, attn, types):
        odd = (ids[:, 1] % 2).astype(jnp.float32)
        return jnp.stack([1 - odd, odd], -1)

    text = " ".join(f"w{i}" for i in range(30))
    sc = SmoothedClassifier.from_logits_fn(first_token_parity, None, bert_tokenizer, UniformKeepSets(0.1),
                                           num_labels=2, transform=noisy, transform_params=None)
    with pytest.raises(ValueError, match="copy transform is random"):
        sc.certify(jax.random.key(0), text, None, n0=20, n=100, beta="one")
    assert sc.predict(jax.random.key(0), text, n=50).n == 50  # empirical use stays open
    noisy.deterministic = True  # a transform's own declaration is what the engine trusts
    assert sc.certify(jax.random.key(0), text, None, n0=20, n=100, beta="one").n == 100


def test_small_calls_use_small_batches(smoothed):
    from ranmask_jax.engine import text_rows

    assert [smoothed.batch_rows(m) for m in (1, 10, 16, 17, 40, 64, 500)] == [16, 16, 16, 32, 64, 64, 64]
    assert [text_rows(m, 64) for m in (0, 1, 8, 9, 17, 63, 64, 500)] == [8, 8, 8, 16, 24, 64, 64, 64]
    assert text_rows(5, 64, multiple=3) == 9 and text_rows(60, 32) == 32


def test_plain_logits_do_not_depend_on_the_call(hf_dir, bert_tokenizer):
    """base_logits (a plain model's answer, the attacks' oracle against it) gives each text what the PyTorch model
    gives that text alone and unpadded, whatever else shares the call: a small BERT (attention, so padding must be
    masked), row counts from 8 to the full batch, lengths from a few tokens to past max_len (cut by the tokenizer)."""
    import torch
    import transformers as tf

    from ranmask_jax import load_pretrained

    path = hf_dir("bert", "classification", num_labels=2)
    model, tok, _ = load_pretrained(str(path))
    sc = SmoothedClassifier(model, tok, rho=0.3, batch_size=32, max_len=48)
    ref = tf.BertForSequenceClassification.from_pretrained(str(path)).eval()
    rng = np.random.default_rng(0)
    vocab = "good bad film plot story dull bright a the of and unbelievably".split()
    texts = [" ".join(rng.choice(vocab, size=int(n))) for n in rng.integers(1, 60, 45)]
    together = sc.base_logits(texts)

    def alone_in_torch(text):
        enc = tok(text, truncation=True, max_length=48, return_tensors="pt")
        with torch.no_grad():
            return ref(**enc).logits[0].numpy()

    for i in (0, 7, 31, 44):
        assert np.allclose(together[i], alone_in_torch(texts[i]), atol=1e-4)
        assert np.allclose(sc.base_logits([texts[i]])[0], together[i], atol=1e-5)
    for m in (3, 9, 20):
        assert np.allclose(sc.base_logits(texts[:m]), together[:m], atol=1e-5)


def test_predict_ensembles_and_abstain(smoothed, bert_tokenizer):
    """Each ensemble against an independent computation: every keep set (exact mode), each copy written as a string
    with the mask token in place of its masked words, tokenized and classified by the model directly."""
    import itertools

    words = TEXT5.split()
    model = BagOfWords(len(bert_tokenizer))  # the fixture's weights (same seed)
    logits = []
    for kept in itertools.combinations(range(len(words)), 3):
        copy = " ".join(w if i in kept else bert_tokenizer.mask_token for i, w in enumerate(words))
        enc = bert_tokenizer(copy, return_tensors="np")
        logits.append(np.asarray(model(jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"])))[0])
    logits = np.array(logits, np.float64)  # [10, 2]
    votes = np.bincount(logits.argmax(1), minlength=2)
    assert split(votes)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    mean = logits.mean(0)
    unit = (logits / np.linalg.norm(logits, axis=1, keepdims=True)).mean(0)
    want = {"vote": votes / 10, "meanlogit": np.exp(mean) / np.exp(mean).sum(), "prob": probs.mean(0),
            "logit": np.exp(unit) / np.exp(unit).sum()}
    for ens, scores in want.items():
        pr = smoothed.predict(jax.random.key(5), TEXT5, n=200, ensemble=ens)
        assert pr.n == 10 and pr.counts == tuple(votes)
        np.testing.assert_allclose(pr.scores, scores, rtol=1e-5, atol=1e-6)
        assert pr.label == int(np.argmax(scores))
    # abstain: sampled votes split near evenly are not separated at any sensible level; a lopsided text is
    near = smoothed.predict(jax.random.key(5), TEXT, n=200, alpha=0.05, exact_threshold=0)
    shares = np.array(near.counts) / 200
    assert near.p_value is not None
    assert (near.label == ABSTAIN) == (near.p_value > 0.05)
    assert smoothed.predict(jax.random.key(5), TEXT, n=200, alpha=1e-300, exact_threshold=0).label == ABSTAIN
    if shares.max() >= 0.65:
        assert near.label == int(np.argmax(near.counts))
    with pytest.raises(ValueError, match="ensemble"):
        smoothed.predict(jax.random.key(5), TEXT, ensemble="mean")


def test_mc_beta_certificate_runs_and_is_bounded(smoothed):
    """Monte Carlo beta on a text whose estimation votes split, certified for g's own class: beta strictly between
    0 and 1, and a radius between the rigorous one (beta = 1) and h."""
    text = "it 's not the worst thing , but it is n't good either"  # about 3 : 1 votes
    pc = smoothed.certify(jax.random.key(6), text, label=None, n0=50, n=400, beta="pc", exact_threshold=0)
    mc = smoothed.certify(jax.random.key(6), text, label=None, n0=50, n=400, beta="mc", exact_threshold=0, n_r=50)
    assert not mc.skipped_estimation and mc.n == 400 and split(mc.counts)
    assert pc.counts == mc.counts and mc.beta_mode == "mc" and mc.prediction == pc.prediction
    assert mc.p_lower > 0.5 and 0.0 < mc.beta < 1.0
    assert mc.radius_one <= mc.radius_mc <= (mc.h if mc.p_lower > 0.5 else -1)
    # against the exact value: every keep set classified once, beta(d) averaged over EVERY set of d words
    import itertools

    enc = smoothed.encode(text)
    keep = smoothed.enumerate_keep_sets(enc)[:, :enc.h]
    labels = smoothed.votes([(enc, keep, np.ones(len(keep)))], row_labels=True)[0].row_labels
    is_c = labels == mc.prediction
    d = mc.radius_mc + 1  # the d whose beta the certificate reports
    exact = np.mean([is_c[keep[:, list(a)].any(axis=1)].mean() for a in itertools.combinations(range(enc.h), d)])
    assert abs(mc.beta - exact) < 0.1, (mc.beta, exact, d)


def test_label_out_of_range(smoothed):
    with pytest.raises(ValueError, match="label 5"):
        smoothed.certify(jax.random.key(0), TEXT5, label=5)


_MULTI = r"""
import json, jax, numpy as np
from ranmask_jax.models import load_tokenizer
from ranmask_jax.models.pretrained import _builtin_dir
from ranmask_jax.smoothing import SmoothedClassifier
from tests.classifiers import BagOfWords
tok = load_tokenizer(_builtin_dir("minilm-l6"))
sc = SmoothedClassifier(BagOfWords(len(tok)), tok, rho=0.4, batch_size=64, max_len=64)
texts = ["it 's not the worst thing , but it is n't good either", "the movie was a gripping , funny and warm ride"]
certs = sc.certify_many([jax.random.key(3), jax.random.key(4)], texts, [None, None], n0=50, n=300)
logit = sc.predict(jax.random.key(5), texts[0], n=300, ensemble="logit", exact_threshold=0)
print(json.dumps({"devices": len(jax.devices()), "counts": [c.counts for c in certs],
                  "radius": [c.radius_one for c in certs], "scores": logit.scores}))
"""


def test_eight_devices_match_one():
    out = {}
    for n in (1, 8):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
        res = subprocess.run([sys.executable, "-c", _MULTI], env=env, capture_output=True, text=True, timeout=300,
                             cwd=Path(__file__).parent.parent)
        assert res.returncode == 0, res.stderr[-2000:]
        out[n] = json.loads(res.stdout.strip().splitlines()[-1])
    assert out[1]["devices"] == 1 and out[8]["devices"] == 8
    assert all(split(c) for c in out[1]["counts"])  # the votes compared are not constants
    assert out[1]["counts"] == out[8]["counts"] and out[1]["radius"] == out[8]["radius"]
    np.testing.assert_allclose(out[1]["scores"], out[8]["scores"], rtol=1e-5)
