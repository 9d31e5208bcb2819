"""Adversarial training (PGD-K, FreeLB, Adv-HotFlip): each piece against an independent computation on a tiny model."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ranmask_jax import adversarial
from ranmask_jax.adversarial import Adversary, ascend, init_delta
from ranmask_jax.models import build_model, tiny
from tests.test_train import (
    tiny_setup,  # noqa: F401  (fixture)
    train_config,
    trained_run,  # noqa: F401  (fixture)
)

V, D = 128, 32


def ce(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@pytest.fixture(scope="module")
def tiny_apply():
    """A deterministic tiny classifier (dropout off) as ``apply(params, inputs, delta, key)`` and its parameters."""
    cfg = tiny(vocab_size=V, hidden_size=D, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = build_model(cfg, rngs=nnx.Rngs(3))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def apply(p, inputs, delta, key):
        ids, types, attn = inputs
        return nnx.merge(graphdef, p, rest)(ids, attn, types, word_delta=delta)

    return apply, params


def batch(seed=0, b=4, t=12):
    """Token ids with a [CLS]-like first token, padding after each text's length, and labels."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, t + 1, size=b)
    attn = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(attn > 0, rng.integers(5, V, size=(b, t)), 0)
    ids[:, 0] = 2
    return (jnp.asarray(ids), jnp.zeros((b, t), jnp.int32), jnp.asarray(attn)), jnp.asarray(rng.integers(0, 2, b))


def test_init_delta_is_zero_on_padding_and_scaled_to_the_text():
    inputs, _ = batch(1, b=64, t=16)
    valid = inputs[2] > 0
    d = np.asarray(init_delta(jax.random.key(0), valid, D, 0.5, "l2"))
    assert np.all(d[~np.asarray(valid)] == 0)
    length = np.asarray(valid).sum(1)
    bound = 0.5 / np.sqrt(length * D)
    assert np.all(np.abs(d).max(axis=(1, 2)) <= bound + 1e-7)
    # E ||delta||^2 = init_mag^2 / 3 for U(-1, 1) entries scaled by init_mag / sqrt(L D)
    assert abs(np.mean((d ** 2).sum(axis=(1, 2))) - 0.25 / 3) < 0.01
    dl = np.asarray(init_delta(jax.random.key(0), valid, D, 0.5, "linf"))
    assert np.abs(dl).max() <= 0.5 and np.abs(dl).max() > 0.45
    assert not np.any(init_delta(jax.random.key(0), valid, D, 0.0, "l2"))


def test_ascend_moves_along_the_normalised_gradient_and_projects():
    rng = np.random.default_rng(0)
    delta, grad = (jnp.asarray(rng.normal(size=(5, 7, D)), jnp.float32) * s for s in (0.01, 3.0))
    free = np.asarray(ascend(delta, grad, 0.3, 0.0, "l2"))
    g = np.asarray(grad).reshape(5, -1)
    expect = np.asarray(delta).reshape(5, -1) + 0.3 * g / np.linalg.norm(g, axis=1, keepdims=True)
    np.testing.assert_allclose(free.reshape(5, -1), expect, rtol=1e-5, atol=1e-6)
    bounded = np.asarray(ascend(delta, grad, 0.3, 0.05, "l2")).reshape(5, -1)
    np.testing.assert_allclose(np.linalg.norm(bounded, axis=1), 0.05, rtol=1e-5)  # all exceeded, all projected
    np.testing.assert_allclose(bounded / 0.05, expect / np.linalg.norm(expect, axis=1, keepdims=True), atol=1e-5)
    inside = np.asarray(ascend(delta, grad * 0, 0.3, 10.0, "l2"))  # a zero gradient leaves delta where it is
    np.testing.assert_allclose(inside, np.asarray(delta), atol=1e-7)
    linf = np.asarray(ascend(delta, grad, 0.3, 0.02, "linf"))
    assert np.abs(linf).max() <= 0.02 + 1e-7
    step = np.asarray(ascend(delta, grad, 0.3, 0.0, "linf")) - np.asarray(delta)
    np.testing.assert_allclose(np.abs(step).max(axis=(1, 2)), 0.3, rtol=1e-5)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_ascent_raises_the_loss_within_its_ball(tiny_apply, norm):
    apply, params = tiny_apply
    inputs, labels = batch(2)
    max_norm = 0.5 if norm == "l2" else 0.02
    adv = Adversary("pgd", steps=5, lr=0.3, init_mag=0.0, max_norm=max_norm, norm=norm)
    key = jax.random.key(7)
    delta = adversarial.pgd_delta(apply, params, inputs, labels, D, adv, key)
    flat = np.asarray(delta).reshape(delta.shape[0], -1)
    size = np.linalg.norm(flat, axis=1) if norm == "l2" else np.abs(flat).max(axis=1)
    assert np.all(size <= max_norm * (1 + 1e-5)) and np.all(size > 0.5 * max_norm)
    clean = float(ce(apply(params, inputs, None, key), labels))
    attacked = float(ce(apply(params, inputs, delta, key), labels))
    # random directions scaled to the same per-example size raise the loss far less than the ascent does
    rng = np.random.default_rng(0)
    randoms = []
    for _ in range(5):
        r = rng.normal(size=delta.shape) * np.asarray(inputs[2])[..., None]
        rf = r.reshape(r.shape[0], -1)
        r = r * (size / (np.linalg.norm(rf, axis=1) if norm == "l2" else np.abs(rf).max(axis=1)))[:, None, None]
        randoms.append(float(ce(apply(params, inputs, jnp.asarray(r, jnp.float32), key), labels)))
    assert attacked > max(randoms) > clean - 0.05 and attacked > clean


