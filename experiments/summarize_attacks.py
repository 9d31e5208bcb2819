"""The attack tables of docs/RESULTS.md (the paper's Tables 4-5 shape) from attack output directories.

    python experiments/summarize_attacks.py --title "AG News" --plot docs/figures/agnews-attacks.png \
        docs/runs/agnews-rho0/attack-deepwordbug-none docs/runs/agnews-rho0.9/attack-deepwordbug-vote ...

One line per (defense, recipe): examples, Cln / Boa / Boa by a fresh recheck / Succ, average queries, perturbed-word
fraction of the successful attacks, seconds per attacked example, and the wall time of the cell; recomputed from the
rows (``attack.jsonl``), so a cell still running shows what it has; ``--common`` adds the same table on the texts
that every cell attacked; ``--paired`` compares every pair of cells of one recipe on the texts both have (robust =
the attack failed on a text the defense got right): the two Boa, their difference with a 95% paired bootstrap
interval, the discordant texts and the exact McNemar p-value; ``--pair I:J`` (repeatable) compares only the cells at
positions I and J of the list. The plot: accuracy under attack per recipe
(groups) and defense (bars), with 95% Clopper-Pearson intervals over the examples.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attacks.run import summarize
from ranmask_jax.files import read_json, read_rows


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def load(cell: Path) -> dict:
    """An attack cell's rows and config; a directory that is not one, a damaged row (named by file and line) or a
    repeated example index is an error."""
    if not (cell / "attack_config.json").exists() or not (cell / "attack.jsonl").exists():
        raise FileNotFoundError(f"{cell}: not an attack output directory (no attack_config.json / attack.jsonl)")
    rows = read_rows(cell / "attack.jsonl")  # refuses a repeated index, names a damaged row's line
    cfg = read_json(cell / "attack_config.json")
    meta = read_json(cell / "summary.json") if (cell / "summary.json").exists() else {}
    s = summarize(rows)
    ens = cfg["ensemble"]
    defense = meta.get("defense") or ("plain model" if ens == "none" else f"{cell.parent.name} {ens}")
    return {**s, "recipe": cfg["recipe"], "defense": defense, "cell": str(cell),
            "wanted": cfg.get("limit") or cfg.get("num_examples"), "rows": rows}


def restrict(cell: dict, keep: set[int]) -> dict:
    """The cell's figures recomputed on the examples in ``keep``."""
    rows = [r for r in cell["rows"] if r["index"] in keep]
    return {**cell, **summarize(rows), "rows": rows, "wanted": None}


def paired(a: dict, b: dict, resamples: int = 10000, seed: int = 0) -> dict:
    """Boa of cells ``a`` and ``b`` on the texts both have, paired per text: the difference a - b with a 95%
    percentile bootstrap interval over texts (``resamples`` draws, seeded), the discordant counts and the exact
    McNemar test (two-sided binomial test of the discordant texts)."""
    import numpy as np
    from scipy.stats import binomtest

    ra, rb = ({r["index"]: r["status"] == "failed" for r in c["rows"]} for c in (a, b))
    both = sorted(set(ra) & set(rb))
    x = np.array([ra[i] for i in both], float)
    y = np.array([rb[i] for i in both], float)
    only_a, only_b = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    if not both:
        return {"texts": 0}
    draws = np.random.default_rng(seed).integers(0, len(both), size=(resamples, len(both)))
    diffs = (x[draws] - y[draws]).mean(axis=1)
    return {"texts": len(both), "boa_a": float(x.mean()), "boa_b": float(y.mean()), "diff": float((x - y).mean()),
            "ci95": (float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))), "only_a": only_a,
            "only_b": only_b, "p": binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0}


def paired_table(cells: list[dict], pairs: list[tuple[int, int]] | None = None) -> str:
    """Paired comparisons: of the cells at ``pairs`` (indices into ``cells``), or of every two cells of a recipe."""
    lines = ["| attack | defense A | defense B | texts | Boa A % | Boa B % | A - B (95% CI) | robust only A / only B "
             "| McNemar p |", "|---|---|---|---|---|---|---|---|---|"]
    if pairs is None:
        pairs = [(i, j) for i, a in enumerate(cells) for j, b in enumerate(cells)
                 if i < j and a["recipe"] == b["recipe"]]
        pairs.sort(key=lambda ij: cells[ij[0]]["recipe"])
    for i, j in pairs:
        a, b = cells[i], cells[j]
        t = paired(a, b)
        if not t["texts"]:
            continue
        lo, hi = t["ci95"]
        recipe = a["recipe"] if a["recipe"] == b["recipe"] else f"{a['recipe']} / {b['recipe']}"
        lines.append(f"| {recipe} | {a['defense']} | {b['defense']} | {t['texts']} | {_pct(t['boa_a'])} | "
                     f"{_pct(t['boa_b'])} | {100 * t['diff']:+.1f} ({100 * lo:+.1f}, {100 * hi:+.1f}) | "
                     f"{t['only_a']} / {t['only_b']} | {t['p']:.3g} |")
    return "\n".join(lines) + "\n"


