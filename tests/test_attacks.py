"""Attacks: transformations, constraints, the search, the harness's queries / budget / cache, and an end-to-end
attack run on a tiny model (plain and smoothed), resumed."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein

from attacks import constraints as C
from attacks.harness import BudgetExhausted, Queries, smoothed_scorer
from attacks.recipes import Recipe, deepwordbug
from attacks.resources import Neighbours, WordNet, stopwords
from attacks.search import greedy_wir
from attacks.text import AttackText
from attacks.transformations import LETTERS, CharEdits, NeighbourSwap
from tests.test_train import tiny_setup, trained_run  # noqa: F401

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def keyword_scorer(word: str, strength: float = 0.9):
    """Class 1 with probability ``strength`` iff ``word`` is in the text (as a whole word), else class 0."""
    def score(texts):
        hit = np.array([word in t.split() for t in texts], float)
        p1 = 0.5 + (strength - 0.5) * (2 * hit - 1)
        return np.stack([1 - p1, p1], 1)
    return score


def stubborn_scorer(texts):
    """Never fooled, but every changed character lowers the true class's score a little (so every swap that
    passes the constraints is kept and the search walks through all words)."""
    score = np.array([0.99 - 1e-4 * sum(c.isupper() or c in "qxz" for c in t) - 1e-6 * len(t) for t in texts])
    return np.stack([1 - score, score], 1)


# -- text -----------------------------------------------------------------------------------------------------------
def test_swaps_keep_punctuation_and_word_count():
    t = AttackText.from_string("  \"Great\" movie, really!  ")
    assert t.words == ('"Great"', "movie,", "really!") and t.core(0) == "Great" and t.core(1) == "movie"
    u = t.replace(1, "film").replace(0, "Fine")
    assert u.text == '"Fine" film, really!' and u.modified == {0, 1} and u.words_changed(t) == 2
    assert AttackText.from_string("-- a").attackable() == [1]
    with pytest.raises(ValueError, match="one non-empty word"):
        t.replace(0, "two words")
    with pytest.raises(ValueError, match="empty text"):
        AttackText.from_string("  ")


# -- transformations ----------------------------------------------------------------------------------------------
def test_char_edits_are_one_edit_of_letters():
    rng = np.random.default_rng(0)
    t = AttackText.from_string(" ".join(WORDS))
    for _ in range(200):
        i = int(rng.integers(len(t)))
        word = t.core(i)
        cands = CharEdits()(t, i, rng)
        assert 1 <= len(cands) <= 4 and word not in cands
        for c in cands:
            d = Levenshtein.distance(word, c)
            assert d in (1, 2), (word, c)  # a neighbour swap costs 2 edits, the others 1
            assert set(c) - set(word) <= set(LETTERS)
    assert CharEdits()(AttackText.from_string("a b"), 0, rng) == []  # one-letter words are left alone


def test_neighbour_swap_respects_cosine_count_and_case():
    words = ["good", "great", "fine", "bad", "table"]
    vec = np.array([[1, 0.0], [0.95, 0.31], [0.8, 0.6], [0.9, -0.44], [0, 1]])
    nb = Neighbours(words, vec)
    assert nb.lookup("good", 2, 0.5) == ["great", "bad"]  # nearest first, at most 2
    assert nb.lookup("good", 10, 0.85) == ["great", "bad"] and nb.lookup("nope", 5, 0.0) == []
    t = AttackText.from_string("Good day")
    assert NeighbourSwap(nb, 3, 0.5)(t, 0, np.random.default_rng(0)) == ["Great", "Bad", "Fine"]


@pytest.fixture
def tiny_wordnet(tmp_path):
    """A WordNet dictionary of three adjective synsets and one noun: good <-> bad are antonyms."""
    def data(lines):
        return "  1 license header line\n" + "".join(lines)

    adj = ["00000100 00 a 01 good 0 001 ! 00000200 a 0101 | of high quality\n",
           "00000200 00 a 02 bad 0 big_bad 0 001 ! 00000100 a 0101 | of low quality\n",
           "00000300 00 s 01 fine 0 000 | satisfactory\n"]
    (tmp_path / "data.adj").write_text(data(adj))
    (tmp_path / "data.noun").write_text(data(["00000400 00 n 01 movie 0 000 | a film\n"]))
    (tmp_path / "data.verb").write_text(data([]))
    (tmp_path / "data.adv").write_text(data([]))
    (tmp_path / "index.adj").write_text("  1 header\ngood a 1 1 ! 1 0 00000100\nbad a 1 1 ! 1 0 00000200\n"
                                        "fine a 1 0 1 0 00000300\n")
    (tmp_path / "index.noun").write_text("  1 header\nmovie n 1 0 1 0 00000400\n")
    (tmp_path / "index.verb").write_text("  1 header\n")
    (tmp_path / "index.adv").write_text("  1 header\n")
    (tmp_path / "adj.exc").write_text("better good\n")
    return WordNet(tmp_path)


def test_wordnet_parts_of_speech_base_forms_and_antonyms(tiny_wordnet):
    wn = tiny_wordnet
    assert wn.pos("movies") == {"n"} and wn.pos("Good") == {"a"} and wn.pos("better") == {"a"}
    assert wn.pos("the") == set()
    assert wn.antonyms("good") == {"bad"} and wn.antonyms("bad") == {"good"} and wn.antonyms("fine") == set()
    nb = Neighbours(["good", "bad", "fine"], np.array([[1.0, 0], [0.9, 0.1], [0.8, 0.2]]), wordnet=wn)
    assert nb.lookup("good", 5, 0.0) == ["fine"]  # the antonym is gone
    pos = C.PartOfSpeech(wn)
    t = AttackText.from_string("good movie")
    keep, _ = pos([t.replace(0, "fine"), t.replace(0, "movie"), t.replace(0, "zzz")], t, t, 0)
    assert keep.tolist() == [True, False, False]


def test_wordnet_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        WordNet(tmp_path / "nowhere")


def test_sentence_similarity_angular_window_and_reference():
    class Enc:  # embeds a text by its first word's length (unit 2-d vectors)
        def __init__(self):
            self.seen = []

        def encode(self, texts):
            self.seen.append(list(texts))
            a = np.array([len(t.split()[0]) / 10 for t in texts])
            return np.stack([np.cos(a), np.sin(a)], 1)

    enc = Enc()
    orig = AttackText.from_string(" ".join(WORDS))  # 16 words
    cur = orig.replace(0, "al")
    cands = [cur.replace(1, "b"), cur.replace(1, "bravissimo")]
    sim = C.SentenceSimilarity(enc, threshold=0.99, window=15, against_original=False)
    keep, s = sim(cands, cur, orig, 1)
    # windows of 15 words around word 1 start at word 0: the first words are "al", "al" vs "al": identical
    assert enc.seen[-1][0].split()[0] == "al" and np.allclose(s, 1.0) and keep.all()
    sim2 = C.SentenceSimilarity(enc, threshold=0.99, window=None, against_original=True)
    keep, s = sim2(cands, cur, orig, 1)
    angle = abs(0.5 - 0.2)  # "alpha" vs "al"
    assert np.allclose(s, 1 - angle / np.pi) and not keep.any()
    short = AttackText.from_string("a b c")
    assert sim([short.replace(1, "x")], short, short, 1)[0].all()  # shorter than the window: passes


# -- harness ------------------------------------------------------------------------------------------------------
def test_queries_count_budget_and_cache():
    calls = []

    def scorer(texts):
        calls.append(list(texts))
        return np.tile([0.3, 0.7], (len(texts), 1)) + np.random.default_rng(len(calls)).normal(0, 0.01, (len(texts), 2))

    q = Queries(scorer, budget=5)
    a, b = q(["x", "x"])
    assert q.count == 2 and len(calls) == 1 and not np.allclose(a, b)  # a random scorer is asked again
    with pytest.raises(BudgetExhausted):
        q(["y", "z", "w", "v"])
    assert q.count == 2 and len(calls) == 1  # nothing scored beyond the budget
    cached = Queries(scorer, cache=True)
    s1 = cached(["x", "y", "x"])
    s2 = cached(["y"])
    assert cached.count == 2 and np.array_equal(s1[0], s1[2]) and np.array_equal(s1[1], s2[0])


def test_smoothed_scorer_draws_fresh_copies_for_every_query():
    import jax

    class FakeSmoothed:
        num_labels = 2

        def __init__(self):
            self.keys, self.rules = [], []

        def predict_many(self, keys, texts, n, ensemble):
            from ranmask_jax.smoothing import Prediction

            self.keys += [tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in keys]
            self.rules.append(ensemble)
            return [Prediction(0, (0.25, 0.75), (1, 3), 4, 1, 1) for _ in texts]

    sc = FakeSmoothed()
    score = smoothed_scorer(sc, jax.random.key(0), n=4)
    score(["same", "same"])
    score(["same"])
    assert len(set(sc.keys)) == 3
    for rule in ("logit", "onehot"):  # the rule is the engine's (ranmask_jax.ensembles), asked for by name
        assert smoothed_scorer(sc, jax.random.key(0), n=4, ensemble=rule)(["t"]).tolist() == [[0.25, 0.75]]
        assert sc.rules[-1] == rule
    with pytest.raises(ValueError, match="ensemble must be one of"):
        smoothed_scorer(sc, jax.random.key(0), ensemble="mean")


# -- search -------------------------------------------------------------------------------------------------------
def spy_recipe(base: Recipe, log: list):
    inner = base.transformation

    def transformation(text, i, rng):
        log.append(i)
        return inner(text, i, rng)

    return Recipe(base.name, transformation, base.pre, base.constraints, base.wir, base.unk_token)


def test_deepwordbug_stays_within_the_edit_budget_and_spares_stopwords():
    rng = np.random.default_rng(1)
    sw = stopwords("nltk")
    for trial in range(20):
        words = list(rng.choice(WORDS + ["the", "and", "of", "is", "The"], size=int(rng.integers(5, 25))))
        original = AttackText.from_string(" ".join(words))
        limit = int(rng.integers(1, 12))
        visited = []
        recipe = spy_recipe(deepwordbug(max_edit_distance=limit), visited)
        out = greedy_wir(original, 1, Queries(stubborn_scorer), recipe, np.random.default_rng(trial))
        assert out.status == "failed"
        assert Levenshtein.distance(original.text, out.text.text) <= limit
        assert len(visited) == len(set(visited))  # no word transformed twice
        assert all(original.core(i).lower() not in sw for i in visited)  # stopwords never touched
        for a, b in zip(original.words, out.text.words, strict=True):
            if a.lower() in sw:
                assert a == b
        assert out.text.words_changed(original) > 0


def test_most_important_word_first_and_success():
    original = AttackText.from_string("alpha bravo charlie delta echo")
    visited = []
    recipe = spy_recipe(deepwordbug(), visited)
    q = Queries(keyword_scorer("charlie"))
    out = greedy_wir(original, 1, q, recipe, np.random.default_rng(0))
    assert visited[0] == 2 and out.status == "succeeded" and out.final_prediction == 0
    assert out.text.words_changed(original) == 1 and out.text.words[2] != "charlie"
    assert q.count == 1 + 5 + len(CharEdits()(original, 2, np.random.default_rng(0)))  # clean, importance, 1 step


def test_query_budget_stops_the_attack():
    original = AttackText.from_string(" ".join(WORDS))
    q = Queries(stubborn_scorer, budget=25)
    out = greedy_wir(original, 1, q, deepwordbug(), np.random.default_rng(0))
    assert out.status == "failed" and "query budget" in out.note and q.count <= 25


def test_no_improving_candidate_random_fallback_or_skip():
    """When no candidate of a word lowers the true class's score, the original code's search goes on from a random
    candidate (the text keeps changing, one word at a time, seeded); TextAttack upstream's keeps the text."""
    flat = lambda texts: np.tile([0.2, 0.8], (len(texts), 1))  # noqa: E731
    original = AttackText.from_string(" ".join(WORDS[:8]))
    skip = greedy_wir(original, 1, Queries(flat), deepwordbug(), np.random.default_rng(0), fallback="skip")
    assert skip.status == "failed" and skip.text == original
    moved = [greedy_wir(original, 1, Queries(flat), deepwordbug(), np.random.default_rng(s)) for s in (0, 0, 1)]
    assert moved[0].status == "failed" and moved[0].text.words_changed(original) == 8  # every word, once
    assert moved[0].text == moved[1].text != moved[2].text
    with pytest.raises(ValueError, match="fallback must be one of random, skip"):
        greedy_wir(original, 1, Queries(flat), deepwordbug(), np.random.default_rng(0), fallback="best")


