"""Masked-LM fine-tuning: selection and 80/10/10 corruption statistics, the loss, an end-to-end tiny run that
transformers loads with the same logits, and resume after kill -9."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ranmask_jax import mlm
from tests.test_train import kill_after_checkpoint, run_cli, tiny_setup, trained_run  # noqa: F401


def test_selection_skips_specials_and_takes_whole_words():
    word_ids = jnp.array([[-1, 0, 0, 0, 1, 2, 2, -1, -1]] * 4000)  # [CLS] w0 w0 w0 w1 w2 w2 [SEP] pad
    attn = jnp.array([[1, 1, 1, 1, 1, 1, 1, 1, 0]] * 4000)
    sel = np.asarray(mlm.select(jax.random.key(0), word_ids, attn, 0.15, whole_word=True))
    assert not sel[:, [0, 7, 8]].any()
    assert (sel[:, 1] == sel[:, 2]).all() and (sel[:, 2] == sel[:, 3]).all() and (sel[:, 5] == sel[:, 6]).all()
    for col in (1, 4, 5):  # each word selected with probability 0.15: within 4 standard deviations
        assert abs(sel[:, col].mean() - 0.15) < 4 * np.sqrt(0.15 * 0.85 / 4000)
    tok = np.asarray(mlm.select(jax.random.key(1), word_ids, attn, 0.15, whole_word=False))
    assert not tok[:, [0, 7, 8]].any() and (tok[:, 1] != tok[:, 2]).any()
    assert abs(tok[:, 1:7].mean() - 0.15) < 4 * np.sqrt(0.15 * 0.85 / (6 * 4000))


def test_corruption_is_80_10_10():
    ids = jnp.full((200, 100), 7, jnp.int32)
    selected = jnp.arange(100)[None, :].repeat(200, 0) < 50
    out = np.asarray(mlm.corrupt(jax.random.key(2), ids, selected, mask_id=3, vocab_size=1000))
    chosen, rest = out[:, :50], out[:, 50:]
    assert (rest == 7).all()  # unselected tokens never change
    m = chosen.size
    masked, kept = (chosen == 3).mean(), (chosen == 7).mean()
    rand = 1 - masked - kept
    for got, want in ((masked, 0.8), (rand, 0.1 * 999 / 1000), (kept, 0.1 + 0.1 / 1000)):
        assert abs(got - want) < 4 * np.sqrt(want * (1 - want) / m), (got, want)


def test_loss_is_the_cross_entropy_of_the_selected_tokens():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=(2, 3))
    sel = np.array([[True, False, True], [False, False, True]])
    loss, aux = mlm.mlm_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(sel))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = -np.mean([logp[b, t, labels[b, t]] for b in range(2) for t in range(3) if sel[b, t]])
    assert float(loss) == pytest.approx(want, rel=1e-5) and float(aux["predicted_tokens"]) == 3
    counts = np.asarray(mlm.recovery_counts(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(sel)))
    top1 = [logits[b, t].argmax() == labels[b, t] for b in range(2) for t in range(3) if sel[b, t]]
    assert counts[:, 0].tolist() == [2, 1] and counts[:, 1].sum() == sum(top1) and (counts[:, 2] >= counts[:, 1]).all()


def test_recovery_counts_match_a_sort():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 9, 12)).astype(np.float32)
    labels = rng.integers(0, 12, size=(4, 9))
    sel = rng.random((4, 9)) < 0.6
    counts = np.asarray(mlm.recovery_counts(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(sel)))
    order = np.argsort(-logits, axis=-1)
    for b in range(4):
        rank = [int(np.flatnonzero(order[b, t] == labels[b, t])[0]) for t in range(9) if sel[b, t]]
        assert counts[b].tolist() == [len(rank), sum(r < 1 for r in rank), sum(r < 5 for r in rank)]


def test_training_decodes_only_the_selected_tokens_with_the_same_loss():
    from flax import nnx

    from ranmask_jax.models.bert import build_model, tiny

    model = build_model(tiny(), "mlm", rngs=nnx.Rngs(0))
    model.eval()
    rng = np.random.default_rng(2)
    ids = jnp.asarray(rng.integers(5, 128, size=(3, 16)), jnp.int32)
    attn = jnp.asarray(np.arange(16)[None, :] < np.array([[16], [11], [5]]), jnp.int32)
    types = jnp.zeros_like(ids)
    word_ids = jnp.where(attn > 0, jnp.arange(16)[None, :], -1)
    selected = mlm.select(jax.random.key(3), word_ids, attn, 0.3, False)
    full = model(ids, attn, types)
    want, _ = mlm.mlm_loss(full, ids, selected)
    cap = mlm.decode_cap(ids.shape, 0.3)
    pos, valid, dropped = mlm.gather_selected(selected, cap)
    part = model(ids, attn, types, positions=pos)
    assert part.shape == (cap, 128) and int(dropped) == 0 and int(valid.sum()) == int(selected.sum())
    np.testing.assert_allclose(np.asarray(part)[np.asarray(valid)],
                               np.asarray(full).reshape(-1, 128)[np.flatnonzero(np.asarray(selected))], atol=1e-5)
    got, _ = mlm.mlm_loss(part, ids.reshape(-1)[pos], valid)
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    # a selection beyond the cap is cut and counted
    pos, valid, dropped = mlm.gather_selected(jnp.ones((3, 16), bool), 20)
    assert int(dropped) == 28 and bool(valid.all()) and np.asarray(pos).tolist() == list(range(20))


MLM_RUN = ["--task", "mlm", "--batch-size", "8", "--epochs", "2", "--max-len", "32", "--checkpoint-every", "4",
           "--log-every", "2", "--lr", "1e-3", "--whole-word-mask"]


def mlm_args(setup, out):
    return ["--out-dir", str(out), "--model", setup["model"], "--dataset", setup["train"], "--dev-file",
            setup["dev"], *MLM_RUN]


@pytest.fixture(scope="module")
def mlm_run(tiny_setup):  # noqa: F811
    out = tiny_setup["dir"] / "mlm_a"
    res = run_cli("train.py", mlm_args(tiny_setup, out))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_mlm_run_exports_a_masked_lm_that_transformers_loads(mlm_run):
    import torch
    from transformers import AutoModelForMaskedLM

    from ranmask_jax.models import load_pretrained

    rows = [json.loads(x) for x in (mlm_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    evals = [r for r in rows if "dev_top1" in r]
    assert len(evals) == 2 and all(0 <= r["dev_top1"] <= r["dev_top5"] <= 1 for r in evals)
    assert losses[-1] < losses[0]  # the tiny model learns the tiny vocabulary of the rule data
    meta = json.loads((mlm_run / "ranmask_run.json").read_text())
    assert meta["task"] == "mlm" and meta["whole_word_mask"] is True
    model, tok, _ = load_pretrained(mlm_run, head="mlm")
    enc = tok(["the film was good", "a very long plot"], padding=True, return_tensors="np")
    ours = np.asarray(model(jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]),
                            jnp.asarray(enc["token_type_ids"])))
    ref = AutoModelForMaskedLM.from_pretrained(str(mlm_run / "model")).eval()
    with torch.no_grad():
        theirs = ref(**{k: torch.tensor(v) for k, v in enc.items()}).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-4)


def test_mlm_run_resumes_after_kill(tiny_setup, mlm_run):  # noqa: F811
    from safetensors.numpy import load_file

    out = tiny_setup["dir"] / "mlm_b"
    kill_after_checkpoint(mlm_args(tiny_setup, out), out)
    res = run_cli("train.py", mlm_args(tiny_setup, out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed {out} from step" in res.stderr
    a, b = (load_file(d / "model" / "model.safetensors") for d in (mlm_run, out))
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)


def test_certify_refuses_a_masked_lm_run(mlm_run):
    res = run_cli("certify.py", ["--run-dir", str(mlm_run), "--predict", "-"], input="a b\n")
    assert res.returncode == 2 and "masked-LM run" in res.stderr and "Traceback" not in res.stderr


def test_lm_sampling_and_maskpure_from_the_command_line(trained_run, mlm_run, tiny_setup, tmp_path):  # noqa: F811
    """certify.py refuses a certificate for LM-based sampling in one line, measures accuracy with it (labelled
    empirical only), and certifies with the MaskPure refill (argmax: certifiable)."""
    base = ["--run-dir", str(trained_run), "--dataset", tiny_setup["dev"], "--split", "test", "--num-examples", "3",
            "--n0", "8", "--n", "16"]
    lm = ["--sampling", "lm", "--lm", str(mlm_run)]
    res = run_cli("certify.py", [*base, *lm, "--out", str(tmp_path / "refused")])
    assert res.returncode == 2 and "no certificate: LM-based sampling" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("certify.py", [*base, *lm, "--accuracy-only", "--out", str(tmp_path / "acc")])
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "acc" / "summary.json").read_text())
    assert summary["empirical_only"] is True and summary["sampling"] == "lm"
    assert "LM-based sampling (empirical only)" in (tmp_path / "acc" / "table.md").read_text()
    res = run_cli("certify.py", [*base, "--purifier", str(mlm_run), "--out", str(tmp_path / "maskpure")])
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "maskpure" / "summary.json").read_text())
    assert summary["purifier"] == str(mlm_run) and summary["n"] == 3
    res = run_cli("certify.py", [*base, "--purifier", str(mlm_run), "--refill-temperature", "1.0",
                                 "--out", str(tmp_path / "sampled")])
    assert res.returncode == 2 and "no certificate: a sampled refill" in res.stderr
    res = run_cli("certify.py", [*base, "--purifier", str(trained_run), "--out", str(tmp_path / "wrong")])
    assert res.returncode == 2 and "not a masked-LM run" in res.stderr


def test_attack_run_binds_the_masked_lm_of_its_candidates(trained_run, mlm_run, tiny_setup, tmp_path):  # noqa: F811
    """BERT-Attack's candidates come from a masked LM: its weights are fingerprinted and probed in the run's
    config. Retrained in its last bits it resumes (the earlier fingerprint kept); another masked LM at the same path
    is refused, though the classifier and its answers are unchanged."""
    import shutil

    from tests.test_attacks import attack_args, attack_cli, one_ulp, rewrite_weights

    lm, out = tmp_path / "lm", tmp_path / "attack"
    shutil.copytree(mlm_run, lm)
    weights = lm / "model" / "model.safetensors"

    def attack(*extra):
        return attack_cli(attack_args(trained_run, tiny_setup, out, "--recipe", "bert-attack", "--attack-mlm",
                                      str(lm), *extra))

    res = attack("--limit", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = json.loads((out / "attack_config.json").read_text())
    assert len(cfg["attack_mlm_fingerprint"]) == 16 and len(cfg["mlm_probe"]["attack"]) == 2
    first = (out / "attack.jsonl").read_text()

    rewrite_weights(weights, one_ulp)
    res = attack("--limit", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "answer the same" in res.stderr and (out / "attack.jsonl").read_text().startswith(first)
    now = json.loads((out / "attack_config.json").read_text())
    assert now["model_fingerprint"] == cfg["model_fingerprint"]
    assert [w["attack_mlm_fingerprint"] for w in now["earlier_weights"]] == [cfg["attack_mlm_fingerprint"]]
    assert now["attack_mlm_fingerprint"] != cfg["attack_mlm_fingerprint"]
    assert now["earlier_weights"][0]["probe_difference"] < 1e-4
    rows = (out / "attack.jsonl").read_text()

    def other_lm(t):  # another masked LM: the classifier, and so the clean answers, stay the same
        name = next(k for k in t if k.endswith("predictions.transform.dense.weight"))
        t[name] = -t[name]
    rewrite_weights(weights, other_lm)
    res = attack()
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "the attack's masked LM changed" in res.stderr and "attack masked LM's token losses" in res.stderr
    assert (out / "attack.jsonl").read_text() == rows
    # BERT-Attack's constraints hold on what it wrote, recomputed here: at most 40% of the words changed, and
    # sentence-encoder cosine >= 0.2 to the original text
    from attacks.resources import SentenceEncoder

    written = [json.loads(x) for x in rows.splitlines()]
    attacked = [r for r in written if r["status"] != "skipped"]
    assert attacked and any(r["words_changed"] >= 1 for r in attacked)
    enc = SentenceEncoder()
    for r in attacked:
        before, after = r["text"].split(), r["perturbed_text"].split()
        assert sum(a != b for a, b in zip(before, after, strict=True)) == r["words_changed"] <= 0.4 * len(before)
        e = enc.encode([r["text"], r["perturbed_text"]])
        assert float(e[0] @ e[1]) >= 0.2 - 1e-6
