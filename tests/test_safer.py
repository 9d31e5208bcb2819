"""SAFER: the perturbation table, the substitution copies, and the certificate against exact enumeration."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from ranmask_jax.safer import PerturbationTable, certified


def exact_copy_distribution(table: PerturbationTable, words: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """Every copy of ``words`` with its probability (each word with a set drawn uniformly from it)."""
    choices = [table.sets.get(w, [w]) for w in words]
    p = 1.0 / np.prod([len(c) for c in choices])
    return {copy: p for copy in itertools.product(*choices)}


def exact_tv(table, a, b) -> float:
    pa, pb = exact_copy_distribution(table, a), exact_copy_distribution(table, b)
    return 0.5 * sum(abs(pa.get(k, 0.0) - pb.get(k, 0.0)) for k in set(pa) | set(pb))


def perturbations(table, words):
    """Every text made from ``words`` by replacing any words with neighbours."""
    return itertools.product(*[[w, *table.neighbours.get(w, [])] for w in words])


@pytest.fixture
def table():
    """Sets of unequal sizes on purpose: "big" has 4 words in its set, its neighbour "large" 2."""
    neighbours = {"good": ["fine"], "fine": ["good"], "big": ["large", "huge"], "large": ["big"], "huge": ["big"]}
    sets = {"good": ["good", "fine", "nice"], "fine": ["fine", "good", "okay"], "big": ["big", "large", "huge", "vast"],
            "large": ["large", "big"], "huge": ["huge", "big", "vast", "grand"]}
    return PerturbationTable(neighbours, sets)


def test_tv_bound_holds_for_every_perturbation_by_enumeration(table):
    text = ("good", "movie", "big")
    bound = table.tv_bound(text)
    tvs = [exact_tv(table, text, other) for other in perturbations(table, text)]
    assert max(tvs) <= bound + 1e-12
    assert max(tvs) > 0.5 * bound  # not vacuous
    # one word at a time: the per-word bound is the exact TV of its worst neighbour where set sizes agree
    assert exact_tv(table, ("good",), ("fine",)) == pytest.approx(1 - table.worst_ratio("good"))
    # the authors' ratio |T_x & T_w| / |T_x| claims TV(large -> big) = 1 - 2/2 = 0; it is 1/2 (T_big is twice the
    # size): a text with "large" would be "certified" with p_A just above 1/2, and "big" can flip it
    authors = len(set(table.sets["large"]) & set(table.sets["big"])) / len(table.sets["large"])
    assert authors == 1.0 and exact_tv(table, ("large",), ("big",)) == pytest.approx(0.5)
    assert table.tv_bound(("large",)) == pytest.approx(0.5)
    # with at most one change, the worst single word
    one = table.tv_bound(text, max_changes=1)
    assert one == pytest.approx(max(1 - table.worst_ratio(w) for w in text))
    single = [o for o in perturbations(table, text) if sum(a != b for a, b in zip(o, text, strict=True)) <= 1]
    assert max(exact_tv(table, text, o) for o in single) <= one + 1e-12


def test_certified_texts_keep_their_class_under_every_perturbation(table):
    """A deterministic base classifier; p_A by enumeration of the copies; wherever the certificate holds for x, g
    keeps x's class on every x' of the perturbation set, also by enumeration; where it fails, some x' may flip."""
    def f(copy):  # class 1 unless "okay" or "grand" appears
        return 0 if ("okay" in copy or "grand" in copy) else 1

    def p_one(words):
        return sum(p for c, p in exact_copy_distribution(table, words).items() if f(c) == 1)

    checked = 0
    for text in itertools.product(["good", "fine", "movie"], ["big", "large", "huge", "plot"]):
        p = p_one(text)
        if certified(p, table.tv_bound(text)):
            checked += 1
            assert all(p_one(o) > 0.5 for o in perturbations(table, text)), text
    assert checked >= 2
    assert not certified(p_one(("fine", "huge")), table.tv_bound(("fine", "huge")))


def test_build_makes_components_the_sets_and_caps_large_ones():
    rng = np.random.default_rng(0)
    dim = 64
    base = rng.normal(size=(3, dim))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    words, vecs = [], []
    for c, size in enumerate((3, 6)):  # two clusters of near-identical vectors
        for j in range(size):
            words.append(f"w{c}{j}")
            vecs.append(base[c] + 0.02 * rng.normal(size=dim))
    words.append("alone")
    vecs.append(base[2])
    for j in range(300):  # random directions: far from everything (and the mean the centring removes is small)
        words.append(f"noise{j}")
        vecs.append(rng.normal(size=dim))
    t = PerturbationTable.build(words, np.array(vecs), threshold=0.8, max_set=4, remove_top=0)
    assert "alone" not in t.sets and "alone" not in t.neighbours
    small = [w for w in words if w.startswith("w0")]
    for w in small:  # a small component: every word's set is the whole component
        assert sorted(t.sets[w]) == sorted(small) and t.sets[w][0] == w
        assert t.worst_ratio(w) == 1.0
    big = [w for w in words if w.startswith("w1")]
    for w in big:  # a component larger than max_set: the word and its 3 most similar
        assert len(t.sets[w]) == 4 and t.sets[w][0] == w and set(t.sets[w]) <= set(big)
        assert all(w in t.neighbours[u] for u in t.neighbours[w])  # symmetric
    no_antonym = PerturbationTable.build(words, np.array(vecs), threshold=0.8, max_set=4, remove_top=0,
                                         antonyms=lambda w: {"w01"} if w == "w00" else set())
    assert "w01" not in no_antonym.neighbours["w00"] and "w00" not in no_antonym.neighbours["w01"]


