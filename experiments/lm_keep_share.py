"""What LM-based sampling keeps: for the texts of an attack cell (its attack.jsonl), the share of the kept words
that are stopwords (NLTK's English list) or punctuation (no letter or digit) under LM-based and under uniform keep
sets, and how concentrated the masked LM's word scores are.

    python experiments/lm_keep_share.py docs/runs/agnews-rho0.9/attack-deepwordbug-lm-vote/attack.jsonl \
        --lm runs/agnews-mlm --rho 0.9 --max-len 128

Prints one Markdown table row per rho: texts, mean words h, kept k, the stopword-and-punctuation share of the words
and of the kept words (uniform and LM keep sets, ``--copies`` draws of each per text), and the mean share of the
score mass on the top 10% of a text's words.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows", help="an attack.jsonl (its original texts are used)")
    p.add_argument("--lm", required=True, help="masked-LM run")
    p.add_argument("--rho", type=float, nargs="+", required=True)
    p.add_argument("--max-len", type=int, required=True)
    p.add_argument("--copies", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    from attacks.resources import stopwords
    from ranmask_jax.certify import load_mlm
    from ranmask_jax.files import read_rows
    from ranmask_jax.lm_sampling import LMKeepSets, mlm_word_scores
    from ranmask_jax.masking import encode, sample_keep

    stop = stopwords("nltk")
    model, tok, _ = load_mlm(a.lm, SimpleNamespace(dtype="float32", allow_pickle=False))
    scores = mlm_word_scores(model, tok, a.max_len)
    texts = [r["text"] for r in read_rows(Path(a.rows))]
    encs = [encode(tok, t) for t in texts]
    width = max(len(e.words) for e in encs)  # one shape for every draw
    print("| rho | texts | mean h | mean k | stopwords and punctuation among the words % | among the kept, uniform % | "
          "among the kept, LM % | score mass on the top 10% of words % |")
    print("|---|---|---|---|---|---|---|---|")
    for rho in a.rho:
        keep = LMKeepSets(rho, scores)
        key = jax.random.key(a.seed)
        hs, ks, words_stop, kept_stop, uni_stop, top_mass = [], [], [], [], [], []
        for enc in encs:
            h = len(enc.words)
            is_stop = np.array([w.lower() in stop or not any(c.isalnum() for c in w) for w in enc.words], bool)
            key, sub, sub2 = jax.random.split(key, 3)
            kept = np.asarray(keep.sample_text(sub, enc, a.copies, width))[:, :h].astype(bool)  # [copies, h]
            uni = np.asarray(sample_keep(sub2, h, keep.k(h), a.copies, width))[:, :h].astype(bool)
            uni_stop.append((uni & is_stop).sum() / uni.sum())
            s = np.sort(keep.probabilities(enc))[::-1]
            hs.append(h)
            ks.append(keep.k(h))
            words_stop.append(is_stop.mean())
            kept_stop.append((kept & is_stop).sum() / kept.sum())
            top_mass.append(s[: max(1, round(0.1 * h))].sum())
        m = lambda v: 100 * float(np.mean(v))  # noqa: E731
        print(f"| {rho} | {len(texts)} | {np.mean(hs):.1f} | {np.mean(ks):.1f} | {m(words_stop):.1f} | "
              f"{m(uni_stop):.1f} | {m(kept_stop):.1f} | {m(top_mass):.1f} |")


if __name__ == "__main__":
    main()
