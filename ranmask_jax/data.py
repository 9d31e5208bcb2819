"""Datasets: presets for the standard files, generic local CSV/TSV/JSONL, and remote tfds:/hf: sources.

Every loader returns a ``Dataset`` of ``Example(text, label, text_pair)`` with the label names. Bad input raises a
``DataError`` naming the file and line; nothing is dropped silently.

Presets read from ``--data-dir`` (or ``$RANMASK_DATA_DIR``):

===============  ==============================================  ===========================================
name             files                                           splits
===============  ==============================================  ===========================================
sst2             ``sst2/{train,dev,test}.txt``:                  train 6920, dev 872, test 1821
                 sentence<TAB>label
ag_news          ``ag_news/train.tsv`` (text<TAB>name),          train, dev (500 held out of train, seeded),
                 ``test.csv`` (class, title, description;        test 7600
                 text = title + " " + description)
imdb             ``imdb/{train,test}.jsonl.gz`` (``<br />``      train, dev (1000 held out of train), test
                 stripped)
snli             ``snli/{train,dev,test}.tsv``:                  train, dev, test (pairs; a copy without a
                 label<TAB>premise<TAB>hypothesis                gold label is refused)
snli_textfooler  ``snli_sample/test.tsv`` (same format)          test: the 1000 SNLI test pairs TextFooler
                                                                 attacked
===============  ==============================================  ===========================================

Without a data directory: ``sst2`` reads the copy shipped with the package (``datasets/sst2/PROVENANCE.md``);
``ag_news``, ``imdb`` and ``snli`` read their canonical copies on the Hugging Face hub (``HUB_PRESETS``: parquet
files, downloaded once into the hub cache and read from there offline), mapped to the same splits, label names and
text fields; with neither a cached copy nor a network the error comes within seconds and names both ways.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import logging
import math
import os
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ranmask_jax.masking import canonical_text

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
# the paper's SST-2 split, shipped with the package (datasets/sst2/PROVENANCE.md): the sst2 preset's default
EMBEDDED = Path(__file__).parent / "datasets"
EMBEDDED_PRESETS = ("sst2",)


def _existing_dir(d: str | os.PathLike) -> Path:
    p = Path(d).expanduser()
    if not p.is_dir():
        raise DataError(f"data directory {p} does not exist")
    return p


def _need(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")
    return path


def read_lines(path: Path, encoding: str = "utf-8", stream=None) -> Iterator[str]:
    """The decoded lines of a text file (optionally .gz), newlines kept; lines end at ``\\n`` only (a lone ``\\r``
    stays inside its line, as in every reader here). A UTF-8 byte-order mark is dropped. A byte that is not valid in
    ``encoding``, a truncated or non-gzip ``.gz`` and an unreadable file are errors naming the file and line.
    ``stream``: read this binary stream instead of opening ``path`` (which then only names it, e.g. stdin)."""
    import contextlib
    import zlib

    if stream is not None:
        ctx = contextlib.nullcontext(stream)
    else:
        ctx = (gzip.open if path.suffix == ".gz" else open)(_need(path), "rb")
    with ctx as f:
        i = 0
        while True:
            try:
                raw = f.readline()
            except gzip.BadGzipFile:
                raise DataError(f"{path}: not a gzip file (its name ends in .gz)") from None
            except (EOFError, zlib.error) as e:
                raise DataError(f"{path}:{i + 1}: the compressed file ends early or is damaged ({type(e).__name__}: "
                                f"{e}); {i} complete lines were read before it") from None
            except OSError as e:
                raise DataError(f"{path}:{i + 1}: cannot read ({e.strerror or e})") from None
            if not raw:
                return
            i += 1
            if i == 1 and raw.startswith(b"\xef\xbb\xbf") and encoding.replace("_", "-").lower() in ("utf-8", "utf8"):
                raw = raw[3:]
            try:
                yield raw.decode(encoding)
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{i}: byte 0x{raw[e.start]:02x} at column {e.start + 1} is not valid "
                                f"{encoding} (pass --encoding, e.g. latin-1, if the file uses another one)") from None
            except LookupError:
                raise DataError(f"unknown --encoding {encoding!r}") from None



def _clean(text: str, where: str) -> str:
    text = canonical_text(text)
    if not text:
        raise DataError(f"{where}: empty text")
    return text


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def canonical_label(raw, where: str) -> str:
    """A label as a canonical string: numbers that are equal are the same label ("1", "1.0", 1, "+1" -> "1"); a
    missing label (None, "", "null", "none", "nan") is an error."""
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        raise DataError(f"{where}: missing label")
    text = str(raw).strip().lower() if isinstance(raw, bool) else str(raw).strip()
    if text.lower() in ("", "null", "none", "nan"):
        raise DataError(f"{where}: missing label ({text!r})")
    if _NUMBER.fullmatch(text):
        value = float(text)
        return str(int(value)) if value.is_integer() else repr(value)
    return text


class LabelMap:
    """Label names <-> ids, by canonical name (``canonical_label``).

    Fixed names (a run's, a preset's) reject unknown labels; a label that matches one name only up to case maps to
    it; integer ids are accepted as ids only when no name is itself a number. Open maps grow in order of first
    appearance and refuse two labels that differ only in case (almost always a data error)."""

    def __init__(self, names: list[str] | None = None, numeric_ok: bool = True):
        self.names = [canonical_label(n, "label names") for n in names] if names else []
        self.fixed = names is not None
        self.numeric_ok = numeric_ok and not any(_NUMBER.fullmatch(n) for n in self.names)

    def __call__(self, raw, where: str) -> int:
        name = canonical_label(raw, where)
        if name in self.names:
            return self.names.index(name)
        folded = [i for i, n in enumerate(self.names) if n.casefold() == name.casefold()]
        if self.fixed:
            if len(folded) == 1:
                return folded[0]
            if self.numeric_ok and re.fullmatch(r"\d+", name) and int(name) < len(self.names):
                return int(name)
            raise DataError(f"{where}: unknown label {name!r}; known labels: {', '.join(self.names)}")
        if folded:
            raise DataError(f"{where}: label {name!r} differs only in case from label {self.names[folded[0]]!r}; "
                            "labels are compared exactly: make them consistent")
        self.names.append(name)
        return len(self.names) - 1


def _tsv_rows(path: Path, n_fields: int, layout: str, encoding: str = "utf-8") -> Iterator[tuple[str, list[str]]]:
    """``(where, fields)`` for each non-blank line of a tab-separated file with exactly ``n_fields`` fields."""
    for i, line in enumerate(read_lines(path, encoding), 1):
        if not line.strip():
            continue
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) != n_fields:
            raise DataError(f"{path}:{i}: expected '{layout}', got {len(parts)} field(s)")
        yield f"{path}:{i}", parts


def _csv_records(path: Path, delimiter: str, encoding: str = "utf-8", multiline: bool = False
                 ) -> Iterator[tuple[int, list[str]]]:
    """``(line, fields)`` for each record of a CSV/TSV file, with the physical line it starts on. A record that
    runs over several lines (a quote that opens a field and swallows newlines and delimiters: almost always a stray
    quote) is an error naming the line where it opened, unless ``multiline`` fields are allowed. No field-size
    limit."""
    csv.field_size_limit(2**31 - 1)
    reader = csv.reader(read_lines(path, encoding), delimiter=delimiter, strict=True)
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{path}:{start}: malformed {'TSV' if delimiter == chr(9) else 'CSV'} record ({e}); a "
                            "quote opened on this line may never close") from None
        end = reader.line_num
        if end > start and not multiline and fields:
            raise DataError(f"{path}:{start}: a quoted field opened on this line runs on to line {end}, swallowing "
                            f"{end - start} line break(s) (a stray quote?); fix the quoting, or pass "
                            "--multiline-fields if fields really contain line breaks")
        yield start, fields
        start = end + 1


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
    path = root / "sst2" / (f"{split}.txt.gz" if root == EMBEDDED else f"{split}.txt")
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
        for i, row in _csv_records(path, ","):
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


SNLI_LABELS = ["entailment", "neutral", "contradiction"]


def _snli_tsv(path: Path, name: str, split: str) -> Dataset:
    labels = LabelMap(SNLI_LABELS)
    out = [Example(_clean(premise, where), labels(label, where), _clean(hyp, where))
           for where, (label, premise, hyp) in _tsv_rows(path, 3, "label<TAB>premise<TAB>hypothesis")]
    return Dataset(name, split, out, labels.names, str(path))


def _snli(root: Path, split: str) -> Dataset:
    _check_split("snli", split, ("train", "dev", "test"))
    return _snli_tsv(root / "snli" / f"{split}.tsv", "snli", split)


def _snli_textfooler(root: Path, split: str) -> Dataset:
    _check_split("snli_textfooler", split, ("test",))
    return _snli_tsv(root / "snli_sample" / "test.tsv", "snli_textfooler", split)


PRESETS = {"sst2": _sst2, "ag_news": _ag_news, "imdb": _imdb, "snli": _snli, "snli_textfooler": _snli_textfooler}


# ---- the presets' canonical copies on the Hugging Face hub -------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class HubPreset:
    """Where a preset's canonical public copy lives on the hub and how its rows map to the preset's."""

    repo: str  # dataset repository (parquet files named ``<split>-NNNNN-of-NNNNN.parquet``)
    splits: dict[str, str]  # preset split -> hub split
    hub_labels: tuple[str, ...]  # the hub's ClassLabel names, checked against the files' metadata when present
    label_names: tuple[str, ...]  # the preset's names for them, in the same order
    text: str
    pair: str | None = None
    dev_holdout: int = 0  # the preset's dev split: this many examples held out of the hub's train split (seeded)
    clean: Callable[[str], str] | None = None  # what the local loader does to the text too


HUB_PRESETS = {
    "ag_news": HubPreset("fancyzhx/ag_news", {"train": "train", "dev": "train", "test": "test"},
                         tuple(AG_NEWS_LABELS), tuple(AG_NEWS_LABELS), "text", dev_holdout=500,
                         clean=lambda t: t.replace("\\", " ")),
    "imdb": HubPreset("stanfordnlp/imdb", {"train": "train", "dev": "train", "test": "test"}, ("neg", "pos"),
                      ("negative", "positive"), "text", dev_holdout=1000, clean=lambda t: re.sub(r"<br\s*/?>", " ", t)),
    "snli": HubPreset("stanfordnlp/snli", {"train": "train", "dev": "validation", "test": "test"},
                      tuple(SNLI_LABELS), tuple(SNLI_LABELS), "premise", pair="hypothesis"),
}
HUB_HOST = "huggingface.co"


def _hub_files(name: str, spec: HubPreset, hub_split: str) -> tuple[list[Path], str]:
    """The parquet files of ``hub_split`` of ``spec.repo``: downloaded into the hub cache (once), or read from it
    when the hub cannot be reached or ``HF_HUB_OFFLINE`` is set. Returns the files and the snapshot's commit."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    from ranmask_jax.models.pretrained import env_flag

    flag = next((v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if env_flag(v)), None)
    offline = flag is not None or not _reachable(HUB_HOST)
    folder = None
    try:
        folder = Path(snapshot_download(spec.repo, repo_type="dataset", allow_patterns=[f"*{hub_split}-*.parquet"],
                                        local_files_only=offline))
    except (LocalEntryNotFoundError, IncompleteSnapshotError, OSError) as e:
        if not offline:
            raise DataError(f"{name}: downloading {spec.repo} from the hub failed ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); pass --data-dir DIR (or set "
                            f"${DATA_DIR_ENV}) to read local files instead") from None
    files = sorted(folder.glob(f"**/{hub_split}-*.parquet")) if folder is not None else []
    if not files:
        why = f"{flag} is set" if flag else f"{HUB_HOST} cannot be reached" if offline else "the download has none"
        raise DataError(f"{name}: no data directory, and the {hub_split!r} split of {spec.repo} is not in the hub "
                        f"cache ({why}). Pass --data-dir DIR (or set ${DATA_DIR_ENV}) to a directory with the "
                        f"{name} files, or run once with a network to download and cache it.")
    if len({f.parent for f in files}) > 1:
        raise DataError(f"{name}: the {hub_split!r} files of {spec.repo} lie in several folders "
                        f"({', '.join(sorted({str(f.parent.relative_to(folder)) for f in files}))}); expected one")
    return files, folder.name


