"""Masked training end to end on a tiny model: resume after kill -9, 1 vs 8 devices, guards, CLI errors."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the a film movie plot actors scene story music long short very quite rather".split()


def write_rule_data(path: Path, n: int, seed: int) -> Path:
    """Texts whose label is 1 iff they contain 'good': learnable, and sensitive to masking."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            words = list(rng.choice(WORDS, size=rng.integers(4, 12)))
            label = i % 2
            words.insert(int(rng.integers(0, len(words))), "good" if label else "bad")
            f.write(json.dumps({"text": " ".join(words), "label": ["neg", "pos"][label]}) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory):
    from flax import nnx

    from ranmask_jax.models import build_model, export_pretrained, load_tokenizer, tiny
    from ranmask_jax.models.pretrained import _builtin_dir

    d = tmp_path_factory.mktemp("tiny")
    tok = load_tokenizer(_builtin_dir("minilm-l6"))
    cfg = tiny(vocab_size=len(tok), max_position_embeddings=64)
    export_pretrained(build_model(cfg, "encoder", rngs=nnx.Rngs(0)), tok, cfg, d / "model", head="encoder")
    return {"model": str(d / "model"), "train": str(write_rule_data(d / "train.jsonl", 64, 0)),
            "dev": str(write_rule_data(d / "dev.jsonl", 24, 1)), "dir": d}


# 96 steps: enough for the tiny model to learn the rule (at 16 steps it answered one class for every text)
TINY_RUN = {"rho": 0.3, "batch_size": 8, "epochs": 12, "max_len": 32, "checkpoint_every": 8, "log_every": 8,
            "eval_n": 4, "eval_examples": 6, "lr": 3e-3}


def _settings(setup, out) -> dict:
    return {"out_dir": str(out), "model": setup["model"], "dataset": setup["train"], "dev_file": setup["dev"],
            **TINY_RUN}


def train_args(setup, out, *extra):
    """CLI flags of the tiny run (extra flags win, argparse keeps the last)."""
    flags = [x for k, v in _settings(setup, out).items() for x in ("--" + k.replace("_", "-"), str(v))]
    return [*flags, *extra]


def train_config(setup, out):
    from ranmask_jax.config import TrainConfig

    return TrainConfig(**_settings(setup, out))


def run_cli(script, args, env=None, **kw):
    env = dict(os.environ, **(env or {}))
    env.setdefault("JAX_PLATFORMS", "cpu")
    return subprocess.run([sys.executable, str(ROOT / script), *args], env=env, capture_output=True, text=True,
                          timeout=600, **kw)


@pytest.fixture(scope="session")
def trained_run(tiny_setup):
    out = tiny_setup["dir"] / "run_a"
    res = run_cli("train.py", train_args(tiny_setup, out))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def _weights(run):
    return load_file(Path(run) / "model" / "model.safetensors")


def assert_same_training(a: dict, b: dict, atol: float = 1e-4) -> None:
    """Two runs' weights agree up to float reordering over 96 steps. The attention key biases are left out: the
    softmax ignores them, so their exact gradient is zero and Adam turns the rounding noise of a zero into steps
    of the learning rate's size -- they drift apart on any change of summation order and mean nothing."""
    assert a.keys() == b.keys()
    for k in a:
        if not k.endswith("attention.self.key.bias"):
            np.testing.assert_allclose(a[k], b[k], atol=atol, err_msg=k)


def test_run_directory_contents(trained_run):
    from ranmask_jax import load_pretrained

    for name in ("train_config.json", "metrics.jsonl", "ranmask_run.json", "model/config.json"):
        assert (trained_run / name).exists(), name
    rows = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(8, 97, 8))
    evals = [r for r in rows if "dev_masked_accuracy" in r]
    assert [r["step"] for r in evals] == list(range(8, 97, 8)) and all("dev_smoothed_accuracy" in r for r in evals)
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    model, tok, cfg = load_pretrained(trained_run)
    assert cfg.num_labels == 2
    meta = json.loads((trained_run / "ranmask_run.json").read_text())
    assert meta["rho"] == 0.3 and meta["label_names"] == ["neg", "pos"]


