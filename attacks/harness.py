"""The black-box harness: a scorer is any ``list[str] -> np.ndarray[len(texts), num_labels]`` (class scores that
sum to 1); the harness counts queries (one text scored = one query), enforces an optional query budget, and
optionally caches answers per distinct text.

Scorers here: ``plain_scorer`` (the base classifier's softmax on the unmasked text), ``smoothed_scorer`` (the
smoothed classifier g over ``n`` masked copies per query, scored by a rule of ``ranmask_jax.ensembles``) and
``common_scorer`` (the same with common random numbers). A smoothed scorer is random: every query draws fresh
copies (its key is ``fold_in(root, query number)``), so asking twice about the same text can give two answers, as
it does for a deployed randomized defense. ``cache=True`` answers each distinct text once per attacked example and
reuses the answer, as TextAttack's goal-function cache does (which makes a randomized defense look deterministic to
the attacker). ``common_scorer`` gives every text of one word count the same n keep sets and caches each copy's
logits: a text that differs from one asked before in a few words pays only for the copies that keep a changed
word, and its answer is exactly that of classifying all n copies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

Scorer = Callable[[list[str]], np.ndarray]


class BudgetExhausted(Exception):
    """The query budget of the attacked example is spent."""


@dataclasses.dataclass
class Queries:
    """Scores texts for one attacked example: counts queries, keeps the budget, caches when asked."""

    scorer: Scorer
    budget: int | None = None
    cache: bool = False
    count: int = 0
    _memo: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Scores ``[len(texts), C]``; every text not answered from the cache costs one query. All texts of a
        call go to the scorer in one batch. Raises BudgetExhausted (before scoring) if the call would exceed the
        budget."""
        texts = list(texts)
        todo = [t for t in dict.fromkeys(texts) if t not in self._memo] if self.cache else texts
        if self.budget is not None and self.count + len(todo) > self.budget:
            raise BudgetExhausted(f"{self.count} queries used, {len(todo)} more asked, budget {self.budget}")
        self.count += len(todo)
        if not self.cache:
            return np.asarray(self.scorer(texts), np.float64) if texts else np.zeros((0, 0))
        if todo:
            for t, s in zip(todo, np.asarray(self.scorer(todo), np.float64), strict=True):
                self._memo[t] = s
        return np.stack([self._memo[t] for t in texts]) if texts else np.zeros((0, 0))



def plain_scorer(sc) -> Scorer:
    """The base classifier f of ``sc`` (a SmoothedClassifier) on the unmasked texts: softmax probabilities."""
    from ranmask_jax.ensembles import softmax

    return lambda texts: softmax(sc.base_logits(list(texts))) if texts else np.zeros((0, sc.num_labels))


def smoothed_scorer(sc, key, n: int = 100, ensemble: str = "vote") -> Scorer:
    """g over ``n`` masked copies per text (``sc``: a SmoothedClassifier), scored by the ``ensemble`` rule of
    ``ranmask_jax.ensembles``. Query q (counted over the scorer's life) draws its copies from ``fold_in(key, q)``:
    fresh randomness for every query."""
    import jax

    from ranmask_jax import ensembles

    ensembles.check(ensemble)
    state = {"queries": 0}

    def score(texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, sc.num_labels))
        keys = [jax.random.fold_in(key, state["queries"] + i) for i in range(len(texts))]
        state["queries"] += len(texts)
        return np.array([p.scores for p in sc.predict_many(keys, texts, n=n, ensemble=ensemble)], np.float64)

    return score