def _parquet_rows(path: Path, columns: list[str], hub_labels: tuple[str, ...]) -> list[dict]:
    """The rows of one of the hub's parquet files (``columns`` only); its ClassLabel names, when the file records
    them, must be ``hub_labels``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        meta = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(schema.names)})")
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
    names = ((meta.get("info") or {}).get("features") or {}).get("label", {}).get("names")
    if names is not None and tuple(names) != hub_labels:
        raise DataError(f"{path}: label names {names}, expected {list(hub_labels)}: the hub copy has changed; pass "
                        "--data-dir with local files")
    return table.to_pylist()


def _hub_preset(name: str, split: str) -> Dataset:
    spec = HUB_PRESETS[name]
    _check_split(name, split, tuple(spec.splits))
    hub_split = spec.splits[split]
    files, commit = _hub_files(name, spec, hub_split)
    columns = [spec.text, "label"] + ([spec.pair] if spec.pair else [])
    labels = LabelMap(list(spec.label_names))
    out, unlabelled = [], 0
    for path in files:
        for i, row in enumerate(_parquet_rows(path, columns, spec.hub_labels)):
            where = f"{path} row {i}"
            label = row["label"]
            if label == -1 and spec.pair:  # SNLI: no gold label (the annotators disagreed)
                unlabelled += 1
                continue
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(spec.label_names):
                raise DataError(f"{where}: label {label!r} is not a class id 0..{len(spec.label_names) - 1}")
            texts = []
            for fld in (spec.text, spec.pair):
                if fld is None:
                    continue
                value = row[fld]
                if not isinstance(value, str):
                    raise DataError(f"{where} field {fld!r}: expected text, got {type(value).__name__}")
                texts.append(_clean(spec.clean(value) if spec.clean else value, f"{where} field {fld!r}"))
            out.append(Example(texts[0], label, texts[1] if spec.pair else None))
    if spec.dev_holdout and split in ("train", "dev"):
        out = _split_holdout(out, split, spec.dev_holdout)
    source = f"hf:{spec.repo}@{commit[:12]}/{hub_split}"
    if unlabelled:
        log.info("%s: %d pairs without a gold label (-1) left out", source, unlabelled)
    return Dataset(name, split, out, labels.names, source)


def load_preset(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """A preset from ``data_dir`` (else ``$RANMASK_DATA_DIR``); with neither, SST-2's copy shipped with the package
    or the others' copies on the hub (module docstring)."""
    d = data_dir or os.environ.get(DATA_DIR_ENV)
    if d:
        return PRESETS[name](_existing_dir(d), split)
    if name in EMBEDDED_PRESETS:
        return PRESETS[name](EMBEDDED, split)
    if name in HUB_PRESETS:
        return _hub_preset(name, split)
    raise DataError(f"{name}: no data directory: pass --data-dir or set ${DATA_DIR_ENV}")