def test_substitution_copies_are_uniform_over_each_set(table, tmp_path):
    rng = np.random.default_rng(0)
    copies = table.substitute(["Good", "movie", "big"], rng, 8000)
    assert all(c[1] == "movie" for c in copies)  # no set: kept
    first, third = Counter(c[0] for c in copies), Counter(c[2] for c in copies)
    assert set(first) == {"good", "fine", "nice"} and set(third) == {"big", "large", "huge", "vast"}
    for counts, k in ((first, 3), (third, 4)):
        expected = 8000 / k
        chi2 = sum((v - expected) ** 2 / expected for v in counts.values())
        assert chi2 < 20  # df <= 3: p ~ 2e-4
    table.save(tmp_path / "t.json")
    again = PerturbationTable.load(tmp_path / "t.json")
    assert again.sets == table.sets and again.neighbours == table.neighbours
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a SAFER perturbation table"):
        PerturbationTable.load(tmp_path / "bad.json")


def test_safer_classifier_certifies_soundly_against_the_exact_vote(table):
    """A base classifier over the substitution copies whose exact p_A is known by enumeration: where the certificate
    holds, every perturbation keeps g's class by the exact vote (alpha = 0.05 over 40 seeded texts allows
    at most a couple of false certificates; the check asks for none at these margins)."""
    from ranmask_jax.safer import SaferClassifier

    def f_label(text):
        w = text.split()
        return 0 if ("okay" in w or "grand" in w) else 1

    def logits_fn(texts):
        return np.array([[1.0, 0.0] if f_label(t) == 0 else [0.0, 1.0] for t in texts])

    def exact_p(words, c):
        return sum(p for cp, p in exact_copy_distribution(table, words).items() if f_label(" ".join(cp)) == c)

    sc = SaferClassifier(logits_fn, table, batch_size=64)
    rng = np.random.default_rng(0)
    n_cert = 0
    for words in itertools.product(["good", "fine", "movie"], ["big", "large", "huge", "plot"]):
        text = " ".join(words)
        cert = sc.certify(text, rng, n0=50, n=400)
        assert cert.tv_bound == pytest.approx(table.tv_bound(words))
        if cert.certified:
            n_cert += 1
            assert all(exact_p(o, cert.label) > 0.5 for o in perturbations(table, words)), text
        assert abs(cert.counts[1] / 400 - exact_p(words, 1)) < 0.1  # the estimate is of the exact vote share
    assert n_cert >= 2
    s = sc.scores("good big", rng, 400, "vote")
    assert s.sum() == pytest.approx(1.0) and abs(s[1] - exact_p(("good", "big"), 1)) < 0.1
    assert sc.scores("movie plot", rng, 10, "logit")[1] > 0.5  # no word has a set: every copy is the text


def test_prediction_entropy_of_vote_shares_against_scipy(tmp_path):
    """experiments/prediction_entropy.py (the paper's footnote 4): each text's entropy equals scipy's on its vote
    shares, texts where every copy abstained are left out, and runs are compared on the texts both have, paired."""
    import json
    import runpy
    from pathlib import Path

    from scipy.stats import entropy

    mod = runpy.run_path(str(Path(__file__).resolve().parents[1] / "experiments" / "prediction_entropy.py"))
    rows = [{"index": 0, "counts": [100, 0, 0, 0]}, {"index": 1, "counts": [50, 30, 20, 0]},
            {"index": 2, "counts": [0, 0, 0, 0]}, {"index": 3, "counts": [25, 25, 25, 25]}]
    ent = mod["entropies"](rows)
    assert sorted(ent) == [0, 1, 3]
    for r in rows:
        if r["index"] in ent:
            assert ent[r["index"]] == pytest.approx(entropy(np.asarray(r["counts"], float)), abs=1e-12)
    rng = np.random.default_rng(0)
    sharp = [{"index": i, "counts": [100, 0]} for i in range(40)]
    smooth = [{"index": i, "counts": [int(c), 100 - int(c)]} for i, c in enumerate(rng.integers(50, 90, 41))]
    for name, rs in (("sharp", sharp), ("smooth", smooth)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "certify.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    out = mod["main"]([f"A={tmp_path / 'sharp'}", f"B={tmp_path / 'smooth'}", "--json", str(tmp_path / "e.json")])
    assert out["texts"] == 40 and out["runs"]["A"]["unanimous"] == 1.0
    cmp = out["runs"]["B"]["vs_reference"]
    expected = np.mean([entropy([r["counts"][0], r["counts"][1]]) for r in smooth[:40]])
    assert cmp["diff"] == pytest.approx(expected) and cmp["ci95"][0] > 0 and cmp["p"] < 1e-6
    assert json.loads((tmp_path / "e.json").read_text())["texts"] == 40