def safer_scorer(safer, stream: tuple[int, ...], n: int = 100, ensemble: str = "vote", num_labels: int = 2) -> Scorer:
    """SAFER's g over ``n`` substitution copies per text (``safer``: a ``ranmask_jax.safer.SaferClassifier``), scored
    by the ``ensemble`` rule; query q (counted over the scorer's life) draws from ``default_rng([*stream, q])``."""
    from ranmask_jax import ensembles

    ensembles.check(ensemble)
    state = {"queries": 0}

    def score(texts: list[str]) -> np.ndarray:
        out = []
        for t in texts:
            out.append(safer.scores(t, np.random.default_rng([*stream, state["queries"]]), n, ensemble))
            state["queries"] += 1
        return np.array(out, np.float64).reshape(len(texts), num_labels)

    return score


def common_scorer(sc, key, n: int = 100, ensemble: str = "vote", per_call: bool = False) -> Scorer:
    """g over ``n`` masked copies per text with common random numbers (``sc``: a SmoothedClassifier with uniform
    keep sets). Every text of h words gets the same keep sets: the distinct ones of ``n`` drawn from ``fold_in(key,
    h)``, or all of them when there are at most ``n`` (as ``predict``). A copy is determined by its keep set and the
    words it keeps, so its logits are cached under that pair: for a text that differs from earlier ones at the word
    positions S, only the copies whose keep set meets S are classified (at rho 0.9 and |S| = 1 about one in ten).
    Each answer equals ``predict`` on those keep sets (the votes exactly, the scores up to float rounding); a text
    asked twice gets the same answer.

    ``per_call=True`` draws new keep sets for every call (call c: ``fold_in(fold_in(key, c), h)``) and shares them,
    and the cache, only among the texts of that call (a step's candidates, or the importance probes): each answer
    is then distributed exactly as n fresh copies (the ``fresh`` oracle's), while a copy that two texts of the call
    share (its keep set misses the words where they differ) is classified once."""
    import jax

    from ranmask_jax import ensembles
    from ranmask_jax.engine import Votes

    ensembles.check(ensemble)
    if not getattr(sc.keep_sets, "certifiable", False):
        raise ValueError(f"common keep sets need uniform keep sets, not {type(sc.keep_sets).__name__}")
    by_h: dict[int, tuple] = {}
    memo: dict[tuple, np.ndarray] = {}  # (h, keep-set row, kept words) -> f's raw logits
    calls = [0]

    def keep_sets(enc):
        if enc.h not in by_h:
            root = jax.random.fold_in(key, calls[0]) if per_call else key
            keep, weights = sc.distinct_keep_sets(jax.random.fold_in(root, enc.h), enc, n, sc.exact_mode(enc, n))
            by_h[enc.h] = keep, np.asarray(weights, np.float64), [np.flatnonzero(row[:enc.h]) for row in keep]
        return by_h[enc.h]

    def score(texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, sc.num_labels))
        if per_call:  # new keep sets, nothing shared with earlier calls
            calls[0] += 1
            by_h.clear()
            memo.clear()
        plans, todo = [], {}
        for t, text in enumerate(texts):
            enc = sc.encode(text)
            keep, weights, kept = keep_sets(enc)
            words = enc.words
            names = [(enc.h, r, tuple(words[j] for j in idx)) for r, idx in enumerate(kept)]
            todo.update({name: (t, r) for r, name in enumerate(names) if name not in memo and name not in todo})
            plans.append((enc, keep, weights, names))
        if todo:  # every copy not classified yet, once, in one call of the engine
            rows: dict[int, list] = {}
            for name, (t, r) in todo.items():
                rows.setdefault(t, []).append((r, name))
            got = sc.votes([(plans[t][0], plans[t][1][[r for r, _ in rs]], np.ones(len(rs))) for t, rs in
                            rows.items()], row_labels=True)
            for rs, v in zip(rows.values(), got, strict=True):
                for (_, name), logits in zip(rs, v.row_logits, strict=True):
                    memo[name] = np.asarray(logits, np.float64)
        out = []
        for _, _, weights, names in plans:
            out.append(Votes.from_logits(np.stack([memo[name] for name in names]), weights).scores(ensemble))
        return np.array(out, np.float64)

    return score
