"""The sequential plan (ranmask_jax.sequential) against independent computations: the exact probability that a bound
ever exceeds the true p_A (a dynamic programme over the vote counts), brute force over small budgets, exact
enumeration of keep sets, and a seeded simulation of whole certificates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ranmask_jax import sequential as sq
from ranmask_jax.certificate import clopper_pearson_lower, radius_from_bound

GRID = (0.5, 0.6, 0.75, 0.9, 0.95, 0.99, 0.999)


def first_exceeding(bound, t: int, p: float) -> int:
    """The smallest s in [0, t] with bound(s, t) > p (t + 1 if none), by bisection on s (every bound here rises
    with s; checked below)."""
    lo, hi = 0, t + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if bound(mid, t) > p:
            hi = mid
        else:
            lo = mid + 1
    return lo


def crossing_probability(p: float, n_max: int, bound, final=None) -> float:
    """P(the bound exceeds p at some t <= n_max) for Bernoulli(p) votes, exactly: the distribution of the vote
    count among the paths that have not crossed yet, carried forward one copy at a time. ``final(s)``: a second
    bound looked at once, when all n_max copies are in (None: none)."""
    alive = np.zeros(n_max + 1)
    alive[0] = 1.0
    crossed = 0.0
    for t in range(1, n_max + 1):
        nxt = np.zeros(n_max + 1)
        nxt[1:t + 1] = alive[:t] * p
        nxt[:t] += alive[:t] * (1 - p)
        cut = first_exceeding(bound, t, p)
        if t == n_max and final is not None:
            cut = min(cut, first_exceeding(lambda s, _t: final(s), t, p))
        crossed += nxt[cut:t + 1].sum()
        nxt[cut:] = 0.0
        alive = nxt
    return crossed


def test_mixture_bound_rises_with_votes_and_is_the_root_of_the_martingale():
    """mixture_lower is the smallest p0 where log M_t(p0) < log(1/alpha) (checked on a grid of p0, independently of
    the root finder), rises with s, and falls with t at a fixed vote share; all votes for the class has the closed
    form (alpha / (t + 1))^(1/t) under the uniform prior."""
    rng = np.random.default_rng(0)
    grid = np.linspace(1e-6, 1 - 1e-6, 200_001)
    for _ in range(30):
        t = int(rng.integers(1, 3000))
        s = int(rng.integers(1, t + 1))
        low = sq.mixture_lower(s, t, 0.05)
        rejected = sq.log_mixture_martingale(s, t, grid) >= -math.log(0.05)
        below = grid[grid < s / t]
        first_kept = below[~rejected[: len(below)]].min()
        assert abs(low - first_kept) <= 1e-5 + 1e-9, (s, t, low, first_kept)
    for t in (1, 7, 100, 1600):
        assert sq.mixture_lower(t, t, 0.05) == pytest.approx((0.05 / (t + 1)) ** (1 / t), rel=1e-10)
        lows = [sq.mixture_lower(s, t, 0.05) for s in range(t + 1)]
        assert all(a <= b for a, b in zip(lows, lows[1:], strict=False))
        assert lows[0] == 0.0
    assert sq.mixture_lower(90, 100, 0.05) < sq.mixture_lower(900, 1000, 0.05)
    assert sq.mixture_upper(90, 100, 0.05) == pytest.approx(1 - sq.mixture_lower(10, 100, 0.05))
    with pytest.raises(ValueError, match="0 <= s <= t"):
        sq.mixture_lower(5, 4, 0.05)
    with pytest.raises(ValueError, match="alpha"):
        sq.mixture_lower(1, 4, 1.0)


@pytest.mark.parametrize("p", GRID)
def test_the_plans_bound_holds_at_every_sample_size(p):
    """The coverage of the plan's bound, exactly: the probability that the running maximum of the mixture bound
    (alpha / 2) ever exceeds the true p_A over n_max = 400 copies, checked after EVERY copy, plus that the final
    Clopper-Pearson bound (alpha / 2) does, is at most alpha = 0.05, for p_A from 0.5 to 0.999."""
    alpha, n_max = 0.05, 400
    cs = crossing_probability(p, n_max, lambda s, t: sq.mixture_lower(s, t, alpha / 2))
    both = crossing_probability(p, n_max, lambda s, t: sq.mixture_lower(s, t, alpha / 2),
                                final=lambda s: clopper_pearson_lower(s, n_max, alpha / 2))
    assert cs <= alpha / 2 and both <= alpha, (p, cs, both)
    if p <= 0.99:  # the final look is counted (at 0.999 no 400 copies can bound p that high: both are 0)
        assert both > cs


def test_looking_at_clopper_pearson_after_every_block_is_not_valid():
    """The naive plan (an ordinary (1 - alpha) Clopper-Pearson bound checked after every copy, the running maximum
    kept) exceeds p_A far more often than alpha: the same computation that passes the plan's bound fails it."""
    alpha = 0.05
    naive = [crossing_probability(p, 400, lambda s, t: clopper_pearson_lower(s, t, alpha)) for p in (0.6, 0.9)]
    assert min(naive) > 3 * alpha, naive


