"""Dataset presets on the shared files, generic local files, remote sources offline, and bad input."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest

from ranmask_jax.data import DataError, load_dataset, load_file
from ranmask_jax.metrics import markdown_table, median_certified, summarize


def test_sst2_preset(data_dir):
    sizes = {s: len(load_dataset("sst2", s, data_dir)) for s in ("train", "dev", "test")}
    assert sizes == {"train": 6920, "dev": 872, "test": 1821}
    ds = load_dataset("sst2", "test", data_dir)
    assert ds.label_names == ["negative", "positive"] and {e.label for e in ds.examples} == {0, 1}


def test_ag_news_preset(data_dir):
    test = load_dataset("ag_news", "test", data_dir)
    assert len(test) == 7600 and test.label_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert test.examples[0].label == 2 and test.examples[0].text.startswith("Fears for T N pension after talks")
    assert all("\\" not in e.text for e in test.examples)
    train, dev = load_dataset("ag_news", "train", data_dir), load_dataset("ag_news", "dev", data_dir)
    assert len(train) + len(dev) == 10001 and len(dev) == 500
    assert not {e.text for e in dev.examples} & {e.text for e in train.examples[:2000]}


def test_imdb_and_snli_presets(data_dir):
    imdb = load_dataset("imdb", "test", data_dir)
    assert len(imdb) == 25000 and not any("<br" in e.text for e in imdb.examples[:2000])
    sizes = {s: len(load_dataset("snli", s, data_dir)) for s in ("train", "dev", "test")}
    assert sizes == {"train": 53335, "dev": 9842, "test": 9824}
    snli = load_dataset("snli_textfooler", "test", data_dir)
    assert len(snli) == 1000 and snli.is_pair and snli.label_names == ["entailment", "neutral", "contradiction"]
    with pytest.raises(DataError, match="no split 'train'"):
        load_dataset("snli_textfooler", "train", data_dir)


def test_generic_files(tmp_path):
    (tmp_path / "a.tsv").write_text("text\tlabel\ngood film\tpos\nbad film\tneg\nfine\tpos\n")
    ds = load_file(tmp_path / "a.tsv")
    assert ds.label_names == ["pos", "neg"] and [e.label for e in ds.examples] == [0, 1, 0]
    (tmp_path / "b.csv").write_text("premise,hypothesis,y\n\"a, b\",c,2\nd,e,0\n")
    ds = load_file(tmp_path / "b.csv", pair_field="hypothesis", label_field="y", text_field="premise")
    assert ds.examples[0] == ds.examples[0].__class__("a, b", 1, "c") and ds.label_names == ["0", "2"]
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "x y", "label": "World"}) + "\n")
    ds = load_dataset(str(tmp_path / "c.jsonl.gz"), "test", label_names=["World", "Sports"])
    assert ds.examples[0].label == 0


@pytest.mark.parametrize("content,suffix,message", [
    ("text\tlabel\ngood\tpos\n\tneg\n", ".tsv", r"b\.tsv:3 field 'text': empty text"),
    ("text\tlabel\ngood\tpos\tx\n", ".tsv", r"b\.tsv:2: more fields"),
    ('{"text": "a", "label": 1}\n{"text": "b", "label": \n', ".jsonl", r"b\.jsonl:2: malformed JSON"),
    ('{"text": "a"}\n', ".jsonl", r"b\.jsonl:1: missing field 'label'"),
    ('{"text": "a", "label": "maybe"}\n', ".jsonl", r"b\.jsonl:1 field 'label': unknown label 'maybe'"),
    ("", ".csv", r"b\.csv: empty file"),
])
def test_bad_input_names_file_and_line(tmp_path, content, suffix, message):
    p = tmp_path / f"b{suffix}"
    p.write_text(content)
    names = ["pos", "neg"] if "maybe" in content else None
    with pytest.raises(DataError, match=message):
        load_file(p, label_names=names)


def test_bad_preset_rows(tmp_path):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.txt").write_text("fine movie\t1\nno label here\n")
    with pytest.raises(DataError, match=r"train\.txt:2: expected 'sentence<TAB>label'"):
        load_dataset("sst2", "train", tmp_path)
    (tmp_path / "sst2" / "train.txt").write_text("fine movie\t7\n")
    with pytest.raises(DataError, match=r"train\.txt:1: unknown label '7'"):
        load_dataset("sst2", "train", tmp_path)
    with pytest.raises(DataError, match=r"dev\.txt: file not found"):
        load_dataset("sst2", "dev", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("sst2", "dev", tmp_path / "nope")
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("sst3", "dev", tmp_path)


@pytest.mark.parametrize("spec", ["tfds:glue/sst2", "hf:glue/sst2"])
def test_remote_sources_fail_fast_offline(spec, monkeypatch):
    """An unreachable host is an error that names both ways out, at once (the reachability check is patched: the
    test never touches the network, and passes the same with or without one)."""
    import ranmask_jax.data as data

    asked = []
    monkeypatch.setattr(data, "_reachable", lambda host, *a, **k: asked.append(host) or False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    t = time.perf_counter()
    with pytest.raises(DataError, match=r"cannot reach .*--data-dir .*local CSV"):
        load_dataset(spec, "train")
    assert time.perf_counter() - t < 2 and asked == [
        "storage.googleapis.com" if spec.startswith("tfds") else "huggingface.co"]


def test_hub_offline_flag_is_honoured(monkeypatch):
    import ranmask_jax.data as data

    monkeypatch.setattr(data, "_reachable", lambda host, *a, **k: pytest.fail("the network was asked"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="HF_HUB_OFFLINE is set"):
        load_dataset("hf:glue/sst2", "train")


def test_summary_matches_paper_definitions():
    # the paper's example: {N/A, N/A, 1, 2, 3} -> MCB 1
    rows = [{"correct": False, "radius": -1, "h": 10}, {"correct": False, "radius": -1, "h": 10},
            {"correct": True, "radius": 1, "h": 10}, {"correct": True, "radius": 2, "h": 20},
            {"correct": True, "radius": 3, "h": 10}]
    s = summarize(rows)
    assert s["accuracy"] == 0.6 and s["mcb_largest"] == 1 and s["mcb_original"] == 2
    assert s["mcr_largest"] == pytest.approx(0.1) and s["mcr_original"] == pytest.approx(0.15)
    assert s["certified_accuracy"] == {0: 0.6, 1: 0.6, 2: 0.4, 3: 0.2}
    assert median_certified([float("-inf")] * 3 + [1.0]) == float("-inf")
    assert summarize(rows[:2] + rows[2:3])["mcb_largest"] is None  # mostly misclassified: N/A
    table = markdown_table(s)
    assert "5 texts, accuracy of g 60.0%" in table and "| radius | 1 | 10.00 | 2 | 15.00 |" in table
    assert "| radius | 60.0 | 60.0 | 40.0 | 20.0 |" in table
    # rows with both radii: one line per beta, the rigorous one first
    both = [dict(r, radius_one=max(r["radius"] - 1, -1), radius_pc=r["radius"]) for r in rows]
    s2 = summarize(both)
    assert s2["by_beta"]["one"]["mcb_largest"] == 0 and s2["by_beta"]["pc"]["mcb_largest"] == 1
    lines = markdown_table(s2).splitlines()
    assert lines.index("| beta = 1 (rigorous) | 0 | 0.00 | 1 | 10.00 |") < \
        lines.index("| beta = p_c (paper, estimate) | 1 | 10.00 | 2 | 15.00 |")


def test_rescore_to_beta_one_matches_direct_certificates():
    import numpy as np

    from ranmask_jax.certificate import certificate_from_counts
    from ranmask_jax.metrics import rescore

    rng = np.random.default_rng(0)
    for _ in range(200):
        h = int(rng.integers(3, 40))
        k = int(rng.integers(1, h + 1))
        exact = bool(rng.random() < 0.3)
        n = int(rng.integers(50, 2000))
        counts = np.array([int(rng.integers(0, n)), 0])
        counts[1] = n - counts[0]
        label = int(rng.integers(0, 2))
        pc = certificate_from_counts(label, counts, counts, h, k, 0.05, "pc", exact=exact)
        one = certificate_from_counts(label, counts, counts, h, k, 0.05, "one", exact=exact)
        row = {"correct": pc.correct, "prediction": pc.prediction, "counts": list(pc.counts), "n": pc.n, "h": h,
               "k": k, "mode": pc.mode, "radius": pc.radius}
        assert rescore([row], "one")[0]["radius"] == one.radius
        assert rescore([row], "pc")[0]["radius"] == pc.radius


def test_imdb_texts_with_words_that_tokenize_to_nothing_encode(data_dir, bert_tokenizer):
    """Hundreds of IMDB reviews contain zero-width spaces, soft hyphens, control characters as words: each is one
    of the h_x words, and every review is encoded whole (no truncation before masking)."""
    from ranmask_jax.masking import encode

    odd = "\u200b\u00ad\x7f\ufeff\x96\x97\uf0b7"
    for split in ("train", "test"):
        exs = [e for e in load_dataset("imdb", split, data_dir).examples if any(c in e.text for c in odd)]
        assert len(exs) > 400
        for e in exs:
            enc = encode(bert_tokenizer, e.text)
            assert enc.h == len(e.text.split())


def test_sst2_ships_with_the_package(monkeypatch):
    """Without a data directory the sst2 preset reads the embedded copy of the paper's split: exactly the original
    files (the sha256 and line counts of PROVENANCE.md); TextFooler's SNLI pairs still need a directory."""
    import gzip
    import hashlib
    import re

    from ranmask_jax.data import EMBEDDED

    monkeypatch.delenv("RANMASK_DATA_DIR", raising=False)
    table = (EMBEDDED / "sst2" / "PROVENANCE.md").read_text()
    for split, n in (("train", 6920), ("dev", 872), ("test", 1821)):
        raw = gzip.decompress((EMBEDDED / "sst2" / f"{split}.txt.gz").read_bytes())
        want = re.search(rf"^\| {split} \| [\d,]+ \| ([0-9a-f]{{64}}) \|", table, re.M).group(1)
        assert hashlib.sha256(raw).hexdigest() == want and raw.count(b"\n") == n
        ds = load_dataset("sst2", split)
        assert len(ds) == n and ds.label_names == ["negative", "positive"] and ds.source.endswith(".txt.gz")
    with pytest.raises(DataError, match="no data directory"):
        load_dataset("snli_textfooler", "test")


