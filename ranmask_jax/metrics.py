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

BETAS = ("one", "pc", "mc")  # rows carry radius_one, radius_pc (always) and radius_mc (with --beta mc)


def robustness(row: Mapping, convention: str = "largest", key: str = "radius") -> float:
    """Certified robustness of one row (``correct`` and the radius under ``key``): -inf when misclassified."""
    if not row["correct"]:
        return -math.inf
    if convention == "largest":
        return float(row[key])
    if convention == "original":
        return float(row[key] + 1)
    raise ValueError(f"convention must be 'largest' or 'original', got {convention!r}")


def median_certified(values: Iterable[float]) -> float:
    """The largest v such that at least half of ``values`` are >= v (values may be -inf)."""
    v = sorted(values, reverse=True)
    if not v:
        return math.nan
    return v[math.ceil(len(v) / 2) - 1]


def _radius_summary(rows: list[Mapping], key: str) -> dict:
    correct = np.array([bool(r["correct"]) for r in rows])
    radius = np.array([int(r[key]) if r["correct"] else -1 for r in rows])
    max_r = int(radius[correct].max()) if correct.any() else -1
    out: dict = {"certified_accuracy": {d: float((correct & (radius >= d)).mean())
                                        for d in range(0, max(max_r, 0) + 1)}}
    for conv in ("largest", "original"):
        rob = [robustness(r, conv, key) for r in rows]
        rate = [x / r["h"] if x > -math.inf else -math.inf for x, r in zip(rob, rows, strict=True)]
        mcb, mcr = median_certified(rob), median_certified(rate)
        out[f"mcb_{conv}"] = None if mcb == -math.inf else int(mcb)
        out[f"mcr_{conv}"] = None if mcr == -math.inf else mcr
    return out


def summarize(rows: list[Mapping]) -> dict:
    """Summary of certification rows (each with ``correct``, ``radius``, ``h``, and ``radius_one`` /
    ``radius_pc`` / ``radius_mc`` where present).

    Returns accuracy, certified accuracy per d (largest-certified convention) and MCB / MCR under both conventions
    for the row's ``radius`` (the ``--beta`` of the run), and the same under each beta in ``by_beta``; a median of
    -inf (most texts misclassified) is reported as None ("N/A").
    """
    if not rows:
        raise ValueError("no rows to summarize")
    out: dict = {"n": len(rows), "accuracy": float(np.mean([bool(r["correct"]) for r in rows])),
                 "mean_h": float(np.mean([r["h"] for r in rows])), **_radius_summary(rows, "radius")}
    out["by_beta"] = {b: _radius_summary(rows, f"radius_{b}") for b in BETAS
                      if all(r.get(f"radius_{b}") is not None or not r["correct"] for r in rows)
                      and any(f"radius_{b}" in r for r in rows)}
    if "mode" in rows[0]:
        out["exact_mode_share"] = float(np.mean([r["mode"] == "exact" for r in rows]))
    return out


def _fmt(x, pct: bool = False) -> str:
    if x is None:
        return "N/A"
    return f"{100 * x:.2f}" if pct else (f"{x:g}" if isinstance(x, float) else str(x))


BETA_NAMES = {"one": "beta = 1 (rigorous)", "pc": "beta = p_c (paper, estimate)", "mc": "beta Monte Carlo (estimate)"}


def markdown_table(summary: dict, title: str = "") -> str:
    """A Markdown table of one summary: accuracy, MCB / MCR (both conventions) and certified accuracy per d, one
    line per beta (rigorous first)."""
    by_beta = summary.get("by_beta") or {"": summary}
    lines = [f"**{title}**", ""] if title else []
    lines += [f"{summary['n']} texts, accuracy of g {100 * summary['accuracy']:.1f}%", "",
              "| certificate | MCB | MCR % | MCB (original +1) | MCR % (original +1) |", "|---|---|---|---|---|"]
    for b, s in by_beta.items():
        lines.append(f"| {BETA_NAMES.get(b, 'radius')} | {_fmt(s['mcb_largest'])} | {_fmt(s['mcr_largest'], True)} | "
                     f"{_fmt(s['mcb_original'])} | {_fmt(s['mcr_original'], True)} |")
    ds = sorted({int(d) for s in by_beta.values() for d in s["certified_accuracy"]})
    if ds:
        lines += ["", "| certified accuracy % at d | " + " | ".join(str(d) for d in ds) + " |",
                  "|---|" + "---|" * len(ds)]
        for b, s in by_beta.items():
            ca = {int(d): v for d, v in s["certified_accuracy"].items()}
            lines.append(f"| {BETA_NAMES.get(b, 'radius')} | " + " | ".join(f"{100 * ca.get(d, 0.0):.1f}" for d in ds)
                         + " |")
    return "\n".join(lines) + "\n"


def certified_accuracy_band(ca: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval for a certified accuracy measured on ``n`` texts."""
    from scipy import stats

    k, a = round(ca * n), (1 - level) / 2
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def plot_certified_accuracy(curves: dict[str, dict], path, title: str = "", n: int | None = None) -> list[str]:
    """Certified accuracy against the radius d, one step curve per labelled summary, with a 95% Clopper-Pearson
    band over the texts; written as ``path`` + ``.png`` (200 dpi) and ``.pdf``. ``n`` (texts) is read from each
    summary or given. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    max_d = 0
    for label, summary in curves.items():
        ca = {int(k): v for k, v in summary["certified_accuracy"].items()}
        ds = sorted(ca)
        if not ds:
            continue
        count = summary.get("n", n)
        xs = ds + [ds[-1] + 1]
        ys = [ca[d] for d in ds] + [0.0]
        line = ax.step(xs, ys, where="post", label=f"{label}, n = {count}" if count else label)[0]
        if count:
            lo, hi = zip(*(certified_accuracy_band(y, count) for y in ys), strict=True)
            ax.fill_between(xs, lo, hi, step="post", color=line.get_color(), alpha=0.15, linewidth=0)
        max_d = max(max_d, xs[-1])
    ax.set_xticks(range(0, max_d + 1, max(1, math.ceil((max_d + 1) / 12))))  # integers over the whole range
    ax.set_xlim(-0.2, max_d + 0.2)
    ax.set_xlabel("radius d (words changed)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, title="shaded: 95% interval over texts", title_fontsize=7)
    fig.tight_layout()
    stem = str(path)[:-4] if str(path).endswith((".png", ".pdf")) else str(path)
    written = [f"{stem}.png", f"{stem}.pdf"]
    from ranmask_jax.files import replacing

    try:
        for name, dpi in zip(written, (200, None), strict=True):
            with replacing(name) as tmp:  # whole or not at all: a full disk leaves no empty figure
                fig.savefig(tmp, dpi=dpi, format=name[-3:])
    finally:
        plt.close(fig)
    return written


def rescore(rows: list[Mapping], beta: str = "one", alpha: float = 0.05) -> list[dict]:
    """The same certification rows with the radius recomputed under another beta ("one" or "pc") from their stored
    counts: no model run needed, and the votes are exactly the same. Exact-mode rows use the exact p_c."""
    from ranmask_jax.certificate import certified_radius, radius_from_bound

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
