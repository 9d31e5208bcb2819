"""Training speed with and without length-grouped batches (``--group-by-length``), side by side.

Trains MiniLM-L6 for --steps steps on a dataset preset, once with a plain shuffle and once with batches grouped by
length, logging every step. Reports per configuration the median seconds per step (compilation excluded: each new
length bucket compiles once, a few outlier steps), the mean over all steps (compilation included), and the mean
padded length of a batch. The two runs alternate --reps times; medians over repetitions are reported.

    python benchmarks/train_grouping.py --dataset ag_news --rho 0.9 --max-len 128 --steps 40 --group 50
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
from _report import parser, report


def one_run(args, group: int, out: Path) -> dict:
    from ranmask_jax.config import TrainConfig
    from ranmask_jax.masking import bucket_length
    from ranmask_jax.train import Trainer, epoch_order

    cfg = TrainConfig(out_dir=str(out), dataset=args.dataset, data_dir=args.data_dir, rho=args.rho,
                      max_len=args.max_len, max_steps=args.steps, epochs=1, log_every=1, eval_n=0, dev_split="",
                      checkpoint_every=10**6, group_by_length=group)
    trainer = Trainer(cfg)
    trainer.run()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"elapsed_s"' in x]
    t = [r["elapsed_s"] for r in rows]
    per_step = np.diff(t)
    order = epoch_order(cfg.seed, 0, len(trainer.train), trainer.train.lengths, cfg.batch_size, group)
    bs = cfg.batch_size
    pads = [bucket_length(int(trainer.train.lengths[order[i * bs:(i + 1) * bs]].max()), cfg.max_len)
            for i in range(args.steps)]
    return {"median_s_per_step": float(np.median(per_step)), "mean_s_per_step": t[-1] / len(t),
            "mean_padded_len": float(np.mean(pads))}


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, reps=1)
    p.add_argument("--dataset", default="ag_news")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--rho", type=float, default=0.9)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--group", type=int, default=50)
    args = p.parse_args(argv)

    res: dict[int, list[dict]] = {0: [], args.group: []}
    with tempfile.TemporaryDirectory() as d:
        for rep in range(args.reps):
            for g in res:
                res[g].append(one_run(args, g, Path(d) / f"g{g}-r{rep}"))
    med = {g: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for g, rs in res.items()}
    plain, grouped = med[0], med[args.group]
    import jax

    out = {"dataset": args.dataset, "rho": args.rho, "max_len": args.max_len, "steps": args.steps,
           "group": args.group, "reps": args.reps, "plain": plain, "grouped": grouped,
           "speedup_median_step": plain["median_s_per_step"] / grouped["median_s_per_step"],
           "speedup_mean_step": plain["mean_s_per_step"] / grouped["mean_s_per_step"],
           "device": str(jax.devices()[0]), "cpus": os.cpu_count()}
    return report([
        f"plain shuffle : {plain['median_s_per_step']:.3f} s/step median, {plain['mean_s_per_step']:.3f} mean "
        f"(compilation included), padded length {plain['mean_padded_len']:.1f}",
        f"grouped ({args.group:3d}) : {grouped['median_s_per_step']:.3f} s/step median, "
        f"{grouped['mean_s_per_step']:.3f} mean, padded length {grouped['mean_padded_len']:.1f}",
        f"speed-up: {out['speedup_median_step']:.2f}x per step (median), {out['speedup_mean_step']:.2f}x overall",
    ], out, args.json)


if __name__ == "__main__":
    main()