def test_pgd_trains_on_the_perturbed_batch_with_no_gradient_through_delta(tiny_apply):
    apply, params = tiny_apply
    inputs, labels = batch(3)
    adv = Adversary("pgd", steps=3, lr=0.3, init_mag=0.5, max_norm=0.05, norm="l2")
    key = jax.random.key(1)
    value, aux, grads = adversarial.pgd_grads(apply, params, inputs, labels, D, adv, key)
    delta = adversarial.pgd_delta(apply, params, inputs, labels, D, adv, key)
    want_v, want_g = jax.value_and_grad(lambda p: ce(apply(p, inputs, delta, key), labels))(params)
    np.testing.assert_allclose(float(value), float(want_v), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_g), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    assert float(aux["delta_norm"]) <= 0.05 * (1 + 1e-5)


def test_freelb_gradient_is_the_mean_of_its_passes(tiny_apply):
    """Against a direct loop: pass t at the perturbation after t ascent steps, each pass's full gradient."""
    apply, params = tiny_apply
    inputs, labels = batch(4)
    adv = Adversary("freelb", steps=4, lr=0.3, init_mag=0.05, max_norm=0.0, norm="l2")
    key = jax.random.key(5)
    value, _, grads = adversarial.freelb_grads(apply, params, inputs, labels, D, adv, key)

    d = init_delta(jax.random.fold_in(key, 0), inputs[2] > 0, D, 0.05, "l2")
    assert float(jnp.abs(d).max()) > 0  # the first pass is at the random start, not at zero
    losses, per_pass = [], []
    for _ in range(adv.steps):
        v, (g_p, g_d) = jax.value_and_grad(lambda p, d: ce(apply(p, inputs, d, key), labels), argnums=(0, 1))(params,
                                                                                                              d)
        losses.append(float(v))
        per_pass.append(g_p)
        g = np.asarray(g_d).reshape(d.shape[0], -1)
        d = d + 0.3 * jnp.asarray((g / np.linalg.norm(g, axis=1, keepdims=True)).reshape(d.shape))
    assert losses[-1] > losses[0]  # the passes climb
    np.testing.assert_allclose(float(value), np.mean(losses), rtol=1e-5)
    mean = jax.tree.map(lambda *gs: sum(gs) / len(gs), *per_pass)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(mean), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


def reference_swap(ids, grad, emb, candidates, protected, counts):
    """HotFlip's round written as loops over rows and positions."""
    ids, out = np.asarray(ids), np.asarray(ids).copy()
    for b in range(ids.shape[0]):
        best = []
        for t in range(ids.shape[1]):
            if protected[b, t]:
                continue
            gains = [(emb[v] - emb[ids[b, t]]) @ grad[b, t] if candidates[v] else -np.inf for v in range(len(emb))]
            best.append((max(gains), -t, int(np.argmax(gains))))
        for _, neg_t, v in sorted(best, reverse=True)[:counts[b]]:
            out[b, -neg_t] = v
    return out


