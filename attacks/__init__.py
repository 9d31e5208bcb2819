"""Black-box attacks on ranmask-jax classifiers, plain or smoothed: DeepWordBug, TextFooler and BERT-Attack
(RanMASK Section 4.3). ``ranmask-attack --help`` (or ``python -m attacks``); pieces: ``harness`` (scorers,
queries, cache), ``text``, ``transformations``, ``constraints``, ``search``, ``recipes``, ``resources`` (offline
word vectors, WordNet, sentence encoder), ``run`` (resumable attack runs), ``cli``.
"""