def test_crossing_probability_is_the_probability_by_simulation():
    """The dynamic programme itself, against a seeded simulation of vote sequences."""
    rng = np.random.default_rng(1)
    p, n_max, alpha = 0.9, 200, 0.05
    exact = crossing_probability(p, n_max, lambda s, t: clopper_pearson_lower(s, t, alpha))
    table = {(s, t): clopper_pearson_lower(s, t, alpha) for t in range(1, n_max + 1) for s in range(t + 1)}
    votes = rng.random((4000, n_max)) < p
    s = np.cumsum(votes, 1)
    hits = np.array([[table[(int(s[r, t - 1]), t)] > p for t in range(1, n_max + 1)] for r in range(len(votes))])
    sim = hits.any(1).mean()
    assert abs(sim - exact) <= 4 * math.sqrt(exact * (1 - exact) / len(votes)), (sim, exact)


def test_stop_rule_never_stops_a_text_whose_radius_the_projection_would_raise_and_never_wastes_a_block():
    """Against brute force on small budgets: for every vote count after every block, if the rule goes on, some
    way the remaining copies can vote raises a radius (no block is spent for nothing); if it stops before the
    budget, the remaining copies voting at the upper end of the confidence sequence would not raise either radius."""
    alpha = 0.05
    for h, k, n_max in ((10, 1, 64), (40, 4, 128), (19, 13, 64)):
        plan = sq.schedule(n_max, 8)
        for j, t in enumerate(plan):
            for s in range(t + 1):
                b = sq.SequentialBound(alpha, n_max)
                for prev in plan[:j]:  # a history that reaches s at t with the same share before
                    b.update(round(s * prev / t), prev)
                b.update(s, t)
                now = sq.radii(b.bound, s / t, h, k)
                best = max((sq.radii(b.best_case(s, t, q), (s + math.ceil((n_max - t) * q)) / n_max, h, k)
                            for q in np.linspace(0, 1, 21)), key=lambda r: r[0] + r[1])
                rule = sq.stop(b, s, t, h, k)
                if not rule:
                    assert t < n_max and (best[0] > now[0] or best[1] > now[1]), (h, k, t, s)
                elif t < n_max:
                    p_up = sq.mixture_upper(s, t, alpha)
                    proj = sq.radii(b.best_case(s, t, p_up), max(s / t, p_up), h, k)
                    assert proj[0] <= now[0] and proj[1] <= now[1]


def test_exact_enumeration_stops_only_when_the_rest_cannot_change_the_result():
    """Brute force: whenever exact_settled says the enumeration may stop, every way the remaining keep sets could
    vote gives the same answer of g and the same radii as the votes seen so far guarantee."""
    h, k, total = 7, 3, 35
    rng = np.random.default_rng(2)
    for _ in range(300):
        seen = int(rng.integers(1, total + 1))
        counts = rng.multinomial(seen, rng.dirichlet([1, 1, 1]))
        c = int(rng.integers(0, 3))
        if not sq.exact_settled(counts, seen, total, c, h, k):
            continue
        rest = total - seen
        outcomes = set()
        for a in range(rest + 1):
            for b in range(rest - a + 1):
                final = counts + np.array([a, b, rest - a - b])
                pred = int(np.argmax(final))
                p = final[pred] / total
                r = (radius_from_bound(p, 1.0, h, k), radius_from_bound(p, p, h, k)) if pred == c and p > 0.5 \
                    else (-1, -1)
                outcomes.add((pred, r))
        assert len(outcomes) == 1, (counts, seen, c, outcomes)


def test_selection_stops_on_a_clear_majority_only():
    assert sq.selection_done(np.array([16, 0]), 0.05)
    assert not sq.selection_done(np.array([9, 7]), 0.05)
    assert not sq.selection_done(np.array([0, 0]), 0.05)
    assert sq.schedule(1600) == [16, 32, 64, 128, 256, 512, 1024, 1600]
    assert sq.schedule(20) == [16, 20] and sq.schedule(10) == [10]


