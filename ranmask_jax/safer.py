"""SAFER (Ye, Gong and Liu, ACL 2020): randomized smoothing by random word substitutions, and its certificate.

**The perturbation table** (``PerturbationTable.build``, as the authors' ``data_process.py``): word vectors of the
vocabulary, unit-normalised, centred, with their projections on the top ``remove_top`` principal directions
removed ("all-but-the-top"); two words are *neighbours* when the dot product of these vectors exceeds
``threshold`` (minus WordNet antonyms, if given: plain GloVe, unlike counter-fitted vectors, puts antonyms close).
The attacker may replace a word by any of its neighbours. The *smoothing set* T_w of a word is its connected
component of the neighbour graph when that has at most ``max_set`` words (every word of the component then has the
same set), else its ``max_set`` most similar words within the component (itself included). Words outside the
graph have no set and are never substituted.

**Smoothing**: each copy replaces every word that has a set by a uniform draw from it; g votes (or averages) over
the copies.

**The certificate**: for texts x and x' that differ only at words where x'_j is a neighbour of x_j, the copy
distributions are products of uniform distributions, so their total variation is at most
``1 - prod_j r_j`` with ``r_j = |T_{x_j} & T_{x'_j}| / max(|T_{x_j}|, |T_{x'_j}|)`` (exact when the sizes agree;
``ratio``). Taking each word's worst neighbour bounds every such x' at once (``tv_bound``): if a lower confidence
bound of p_A(x) exceeds 1/2 + that bound, g(x') = g(x) for every x' made of neighbour substitutions, at any
number of words (``certified``). The authors' code uses ``|T_x & T_w| / |T_x|``, the same where sets have equal
sizes (theirs do: a component's words share one set, and large components give every word ``max_set``), and a point
estimate of p_A with a fixed Monte Carlo margin where this uses a Clopper-Pearson bound.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ranmask_jax.files import write_text
from ranmask_jax.masking import word_cores


@dataclasses.dataclass
class PerturbationTable:
    neighbours: dict[str, list[str]]  # the attacker's substitutions of each word
    sets: dict[str, list[str]]  # the smoothing set T_w of each word of the graph (itself included)
    params: dict = dataclasses.field(default_factory=dict)  # how it was built (threshold, vectors, ...)

    # -- building -----------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, words: list[str], vectors: np.ndarray, threshold: float = 0.8, max_set: int = 100,
              remove_top: int = 8, antonyms=None, chunk: int = 4096, **params) -> PerturbationTable:
        """The table of ``words`` (their ``vectors``, one row each); ``antonyms``: a function word -> set of words
        never to be its neighbours."""
        v = np.asarray(vectors, np.float64)
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        v = v - v.mean(axis=0)
        if remove_top > 0:
            _, _, vt = np.linalg.svd(v, full_matrices=False)  # rows of vt: principal directions, largest first
            top = vt[:remove_top]
            v = v - (v @ top.T) @ top
        v = v.astype(np.float32)
        n = len(words)
        neighbours: dict[str, list[str]] = {}
        for s in range(0, n, chunk):
            sim = v[s:s + chunk] @ v.T  # [chunk, n]
            for r, row in enumerate(sim):
                i = s + r
                idx = np.flatnonzero(row > threshold)
                idx = idx[idx != i]
                if len(idx):
                    bad = antonyms(words[i]) if antonyms else ()
                    near = [words[j] for j in idx[np.argsort(-row[idx], kind="stable")] if words[j] not in bad]
                    if near:
                        neighbours[words[i]] = near
        # the dot product is symmetric; antonym removal may not be: a pair either word rejects is no pair
        linked = {w: set(near) for w, near in neighbours.items()}
        neighbours = {w: kept for w, near in neighbours.items()
                      if (kept := [u for u in near if w in linked.get(u, ())])}
        row_of = {w: i for i, w in enumerate(words)}
        sets: dict[str, list[str]] = {}
        for comp in _components(neighbours):
            members = np.array([row_of[w] for w in comp])
            for w in comp:
                sim = v[members] @ v[row_of[w]]
                order = np.argsort(-sim, kind="stable")
                ranked = [comp[j] for j in order]
                ranked.remove(w)
                sets[w] = [w] + ranked[:max_set - 1] if len(comp) > max_set else [w] + ranked
        return cls(neighbours, sets, {"threshold": threshold, "max_set": max_set, "remove_top": remove_top,
                                      "antonyms_removed": antonyms is not None, "words": n, **params})

    # -- files ----------------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        write_text(Path(path), json.dumps({"params": self.params, "neighbours": self.neighbours,
                                           "sets": self.sets}) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PerturbationTable:
        try:
            d = json.loads(Path(path).read_text())
            return cls(d["neighbours"], d["sets"], d.get("params", {}))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a SAFER perturbation table ({e})") from None

    # -- smoothing --------------------------------------------------------------------------------------------------
    def substitute(self, words: list[str], rng: np.random.Generator, n: int) -> list[list[str]]:
        """``n`` copies of a text given as its word cores (looked up lower-cased): each word with a set replaced by a
        uniform draw from it, the others kept."""
        keys = [w.lower() for w in words]
        choices = [self.sets.get(k) for k in keys]
        out = []
        for _ in range(n):
            out.append([c[rng.integers(len(c))] if c else w for w, c in zip(words, choices, strict=True)])
        return out

    def copies(self, text: str, rng: np.random.Generator, n: int) -> list[str]:
        """``n`` substitution copies of ``text``: each word's core replaced (``substitute``), its punctuation kept."""
        parts = word_cores(text)
        out = []
        for new in self.substitute([c for _, c, _ in parts], rng, n):
            out.append(" ".join(pre + w + post for (pre, _, post), w in zip(parts, new, strict=True)))
        return out

    def text_bound(self, text: str, max_changes: int | None = None) -> float:
        """``tv_bound`` of a text's word cores."""
        return self.tv_bound([c for _, c, _ in word_cores(text)], max_changes)

    # -- the certificate ---------------------------------------------------------------------------------------------
    def ratio(self, a: str, b: str) -> float:
        """1 - TV between uniform draws from T_a and T_b: ``|T_a & T_b| / max(|T_a|, |T_b|)`` (a word without a
        set is its own one-word set)."""
        ta, tb = self.sets.get(a, [a]), self.sets.get(b, [b])
        return len(set(ta) & set(tb)) / max(len(ta), len(tb))

    def worst_ratio(self, word: str) -> float:
        """The smallest ``ratio`` between ``word`` and any of its neighbours (1 for a word without neighbours)."""
        w = word.lower()
        return min((self.ratio(w, u) for u in self.neighbours.get(w, ())), default=1.0)

    def tv_bound(self, words: Iterable[str], max_changes: int | None = None) -> float:
        """An upper bound on the total variation between the copies of a text and those of any text made from it by
        neighbour substitutions (at most ``max_changes`` words; None: any number)."""
        r = np.sort([self.worst_ratio(w) for w in words])
        if max_changes is not None:
            r = r[:max_changes]
        return float(1.0 - np.prod(r))


