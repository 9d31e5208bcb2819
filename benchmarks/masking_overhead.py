"""Share of sampling + masked-copy construction in classifying n masked copies of one text.

For one SST-2-length sentence and MiniLM-L6, times (median of --reps) the whole ``SmoothedClassifier.votes`` of
n copies, and separately its non-model parts: drawing the n keep sets on the device, the host-side dedup, and
building the masked token ids for every batch (jitted alone; inside ``votes`` it is fused with the forward).

    python benchmarks/masking_overhead.py --n 5000 --reps 3
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np
from _report import parser, report

TEXT = ("it 's a charming and often affecting journey , with a sharp script and a cast that makes the most of "
        "every quiet moment .")


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, reps=3)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--rho", type=float, default=0.3)
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args(argv)

    from ranmask_jax import load_pretrained
    from ranmask_jax.distributed import pad_rows
    from ranmask_jax.engine import dedup
    from ranmask_jax.masking import bucket, build_masked, copy_lengths
    from ranmask_jax.smoothing import SmoothedClassifier

    model, tok, _ = load_pretrained("minilm-l6", num_labels=2)
    sc = SmoothedClassifier(model, tok, rho=args.rho, batch_size=args.batch_size, max_len=128)
    enc = sc.encode(TEXT)
    width = bucket(len(enc.token_ids))
    text = enc.padded(width, sc.pad_id)
    build = jax.jit(build_masked, static_argnames=("mask_id", "pad_id", "max_len", "out_len"))

    def overhead(key):
        uniq, _ = dedup(sc.sample(key, enc, args.n))
        copy_lengths(enc, uniq, sc.max_len)
        keep = np.zeros((len(uniq), width), bool)
        keep[:, :uniq.shape[1]] = uniq
        for s in range(0, len(uniq), sc.batch_size):
            out = build(**text, keep=pad_rows(keep[s:s + sc.batch_size], sc.batch_size), mask_id=sc.mask_id,
                        pad_id=sc.pad_id, max_len=sc.max_len, out_len=min(width, sc.max_len))
        jax.block_until_ready(out)
        return len(uniq)

    def total(key):
        return sc.votes([(enc, *dedup(sc.sample(key, enc, args.n)))])

    overhead(jax.random.key(0)), total(jax.random.key(0))  # compile
    t_over, t_total = [], []
    for r in range(args.reps):
        key = jax.random.key(r + 1)
        t0 = time.perf_counter()
        distinct = overhead(key)
        t_over.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        total(key)
        t_total.append(time.perf_counter() - t0)
    mo, mt = statistics.median(t_over), statistics.median(t_total)
    res = {"n": args.n, "h": enc.h, "k": sc.keep_count(enc.h), "tokens": len(enc.token_ids), "bucket": width,
           "distinct_copies": distinct, "overhead_s": mo, "classify_s": mt, "overhead_share": mo / mt,
           "copies_per_s": args.n / mt, "device": str(jax.devices()[0]), "reps": args.reps}
    return report([
        f"h={enc.h} k={res['k']} tokens={len(enc.token_ids)} bucket={width} distinct copies={distinct}/{args.n}",
        f"sampling + dedup + construction: {mo * 1e3:8.1f} ms (median of {args.reps})",
        f"classify {args.n} copies (total):  {mt * 1e3:8.1f} ms  -> {res['copies_per_s']:.0f} copies/s",
        f"overhead share: {100 * mo / mt:.2f}%",
    ], res, args.json)


if __name__ == "__main__":
    main()
