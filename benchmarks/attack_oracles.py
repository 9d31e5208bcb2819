"""Attack oracles side by side: the same texts, recipe, seed and smoothed classifier, each example attacked under
every oracle in turn (the order rotated from example to example) in one process, so the wall times compare
like for like. One flushed row per (example, oracle) in OUT/rows.jsonl (resumable: a rerun skips the pairs already
written); OUT/summary.json has per oracle the success rate, mean queries, forward passes and seconds per attacked
example, the ratios against the first oracle, and each oracle's agreement with the first on the same texts (exact
McNemar test of the successes, docs/BENCHMARKS.md).

The oracle ``textattack`` is the peer: TextAttack 0.3.11's DeepWordBug (or PWWS) on the same texts against the same
smoothed classifier (or plain model) in PyTorch, run by ``textattack_peer.py`` in the environment ``--peer-python``
names (its docstring says how to make it); the peer's rows take their turn in the rotation like the others.

    python benchmarks/attack_oracles.py --run-dir runs/agnews-rho0.9 --dataset ag_news --recipe deepwordbug \\
        --oracles fresh,cache,common --texts 50 --out docs/runs/agnews-rho0.9/bench-oracles-deepwordbug
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import _report
import numpy as np


def main() -> None:
    p = _report.parser(__doc__, reps=1)
    _report.add_run_flags(p, texts=50)
    p.add_argument("--recipe", default="deepwordbug")
    p.add_argument("--attack-mlm", default=None)
    p.add_argument("--ensemble", default="vote")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--oracles", default="fresh,cache,common")
    p.add_argument("--num-examples", type=int, default=100, help="the selection the attack cells draw (seed 0)")
    p.add_argument("--fallback", default="random", help="the greedy search's, for every oracle of this project")
    p.add_argument("--peer-python", default=None, help="the python of the TextAttack environment (oracle textattack)")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import jax

    from attacks.recipes import RECIPES
    from attacks.run import AttackConfig, attack_example, scorers
    from ranmask_jax.distributed import machine
    from ranmask_jax.files import RowFile, write_text
    from ranmask_jax.runs import limit_indices, load_for_run, load_mlm, select_indices, smoothed_from_run

    oracles = args.oracles.split(",")
    cfgs = {o: AttackConfig(run_dir=args.run_dir, dataset=args.dataset, data_dir=args.data_dir, split="test",
                            recipe=args.recipe, attack_mlm=args.attack_mlm, ensemble=args.ensemble, n=args.n,
                            oracle=o, num_examples=args.num_examples, limit=args.texts, out=args.out,
                            fallback=args.fallback)
            for o in oracles if o != "textattack"}
    first = next(iter(cfgs.values()))
    sc, settings = smoothed_from_run(first)
    ds = load_for_run(first, settings, sc.num_labels)
    indices = limit_indices(select_indices(len(ds), args.num_examples, first.seed), args.texts, first.seed)
    kw = {}
    if args.recipe == "bert-attack":
        model, tok, _ = load_mlm(args.attack_mlm, first)
        kw = {"mlm": (model, tok), "max_len": min(256, model.cfg.max_positions), "subwords": first.mlm_subwords}
    recipe = RECIPES[args.recipe](unk_token=sc.tokenizer.unk_token, **kw)
    made = {o: scorers(sc, c) for o, c in cfgs.items()}
    peer = start_peer(args, first, sc) if "textattack" in oracles else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    where = machine()
    with RowFile(out / "rows.jsonl", key="cell") as rows:
        done = {r["cell"] for r in rows.rows}
        sc.encode(ds.examples[int(indices[0])].text)
        for j, i in enumerate(int(x) for x in indices):
            ex = ds.examples[i]
            for o in oracles[j % len(oracles):] + oracles[:j % len(oracles)]:  # rotated: no oracle always first
                if f"{i}:{o}" in done:
                    continue
                if o == "textattack":
                    row = peer(i, ex.text, ex.label)
                else:
                    make, recheck, judge = made[o]
                    row = attack_example(sc, recipe, cfgs[o], i, ex.text, ex.label, make(i), recheck,
                                         judge(i) if judge else None)
                rows.append({"cell": f"{i}:{o}", "oracle": o, **row, "machine": where, "date": time.strftime(
                    "%Y-%m-%d")})
                print(f"{j + 1}/{len(indices)} example {i} {o}: {row['status']}, {row['queries']} queries, "
                      f"{row['forward_passes']} forward passes, {row['seconds']:.1f} s", flush=True)
        table = [r for r in rows.rows if r["index"] in set(indices.tolist())]
    summary = summarize(table, oracles)
    summary.update(recipe=args.recipe, ensemble=args.ensemble, n=args.n, run_dir=args.run_dir,
                   dataset=args.dataset, texts=len(indices), config={k: v for k, v in dataclasses.asdict(
                       first).items() if k not in ("oracle", "out")}, jax=jax.__version__)
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["oracles"], indent=2))


def start_peer(args, cfg, sc):
    """The TextAttack peer (``textattack_peer.py``) as a function ``(index, text, label) -> row``."""
    import subprocess
    import sys

    from ranmask_jax.models.pretrained import resolve

    if args.recipe not in ("deepwordbug", "pwws") or args.ensemble not in ("vote", "none"):
        raise SystemExit("the textattack peer runs DeepWordBug or PWWS against the vote ensemble or the plain model")
    if not args.peer_python:
        raise SystemExit("oracle textattack needs --peer-python (the python of a TextAttack 0.3.11 environment)")
    cmd = [args.peer_python, str(Path(__file__).with_name("textattack_peer.py")), "--model-dir",
           str(resolve(cfg.run_dir)[0]), "--rho", str(sc.keep_sets.rho), "--n", str(args.n), "--max-len",
           str(sc.max_len), "--seed", str(cfg.seed), "--recipe", args.recipe, "--ensemble", args.ensemble]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, stderr=sys.stderr)
    ready = json.loads(proc.stdout.readline() or "{}")
    if not ready.get("ready"):
        raise SystemExit(f"the textattack peer did not start ({' '.join(cmd)})")
    print(f"peer: {ready}", flush=True)

    def attack(i: int, text: str, label: int) -> dict:
        proc.stdin.write(json.dumps({"index": i, "text": " ".join(text.split()), "label": label}) + "\n")
        proc.stdin.flush()
        return {**json.loads(proc.stdout.readline()), "peer": ready}

    return attack


def summarize(rows: list[dict], oracles: list[str]) -> dict:
    """Per oracle, on the examples every oracle has a row for: the examples it attacked (its clean answer was right),
    successes, and means per attacked example; against the first oracle, the ratios of the means and an exact
    McNemar test of the successes on the examples both attacked."""
    from scipy.stats import binomtest

    by = {o: {r["index"]: r for r in rows if r["oracle"] == o} for o in oracles}
    common = sorted(set.intersection(*(set(b) for b in by.values()))) if by else []

    def attacked(o: str) -> list[int]:
        return [i for i in common if by[o][i]["status"] != "skipped"]

    def mean(rs: list[dict], k: str) -> float | None:
        return float(np.mean([r[k] for r in rs])) if rs else None

    out = {}
    for o in oracles:
        rs = [by[o][i] for i in attacked(o)]
        out[o] = {"attacked": len(rs), "succeeded": sum(r["status"] == "succeeded" for r in rs),
                  "queries": mean(rs, "queries"), "forward_passes": mean(rs, "forward_passes"),
                  "seconds": mean(rs, "seconds"),
                  "robust_recheck": sum(r["recheck_prediction"] == r["label"] for r in rs)}
    first = oracles[0] if oracles else None
    for o in oracles[1:]:
        both = sorted(set(attacked(first)) & set(attacked(o)))
        won = [(by[first][i]["status"] == "succeeded", by[o][i]["status"] == "succeeded") for i in both]
        only_a, only_b = sum(a and not b for a, b in won), sum(b and not a for a, b in won)
        a, b = out[first], out[o]
        ratio = {k: a[k] / b[k] if a[k] and b[k] else None for k in ("forward_passes", "seconds")}
        out[o].update(forward_pass_ratio=ratio["forward_passes"], time_ratio=ratio["seconds"], paired=len(both),
                      discordant={f"{first} only": only_a, f"{o} only": only_b},
                      mcnemar_p=binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0)
    return {"examples_compared": len(common), "oracles": out}


if __name__ == "__main__":
    main()
