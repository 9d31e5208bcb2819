"""How sharp a smoothed classifier's class distribution is on clean texts: the mean entropy (nats) of the vote
shares over the copies of each text, the paper's footnote 4 (SAFER 0.006; RanMASK 0.025, 0.036, 0.102, 0.587 at
rho = 5, 10, 50, 90% on 1,000 AG News test texts). A sharp distribution starves a score-based attack of signal.

    python experiments/prediction_entropy.py --reference SAFER=docs/runs/agnews-safer/accuracy-test \\
        RanMASK-5%=docs/runs/agnews-rho0.05/accuracy-test RanMASK-90%=docs/runs/agnews-rho0.9/accuracy-test

Each argument is NAME=DIR, DIR holding the ``certify.jsonl`` of a ``certify.py --accuracy-only`` run (its rows
carry each text's vote counts). The figures are computed on the texts every run has; each run after the reference
is compared with it on the same texts (mean difference with a 95% paired bootstrap interval, Wilcoxon signed-rank
test).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ranmask_jax.files import read_rows  # noqa: E402


def entropies(rows: list[dict]) -> dict[int, float]:
    """Text index -> entropy (nats) of its vote shares; texts where every copy abstained are left out."""
    out = {}
    for r in rows:
        counts = np.asarray(r["counts"], float)
        if counts.sum() <= 0:
            continue
        p = counts[counts > 0] / counts.sum()
        out[int(r["index"])] = float(-(p * np.log(p)).sum())
    return out


def compare(x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict:
    """Paired comparison of two runs' entropies on the same texts: mean of y - x, its 95% bootstrap interval and the
    Wilcoxon signed-rank p-value."""
    from scipy.stats import bootstrap, wilcoxon

    d = y - x
    if np.all(d == 0):
        return {"diff": 0.0, "ci95": (0.0, 0.0), "p": 1.0}
    ci = bootstrap((d,), np.mean, confidence_level=0.95, n_resamples=10000,
                   rng=np.random.default_rng(seed)).confidence_interval
    return {"diff": float(d.mean()), "ci95": (float(ci.low), float(ci.high)), "p": float(wilcoxon(x, y).pvalue)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="NAME=DIR", help="accuracy-only certify.py outputs; the first is "
                                                                 "the reference of the paired comparisons")
    p.add_argument("--json", help="write the figures here as JSON")
    args = p.parse_args(argv)

    runs = {}
    for spec in args.runs:
        name, sep, d = spec.partition("=")
        if not sep:
            p.error(f"{spec!r}: expected NAME=DIR")
        path = Path(d) / "certify.jsonl"
        if not path.is_file():
            p.error(f"{path}: no such file (the rows of certify.py --accuracy-only)")
        runs[name] = entropies(read_rows(path))
    common = sorted(set.intersection(*(set(e) for e in runs.values())))
    if not common:
        p.error("the runs have no text in common")
    ref_name = next(iter(runs))
    ref = np.array([runs[ref_name][i] for i in common])
    result = {"texts": len(common), "runs": {}}
    lines = [f"Entropy (nats) of the vote shares on the {len(common)} texts every run has\n",
             f"| run | mean | median | unanimous % | mean - {ref_name} (95% CI) | Wilcoxon p |",
             "|---|---|---|---|---|---|"]
    for name, ent in runs.items():
        h = np.array([ent[i] for i in common])
        row = {"mean": float(h.mean()), "median": float(np.median(h)), "unanimous": float(np.mean(h == 0)),
               "texts_in_run": len(ent)}
        cmp = ""
        if name != ref_name:
            row["vs_reference"] = c = compare(ref, h)
            cmp = f"{c['diff']:+.3f} ({c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}) | {c['p']:.2g}"
        else:
            cmp = "reference | "
        lines.append(f"| {name} | {row['mean']:.3f} | {row['median']:.3f} | {100 * row['unanimous']:.1f} | {cmp} |")
        result["runs"][name] = row
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
