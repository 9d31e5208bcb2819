"""The certificates audited by the attacks: for every text that was both certified and attacked with the same smoothed
classifier, did an attack succeed while changing no more words than the certified radius (beta = 1)? Under the
rigorous certificate that may happen for at most about alpha of the certified texts (the certificate's own error),
and only where the attack's verdict is right; more is a bug to find.

    python experiments/audit_certificates.py --certify docs/runs/agnews-rho0.9/certify-attacked \\
        docs/runs/agnews-rho0.9/bench-oracles-deepwordbug docs/runs/agnews-rho0.9/attack-deepwordbug-vote

Each ATTACK is a directory with ``attack.jsonl`` (an attack cell) or ``rows.jsonl`` (the oracle benchmark: one
cell per oracle). A cell is audited only if it attacked the classifier that was certified: the same model
fingerprint (weights, and any masked LM) when both configs record one, the same rho, uniform keep sets and no
purifier; other cells are listed as skipped with the reason. A success counts against a certificate when the
certified text was correct, the attack succeeded by its own last answer, and it changed at most ``radius_one``
words; "confirmed" also needs the attack's independent fresh recheck to give a wrong answer. Prints a Markdown
table; ``--json`` writes the per-cell counts and the offending texts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_config(d: Path, names: tuple[str, ...]) -> dict:
    for n in names:
        if (d / n).exists():
            cfg = json.loads((d / n).read_text())
            return cfg.get("config", cfg) | {k: cfg[k] for k in ("model_fingerprint",) if k in cfg}
    return {}


def cells(attack_dir: Path) -> list[tuple[str, list[dict], dict]]:
    """(name, rows, config) of each cell in an attack directory."""
    if (attack_dir / "attack.jsonl").exists():
        return [(attack_dir.name, read_rows(attack_dir / "attack.jsonl"),
                 read_config(attack_dir, ("attack_config.json",)))]
    if (attack_dir / "rows.jsonl").exists():
        rows = read_rows(attack_dir / "rows.jsonl")
        cfg = read_config(attack_dir, ("summary.json",))
        by: dict[str, list[dict]] = {}
        for r in rows:
            by.setdefault(r.get("oracle", "?"), []).append(r)
        return [(f"{attack_dir.name}:{o}", rs, cfg) for o, rs in by.items()]
    raise SystemExit(f"{attack_dir}: neither attack.jsonl nor rows.jsonl")


def why_not_comparable(cert_cfg: dict, cfg: dict) -> str | None:
    a, b = cert_cfg.get("model_fingerprint"), cfg.get("model_fingerprint")
    if a and b and a != b:
        return f"other weights (fingerprint {b[:12]} against the certified {a[:12]})"
    for key in ("rho", "min_keep", "max_len"):
        if cfg.get(key) is not None and cert_cfg.get(key) is not None and cfg[key] != cert_cfg[key]:
            return f"{key} {cfg[key]} against the certified {cert_cfg[key]}"
    if cfg.get("sampling", "uniform") != "uniform" or cfg.get("purifier"):
        return "another classifier (LM-based sampling or a purifier)"
    if cfg.get("ensemble") == "none":
        return "the plain model, not the smoothed one"
    return None


def audit(cert_rows: list[dict], rows: list[dict]) -> dict:
    certs = {r["index"]: r for r in cert_rows}
    both = [r for r in rows if r["index"] in certs and r["status"] != "skipped"]
    certified = [r for r in both if certs[r["index"]]["correct"] and certs[r["index"]]["radius_one"] >= 0]
    within = [r for r in certified if r["status"] == "succeeded"
              and r["words_changed"] <= certs[r["index"]]["radius_one"]]
    confirmed = [r for r in within if r.get("recheck_prediction", r.get("final_prediction")) != r["label"]]
    return {"attacked_and_certified": len(both), "certified": len(certified),
            "succeeded": sum(r["status"] == "succeeded" for r in certified),
            "within_radius": len(within), "confirmed": len(confirmed),
            "offending": [{"index": r["index"], "words_changed": r["words_changed"],
                           "radius_one": certs[r["index"]]["radius_one"], "p_lower": certs[r["index"]]["p_lower"],
                           "recheck_prediction": r.get("recheck_prediction"), "label": r["label"]}
                          for r in within]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--certify", required=True, help="a certification output directory (certify.jsonl)")
    p.add_argument("attacks", nargs="+", help="attack directories (attack.jsonl or the benchmark's rows.jsonl)")
    p.add_argument("--json", help="write the per-cell results here")
    args = p.parse_args(argv)
    cdir = Path(args.certify)
    cert_rows = read_rows(cdir / "certify.jsonl")
    cert_cfg = read_config(cdir, ("certify_config.json",))
    out, lines = {}, ["| attack cell | attacked and certified texts | certified (beta = 1) | of them broken by the "
                      "attack | within the radius | confirmed by a fresh recheck |", "|---|---|---|---|---|---|"]
    skipped = []
    for d in args.attacks:
        for name, rows, cfg in cells(Path(d)):
            why = why_not_comparable(cert_cfg, cfg)
            if why:
                skipped.append(f"{name}: {why}")
                continue
            res = audit(cert_rows, rows)
            out[name] = res
            lines.append(f"| {name} | {res['attacked_and_certified']} | {res['certified']} | {res['succeeded']} | "
                         f"{res['within_radius']} | {res['confirmed']} |")
    print("\n".join(lines))
    for s in skipped:
        print(f"skipped {s}", file=sys.stderr)
    total = sum(r["within_radius"] for r in out.values())
    print(f"\n{total} successful attacks within a certified radius over {len(out)} cells")
    if args.json:
        Path(args.json).write_text(json.dumps({"certify": str(cdir), "cells": out, "skipped": skipped}, indent=2)
                                   + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