def test_hotflip_swap_matches_a_loop():
    rng = np.random.default_rng(0)
    b, t = 3, 9
    ids = rng.integers(0, V, size=(b, t))
    grad, emb = rng.normal(size=(b, t, D)), rng.normal(size=(V, D))
    candidates = rng.random(V) < 0.6
    protected = rng.random((b, t)) < 0.25
    counts = np.array([0, 2, 4])
    got = adversarial.hotflip_swap(jnp.asarray(ids), jnp.asarray(grad, jnp.float32), jnp.asarray(emb, jnp.float32),
                                   jnp.asarray(candidates), jnp.asarray(protected), jnp.asarray(counts))
    want = reference_swap(ids, grad, emb, candidates, protected, counts)
    np.testing.assert_array_equal(np.asarray(got), want)
    assert np.all(np.asarray(got)[protected] == ids[protected])
    assert np.all(candidates[np.asarray(got)[np.asarray(got) != ids]])


def test_hotflip_first_order_ranking_matches_brute_force_substitutions():
    """On a tiny model with small word embeddings (close to linear in them), the first-order gains of every single
    substitution rank like the losses measured by substituting each token at each position."""
    cfg = tiny(vocab_size=V, hidden_size=D, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = build_model(cfg, rngs=nnx.Rngs(9))
    emb = model.encoder.embeddings.word_embeddings
    emb.embedding[...] = emb.embedding[...] * 0.05
    inputs, labels = batch(5, b=1, t=8)
    ids, types, attn = inputs

    def loss_of(delta):
        return ce(model(ids, attn, types, word_delta=delta), labels)

    g = jax.grad(loss_of)(jnp.zeros((1, 8, D)))
    e = np.asarray(emb.embedding[...])
    first_order = np.einsum("td,vd->tv", np.asarray(g[0]), e) - np.einsum("td,td->t", np.asarray(g[0]),
                                                                          e[np.asarray(ids[0])])[:, None]
    swapped = np.repeat(np.asarray(ids), 8 * V, axis=0).reshape(8, V, 8)
    for t in range(8):
        swapped[t, :, t] = np.arange(V)
    swapped = jnp.asarray(swapped.reshape(-1, 8))
    n = swapped.shape[0]
    logits = model(swapped, jnp.repeat(attn, n, 0), jnp.repeat(types, n, 0))
    brute = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.repeat(labels, n))).reshape(8, V)
    brute = brute - float(loss_of(None))
    real = np.asarray(attn[0]) > 0
    fo, bf = first_order[real].ravel(), brute[real].ravel()
    assert np.corrcoef(fo, bf)[0, 1] > 0.995  # the loss differences are ~1e-3: rank noise of float32 near zero
    assert np.argmax(fo) == np.argmax(bf)
    top_fo, top_bf = set(np.argsort(-fo)[:20]), set(np.argsort(-bf)[:20])
    assert len(top_fo & top_bf) >= 18


def test_hotflip_candidates_are_alphabetic_pieces(bert_tokenizer):
    cand = np.asarray(adversarial.hotflip_candidates(bert_tokenizer))
    vocab = bert_tokenizer.get_vocab()
    assert cand[vocab["movie"]] and cand[vocab["##ing"]]
    for piece in ("[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]", "1990", ",", "##9"):
        assert not cand[vocab[piece]], piece
    assert 0.7 < cand.mean() < 0.95


def test_hotflip_step_swaps_its_share_and_never_special_tokens(tiny_apply):
    apply, params = tiny_apply
    inputs, labels = batch(6, b=6, t=16)
    ids, _, attn = inputs
    protected = (attn == 0) | (ids == 2)
    emb = jax.tree.leaves(params["encoder"]["embeddings"]["word_embeddings"])[0]
    adv = Adversary("hotflip", steps=1, change_rate=0.25)
    cands = jnp.ones(V, bool).at[:5].set(False)
    value, aux, grads = adversarial.hotflip_grads(apply, params, inputs, labels, emb, cands, protected, adv,
                                                  jax.random.key(0))
    counts = np.floor(np.asarray(attn).sum(1) * 0.25)
    # one round from the clean text: at most the count changed per text (a best token may be the current one)
    assert 0 < float(aux["swapped_share"]) <= np.mean(counts / np.asarray(attn).sum(1)) + 1e-6
    assert float(aux["adv_accuracy"]) <= float(aux["accuracy"])
    assert np.isfinite(float(value)) and all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(grads))


