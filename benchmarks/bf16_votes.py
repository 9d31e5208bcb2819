"""How often bfloat16 inference votes as float32 does: the same masked copies of the same texts (keys as
``certify.py``'s), classified by the run's model at both dtypes in one process; reports the share of copies whose
class is the same, the share of texts whose smoothed prediction (vote over the copies) is the same, the largest
change of a text's vote share, and the seconds per copy of each dtype (alternating text groups, the first dtype of
each group alternating). A certificate computed at bfloat16 is a certificate of the bfloat16 classifier.

    python benchmarks/bf16_votes.py --run-dir runs/agnews-rho0.9 --dataset ag_news --texts 100 --n 200 \\
        --json docs/runs/agnews-rho0.9/bench-bf16.jsonl
"""

from __future__ import annotations

import time

import _report
import numpy as np


def main(argv: list[str] | None = None) -> dict:
    p = _report.parser(__doc__, reps=1)
    _report.add_run_flags(p, texts=100)
    p.add_argument("--n", type=int, default=200, help="masked copies per text")
    p.add_argument("--group", type=int, default=8, help="texts per engine call")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import jax

    from ranmask_jax.config import CertifyConfig
    from ranmask_jax.runs import load_for_run, select_indices, smoothed_from_run

    scs = {}
    for dtype in ("float32", "bfloat16"):
        cfg = CertifyConfig(run_dir=args.run_dir, dataset=args.dataset, data_dir=args.data_dir, split="test",
                            out="-", dtype=dtype)
        scs[dtype], settings = smoothed_from_run(cfg)
    ds = load_for_run(cfg, settings, scs["float32"].num_labels)
    idx = select_indices(len(ds), args.texts, args.seed)
    root = jax.random.key(args.seed)
    same_copies = total_copies = same_pred = 0
    worst_share = 0.0
    seconds = {d: 0.0 for d in scs}
    for g, s in enumerate(range(0, len(idx), args.group)):
        group = [int(i) for i in idx[s:s + args.group]]
        reqs = []
        for i in group:
            ex = ds.examples[i]
            enc = scs["float32"].encode(ex.text, ex.text_pair)
            keep, w = scs["float32"].distinct_keep_sets(jax.random.fold_in(root, i), enc, args.n, exact=False)
            reqs.append((enc, keep, w))
        out = {}
        order = list(scs) if g % 2 == 0 else list(scs)[::-1]
        for d in order:
            t0 = time.perf_counter()
            out[d] = scs[d].votes(reqs, row_labels=True)
            seconds[d] += time.perf_counter() - t0
        for (_, _, w), a, b in zip(reqs, out["float32"], out["bfloat16"], strict=True):
            same_copies += int((w * (a.row_labels == b.row_labels)).sum())
            total_copies += int(w.sum())
            same_pred += int(a.counts.argmax() == b.counts.argmax())
            worst_share = max(worst_share, float(np.abs(a.counts - b.counts).max() / w.sum()))
    res = {"benchmark": "bf16_votes", "run_dir": args.run_dir, "dataset": args.dataset, "texts": len(idx),
           "n": args.n, "copies": total_copies, "same_copy_votes": same_copies / total_copies,
           "same_predictions": same_pred / len(idx), "max_vote_share_change": worst_share,
           "seconds": seconds, "ratio_bf16_to_f32": seconds["bfloat16"] / seconds["float32"]}
    lines = [f"{args.dataset}: {len(idx)} texts x {args.n} copies",
             f"  copies voting the same: {100 * res['same_copy_votes']:.3f}%",
             f"  smoothed predictions the same: {100 * res['same_predictions']:.1f}%",
             f"  largest change of a text's vote share: {worst_share:.4f}",
             f"  seconds: float32 {seconds['float32']:.1f}, bfloat16 {seconds['bfloat16']:.1f} "
             f"({res['ratio_bf16_to_f32']:.2f}x)"]
    return _report.report(lines, res, args.json)


if __name__ == "__main__":
    main()
