"""Bad input and faults: each gets one clear error line (exit code 2) naming the file, line, field or flag, and
no result is ever lost or mislabelled. Adding a case is one line in a table."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ranmask_jax import cli
from ranmask_jax.data import DataError, load_dataset, load_file
from ranmask_jax.files import FileError, RowFile
from tests.test_train import ROOT, run_cli, tiny_setup, train_args, trained_run  # noqa: F401  (fixtures)

# ---- data files: (file name, content, loader keyword arguments, expected error fragment) --------------------------
BAD_FILES = [
    ("stray.csv", 'text,label\ngood film,pos\n"bad film,neg\nfine,pos\nok",neg\nlast,pos\n', {},
     r'stray\.csv:3: a quoted field opened on this line runs on to line 5'),
    ("late.csv", 'text,label\ngood,pos\nbad,neg\n"unclosed,neg\n', {}, r"late\.csv:4: .* may never close"),
    ("latin.tsv", b"text\tlabel\ngood\tpos\ncaf\xe9 au lait\tneg\n", {},
     r"latin\.tsv:3: byte 0xe9 at column 4 is not valid utf-8 \(pass --encoding"),
    ("null.jsonl", '{"text": "a", "label": "pos"}\n{"text": "b", "label": null}\n', {},
     r"null\.jsonl:2 field 'label': missing label"),
    ("nullstr.csv", "text,label\na,pos\nb,null\n", {}, r"nullstr\.csv:3 field 'label': missing label \('null'\)"),
    ("case.jsonl", '{"text": "a", "label": "positive"}\n{"text": "b", "label": "Positive"}\n', {},
     r"case\.jsonl:2 field 'label': label 'Positive' differs only in case from label 'positive'"),
    ("lines.json", '{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n', {},
     r"lines\.json:2: malformed JSON .*name the file \.jsonl"),
    ("object.json", '{"text": "a", "label": 1}', {},
     r"object\.json: expected a JSON array of objects, got a JSON dict"),
    ("items.json", '[{"text": "a", "label": 1}, ["b", 0]]', {}, r"items\.json item 1: expected a JSON object"),
    ("nested.jsonl", '{"text": {"a": 1}, "label": 1}\n', {}, r"nested\.jsonl:1 field 'text': expected text"),
    ("unknown.csv", "text,label\na,pos\nb,meh\n", {"label_names": ["neg", "pos"]},
     r"unknown\.csv:3 field 'label': unknown label 'meh'; known labels: neg, pos"),
    ("short.csv", "text,label\na,pos\nb\n", {}, r"short\.csv:3: fewer fields \(1\) than the header's 2"),
    ("dir.jsonl/", None, {}, r"is a directory"),
    ("enc.tsv", "text\tlabel\na\tpos\n", {"encoding": "klingon"}, r"unknown --encoding 'klingon'"),
]


@pytest.mark.parametrize("name,content,kw,message", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_files_name_file_and_line(tmp_path, name, content, kw, message):
    p = tmp_path / name.rstrip("/")
    if content is None:
        p.mkdir()
    elif isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    with pytest.raises(DataError, match=message):
        load_file(p, **kw)


def test_good_files_that_used_to_fail(tmp_path):
    # a byte-order mark does not hide the first column
    (tmp_path / "bom.csv").write_bytes("\ufefftext,label\ngood,pos\nbad,neg\n".encode())
    assert len(load_file(tmp_path / "bom.csv")) == 2
    # another encoding on request
    (tmp_path / "latin.tsv").write_bytes(b"text\tlabel\ncaf\xe9\tpos\nbad\tneg\n")
    assert load_file(tmp_path / "latin.tsv", encoding="latin-1").examples[0].text == "caf\u00e9"
    # a 50k-word field: no field-size surprise
    (tmp_path / "long.csv").write_text("text,label\n" + '"' + " ".join(["word"] * 50000) + '",pos\nshort,neg\n')
    assert len(load_file(tmp_path / "long.csv").examples[0].text.split()) == 50000
    # fields with line breaks, when asked for
    (tmp_path / "multi.csv").write_text('text,label\n"line one\nline two",pos\nx,neg\n')
    with pytest.raises(DataError, match="multi.csv:2"):
        load_file(tmp_path / "multi.csv")
    assert load_file(tmp_path / "multi.csv", multiline_fields=True).examples[0].text == "line one line two"
    # a .json array of objects
    (tmp_path / "a.json").write_text(json.dumps([{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}]))
    ds = load_file(tmp_path / "a.json", label_names=["neg", "pos"])
    assert [e.label for e in ds.examples] == [1, 0]


def test_numeric_labels_are_one_label_whatever_their_spelling(tmp_path):
    (tmp_path / "n.jsonl").write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in
                                              [("a", "1.0"), ("b", 0), ("c", "1"), ("d", 0.0), ("e", "+1")]))
    ds = load_file(tmp_path / "n.jsonl")
    assert ds.label_names == ["0", "1"] and [e.label for e in ds.examples] == [1, 0, 1, 0, 1]
    # a run trained on "1.0"/"0.0" scores an integer 1 as "1.0", not as id 1
    ds = load_file(tmp_path / "n.jsonl", label_names=["1.0", "0.0"])
    assert [e.label for e in ds.examples] == [0, 1, 0, 1, 0]


def test_a_run_label_map_is_applied_by_name(tmp_path):
    # the same labels in another order: mapped by name, not by position
    (tmp_path / "r.json").write_text(json.dumps([{"text": "x", "label": "pos"}, {"text": "y", "label": "neg"}]))
    ds = load_dataset(str(tmp_path / "r.json"), "test", label_names=["neg", "pos"])
    assert ds.label_names == ["neg", "pos"] and [e.label for e in ds.examples] == [1, 0]
    # a preset whose labels the run does not have is refused with both lists
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "test.txt").write_text("fine\t1\nbad\t0\n")
    with pytest.raises(DataError, match=r"labels \['negative', 'positive'\] do not match the model's \['1', '0'\]"):
        load_dataset("sst2", "test", tmp_path, label_names=["1.0", "0.0"])
    assert load_dataset("sst2", "test", tmp_path, label_names=["Positive", "Negative"]).examples[0].label == 0


# ---- the command lines: (argv, expected fragment of the one error line) --------------------------------------------
CERTIFY, TRAIN = ["certify", "--run-dir", "r", "--out", "o"], ["train", "--out-dir", "o"]
FLAG_ERRORS = [  # (command line, expected fragment of the error)
    (CERTIFY + ["--mask-side", "bogus"], "mask_side must be first, second or both, got 'bogus'"),
    (CERTIFY + ["--beta", "mc", "--n-r", "0"], "n_r must be >= 1, got 0"),
    (CERTIFY + ["--batch-size", "0"], "batch_size must be >= 1, got 0"),
    (CERTIFY + ["--min-keep", "-5"], "min_keep must be >= 0, got -5"),
    (CERTIFY + ["--exact-threshold", "-5"], "exact_threshold must be in [0, 1e+07]"),
    (CERTIFY + ["--exact-threshold", "100000000000"], "exact_threshold must be in [0, 1e+07] (every enumerated"),
    (CERTIFY + ["--seed", "-1"], "seed must be an integer in [0, 2^32), got -1"),
    (CERTIFY + ["--seed", "99999999999999999999999"], "seed must be an integer in [0, 2^32), got 9999"),
    (CERTIFY + ["--dtype", "float8"], "dtype must be one of float32, bfloat16, float16, got 'float8'"),
    (CERTIFY + ["--num-examples", "nine"], "argument --num-examples: invalid int value: 'nine'"),
    (TRAIN + ["--seed", "-1"], "seed must be an integer in [0, 2^32), got -1"),
    (TRAIN + ["--dtype", "float8"], "dtype must be one of float32, bfloat16, float16, got 'float8'"),
    (CERTIFY + ["--max-len", "0"], "max_len must be >= 1, got 0"),
    (CERTIFY + ["--rho", "1.5"], "rho must be in [0, 1], got 1.5"),
    (CERTIFY + ["--beta", "two"], "beta must be pc, one or mc, got 'two'"),
    (TRAIN + ["--mask-side", "bogus"], "mask_side must be first, second or both"),
    (TRAIN + ["--min-keep", "-5"], "min_keep must be >= 0, got -5"),
    (TRAIN + ["--max-len", "0"], "max_len must be >= 1, got 0"),
    (TRAIN + ["--batch-size", "0"], "batch_size must be >= 1, got 0"),
]


@pytest.mark.parametrize("argv,message", FLAG_ERRORS, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in FLAG_ERRORS])
def test_bad_flags(capsys, argv, message):
    main = {"certify": cli.certify_main, "train": cli.train_main}[argv[0]]
    with pytest.raises(SystemExit) as e:
        main(argv[1:])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_help_shows_each_default_once(capsys):
    with pytest.raises(SystemExit):
        cli.certify_main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # help lines wrap
    assert "(default: 5000)" in out and "(default: 5000) (default: 5000)" not in out


def _one_error_line(code, err):
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    return [x for x in err.splitlines() if x.startswith("error:")][0]


def _copy_run(trained_run, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints", "certify*"))
    return run


DAMAGED = [  # (file in the run directory, new content, expected fragment)
    ("model/model.safetensors", b"\x00\x01garbage", "model.safetensors: not a readable safetensors file"),
    ("ranmask_run.json", b'{"rho": 0.3,', "ranmask_run.json: damaged JSON"),
    ("model/config.json", b"{nope", "config.json: not valid JSON"),
]


@pytest.mark.parametrize("name,content,message", DAMAGED, ids=[d[0] for d in DAMAGED])
def test_damaged_run_files(capsys, trained_run, tmp_path, name, content, message):  # noqa: F811
    run = _copy_run(trained_run, tmp_path)
    (run / name).write_bytes(content)
    code = cli.certify_main(["--run-dir", str(run), "--predict", str(_texts(tmp_path))])
    assert message in _one_error_line(code, capsys.readouterr().err)


def _texts(tmp_path):
    p = tmp_path / "texts.txt"
    p.write_text("a good film\n")
    return p


def test_pickle_refusal_points_to_a_flag_certify_has(capsys, trained_run, tmp_path):  # noqa: F811
    run = _copy_run(trained_run, tmp_path)
    (run / "model" / "model.safetensors").unlink()
    (run / "model" / "pytorch_model.bin").write_bytes(b"not really")
    code = cli.certify_main(["--run-dir", str(run), "--predict", str(_texts(tmp_path))])
    assert "--allow-pickle" in _one_error_line(code, capsys.readouterr().err)
    with pytest.raises(SystemExit):
        cli.certify_main(["--help"])
    assert "--allow-pickle" in capsys.readouterr().out


def test_missing_relative_run_dir_is_not_a_hub_download(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    code = cli.certify_main(["--run-dir", "runs/sst2", "--predict", str(_texts(tmp_path))])
    line = _one_error_line(code, capsys.readouterr().err)
    assert "runs/sst2: no such directory" in line and "hub" not in line


def test_damaged_certify_config(capsys, trained_run, tiny_setup, tmp_path):  # noqa: F811
    out = tmp_path / "c"
    out.mkdir()
    (out / "certify.jsonl").write_text('{"index": 0, "correct": true}\n')
    (out / "certify_config.json").write_text("{")
    code = cli.certify_main(_certify_argv(trained_run, tiny_setup, out))
    assert "certify_config.json: damaged JSON" in _one_error_line(code, capsys.readouterr().err)


def test_damaged_train_config(capsys, tiny_setup, tmp_path):  # noqa: F811
    out = tmp_path / "t"
    (out / "checkpoints" / "2").mkdir(parents=True)
    (out / "train_config.json").write_text("[1, 2")
    code = cli.train_main(train_args(tiny_setup, out))
    assert "train_config.json: damaged JSON" in _one_error_line(code, capsys.readouterr().err)


def test_single_label_training_data_is_refused(capsys, tiny_setup, tmp_path):  # noqa: F811
    one = tmp_path / "one.jsonl"
    one.write_text("".join(json.dumps({"text": f"text {i}", "label": "pos"}) + "\n" for i in range(40)))
    code = cli.train_main(train_args(tiny_setup, tmp_path / "t", "--dataset", str(one)))
    assert "one.jsonl: the training data has 1 label (pos); a classifier needs at least two" in \
        _one_error_line(code, capsys.readouterr().err)


def test_unwritable_checkpoint_directory_fails_before_training(capsys, tiny_setup, tmp_path):  # noqa: F811
    out = tmp_path / "t"
    out.mkdir()
    (out / "checkpoints").write_text("a file where the checkpoint directory should be")
    t0 = time.perf_counter()
    code = cli.train_main(train_args(tiny_setup, out))
    assert "cannot write checkpoints there" in _one_error_line(code, capsys.readouterr().err)
    assert time.perf_counter() - t0 < 60


# ---- results: never lost, never counted twice ------------------------------------------------------------------------
def _certify_argv(run, setup, out, *extra):
    return ["--run-dir", str(run), "--dataset", setup["dev"], "--split", "dev", "--out", str(out), "--n0", "10",
            "--n", "40", "--batch-size", "16", "--num-examples", "6", "--seed", "1", *extra]


def test_a_second_run_into_the_same_output_is_refused(capsys, trained_run, tiny_setup, tmp_path):  # noqa: F811
    out = tmp_path / "c"
    with RowFile(out / "certify.jsonl"):  # another run holds it
        code = cli.certify_main(_certify_argv(trained_run, tiny_setup, out))
    assert "another run is writing certify.jsonl" in _one_error_line(code, capsys.readouterr().err)
    assert not (out / "certify_config.json").exists()


def test_duplicate_rows_are_an_error(tmp_path):
    p = tmp_path / "certify.jsonl"
    p.write_text('{"index": 3}\n{"index": 5}\n{"index": 3}\n')
    with pytest.raises(FileError, match=r"certify\.jsonl:3: a second row for index 3 \(the first is at "
                                        r"certify\.jsonl:1\)"):
        with RowFile(p):
            pass
    p.write_text('{"index": 3}\n{"ind\n{"index": 4}\n')
    with pytest.raises(FileError, match=r"certify\.jsonl:2: damaged row in the middle"):
        with RowFile(p):
            pass
    p.write_text('{"index": 1}\n{"index": 2}\nnot json at all\n')  # complete, garbage, and last
    with pytest.raises(FileError, match=r"certify\.jsonl:3: the last row is complete but not JSON"):
        with RowFile(p):
            pass


def test_torn_last_row_is_cut_not_rewritten(tmp_path):
    p = tmp_path / "certify.jsonl"
    p.write_text('{"index": 1}\n{"index": 2}\n{"index": 3, "te')
    inode = p.stat().st_ino
    with RowFile(p) as rf:
        assert [r["index"] for r in rf.rows] == [1, 2]
        rf.append({"index": 3})
    assert p.read_text() == '{"index": 1}\n{"index": 2}\n{"index": 3}\n' and p.stat().st_ino == inode
    p.write_text('{"index": 1}\n{"index": 2}')  # complete, only the newline is missing: kept
    with RowFile(p) as rf:
        assert len(rf.rows) == 2


def _holds_open(pid: int, name: str) -> bool:
    """Whether process ``pid`` has a file called ``name`` open (Linux /proc)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").endswith("/" + name):
                return True
        except OSError:
            continue
    return False