def test_defense_flags_resolve_to_the_original_defaults(tiny_setup, tmp_path):  # noqa: F811
    base = dataclasses.asdict(train_config(tiny_setup, tmp_path / "a"))
    from ranmask_jax.config import TrainConfig

    pgd = TrainConfig(**{**base, "defense": "pgd"})
    assert (pgd.adv_steps, pgd.adv_lr, pgd.adv_init_mag, pgd.adv_max_norm, pgd.adv_norm) == (3, 0.3, 0.5, 0.05, "l2")
    assert pgd.adv_change_rate is None
    fl = TrainConfig(**{**base, "defense": "freelb", "adv_steps": 2})
    assert (fl.adv_steps, fl.adv_lr, fl.adv_init_mag, fl.adv_max_norm) == (2, 0.03, 0.05, 0.0)
    assert TrainConfig(**{**base, "defense": "hotflip"}).adv_change_rate == 0.2
    bad = [({"adv_lr": 0.1}, "needs --defense"), ({"defense": "hotflip", "adv_lr": 0.1}, "does not use --adv-lr"),
           ({"defense": "pgd", "adv_change_rate": 0.1}, "does not use --adv-change-rate"),
           ({"defense": "fgsm"}, "defense must be"), ({"defense": "pgd", "adv_norm": "l1"}, "l2 or linf"),
           ({"defense": "pgd", "adv_steps": 0}, "adv_steps"), ({"defense": "pgd", "task": "mlm"}, "does not apply"),
           ({"defense": "augment"}, "needs --augment-from"),
           ({"defense": "augment", "augment_from": "x", "augment_recipe": "bert-attack"}, "augment_recipe"),
           ({"defense": "pgd", "augment_share": 0.3}, "does not use --augment-share")]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**{**base, **change})


@pytest.mark.parametrize("defense", ["pgd", "freelb", "hotflip"])
def test_training_with_a_defense_runs_and_records_it(tiny_setup, tmp_path, defense):  # noqa: F811
    from ranmask_jax.config import TrainConfig
    from ranmask_jax.train import Trainer

    # texts of 2 to 40 words in length-grouped batches: the step is traced at several lengths, as on a real dataset
    rng = np.random.default_rng(0)
    with open(tmp_path / "mixed.jsonl", "w") as f:
        for i in range(48):
            words = ["good" if i % 2 else "bad"] + list(rng.choice(["film", "plot", "a", "the"], int(i % 12) * 3 + 1))
            f.write(json.dumps({"text": " ".join(words), "label": ["neg", "pos"][i % 2]}) + "\n")
    base = dataclasses.asdict(train_config(tiny_setup, tmp_path / defense))
    cfg = TrainConfig(**{**base, "dataset": str(tmp_path / "mixed.jsonl"), "max_len": 64, "group_by_length": 4,
                         "defense": defense, "max_steps": 6, "log_every": 2, "eval_n": 0, "adv_steps": 2})
    trainer = Trainer(cfg)
    out = trainer.run()
    assert out["steps"] == 6 and trainer._train_step._cache_size() >= 2
    recorded = json.loads((tmp_path / defense / "train_config.json").read_text())
    assert recorded["defense"] == defense and recorded["adv_steps"] == 2
    rows = [json.loads(x) for x in (tmp_path / defense / "metrics.jsonl").read_text().splitlines()]
    extra = {"pgd": "delta_norm", "freelb": "accuracy", "hotflip": "swapped_share"}[defense]
    assert all(np.isfinite(r["loss"]) and extra in r for r in rows if "loss" in r)
    meta = json.loads((tmp_path / defense / "ranmask_run.json").read_text())
    assert meta["defense"] == defense


def test_augmentation_selection_is_a_function_of_the_seed():
    from attacks.augment import selection

    lengths = np.array([1, 2, 3, 8, 5, 2, 9, 4, 3, 7, 6, 3] * 10)
    a, k = selection(lengths, seed=4)
    a2, k2 = selection(lengths, seed=4)
    assert np.array_equal(a, a2) and np.array_equal(k, k2)
    assert len(a) == len(k) == 60 and len(set(a)) == 60 and len(set(k)) == 60
    assert np.all(lengths[a] >= 3)  # only texts of at least 3 words are attacked
    assert np.any(lengths[k] < 3)  # the kept half is drawn from all texts
    b, _ = selection(lengths, seed=5)
    assert not np.array_equal(a, b)
    with pytest.raises(Exception, match="at least 3 words"):
        selection(np.array([1, 2, 3, 1]), seed=0, share=0.75)


