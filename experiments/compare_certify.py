"""Certification runs side by side on the texts they have in common (e.g. RanMASK against certified MaskPure).

    python experiments/compare_certify.py --label "RanMASK-0.9" RUNS/agnews-rho0.9/certify-test \
        --label "RanMASK-0.9 + MaskPure refill" RUNS/agnews-rho0.9/certify-test-maskpure

Each directory holds certify.jsonl rows (certify.py --out). Only the texts present in every run are compared, so a
run still in progress is compared with a finished one on the rows it has written. Prints a Markdown table: texts,
accuracy of g, MCB / MCR and certified accuracy at d = 0, 1, 2, ... under beta = 1 and beta = p_c, and the
median and total certification seconds; --plot writes the certified-accuracy curves of every run.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from summarize import by_beta, curve  # experiments/summarize.py: the same columns as the certification tables

from ranmask_jax import metrics
from ranmask_jax.files import read_rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="certify.py --out directories")
    ap.add_argument("--label", action="append", default=[], help="a name per run, in order (default: the path)")
    ap.add_argument("--plot", type=Path, help="write the certified-accuracy curves here (.png and .pdf)")
    ap.add_argument("--title", default="", help="the plot's title")
    args = ap.parse_intermixed_args(argv)
    if args.label and len(args.label) != len(args.runs):
        ap.error(f"{len(args.label)} --label for {len(args.runs)} runs")
    labels = args.label or [str(r) for r in args.runs]
    tables = []
    for run in args.runs:
        rows = read_rows(run / "certify.jsonl")
        if not rows:
            raise SystemExit(f"{run / 'certify.jsonl'}: no rows (expected those of a certify.py --out directory)")
        tables.append({r["index"]: r for r in rows})
    common = sorted(set.intersection(*(set(t) for t in tables)))
    if not common:
        raise SystemExit("the runs have no text in common")
    print(f"{len(common)} texts in common\n")
    print("| run | texts | accuracy of g % | beta = 1: MCB | MCR % | certified accuracy % at d = 0, 1, ... "
          "| beta = p_c: MCB | MCR % | certified accuracy % at d = 0, 1, ... | s / text, median | total min |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    curves = {}
    for label, table in zip(labels, tables, strict=True):
        rows = [table[i] for i in common]
        by = by_beta(rows)
        one, pc = by["one"], by["pc"]
        secs = [r["seconds"] for r in rows]
        print(f"| {label} | {len(rows)} | {100 * metrics.summarize(rows)['accuracy']:.1f} | {one['mcb_largest']} "
              f"| {100 * one['mcr_largest']:.1f} | {curve(one)} | {pc['mcb_largest']} "
              f"| {100 * pc['mcr_largest']:.1f} | {curve(pc)} | {statistics.median(secs):.2f} "
              f"| {sum(secs) / 60:.1f} |")
        curves.update({f"{label}, {metrics.BETA_NAMES[b]}": by[b] for b in ("one", "pc")})
    if args.plot:
        metrics.plot_certified_accuracy(curves, args.plot, title=args.title, n=len(common))
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