def test_success_returns_the_most_similar_of_the_leading_successes():
    """TextAttack ranks the winning step's candidates by score and picks the most similar among the successful
    ones BEFORE the first unsuccessful one: here the ranking is won (similarity 0.2), lost, won (0.9): the first."""
    def scorer(texts):  # true class 0; scores by the first word (the importance probes: as the clean text)
        table = {"win1": [0.2, 0.7, 0.1], "lose": [0.34, 0.33, 0.33], "win2": [0.45, 0.55, 0.0]}
        return np.array([table.get(t.split()[0], [0.9, 0.05, 0.05]) for t in texts])

    def swap(text, i, rng):
        return ["win1", "lose", "win2"] if i == 0 else []

    def similarity(cands, cur, original, i):
        return np.ones(len(cands), bool), np.array([{"win1": 0.2, "lose": 0.5, "win2": 0.9}[c.words[0]]
                                                    for c in cands])

    recipe = Recipe("spy", swap, [], [similarity], wir="unk", similarity_picks=True)
    out = greedy_wir(AttackText.from_string("a b"), 0, Queries(scorer), recipe, np.random.default_rng(0))
    assert out.status == "succeeded" and out.text.words[0] == "win1"
    picks_any = dataclasses.replace(recipe, constraints=[lambda c, *a: (np.ones(len(c), bool), np.array(
        [{"win1": 0.2, "lose": 0.5, "win2": 0.9}[x.words[0]] for x in c]))])
    table = {"win1": [0.2, 0.7, 0.1], "lose": [0.34, 0.33, 0.33], "win2": [0.3, 0.6, 0.1]}
    scorer_won_first = lambda texts: np.array([table.get(t.split()[0], [0.9, 0.05, 0.05])  # noqa: E731
                                               for t in texts])
    out = greedy_wir(AttackText.from_string("a b"), 0, Queries(scorer_won_first), picks_any,
                     np.random.default_rng(0))
    assert out.text.words[0] == "win2"  # both successes lead the ranking: the more similar one


