"""What LM-based sampling keeps: for the texts of an attack cell (its attack.jsonl), the share of the kept words
that are stopwords (NLTK's English list) or punctuation (no letter or digit) under LM-based and under uniform keep
sets, and how concentrated the masked LM's word scores are.

    python experiments/lm_keep_share.py docs/runs/agnews-rho0.9/attack-deepwordbug-lm-vote/attack.jsonl \
        --lm runs/agnews-mlm --rho 0.9 --max-len 128

Prints one Markdown table row per rho: texts, mean words h, kept k, the stopword-and-punctuation share of the words
and of the kept words (uniform and LM keep sets, ``--copies`` draws of each per text), and the mean share of the
score mass on the top 10% of a text's words.

With ``--changed`` it reads the attack's PERTURBED texts instead (the rows whose attack succeeded) and asks whether
the LM keep sets drop the words the attacker changed: per rho, how often a changed word is kept (uniform keep sets
keep every word with probability k / h) and the share of copies that keep none of the changed words, i.e. read
only the words the attacker left alone, under uniform and LM keep sets.

    python experiments/lm_keep_share.py docs/runs/sst2-rho0.3/attack-textfooler-lm-vote/attack.jsonl \
        --lm runs/sst2-mlm --rho 0.3 --max-len 64 --changed
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
    p.add_argument("--changed", action="store_true", help="keep rates of the attacker's changed words (above)")
    a = p.parse_args(argv)

    from attacks.resources import stopwords
    from ranmask_jax.files import read_rows
    from ranmask_jax.lm_sampling import LMKeepSets, mlm_word_scores
    from ranmask_jax.masking import encode, sample_keep
    from ranmask_jax.runs import load_mlm

    stop = stopwords("nltk")
    model, tok, _ = load_mlm(a.lm, SimpleNamespace(dtype="float32", allow_pickle=False))
    scores = mlm_word_scores(model, tok, a.max_len)
    if a.changed:
        changed_words(a, read_rows(Path(a.rows)), tok, scores)
        return
    texts = [r["text"] for r in read_rows(Path(a.rows))]
    encs = [encode(tok, t) for t in texts]
    width = max(len(e.words) for e in encs)  # one shape for every draw
    print("| rho | texts | mean h | mean k | stopwords and punctuation among the words % | among the kept, uniform % | "
          "among the kept, LM % | score mass on the top 10% of words % |")
    print("|---|---|---|---|---|---|---|---|")
    # what does not depend on rho, once per text: h, which words are stopwords or punctuation, the score mass on
    # the top 10% of the words
    hs = [len(e.words) for e in encs]
    is_stop = [np.array([w.lower() in stop or not any(c.isalnum() for c in w) for w in e.words], bool) for e in encs]
    probs = LMKeepSets(0.0, scores).probabilities
    top_mass = [np.sort(probs(e))[::-1][: max(1, round(0.1 * h))].sum() for e, h in zip(encs, hs, strict=True)]
    words_stop = [st.mean() for st in is_stop]
    m = lambda v: 100 * float(np.mean(v))  # noqa: E731
    for rho in a.rho:
        keep = LMKeepSets(rho, scores)
        key = jax.random.key(a.seed)
        kept_stop, uni_stop = [], []
        for enc, h, st in zip(encs, hs, is_stop, strict=True):
            key, sub, sub2 = jax.random.split(key, 3)
            kept = np.asarray(keep.sample_text(sub, enc, a.copies, width))[:, :h].astype(bool)  # [copies, h]
            uni = np.asarray(sample_keep(sub2, h, keep.k(h), a.copies, width))[:, :h].astype(bool)
            kept_stop.append((kept & st).sum() / kept.sum())
            uni_stop.append((uni & st).sum() / uni.sum())
        ks = [keep.k(h) for h in hs]
        print(f"| {rho} | {len(texts)} | {np.mean(hs):.1f} | {np.mean(ks):.1f} | {m(words_stop):.1f} | "
              f"{m(uni_stop):.1f} | {m(kept_stop):.1f} | {m(top_mass):.1f} |")


def changed_words(a, rows, tok, scores) -> None:
    from ranmask_jax.lm_sampling import LMKeepSets
    from ranmask_jax.masking import encode, sample_keep

    pairs = []  # (encoded perturbed text, positions of the changed words)
    for r in rows:
        if r.get("status") != "succeeded":
            continue
        enc = encode(tok, r["perturbed_text"])
        orig = encode(tok, r["text"]).words
        if len(orig) != len(enc.words):  # an attack that adds or removes words: no one-to-one positions
            continue
        pos = np.array([i for i, (u, v) in enumerate(zip(orig, enc.words, strict=True)) if u != v], int)
        if len(pos):
            pairs.append((enc, pos))
    if not pairs:
        raise SystemExit(f"{a.rows}: no succeeded row with a changed word")
    width = max(len(e.words) for e, _ in pairs)
    print("| rho | perturbed texts | mean h | mean k | mean changed words | changed word kept, uniform % | "
          "changed word kept, LM % | copies with no changed word, uniform % | with no changed word, LM % |")
    print("|---|---|---|---|---|---|---|---|---|")
    m = lambda v: 100 * float(np.mean(v))  # noqa: E731
    for rho in a.rho:
        keep = LMKeepSets(rho, scores)
        key = jax.random.key(a.seed)
        kept_lm, kept_uni, none_lm, none_uni = [], [], [], []
        for enc, pos in pairs:
            key, sub, sub2 = jax.random.split(key, 3)
            h = len(enc.words)
            lm = np.asarray(keep.sample_text(sub, enc, a.copies, width))[:, pos].astype(bool)  # [copies, changed]
            uni = np.asarray(sample_keep(sub2, h, keep.k(h), a.copies, width))[:, pos].astype(bool)
            kept_lm.append(lm.mean())
            kept_uni.append(uni.mean())
            none_lm.append((~lm.any(1)).mean())
            none_uni.append((~uni.any(1)).mean())
        hs = [len(e.words) for e, _ in pairs]
        print(f"| {rho} | {len(pairs)} | {np.mean(hs):.1f} | {np.mean([keep.k(h) for h in hs]):.1f} | "
              f"{np.mean([len(p) for _, p in pairs]):.2f} | {m(kept_uni):.1f} | {m(kept_lm):.1f} | {m(none_uni):.1f} | "
              f"{m(none_lm):.1f} |")


if __name__ == "__main__":
    main()