def _names(lock: Path, pid: int) -> bool:
    try:
        return f"pid {pid}," in lock.read_text()
    except FileNotFoundError:
        return False


def test_kill_during_start_up_loses_no_row(trained_run, tiny_setup, tmp_path):  # noqa: F811
    out = tmp_path / "c"
    res = run_cli("certify.py", _certify_argv(trained_run, tiny_setup, out))
    assert res.returncode == 0, res.stderr[-2000:]
    full = (out / "certify.jsonl").read_text()
    assert len(full.splitlines()) == 6  # one row per text: the comparisons below are about something
    kept = "".join(full.splitlines(keepends=True)[:4])
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    lock = out / "certify.jsonl.lock"
    for sig in (signal.SIGKILL, signal.SIGINT):
        (out / "certify.jsonl").write_text(kept)
        argv = [sys.executable, str(ROOT / "certify.py"), *_certify_argv(trained_run, tiny_setup, out)]
        # Ctrl-C as in a terminal. Under a shell that runs this suite in the background (CI, nohup ... &) SIGINT
        # is ignored, a child inherits that, and its Python then installs no KeyboardInterrupt handler: the run
        # would shrug the signal off. A handled signal is reset to its default in the child, so the suite handles
        # it while it starts the run.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            signal.signal(signal.SIGINT, previous)
        # the window this test is about: the run holds the lock and has opened its row file, and has written no
        # row yet (a run that truncated or rewrote the file on opening would lose the kept rows here)
        # (the note naming the holder is written just after the lock is taken: wait for both)
        deadline = time.monotonic() + 120
        while not (_holds_open(proc.pid, "certify.jsonl") and _names(lock, proc.pid)) and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never opened its row file and took the lock"
            time.sleep(0.001)
        assert f"pid {proc.pid}," in lock.read_text()  # it holds the lock
        proc.send_signal(sig)
        at_kill = (out / "certify.jsonl").read_text()
        proc.wait()
        assert proc.returncode != 0 and at_kill == kept, (sig, proc.returncode)  # the kill hit that window
        assert (out / "certify.jsonl").read_text().startswith(kept), sig
    res = run_cli("certify.py", _certify_argv(trained_run, tiny_setup, out))
    assert res.returncode == 0, res.stderr[-2000:]
    strip = lambda text: [{k: v for k, v in json.loads(x).items() if k != "seconds"}  # noqa: E731
                          for x in text.splitlines()]
    assert strip((out / "certify.jsonl").read_text()) == strip(full)


