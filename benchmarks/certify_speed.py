"""End-to-end certification speed: the ranmask-jax engine against two PyTorch pipelines, same weights, same copies.

For each text, the n0 + n keep sets are drawn once (the engine's sampler, fixed keys) and all three pipelines
classify the masked copies they define and count the votes:

* ``jax``: ``SmoothedClassifier.certify_many`` (groups of texts, distinct copies only, packed by copy length);
* ``torch``: PyTorch done well: the copies written as strings, tokenized in one batch call by the fast tokenizer
  (truncation to max_len), dynamic padding, batches of ``--torch-batch`` under ``inference_mode``;
* ``original``: the original RanMASK code's way: each copy masked and tokenized on its own, batches of 300 padded
  to their longest copy.

The pipelines alternate within each repetition; medians over ``--reps`` are reported with the ratios, and the
engine's first (compiling) pass is reported apart. The vote counts of the three are compared (they agree up to
float ties).

    python benchmarks/certify_speed.py --run-dir runs/sst2-rho0.3 --dataset sst2 --texts 50 --reps 3
"""

from __future__ import annotations

import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from _report import add_run_flags, parser, report


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, reps=3)
    add_run_flags(p, texts=50)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=256, help="the engine's rows per device step")
    p.add_argument("--torch-batch", type=int, default=256)
    p.add_argument("--pipelines", default="jax,torch,original,jax_null",
                   help="jax_null: the engine with a free classifier (host and dispatch cost alone: the profile)")
    args = p.parse_args(argv)

    import torch
    import transformers as tf

    from ranmask_jax.data import load_dataset
    from ranmask_jax.engine import copy_bucket, dedup
    from ranmask_jax.masking import copy_lengths
    from ranmask_jax.models import load_pretrained
    from ranmask_jax.models.pretrained import resolve
    from ranmask_jax.runs import select_indices
    from ranmask_jax.smoothing import SmoothedClassifier

    model_dir, meta = resolve(args.run_dir)
    model, tok, _ = load_pretrained(args.run_dir)
    rho, max_len = meta["rho"], meta.get("max_len", 128)
    sc = SmoothedClassifier(model, tok, rho, max_len=max_len, min_keep=meta.get("min_keep", 2),
                            batch_size=args.batch_size)
    ds = load_dataset(args.dataset, "test", args.data_dir)
    idx = select_indices(len(ds), 200, 0)[: args.texts]
    texts = [ds.examples[i].text for i in idx]
    keys = [jax.random.fold_in(jax.random.key(0), int(i)) for i in idx]
    encs = [sc.encode(t) for t in texts]
    # the copies every pipeline classifies: n0 selection + n estimation keep sets per text (no exact mode)
    keeps = [np.concatenate([sc.sample(jax.random.fold_in(k, 0), e, args.n0), sc.sample(jax.random.fold_in(k, 1), e,
                                                                                         args.n)])[:, :e.h]
             for k, e in zip(keys, encs, strict=True)]
    copies = sum(len(k) for k in keeps)

    def masked_strings(enc, keep):
        words = np.array(enc.words, dtype=object)
        return [" ".join(np.where(row, words, tok.mask_token)) for row in keep]

    tmodel = tf.AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    torch.set_num_threads(os.cpu_count() or 1)

    def engine_votes(engine):
        """The engine's votes for every text, 16 texts per call, distinct copies only; and its padded tokens."""
        out, tokens = [], 0
        for s in range(0, len(encs), 16):
            reqs = [(e, *dedup(np.pad(k, ((0, 0), (0, sc.word_width(e) - e.h)))))
                    for e, k in zip(encs[s:s + 16], keeps[s:s + 16], strict=True)]
            out += [v.counts for v in engine.votes(reqs)]
            tokens += sum(copy_bucket(int(x), max_len) for e, k, _ in reqs for x in copy_lengths(e, k, max_len))
        return out, tokens

    def run_jax():
        return engine_votes(sc)

    def run_torch():
        out, tokens = [], 0
        with torch.inference_mode():
            for enc, keep in zip(encs, keeps, strict=True):
                strings = masked_strings(enc, keep)
                counts = np.zeros(sc.num_labels, np.int64)
                for s in range(0, len(strings), args.torch_batch):
                    batch = tok(strings[s:s + args.torch_batch], truncation=True, max_length=max_len, padding=True,
                                return_tensors="pt")
                    tokens += int(batch["input_ids"].numel())
                    counts += np.bincount(tmodel(**batch).logits.argmax(-1).numpy(), minlength=sc.num_labels)
                out.append(counts)
        return out, tokens

    def run_original():
        out, tokens = [], 0
        with torch.inference_mode():
            for enc, keep in zip(encs, keeps, strict=True):
                ids = [tok(s, truncation=True, max_length=max_len)["input_ids"] for s in masked_strings(enc, keep)]
                counts = np.zeros(sc.num_labels, np.int64)
                for s in range(0, len(ids), 300):
                    chunk = ids[s:s + 300]
                    width = max(len(x) for x in chunk)
                    batch = torch.full((len(chunk), width), tok.pad_token_id)
                    for r, x in enumerate(chunk):
                        batch[r, :len(x)] = torch.tensor(x)
                    tokens += int(batch.numel())
                    logits = tmodel(input_ids=batch, attention_mask=(batch != tok.pad_token_id).long()).logits
                    counts += np.bincount(logits.argmax(-1).numpy(), minlength=sc.num_labels)
                out.append(counts)
        return out, tokens

    # the profile: the same engine with a classifier that costs nothing; jax - jax_null is the forward pass
    def null_logits(p, ids, attn, types):  # reads the masked copies (so XLA keeps the masking), costs ~nothing
        used = (ids + attn + types).sum(-1, keepdims=True).astype(jnp.float32) * 0.0  # [R, 1]
        return jnp.zeros((ids.shape[0], sc.num_labels)) + p + used

    null_sc = SmoothedClassifier.from_logits_fn(null_logits, jnp.float32(0), tok, sc.keep_sets,
                                                num_labels=sc.num_labels, max_len=max_len, batch_size=args.batch_size)

    def run_jax_null():
        return engine_votes(null_sc)[0], 0

    pipes = {"jax": run_jax, "torch": run_torch, "original": run_original, "jax_null": run_jax_null}
    names = [x for x in args.pipelines.split(",") if x]
    t0 = time.perf_counter()
    counts_first, _ = run_jax()
    compile_pass = time.perf_counter() - t0
    if "jax_null" in names:
        run_jax_null()  # compile it outside the timings too
    times = {k: [] for k in names}
    results = {}
    for _ in range(args.reps):
        for name in names:
            t0 = time.perf_counter()
            results[name] = pipes[name]()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    agree = {k: sum(np.array_equal(a, b) for a, b in zip(results[k][0], counts_first, strict=True))
             for k in names if k != "jax_null"}
    res = {"run_dir": args.run_dir, "dataset": args.dataset, "rho": rho, "texts": len(texts), "copies": copies,
           "median_s": med, "s_per_text": {k: v / len(texts) for k, v in med.items()},
           "copies_per_s": {k: copies / v for k, v in med.items()},
           "tokens_per_s": {k: results[k][1] / med[k] for k in names}, "jax_first_pass_s": compile_pass,
           "vote_counts_equal_to_jax": agree, "reps": args.reps, "device": str(jax.devices()[0])}
    lines = [f"{args.dataset} rho={rho}: {len(texts)} texts, {copies} copies (n0={args.n0}, n={args.n})"]
    for k in names:
        same = f"  votes equal to jax for {agree[k]}/{len(texts)} texts" if k in agree else ""
        lines.append(f"  {k:9s} {med[k]:8.1f} s  {med[k] / len(texts):6.2f} s/text  {copies / med[k]:8.0f} copies/s  "
                     f"{results[k][1] / med[k]:9.0f} tokens/s{same}")
    if "jax_null" in med and "jax" in med:
        res["jax_forward_share"] = 1 - med["jax_null"] / med["jax"]
        lines.append(f"  profile: the engine without its forward pass takes {med['jax_null']:.1f} s of "
                     f"{med['jax']:.1f} s ({100 * med['jax_null'] / med['jax']:.1f}%); the forward pass is the rest")
    for k in names:
        if k not in ("jax", "jax_null") and "jax" in med:
            res[f"jax_speedup_vs_{k}"] = med[k] / med["jax"]
            lines.append(f"  jax vs {k}: {med[k] / med['jax']:.2f}x")
    lines.append(f"  jax first pass (with compilation): {compile_pass:.1f} s")
    return report(lines, res, args.json)


if __name__ == "__main__":
    main()