# -- whole certificates ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bow(bert_tokenizer):
    from ranmask_jax import SmoothedClassifier
    from tests.classifiers import BagOfWords

    return SmoothedClassifier(BagOfWords(len(bert_tokenizer)), bert_tokenizer, rho=0.5, batch_size=64, max_len=64)


TEXTS = ["the movie was gripping funny warm and bright",  # h = 8: C(8, 4) = 70 keep sets
         "a dull lifeless and overlong mess of a film that never finds its footing",
         "it is what it is no more and no less than that",
         "good"]


def exact_votes(sc, text):
    enc = sc.encode(text)
    keep = sc.enumerate_keep_sets(enc)
    return sc.votes([(enc, keep, np.ones(len(keep)))])[0].counts, enc.h, sc.keep_count(enc.h)


def test_sequential_exact_mode_gives_the_full_enumerations_certificate(bow):
    """Texts with few keep sets: the sequential enumeration (in a random order, stopping early) gives the answer
    and both radii of classifying every keep set, for every label, with fewer copies where the result settles."""
    import jax

    cheaper = 0
    for i, text in enumerate(TEXTS):
        full = bow.certify(jax.random.key(i), text, None, n=5000, beta="one")
        assert full.mode == "exact"
        for label in range(2):
            seq = bow.certify_sequential_many([jax.random.key(10 + i)], [text], [label], n_max=5000,
                                              exact_threshold=5000, first_block=4)[0]
            want = bow.certify(jax.random.key(i), text, label, n=5000, beta="one")
            assert (seq.mode, seq.prediction, seq.radius_one, seq.radius_pc) == \
                (want.mode, want.prediction, want.radius_one, want.radius_pc), (text, label)
            assert seq.copies <= want.copies
            cheaper += seq.copies < want.copies
    assert cheaper > 0, "no text settled early (else the check is weak)"
    # by default only texts with at most 3 * first_block keep sets are enumerated (C(8, 4) = 70 is sampled)
    modes = [c.mode for c in bow.certify_sequential_many([jax.random.key(0)] * 2, [TEXTS[0], TEXTS[3]], [0, 0])]
    assert modes == ["sampled", "exact"]


def trigger_classifier(tokenizer, rho: float):
    """f answers 1 when a copy keeps any "zebra", else 0: with m zebras among h words, p_0 = C(h - m, k) / C(h, k)
    exactly, with no classifier in the way."""
    import jax.numpy as jnp

    from ranmask_jax import SmoothedClassifier, UniformKeepSets

    zebra = tokenizer.convert_tokens_to_ids("zebra")

    def logits_fn(params, input_ids, attention_mask, token_type_ids=None):
        hit = ((input_ids == zebra) & (attention_mask > 0)).any(-1)
        return jnp.stack([~hit, hit], -1).astype(jnp.float32) * 4.0

    return SmoothedClassifier.from_logits_fn(logits_fn, None, tokenizer, UniformKeepSets(rho), num_labels=2,
                                             batch_size=64, max_len=64)


def test_sequential_certificates_hold_against_exact_p_in_a_seeded_simulation(bert_tokenizer):
    """Sampled mode on texts whose p_A is known in closed form and sits just below the bound a radius needs (so a
    bound that overshoots p_A by a little certifies one word too many): over 402 certificates the radius under
    beta = 1 exceeds the one p_A gives in at most alpha of them (allowing 3 binomial standard deviations). (Here 9 of
    402; the same simulation with a Clopper-Pearson bound at alpha looked at after every block instead gives 48 and
    fails.)"""
    import jax

    sc = trigger_classifier(bert_tokenizer, 0.9)
    texts, truth = [], []
    for h, m in ((36, 4), (44, 2), (19, 3)):  # p_0 = 0.6105, 0.8245, 0.7018; the next radius needs 0.6111, ...
        k = sc.keep_count(h)
        p = math.comb(h - m, k) / math.comb(h, k)
        need = 1.5 - math.comb(h - radius_from_bound(p, 1.0, h, k) - 1, k) / math.comb(h, k)
        assert 0 < need - p < 0.003, (h, m, p, need)
        texts.append(" ".join(["zebra"] * m + ["film"] * (h - m)))
        truth.append(radius_from_bound(p, 1.0, h, k))
    reps = 134
    keys = [jax.random.key(1000 + r) for r in range(reps * len(texts))]
    certs = sc.certify_sequential_many(keys, texts * reps, [0] * len(keys), n0=32, n_max=400, alpha=0.05,
                                       exact_threshold=0, first_block=16)
    over = sum(c.radius_one > truth[j % len(texts)] for j, c in enumerate(certs))
    n = len(certs)
    assert over <= 0.05 * n + 3 * math.sqrt(0.05 * 0.95 * n), over
    assert all(c.plan == "sequential" and c.mode == "sampled" for c in certs)
    assert sum(c.radius_one == truth[j % len(texts)] for j, c in enumerate(certs)) > n / 2  # not all abstentions
    assert len({c.n for c in certs}) > 1, "every text ran the same number of copies (else the stop is untested)"