def test_resume_notices_changed_weights_or_data(capsys, trained_run, tiny_setup, tmp_path):  # noqa: F811
    run = _copy_run(trained_run, tmp_path)
    out = tmp_path / "c"
    assert cli.certify_main(_certify_argv(run, tiny_setup, out, "--num-examples", "2")) == 0
    # other data rows behind the same flags
    data = tmp_path / "dev.jsonl"
    rows = [json.loads(x) for x in Path(tiny_setup["dev"]).read_text().splitlines()]
    data.write_text("".join(json.dumps(dict(r, text=r["text"] + " indeed")) + "\n" for r in rows))
    argv = _certify_argv(run, tiny_setup, out, "--num-examples", "2")
    argv[argv.index("--dataset") + 1] = str(data)
    code = cli.certify_main(argv)
    assert "the data changed: example" in _one_error_line(code, capsys.readouterr().err)
    # other weights behind the same run directory
    from safetensors.numpy import load_file as load_st
    from safetensors.numpy import save_file

    tensors = load_st(run / "model" / "model.safetensors")
    # another model: the classifier's logits flip (weights that differ only by rounding resume: test_certify_run)
    head = next(k for k in sorted(tensors) if k.startswith("classifier") and k.endswith("weight"))
    tensors[head] = -tensors[head]
    save_file(tensors, str(run / "model" / "model.safetensors"))
    code = cli.certify_main(_certify_argv(run, tiny_setup, out, "--num-examples", "2"))
    assert "the model weights changed" in _one_error_line(code, capsys.readouterr().err)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(caplog, tiny_setup, tmp_path):  # noqa: F811
    out = tmp_path / "t"
    assert cli.train_main(train_args(tiny_setup, out, "--epochs", "1", "--checkpoint-every", "4")) == 0
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert len(steps) == 2
    latest = out / "checkpoints" / str(steps[-1])
    for f in latest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # truncated mid-write
    caplog.clear()
    caplog.set_level("INFO", logger="ranmask_jax")
    assert cli.train_main(train_args(tiny_setup, out, "--epochs", "1", "--checkpoint-every", "4")) == 0
    err = caplog.text
    assert f"checkpoint of step {steps[-1]} is unreadable" in err and f"from step {steps[0]}" in err
    assert (out / "corrupt-checkpoints" / str(steps[-1])).exists()