def test_adaptive_attack_searches_on_one_score_and_is_judged_by_another():
    """The search reads a soft score (here: every changed word lowers the true class a little, and past the third
    change the argmax flips), while success is the judge's (true class kept until "delta" is changed): the attack
    goes on past the soft flip, succeeds when the judge says so, and reports the judge's scores; the clean text is
    judged by the judge too."""
    original = AttackText.from_string("alpha bravo charlie delta echo")

    def soft(texts):
        p1 = np.array([0.9 - 0.15 * sum(w not in WORDS for w in t.split()) for t in texts])
        return np.stack([1 - p1, p1], 1)

    judged = []

    def judge(texts):
        judged.extend(texts)
        hit = np.array([t.split()[3] != "delta" for t in texts], float)
        return np.stack([0.3 + 0.5 * hit, 0.7 - 0.5 * hit], 1)

    out = greedy_wir(original, 1, Queries(soft), deepwordbug(), np.random.default_rng(0), judge=Queries(judge))
    assert out.status == "succeeded" and out.text.words[3] != "delta"
    np.testing.assert_allclose(out.final_scores, [0.8, 0.2])
    np.testing.assert_allclose(out.clean_scores, [0.3, 0.7])
    assert judged[0] == original.text and len(judged) >= 2
    plain = greedy_wir(original, 1, Queries(soft), deepwordbug(), np.random.default_rng(0))
    assert plain.status == "succeeded" and plain.text.words_changed(original) == 3  # the soft score's own flip
    wrong = greedy_wir(original, 0, Queries(lambda t: soft(t)[:, ::-1]), deepwordbug(), np.random.default_rng(0),
                       judge=Queries(judge))
    assert wrong.status == "skipped"  # the judge says class 1: the clean text is not attacked


def test_skipped_when_the_clean_text_is_misclassified():
    out = greedy_wir(AttackText.from_string("alpha bravo"), 0, Queries(keyword_scorer("alpha")), deepwordbug(),
                     np.random.default_rng(0))
    assert out.status == "skipped" and out.text.text == "alpha bravo"


def test_a_larger_selection_can_grow_from_a_smaller_one():
    from ranmask_jax.runs import select_indices

    small, big = select_indices(7600, 100, 0), select_indices(7600, 200, 0, grow_from=100)
    assert len(big) == 200 == len(set(big)) and set(small) <= set(big) and list(big) == sorted(big)
    assert list(select_indices(7600, 200, 0, grow_from=100)) == list(big)
    assert len(set(select_indices(7600, 200, 0)) & set(small)) < 20  # without it the two are unrelated draws
    # the added texts are uniform over the rest: each other text's chance is 100 / 7500
    hits = np.zeros(7600)
    for seed in range(300):
        grown = select_indices(7600, 200, seed, grow_from=100)
        hits[np.setdiff1d(grown, select_indices(7600, 100, seed))] += 1
    assert hits.sum() == 300 * 100 and abs(hits[:3800].sum() / hits.sum() - 0.5) < 0.02
    assert hits.var() / hits.mean() < 1.2  # no text far more likely than another (Poisson-like counts)


def test_limit_is_a_nested_seeded_subset_of_the_selection():
    from ranmask_jax.runs import limit_indices, select_indices

    sel = select_indices(7600, 100, 0)
    assert limit_indices(sel, None, 0) is sel and limit_indices(sel, 100, 0) is sel
    subsets = [limit_indices(sel, k, 0) for k in (10, 50, 80)]
    for k, sub in zip((10, 50, 80), subsets, strict=True):
        assert len(sub) == k and set(sub) <= set(sel) and list(sub) == sorted(sub)
    assert set(subsets[0]) <= set(subsets[1]) <= set(subsets[2])
    assert list(limit_indices(sel, 50, 0)) == list(subsets[1])  # every cell with the same limit: the same texts
    assert set(limit_indices(sel, 50, 1)) != set(subsets[1])
    # uniform over the selection, not its first (lowest-index) texts: each position's chance of a 50-subset is 1/2
    hits = np.zeros(100)
    for seed in range(2000):
        hits[np.searchsorted(sel, limit_indices(sel, 50, seed))] += 1
    assert abs(hits[:50].sum() / hits.sum() - 0.5) < 0.02 and hits.min() > 850 and hits.max() < 1150


