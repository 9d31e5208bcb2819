"""MaskPure's refill: decoding the mask positions alone (``mlm_refill(..., mask_share=rho)``) against decoding
every position, in the attack harness's workload.

One scorer call of a MaskPure attack scores a search step's candidate texts, ``--n`` masked copies each (11 in
MaskPure). This times ``SmoothedClassifier.predict_many`` over ``--texts`` seeded test texts for three engines that
share the classifier and the copies: no refill (RanMASK), the dense refill and the masks-only refill. They
alternate within each repetition; medians over ``--reps``; the two refills' scores are compared.

    python benchmarks/refill_speed.py --run-dir runs/agnews-rho0 --mlm runs/agnews-mlm --dataset ag_news
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np
from _report import add_run_flags, parser, report


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, reps=5)
    add_run_flags(p, texts=32)
    p.add_argument("--mlm", required=True, help="a masked-LM run (train.py --task mlm)")
    p.add_argument("--rho", type=float, default=0.3, help="the masking rate (MaskPure: 0.3)")
    p.add_argument("--n", type=int, default=11, help="masked copies per text")
    args = p.parse_args(argv)

    from ranmask_jax.data import load_dataset
    from ranmask_jax.models import load_pretrained
    from ranmask_jax.models.pretrained import resolve
    from ranmask_jax.purify import mlm_refill
    from ranmask_jax.runs import select_indices
    from ranmask_jax.smoothing import SmoothedClassifier

    _, meta = resolve(args.run_dir)
    model, tok, _ = load_pretrained(args.run_dir)
    mlm, mlm_tok, _ = load_pretrained(args.mlm, head="mlm")
    max_len = meta.get("max_len", 128)
    engines = {"plain": SmoothedClassifier(model, tok, args.rho, max_len=max_len)}
    for name, share in (("dense", None), ("masks-only", args.rho)):
        fn, params = mlm_refill(mlm, mlm_tok, tok, mask_share=share)
        engines[name] = SmoothedClassifier(model, tok, args.rho, max_len=max_len, transform=fn,
                                           transform_params=params)
    ds = load_dataset(args.dataset, "test", args.data_dir)
    texts = [ds.examples[i].text for i in select_indices(len(ds), 100, 0)[: args.texts]]

    def run(sc, rep):
        keys = [jax.random.fold_in(jax.random.key(rep), i) for i in range(len(texts))]
        return np.array([q.scores for q in sc.predict_many(keys, texts, n=args.n, ensemble="prob")])

    first = {name: run(sc, 0) for name, sc in engines.items()}  # compiles
    times = {name: [] for name in engines}
    for rep in range(1, args.reps + 1):
        for name, sc in engines.items():
            t0 = time.perf_counter()
            run(sc, rep)
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    diff = float(np.abs(first["dense"] - first["masks-only"]).max())
    result = {"benchmark": "refill_speed", "texts": len(texts), "n": args.n, "rho": args.rho, "median_s": med,
              "speedup_masks_only_vs_dense": med["dense"] / med["masks-only"], "max_score_diff": diff}
    lines = [f"{len(texts)} texts x {args.n} copies, rho {args.rho}, median of {args.reps}:"]
    lines += [f"  {name:10s} {s:.3f} s  ({s / len(texts) * 1000:.1f} ms a text)" for name, s in med.items()]
    lines.append(f"  masks-only is {result['speedup_masks_only_vs_dense']:.2f}x the dense refill; "
                 f"largest score difference {diff:.2e}")
    return report(lines, result, args.json)


if __name__ == "__main__":
    main()
