"""JAX vs PyTorch forward throughput of the same MiniLM-L6 classifier weights.

Both frameworks get the same batch (random token ids, full attention mask) and the same weights (the JAX model is
exported with ``export_pretrained`` and loaded by transformers), on the same kind of device: PyTorch runs on CUDA
when JAX's default backend is a GPU (``--torch-device`` overrides). Compilation / warm-up is excluded; the two are
timed in alternating repetitions and the medians are reported with their ratio.

    python benchmarks/forward.py --batch 256 --seq-len 64 --reps 7
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from _report import parser, report
from flax import nnx


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, reps=7)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="JAX compute dtype")
    p.add_argument("--attention", default="fused", choices=["fused", "explicit"], help="JAX attention form")
    p.add_argument("--torch-device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="PyTorch's device (auto: cuda when JAX runs on a GPU)")
    args = p.parse_args(argv)

    import torch
    import transformers as tf

    from ranmask_jax import export_pretrained, load_pretrained

    model, tok, cfg = load_pretrained("minilm-l6", num_labels=2, dtype=args.dtype, attention=args.attention)
    with tempfile.TemporaryDirectory() as d:
        export_pretrained(model, tok, cfg, d)
        tm = tf.AutoModelForSequenceClassification.from_pretrained(d).eval()
    tdev = args.torch_device
    if tdev == "auto":
        tdev = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    tm = tm.to(tdev)

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, cfg.vocab_size, size=(args.batch, args.seq_len)).astype(np.int32)
    ids[:, 0], ids[:, -1] = tok.cls_token_id, tok.sep_token_id
    mask = np.ones_like(ids)

    graphdef, state = nnx.split(model)

    @jax.jit
    def jax_forward(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, mask)

    j_ids, j_mask = jnp.asarray(ids), jnp.asarray(mask)
    t_ids = torch.from_numpy(ids.astype(np.int64)).to(tdev)
    t_mask = torch.from_numpy(mask.astype(np.int64)).to(tdev)

    def run_jax():
        return np.asarray(jax_forward(state, j_ids, j_mask).block_until_ready())

    def run_torch():
        with torch.inference_mode():
            return tm(input_ids=t_ids, attention_mask=t_mask).logits.cpu().numpy()  # .cpu() waits for the GPU

    a, b = run_jax(), run_torch()  # warm-up (and compilation)
    max_diff = float(np.abs(a - b).max())
    tj, tt = [], []
    for _ in range(args.reps):
        for fn, acc in ((run_jax, tj), (run_torch, tt)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    mj, mt = statistics.median(tj), statistics.median(tt)
    res = {
        "batch": args.batch, "seq_len": args.seq_len, "reps": args.reps, "jax_dtype": args.dtype,
        "attention": cfg.attention,
        "jax_seq_per_s": args.batch / mj, "torch_seq_per_s": args.batch / mt, "jax_over_torch": mt / mj,
        "max_abs_logit_diff": max_diff, "jax": jax.__version__, "torch": torch.__version__,
        "device": str(jax.devices()[0]), "torch_device": tdev,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    return report([
        f"JAX   {res['jax_seq_per_s']:8.1f} seq/s   (median of {args.reps}, {args.dtype}, {args.attention} attention)",
        f"torch {res['torch_seq_per_s']:8.1f} seq/s   (median of {args.reps}, float32, {tdev})",
        f"ratio JAX/torch = {res['jax_over_torch']:.2f}   max |logit diff| = {max_diff:.2e}",
    ], res, args.json)


if __name__ == "__main__":
    main()