# -- end to end -----------------------------------------------------------------------------------------------------
def attack_args(run, setup, out, *extra):
    return ["--run-dir", str(run), "--dataset", setup["dev"], "--split", "test", "--recipe", "deepwordbug",
            "--num-examples", "4", "--out", str(out), *extra]


def attack_cli(args):
    """``python -m attacks ARGS`` in a fresh process on the CPU."""
    import os
    import subprocess
    import sys

    from tests.test_train import ROOT

    return subprocess.run([sys.executable, "-m", "attacks", *args], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def rewrite_weights(path, change):
    """Apply ``change`` to the tensors of a safetensors file in place."""
    from safetensors.numpy import load_file, save_file

    t = load_file(path)
    change(t)
    save_file(t, str(path), metadata={"format": "pt"})


def one_ulp(t):
    """The last bit of one weight: a different file, the same model (as a retrain on another machine)."""
    name = next(k for k in t if k.endswith("attention.output.dense.weight"))
    t[name].flat[0] = np.nextafter(t[name].flat[0], np.float32(1))


@pytest.mark.parametrize("ensemble,oracle", [("none", "cache"), ("vote", "cache"), ("vote", "common")])
def test_attack_run_end_to_end_and_resume(trained_run, tiny_setup, tmp_path, ensemble, oracle):  # noqa: F811
    out = tmp_path / ensemble

    def attack(*extra):
        return attack_cli(attack_args(trained_run, tiny_setup, out, "--oracle", oracle, *extra))

    r = attack("--ensemble", ensemble, "--n", "8", "--limit", "2")  # half of the 4 selected, then all of them
    assert r.returncode == 0, r.stderr[-3000:]
    first = (out / "attack.jsonl").read_text().splitlines()
    assert len(first) == 2 and json.loads((out / "summary.json").read_text())["n"] == 2
    r = attack("--ensemble", ensemble, "--n", "8")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "attack.jsonl").read_text().splitlines()]
    assert (out / "attack.jsonl").read_text().splitlines()[:2] == first  # resumed: the limited rows are kept
    assert {r["index"] for r in rows} >= {json.loads(x)["index"] for x in first}
    assert len(rows) == 4 and {r["status"] for r in rows} <= {"skipped", "failed", "succeeded"}
    for row in rows:
        assert row["words"] == len(row["text"].split()) == len(row["perturbed_text"].split())
        assert Levenshtein.distance(" ".join(row["text"].split()), row["perturbed_text"]) <= 30
        if row["status"] == "succeeded":
            assert row["final_prediction"] != row["label"] and row["words_changed"] >= 1
        if ensemble == "none":
            assert row["recheck_prediction"] == row["final_prediction"]
            assert row["forward_passes"] == row["queries"]  # one per distinct text
        elif oracle == "cache":  # fresh copies for each distinct text: at most n = 8 each (fewer when they repeat)
            assert row["queries"] < row["forward_passes"] <= 8 * row["queries"]
        else:  # common keep sets: a candidate pays only for the copies that keep its changed word
            assert 0 < row["forward_passes"] < 8 * row["queries"]
    # the attack has something to do, and does it: rows attacked, some fooled (the model beats chance)
    assert sum(r["status"] != "skipped" for r in rows) >= 2
    if ensemble == "none":
        assert any(r["status"] == "succeeded" for r in rows)
        # the final prediction recomputed outside the attack, from the perturbed text alone
        from ranmask_jax import load_pretrained
        from ranmask_jax.smoothing import SmoothedClassifier

        model, tok, _ = load_pretrained(trained_run)
        sc = SmoothedClassifier(model, tok, 0.3, max_len=32)
        attacked = [r for r in rows if r["status"] != "skipped"]
        again = sc.base_logits([r["perturbed_text"] for r in attacked]).argmax(1)
        assert [r["final_prediction"] for r in attacked] == again.tolist()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 4 and summary["skipped"] + summary["failed"] + summary["succeeded"] == 4
    attacked = summary["failed"] + summary["succeeded"]
    machines = {r["machine"] for r in rows if r["status"] != "skipped"}  # every row says where it was timed
    assert len(machines) == (1 if attacked else 0) and all(r["machine"] for r in rows)
    assert summary["by_machine"] == ({machines.pop(): {"attacked": attacked, "seconds_per_attacked_example":
                                                       pytest.approx(summary["seconds_per_attacked_example"])}}
                                     if attacked else {})
    table = (out / "table.md").read_text()
    assert "| Cln % |" in table and "random fallback" in table
    assert (f"{oracle} oracle" in table) == (ensemble != "none")  # the plain model is deterministic: no oracle
    assert summary["avg_forward_passes"] == pytest.approx(np.mean([r["forward_passes"] for r in rows
                                                                   if r["status"] != "skipped"]))
    again = attack("--ensemble", ensemble, "--n", "8")  # resumes: nothing left to attack, same rows
    assert again.returncode == 0 and (out / "attack.jsonl").read_text().count("\n") == 4
    changed = attack("--ensemble", ensemble, "--n", "16")
    assert changed.returncode == 2 and "different config" in changed.stderr and "Traceback" not in changed.stderr


def test_bert_attack_candidates_and_word_budget(bert_tokenizer):
    from flax import nnx

    from attacks.recipes import bert_attack
    from ranmask_jax.models import build_model, tiny

    mlm = build_model(tiny(vocab_size=len(bert_tokenizer), max_position_embeddings=64), "mlm", rngs=nnx.Rngs(0))

    class Same:  # every text is equally similar: the sentence constraint never binds here
        def encode(self, texts):
            return np.ones((len(texts), 2)) / np.sqrt(2)

    recipe = bert_attack(mlm=(mlm, bert_tokenizer), encoder=Same(), k=8)
    t = AttackText.from_string("the acting, frankly, was unbelievably wooden")
    for i in t.attackable():
        cands = recipe.transformation(t, i, np.random.default_rng(0))
        assert len(cands) <= 8 and all(c.isalpha() and c.lower() != t.core(i).lower() for c in cands)
    swapped = t.replace(1, recipe.transformation(t, 1, np.random.default_rng(0))[0])
    assert swapped.words[1].endswith(",")  # punctuation around the word is kept
    original = AttackText.from_string(" ".join(WORDS[:10]))
    out = greedy_wir(original, 1, Queries(stubborn_scorer), recipe, np.random.default_rng(0))
    assert out.status == "failed" and 1 <= out.text.words_changed(original) <= 4  # at most 40% of 10 words