# ---- generic local files ----------------------------------------------------------------------------------------
def _jsonl_rows(path: Path, text_field: str, pair_field: str | None, label_field: str, labels: LabelMap,
                encoding: str = "utf-8") -> Iterator[tuple[str, int, str | None]]:
    for i, line in enumerate(read_lines(path, encoding), 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            hint = " (a .jsonl file holds one JSON object per line)" if line.lstrip().startswith("[") else ""
            raise DataError(f"{where}: malformed JSON ({e.msg}){hint}") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object")
        yield _fields(row, where, text_field, pair_field, label_field, labels)


def _json_array_rows(path: Path, text_field: str, pair_field: str | None, label_field: str, labels: LabelMap,
                     encoding: str = "utf-8") -> Iterator[tuple[str, int, str | None]]:
    """A .json file: one JSON array of objects. Errors name the line (parse errors) or the item."""
    text = "".join(read_lines(path, encoding))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg}); a .json file must hold one JSON array of "
                        "objects (name the file .jsonl for one object per line)") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects, got a JSON {type(data).__name__} (name the file "
                        ".jsonl for one object per line)")
    for i, row in enumerate(data):
        where = f"{path} item {i}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield _fields(row, where, text_field, pair_field, label_field, labels)


def _fields(row: dict, where: str, text_field: str, pair_field: str | None, label_field: str,
            labels: LabelMap) -> tuple[str, int, str | None]:
    for fld in (text_field, label_field, pair_field):
        if fld is not None and fld not in row:
            raise DataError(f"{where}: missing field {fld!r} (fields: {', '.join(map(str, row))})")
    for fld in (text_field, pair_field):
        value = row.get(fld) if fld is not None else None
        if value is not None and (not isinstance(value, str | int | float) or isinstance(value, bool)):
            raise DataError(f"{where} field {fld!r}: expected text, got a JSON {type(value).__name__}")
    text = _clean("" if row[text_field] is None else str(row[text_field]), f"{where} field {text_field!r}")
    pair = _clean("" if row[pair_field] is None else str(row[pair_field]), f"{where} field {pair_field!r}") \
        if pair_field else None
    return text, labels(row[label_field], f"{where} field {label_field!r}"), pair


FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".csv.gz", ".tsv.gz", ".jsonl.gz")


def is_file_dataset(name: str) -> bool:
    return name.endswith(FILE_SUFFIXES) or (name not in PRESETS and Path(name).expanduser().is_file())


def load_file(path: str | os.PathLike, *, text_field: str = "text", pair_field: str | None = None,
              label_field: str = "label", label_names: list[str] | None = None, split: str = "file",
              encoding: str = "utf-8", multiline_fields: bool = False) -> Dataset:
    """A CSV / TSV (with a header row), JSONL (one object per line; optionally .gz) or JSON (one array of objects)
    file of labelled texts.

    Labels may be names or ids; with ``label_names`` given (a run's), labels are mapped to them by name and
    others are errors; otherwise names are numbered in order of first appearance (integer labels sort
    numerically). Numbers that are equal are the same label ("1" and "1.0")."""
    p = Path(path).expanduser()
    _need(p)
    suffixes = "".join(p.suffixes[-2:]) if p.suffix == ".gz" else p.suffix
    labels = LabelMap(label_names)
    if suffixes in (".jsonl", ".jsonl.gz"):
        rows = list(_jsonl_rows(p, text_field, pair_field, label_field, labels, encoding))
    elif suffixes == ".json":
        rows = list(_json_array_rows(p, text_field, pair_field, label_field, labels, encoding))
    elif suffixes in (".csv", ".tsv", ".csv.gz", ".tsv.gz"):
        records = _csv_records(p, "\t" if ".tsv" in suffixes else ",", encoding, multiline_fields)
        try:
            _, header = next(records)
        except StopIteration:
            raise DataError(f"{p}: empty file (expected a header row)") from None
        header = [h.strip() for h in header]
        rows = []
        for i, fields in records:
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                more = "more" if len(fields) > len(header) else "fewer"
                raise DataError(f"{p}:{i}: {more} fields ({len(fields)}) than the header's {len(header)}")
            rows.append(_fields(dict(zip(header, fields, strict=True)), f"{p}:{i}", text_field, pair_field,
                                label_field, labels))
    else:
        raise DataError(f"{p}: unsupported file type {suffixes!r} (use .csv, .tsv, .jsonl, .json, optionally .gz)")
    if not rows:
        raise DataError(f"{p}: no examples")
    names = labels.names
    if label_names is None and all(_NUMBER.fullmatch(n) for n in names):
        order = sorted(names, key=float)  # numeric labels keep their numeric order
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
    from ranmask_jax.models.pretrained import env_flag

    flags = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if kind == "hf" and env_flag(v)]
    if flags:
        raise DataError(f"{spec}: {flags[0]} is set, so the hub is not asked. Use a preset with --data-dir "
                        f"({', '.join(PRESETS)}) or a local CSV/TSV/JSONL file, or unset {flags[0]}.")
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
                 pair_field: str | None = None, label_field: str = "label", label_names: list[str] | None = None,
                 encoding: str = "utf-8", multiline_fields: bool = False) -> Dataset:
    """Load ``split`` of ``name``: a preset (``PRESETS``; ``load_preset``), a local file path
    (``split`` is then a label for the rows), or ``tfds:NAME[/CONFIG]`` / ``hf:NAME[/CONFIG]``.

    ``label_names`` (a trained run's): every dataset's labels are mapped to these by name, whatever order the
    dataset lists them in; a dataset with a label the run does not know is refused with both lists."""
    if name in PRESETS:
        ds = load_preset(name, split, data_dir)
    elif name.startswith(("tfds:", "hf:")):
        ds = _remote(name, split, text_field, pair_field, label_field)
    elif is_file_dataset(name):
        ds = load_file(name, text_field=text_field or "text", pair_field=pair_field, label_field=label_field,
                       label_names=label_names, split=split, encoding=encoding, multiline_fields=multiline_fields)
    else:
        raise DataError(f"unknown dataset {name!r}: use a preset ({', '.join(PRESETS)}), a .csv/.tsv/.jsonl/.json "
                        "file, or tfds:NAME / hf:NAME")
    if not ds.examples:
        raise DataError(f"{ds.source}: split {split!r} has no examples")
    if label_names is not None:
        ds = relabel(ds, label_names)
    log.info("loaded %s/%s: %d examples, labels %s", ds.name, split, len(ds), ds.label_names)
    return ds


def relabel(ds: Dataset, names: list[str]) -> Dataset:
    """``ds`` with its labels numbered as ``names`` (a run's label map), matched by canonical name; refused when a
    label of ``ds`` is not among ``names``."""
    target = LabelMap(names)
    try:
        new_id = [target(n, ds.source) for n in ds.label_names]
    except DataError:
        raise DataError(f"{ds.source}: its labels {ds.label_names} do not match the model's {target.names}; "
                        "certify with the dataset the model was trained on, or a file with the same label names") \
            from None
    if new_id == list(range(len(ds.label_names))) and len(ds.label_names) == len(target.names):
        return ds
    examples = [dataclasses.replace(e, label=new_id[e.label]) for e in ds.examples]
    return dataclasses.replace(ds, examples=examples, label_names=target.names)
