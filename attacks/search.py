"""Greedy search by word importance (TextAttack's GreedyWordSwapWIR), for untargeted classification.

1. Importance: each modifiable word is replaced by the unknown token ("unk", DeepWordBug / BERT-Attack) or
   deleted ("delete", TextFooler); its importance is how much that lowers the true class's score. All these texts
   go to the scorer in one call. PWWS ("weighted-saliency") weights the softmax of these scores by the best score
   among each word's swaps in the original text (one more call per word).
2. In order of importance, each word's candidates (the transformation's, filtered by the constraints) are scored
   in one call; the candidate that lowers the true class's score most becomes the current text if it lowers it
   below the current text's. Otherwise (``fallback``) the search goes on from a random candidate ("random": the
   TextAttack 0.2 search the original RanMASK code runs) or keeps the current text ("skip": TextAttack upstream).
   When the new current text is misclassified, the attack succeeded: TextAttack ranks that step's candidates by
   score and, when a constraint reports similarities, returns the most similar of the leading successful ones (the
   ranking up to its first unsuccessful candidate); otherwise the current text.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from attacks.harness import BudgetExhausted, Queries
from attacks.text import AttackText


@dataclasses.dataclass
class Outcome:
    status: str  # skipped (clean text misclassified), failed, succeeded
    text: AttackText  # the final text (the original when skipped)
    clean_scores: np.ndarray
    final_scores: np.ndarray
    note: str = ""

    @property
    def clean_prediction(self) -> int:
        return int(np.argmax(self.clean_scores))

    @property
    def final_prediction(self) -> int:
        return int(np.argmax(self.final_scores))


FALLBACKS = ("random", "skip")


def _weighted_saliency(original: AttackText, label: int, idx: list[int], saliency: np.ndarray, queries: Queries,
                       recipe, rng: np.random.Generator) -> np.ndarray:
    """PWWS's word order: softmax(saliency) times each word's best swap score (1 - p_y) in the original text, 0 for a
    word without candidates (TextAttack's "weighted-saliency")."""
    weights = np.exp(saliency - saliency.max())
    weights /= weights.sum()
    best = np.zeros(len(idx))
    for j, i in enumerate(idx):
        cands = [original.replace(i, w) for w in recipe.transformation(original, i, rng)]
        for constraint in recipe.constraints:
            if cands:
                keep, _ = constraint(cands, original, original, i)
                cands = [c for c, k in zip(cands, keep, strict=True) if k]
        if cands:
            best[j] = float(np.max(1.0 - queries([c.text for c in cands])[:, label]))
    return weights * best


def greedy_wir(original: AttackText, label: int, queries: Queries, recipe, rng: np.random.Generator,
               fallback: str = "random", judge: Queries | None = None) -> Outcome:
    """Attack ``original`` (true class ``label``). ``judge``: the adaptive attack. The search reads ``queries`` (a
    soft score, e.g. the mean probabilities over the masked copies) while success, and the clean and final scores,
    are the judge's answers (e.g. the vote of fresh copies): the clean text is asked once, each step's kept candidate
    once, and for the most-similar pick the leading candidates in the search's ranking until one is not a success."""
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
    clean_search = queries([original.text])[0]
    clean = judge([original.text])[0] if judge is not None else clean_search
    if int(np.argmax(clean)) != label:
        return Outcome("skipped", original, clean, clean)
    cur, cur_scores, verdict = original, clean_search, clean
    try:
        idx = [i for i in original.attackable() if all(p(original, i) for p in recipe.pre)]
        if not idx:
            return Outcome("failed", cur, clean, cur_scores, "no modifiable word")
        probes = [original.without_word(i) if recipe.wir == "delete" else original.with_word(i, recipe.unk_token)
                  for i in idx]
        importance = 1.0 - queries(probes)[:, label]
        if recipe.wir == "weighted-saliency":
            importance = _weighted_saliency(original, label, idx, importance, queries, recipe, rng)
        order = [idx[j] for j in np.argsort(-importance, kind="stable")]
        for i in order:
            if not all(p(cur, i) for p in recipe.pre):
                continue
            cands = [cur.replace(i, w) for w in recipe.transformation(cur, i, rng)]
            sims = np.zeros(len(cands))
            for constraint in recipe.constraints:
                if not cands:
                    break
                keep, sim = constraint(cands, cur, original, i)
                cands = [c for c, k in zip(cands, keep, strict=True) if k]
                sims = (sims[keep] if sim is None else np.asarray(sim)[keep])
            if not cands:
                continue
            scores = queries([c.text for c in cands])
            goal = 1.0 - scores[:, label]
            ranked = np.argsort(-goal, kind="stable")  # TextAttack sorts by score, ties in candidate order
            if goal[ranked[0]] > 1.0 - cur_scores[label]:
                j = int(ranked[0])
            elif fallback == "random":
                j = int(rng.integers(len(cands)))
            else:
                continue
            cur, cur_scores = cands[j], scores[j]
            answers = {j: scores[j] if judge is None else judge([cands[j].text])[0]}  # what decides success
            verdict = answers[j]
            if int(np.argmax(verdict)) != label:
                pick = j
                if recipe.similarity_picks:
                    best = -np.inf
                    for c in (int(c) for c in ranked):  # the leading successful candidates
                        if c not in answers:
                            answers[c] = scores[c] if judge is None else judge([cands[c].text])[0]
                        if int(np.argmax(answers[c])) == label:
                            break
                        if sims[c] > best:
                            best, pick = sims[c], c
                return Outcome("succeeded", cands[pick], clean, answers[pick])
    except BudgetExhausted as e:
        return Outcome("failed", cur, clean, verdict, f"query budget: {e}")
    return Outcome("failed", cur, clean, verdict)
