"""certify.py end to end on the tiny trained run: rows, summary, table, plot, resume, --predict."""

from __future__ import annotations

import json

import pytest

from tests.test_train import run_cli, tiny_setup, trained_run  # noqa: F401  (fixtures)


def certify_args(run, setup, out, *extra):
    return ["--run-dir", str(run), "--dataset", setup["dev"], "--split", "dev", "--out", str(out), "--n0", "10",
            "--n", "40", "--batch-size", "16", "--num-examples", "6", "--seed", "1", *extra]


@pytest.fixture(scope="module")
def certified(trained_run, tiny_setup, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("cert") / "full"
    res = run_cli("certify.py", certify_args(trained_run, tiny_setup, out))
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def test_rows_summary_table_plot(certified):
    out, res = certified
    rows = [json.loads(x) for x in (out / "certify.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and len({r["index"] for r in rows}) == 6
    for r in rows:
        assert set(r) >= {"index", "label", "prediction", "counts", "p_lower", "beta", "h", "k", "radius", "mode",
                          "seconds", "radius_original", "text", "radius_one", "radius_pc"}
        assert r["radius"] == r["radius_pc"] and r["radius_one"] <= r["radius_pc"]  # --beta pc (default)
        assert r["mode"] in ("exact", "sampled") and r["radius"] >= -1
        assert r["n"] == (sum(r["counts"])) and (r["n"] > 0 or not r["correct"])
        assert r["radius_original"] == (r["radius"] + 1 if r["correct"] else None)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 6 and summary["accuracy"] == sum(r["correct"] for r in rows) / 6
    assert set(summary["by_beta"]) == {"one", "pc"}
    assert summary["by_beta"]["pc"]["mcb_largest"] == summary["mcb_largest"]
    table = (out / "table.md").read_text()
    assert "beta = 1 (rigorous)" in table and "beta = p_c" in table
    assert (out / "certified-accuracy.png").stat().st_size > 1000 and (out / "certified-accuracy.pdf").exists()
    assert f"results in {out}/" in res.stderr
    assert "accuracy of g" in (out / "table.md").read_text() and "accuracy of g" in res.stdout


def test_resume_after_crash_mid_row(certified, trained_run, tiny_setup, tmp_path):  # noqa: F811
    out, _ = certified
    full = (out / "certify.jsonl").read_text().splitlines()
    part = tmp_path / "part"
    part.mkdir()
    (part / "certify_config.json").write_text((out / "certify_config.json").read_text().replace(str(out), str(part)))
    (part / "certify.jsonl").write_text("\n".join(full[:2]) + "\n" + full[2][: len(full[2]) // 2])  # cut mid-row
    res = run_cli("certify.py", certify_args(trained_run, tiny_setup, part))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming: 2 of 6" in res.stderr and "partial last row" in res.stderr
    again = [json.loads(x) for x in (part / "certify.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in full]
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert [strip(r) for r in again] == [strip(r) for r in ref]


def test_progress_line_counts_resumed_and_new_rows(certified, trained_run, tiny_setup, tmp_path, caplog,  # noqa: F811
                                                   monkeypatch):
    """The log line of a run without a terminal says how many texts are done and the accuracy of g over every row
    so far (resumed rows and this run's), a true percentage after each group."""
    import logging
    import re

    import ranmask_jax.certify as certify_mod
    from ranmask_jax.config import CertifyConfig
    from ranmask_jax.progress import Heartbeat

    out, _ = certified
    full = [json.loads(x) for x in (out / "certify.jsonl").read_text().splitlines()]
    part = tmp_path / "part"
    part.mkdir()
    (part / "certify_config.json").write_text((out / "certify_config.json").read_text().replace(str(out), str(part)))
    (part / "certify.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full[:2]))
    monkeypatch.setattr(certify_mod, "Heartbeat", lambda logger, bar: Heartbeat(logger, bar, every=0.0))
    cfg = CertifyConfig(run_dir=str(trained_run), dataset=tiny_setup["dev"], split="dev", out=str(part), n0=10,
                        n=40, batch_size=16, num_examples=6, seed=1, texts_per_call=2)
    with caplog.at_level(logging.INFO, logger="ranmask_jax"):
        certify_mod.certify_dataset(cfg)
    lines = [m.groups() for r in caplog.records
             if (m := re.match(r"(\d+)/6 texts, accuracy of g so far ([\d.]+)%", r.getMessage()))]
    assert [int(d) for d, _ in lines] == [2, 4]  # before each of this run's two groups
    by_index = {r["index"]: r for r in full}
    order = [json.loads(x)["index"] for x in (part / "certify.jsonl").read_text().splitlines()]
    for done, pct in lines:
        correct = sum(by_index[i]["correct"] for i in order[:int(done)])
        assert float(pct) == pytest.approx(round(100 * correct / int(done), 1))


def test_changed_certify_config_refused(certified, trained_run, tiny_setup):  # noqa: F811
    out, _ = certified
    res = run_cli("certify.py", certify_args(trained_run, tiny_setup, out, "--alpha", "0.01"))
    assert res.returncode == 2 and "different config (alpha: 0.05 -> 0.01)" in res.stderr


def test_predict_from_stdin(trained_run):  # noqa: F811
    res = run_cli("certify.py", ["--run-dir", str(trained_run), "--predict", "-", "--n", "30", "--n0", "10",
                                 "--radius"], input="a good film\nthe plot was bad and long\n")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(x) for x in res.stdout.strip().splitlines()]
    assert [r["line"] for r in rows] == [1, 2]
    for r in rows:
        assert r["label"] in ("neg", "pos") and sum(r["votes"].values()) == r["n"]
        assert r["n0"] == (0 if r["mode"] == "exact" else 10)
        # one certificate gives the label, the votes and the radius: the label is the class whose bound certifies
        assert r["beta_mode"] == "pc" and r["radius"] == r["radius_pc"] and r["radius_one"] <= r["radius_pc"]
        if r["radius_one"] >= 0:
            assert r["p_lower"] > 0.5 and max(r["votes"], key=r["votes"].get) == r["label"]


def test_accuracy_only(trained_run, tiny_setup, tmp_path):  # noqa: F811
    out = tmp_path / "acc"
    res = run_cli("certify.py", certify_args(trained_run, tiny_setup, out, "--accuracy-only"))
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "certify.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all("radius" not in r and sum(r["counts"]) == r["n"] for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accuracy"] == sum(r["correct"] for r in rows) / 6


def test_sequential_plan_from_the_command_line(certified, trained_run, tiny_setup, tmp_path):  # noqa: F811
    """--plan sequential: the same texts as the fixed plan, rows that say the plan and what each text cost (never
    more than n0 + n_max copies), the summary with both betas; --beta mc is refused with it."""
    fixed = {r["index"]: r for r in map(json.loads, (certified[0] / "certify.jsonl").read_text().splitlines())}
    out = tmp_path / "seq"
    res = run_cli("certify.py", certify_args(trained_run, tiny_setup, out, "--plan", "sequential", "--n-max", "200"))
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "certify.jsonl").read_text().splitlines()]
    assert {r["index"] for r in rows} == set(fixed)
    for r in rows:
        assert r["plan"] == "sequential" and r["beta_mode"] == "pc" and r["radius"] == r["radius_pc"]
        assert 0 < r["copies"] <= 10 + 200 and r["n"] == sum(r["counts"])
        if r["mode"] == "sampled":
            assert fixed[r["index"]]["plan"] == "fixed" and r["p_lower"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["by_beta"]) == {"one", "pc"} and summary["copies_total"] == sum(r["copies"] for r in rows)
    bad = run_cli("certify.py", certify_args(trained_run, tiny_setup, tmp_path / "mc", "--plan", "sequential",
                                             "--beta", "mc"))
    assert bad.returncode == 2 and "--beta mc needs the fixed plan" in bad.stderr


def test_predict_long_and_zero_token_lines(trained_run):  # noqa: F811
    long_line = " ".join(["good"] + ["film"] * 299)
    for max_len in ([], ["--max-len", "16"]):
        res = run_cli("certify.py", ["--run-dir", str(trained_run), "--predict", "-", "--n", "20", "--n0", "10",
                                     "--radius", *max_len], input=f"{long_line}\na \u200b good film\n\u200b\n")
        assert res.returncode == 0, res.stderr[-3000:]
        rows = [json.loads(x) for x in res.stdout.strip().splitlines()]
        assert [r["h"] for r in rows] == [300, 4, 1]
        assert all("radius_one" in r and "radius_pc" in r for r in rows)


def test_max_len_beyond_the_model_is_refused(trained_run):  # noqa: F811
    res = run_cli("certify.py", ["--run-dir", str(trained_run), "--predict", "-", "--max-len", "65"], input="a b\n")
    assert res.returncode == 2 and "max_len 65 exceeds the model's 64 positions" in res.stderr
    assert "Traceback" not in res.stderr


def test_two_processes_give_the_rows_of_one(certified, trained_run, tiny_setup, tmp_path):  # noqa: F811
    """Two processes on localhost (CPU collectives) split the texts, write their own row files, and process 0
    merges them: the same rows as one process (same keys per text index), and the same summary."""
    from tests.test_train import run_processes

    one, _ = certified
    out = tmp_path / "two"
    results = run_processes("certify.py", lambda i: certify_args(trained_run, tiny_setup, out))
    for rc, err in results:
        assert rc == 0, err[-3000:]
    assert "process 1: 3 rows written" in results[1][1]  # the 6 texts were split, 3 each
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    rows = lambda d: sorted((strip(json.loads(x)) for x in (d / "certify.jsonl").read_text().splitlines()),  # noqa: E731
                            key=lambda r: r["index"])
    assert rows(out) == rows(one)
    assert not list(out.glob("certify.p*.jsonl"))  # merged and removed
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, out))
    assert {k: v for k, v in s1.items() if k not in ("seconds_total", "config")} == \
        {k: v for k, v in s2.items() if k not in ("seconds_total", "config")}


def test_resume_on_other_weights_only_if_they_answer_the_same(certified, trained_run, tiny_setup, tmp_path):  # noqa: F811
    """Rows written by weights with another fingerprint (retrained on another machine): the run redoes its first
    rows with their keys and resumes if the votes agree, else refuses, naming the text."""
    import ranmask_jax.certify as certify_mod
    from ranmask_jax.config import CertifyConfig

    out, _ = certified
    full = [json.loads(x) for x in (out / "certify.jsonl").read_text().splitlines()]
    stored = json.loads((out / "certify_config.json").read_text())

    def part(name, rows):
        d = tmp_path / name
        d.mkdir()
        (d / "certify_config.json").write_text(json.dumps({**stored, "out": str(d), "model_fingerprint": "0" * 16}))
        (d / "certify.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return d, CertifyConfig(run_dir=str(trained_run), dataset=tiny_setup["dev"], split="dev", out=str(d), n0=10,
                                n=40, batch_size=16, num_examples=6, seed=1)

    d, cfg = part("same", full[:3])
    certify_mod.certify_dataset(cfg)
    now = json.loads((d / "certify_config.json").read_text())
    assert now["model_fingerprint"] == stored["model_fingerprint"]
    assert now["earlier_weights"] == [{"model_fingerprint": "0" * 16, "probe_difference": 0.0, "rows_before": 3,
                                       "texts_checked": 3, "max_count_difference": 0}]
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert [strip(json.loads(x)) for x in (d / "certify.jsonl").read_text().splitlines()] == [strip(r) for r in full]

    other = dict(full[0], counts=full[0]["counts"][::-1], prediction=1 - full[0]["prediction"])  # another model's row
    d, cfg = part("other", [other, *full[1:3]])
    with pytest.raises(ValueError, match=rf"model weights changed: .* text {other['index']}: prediction"):
        certify_mod.certify_dataset(cfg)
    assert len((d / "certify.jsonl").read_text().splitlines()) == 3


def test_safer_certification_rows_and_summary(trained_run, tiny_setup, tmp_path):  # noqa: F811
    """certify.py --safer-table: one row per text with SAFER's bound and certificate, each text's copies from its own
    seed (a rerun gives the same rows); the table binds the run."""
    import json

    from ranmask_jax.safer import PerturbationTable

    sets = {"film": ["film", "movie"], "movie": ["movie", "film"], "plot": ["plot", "story", "scene"],
            "story": ["story", "plot"], "scene": ["scene", "plot", "story"]}
    PerturbationTable({"film": ["movie"], "movie": ["film"], "plot": ["story"], "story": ["plot"]},
                      sets).save(tmp_path / "t.json")
    out = tmp_path / "safer"
    args = certify_args(trained_run, tiny_setup, out, "--safer-table", str(tmp_path / "t.json"))
    res = run_cli("certify.py", args)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "certify.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    table = PerturbationTable.load(tmp_path / "t.json")
    for r in rows:
        assert sum(r["counts"]) == 40 and r["tv_bound"] == table.text_bound(r["text"])
        assert r["certified"] == (r["correct"] and r["p_lower"] - r["tv_bound"] > 0.5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["certified_accuracy"] == sum(r["certified"] for r in rows) / 6
    assert "SAFER on" in (out / "table.md").read_text()
    again = run_cli("certify.py", certify_args(trained_run, tiny_setup, tmp_path / "again", "--safer-table",
                                               str(tmp_path / "t.json")))
    assert again.returncode == 0
    assert [json.loads(x)["counts"] for x in (tmp_path / "again" / "certify.jsonl").read_text().splitlines()] == [
        r["counts"] for r in rows]
    bad = run_cli("certify.py", [*args, "--plan", "sequential"])
    assert bad.returncode == 2 and "--safer-table certifies with the fixed plan" in bad.stderr
    # accuracy only: each text's vote over n0 substitution copies, a summary that names SAFER and no rho
    acc = run_cli("certify.py", certify_args(trained_run, tiny_setup, tmp_path / "acc", "--safer-table",
                                             str(tmp_path / "t.json"), "--accuracy-only"))
    assert acc.returncode == 0, acc.stderr[-3000:]
    arows = [json.loads(x) for x in (tmp_path / "acc" / "certify.jsonl").read_text().splitlines()]
    assert [sum(r["counts"]) for r in arows] == [10] * 6 and [r["index"] for r in arows] == [r["index"] for r in rows]
    asum = json.loads((tmp_path / "acc" / "summary.json").read_text())
    assert asum["smoothing"] == "safer" and "rho" not in asum
    assert "substitution copies (SAFER" in (tmp_path / "acc" / "table.md").read_text()
