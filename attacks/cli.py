"""The attack command line (flags generated from ``AttackConfig``); expected failures print one ``error:`` line
and exit with status 2."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from attacks.run import AttackConfig
    from ranmask_jax.cli import parse_config, run_command, setup_logging

    cfg = parse_config(AttackConfig, argv, "ranmask-attack",
                 "Attack a trained model, plain or smoothed, with DeepWordBug, TextFooler or BERT-Attack.")
    setup_logging()
    from pathlib import Path

    from attacks.run import attack_dataset

    def run(c):
        attack_dataset(c)
        out = Path(c.out)
        print((out / "table.md").read_text())
        print(f"results in {out}/: attack.jsonl, summary.json, table.md", file=sys.stderr)

    return run_command(run, cfg)