def test_augmented_training_set_is_rebuilt_identically_and_resumes(tiny_setup, trained_run, tmp_path):  # noqa: F811
    """The baseline attacks half of the training texts (DeepWordBug here: no WordNet needed); the augmented file is
    the kept half plus every attacked text; a second run with the same seed writes the same file, and a resumed run
    attacks nothing again."""
    from ranmask_jax.config import TrainConfig
    from ranmask_jax.train import Trainer

    base = dataclasses.asdict(train_config(tiny_setup, tmp_path / "aug1"))
    flags = {"defense": "augment", "augment_from": str(trained_run), "augment_recipe": "deepwordbug", "rho": 0.0,
             "max_steps": 2, "eval_n": 0}
    out = Trainer(TrainConfig(**{**base, **flags})).run()
    assert out["steps"] == 2
    aug = tmp_path / "aug1" / "augment"
    rows = [json.loads(x) for x in (aug / "train.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == ["kept"] * 32 + ["attack"] * 32
    attacked = [json.loads(x) for x in (aug / "attack" / "attack.jsonl").read_text().splitlines()]
    assert len(attacked) == 32 and any(r["status"] == "succeeded" for r in attacked)
    train = [json.loads(x) for x in open(tiny_setup["train"])]
    for r in rows:  # labels carried over; kept texts verbatim; attacked texts are their rows' final texts
        assert r["label"] == train[r["index"]]["label"]
        if r["source"] == "kept":
            assert r["text"] == train[r["index"]]["text"]
    assert {r["text"] for r in rows if r["source"] == "attack"} == {r["perturbed_text"] for r in attacked}
    recorded = json.loads((tmp_path / "aug1" / "train_config.json").read_text())
    assert recorded["defense"] == "augment" and recorded["augment_share"] == 0.5

    Trainer(TrainConfig(**{**base, **flags, "out_dir": str(tmp_path / "aug2")})).run()
    assert (aug / "train.jsonl").read_bytes() == (tmp_path / "aug2" / "augment" / "train.jsonl").read_bytes()
    before = (aug / "attack" / "attack.jsonl").read_bytes()
    Trainer(TrainConfig(**{**base, **flags})).run()  # resumes: finished run, the attack rows untouched
    assert (aug / "attack" / "attack.jsonl").read_bytes() == before


def test_safer_training_substitutes_from_the_table_per_step(tiny_setup, tmp_path):  # noqa: F811
    from ranmask_jax.config import TrainConfig
    from ranmask_jax.safer import PerturbationTable
    from ranmask_jax.train import Trainer

    sets = {"film": ["film", "movie", "picture"], "movie": ["movie", "film", "picture"],
            "picture": ["picture", "film", "movie"], "plot": ["plot", "story"], "story": ["story", "plot"]}
    table = PerturbationTable({w: [u for u in s if u != w] for w, s in sets.items()}, sets)
    table.save(tmp_path / "table.json")
    base = dataclasses.asdict(train_config(tiny_setup, tmp_path / "safer"))
    cfg = TrainConfig(**{**base, "defense": "safer", "safer_table": str(tmp_path / "table.json"), "rho": 0.0,
                         "max_steps": 3, "eval_n": 0})
    tr = Trainer(cfg)
    idx = np.arange(8)
    a, again, other = (tr.task.host_batch(tr, idx, s) for s in (5, 5, 6))
    assert all(np.array_equal(a[k], again[k]) for k in a)  # a function of (seed, step)
    assert not np.array_equal(a["token_ids"], other["token_ids"])

    def words(batch, row):
        return tr.tokenizer.decode(batch["token_ids"][row], skip_special_tokens=True).split()

    plain = tr.device_batch(tr.train, idx)
    changed = 0
    for row in range(8):
        new, old = words(a, row), words(plain, row)
        assert len(new) == len(old)
        for w, v in zip(new, old, strict=True):
            assert w == v or (v in sets and w in sets[v])
            changed += w != v
    assert changed > 0
    assert tr.run()["steps"] == 3
    with pytest.raises(ValueError, match="needs --safer-table"):
        TrainConfig(**{**base, "defense": "safer"})
