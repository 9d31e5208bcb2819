"""The sequential plan against the fixed one: the same texts, seed and keys (those of ``certify.py``), certified under
both plans in one process, group by group, the plan that goes first alternating from group to group, so the wall
times compare like for like (compilation included: whichever plan meets a new shape first pays for it).

One flushed row per (text, plan) in OUT/rows.jsonl (resumable); OUT/summary.json has per plan the copies per text,
the seconds, and certified accuracy at every d under beta = 1 and beta = p_c, with the ratios fixed / sequential and
the largest drop in certified accuracy.

    python benchmarks/certify_sequential.py --run-dir runs/sst2-rho0.3 --dataset sst2 --texts 200 \\
        --n0 100 --n 1000 --n-max 1600 --out docs/runs/sst2-rho0.3/bench-sequential
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import _report


def main() -> None:
    p = _report.parser(__doc__, reps=1)
    _report.add_run_flags(p, texts=200)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=1000, help="the fixed plan's estimation copies")
    p.add_argument("--n-max", type=int, default=1600, help="the sequential plan's budget of estimation copies")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--texts-per-call", type=int, default=16)
    p.add_argument("--plans", default="fixed,sequential")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import jax

    from ranmask_jax.config import CertifyConfig
    from ranmask_jax.distributed import machine
    from ranmask_jax.files import RowFile, write_text
    from ranmask_jax.runs import load_for_run, select_indices, smoothed_from_run

    cfg = CertifyConfig(run_dir=args.run_dir, dataset=args.dataset, data_dir=args.data_dir, split="test",
                        num_examples=args.texts, seed=args.seed, n0=args.n0, n=args.n, alpha=args.alpha, out=args.out,
                        batch_size=64)
    sc, settings = smoothed_from_run(cfg)
    ds = load_for_run(cfg, settings, sc.num_labels)
    indices = [int(i) for i in select_indices(len(ds), args.texts, args.seed)]
    root = jax.random.key(args.seed)
    plans = args.plans.split(",")

    def run(plan: str, group: list[int]) -> list:
        exs = [ds.examples[i] for i in group]
        keys = [jax.random.fold_in(root, i) for i in group]
        texts, labels, pairs = [e.text for e in exs], [e.label for e in exs], [e.text_pair for e in exs]
        if plan == "sequential":
            return sc.certify_sequential_many(keys, texts, labels, pairs, n0=args.n0, n_max=args.n_max,
                                              alpha=args.alpha, beta="pc")
        return sc.certify_many(keys, texts, labels, pairs, n0=args.n0, n=args.n, alpha=args.alpha, beta="pc")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    where = machine()
    step = args.texts_per_call
    with RowFile(out / "rows.jsonl", key="cell") as rows:
        done = {r["cell"] for r in rows.rows}
        for g, j in enumerate(range(0, len(indices), step)):
            group = indices[j:j + step]
            for plan in (plans if g % 2 == 0 else plans[::-1]):
                if all(f"{i}:{plan}" in done for i in group):
                    continue
                t0 = time.perf_counter()
                certs = run(plan, group)
                seconds = time.perf_counter() - t0
                for i, c in zip(group, certs, strict=True):
                    rows.append({"cell": f"{i}:{plan}", "plan": plan, "index": i, **dataclasses.asdict(c),
                                 "seconds": round(seconds / len(group), 4), "group_seconds": round(seconds, 3),
                                 "machine": where, "date": time.strftime("%Y-%m-%d")})
                print(f"group {g + 1}/{-(-len(indices) // step)} {plan}: {seconds:.1f} s, "
                      f"{sum(c.copies for c in certs) / len(certs):.0f} copies a text", flush=True)
        table = [r for r in rows.rows if r["index"] in set(indices)]
    summary = summarize(table, plans)
    summary.update(run_dir=args.run_dir, dataset=args.dataset, texts=len(indices), n0=args.n0, n=args.n,
                   n_max=args.n_max, alpha=args.alpha, texts_per_call=step, rho=settings["rho"],
                   jax=jax.__version__)
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "plans"}, indent=2))
    for plan, s in summary["plans"].items():
        print(plan, {k: v for k, v in s.items() if k != "certified"})


def summarize(rows: list[dict], plans: list[str]) -> dict:
    """Per plan, on the texts every plan has a row for: copies and seconds per text, accuracy of g, certified
    accuracy at every d under both betas; against the first plan, the ratios and the largest drop."""
    import numpy as np

    by = {p: {r["index"]: r for r in rows if r["plan"] == p} for p in plans}
    common = sorted(set.intersection(*(set(b) for b in by.values())))
    out = {}
    top = max((max(r["radius_one"], r["radius_pc"]) for b in by.values() for r in b.values()), default=0)
    for p in plans:
        rs = [by[p][i] for i in common]
        cert = {b: [float(np.mean([r[f"radius_{b}"] >= d for r in rs])) for d in range(top + 1)]
                for b in ("one", "pc")}
        out[p] = {"texts": len(rs), "copies_per_text": float(np.mean([r["copies"] for r in rs])),
                  "seconds_total": float(sum(r["seconds"] for r in rs)),
                  "accuracy": float(np.mean([r["correct"] for r in rs])), "certified": cert}
    first = plans[0]
    for p in plans[1:]:
        a, b = out[first], out[p]
        drop = max(a["certified"][beta][d] - b["certified"][beta][d] for beta in ("one", "pc")
                   for d in range(top + 1))
        b.update(copy_ratio=a["copies_per_text"] / b["copies_per_text"],
                 time_ratio=a["seconds_total"] / b["seconds_total"], largest_certified_drop=drop,
                 radius_differs=sum(by[first][i]["radius_one"] != by[p][i]["radius_one"] for i in common))
    return {"texts_compared": len(common), "plans": out}


if __name__ == "__main__":
    main()
