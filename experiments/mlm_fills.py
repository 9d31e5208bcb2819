"""Example fills of a masked-LM run (``train.py --task mlm``), as MaskPure uses them: in seeded test texts a share of
the words is each replaced by ONE mask token and the masked LM's top predictions at those positions are printed
beside the original words, as a Markdown table.

    python experiments/mlm_fills.py runs/agnews-mlm --data-dir ../shared/data --dataset ag_news --texts 6
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="masked-LM run directory")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--texts", type=int, default=6)
    p.add_argument("--max-words", type=int, default=30, help="only texts of at most this many words (readable)")
    p.add_argument("--rate", type=float, default=0.15, help="share of each text's words masked (at least one)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    from ranmask_jax.data import load_dataset
    from ranmask_jax.runs import load_mlm

    model, tok, _ = load_mlm(a.run, SimpleNamespace(dtype="float32", allow_pickle=False))
    model.eval()
    ds = load_dataset(a.dataset, a.split, a.data_dir)
    rng = np.random.default_rng(a.seed)
    short = [e.text for e in ds.examples if 4 <= len(e.text.split()) <= a.max_words]
    print(f"Fills of `{a.run}` on {a.texts} seeded {a.dataset} {a.split} texts ({a.rate:.0%} of the words masked, "
          "one mask token per word; top-1, then the rest of the top 5)\n")
    print("| masked text | original word | top-1 | top 2-5 |\n|---|---|---|---|")
    for i in rng.choice(len(short), size=min(a.texts, len(short)), replace=False):
        words = short[i].split()
        chosen = np.sort(rng.choice(len(words), size=max(1, round(a.rate * len(words))), replace=False))
        masked = [tok.mask_token if j in set(chosen.tolist()) else w for j, w in enumerate(words)]
        enc = tok(" ".join(masked), return_tensors="np", truncation=True, max_length=128)
        logits = np.asarray(model(enc["input_ids"], enc["attention_mask"],
                                  enc.get("token_type_ids", np.zeros_like(enc["input_ids"]))))[0]
        where = np.flatnonzero(enc["input_ids"][0] == tok.mask_token_id)
        shown = " ".join(masked).replace("|", "\\|")
        for n, (pos, j) in enumerate(zip(where, chosen, strict=False)):
            top = np.argsort(-logits[pos])[:5]
            fills = tok.convert_ids_to_tokens(top.tolist())
            print(f"| {shown if n == 0 else ''} | {words[j]} | **{fills[0]}** | {', '.join(fills[1:])} |")


if __name__ == "__main__":
    main()