def _components(neighbours: dict[str, list[str]]) -> list[list[str]]:
    """Connected components of the neighbour graph, each in first-seen order."""
    seen: set[str] = set()
    out = []
    for start in neighbours:
        if start in seen:
            continue
        comp, stack = [], [start]
        seen.add(start)
        while stack:
            w = stack.pop()
            comp.append(w)
            for u in neighbours.get(w, ()):
                if u not in seen:
                    seen.add(u)
                    stack.append(u)
        out.append(comp)
    return out


def certified(p_lower: float, tv: float) -> bool:
    """SAFER's condition: p_A(x') >= p_A(x) - TV > 1/2 for every x' in the perturbation set."""
    return p_lower - tv > 0.5


@dataclasses.dataclass
class SaferCertificate:
    """SAFER's answer for one text: g's class (``ABSTAIN`` when the estimation copies do not give it a majority at
    confidence 1 - alpha), the estimation counts, the lower bound on p_A, the total-variation bound of the text's
    perturbation set, and whether every text of that set is certified to keep g's class."""

    label: int
    counts: np.ndarray
    p_lower: float
    tv_bound: float
    certified: bool


class SaferClassifier:
    """SAFER's smoothed classifier around any base classifier ``logits_fn(texts) -> [N, C]`` logits: ``n`` random
    substitution copies per text (``PerturbationTable.copies``), combined by an ensemble rule
    (``ranmask_jax.ensembles``: ``vote`` is what the certificate is about; ``logit`` is the original code's
    L2-normalised logit average)."""

    def __init__(self, logits_fn, table: PerturbationTable, batch_size: int = 256):
        self.logits_fn, self.table, self.batch_size = logits_fn, table, batch_size

    def copy_logits(self, text: str, rng: np.random.Generator, n: int) -> np.ndarray:
        """The base classifier's logits ``[n, C]`` on ``n`` substitution copies of ``text``."""
        copies = self.table.copies(text, rng, n)
        out = [np.asarray(self.logits_fn(copies[s:s + self.batch_size]), np.float64)
               for s in range(0, n, self.batch_size)]
        return np.concatenate(out)

    def scores(self, text: str, rng: np.random.Generator, n: int, ensemble: str = "vote") -> np.ndarray:
        """g's class scores ``[C]`` for ``text`` under the ensemble rule, from ``n`` fresh copies."""
        from ranmask_jax import ensembles

        logits = self.copy_logits(text, rng, n)
        counts = np.bincount(logits.argmax(-1), minlength=logits.shape[1])
        return ensembles.scores(ensemble, counts, logits.mean(0), ensembles.softmax(logits).mean(0),
                                ensembles.unit_rows(logits).mean(0))

    def certify(self, text: str, rng: np.random.Generator, n0: int = 100, n: int = 1000,
                alpha: float = 0.05) -> SaferCertificate:
        """CERTIFY as for RanMASK: the class from ``n0`` selection copies, its vote share bounded below on ``n``
        fresh estimation copies (Clopper-Pearson at ``alpha``); certified when that bound exceeds 1/2 plus the
        text's total-variation bound (``tv_bound``: substitutions at any number of words)."""
        from ranmask_jax.certificate import ABSTAIN, clopper_pearson_lower

        sel = self.copy_logits(text, rng, n0).argmax(-1)
        guess = int(np.bincount(sel).argmax())
        est = self.copy_logits(text, rng, n).argmax(-1)
        counts = np.bincount(est, minlength=max(guess + 1, int(est.max()) + 1))
        p_lower = clopper_pearson_lower(int(counts[guess]), n, alpha)
        tv = self.table.text_bound(text)
        label = guess if p_lower > 0.5 else ABSTAIN
        return SaferCertificate(label, counts, p_lower, tv, label != ABSTAIN and certified(p_lower, tv))