def test_a_texts_certificate_does_not_depend_on_the_others_in_flight(bow):
    """The stream (texts entering as others finish, here 1 or 3 at a time) gives every text the certificate the
    list call (all at once) gives it, and yields each text once, with the seconds of the rounds it was in."""
    import jax

    texts = TEXTS + ["a very long and winding road that never ends and never starts again today"]
    keys = [jax.random.key(50 + i) for i in range(len(texts))]
    labels = [0, 1, None, 0, 1]
    want = bow.certify_sequential_many(keys, texts, labels, n_max=300, beta="pc")
    for in_flight in (1, 3):
        got = list(bow.certify_sequential_stream(keys, texts, labels, in_flight=in_flight, n_max=300, beta="pc"))
        assert sorted(i for i, _, _ in got) == list(range(len(texts)))
        assert all(cert == want[i] and seconds > 0 for i, cert, seconds in got)
    assert len({c.copies for c in want}) > 1


def test_sequential_plan_checks_its_arguments(bow):
    import jax

    with pytest.raises(ValueError, match="n_max must be an integer >= 1"):
        bow.certify_sequential_many([jax.random.key(0)], ["a b c"], [0], n_max=0)
    with pytest.raises(ValueError, match="label 5 out of range"):
        bow.certify_sequential_many([jax.random.key(0)], ["a b c"], [5])


def test_audit_counts_successes_within_the_certified_radius(tmp_path):
    """experiments/audit_certificates.py on a constructed case: a success that changed no more words than the radius
    counts (and is confirmed only when the fresh recheck agrees), one beyond it, a failure, a misclassified or
    uncertified text and a text never certified do not; a cell on other weights is skipped."""
    import json
    import runpy

    from tests.test_train import ROOT

    cert = tmp_path / "cert"
    cert.mkdir()
    crow = lambda i, correct, r: {"index": i, "correct": correct, "radius_one": r, "p_lower": 0.9}  # noqa: E731
    (cert / "certify.jsonl").write_text("\n".join(json.dumps(r) for r in [
        crow(1, True, 2), crow(2, True, 2), crow(3, True, 1), crow(4, False, -1), crow(5, True, -1),
        crow(6, True, 3)]) + "\n")
    (cert / "certify_config.json").write_text(json.dumps({"model_fingerprint": "aaa", "rho": None}))
    arow = lambda i, status, w, recheck: {"index": i, "label": 0, "status": status, "words_changed": w,  # noqa: E731
                                          "recheck_prediction": recheck}
    cell = tmp_path / "attack-deepwordbug-vote"
    cell.mkdir()
    (cell / "attack.jsonl").write_text("\n".join(json.dumps(r) for r in [
        arow(1, "succeeded", 2, 1), arow(2, "succeeded", 1, 0), arow(3, "succeeded", 2, 1),
        arow(4, "succeeded", 1, 1), arow(5, "succeeded", 1, 1), arow(6, "failed", 0, 0),
        arow(7, "succeeded", 1, 1)]) + "\n")
    (cell / "attack_config.json").write_text(json.dumps({"model_fingerprint": "aaa", "ensemble": "vote"}))
    other = tmp_path / "attack-other"
    other.mkdir()
    (other / "attack.jsonl").write_text((cell / "attack.jsonl").read_text())
    (other / "attack_config.json").write_text(json.dumps({"model_fingerprint": "bbb", "ensemble": "vote"}))
    mod = runpy.run_path(str(ROOT / "experiments" / "audit_certificates.py"))
    out = tmp_path / "audit.json"
    assert mod["main"](["--certify", str(cert), str(cell), str(other), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    got = res["cells"]["attack-deepwordbug-vote"]
    assert (got["attacked_and_certified"], got["certified"], got["succeeded"]) == (6, 4, 3)
    assert (got["within_radius"], got["confirmed"]) == (2, 1)
    assert sorted(o["index"] for o in got["offending"]) == [1, 2]
    assert list(res["cells"]) == ["attack-deepwordbug-vote"] and "other weights" in res["skipped"][0]