# ---- the presets' hub copies, offline: files in the hub's format in a hub cache the test writes ---------------------
def _hub_cache(root: Path, repo: str, files: dict[str, tuple[dict[str, list], list[str] | None]]) -> Path:
    """A Hugging Face hub cache holding ``repo`` (a dataset) at one commit: ``files`` maps a path in the repository
    to ``(columns, ClassLabel names)``, written as the hub's parquet files (with the ``huggingface`` schema
    metadata that records the features)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = root / f"datasets--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (store / "refs").mkdir(parents=True, exist_ok=True)
    (store / "refs" / "main").write_text(commit)
    for rel, (columns, names) in files.items():
        table = pa.table(columns)
        features = {c: {"dtype": "string", "_type": "Value"} for c in columns if c != "label"}
        if names is not None:
            features["label"] = {"names": names, "_type": "ClassLabel"}
        meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
        path = store / "snapshots" / commit / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.replace_schema_metadata(meta), path)
    return root


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty hub cache, no data directory, and a network that is never asked."""
    import huggingface_hub.constants

    import ranmask_jax.data as data

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(data, "_reachable", lambda host, *a, **k: False)
    monkeypatch.delenv("RANMASK_DATA_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    return tmp_path / "hub"


AG = ["World", "Sports", "Business", "Sci/Tech"]


def test_ag_news_hub_copy(hub):
    """fancyzhx/ag_news: text is title + description (backslashes read as spaces, as in the local test.csv), ids in
    the hub's ClassLabel order; dev is 500 held out of the hub's train split, seeded, disjoint from train."""
    texts = [f"Title {i} \\ body {i}" for i in range(620)]
    _hub_cache(hub, "fancyzhx/ag_news", {
        "data/train-00000-of-00001.parquet": ({"text": texts, "label": [i % 4 for i in range(620)]}, AG),
        "data/test-00000-of-00001.parquet": ({"text": ["Stocks up \\ again", "Cup final"], "label": [2, 1]}, AG)})
    test = load_dataset("ag_news", "test")
    assert [(e.text, e.label) for e in test.examples] == [("Stocks up again", 2), ("Cup final", 1)]
    assert test.label_names == AG and test.source.startswith("hf:fancyzhx/ag_news@0123456789ab/test")
    train, dev = load_dataset("ag_news", "train"), load_dataset("ag_news", "dev")
    assert (len(train), len(dev)) == (120, 500)
    read = {e.text for e in train.examples} | {e.text for e in dev.examples}
    assert read == {" ".join(t.replace("\\", " ").split()) for t in texts}
    assert not {e.text for e in train.examples} & {e.text for e in dev.examples}
    assert all(e.label == int(e.text.split()[1]) % 4 for e in train.examples + dev.examples)


def test_imdb_hub_copy(hub):
    _hub_cache(hub, "stanfordnlp/imdb", {
        "plain_text/test-00000-of-00001.parquet": ({"text": ["Great.<br /><br />Loved it", "Bad<br/>film"],
                                                    "label": [1, 0]}, ["neg", "pos"]),
        "plain_text/unsupervised-00000-of-00001.parquet": ({"text": ["x"], "label": [-1]}, ["neg", "pos"])})
    test = load_dataset("imdb", "test")
    assert [(e.text, e.label) for e in test.examples] == [("Great. Loved it", 1), ("Bad film", 0)]
    assert test.label_names == ["negative", "positive"]
    with pytest.raises(DataError, match=r"'train' split of stanfordnlp/imdb is not in the hub cache"):
        load_dataset("imdb", "train")  # only the test split is cached


def test_snli_hub_copy(hub):
    """stanfordnlp/snli: validation is the preset's dev split; pairs without a gold label (-1) are left out."""
    names = ["entailment", "neutral", "contradiction"]
    _hub_cache(hub, "stanfordnlp/snli", {
        "plain_text/validation-00000-of-00001.parquet": (
            {"premise": ["A man sleeps.", "A dog runs.", "Kids play."], "hypothesis": ["He rests.", "x", "No one."],
             "label": [0, -1, 2]}, names)})
    dev = load_dataset("snli", "dev")
    assert [(e.text, e.text_pair, e.label) for e in dev.examples] == [("A man sleeps.", "He rests.", 0),
                                                                        ("Kids play.", "No one.", 2)]
    assert dev.is_pair and dev.label_names == names
    with pytest.raises(DataError, match="no split 'validation'"):
        load_dataset("snli", "validation")


def test_hub_copy_refused_when_it_changed(hub):
    _hub_cache(hub, "stanfordnlp/imdb", {
        "plain_text/test-00000-of-00001.parquet": ({"text": ["a"], "label": [0]}, ["pos", "neg"])})
    with pytest.raises(DataError, match=r"test-00000-of-00001\.parquet: label names \['pos', 'neg'\], expected"):
        load_dataset("imdb", "test")
    _hub_cache(hub, "stanfordnlp/imdb", {
        "plain_text/test-00000-of-00001.parquet": ({"review": ["a"], "label": [0]}, ["neg", "pos"])})
    with pytest.raises(DataError, match=r"parquet: no column 'text' \(columns: review, label\)"):
        load_dataset("imdb", "test")
    _hub_cache(hub, "stanfordnlp/imdb", {
        "plain_text/test-00000-of-00001.parquet": ({"text": ["a", "b"], "label": [0, 7]}, None)})
    with pytest.raises(DataError, match=r"parquet row 1: label 7 is not a class id 0\.\.1"):
        load_dataset("imdb", "test")


def test_hub_preset_offline_without_a_copy_fails_fast(hub, monkeypatch):
    """No data directory, nothing cached, no network: within seconds, an error naming both ways out; with
    HF_HUB_OFFLINE set the network is not even asked. A data directory, when given, wins over the hub."""
    import ranmask_jax.data as data

    for name, split in (("ag_news", "test"), ("imdb", "train"), ("snli", "train")):
        t = time.perf_counter()
        with pytest.raises(DataError, match=rf"{name}: no data directory, .*cannot be reached.*--data-dir DIR .*"
                                            r"run once with a network"):
            load_dataset(name, split)
        assert time.perf_counter() - t < 2
    monkeypatch.setattr(data, "_reachable", lambda host, *a, **k: pytest.fail("the network was asked"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="HF_HUB_OFFLINE is set"):
        load_dataset("snli", "test")
    _hub_cache(hub, "stanfordnlp/snli", {
        "plain_text/test-00000-of-00001.parquet": ({"premise": ["p"], "hypothesis": ["h"], "label": [1]}, None)})
    local = hub.parent / "data" / "snli"
    local.mkdir(parents=True)
    (local / "test.tsv").write_text("contradiction\tA local premise .\tA local hypothesis .\n")
    assert load_dataset("snli", "test", hub.parent / "data").examples[0].label == 2
    monkeypatch.setenv("RANMASK_DATA_DIR", str(hub.parent / "data"))
    assert load_dataset("snli", "test").examples[0].text == "A local premise ."
    monkeypatch.delenv("RANMASK_DATA_DIR")
    assert load_dataset("snli", "test").examples[0].text == "p"