def test_rowfile_lock_is_released_by_a_killed_process(tmp_path):
    p = tmp_path / "rows.jsonl"
    code = (f"from ranmask_jax.files import RowFile; import time\n"
            f"rf = RowFile({str(p)!r}).__enter__(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(OSError, match="another run is writing rows.jsonl"):
        with RowFile(p):
            pass
    # deleting the note beside it (or the note being stale) lets no second writer in: the lock is on the rows
    assert "the lock is held on rows.jsonl itself" in rf_note(p)
    p.with_name("rows.jsonl.lock").unlink()
    with pytest.raises(OSError, match=r"another run is writing rows.jsonl \(another process\)"):
        with RowFile(p):
            pass
    proc.kill()
    proc.wait()
    with RowFile(p) as rf:  # the OS released the lock with the process; a stale note changes nothing
        assert rf.rows == []
        rf.append({"index": 1})
    assert not rf.lock_path.exists()  # removed on a clean exit
    with open(p) as f:  # and the lock is free again
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def rf_note(p):
    return p.with_name(p.name + ".lock").read_text()


def test_deleting_the_lock_note_cannot_make_two_writers(trained_run, tiny_setup, tmp_path):  # noqa: F811
    """Run A certifies; its lock note is deleted; run B into the same --out is refused, and A's rows are whole."""
    out = tmp_path / "c"
    slow = ["--n", "3000"]  # A is still writing when B starts
    argv = [sys.executable, str(ROOT / "certify.py"), *_certify_argv(trained_run, tiny_setup, out, *slow)]
    a = subprocess.Popen(argv, env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "certify.jsonl.lock").exists() and a.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    (out / "certify.jsonl.lock").unlink()
    b = run_cli("certify.py", _certify_argv(trained_run, tiny_setup, out, *slow))
    assert a.poll() is None  # B ran while A held the rows
    a.wait()
    assert a.returncode == 0 and b.returncode == 2 and "another run is writing certify.jsonl" in b.stderr
    rows = [json.loads(x) for x in (out / "certify.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in rows) == sorted({r["index"] for r in rows}) and len(rows) == 6


# ---- garbage from the model: no certificate, vote or score is made of it -------------------------------------------
FORTY = " ".join(f"word{i}" for i in range(40))


def _garbage_engine(bert_tokenizer, logits_fn, num_labels=2, **kw):
    from ranmask_jax.masking import UniformKeepSets
    from ranmask_jax.smoothing import SmoothedClassifier

    return SmoothedClassifier.from_logits_fn(logits_fn, {}, bert_tokenizer, UniformKeepSets(0.3),
                                             num_labels=num_labels, batch_size=64, **kw)


def _all_nan(p, ids, attn, types):
    import jax.numpy as jnp

    return jnp.full((ids.shape[0], 2), jnp.nan)


def _all_inf(p, ids, attn, types):
    import jax.numpy as jnp

    return jnp.full((ids.shape[0], 2), jnp.inf)


def _some_nan(p, ids, attn, types):  # NaN for the copies that mask the first word (id 103), finite for the others
    import jax.numpy as jnp

    return jnp.where(ids[:, 1:2] == 103, jnp.nan, 1.0) * jnp.ones((ids.shape[0], 2))


GARBAGE_LOGITS = [("nan", _all_nan), ("inf", _all_inf), ("some-copies-nan", _some_nan)]


@pytest.mark.parametrize("name,fn", GARBAGE_LOGITS, ids=[g[0] for g in GARBAGE_LOGITS])
def test_non_finite_logits_are_never_voted_or_certified(bert_tokenizer, name, fn):
    import jax

    from ranmask_jax.engine import NonFiniteLogits

    sc = _garbage_engine(bert_tokenizer, fn)
    with pytest.raises(NonFiniteLogits, match="NaN or inf logits"):
        sc.certify_many([jax.random.key(0)], [FORTY], [0], n0=50, n=200, beta="one")
    with pytest.raises(NonFiniteLogits):
        sc.predict(jax.random.key(0), FORTY, n=50)
    if fn is not _some_nan:  # the unmasked texts hold no mask token: their logits are finite
        with pytest.raises(NonFiniteLogits):
            sc.base_logits([FORTY, "a b"])


@pytest.mark.parametrize("shape", [(1,), (3,), ()], ids=["[B,1]", "[B,3]", "[B]"])
def test_logits_of_the_wrong_shape_are_refused(bert_tokenizer, shape):
    import jax
    import jax.numpy as jnp

    sc = _garbage_engine(bert_tokenizer, lambda p, i, a, t: jnp.zeros((i.shape[0], *shape)))
    with pytest.raises(ValueError, match=r"logits of shape \([\d, ]+\) for \d+ inputs; expected \[\d+, 2\]"):
        sc.predict(jax.random.key(0), FORTY, n=50)
    with pytest.raises(ValueError, match="expected"):
        sc.base_logits(["a b"])


def _poison(run, tmp_path, change):
    from tests.test_attacks import rewrite_weights

    bad = _copy_run(run, tmp_path)
    rewrite_weights(bad / "model" / "model.safetensors", change)
    return bad


def test_a_model_with_nan_weights_stops_every_command(capsys, trained_run, tiny_setup, tmp_path):  # noqa: F811
    import numpy as np

    def nan_embeddings(t):
        name = next(k for k in t if k.endswith("word_embeddings.weight"))
        t[name] = np.full_like(t[name], np.nan)

    bad = _poison(trained_run, tmp_path, nan_embeddings)
    out = tmp_path / "c"
    code = cli.certify_main(_certify_argv(bad, tiny_setup, out))
    line = _one_error_line(code, capsys.readouterr().err)
    assert "NaN or inf logits" in line and str(bad) in line
    assert not (out / "certify.jsonl").exists() or (out / "certify.jsonl").read_text() == ""
    texts = tmp_path / "t.txt"
    texts.write_text("a good film\n")
    code = cli.certify_main(["--run-dir", str(bad), "--predict", str(texts), "--radius", "--n", "20"])
    assert "NaN or inf logits" in _one_error_line(code, capsys.readouterr().err)
    from attacks.cli import main as attack_main

    code = attack_main(["--run-dir", str(bad), "--dataset", tiny_setup["dev"], "--split", "test", "--out",
                        str(tmp_path / "a"), "--num-examples", "2", "--n", "8"])
    assert "NaN or inf logits" in _one_error_line(code, capsys.readouterr().err)
    assert not (tmp_path / "a" / "attack.jsonl").exists() or (tmp_path / "a" / "attack.jsonl").read_text() == ""


def test_a_model_smaller_than_its_tokenizer_is_refused(capsys, trained_run, tmp_path):  # noqa: F811
    from ranmask_jax.models import CheckpointError, load_pretrained

    bad = _copy_run(trained_run, tmp_path)
    cfg_path = bad / "model" / "config.json"
    cfg = json.loads(cfg_path.read_text())

    def shrink(t):
        name = next(k for k in t if k.endswith("word_embeddings.weight"))
        t[name] = t[name][:1000]

    from tests.test_attacks import rewrite_weights

    rewrite_weights(bad / "model" / "model.safetensors", shrink)
    cfg_path.write_text(json.dumps({**cfg, "vocab_size": 1000}))
    with pytest.raises(CheckpointError, match=r"tokenizer has 30522 token ids but the model's vocab_size is 1000"):
        load_pretrained(bad)
    code = cli.certify_main(["--run-dir", str(bad), "--predict", "-", "--n", "5"])
    assert "vocab_size is 1000" in _one_error_line(code, capsys.readouterr().err)


def test_a_purifier_with_another_vocabulary_size_is_refused(bert_tokenizer):
    from flax import nnx

    from ranmask_jax.models import build_model, tiny
    from ranmask_jax.purify import RefillError, mlm_refill

    mlm = build_model(tiny(vocab_size=len(bert_tokenizer) + 64), "mlm", rngs=nnx.Rngs(0))
    with pytest.raises(RefillError, match=r"30586 vocabulary rows and the classifier 30522"):
        mlm_refill(mlm, bert_tokenizer, bert_tokenizer, classifier_vocab_size=len(bert_tokenizer))


def test_sampled_copies_are_drawn_in_passes_whatever_n(bert_tokenizer, monkeypatch):
    """Memory flat in n: predict and certify never sample more than STREAM_CHUNK copies of a text at once, and the
    streamed votes add up to n (benchmarks/predict_memory.py measures the peak)."""
    import jax
    import jax.numpy as jnp

    import ranmask_jax.smoothing as smoothing

    monkeypatch.setattr(smoothing, "STREAM_CHUNK", 128)
    sc = _garbage_engine(bert_tokenizer, lambda p, i, a, t: jax.nn.one_hot(i[:, 1] % 2, 2))
    sizes = []
    inner = sc.distinct_keep_sets
    monkeypatch.setattr(sc, "distinct_keep_sets",
                        lambda key, enc, n, exact: sizes.append(n) or inner(key, enc, n, exact))
    pr = sc.predict(jax.random.key(0), FORTY, n=1000, exact_threshold=0)
    assert pr.n == 1000 and max(sizes) <= 128 and len(sizes) == 8
    sizes.clear()
    cert = sc.certify(jax.random.key(0), FORTY, None, n0=100, n=1000, exact_threshold=0)
    assert cert.n == 1000 and max(sizes) <= 128
    assert float(jnp.asarray(pr.scores).sum()) == pytest.approx(1.0)


# ---- the minor rows of the garbage probe ------------------------------------------------------------------------
def test_none_means_all_for_optional_counts():
    from attacks.run import AttackConfig
    from ranmask_jax.cli import parse_config
    from ranmask_jax.config import CertifyConfig

    cfg = parse_config(CertifyConfig, ["--run-dir", "r", "--out", "o", "--num-examples", "none"], "p", "d")
    assert cfg.num_examples is None
    cfg = parse_config(AttackConfig, ["--run-dir", "r", "--out", "o", "--num-examples", "None", "--limit", "none"],
                       "p", "d")
    assert cfg.num_examples is None and cfg.limit is None


def test_max_len_without_room_for_text(capsys, trained_run, tmp_path):  # noqa: F811
    code = cli.certify_main(["--run-dir", str(trained_run), "--predict", str(_texts(tmp_path)), "--max-len", "1"])
    assert "max_len 1 leaves no room for text beside the tokenizer's 2 special tokens" in _one_error_line(
        code, capsys.readouterr().err)


@pytest.mark.parametrize("kind", ["file", "dangling-symlink"])
def test_out_that_is_not_a_directory(capsys, trained_run, tiny_setup, tmp_path, kind):  # noqa: F811
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("x")
        want = f"{out}: a file, not a directory"
    else:
        out.symlink_to(tmp_path / "nowhere")
        want = f"{out}: a symbolic link to {tmp_path / 'nowhere'}, which does not exist"
    code = cli.certify_main(_certify_argv(trained_run, tiny_setup, out))
    assert want in _one_error_line(code, capsys.readouterr().err)


def test_a_malicious_pickle_is_one_line_even_when_allowed(capsys, trained_run, tmp_path):  # noqa: F811
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    run = _copy_run(trained_run, tmp_path)
    (run / "model" / "model.safetensors").unlink()
    (run / "model" / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    code = cli.certify_main(["--run-dir", str(run), "--predict", str(_texts(tmp_path)), "--allow-pickle"])
    assert "pytorch_model.bin: not a plain tensor checkpoint" in _one_error_line(code, capsys.readouterr().err)
    assert not (tmp_path / "pwned").exists()


RUN_META_VALUES = [("rho", 7, "rho must be a number in [0, 1], got 7"),
                   ("min_keep", -3, "min_keep must be an integer >= 0, got -3"),
                   ("min_keep", 2.5, "min_keep must be an integer >= 0, got 2.5"),
                   ("max_len", -5, "max_len must be an integer >= 1, got -5"),
                   ("label_names", 5, "label_names must be a list of strings, got 5"),
                   ("mask_side", "middle", "mask_side must be first, second or both, got 'middle'")]


@pytest.mark.parametrize("key,value,message", RUN_META_VALUES, ids=[f"{k}={v}" for k, v, _ in RUN_META_VALUES])
def test_bad_values_in_the_run_file_name_it(capsys, trained_run, tmp_path, key, value, message):  # noqa: F811
    run = _copy_run(trained_run, tmp_path)
    meta = json.loads((run / "ranmask_run.json").read_text())
    (run / "ranmask_run.json").write_text(json.dumps({**meta, key: value}))
    code = cli.certify_main(["--run-dir", str(run), "--predict", "-", "--n", "5"])
    assert f"ranmask_run.json: {message}" in _one_error_line(code, capsys.readouterr().err)


def test_export_refuses_another_models_directory_and_overwrites_cleanly(tmp_path, bert_tokenizer):
    from flax import nnx

    from ranmask_jax.models import build_model, export_pretrained, load_pretrained, tiny

    cfg = tiny(vocab_size=len(bert_tokenizer))
    out = tmp_path / "m"
    out.mkdir()
    for stale in ("vocab.json", "merges.txt", "model.safetensors.index.json"):  # another model's files
        (out / stale).write_text("{}")
    (out / "notes.txt").write_text("mine")
    model = build_model(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(FileExistsError, match=r"m: not empty .*pass overwrite=True"):
        export_pretrained(model, bert_tokenizer, cfg, out)
    export_pretrained(model, bert_tokenizer, cfg, out, overwrite=True)
    names = {p.name for p in out.iterdir()}
    assert not names & {"vocab.json", "merges.txt", "model.safetensors.index.json"} and "notes.txt" in names
    load_pretrained(out)  # the directory holds one model


def _summarize(script, *args):
    """``python experiments/SCRIPT ARGS`` run in this process: ``(returncode, stderr)``."""
    import contextlib
    import io
    import runpy

    err = io.StringIO()
    argv, sys.argv = sys.argv, [script, *map(str, args)]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(str(ROOT / "experiments" / script), run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess([script], code, "", err.getvalue())


def test_summary_scripts_on_bad_input(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for script, arg, message in (("summarize.py", empty, "not a run directory"),
                                 ("summarize_attacks.py", empty, "not an attack output directory")):
        res = _summarize(script, arg)
        assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr
    cell = tmp_path / "cell"
    cell.mkdir()
    (cell / "attack_config.json").write_text(json.dumps({"recipe": "deepwordbug", "ensemble": "vote"}))
    row = {"index": 1, "status": "failed", "label": 0, "recheck_prediction": 0, "queries": 3, "seconds": 1.0,
           "perturbed_fraction": 0.0}
    (cell / "attack.jsonl").write_text(json.dumps(row) + "\n{garbage\n" + json.dumps(dict(row, index=2)) + "\n")
    res = _summarize("summarize_attacks.py", cell)
    assert res.returncode == 2 and "attack.jsonl:2: damaged row" in res.stderr and "Traceback" not in res.stderr
    (cell / "attack.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    res = _summarize("summarize_attacks.py", cell)
    assert res.returncode == 2 and "a second row for index 1" in res.stderr
    runs = []
    for n in (100, 200):  # two runs certified with other n: refused together
        run = tmp_path / f"run{n}"
        (run / "certify-test").mkdir(parents=True)
        (run / "ranmask_run.json").write_text(json.dumps({"rho": 0.3, "step": 1}))
        (run / "certify-test" / "certify_config.json").write_text(json.dumps({"n0": 10, "n": n, "alpha": 0.05}))
        runs.append(run)
    res = _summarize("summarize.py", *runs)
    assert res.returncode == 2 and "different (n0, n, alpha)" in res.stderr and "Traceback" not in res.stderr


def test_attacks_search_only_the_words_the_model_reads(bert_tokenizer):
    from attacks.constraints import WithinFirst
    from attacks.run import words_read
    from ranmask_jax.smoothing import SmoothedClassifier
    from tests.classifiers import BagOfWords

    sc = SmoothedClassifier(BagOfWords(len(bert_tokenizer)), bert_tokenizer, 0.3, max_len=16)
    long_text = " ".join(["alpha", "antidisestablishment"] * 200)  # far past 16 tokens
    n = words_read(sc, long_text)
    read = bert_tokenizer(long_text, truncation=True, max_length=16)["input_ids"][1:-1]
    assert 1 <= n < 16 and n == len(bert_tokenizer.decode(read).split())  # the last word may be cut
    assert words_read(sc, "a short text") == 3
    assert [i for i in range(40) if WithinFirst(n)(None, i)] == list(range(n))


# ---- the second bad-input probe --------------------------------------------------------------------------------
def test_damaged_gzip_names_the_file_and_line(tmp_path):
    import gzip

    good = b"".join(json.dumps({"text": f"text {i}", "label": i % 2}).encode() + b"\n" for i in range(2000))
    whole = gzip.compress(good)
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz:\d+: the compressed file ends early or is damaged"):
        load_file(tmp_path / "cut.jsonl.gz")
    (tmp_path / "plain.jsonl.gz").write_bytes(good)
    with pytest.raises(DataError, match=r"plain\.jsonl\.gz: not a gzip file"):
        load_file(tmp_path / "plain.jsonl.gz")


def test_predict_reads_files_as_every_reader_does(capsys, trained_run, tmp_path):  # noqa: F811
    bad = tmp_path / "bytes.txt"
    bad.write_bytes(b"a good film\nbad film \xff\n")
    code = cli.certify_main(["--run-dir", str(trained_run), "--predict", str(bad), "--n", "5"])
    line = _one_error_line(code, capsys.readouterr().err)
    assert f"{bad}:2: byte 0xff at column 10 is not valid utf-8" in line
    assert cli.certify_main(["--run-dir", str(trained_run), "--predict", str(bad), "--n", "5", "--encoding",
                             "latin-1"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [r["line"] for r in rows] == [1, 2] and rows[1]["text"] == "bad film \u00ff"
    odd = tmp_path / "cr.txt"  # a byte-order mark, a lone \r inside a line, CRLF endings: one row per line
    odd.write_bytes(b"\xef\xbb\xbfa good\rfilm\r\nbad one\r\n")
    assert cli.certify_main(["--run-dir", str(trained_run), "--predict", str(odd), "--n", "5"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [(r["line"], r["text"]) for r in rows] == [(1, "a good\rfilm"), (2, "bad one")]


def test_a_full_disk_names_the_file_and_loses_nothing(capsys, trained_run, tiny_setup, tmp_path,  # noqa: F811
                                                     monkeypatch):
    import errno

    import ranmask_jax.files as files

    out = tmp_path / "c"
    assert cli.certify_main(_certify_argv(trained_run, tiny_setup, out, "--num-examples", "2")) == 0
    written = (out / "certify.jsonl").read_text()
    capsys.readouterr()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)  # the next row cannot be written
    code = cli.certify_main(_certify_argv(trained_run, tiny_setup, out, "--num-examples", "4"))
    line = _one_error_line(code, capsys.readouterr().err)
    assert f"{out / 'certify.jsonl'}: cannot write a row (No space left on device)" in line
    assert (out / "certify.jsonl").read_text().startswith(written)
    monkeypatch.undo()
    import matplotlib.figure

    before = (out / "certified-accuracy.png").read_bytes()
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)  # now the figure cannot be written
    code = cli.certify_main(_certify_argv(trained_run, tiny_setup, out, "--num-examples", "4"))
    line = _one_error_line(code, capsys.readouterr().err)
    assert "certified-accuracy.png: cannot write it (No space left on device); nothing was replaced" in line
    assert (out / "certified-accuracy.png").read_bytes() == before  # the old figure, not an empty file
    assert not list(out.glob(".*.tmp*"))
    assert len((out / "certify.jsonl").read_text().splitlines()) >= 4  # every row was written before the summary


def test_train_refuses_a_disk_that_cannot_hold_a_checkpoint(capsys, tiny_setup, tmp_path, monkeypatch):  # noqa: F811
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1 << 16))
    code = cli.train_main(train_args(tiny_setup, tmp_path / "t"))
    line = _one_error_line(code, capsys.readouterr().err)
    assert "0 MiB free, but a checkpoint and the exported model need up to" in line
    assert not any((tmp_path / "t" / "checkpoints").glob("[0-9]*"))


@pytest.mark.parametrize("name", ["mysst2run", "nosuchdir/run"])
def test_a_missing_run_dir_says_so_before_the_hub(capsys, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = cli.certify_main(["--run-dir", name, "--predict", str(_texts(tmp_path))])
    line = _one_error_line(code, capsys.readouterr().err)
    assert f"{name}: no such local directory ({tmp_path / name} does not exist)" in line and "hub" in line


API_ERRORS = [  # (keyword arguments of certify_many, expected fragment)
    ({"n": 0}, "n must be an integer >= 1, got 0"),
    ({"n0": 0}, "n0 must be an integer >= 1, got 0"),
    ({"n": -5}, "n must be an integer >= 1, got -5"),
    ({"n": 2.5}, "n must be an integer >= 1, got 2.5"),
    ({"labels": [0, 1, 1]}, "one entry per text, got 2 keys, 2 texts, 3 labels"),
    ({"texts": ["a b", 5]}, "text must be a string, got int"),
    ({"texts": "a b"}, "texts must be a list of strings"),
    ({"alpha": 0}, "alpha must be in (0, 1), got 0"),
    ({"exact_threshold": 10**11}, "exact_threshold must be in [0, 1e+07]"),
    ({"labels": [0, 7]}, "label 7 out of range for 2 classes"),
]


@pytest.mark.parametrize("kw,message", API_ERRORS, ids=[str(k) for k, _ in API_ERRORS])
def test_the_python_api_checks_its_arguments(bert_tokenizer, kw, message):
    import jax

    from ranmask_jax.smoothing import SmoothedClassifier
    from tests.classifiers import BagOfWords

    sc = SmoothedClassifier(BagOfWords(len(bert_tokenizer)), bert_tokenizer, 0.3, max_len=32)
    args = {"keys": [jax.random.key(0), jax.random.key(1)], "texts": ["a b c", "d e f"], "labels": [0, 1],
            "n0": 10, "n": 20} | kw
    with pytest.raises(ValueError) as e:
        sc.certify_many(**args)
    assert message in str(e.value)
    if "labels" not in kw and "n0" not in kw:
        pred = {k: v for k, v in args.items() if k not in ("labels", "n0")}
        with pytest.raises(ValueError, match=re.escape(message)):
            sc.predict_many(**pred)


def test_resume_after_changing_a_resumable_flag_or_a_trailing_slash(capsys, trained_run, tiny_setup,  # noqa: F811
                                                                     tmp_path):
    out = tmp_path / "c"
    assert cli.certify_main(_certify_argv(trained_run, tiny_setup, out, "--num-examples", "2")) == 0
    assert cli.certify_main(_certify_argv(trained_run, tiny_setup, out, "--num-examples", "4")) == 0
    assert cli.certify_main(_certify_argv(trained_run, tiny_setup, str(out) + "/", "--num-examples", "4")) == 0
    argv = _certify_argv(trained_run, tiny_setup, out, "--num-examples", "4")
    argv[argv.index("--run-dir") + 1] = str(trained_run) + "/"
    assert cli.certify_main(argv) == 0
    assert len((out / "certify.jsonl").read_text().splitlines()) >= 4


def test_a_json_zero_is_text(tmp_path):
    p = tmp_path / "zero.jsonl"
    p.write_text('{"text": 0, "label": "a"}\n{"text": "one", "label": "b"}\n')
    assert [e.text for e in load_file(p).examples] == ["0", "one"]


def test_wordnet_can_be_pointed_at(monkeypatch, tmp_path):
    from attacks.resources import WordNet

    monkeypatch.setenv("RANMASK_WORDNET_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere.*set \$RANMASK_WORDNET_DIR to the directory"):
        WordNet()
