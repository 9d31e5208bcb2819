"""Dataset-level certified metrics, as the RanMASK paper defines them (after Levine & Feizi).

Per text: the certified robustness (radius; misclassified texts count as minus infinity) and the certified rate
radius / h_x. Over a dataset: accuracy of g, certified accuracy at each d (the share of texts classified correctly
AND certified at radius >= d), the median certified robustness MCB and the median certified rate MCR.

The median follows the paper's wording: MCB is the largest d such that at least half of the texts are certified to
d ({N/A, N/A, 1, 2, 3} -> 1). It is reported under both radius conventions: ``largest`` (this project: the largest
certified d) and ``original`` (the original code's: the first d not certified, i.e. largest + 1 for correctly
classified texts).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np


def robustness(row: Mapping, convention: str = "largest") -> float:
    """Certified robustness of one row (``radius``, ``correct``): -inf when misclassified."""
    if not row["correct"]:
        return -math.inf
    if convention == "largest":
        return float(row["radius"])
    if convention == "original":
        return float(row["radius"] + 1)
    raise ValueError(f"convention must be 'largest' or 'original', got {convention!r}")


def median_certified(values: Iterable[float]) -> float:
    """The largest v such that at least half of ``values`` are >= v (values may be -inf)."""
    v = sorted(values, reverse=True)
    if not v:
        return math.nan
    return v[math.ceil(len(v) / 2) - 1]


def summarize(rows: list[Mapping]) -> dict:
    """Summary of certification rows (each with ``correct``, ``radius``, ``h``).

    Returns accuracy, certified accuracy per d (largest-certified convention), and MCB / MCR under both
    conventions; a median of -inf (most texts misclassified) is reported as None ("N/A").
    """
    if not rows:
        raise ValueError("no rows to summarize")
    n = len(rows)
    correct = np.array([bool(r["correct"]) for r in rows])
    radius = np.array([int(r["radius"]) for r in rows])
    max_r = int(radius[correct].max()) if correct.any() else -1
    cert_acc = {d: float((correct & (radius >= d)).mean()) for d in range(0, max(max_r, 0) + 1)}
    out: dict = {"n": n, "accuracy": float(correct.mean()), "certified_accuracy": cert_acc,
                 "mean_h": float(np.mean([r["h"] for r in rows]))}
    for conv in ("largest", "original"):
        rob = [robustness(r, conv) for r in rows]
        rate = [x / r["h"] if x > -math.inf else -math.inf for x, r in zip(rob, rows, strict=True)]
        mcb, mcr = median_certified(rob), median_certified(rate)
        out[f"mcb_{conv}"] = None if mcb == -math.inf else int(mcb)
        out[f"mcr_{conv}"] = None if mcr == -math.inf else mcr
    if "mode" in rows[0]:
        out["exact_mode_share"] = float(np.mean([r["mode"] == "exact" for r in rows]))
    return out


def _fmt(x, pct: bool = False) -> str:
    if x is None:
        return "N/A"
    return f"{100 * x:.2f}" if pct else (f"{x:g}" if isinstance(x, float) else str(x))


def markdown_table(summary: dict, title: str = "") -> str:
    """A Markdown table of one summary: accuracy, MCB / MCR (both conventions), certified accuracy per d."""
    lines = [f"**{title}**", ""] if title else []
    lines += ["| n | accuracy of g % | MCB | MCR % | MCB (original +1) | MCR % (original +1) |",
              "|---|---|---|---|---|---|",
              f"| {summary['n']} | {100 * summary['accuracy']:.1f} | {_fmt(summary['mcb_largest'])} | "
              f"{_fmt(summary['mcr_largest'], True)} | {_fmt(summary['mcb_original'])} | "
              f"{_fmt(summary['mcr_original'], True)} |", ""]
    ds = sorted(summary["certified_accuracy"], key=int)
    if ds:
        lines += ["| d | " + " | ".join(str(d) for d in ds) + " |",
                  "|---|" + "---|" * len(ds),
                  "| certified accuracy % | " + " | ".join(f"{100 * summary['certified_accuracy'][d]:.1f}"
                                                         for d in ds) + " |"]
    return "\n".join(lines) + "\n"


def plot_certified_accuracy(curves: dict[str, dict], path: str, title: str = "") -> None:
    """PNG plot of certified accuracy against radius d, one step curve per labelled summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for label, summary in curves.items():
        ca = {int(k): v for k, v in summary["certified_accuracy"].items()}
        ds = sorted(ca)
        if not ds:
            continue
        xs = ds + [ds[-1] + 1]
        ys = [ca[d] for d in ds] + [0.0]
        ax.step(xs, ys, where="post", label=label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("radius d (words changed)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def rescore(rows: list[Mapping], beta: str = "one", alpha: float = 0.05) -> list[dict]:
    """The same certification rows with the radius recomputed under another beta ("one" or "pc") from their stored
    counts: no model run needed, and the votes are exactly the same. Exact-mode rows use the exact p_c."""
    from ranmask_jax.smoothing import certified_radius, radius_from_bound

    out = []
    for r in rows:
        r2 = dict(r)
        if r["correct"]:
            n_c = r["counts"][r["prediction"]]
            if r["mode"] == "exact":
                b = 1.0 if beta == "one" else n_c / r["n"]
                r2["radius"] = radius_from_bound(n_c / r["n"], b, r["h"], r["k"]) if n_c / r["n"] > 0.5 else -1
            else:
                r2["radius"] = certified_radius(n_c, r["n"], r["h"], r["k"], alpha=alpha, beta=beta)
        r2["beta_mode"] = beta
        out.append(r2)
    return out
