"""The cost of a training step under each adversarial-training defense, side by side with plain training.

Builds one trainer per defense (same data, model, batch and seed), runs each once over the first --steps batches
(compiling their length buckets), then times those same batches for each defense in turn, alternating within every
repetition; reports the median seconds per
step and the ratio to plain training. The step count of the defense (passes through the model) is what one would
expect to set the ratio: PGD-K runs K gradient passes for its perturbation (gradients for the perturbation only)
and one for the parameters; FreeLB-K runs K full passes; Adv-HotFlip-K runs K perturbation passes, a scoring of
every position against the vocabulary each round, and one pass over the clean and the swapped batch (2B rows).

    python benchmarks/train_defenses.py --data-dir ../shared/data --dataset sst2 --rho 0 --max-len 64 \\
        --defenses none,pgd:10,pgd:3,freelb:5,hotflip:3 --steps 5 --reps 3
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from _report import parser, report


def build(args, spec: str, out: Path):
    from ranmask_jax.config import TrainConfig
    from ranmask_jax.train import Trainer, epoch_order

    name, _, steps = spec.partition(":")
    extra = {"defense": name} if name != "none" else {}
    if steps:
        extra["adv_steps"] = int(steps)
    cfg = TrainConfig(out_dir=str(out), dataset=args.dataset, data_dir=args.data_dir, rho=args.rho,
                      max_len=args.max_len, epochs=1, eval_n=0, dev_split="", batch_size=args.batch_size, **extra)
    tr = Trainer(cfg)
    order = epoch_order(cfg.seed, 0, len(tr.train))
    return tr, order


def time_steps(tr, order, first: int, steps: int) -> float:
    """Seconds per step over ``steps`` steps starting at batch ``first`` (results waited for)."""
    import jax

    bs = tr.cfg.batch_size
    t0 = time.perf_counter()
    for s in range(first, first + steps):
        batch = tr.device_batch(tr.train, order[s * bs:(s + 1) * bs])
        tr.params, tr.opt_state, m = tr._train_step(tr.params, tr.opt_state, tr.rest, batch,
                                                    jax.random.fold_in(tr.root, s))
    jax.block_until_ready((tr.params, m))
    return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, reps=3)
    p.add_argument("--dataset", default="sst2")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--rho", type=float, default=0.0)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--defenses", default="none,pgd:10,pgd:3,freelb:5,hotflip:3",
                   help="comma-separated NAME[:STEPS] (none: plain training)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per defense per repetition")
    args = p.parse_args(argv)

    specs = args.defenses.split(",")
    times: dict[str, list[float]] = {s: [] for s in specs}
    with tempfile.TemporaryDirectory() as d:
        runs = {s: build(args, s, Path(d) / s.replace(":", "-")) for s in specs}
        # the same --steps batches in every repetition and for every defense; a first pass compiles their buckets
        for tr, order in runs.values():
            time_steps(tr, order, 0, args.steps)
        for _ in range(args.reps):
            for s in specs:
                times[s].append(time_steps(*runs[s], 0, args.steps))
    med = {s: statistics.median(v) for s, v in times.items()}
    base = med.get("none")
    lines = [f"{args.dataset} rho={args.rho} max_len={args.max_len} batch={args.batch_size}, median of {args.reps} "
             f"x {args.steps} steps"]
    for s in specs:
        ratio = f"  {med[s] / base:5.2f}x plain" if base else ""
        lines.append(f"  {s:12s} {med[s]:7.3f} s/step{ratio}")
    result = {"benchmark": "train_defenses", "dataset": args.dataset, "rho": args.rho, "max_len": args.max_len,
              "batch_size": args.batch_size, "steps": args.steps, "reps": args.reps,
              "s_per_step": med, "s_per_step_all": times,
              "ratio_to_plain": {s: med[s] / base for s in specs} if base else None}
    return report(lines, result, args.json)


if __name__ == "__main__":
    main()
