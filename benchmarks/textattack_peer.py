"""The peer of the attack benchmark: TextAttack 0.3.11's own DeepWordBug (or PWWS) recipe attacking the same smoothed
classifier written in PyTorch the way the original RanMASK code runs it (each query: n masked copies of the text as
strings, each masked word written as the mask token, one tokenizer call, batches padded to their longest copy, the
votes counted), or with ``--ensemble none`` the plain model (softmax of its logits on the text). It runs in its own
environment, since TextAttack 0.3.11 needs transformers 4:

    python -m venv tavenv && tavenv/bin/pip install textattack==0.3.11 "transformers<5" torch==2.13.0
    mkdir -p nltk_data/corpora/stopwords
    python -c "from attacks.resources import stopwords; print('\\n'.join(sorted(stopwords('nltk'))))" \\
        > nltk_data/corpora/stopwords/english

(NLTK reads one word per line: the project's list file holds several per line, and copied as it is NLTK would read
its 10 lines as 10 "stopwords", which is how the first side-by-side run of 2026-12-07 went wrong.)

and is driven by ``attack_oracles.py --oracles ...,textattack --peer-python tavenv/bin/python`` (with
``NLTK_DATA=nltk_data``): one JSON request per line on stdin (``{"index", "text", "label"}``), one JSON row per line
on stdout (status, clean and final prediction, queries, forward_passes, words_changed, seconds, perturbed_text),
so that the two attack the same texts in turns in one warm process each.

The classifier is the exported model of a run (``run/model``: a transformers checkpoint); copies keep
``max(h - round(h rho), min(2, h))`` of a text's h whitespace words, drawn uniformly, fresh for every query
(TextAttack's goal-function cache answers each distinct text once per example). Example i's copies draw from numpy's
``default_rng([seed, i])``, its character edits from Python's and numpy's global generators seeded with ``seed + i``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--rho", type=float, required=True)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--recipe", choices=("deepwordbug", "pwws"), default="deepwordbug",
                   help="pwws needs NLTK's WordNet under $NLTK_DATA (experiments/wordnet_parity.py says how)")
    p.add_argument("--ensemble", choices=("vote", "none"), default="vote")
    args = p.parse_args()

    import textattack
    import torch
    import transformers
    from textattack.attack_recipes import DeepWordBugGao2018, PWWSRen2019
    from textattack.attack_results import FailedAttackResult, SkippedAttackResult, SuccessfulAttackResult
    from textattack.models.wrappers import ModelWrapper
    from textattack.shared import AttackedText

    torch.set_num_threads(args.threads)
    tok = transformers.AutoTokenizer.from_pretrained(args.model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(args.model_dir).eval()
    state = {"rng": np.random.default_rng(args.seed), "copies": 0}

    def keep_count(h: int) -> int:
        return max(h - round(h * args.rho), min(2, h))

    def masked_copies(text: str) -> list[str]:
        words = text.split()
        h, rng = len(words), state["rng"]
        k = keep_count(h)
        out = []
        for _ in range(args.n):
            keep = np.zeros(h, bool)
            keep[rng.choice(h, k, replace=False)] = True
            out.append(" ".join(w if kept else tok.mask_token for w, kept in zip(words, keep, strict=True)))
        return out

    @torch.no_grad()
    def vote_shares(texts: list[str]) -> np.ndarray:
        copies = [c for t in texts for c in masked_copies(t)]
        state["copies"] += len(copies)
        labels = []
        for s in range(0, len(copies), args.batch_size):
            enc = tok(copies[s:s + args.batch_size], padding=True, truncation=True, max_length=args.max_len,
                      return_tensors="pt")
            labels.append(model(**enc).logits.argmax(-1).numpy())
        labels = np.concatenate(labels).reshape(len(texts), args.n)
        num_labels = model.config.num_labels
        return np.stack([np.bincount(row, minlength=num_labels) / args.n for row in labels])

    class Smoothed(ModelWrapper):
        def __init__(self):
            self.model = model

        def __call__(self, text_input_list, **kwargs):
            texts = [t if isinstance(t, str) else " ".join(t) for t in text_input_list]
            return vote_shares(texts) if args.ensemble == "vote" else plain(texts)

    @torch.no_grad()
    def plain(texts: list[str]) -> np.ndarray:
        state["copies"] += len(texts)
        out = []
        for s in range(0, len(texts), args.batch_size):
            enc = tok(texts[s:s + args.batch_size], padding=True, truncation=True, max_length=args.max_len,
                      return_tensors="pt")
            out.append(torch.softmax(model(**enc).logits, -1).numpy())
        return np.concatenate(out)

    attack = {"deepwordbug": DeepWordBugGao2018, "pwws": PWWSRen2019}[args.recipe].build(Smoothed())
    print(json.dumps({"ready": True, "textattack": getattr(textattack, "__version__", "0.3.11"),
                      "transformers": transformers.__version__, "torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        i = int(req["index"])
        state["rng"] = np.random.default_rng([args.seed, i])
        random.seed(args.seed + i)
        np.random.seed(args.seed + i)
        attack.clear_cache()
        copies = state["copies"]
        t0 = time.perf_counter()
        res = attack.attack(AttackedText(req["text"]), int(req["label"]))
        seconds = time.perf_counter() - t0
        status = {SuccessfulAttackResult: "succeeded", FailedAttackResult: "failed",
                  SkippedAttackResult: "skipped"}[type(res)]
        orig, final = res.original_result, res.perturbed_result
        print(json.dumps({"index": i, "label": int(req["label"]), "status": status,
                          "clean_prediction": int(orig.output), "final_prediction": int(final.output),
                          "recheck_prediction": int(final.output), "queries": int(final.num_queries),
                          "forward_passes": state["copies"] - copies,
                          "words_changed": len(orig.attacked_text.all_words_diff(final.attacked_text)),
                          "seconds": round(seconds, 3), "perturbed_text": final.attacked_text.text}), flush=True)


if __name__ == "__main__":
    main()
