"""Tables and plots for docs/RESULTS.md from run directories made by experiments/paper_tables.sh.

    python experiments/summarize.py --title "SST-2" --plot docs/figures/sst2.png RUNS/sst2-rho0 RUNS/sst2-rho0.3 ...

Per run: rho, best dev step, accuracy of g on the full test split (accuracy-test/), and on the certified subset
(certify-test/, beta = pc as in the paper) accuracy, MCB and MCR in both radius conventions, plus MCB / MCR with
the rigorous beta = 1 recomputed from the same votes.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ranmask_jax import metrics


def _read_rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _pct(x) -> str:
    return "N/A" if x is None else f"{100 * x:.1f}"


def _num(x) -> str:
    return "N/A" if x is None else str(x)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--title", default="")
    p.add_argument("--plot", help="PNG of certified accuracy against radius, one curve per run")
    args = p.parse_args(argv)

    lines = ["| rho | best dev step | accuracy of g, full test % (n) | certified subset: accuracy of g % | "
             "MCB | MCR % | MCB (+1) | MCR % (+1) | MCB beta=1 | MCR % beta=1 | exact-mode share % | "
             "certify s/text, median (total min) |",
             "|" + "---|" * 12]
    curves = {}
    for run in map(Path, args.runs):
        meta = json.loads((run / "ranmask_run.json").read_text())
        acc = json.loads((run / "accuracy-test" / "summary.json").read_text()) \
            if (run / "accuracy-test" / "summary.json").exists() else None
        rows = _read_rows(run / "certify-test" / "certify.jsonl")
        full = f"{_pct(acc['accuracy'])} ({acc['n']})" if acc else "not run"
        if rows:
            s = metrics.summarize(rows)
            one = metrics.summarize(metrics.rescore(rows, "one", alpha=rows[0].get("alpha", 0.05)))
            curves[(f"rho={meta['rho']}", run.name)] = s
            secs = [r["seconds"] for r in rows]
            timing = f"{statistics.median(secs):.2f} ({sum(secs) / 60:.1f})"
            cells = [_pct(s["accuracy"]) + f" ({s['n']})", _num(s["mcb_largest"]), _pct(s["mcr_largest"]),
                     _num(s["mcb_original"]), _pct(s["mcr_original"]), _num(one["mcb_largest"]),
                     _pct(one["mcr_largest"]), _pct(s.get("exact_mode_share")), timing]
        else:
            cells = ["not run"] + ["-"] * 8
        lines.append(f"| {meta['rho']} | {meta['step']} | {full} | " + " | ".join(cells) + " |")
    if args.title:
        print(f"**{args.title}**\n")
    print("\n".join(lines))
    if args.plot and curves:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        labels = [rho for rho, _ in curves]  # the run's name is added where two runs share a rho
        curves = {rho if labels.count(rho) == 1 else f"{rho} ({name})": c for (rho, name), c in curves.items()}
        metrics.plot_certified_accuracy(curves, args.plot, title=args.title)


if __name__ == "__main__":
    main()
