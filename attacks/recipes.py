"""The paper's attacks, each assembled in one place from the pieces of this package (parameters from TextAttack
0.3.11's recipes and the papers; offline substitutions named in docs/ATTACKS.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from attacks import constraints as C
from attacks.resources import Neighbours, SentenceEncoder, WordNet, stopwords
from attacks.transformations import CharEdits, NeighbourSwap


@dataclasses.dataclass
class Recipe:
    name: str
    transformation: Callable
    pre: list  # may word i be modified?
    constraints: list  # which candidates are kept
    wir: str  # importance by "unk" (replace with the unknown token) or "delete"
    unk_token: str = "[UNK]"
    similarity_picks: bool = False  # among successful swaps return the most similar one
    params: dict = dataclasses.field(default_factory=dict)  # what a results table should state


def deepwordbug(unk_token: str = "[UNK]", max_edit_distance: int = 30) -> Recipe:
    """Gao et al. 2018: four random character edits per word, Levenshtein distance to the original <= 30,
    stopwords (NLTK) untouched, importance by the unknown token."""
    return Recipe("deepwordbug", CharEdits(), [C.not_modified_yet, C.Stopwords(stopwords("nltk"))],
                  [C.MaxEditDistance(max_edit_distance)], wir="unk", unk_token=unk_token,
                  params={"max_edit_distance": max_edit_distance, "stopwords": "nltk"})


def textfooler(unk_token: str = "[UNK]", neighbours: Neighbours | None = None, wordnet: WordNet | None = None,
               encoder: SentenceEncoder | None = None, max_candidates: int = 50, min_cos: float = 0.5,
               threshold: float = 0.840845057, window: int = 15, antonyms: bool = True) -> Recipe:
    """Jin et al. 2020: 50 nearest neighbours (cosine >= 0.5) in word vectors, same part of speech (noun/verb swaps
    allowed), sentence similarity (angular) >= 0.840845 in a 15-word window against the current text, TextFooler's
    stopwords, importance by deleting each word; among successful swaps the most similar."""
    wordnet = wordnet or WordNet()
    neighbours = neighbours or Neighbours.glove(wordnet=wordnet if antonyms else None)
    encoder = encoder or SentenceEncoder()
    return Recipe("textfooler", NeighbourSwap(neighbours, max_candidates, min_cos),
                  [C.not_modified_yet, C.Stopwords(stopwords("textfooler"))],
                  [C.PartOfSpeech(wordnet), C.SentenceSimilarity(encoder, threshold, "angular", window, False)],
                  wir="delete", unk_token=unk_token, similarity_picks=True,
                  params={"max_candidates": max_candidates, "min_cos": min_cos, "similarity": threshold,
                          "window": window, "antonyms_removed": antonyms, "word_vectors": "GloVe 6B 50d",
                          "sentence_encoder": "MiniLM-L6 mean pooling", "pos": "WordNet index"})


RECIPES = {"deepwordbug": deepwordbug, "textfooler": textfooler}
