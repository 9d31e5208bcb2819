"""Peak memory of certification against n: the estimation copies are streamed (docs/BENCHMARKS.md).

Each n runs ``certify.py`` in a fresh process on the same texts (sampled mode forced with ``--exact-threshold 0``)
and the child's peak resident set size is read from ``os.wait4``; the ratio of the largest n to the smallest is
reported.

    python benchmarks/certify_memory.py --run-dir runs/sst2-rho0.3 --dataset sst2 --texts 2 --n 1000 100000
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from _report import add_run_flags, parser, peak_rss_mib, report

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, reps=1)
    add_run_flags(p, texts=2)
    p.add_argument("--n", type=int, nargs="+", default=[1000, 100000], help="estimation copies per text")
    p.add_argument("--batch-size", type=int, help="copies per device step (certify.py's default if unset)")
    args = p.parse_args(argv)

    rows = []
    for n in args.n:
        for rep in range(args.reps):
            with tempfile.TemporaryDirectory() as out:
                flags = ["--run-dir", args.run_dir, "--data-dir", args.data_dir, "--dataset", args.dataset,
                         "--num-examples", str(args.texts), "--n0", "100", "--n", str(n), "--exact-threshold", "0",
                         "--out", out] + (["--batch-size", str(args.batch_size)] if args.batch_size else [])
                rss, wall = peak_rss_mib([sys.executable, str(ROOT / "certify.py"), *flags])
            rows.append({"n": n, "rep": rep, "peak_rss_mib": round(rss, 1), "wall_s": round(wall, 1)})
            print(f"n = {n:>7}: peak RSS {rss:8.1f} MiB  ({wall:.0f} s)", flush=True)
    peak = {n: min(r["peak_rss_mib"] for r in rows if r["n"] == n) for n in args.n}
    ratio = peak[max(args.n)] / peak[min(args.n)]
    lines = [f"peak RSS, n = {max(args.n)} vs n = {min(args.n)}: {ratio:.3f}x"]
    result = {"benchmark": "certify_memory", "run_dir": args.run_dir, "dataset": args.dataset, "texts": args.texts,
              "rows": rows, "ratio": round(ratio, 4), "cpus": os.cpu_count()}
    return report(lines, result, args.json)


if __name__ == "__main__":
    main()
