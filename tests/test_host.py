"""Any classifier (``SmoothedClassifier.from_predict_fn``): a host function on masked strings or token ids gives the
same votes, predictions and certificates as the JAX engine on the same keep sets; a PyTorch model and a
transformers pipeline go through it; what it returns is checked as the engine checks logits."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import numpy as np
import pytest

from ranmask_jax import SmoothedClassifier, UniformKeepSets
from ranmask_jax.engine import NonFiniteLogits
from ranmask_jax.masking import canonical_text
from tests.classifiers import BagOfWords

TEXTS = [
    "the movie was a gripping , funny and warm ride",
    "a dull , lifeless and overlong mess of a film that never once finds its footing or its reason to exist",
    "antidisestablishmentarianism \u200b naïve café \x0c résumé – ünïcödé",  # many pieces, a word with no token
    "ok",
]
PAIR = ("A man is sleeping on a couch in the afternoon .", "Nobody is sleeping .")


def bag_host(model, tokenizer=None, max_len=None):
    """The numpy twin of ``BagOfWords``: on ids, or (``tokenizer`` given) on strings it tokenizes itself."""
    table = np.asarray(model.table[...], np.float64)

    def on_ids(ids, attn, types):
        assert ids.dtype == np.int64 and ids.shape == attn.shape == types.shape
        return (table[ids] * attn[..., None]).sum(1)

    def on_text(batch):
        first = [b if isinstance(b, str) else b[0] for b in batch]
        second = None if isinstance(batch[0], str) else [b[1] for b in batch]
        enc = tokenizer(first, second, truncation=True, max_length=max_len, padding=True, return_tensors="np")
        return on_ids(enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64),
                      enc["token_type_ids"].astype(np.int64))

    return on_ids if tokenizer is None else on_text


@pytest.fixture(scope="module")
def three(bert_tokenizer):
    """The JAX engine, the host on ids and the host on strings, one classifier, max_len 24 (TEXTS[1] is cut)."""
    model = BagOfWords(len(bert_tokenizer))
    keep = UniformKeepSets(0.4)
    jx = SmoothedClassifier(model, bert_tokenizer, 0.4, batch_size=64, max_len=24)
    ids = SmoothedClassifier.from_predict_fn(bag_host(model), keep, num_labels=2, inputs="ids",
                                             tokenizer=bert_tokenizer, max_len=24, batch_size=48)
    txt = SmoothedClassifier.from_predict_fn(bag_host(model, bert_tokenizer, 24), keep, num_labels=2,
                                             mask_token="[MASK]", batch_size=37)
    return jx, ids, txt


def test_same_votes_on_the_same_keep_sets(three):
    """Sequence-level parity: each distinct copy gets the same class from all three, and the weighted sums agree."""
    jx, ids, txt = three
    split = 0
    for i, (t, p) in enumerate([(t, None) for t in TEXTS] + [PAIR]):
        enc = jx.encode(t, p)
        keep, w = jx.distinct_keep_sets(jax.random.key(i), enc, 300, False)
        got = [sc.votes([(sc.encode(t, p), keep, w)], row_labels=True)[0] for sc in three]
        for v in got[1:]:
            assert np.array_equal(v.row_labels, got[0].row_labels) and np.array_equal(v.counts, got[0].counts)
            assert np.allclose(v.logit_sum, got[0].logit_sum, rtol=1e-5, atol=1e-3)
            assert np.allclose(v.prob_sum, got[0].prob_sum, rtol=1e-5, atol=1e-3)
        split += 0 < got[0].counts[0] < got[0].n
    assert split >= 3, "the votes split (else the check is weak)"


def test_same_predictions_and_certificates(three):
    """The public API on all three: same keys, same keep sets, same predictions, scores and certificates (sampled
    and exact mode, a pair, Monte Carlo beta), and the counters say what was classified."""
    jx, ids, txt = three
    keys = [jax.random.key(10 + i) for i in range(len(TEXTS))]
    preds = [sc.predict_many(keys, TEXTS, n=200, ensemble="logit") for sc in three]
    certs = [sc.certify_many(keys, TEXTS, [0, 1, 0, 1], n0=30, n=300, beta="mc", n_r=20) for sc in three]
    pair = [sc.certify(jax.random.key(5), PAIR[0], 0, PAIR[1], n0=20, n=100) for sc in three]
    for other in (1, 2):
        assert [p.counts for p in preds[other]] == [p.counts for p in preds[0]]
        assert np.allclose([p.scores for p in preds[other]], [p.scores for p in preds[0]], atol=1e-5)
        assert certs[other] == certs[0] and pair[other] == pair[0]
    assert {c.mode for c in certs[0]} == {"sampled", "exact"}  # "ok" has C(1, 1) = 1 keep set
    for key, t, c in zip(keys, TEXTS, certs[1], strict=True):  # distinct copies: selection + estimation
        enc = jx.encode(t)
        want = len(jx.distinct_keep_sets(jax.random.fold_in(key, 0), enc, 30, c.mode == "exact")[0])
        if c.mode == "sampled" and not c.skipped_estimation:
            want += len(jx.distinct_keep_sets(jax.random.fold_in(key, 1), enc, 300, False)[0])
        assert c.copies == want
    assert ids.forward_passes == txt.forward_passes > 0
    assert ids.calls >= -(-ids.forward_passes // 48) and txt.calls >= -(-txt.forward_passes // 37)


def test_batches_of_any_size_give_the_same_answers(bert_tokenizer):
    """Copies of several texts share a call; the rows come back to the right text and copy whatever the size."""
    model = BagOfWords(len(bert_tokenizer))
    keys = [jax.random.key(i) for i in range(len(TEXTS))]
    seen = []
    runs = []
    for size in (1, 5, 64, 1000):
        fn = bag_host(model, bert_tokenizer, 24)
        sc = SmoothedClassifier.from_predict_fn(lambda b, f=fn: seen.append(len(b)) or f(b), UniformKeepSets(0.4),
                                                num_labels=2, mask_token="[MASK]", batch_size=size)
        runs.append([p.counts for p in sc.predict_many(keys, TEXTS, n=100)])
        assert max(seen) <= size
        seen.clear()
    assert all(r == runs[0] for r in runs)


def test_text_copies_are_the_words_with_masks(bert_tokenizer):
    """The strings the function sees: the canonical words, each masked one as the mask token; a pair's unmasked
    side whole. A copy that masks a changed word is the same string for x and x', whatever whitespace x' uses."""
    import itertools

    seen = []
    sc = SmoothedClassifier.from_predict_fn(lambda b: seen.extend(b) or np.zeros((len(b), 2)), UniformKeepSets(0.5),
                                            num_labels=2, mask_token="<m>", mask_side="second")
    x, x2 = "a  b\tc d\x0cfoot", "a b\u3000c\td ZZZ"  # the last word changed, and the whitespace
    copies = []
    for text in (x, x2):  # k = 3 of h = 5: all C(5, 3) = 10 keep sets (exact mode)
        sc.predict(jax.random.key(0), text, n=10)
        copies.append(list(seen))
        seen.clear()
    words = canonical_text(x).split()
    assert sorted(copies[0]) == sorted(" ".join(w if j in kept else "<m>" for j, w in enumerate(words))
                                       for kept in itertools.combinations(range(5), 3))
    masks_last = [{c for c in cs if c.split()[4] == "<m>"} for cs in copies]
    assert masks_last[0] == masks_last[1] and len(masks_last[0]) == 4
    seen.clear()
    sc.predict(jax.random.key(0), *PAIR, n=4)
    assert all(isinstance(s, tuple) and s[0] == PAIR[0] and s[1].count("<m>") == 2 for s in seen)


def test_torch_minilm_through_ids_matches_the_jax_model(tmp_path, bert_tokenizer):
    """The real MiniLM-L6 weights with a classification head: PyTorch through the host path and the JAX port
    through the engine classify every copy of the same keep sets alike (logits within 1e-4)."""
    import torch
    import transformers as tf

    from ranmask_jax import load_pretrained
    from ranmask_jax.models.pretrained import _builtin_dir

    torch.manual_seed(0)
    tm = tf.BertForSequenceClassification.from_pretrained(str(_builtin_dir("minilm-l6")), num_labels=2).eval()
    with torch.no_grad():
        tm.classifier.weight.mul_(30)  # a head whose votes split
    tm.save_pretrained(str(tmp_path))
    bert_tokenizer.save_pretrained(str(tmp_path))
    model, tok, _ = load_pretrained(tmp_path)

    def torch_fn(ids, attn, types):
        with torch.no_grad():
            return tm(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(attn),
                      token_type_ids=torch.from_numpy(types)).logits

    jx = SmoothedClassifier(model, tok, 0.5, batch_size=32, max_len=32)
    pt = SmoothedClassifier.from_predict_fn(torch_fn, UniformKeepSets(0.5), num_labels=2, inputs="ids",
                                            tokenizer=tok, max_len=32, batch_size=32)
    labels = []
    for i, t in enumerate(TEXTS[:3]):
        enc = jx.encode(t)
        keep, w = jx.distinct_keep_sets(jax.random.key(i), enc, 48, False)
        a, b = (sc.votes([(enc, keep, w)], row_labels=True)[0] for sc in (jx, pt))
        assert np.array_equal(a.row_labels, b.row_labels)
        assert np.abs(a.logit_sum - b.logit_sum).max() <= 1e-4 * w.sum()
        labels.extend(a.row_labels)
    assert 0 < np.mean(labels) < 1, "the votes split (else the check is weak)"


def readme_example() -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return re.search(r"<!-- any-classifier -->\n```python\n(.*?)```", text, re.S).group(1)


def test_readme_example_certifies_a_transformers_pipeline(hf_dir, capsys):
    """The README's example, run as written on a small PyTorch model saved with save_pretrained."""
    code = readme_example()
    assert len(code.strip().splitlines()) <= 14
    model_dir = str(hf_dir("bert", "classification", num_labels=2))
    exec(compile(code, "README.md", "exec"), {"model_dir": model_dir})
    label, radius, copies, calls = capsys.readouterr().out.split()
    # 7 words, k = 5 at rho = 0.3: all C(7, 5) = 21 keep sets (exact mode), one call of up to 64 copies
    assert label in ("LABEL_0", "LABEL_1") and int(radius) >= -1 and (int(copies), int(calls)) == (21, 1)