def test_textattack_adapter_wraps_any_scorer(monkeypatch, bert_tokenizer):
    """The adapter subclasses TextAttack's ModelWrapper (a stand-in module here: TextAttack is optional) and returns
    the scorer's scores; without TextAttack it says how to get it."""
    import sys
    import types
    from abc import ABC, abstractmethod

    from attacks import textattack_adapter

    monkeypatch.setitem(sys.modules, "textattack", None)
    with pytest.raises(ImportError, match="pip install textattack"):
        textattack_adapter.make_wrapper(keyword_scorer("alpha"), bert_tokenizer)

    class ModelWrapper(ABC):
        @abstractmethod
        def __call__(self, text_input_list, **kwargs): ...

    fake = types.ModuleType("textattack")
    wrappers = types.ModuleType("textattack.models.wrappers")
    wrappers.ModelWrapper = ModelWrapper
    monkeypatch.setitem(sys.modules, "textattack", fake)
    monkeypatch.setitem(sys.modules, "textattack.models", types.ModuleType("textattack.models"))
    monkeypatch.setitem(sys.modules, "textattack.models.wrappers", wrappers)
    w = textattack_adapter.make_wrapper(keyword_scorer("alpha"), bert_tokenizer)
    assert isinstance(w, ModelWrapper)
    out = w(["alpha bravo", "bravo"])
    assert out.shape == (2, 2) and out[0].argmax() == 1 and out[1].argmax() == 0
    assert w._tokenize(["alpha bravo"])[0][0] == "[CLS]"  # what TextAttack's tokenize() calls


