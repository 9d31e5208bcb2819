"""The paper's attacks, each assembled in one place from the pieces of this package (parameters from TextAttack
0.3.11's recipes and the papers; offline substitutions named in docs/ATTACKS.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from attacks import constraints as C
from attacks.resources import Neighbours, SentenceEncoder, WordNet, stopwords
from attacks.transformations import CharEdits, NeighbourSwap, WordNetSwap


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


def bert_attack(unk_token: str = "[UNK]", mlm=None, encoder: SentenceEncoder | None = None, k: int = 48,
                max_fraction: float = 0.4, threshold: float = 0.2, max_len: int = 256,
                subwords: str = "single") -> Recipe:
    """Li et al. 2020: the top ``k`` = 48 masked-LM candidates per word (``mlm``: ``(model, tokenizer)`` of a
    masked-LM run, reading ``max_len`` = 256 tokens as the original code's TextAttack), at most 40% of the words
    changed, sentence-encoder cosine >= 0.2 to the ORIGINAL text (whole text), NLTK stopwords untouched, importance
    by the unknown token. ``subwords``: "single" (the original code's: a word of several subwords gets no candidate)
    or "beam" (a beam over its subwords)."""
    from attacks.transformations import MLMSwap

    if mlm is None:
        raise ValueError("bert-attack needs a masked LM for its candidates: --attack-mlm RUN (train.py --task mlm)")
    encoder = encoder or SentenceEncoder()
    return Recipe("bert-attack", MLMSwap(mlm[0], mlm[1], k=k, max_len=max_len, subwords=subwords),
                  [C.not_modified_yet, C.Stopwords(stopwords("nltk"))],
                  [C.MaxWordsPerturbed(max_fraction), C.SentenceSimilarity(encoder, threshold, "cosine", None, True)],
                  wir="unk", unk_token=unk_token,
                  params={"k": k, "max_fraction": max_fraction, "similarity": threshold, "metric": "cosine",
                          "sentence_encoder": "MiniLM-L6 mean pooling", "stopwords": "nltk", "mlm_max_len": max_len,
                          "subwords": subwords})


def pwws(unk_token: str = "[UNK]", wordnet: WordNet | None = None) -> Recipe:
    """Ren et al. 2019 (TextAttack's recipe, the one the original RanMASK code augments its training data with):
    WordNet synonyms, NLTK stopwords untouched, no other constraint; words taken in the order of their
    probability-weighted saliency: softmax over the words of (1 - p_y with the word replaced by the unknown token),
    times the largest (1 - p_y) among the word's synonym swaps in the original text."""
    return Recipe("pwws", WordNetSwap(wordnet or WordNet()), [C.not_modified_yet, C.Stopwords(stopwords("nltk"))],
                  [], wir="weighted-saliency", unk_token=unk_token,
                  params={"synonyms": "WordNet 3.0", "stopwords": "nltk"})


RECIPES = {"deepwordbug": deepwordbug, "textfooler": textfooler, "bert-attack": bert_attack, "pwws": pwws}
