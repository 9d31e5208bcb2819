"""What JAX's persistent compilation cache saves a short command-line run: ``certify.py`` on a few texts, end to
end as a user runs it (a new process: imports, loading the run, compiling, certifying), with an empty cache
directory against one a previous run filled. Cold and warm runs alternate; medians of the wall times.

    python benchmarks/compile_cache.py --run-dir runs/quickstart --texts 5 --reps 3 \\
        --json docs/runs/quickstart/bench-compile-cache.jsonl

The data default to the SST-2 split that ships with the package (no --data-dir needed).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _report

ROOT = Path(__file__).resolve().parents[1]


def certify(run_dir: str, texts: int, cache: str, out: str, extra: list[str]) -> float:
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    argv = [sys.executable, str(ROOT / "certify.py"), "--run-dir", run_dir, "--split", "test",
            "--num-examples", str(texts), "--seed", "0", "--out", out, *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"certify.py failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    p = _report.parser(__doc__, reps=3)
    p.add_argument("--run-dir", required=True, help="a trained run directory")
    p.add_argument("--texts", type=int, default=5)
    p.add_argument("--certify-args", default="", help="extra certify.py flags, e.g. '--data-dir D --dataset ag_news'")
    args = p.parse_args(argv)

    extra = args.certify_args.split()
    cold, warm = [], []
    with tempfile.TemporaryDirectory() as tmp:
        filled = str(Path(tmp) / "filled")
        certify(args.run_dir, args.texts, filled, str(Path(tmp) / "fill-out"), extra)  # fills the warm cache
        for rep in range(args.reps):
            for kind in (("cold", "warm") if rep % 2 == 0 else ("warm", "cold")):
                if kind == "cold":
                    empty = str(Path(tmp) / f"empty-{rep}")
                    cold.append(certify(args.run_dir, args.texts, empty, str(Path(tmp) / f"out-c{rep}"), extra))
                else:
                    warm.append(certify(args.run_dir, args.texts, filled, str(Path(tmp) / f"out-w{rep}"), extra))
    c, w = statistics.median(cold), statistics.median(warm)
    result = {"benchmark": "compile_cache", "run_dir": args.run_dir, "texts": args.texts, "certify_args": extra,
              "cold_s": [round(x, 2) for x in cold], "warm_s": [round(x, 2) for x in warm],
              "cold_median_s": round(c, 2), "warm_median_s": round(w, 2), "ratio": round(c / w, 2)}
    lines = [f"certify.py, {args.texts} texts, new process each run: empty cache {c:.1f} s, filled cache {w:.1f} s "
             f"(medians of {args.reps}; {c / w:.2f}x)"]
    return _report.report(lines, result, args.json)


if __name__ == "__main__":
    main()
