"""Datasets: presets for the standard files, generic local CSV/TSV/JSONL, and remote tfds:/hf: sources.

Every loader returns a ``Dataset`` of ``Example(text, label, text_pair)`` with the label names. Bad input raises a
``DataError`` naming the file and line; nothing is dropped silently.

Presets read from ``--data-dir`` (or ``$RANMASK_DATA_DIR``):

=========  ====================================================  =======================================
name       files                                                 splits
=========  ====================================================  =======================================
sst2       ``sst2/{train,dev,test}.txt``: sentence<TAB>label      train 6920, dev 872, test 1821
ag_news    ``ag_news/train.tsv`` (text<TAB>name), ``test.csv``    train, dev (500 held out of train.tsv,
           (class, title, description; text = title + " " +       seeded), test 7600
           description)
imdb       ``imdb/{train,test}.jsonl.gz`` (``<br />`` stripped)    train, dev (1000 held out), test
snli       ``snli_sample/test.tsv``: label<TAB>premise<TAB>hyp.    test (1000 pairs)
=========  ====================================================  =======================================
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DATA_DIR_ENV = "RANMASK_DATA_DIR"


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Example:
    text: str
    label: int
    text_pair: str | None = None


@dataclasses.dataclass
class Dataset:
    name: str
    split: str
    examples: list[Example]
    label_names: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return any(e.text_pair is not None for e in self.examples)


# ---- helpers ----------------------------------------------------------------------------------------------------
def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    d = data_dir or os.environ.get(DATA_DIR_ENV)
    if not d:
        raise DataError(f"no data directory: pass --data-dir or set ${DATA_DIR_ENV}")
    p = Path(d).expanduser()
    if not p.is_dir():
        raise DataError(f"data directory {p} does not exist")
    return p


def _need(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    return path


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(_need(path)), encoding="utf-8")
    return open(_need(path), encoding="utf-8", newline="")


def _clean(text: str, where: str) -> str:
    text = " ".join(text.split())
    if not text:
        raise DataError(f"{where}: empty text")
    return text


class LabelMap:
    """Label names <-> ids. Fixed names reject unknown labels; open maps grow in order of first appearance."""

    def __init__(self, names: list[str] | None = None, numeric_ok: bool = True):
        self.names = list(names) if names else []
        self.fixed = names is not None
        self.numeric_ok = numeric_ok

    def __call__(self, raw, where: str) -> int:
        raw_s = str(raw).strip()
        if raw_s in self.names:
            return self.names.index(raw_s)
        if self.numeric_ok and re.fullmatch(r"-?\d+", raw_s) and self.fixed:
            i = int(raw_s)
            if 0 <= i < len(self.names):
                return i
        if self.fixed:
            raise DataError(f"{where}: unknown label {raw_s!r}; known labels: {', '.join(self.names)}")
        self.names.append(raw_s)
        return len(self.names) - 1


def _tsv_rows(path: Path, n_fields: int, layout: str) -> Iterator[tuple[str, list[str]]]:
    """``(where, fields)`` for each non-blank line of a tab-separated file with exactly ``n_fields`` fields."""
    with _open_text(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != n_fields:
                raise DataError(f"{path}:{i}: expected '{layout}', got {len(parts)} field(s)")
            yield f"{path}:{i}", parts


def _split_holdout(examples: list[Example], split: str, size: int, seed: int = 0) -> list[Example]:
    """Seeded, deterministic hold-out of ``size`` examples as "dev"; the rest is "train"."""
    order = np.random.default_rng(seed).permutation(len(examples))
    dev = set(order[:size].tolist())
    return [e for i, e in enumerate(examples) if (i in dev) == (split == "dev")]


def _check_split(name: str, split: str, splits: tuple[str, ...]) -> None:
    if split not in splits:
        raise DataError(f"dataset {name!r} has no split {split!r}; splits: {', '.join(splits)}")


# ---- presets ----------------------------------------------------------------------------------------------------
def _sst2(root: Path, split: str) -> Dataset:
    _check_split("sst2", split, ("train", "dev", "test"))
    path = root / "sst2" / f"{split}.txt"
    labels = LabelMap(["negative", "positive"])
    out = [Example(_clean(text, where), labels(label, where))
           for where, (text, label) in _tsv_rows(path, 2, "sentence<TAB>label")]
    return Dataset("sst2", split, out, labels.names, str(path))


AG_NEWS_LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def _ag_news(root: Path, split: str) -> Dataset:
    _check_split("ag_news", split, ("train", "dev", "test"))
    labels = LabelMap(AG_NEWS_LABELS)
    out = []
    if split == "test":
        path = root / "ag_news" / "test.csv"
        with _open_text(path) as f:
            for i, row in enumerate(csv.reader(f), 1):
                if len(row) != 3:
                    raise DataError(f"{path}:{i}: expected 3 CSV fields (class, title, description), got {len(row)}")
                where = f"{path}:{i}"
                if not row[0].strip().isdigit() or not 1 <= int(row[0]) <= 4:
                    raise DataError(f"{where}: class must be 1..4, got {row[0]!r}")
                text = _clean(f"{row[1]} {row[2]}".replace("\\", " "), where)
                out.append(Example(text, int(row[0]) - 1))
        return Dataset("ag_news", split, out, labels.names, str(path))
    path = root / "ag_news" / "train.tsv"
    out = [Example(_clean(text, where), labels(label, where))
           for where, (text, label) in _tsv_rows(path, 2, "text<TAB>label_name")]
    return Dataset("ag_news", split, _split_holdout(out, split, 500), labels.names, str(path))


def _imdb(root: Path, split: str) -> Dataset:
    _check_split("imdb", split, ("train", "dev", "test"))
    path = root / "imdb" / f"{'test' if split == 'test' else 'train'}.jsonl.gz"
    labels = LabelMap(["negative", "positive"])
    out = [Example(re.sub(r"<br\s*/?>", " ", t), lab) for t, lab, _ in
           _jsonl_rows(path, "text", None, "label", labels)]
    out = [Example(_clean(e.text, str(path)), e.label) for e in out]
    if split != "test":
        out = _split_holdout(out, split, 1000)
    return Dataset("imdb", split, out, labels.names, str(path))


def _snli(root: Path, split: str) -> Dataset:
    _check_split("snli", split, ("test",))
    path = root / "snli_sample" / "test.tsv"
    labels = LabelMap(["entailment", "neutral", "contradiction"])
    out = [Example(_clean(premise, where), labels(label, where), _clean(hyp, where))
           for where, (label, premise, hyp) in _tsv_rows(path, 3, "label<TAB>premise<TAB>hypothesis")]
    return Dataset("snli", split, out, labels.names, str(path))


PRESETS = {"sst2": _sst2, "ag_news": _ag_news, "imdb": _imdb, "snli": _snli}


# ---- generic local files ----------------------------------------------------------------------------------------
def _jsonl_rows(path: Path, text_field: str, pair_field: str | None, label_field: str,
                labels: LabelMap) -> Iterator[tuple[str, int, str | None]]:
    with _open_text(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{i}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object")
            yield _fields(row, where, text_field, pair_field, label_field, labels)


def _fields(row: dict, where: str, text_field: str, pair_field: str | None, label_field: str,
            labels: LabelMap) -> tuple[str, int, str | None]:
    for fld in (text_field, label_field, pair_field):
        if fld is not None and fld not in row:
            raise DataError(f"{where}: missing field {fld!r} (fields: {', '.join(map(str, row))})")
    text = _clean(str(row[text_field] or ""), f"{where} field {text_field!r}")
    pair = _clean(str(row[pair_field] or ""), f"{where} field {pair_field!r}") if pair_field else None
    return text, labels(row[label_field], f"{where} field {label_field!r}"), pair


def load_file(path: str | os.PathLike, *, text_field: str = "text", pair_field: str | None = None,
              label_field: str = "label", label_names: list[str] | None = None, split: str = "file") -> Dataset:
    """A CSV / TSV (with a header row) or JSONL (optionally .gz) file of labelled texts.

    Labels may be names or ids; with ``label_names`` given, labels outside it are errors, otherwise names are
    numbered in order of first appearance (integer labels sort numerically)."""
    p = Path(path).expanduser()
    _need(p)
    suffixes = "".join(p.suffixes[-2:]) if p.suffix == ".gz" else p.suffix
    labels = LabelMap(label_names)
    if suffixes in (".jsonl", ".jsonl.gz", ".json"):
        rows = list(_jsonl_rows(p, text_field, pair_field, label_field, labels))
    elif suffixes in (".csv", ".tsv", ".csv.gz", ".tsv.gz"):
        with _open_text(p) as f:
            reader = csv.DictReader(f, delimiter="\t" if ".tsv" in suffixes else ",")
            if reader.fieldnames is None:
                raise DataError(f"{p}: empty file (expected a header row)")
            rows = []
            for i, row in enumerate(reader, 2):
                if None in row:
                    raise DataError(f"{p}:{i}: more fields than the header's {len(reader.fieldnames)}")
                if any(v is None for v in row.values()):
                    raise DataError(f"{p}:{i}: fewer fields than the header's {len(reader.fieldnames)}")
                rows.append(_fields(row, f"{p}:{i}", text_field, pair_field, label_field, labels))
    else:
        raise DataError(f"{p}: unsupported file type {suffixes!r} (use .csv, .tsv, .jsonl, optionally .gz)")
    if not rows:
        raise DataError(f"{p}: no examples")
    names = labels.names
    if label_names is None and all(re.fullmatch(r"-?\d+", n) for n in names):
        order = sorted(names, key=int)  # integer labels keep their numeric order
        remap = {names.index(n): j for j, n in enumerate(order)}
        rows = [(t, remap[lab], pr) for t, lab, pr in rows]
        names = order
    return Dataset(p.name, split, [Example(t, lab, pr) for t, lab, pr in rows], names, str(p))


# ---- remote sources -----------------------------------------------------------------------------------------------
def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _remote(spec: str, split: str, text_field: str | None, pair_field: str | None, label_field: str) -> Dataset:
    kind, _, name = spec.partition(":")
    ds_name, _, config = name.partition("/")
    host = "storage.googleapis.com" if kind == "tfds" else "huggingface.co"
    if not _reachable(host):
        raise DataError(f"{spec}: cannot reach {host} (offline?). Use a preset with --data-dir "
                        f"({', '.join(PRESETS)}) or a local CSV/TSV/JSONL file.")
    if kind == "hf":
        try:
            import datasets
        except ImportError:
            raise DataError(f"{spec}: needs the 'hf' extra (pip install 'ranmask-jax[hf]')") from None
        rows = datasets.load_dataset(ds_name, config or None, split=split)
        features = rows.features
        label_feat = features.get(label_field)
        names = list(getattr(label_feat, "names", None) or [])
    else:
        try:
            import tensorflow_datasets as tfds
        except ImportError:
            raise DataError(f"{spec}: needs the 'tfds' extra (pip install 'ranmask-jax[tfds]')") from None
        builder = tfds.builder(name)
        builder.download_and_prepare()
        rows = tfds.as_numpy(builder.as_dataset(split=split))
        names = list(getattr(builder.info.features[label_field], "names", None) or [])
    text_field = text_field or "text"
    labels = LabelMap(names or None)
    out = []
    for i, row in enumerate(rows, 1):
        row = {k: v.decode() if isinstance(v, bytes) else v for k, v in dict(row).items()}
        out.append(Example(*_fields(row, f"{spec}[{split}] row {i}", text_field, pair_field, label_field, labels)))
    return Dataset(spec, split, out, labels.names, spec)


# ---- entry point --------------------------------------------------------------------------------------------------
def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None, *, text_field: str | None = None,
                 pair_field: str | None = None, label_field: str = "label",
                 label_names: list[str] | None = None) -> Dataset:
    """Load ``split`` of ``name``: a preset (sst2, ag_news, imdb, snli) from ``data_dir``, a local file path
    (``split`` is then a label for the rows), or ``tfds:NAME[/CONFIG]`` / ``hf:NAME[/CONFIG]``."""
    if name in PRESETS:
        ds = PRESETS[name](resolve_data_dir(data_dir), split)
    elif name.startswith(("tfds:", "hf:")):
        ds = _remote(name, split, text_field, pair_field, label_field)
    elif Path(name).expanduser().suffix in (".csv", ".tsv", ".jsonl", ".json", ".gz") or Path(name).exists():
        ds = load_file(name, text_field=text_field or "text", pair_field=pair_field, label_field=label_field,
                       label_names=label_names, split=split)
    else:
        raise DataError(f"unknown dataset {name!r}: use a preset ({', '.join(PRESETS)}), a .csv/.tsv/.jsonl file, "
                        "or tfds:NAME / hf:NAME")
    if not ds.examples:
        raise DataError(f"{ds.source}: split {split!r} has no examples")
    log.info("loaded %s/%s: %d examples, labels %s", ds.name, split, len(ds), ds.label_names)
    return ds