def table(cells: list[dict]) -> str:
    lines = ["| defense | attack | examples | Cln % | Boa % | Boa % (recheck) | Succ % | queries | perturbed % | "
             "s / attacked example | wall |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (c["recipe"], c["defense"] != "plain model", c["defense"])):
        done = f"{c['n']}" + (f" of {c['wanted']}" if c["wanted"] and c["n"] < c["wanted"] else "")
        q = "-" if c["avg_queries"] is None else f"{c['avg_queries']:.0f}"
        sec = "-" if c["seconds_per_attacked_example"] is None else f"{c['seconds_per_attacked_example']:.1f}"
        lines.append(f"| {c['defense']} | {c['recipe']} | {done} | {_pct(c['clean_accuracy'])} | "
                     f"{_pct(c['robust_accuracy'])} | {_pct(c['robust_accuracy_recheck'])} | {_pct(c['success_rate'])} "
                     f"| {q} | {_pct(c['avg_perturbed_fraction'])} | {sec} | {c['seconds_total'] / 60:.0f} min |")
    return "\n".join(lines) + "\n"


def plot(cells: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from scipy.stats import beta

    recipes = sorted({c["recipe"] for c in cells})
    defenses = sorted({c["defense"] for c in cells}, key=lambda d: (d != "plain model", d))
    width = 0.8 / len(defenses)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    labelled: set[str] = set()
    for j, d in enumerate(defenses):
        for i, r in enumerate(recipes):
            got = [c for c in cells if c["recipe"] == r and c["defense"] == d]
            if not got:
                continue
            c = got[0]
            k, n = c["failed"], c["n"]
            lo = beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
            hi = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
            x = i + (j - (len(defenses) - 1) / 2) * width
            ax.bar(x, 100 * k / n, width, color=f"C{j}", label=None if d in labelled else d)
            labelled.add(d)
            ax.errorbar(x, 100 * k / n, yerr=[[100 * (k / n - lo)], [100 * (hi - k / n)]], color="black",
                        capsize=2, lw=0.8)
    ax.set_xticks(np.arange(len(recipes)), recipes)
    ax.set_ylabel("accuracy under attack (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)  # beside the bars, never over them
    fig.tight_layout()
    for ext in (".png", ".pdf"):  # PATH.png (or PATH) -> PATH.png and PATH.pdf
        fig.savefig(path.with_suffix(ext) if path.suffix in (".png", ".pdf") else str(path) + ext, dpi=200)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cells", nargs="+", type=Path)
    p.add_argument("--title", default="")
    p.add_argument("--plot", type=Path)
    p.add_argument("--paired", action="store_true",
                   help="also compare every two cells of a recipe on their common texts (McNemar, 95%% interval)")
    p.add_argument("--pair", action="append", metavar="I:J",
                   help="compare only these cells (1-based positions in the list; repeatable), paired as --paired")
    p.add_argument("--common", action="store_true",
                   help="also print the table recomputed on the texts that every cell has attacked (cells of "
                        "different sizes, e.g. --limit 50 beside 100-text cells)")
    args = p.parse_args()
    try:
        cells = [load(c) for c in args.cells]
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(table(cells))
    if args.common:
        keep = set.intersection(*({r["index"] for r in c["rows"]} for c in cells))
        print(f"On the {len(keep)} texts every cell attacked:\n")
        print(table([restrict(c, keep) for c in cells]))
    pairs = None
    if args.pair:
        try:
            pairs = [tuple(int(x) - 1 for x in spec.split(":")) for spec in args.pair]
            if any(len(ij) != 2 or min(ij) < 0 or max(ij) >= len(cells) for ij in pairs):
                raise ValueError
        except ValueError:
            p.error(f"--pair takes I:J, two positions from 1 to {len(cells)} in the list of cells")
    if args.paired or pairs:
        print("Paired, on the texts both cells attacked (robust: the attack failed):\n")
        print(paired_table(cells, pairs))
    if args.plot:
        plot(cells, args.plot, args.title)


if __name__ == "__main__":
    main()