@pytest.mark.parametrize("out,message,error", [
    (lambda b: np.zeros((len(b), 3)), r"shape \(\d+, 3\) for \d+ inputs; expected \[\d+, 2\]", ValueError),
    (lambda b: np.zeros(len(b)), r"shape \(\d+,\) for", ValueError),
    (lambda b: [[0.0, float("nan")]] + [[0.0, 1.0]] * (len(b) - 1), "NaN or inf scores for 1 of", NonFiniteLogits),
    (lambda b: [[1, "x"]] * len(b), "not a .* array of numbers", ValueError),
])
def test_bad_outputs_are_refused(out, message, error):
    sc = SmoothedClassifier.from_predict_fn(out, UniformKeepSets(0.5), num_labels=2, mask_token="[MASK]")
    with pytest.raises(error, match=message):
        sc.predict(jax.random.key(0), "one two three four five", n=10)
    with pytest.raises(error, match=message):
        sc.certify(jax.random.key(0), "one two three four five", 0, n0=5, n=10)


def test_probabilities_checked_and_used():
    probs = lambda b: np.tile([0.2, 0.8], (len(b), 1))  # noqa: E731
    sc = SmoothedClassifier.from_predict_fn(probs, UniformKeepSets(0.5), num_labels=2, mask_token="[MASK]",
                                            outputs="probs")
    p = sc.predict(jax.random.key(0), "one two three four five", n=10, ensemble="meanlogit")
    assert p.counts == (0, 10) and np.allclose(p.scores, [0.2, 0.8])
    assert np.allclose(sc.base_logits(["a b"]), np.log([[0.2, 0.8]]))
    bad = SmoothedClassifier.from_predict_fn(lambda b: np.tile([0.2, 0.9], (len(b), 1)), UniformKeepSets(0.5),
                                             num_labels=2, mask_token="[MASK]", outputs="probs")
    with pytest.raises(ValueError, match=r"not probabilities .*row sums 1\.1 to 1\.1.*outputs='logits'"):
        bad.predict(jax.random.key(0), "one two three", n=5)


@pytest.mark.parametrize("kw,message", [
    ({"mask_token": None}, "needs mask_token"),
    ({"mask_token": "[MA SK]"}, "needs mask_token"),
    ({"mask_token": ""}, "needs mask_token"),
    ({"inputs": "ids"}, "needs the classifier's tokenizer and max_len"),
    ({"inputs": "tokens", "mask_token": "x"}, "inputs must be one of text, ids"),
    ({"outputs": "scores", "mask_token": "x"}, "outputs must be one of logits, probs"),
    ({"num_labels": 1, "mask_token": "x"}, "num_labels must be >= 2"),
    ({"batch_size": 0, "mask_token": "x"}, "batch_size must be an integer >= 1"),
])
def test_bad_arguments(kw, message):
    args = {"num_labels": 2, **kw}
    with pytest.raises(ValueError, match=message):
        SmoothedClassifier.from_predict_fn(lambda b: None, UniformKeepSets(0.5), **args)
    with pytest.raises(TypeError, match="must be callable"):
        SmoothedClassifier.from_predict_fn("model", UniformKeepSets(0.5), num_labels=2, mask_token="x")
