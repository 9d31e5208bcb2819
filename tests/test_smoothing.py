"""The smoothed classifier on a (tiny, random) model: exact mode, sampling, dedup, compilation, devices."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from ranmask_jax.models import build_model, tiny
from ranmask_jax.smoothing import ABSTAIN, SmoothedClassifier


def tiny_classifier(tokenizer, num_labels=2, seed=0):
    cfg = tiny(vocab_size=len(tokenizer), num_labels=num_labels, max_position_embeddings=128)
    return build_model(cfg, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def smoothed(bert_tokenizer):
    return SmoothedClassifier(tiny_classifier(bert_tokenizer), bert_tokenizer, rho=0.4, batch_size=64, max_len=64)


TEXT5 = "a gripping and warm ride"  # h = 5, k = 3, C(5, 3) = 10


def test_exact_mode_enumerates_every_keep_set_once(smoothed):
    cert = smoothed.certify(jax.random.key(0), TEXT5, label=0, n0=100, n=1000)
    assert cert.mode == "exact" and (cert.h, cert.k) == (5, 3) and cert.n == math.comb(5, 3)
    assert sum(cert.counts) == 10
    enc = smoothed.encode(TEXT5)
    keep = smoothed.enumerate_keep_sets(enc)
    assert len({tuple(r) for r in keep}) == 10 and (keep.sum(axis=1) == 3).all()
    # exact: p_lower is the exact vote share and the prediction is the exact argmax
    assert cert.p_lower == max(cert.counts) / 10 and cert.prediction == int(np.argmax(cert.counts))


def test_sampling_converges_to_exact(smoothed):
    exact = smoothed.predict(jax.random.key(1), TEXT5, n=1000)
    sampled = smoothed.predict(jax.random.key(1), TEXT5, n=4000, exact_threshold=0)
    p, phat = exact.scores[0], sampled.scores[0]
    assert sampled.n == 4000 and exact.n == 10
    assert abs(phat - p) <= 4 * math.sqrt(max(p * (1 - p), 1e-4) / 4000)


def test_distinct_copies_classified_once(smoothed):
    enc = smoothed.encode(TEXT5)
    keep = smoothed.sample(jax.random.key(2), enc, 500)
    uniq, weights, logits = smoothed.classify(enc, keep)
    assert len(uniq) <= 10 and weights.sum() == 500 and len(logits) == len(uniq)
    # multiplicity-weighted votes equal votes over all copies
    all_logits = smoothed.logits(enc, keep)
    np.testing.assert_array_equal(np.bincount(all_logits.argmax(1), minlength=2),
                                  np.bincount(logits.argmax(1), weights=weights, minlength=2).astype(int))


def test_same_key_same_certificate(smoothed):
    text = "the movie was a gripping , funny and warm ride with lovely actors"
    a = smoothed.certify(jax.random.key(3), text, label=1, n0=50, n=300)
    b = smoothed.certify(jax.random.key(3), text, label=1, n0=50, n=300)
    assert a == b and a.mode == "sampled"
    enc = smoothed.encode(text)
    s3, s4 = smoothed.sample(jax.random.key(3), enc, 50), smoothed.sample(jax.random.key(4), enc, 50)
    assert not np.array_equal(s3, s4)


def test_no_recompilation_within_a_bucket(bert_tokenizer):
    sc = SmoothedClassifier(tiny_classifier(bert_tokenizer), bert_tokenizer, rho=0.3, batch_size=32, max_len=64)
    for text in ["one two three four five six seven", "a b c d e f g h i j k", "short text here ok ."]:
        sc.predict(jax.random.key(0), text, n=100, exact_threshold=0)
    assert sc.traces == 2  # 16-token bucket: full batches of 32, and 16 rows for the 10 distinct copies of the last
    for text in ["another text of eight words right here", "x y z w v u t s r q p", "tiny one here ."]:
        sc.predict(jax.random.key(1), text, n=100, exact_threshold=0)
    assert sc.traces == 2  # more texts of other lengths in the same bucket: no new compilation
    sc.predict(jax.random.key(0), " ".join(["word"] * 25), n=100, exact_threshold=0)
    assert sc.traces == 3  # the 32-token bucket


def test_small_calls_use_small_batches(smoothed):
    assert [smoothed.batch_rows(m) for m in (1, 10, 16, 17, 40, 64, 500)] == [16, 16, 16, 32, 64, 64, 64]


def test_predict_ensembles_and_abstain(smoothed):
    text = "the movie was a gripping , funny and warm ride"
    for ens in ("vote", "logit", "prob"):
        pr = smoothed.predict(jax.random.key(5), text, n=200, ensemble=ens)
        assert len(pr.scores) == 2 and pr.label in (0, 1)
    pr = smoothed.predict(jax.random.key(5), text, n=200, alpha=1e-300)
    assert pr.label == ABSTAIN and pr.p_value is not None
    with pytest.raises(ValueError, match="ensemble"):
        smoothed.predict(jax.random.key(5), text, ensemble="mean")


def test_mc_beta_certificate_runs_and_is_bounded(smoothed):
    text = "the movie was a gripping , funny and warm ride"
    pc = smoothed.certify(jax.random.key(6), text, label=0, n0=50, n=400, beta="pc", exact_threshold=0)
    mc = smoothed.certify(jax.random.key(6), text, label=0, n0=50, n=400, beta="mc", exact_threshold=0, n_r=50)
    assert pc.counts == mc.counts and mc.beta_mode == "mc"
    assert 0.0 <= mc.beta <= 1.0


def test_label_out_of_range(smoothed):
    with pytest.raises(ValueError, match="label 5"):
        smoothed.certify(jax.random.key(0), TEXT5, label=5)


_MULTI = r"""
import json, jax, numpy as np
from flax import nnx
from ranmask_jax.models import build_model, tiny, load_tokenizer
from ranmask_jax.models.pretrained import _builtin_dir
from ranmask_jax.smoothing import SmoothedClassifier
tok = load_tokenizer(_builtin_dir("minilm-l6"))
model = build_model(tiny(vocab_size=len(tok), max_position_embeddings=128), rngs=nnx.Rngs(0))
sc = SmoothedClassifier(model, tok, rho=0.3, batch_size=64, max_len=64)
text = "the movie was a gripping , funny and warm ride with lovely actors"
cert = sc.certify(jax.random.key(3), text, label=1, n0=50, n=300)
print(json.dumps({"devices": len(jax.devices()), "counts": cert.counts, "radius": cert.radius}))
"""


def test_eight_devices_match_one():
    out = {}
    for n in (1, 8):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
        res = subprocess.run([sys.executable, "-c", _MULTI], env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        out[n] = json.loads(res.stdout.strip().splitlines()[-1])
    assert out[1]["devices"] == 1 and out[8]["devices"] == 8
    assert out[1]["counts"] == out[8]["counts"] and out[1]["radius"] == out[8]["radius"]
