"""Tables and plots for docs/RESULTS.md from run directories made by experiments/paper_tables.sh.

    python experiments/summarize.py --title "SST-2" --plot docs/figures/sst2.png RUNS/sst2-rho0 RUNS/sst2-rho0.3 ...

Per run: rho, best dev step, accuracy of g on the full test split (accuracy-test/), and on the certified subset
(certify-test/) accuracy, then MCB / MCR and certified accuracy at d = 0, 1, 2, ... under the rigorous beta = 1
and under the paper's beta = p_c (both from the same votes; rows written before both radii were stored are
rescored from their counts), with the original code's +1 convention beside the paper's numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from ranmask_jax import metrics
from ranmask_jax.files import read_json, read_rows


def _read_rows(path: Path) -> list[dict]:
    """A certification's rows (a torn last row is left out; a damaged one names its file and line)."""
    return read_rows(path)


def _settings(run: Path) -> tuple | None:
    """(n0, n, alpha) of a run's certification, None when it has none."""
    cfg_path = run / "certify-test" / "certify_config.json"
    if not cfg_path.exists():
        return None
    cfg = read_json(cfg_path)
    return cfg.get("n0"), cfg.get("n"), cfg.get("alpha")


def _pct(x) -> str:
    return "N/A" if x is None else f"{100 * x:.1f}"


def _num(x) -> str:
    return "N/A" if x is None else str(x)


def by_beta(rows: list[dict]) -> dict[str, dict]:
    """Summaries under beta = 1 and beta = p_c: from the stored radius_one / radius_pc, or rescored from the
    counts for rows that predate them."""
    alpha = rows[0].get("alpha", 0.05)
    out = {}
    for beta in ("one", "pc"):
        if all(f"radius_{beta}" in r for r in rows):
            out[beta] = metrics.summarize(rows)["by_beta"][beta]
        else:
            out[beta] = metrics.summarize(metrics.rescore(rows, beta, alpha=alpha))
    return out


def curve(summary: dict) -> str:
    ca = summary["certified_accuracy"]
    return " / ".join(f"{100 * ca[d]:.1f}" for d in sorted(ca, key=int)[:6])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--title", default="")
    p.add_argument("--plot", help="PNG of certified accuracy against radius, one curve per run")
    p.add_argument("--allow-mixed", action="store_true", help="put runs certified with other n0, n or alpha in one "
                                                               "table (refused by default: their radii differ)")
    args = p.parse_args(argv)
    try:
        print_tables(args)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def print_tables(args) -> None:
    for run in map(Path, args.runs):
        if not (run / "ranmask_run.json").exists():
            raise FileNotFoundError(f"{run}: not a run directory (no ranmask_run.json)")
    mixed = {s for s in map(_settings, map(Path, args.runs)) if s is not None}
    if len(mixed) > 1 and not args.allow_mixed:
        raise ValueError(f"the runs were certified with different (n0, n, alpha): {sorted(mixed, key=str)}; their "
                         "radii are not comparable (--allow-mixed to tabulate them anyway)")
    lines = ["| rho | best dev step | accuracy of g, full test % (n) | certified subset: accuracy of g % (n) | "
             "beta = 1: MCB | MCR % | certified accuracy % at d = 0, 1, 2, ... | "
             "beta = p_c: MCB | MCR % | MCB (+1) | MCR % (+1) | certified accuracy % at d = 0, 1, 2, ... | "
             "exact-mode share % | certify s/text, median (total min) |",
             "|" + "---|" * 14]
    curves = {}
    for run in map(Path, args.runs):
        meta = read_json(run / "ranmask_run.json")
        acc = read_json(run / "accuracy-test" / "summary.json") \
            if (run / "accuracy-test" / "summary.json").exists() else None
        rows = _read_rows(run / "certify-test" / "certify.jsonl")
        full = f"{_pct(acc['accuracy'])} ({acc['n']})" if acc else "not run"
        if rows:
            by = by_beta(rows)
            one, pc = by["one"], by["pc"]
            curves[(f"rho = {meta['rho']}, beta = 1", run.name)] = dict(one, n=len(rows))
            curves[(f"rho = {meta['rho']}, beta = p_c", run.name)] = dict(pc, n=len(rows))
            secs = [r["seconds"] for r in rows]
            timing = f"{statistics.median(secs):.2f} ({sum(secs) / 60:.1f})"
            s = metrics.summarize(rows)
            cells = [_pct(s["accuracy"]) + f" ({s['n']})", _num(one["mcb_largest"]), _pct(one["mcr_largest"]),
                     curve(one), _num(pc["mcb_largest"]), _pct(pc["mcr_largest"]), _num(pc["mcb_original"]),
                     _pct(pc["mcr_original"]), curve(pc), _pct(s.get("exact_mode_share")), timing]
        else:
            cells = ["not run"] + ["-"] * 10
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
