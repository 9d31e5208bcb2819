"""PWWS's candidates against TextAttack's: our ``WordNetSwap`` (WordNet's data files read directly) and TextAttack
0.3.11's ``WordSwapWordNet`` (NLTK's reader of the same files) on every distinct word of a dataset's texts.

Two steps, one in each environment:

    python experiments/wordnet_parity.py dump --data-dir ../shared/data --dataset sst2 --out /tmp/ours.json
    NLTK_DATA=/path/nltk_data /path/tavenv/bin/python experiments/wordnet_parity.py compare /tmp/ours.json

NLTK reads ``$NLTK_DATA/corpora/wordnet/``: copy the WordNet 3.0 files there (Debian ``wordnet-base`` installs them
in /usr/share/wordnet; symbolic links are refused by NLTK), add an empty ``index.sense`` and the 45-line
``lexnames`` file (WordNet's lexicographer files, ``lexnames(5WN)``), which the Debian package lacks; ``--write-lexnames
DIR`` writes it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

LEXNAMES = (["adj.all 3", "adj.pert 3", "adv.all 4"]
            + [f"noun.{n} 1" for n in ("Tops act animal artifact attribute body cognition communication event feeling "
                                       "food group location motive object person phenomenon plant possession process "
                                       "quantity relation shape state substance time").split()]
            + [f"verb.{n} 2" for n in ("body change cognition communication competition consumption contact creation "
                                       "emotion motion perception possession social stative weather").split()]
            + ["adj.ppl 3"])


def dump(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from attacks.resources import WordNet
    from attacks.text import AttackText
    from attacks.transformations import WordNetSwap
    from ranmask_jax.data import load_dataset

    swap, out = WordNetSwap(WordNet()), {}
    for split in args.splits.split(","):
        for e in load_dataset(args.dataset, split, args.data_dir).examples:
            t = AttackText.from_string(e.text)
            for i in t.attackable():
                out.setdefault(t.core(i), sorted(swap(t, i, None)))
    Path(args.out).write_text(json.dumps(out))
    print(f"{len(out)} words -> {args.out}")


def compare(args) -> None:
    from textattack.transformations import WordSwapWordNet

    ta, ours = WordSwapWordNet(), json.loads(Path(args.ours).read_text())
    differ = {w: (sorted(set(x) - set(s)), sorted(set(s) - set(x)))
              for w, s in ours.items() if sorted(x := ta._get_replacement_words(w)) != s}
    print(f"{len(ours)} words, {len(differ)} with other candidates (only TextAttack's / only ours):")
    for w, (only_ta, only_ours) in list(differ.items())[:40]:
        print(f"  {w}: {only_ta[:6]} / {only_ours[:6]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--data-dir", default=None)
    d.add_argument("--dataset", default="sst2")
    d.add_argument("--splits", default="test,dev")
    d.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("ours")
    w = sub.add_parser("write-lexnames")
    w.add_argument("dir")
    args = p.parse_args()
    if args.cmd == "write-lexnames":
        Path(args.dir, "lexnames").write_text("".join(f"{i:02d}\t{c.split()[0]}\t{c.split()[1]}\n"
                                                      for i, c in enumerate(LEXNAMES)))
        return
    (dump if args.cmd == "dump" else compare)(args)


if __name__ == "__main__":
    main()