def test_the_trained_fixture_beats_chance(trained_run, tiny_setup):
    """The run the certify and attack tests use has learned its rule: on all 24 dev texts the plain model is right
    at least 20 times (chance: p = 0.001), so an attack on it has something to flip."""
    from ranmask_jax import load_pretrained
    from ranmask_jax.smoothing import SmoothedClassifier

    model, tok, _ = load_pretrained(trained_run)
    rows = [json.loads(x) for x in Path(tiny_setup["dev"]).read_text().splitlines()]
    sc = SmoothedClassifier(model, tok, 0.3, max_len=32)
    pred = sc.base_logits([r["text"] for r in rows]).argmax(1)
    right = int(sum(p == ["neg", "pos"].index(r["label"]) for p, r in zip(pred, rows, strict=True)))
    assert right >= 20, right


def kill_after_checkpoint(args: list[str], out: Path, step: int = 4) -> None:
    """Start ``train.py args`` and kill -9 it as soon as the checkpoint of ``step`` exists."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], env=dict(os.environ, JAX_PLATFORMS="cpu"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoints" / str(step)
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no checkpoint appeared before the kill"


def test_kill_and_resume_reproduces_uninterrupted_run(tiny_setup, trained_run):
    out = tiny_setup["dir"] / "run_b"
    kill_after_checkpoint(train_args(tiny_setup, out), out, step=8)
    steps_done = max(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert steps_done < 96, "the run finished before it could be killed"
    res = run_cli("train.py", train_args(tiny_setup, out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resumed {out} from step" in res.stderr
    a, b = _weights(trained_run), _weights(out)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
    la = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()]
    lb = {json.loads(x)["step"]: json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()
          if "loss" in json.loads(x)}
    for r in la:
        if "loss" in r:
            assert lb[r["step"]]["loss"] == pytest.approx(r["loss"], abs=1e-6)


def test_eight_devices_match_one(tiny_setup, trained_run):
    out = tiny_setup["dir"] / "run_8dev"
    res = run_cli("train.py", train_args(tiny_setup, out),
                  env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_training(_weights(trained_run), _weights(out))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(script: str, args_of, num: int = 2) -> list[tuple[int, str]]:
    """``script`` as ``num`` processes of one job on localhost, one CPU device each; ``args_of(i)``: process i's
    flags. Returns each process's (exit status, stderr)."""
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
    procs = [subprocess.Popen([sys.executable, str(ROOT / script), *args_of(i), "--coordinator-address",
                               f"127.0.0.1:{port}", "--num-processes", str(num), "--process-id", str(i)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(num)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    return [(p.returncode, err) for p, err in zip(procs, errs, strict=True)]


def test_two_processes_train_like_one(tiny_setup, trained_run):
    """Two processes (one CPU device each, gloo collectives) each feed their half of every global batch: the same
    losses, dev scores and final weights as one process; only process 0 writes metrics and exports."""
    out = tiny_setup["dir"] / "run_2proc"
    results = run_processes("train.py", lambda i: train_args(tiny_setup, out))
    for rc, err in results:
        assert rc == 0, err[-3000:]
    rows = lambda run: [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    one, two = rows(trained_run), rows(out)
    assert [r["step"] for r in one] == [r["step"] for r in two]  # written once, by process 0
    for a, b in zip(one, two, strict=True):
        for k in ("loss", "accuracy", "dev_masked_accuracy", "dev_smoothed_accuracy"):
            if k in a:
                assert b[k] == pytest.approx(a[k], abs=2e-5), (a["step"], k)
    assert_same_training(_weights(trained_run), _weights(out))


def test_changed_config_is_refused(tiny_setup, trained_run):
    res = run_cli("train.py", train_args(tiny_setup, trained_run, "--seed", "3"))
    assert res.returncode == 2 and "different config (seed: 0 -> 3)" in res.stderr


def test_help_states_each_default_once(capsys):
    import re

    from attacks.run import AttackConfig
    from ranmask_jax.cli import parse_config
    from ranmask_jax.config import CertifyConfig, TrainConfig

    for cls in (TrainConfig, CertifyConfig, AttackConfig):
        with pytest.raises(SystemExit):
            parse_config(cls, ["--help"], "prog", "description")
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        entries = re.split(r" (?=--[a-z])", text)
        assert len(entries) > 15
        for entry in entries:
            assert entry.count("default") <= 1 and "(default: None)" not in entry, entry


def test_cli_errors_are_one_line(tiny_setup, tmp_path):
    res = run_cli("train.py", ["--out-dir", str(tmp_path / "x"), "--dataset", str(tmp_path / "missing.jsonl"),
                               "--model", tiny_setup["model"]])
    assert res.returncode == 2 and "error:" in res.stderr and "missing.jsonl: file not found" in res.stderr
    assert "Traceback" not in res.stderr
    res = run_cli("train.py", ["--out-dir", str(tmp_path / "x"), "--rho", "1.5"])
    assert res.returncode == 2 and "rho must be in [0, 1)" in res.stderr
    assert run_cli("train.py", ["--help"]).returncode == 0
    assert run_cli("certify.py", ["--help"]).returncode == 0
    attacks_help = subprocess.run([sys.executable, "-m", "attacks", "--help"], cwd=ROOT, capture_output=True,
                                  text=True, timeout=120)
    assert attacks_help.returncode == 0 and "--recipe" in attacks_help.stdout


def test_non_finite_loss_stops_the_run(tiny_setup, tmp_path, monkeypatch):
    from ranmask_jax.train import Trainer, TrainingError

    cfg = dataclasses.replace(train_config(tiny_setup, tmp_path / "nan"), log_every=2, checkpoint_every=4)
    trainer = Trainer(cfg)
    step = trainer._train_step

    def poisoned(*a):
        params, opt, m = step(*a)
        return params, opt, {**m, "loss": jnp.float32(jnp.nan)}

    trainer._train_step = poisoned
    with pytest.raises(TrainingError, match="non-finite training metrics at step 2"):
        trainer.run()
    assert not (tmp_path / "nan" / "checkpoints" / "4").exists()


def test_mask_batch_keeps_k_words_and_rho_zero_keeps_all(bert_tokenizer):
    from ranmask_jax.config import TrainConfig
    from ranmask_jax.data import Dataset, Example
    from ranmask_jax.train import encode_dataset, mask_batch, train_keep_sets

    long_text = " ".join(f"w{i}" for i in range(40))  # 40 words, 80 tokens: longer than max_len
    ds = Dataset("x", "train", [Example("a b c d e f g h i j", 0), Example("one two three", 1),
                                Example("zero \u200b width", 0), Example(long_text, 1)], ["n", "p"], "x")
    pad, mask = bert_tokenizer.pad_token_id, bert_tokenizer.mask_token_id
    for rho, kept in ((0.0, [10, 3, 3, 40]), (0.5, [5, 2, 2, 20])):  # min_keep 2: h = 3 keeps 2, not 1
        cfg = TrainConfig(out_dir="unused", rho=rho, max_len=16)
        enc = encode_dataset(ds, bert_tokenizer, cfg)
        assert enc.h.tolist() == [10, 3, 3, 40] and enc.k.tolist() == kept
        batch = enc.batch(np.arange(4), pad)
        assert batch["token_ids"].shape == (4, 128)  # the whole text (82 slots) in its bucket
        ids, _, attn = mask_batch(jax.random.key(0), batch, train_keep_sets(cfg), mask, pad, 16)
        ids, attn = np.asarray(ids), np.asarray(attn)
        assert ids.shape == (4, 16)
        masks = (ids == mask).sum(axis=1)
        assert masks[:3].tolist() == [h - k for h, k in zip([10, 3, 3], kept[:3], strict=True)]
        assert attn[3].sum() == 16  # the long text's masked copy is cut to max_len after masking
        if rho == 0.0:
            np.testing.assert_array_equal(ids[:2], batch["token_ids"][:2, :16])


def test_failed_start_does_not_bind_the_directory(tiny_setup, tmp_path):
    out = tmp_path / "retry"
    bad = run_cli("train.py", train_args(tiny_setup, out, "--model", str(tmp_path / "no-model")))
    assert bad.returncode == 2 and "no such directory" in bad.stderr
    from ranmask_jax.train import Trainer

    Trainer(train_config(tiny_setup, out))  # the corrected flags are accepted


def test_dropout_override_reaches_the_model(tiny_setup, tmp_path):
    import dataclasses

    from ranmask_jax.train import Trainer

    cfg = dataclasses.replace(train_config(tiny_setup, tmp_path / "drop"), dropout=0.25)
    t = Trainer(cfg)
    assert t.model_cfg.hidden_dropout_prob == 0.25 and t.model_cfg.attention_probs_dropout_prob == 0.25


def test_heartbeat_logs_only_without_a_bar(caplog):
    import logging
    from types import SimpleNamespace

    from ranmask_jax.progress import Heartbeat

    logger = logging.getLogger("ranmask_jax.test_heartbeat")
    with caplog.at_level(logging.INFO, logger=logger.name):
        Heartbeat(logger, SimpleNamespace(disable=False), every=0.0)("shown bar %d", 1)
        quiet = Heartbeat(logger, SimpleNamespace(disable=True), every=0.0)
        quiet("no bar %d", 2)
        quiet("no bar %d", 3)
        slow = Heartbeat(logger, SimpleNamespace(disable=True), every=3600.0)
        slow("too soon %d", 4)
    assert [r.getMessage() for r in caplog.records] == ["no bar 2", "no bar 3"]


def test_epoch_order_grouped_by_length():
    from ranmask_jax.train import epoch_order

    n, bs = 1003, 8
    lengths = np.random.default_rng(5).integers(5, 120, n)
    plain = epoch_order(0, 3, n)
    assert np.array_equal(plain, np.random.default_rng([0, 3]).permutation(n))  # runs made before grouping resume
    grouped = epoch_order(0, 3, n, lengths, bs, group=20)
    assert sorted(grouped.tolist()) == list(range(n))  # every text once
    assert np.array_equal(grouped, epoch_order(0, 3, n, lengths, bs, group=20))  # a function of (seed, epoch)
    assert not np.array_equal(grouped, epoch_order(0, 4, n, lengths, bs, group=20))
    full = n // bs * bs

    def padded_tokens(order):
        return int(lengths[order[:full]].reshape(-1, bs).max(axis=1).sum() * bs)

    assert padded_tokens(grouped) < 0.7 * padded_tokens(plain)
    # batches are shuffled after sorting: their maximum lengths are not in increasing order
    maxima = lengths[grouped[:full]].reshape(-1, bs).max(axis=1)
    assert not np.all(np.diff(maxima) >= 0)


def test_config_fields_added_later_count_as_their_defaults(tmp_path):
    from ranmask_jax.config import TrainConfig, check_resume_config

    path = tmp_path / "train_config.json"
    cfg = TrainConfig(out_dir=str(tmp_path))
    check_resume_config(path, cfg, (), started=False)
    saved = json.loads(path.read_text())
    del saved["group_by_length"]  # as written by a version without the field
    path.write_text(json.dumps(saved))
    check_resume_config(path, cfg, (), started=True)  # same run: accepted
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="group_by_length: 0 -> 4"):
        check_resume_config(path, TrainConfig(out_dir=str(tmp_path), group_by_length=4), (), started=True)


def test_changed_weights_resume_only_when_they_answer_the_same(tmp_path):
    from ranmask_jax.config import TrainConfig, check_resume_config

    path, cfg = tmp_path / "attack_config.json", TrainConfig(out_dir=str(tmp_path))
    check_resume_config(path, cfg, (), started=False, extra={"model_fingerprint": "aaaa"})
    asked = []

    def same(stored):
        assert stored["model_fingerprint"] in ("aaaa", "bbbb")
        asked.append(1)
        return {"examples_checked": 5, "max_score_difference": 1e-7}

    def differs(stored):
        raise ValueError("example 3: clean scores [0.1, 0.9] now, [0.9, 0.1] in the rows")

    with pytest.raises(ValueError, match="the model weights changed"):  # no check offered: refused as before
        check_resume_config(path, cfg, (), started=True, extra={"model_fingerprint": "bbbb"})
    with pytest.raises(ValueError, match=r"weights changed: aaaa -> bbbb, and they answer differently: example 3"):
        check_resume_config(path, cfg, (), started=True, extra={"model_fingerprint": "bbbb"}, same_model=differs)
    assert json.loads(path.read_text())["model_fingerprint"] == "aaaa"  # a refusal writes nothing
    with pytest.raises(ValueError, match="lr"):  # another change besides the weights: never asked, refused
        check_resume_config(path, TrainConfig(out_dir=str(tmp_path), lr=1.0), (), started=True,
                            extra={"model_fingerprint": "bbbb"}, same_model=same)
    assert not asked
    check_resume_config(path, cfg, (), started=True, extra={"model_fingerprint": "bbbb"}, same_model=same)
    stored = json.loads(path.read_text())
    assert stored["model_fingerprint"] == "bbbb" and asked == [1]
    assert stored["earlier_weights"] == [{"model_fingerprint": "aaaa", "examples_checked": 5,
                                          "max_score_difference": 1e-7}]
    check_resume_config(path, cfg, (), started=True, extra={"model_fingerprint": "bbbb"}, same_model=same)
    assert json.loads(path.read_text())["earlier_weights"] == stored["earlier_weights"] and asked == [1]
    check_resume_config(path, cfg, (), started=True, extra={"model_fingerprint": "aaaa"}, same_model=same)
    assert [w["model_fingerprint"] for w in json.loads(path.read_text())["earlier_weights"]] == ["aaaa", "bbbb"]
    # the attack's masked LM is weights too; the probes are what the check compares, never a difference by themselves
    both = {"model_fingerprint": "aaaa", "attack_mlm_fingerprint": "cccc", "mlm_probe": {"attack": [[1.0]]}}
    path.unlink()
    check_resume_config(path, cfg, (), started=False, extra=both)
    with pytest.raises(ValueError, match="the attack's masked LM changed: cccc -> dddd, and they answer differently"):
        check_resume_config(path, cfg, (), started=True, extra={**both, "attack_mlm_fingerprint": "dddd"},
                            same_model=differs)
    check_resume_config(path, cfg, (), started=True, extra={**both, "mlm_probe": {"attack": [[2.0]]}})
    check_resume_config(path, cfg, (), started=True, same_model=same,
                        extra={**both, "model_fingerprint": "bbbb", "attack_mlm_fingerprint": "dddd"})
    assert json.loads(path.read_text())["earlier_weights"][-1] == {
        "model_fingerprint": "aaaa", "attack_mlm_fingerprint": "cccc", "examples_checked": 5,
        "max_score_difference": 1e-7}


def test_probes_compare_every_model_the_run_kept():
    from ranmask_jax.runs import same_probe

    stored = {"model_probe": [[0.0, 1.0]], "mlm_probe": {"lm": [[2.0, 3.0]], "purifier": [[4.0]]}}
    assert same_probe(stored, [[0.0, 1.001]], mlm_now={"lm": [[2.0, 3.0]], "purifier": [[4.005]]}) == pytest.approx(
        0.005)
    with pytest.raises(ValueError, match="the purifier masked LM's token losses .* moved by 0.5"):
        same_probe(stored, [[0.0, 1.0]], mlm_now={"lm": [[2.0, 3.0]], "purifier": [[4.5]]})
    with pytest.raises(ValueError, match="the lm masked LM's token losses .* moved by inf"):  # the LM went missing
        same_probe(stored, [[0.0, 1.0]], mlm_now={"purifier": [[4.0]]})
    with pytest.raises(ValueError, match="plain model's logits .* moved by 0.02"):
        same_probe(stored, [[0.02, 1.0]], mlm_now={"lm": [[2.0, 3.0]], "purifier": [[4.0]]})
    assert same_probe({}, [[0.0]]) is None  # a run from before the probes: nothing to compare
