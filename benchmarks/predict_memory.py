"""Peak memory of g's scores against n: the sampled copies of a text are drawn, deduplicated and classified in
passes of ``STREAM_CHUNK``, so the peak should not grow with n.

Each n runs ``SmoothedClassifier.scores`` on one 40-word text (rho 0.3: no two copies alike, so nothing is saved by
deduplication) in a fresh process, with a classifier that costs next to nothing (the memory of sampling, packing and
voting is what is measured, not the model's); the child's peak resident set size is read from ``os.wait4``.

    python benchmarks/predict_memory.py --n 10000 1000000
"""

from __future__ import annotations

import sys

from _report import parser, peak_rss_mib, report

CHILD = r"""
import sys, jax, jax.numpy as jnp
from ranmask_jax.masking import UniformKeepSets
from ranmask_jax.models import load_tokenizer
from ranmask_jax.models.pretrained import _builtin_dir
from ranmask_jax.smoothing import SmoothedClassifier
tok = load_tokenizer(_builtin_dir("minilm-l6"))
def logits(p, ids, attn, types):  # reads every token of the copy, costs nothing next to a transformer
    return jax.nn.one_hot((ids * attn).sum(-1) % 2, 2)
sc = SmoothedClassifier.from_logits_fn(logits, {}, tok, UniformKeepSets(0.3), num_labels=2, batch_size=1024)
text = " ".join(f"word{i}" for i in range(40))
s = sc.scores(jax.random.key(0), [text], n=int(sys.argv[1]))
print(s.tolist())
"""


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, reps=1)
    p.add_argument("--n", type=int, nargs="+", default=[10000, 1000000], help="copies of the text")
    args = p.parse_args(argv)
    rows = [(n, *peak_rss_mib([sys.executable, "-c", CHILD, str(n)])) for n in args.n]
    lines = [f"n = {n:>9}: peak RSS {rss:7.0f} MiB, {sec:6.1f} s" for n, rss, sec in rows]
    ratio = rows[-1][1] / rows[0][1]
    lines.append(f"peak RSS ratio, n = {rows[-1][0]} vs n = {rows[0][0]}: {ratio:.2f}x")
    return report(lines, {"benchmark": "predict_memory", "rows": [{"n": n, "peak_rss_mib": round(r, 1),
                                                                      "seconds": round(s, 1)} for n, r, s in rows],
                          "ratio": round(ratio, 3)}, args.json)


if __name__ == "__main__":
    main()