def test_attack_resumes_on_retrained_weights_only_if_they_answer_the_same(trained_run, tiny_setup, tmp_path):  # noqa: F811
    """Weights retrained on another machine differ in their last bits: the run re-asks its clean queries and
    resumes if the answers agree; weights that answer differently are refused."""
    import shutil

    run, out = tmp_path / "run", tmp_path / "attack"
    shutil.copytree(trained_run, run)
    weights = run / "model" / "model.safetensors"

    def attack(*extra):
        return attack_cli(attack_args(run, tiny_setup, out, "--ensemble", "vote", "--n", "8", *extra))

    r = attack("--limit", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    first = (out / "attack.jsonl").read_text()

    rewrite_weights(weights, one_ulp)
    r = attack()
    assert r.returncode == 0, r.stderr[-3000:]
    assert "answer the same" in r.stderr and (out / "attack.jsonl").read_text().startswith(first)
    cfg = json.loads((out / "attack_config.json").read_text())
    assert len(cfg["earlier_weights"]) == 1 and cfg["earlier_weights"][0]["examples_checked"] == 2
    assert cfg["earlier_weights"][0]["probe_difference"] < 1e-4
    assert cfg["earlier_weights"][0]["model_fingerprint"] != cfg["model_fingerprint"]
    assert len((out / "attack.jsonl").read_text().splitlines()) == 4

    def other_model(t):  # the classifier's answers flip
        name = next(k for k in t if k.startswith("classifier") and k.endswith("weight"))
        t[name] = -t[name]
    rewrite_weights(weights, other_model)
    r = attack()
    assert r.returncode == 2 and "answer differently" in r.stderr and "logits" in r.stderr
    assert "Traceback" not in r.stderr
    assert len((out / "attack.jsonl").read_text().splitlines()) == 4


def test_textfooler_recipe_deletes_for_importance_and_picks_the_most_similar(tiny_wordnet):
    """TextFooler as assembled by its recipe, on tiny resources: importance by deleting each word (the probes sent
    to the model are the text minus one word), the sentence constraint on a 15-word window of the current text at
    threshold 0.840845, and among the successful swaps of the winning step the MOST SIMILAR one, not the one that
    lowers the score most."""
    from attacks.recipes import textfooler

    words = WORDS[:8] + ["good"] + WORDS[8:14]  # 15 words ... then 5 more: longer than the window
    words += ["kilo", "lima", "mike", "oscar", "papa"]
    original = AttackText.from_string(" ".join(words))
    nb = Neighbours(["good", "bad", "fine", "movie"], np.array([[1.0, 0], [0.9, 0.2], [0.95, 0.1], [0, 1.0]]))

    class Enc:  # "fine" and "bad" at these angles (rad) from the reference
        def __init__(self, fine, bad):
            self.seen, self.fine, self.bad = [], fine, bad

        def encode(self, texts):
            texts = list(texts)
            self.seen += texts
            a = np.array([self.fine * ("fine" in t.split()) + self.bad * ("bad" in t.split()) for t in texts])
            return np.stack([np.cos(a), np.sin(a)], 1)

    calls = []

    def scorer(texts):  # class 1 while "good" is there; "bad" lowers it most, "fine" less; each word matters a bit
        calls.append(list(texts))
        out = []
        for t in texts:
            w = t.split()
            p1 = 0.9 if "good" in w else 0.1 if "bad" in w else 0.4 if "fine" in w else 0.45
            out.append(p1 - 0.001 * (20 - len(w)) - 0.0001 * sum(len(x) for x in w) / 100)
        p1 = np.array(out)
        return np.stack([1 - p1, p1], 1)

    # both pass 0.840845 (angular 0.968 and 0.904): the more similar "fine", though "bad" lowers the score most;
    # "fine" at 0.6 rad (0.809) is below the threshold: "bad"
    for fine_angle, want in ((0.1, "fine"), (0.6, "bad")):
        enc = Enc(fine_angle, 0.3)
        recipe = textfooler(neighbours=nb, wordnet=tiny_wordnet, encoder=enc)
        calls.clear()
        out = greedy_wir(original, 1, Queries(scorer), recipe, np.random.default_rng(0))
        assert out.status == "succeeded" and out.text.words[8] == want and out.text.words_changed(original) == 1
        probes = calls[1]
        assert all(len(p.split()) == len(words) - 1 for p in probes)  # deletions, one word each
        assert " ".join(words[:8] + words[9:]) in probes  # the deletion of "good" was probed
        assert calls[2] and all(len(t.split()) == len(words) for t in calls[2])  # "good" is attacked first
        # the similarity read 15-word windows around word 8 of the current text, never the whole text
        assert enc.seen and all(len(t.split()) == 15 for t in enc.seen)
        assert original.window(8, 15) in enc.seen


# -- oracles ----------------------------------------------------------------------------------------------------------
def test_common_scorer_answers_as_all_n_copies_and_pays_only_for_changed_copies(bert_tokenizer):
    """Every text's answer is what classifying all n of its word count's keep sets gives (the votes exactly, every
    rule's scores up to float rounding), whatever was asked before; a text asked again costs nothing, a one-word
    change costs exactly the distinct keep sets that keep that word; small texts use all their keep sets."""
    import jax

    from attacks.harness import common_scorer
    from ranmask_jax import SmoothedClassifier, ensembles
    from tests.classifiers import BagOfWords

    sc = SmoothedClassifier(BagOfWords(len(bert_tokenizer)), bert_tokenizer, rho=0.4, batch_size=64, max_len=64)
    key = jax.random.key(3)
    base = AttackText.from_string("a dull , lifeless and overlong mess of a film that never once finds its footing")
    texts = [base.text, base.replace(4, "dull").text, base.replace(4, "dull").replace(9, "cold").text,
             base.without_word(2), "a short one", base.text]

    def direct(text, rule):
        enc = sc.encode(text)
        keep, w = sc.distinct_keep_sets(jax.random.fold_in(key, enc.h), enc, 60, sc.exact_mode(enc, 60))
        return sc.votes([(enc, keep, w)])[0], keep

    for rule in ensembles.NAMES:
        score = common_scorer(sc, key, n=60, ensemble=rule)
        got = np.concatenate([score([t]) for t in texts])
        want = np.array([direct(t, rule)[0].scores(rule) for t in texts])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    score = common_scorer(sc, key, n=60)
    before = sc.forward_passes
    score([texts[0]])
    first = sc.forward_passes - before
    _, keep = direct(texts[0], "vote")
    assert first == len(keep)  # every distinct copy once
    before = sc.forward_passes
    score([texts[0], texts[1]])
    assert sc.forward_passes - before == int(keep[:, 4].sum()) > 0  # only the copies that keep word 4
    votes = [direct(t, "vote")[0].counts for t in texts[:3]]
    assert [tuple(v) for v in votes] != [tuple(votes[0])] * 3, "the change moves the votes (else weak)"
    with pytest.raises(ValueError, match="ensemble must be one of"):
        common_scorer(sc, key, ensemble="mean")


def test_bert_attack_gives_multi_subword_words_no_candidate_unless_beamed(bert_tokenizer):
    from flax import nnx

    from attacks.transformations import MLMSwap
    from ranmask_jax.models import build_model, tiny

    mlm = build_model(tiny(vocab_size=len(bert_tokenizer), max_position_embeddings=64), "mlm", rngs=nnx.Rngs(0))
    t = AttackText.from_string("the zorbluxing film was good")
    assert len(bert_tokenizer("zorbluxing", add_special_tokens=False)["input_ids"]) > 1
    single, beam = MLMSwap(mlm, bert_tokenizer, k=8), MLMSwap(mlm, bert_tokenizer, k=8, subwords="beam")
    word, ids, logp = beam._analyse(t.text)  # a masked LM sure of "good" + "##s" at the word's two first pieces
    pos = np.flatnonzero(word == 1)
    logp = np.full_like(logp, -20.0)
    vocab = bert_tokenizer.convert_tokens_to_ids
    logp[pos[0], vocab("good")], logp[pos[1:], vocab("##s")] = 0.0, 0.0
    beam._memo = single._memo = {t.text: (word, ids, logp)}
    assert single(t, 1, None) == [] and beam(t, 1, None)[0] == "good" + "s" * (len(pos) - 1)
    single._memo = beam._memo = {}
    assert single(t, 2, None) == beam(t, 2, None) and len(single(t, 2, None)) > 0  # "film": one subword
    with pytest.raises(ValueError, match="subwords must be single or beam"):
        MLMSwap(mlm, bert_tokenizer, subwords="all")


def test_runs_made_before_a_setting_existed_resume_only_with_their_behaviour(tmp_path):
    """A run made before --oracle / --fallback / --mlm-subwords existed, or when "logit" meant the mean raw
    logits, is taken to have had those behaviours: resuming it with others is refused, naming the change."""
    from attacks.run import AttackConfig, ensemble_rule, legacy_settings
    from ranmask_jax.config import check_resume_config

    path = tmp_path / "attack_config.json"

    def old(**kw):
        cfg = {"run_dir": "r", "out": "o", "ensemble": "vote", "cache": False, "n": 100, **kw}
        path.write_text(json.dumps(cfg))

    def resume(**kw):
        cfg = AttackConfig(run_dir="r", out="o", **kw)
        check_resume_config(path, cfg, (), True, extra={"ensemble_rule": ensemble_rule(cfg.ensemble)},
                            write=False, legacy=legacy_settings)

    old()
    with pytest.raises(ValueError, match=r"oracle: 'fresh' -> 'cache'.*fallback: 'skip' -> 'random'"):
        resume()
    resume(oracle="fresh", fallback="skip", mlm_subwords="beam")  # the old behaviour: accepted
    old(cache=True)
    resume(oracle="cache", fallback="skip", mlm_subwords="beam")
    old(ensemble="logit")  # then "logit" meant what "meanlogit" means now
    with pytest.raises(ValueError, match=r"ensemble_rule: 'softmax of the mean raw logits' -> 'softmax of the mean "
                                         r"L2-normalised logits'"):
        resume(ensemble="logit", oracle="fresh", fallback="skip", mlm_subwords="beam")


def test_shared_scorer_is_fresh_copies_shared_within_a_call(bert_tokenizer):
    """The shared oracle: every call draws new keep sets; each text's answer is exactly the classification of its n
    copies under them (so it is distributed as n fresh copies: over many calls, every candidate's mean vote share
    matches the exact share over all C(h, k) keep sets, at every changed position and for a two-word change), and
    a call pays once for the copies its texts share: the current text's, plus per candidate those keeping its
    changed word."""
    import jax

    from attacks.harness import common_scorer
    from ranmask_jax import SmoothedClassifier
    from tests.classifiers import BagOfWords

    sc = SmoothedClassifier(BagOfWords(len(bert_tokenizer)), bert_tokenizer, rho=0.5, batch_size=64, max_len=64)
    cur = AttackText.from_string("the movie was gripping funny warm")  # h = 6, k = 3: 20 keep sets
    texts = [cur.text] + [cur.replace(i, "fine").text for i in range(6)] + [cur.replace(1, "good").replace(4,
                                                                                                         "fun").text]
    exact = []
    for t in texts:
        enc = sc.encode(t)
        exact.append(sc.votes([(enc, sc.enumerate_keep_sets(enc), np.ones(20))])[0].counts[1] / 20)
    assert sum(0.1 < p < 0.9 for p in exact) == len(texts), "the exact shares split (else the check is weak)"
    key = jax.random.key(7)
    score = common_scorer(sc, key, n=8, per_call=True)
    calls = 300
    shares = np.zeros(len(texts))
    for c in range(1, calls + 1):
        before = sc.forward_passes
        got = score(texts)[:, 1]
        paid = sc.forward_passes - before
        shares += got
        enc = sc.encode(cur.text)
        keep, w = sc.distinct_keep_sets(jax.random.fold_in(jax.random.fold_in(key, c), 6), enc, 8, False)
        direct = [sc.votes([(sc.encode(t), keep, w)])[0].scores("vote")[1] for t in texts]
        np.testing.assert_allclose(got, direct, atol=1e-12)
        changed = [keep[:, i].sum() for i in range(6)] + [(keep[:, 1] | keep[:, 4]).sum()]
        assert paid == len(keep) + sum(changed)  # the current text's copies once, and each changed one
    sd = np.sqrt(np.array(exact) * (1 - np.array(exact)) / (8 * calls))
    assert np.all(np.abs(shares / calls - exact) <= 4.5 * sd + 1e-9), (shares / calls, exact)


def test_paired_comparison_of_two_cells():
    """summarize_attacks.py --paired: on the texts both cells have, Boa of each, the difference with a bootstrap
    interval around it, the discordant texts and McNemar's exact p (here 6 texts robust only under A, 1 only
    under B: two-sided binomial p = 2 * P(X <= 1 | 7, 1/2) = 0.125)."""
    import runpy

    from tests.test_train import ROOT

    paired = runpy.run_path(str(ROOT / "experiments" / "summarize_attacks.py"))["paired"]
    status_a = ["failed"] * 10 + ["succeeded"] * 8 + ["skipped"] * 2 + ["failed"]  # index 20 only in A
    status_b = ["failed"] * 4 + ["succeeded"] * 6 + ["succeeded"] * 7 + ["failed"] + ["skipped"] * 2
    a = {"rows": [{"index": i, "status": s} for i, s in enumerate(status_a)]}
    b = {"rows": [{"index": i, "status": s} for i, s in enumerate(status_b)]}
    t = paired(a, b)
    assert t["texts"] == 20 and (t["only_a"], t["only_b"]) == (6, 1)
    assert t["boa_a"] == 0.5 and t["boa_b"] == 0.25 and t["diff"] == pytest.approx(0.25)
    assert t["p"] == pytest.approx(0.125) and t["ci95"][0] < 0.25 < t["ci95"][1]
    # the table: every two cells of a recipe by default, only the chosen pairs (in their order) with --pair
    table = runpy.run_path(str(ROOT / "experiments" / "summarize_attacks.py"))["paired_table"]
    cells = [{**a, "recipe": "dwb", "defense": "A"}, {**b, "recipe": "dwb", "defense": "B"},
             {**a, "recipe": "tf", "defense": "C"}]
    rows = [r for r in table(cells).splitlines()[2:] if r]
    assert len(rows) == 1 and rows[0].startswith("| dwb | A | B | 20 | 50.0 | 25.0 | +25.0")
    rows = [r for r in table(cells, [(1, 0), (2, 1)]).splitlines()[2:] if r]
    assert [r.split(" | ")[:3] for r in rows] == [["| dwb", "B", "A"], ["| tf / dwb", "C", "B"]]
    assert rows[0].endswith("| 1 / 6 | 0.125 |")


def test_wordnet_synonyms_of_every_synset_through_base_forms(tmp_path):
    """Lemmas of all synsets of the word's base forms, under every part of speech, adjective markers dropped; the
    word itself is not its own synonym; PWWS's swap leaves out phrases."""
    def data(lines):
        return "  1 license header line\n" + "".join(lines)

    (tmp_path / "data.adj").write_text(data(["00000100 00 a 03 good 0 full(a) 0 estimable 0 000 | of quality\n",
                                             "00000200 00 s 02 good 0 in_force 0 000 | in effect\n"]))
    (tmp_path / "data.noun").write_text(data(["00000400 00 n 03 movie 0 film 0 motion_picture 0 000 | a film\n",
                                              "00000500 00 n 02 good 0 goodness 0 000 | benefit\n"]))
    (tmp_path / "data.verb").write_text(data(["00000600 00 v 02 film 0 shoot 0 000 | record\n"]))
    (tmp_path / "data.adv").write_text(data([]))
    (tmp_path / "index.adj").write_text("  1 header\ngood a 2 0 2 0 00000100 00000200\n"
                                        "full a 1 0 1 0 00000100\nestimable a 1 0 1 0 00000100\n")
    (tmp_path / "index.noun").write_text("  1 header\nfilm n 1 0 1 0 00000400\ngood n 1 1 @ 1 0 00000500\n"
                                         "movie n 1 0 1 0 00000400\n")
    (tmp_path / "index.verb").write_text("  1 header\nfilm v 1 0 1 0 00000600\n")
    (tmp_path / "index.adv").write_text("  1 header\n")
    wn = WordNet(tmp_path)
    assert wn.synonyms("good") == ["estimable", "full", "goodness", "in_force"]
    assert wn.synonyms("movies") == ["film", "motion_picture", "movie"]  # base form movie; "movies" is not in it
    assert wn.synonyms("films") == ["film", "motion_picture", "movie", "shoot"]  # noun and verb senses
    assert wn.synonyms("the") == []
    from attacks.transformations import WordNetSwap

    t = AttackText.from_string("a good movie.")
    assert WordNetSwap(wn)(t, 1, None) == ["estimable", "full", "goodness"]
    assert WordNetSwap(wn)(t, 2, None) == ["film"]
    assert t.replace(2, "film").text == "a good film."


def test_pwws_orders_words_by_probability_weighted_saliency():
    """Word "alpha" is the most salient (its unknown token lowers p_y most) but no swap of it moves the score;
    "charlie" is less salient but its swap flips the class: PWWS visits charlie first (plain saliency would visit
    alpha first) and succeeds at once."""
    original = AttackText.from_string("alpha bravo charlie")
    probs = {"[UNK] bravo charlie": 0.5, "alpha [UNK] charlie": 0.8, "alpha bravo [UNK]": 0.7,
             "alpha bravo charlie": 0.9, "alpha2 bravo charlie": 0.9, "alpha bravo2 charlie": 0.85,
             "alpha bravo charlie2": 0.2}

    def scorer(texts):
        p = np.array([probs.get(t, 0.9) for t in texts])
        return np.stack([p, 1 - p], 1)

    visited = []

    def swap(text, i, rng):
        visited.append(i)
        return [text.core(i) + "2"]

    recipe = Recipe("pwws-like", swap, [C.not_modified_yet], [], wir="weighted-saliency")
    q = Queries(scorer)
    out = greedy_wir(original, 0, q, recipe, np.random.default_rng(0))
    # clean, 3 probes, 3 swaps of the original (the weights), then charlie's swap again (the cache answers it)
    assert visited == [0, 1, 2, 2] and out.status == "succeeded" and out.text.text == "alpha bravo charlie2"
    weights = np.exp([0.5, 0.2, 0.3]) / np.exp([0.5, 0.2, 0.3]).sum()
    order = np.argsort(-weights * np.array([0.1, 0.15, 0.8]))
    assert list(order) == [2, 1, 0]
    plain = dataclasses.replace(recipe, wir="unk")
    visited.clear()
    greedy_wir(original, 0, Queries(scorer), plain, np.random.default_rng(0))
    assert visited[0] == 0  # by saliency alone, alpha first


def test_pwws_recipe_spares_stopwords(tiny_wordnet):
    from attacks.recipes import pwws

    recipe = pwws(wordnet=tiny_wordnet)
    t = AttackText.from_string("the good movie")
    assert [all(p(t, i) for p in recipe.pre) for i in range(3)] == [False, True, True]
    assert recipe.transformation(t, 1, None) == []  # "good" has only itself in its synset here
    assert recipe.transformation(t, 0, None) == []


def test_attack_on_safer_draws_substitution_copies_and_resumes(trained_run, tiny_setup, tmp_path):  # noqa: F811
    """SAFER's smoothed classifier under attack: each distinct text costs n copies (the cache oracle), every copy
    classified unmasked; the table's file binds the rows (another table cannot resume them)."""
    from ranmask_jax.safer import PerturbationTable

    sets = {"film": ["film", "movie"], "movie": ["movie", "film"], "plot": ["plot", "story"],
            "story": ["story", "plot"]}
    PerturbationTable({w: [u for u in s if u != w] for w, s in sets.items()}, sets).save(tmp_path / "t.json")
    out = tmp_path / "safer"
    args = attack_args(trained_run, tiny_setup, out, "--ensemble", "vote", "--n", "8", "--safer-table",
                       str(tmp_path / "t.json"))
    r = attack_cli(args)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "attack.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert row["queries"] <= row["forward_passes"] <= 8 * row["queries"] or row["status"] == "skipped"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["defense"].startswith("SAFER vote, n=8") and "SAFER vote" in (out / "table.md").read_text()
    assert attack_cli(args).returncode == 0 and (out / "attack.jsonl").read_text().count("\n") == 4
    sets["plot"] = ["plot", "story", "film"]
    PerturbationTable({"plot": ["story"], "story": ["plot"]}, sets).save(tmp_path / "t.json")
    changed = attack_cli(args)
    assert changed.returncode == 2 and "different config" in changed.stderr
    bad = attack_cli(attack_args(trained_run, tiny_setup, tmp_path / "x", "--ensemble", "none", "--safer-table",
                                 str(tmp_path / "t.json")))
    assert bad.returncode == 2 and "give --ensemble" in bad.stderr and "Traceback" not in bad.stderr


def test_cells_name_the_defense_a_run_was_trained_with(tmp_path):
    """A run trained with train.py --defense is attacked as a plain classifier (--ensemble none), and its cell says
    which training made it (PGD-10, FreeLB, ...): the tables must not call it the undefended model."""
    from attacks.run import AttackConfig, write_summary
    from ranmask_jax.runs import trained_with

    (tmp_path / "train_config.json").write_text(json.dumps({"adv_steps": 10}))
    assert trained_with(tmp_path, {"defense": "pgd"}) == "PGD-10"
    assert trained_with(tmp_path, {"defense": "freelb"}) == "FreeLB"
    assert trained_with(tmp_path / "none", {"defense": "hotflip"}) == "Adv-HotFlip"
    assert trained_with(tmp_path, {"defense": "none"}) is None and trained_with(tmp_path, {}) is None
    rows = [{"index": 0, "label": 1, "status": "failed", "clean_prediction": 1, "final_prediction": 1,
             "recheck_prediction": 1, "queries": 3, "forward_passes": 3, "words_changed": 0, "seconds": 0.1}]
    settings = {"rho": 0.0, "trained_with": "PGD-10"}
    for ens, expected in (("none", "PGD-10-trained model"), ("vote", "RanMASK-0.0 vote")):
        cfg = AttackConfig(run_dir=str(tmp_path), out=str(tmp_path / ens), ensemble=ens)
        (tmp_path / ens).mkdir()
        assert write_summary(tmp_path / ens, rows, cfg, settings, {})["defense"].startswith(expected)
    assert write_summary(tmp_path / "none", rows, cfg, {"rho": 0.0}, {})["defense"].startswith("RanMASK")
    cfg = AttackConfig(run_dir=str(tmp_path), out=str(tmp_path / "none"), ensemble="none")
    assert write_summary(tmp_path / "none", rows, cfg, {"rho": 0.0}, {})["defense"] == "plain model"
