"""The black-box harness: a scorer is any ``list[str] -> np.ndarray[len(texts), num_labels]`` (class scores that
sum to 1); the harness counts queries (one text scored = one query), enforces an optional query budget, and
optionally caches answers per distinct text.

Scorers here: ``plain_scorer`` (the base classifier's softmax on the unmasked text) and ``smoothed_scorer`` (the
smoothed classifier g over ``n`` masked copies per query, scored by a rule of ``ranmask_jax.ensembles``). A
smoothed scorer is random: by default every query draws fresh copies (its key is ``fold_in(root, query number)``),
so asking twice about the same text can give two answers, as it does for a deployed randomized defense.
``cache=True`` answers each distinct text once per attacked example and reuses the answer, as TextAttack's
goal-function cache does (which makes a randomized defense look deterministic to the attacker).
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
