"""What removing WordNet antonyms changes in TextFooler's GloVe candidates, on the texts of an attack cell: how
many distinct non-stopwords lose a neighbour (50 nearest, cosine >= 0.5) as an antonym, and how many candidates go.

    python experiments/antonym_share.py runs/agnews-rho0/attack-textfooler-none/attack.jsonl
"""

from __future__ import annotations

import argparse
import json

from attacks.resources import Neighbours, WordNet, stopwords


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows", help="an attack.jsonl (its original texts are used)")
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--min-cos", type=float, default=0.5)
    p.add_argument("--examples", type=int, default=20)
    a = p.parse_args(argv)
    wordnet, neighbours, stop = WordNet(), Neighbours.glove(wordnet=None), stopwords("textfooler")
    with open(a.rows) as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    words = sorted({w.lower().strip(".,;:!?\"'()") for t in texts for w in t.split()} - stop)
    words = [w for w in words if w in neighbours.row]
    lost, removed, total = [], 0, 0
    for w in words:
        cands, antonyms = neighbours.lookup(w, a.k, a.min_cos), wordnet.antonyms(w)
        bad = [c for c in cands if c in antonyms]
        total, removed = total + len(cands), removed + len(bad)
        if bad:
            lost.append(f"{w} -> {', '.join(bad)}")
    print(f"{len(texts)} texts, {len(words)} distinct non-stopwords with vectors: {len(lost)} "
          f"({100 * len(lost) / max(len(words), 1):.1f}%) lose a neighbour as a WordNet antonym; {removed} of {total} "
          f"candidates removed ({100 * removed / max(total, 1):.2f}%)")
    print("; ".join(lost[: a.examples]))


if __name__ == "__main__":
    main()
