"""Command lines: ``train.py`` / ``ranmask-train`` and ``certify.py`` / ``ranmask-certify``.

Flags are generated from the typed configs in ``ranmask_jax.config``. Expected failures (bad flags, data, files,
checkpoints) print one ``error:`` line and exit with status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ranmask_jax.config import CertifyConfig, TrainConfig, add_arguments, from_args

_EXPECTED = (ValueError, FileNotFoundError, NotADirectoryError, OSError, ImportError)


def setup_logging() -> None:
    """Log lines as ``LEVEL name: message`` at ``$RANMASK_LOG`` (default INFO), libraries' chatter at WARNING."""
    logging.basicConfig(level=os.environ.get("RANMASK_LOG", "INFO"), format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "jax._src.xla_bridge", "orbax", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_command(fn, cfg) -> int:
    """``fn(cfg)`` as a command: an expected failure is one ``error:`` line and status 2, Ctrl-C status 130; a dict
    result is printed as JSON. Returns the exit status."""
    try:
        result = fn(cfg)
    except _EXPECTED as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if isinstance(result, dict):
        print(json.dumps(result, indent=2, default=str))
    return 0


class _DefaultsOnce(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default once: appended unless the help text already states it, and never "None"."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, ""):
            return text
        return super()._get_help_string(action)


def parse_config(cls, argv, prog: str, description: str):
    """The typed config ``cls`` from command-line flags generated from its fields (``config.add_arguments``); a bad
    value exits with argparse's one-line usage error."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=_DefaultsOnce)
    add_arguments(parser, cls)
    args = parser.parse_args(argv)
    try:
        return from_args(cls, args)
    except ValueError as e:
        parser.error(str(e))


def train_main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TrainConfig, argv, "train.py", "Train a RanMASK base classifier on randomly masked texts.")
    setup_logging()
    from ranmask_jax.train import train

    def run(c):
        result = train(c)
        from pathlib import Path

        out = Path(c.out_dir)
        print(f"run directory: {out}  (model: {out / 'model'}, metrics: {out / 'metrics.jsonl'}, checkpoints: "
              f"{out / 'checkpoints'}); certify it with: certify.py --run-dir {out} ...", file=sys.stderr)
        return result

    return run_command(run, cfg)


def certify_main(argv: list[str] | None = None) -> int:
    cfg = parse_config(CertifyConfig, argv, "certify.py",
                 "Certify a trained RanMASK run on a dataset split, or classify raw texts with --predict.")
    setup_logging()
    from ranmask_jax.certify import certify_dataset, predict_texts

    if cfg.predict is not None:
        return run_command(lambda c: predict_texts(c) and None, cfg)
    summary_fn = certify_dataset

    def run(c):
        summary = summary_fn(c)
        from pathlib import Path

        if "process" in summary:  # a process other than 0 of a multi-process run: process 0 reports
            print(f"process {summary['process']}: {summary['rows_written']} rows written", file=sys.stderr)
            return None
        out = Path(c.out)
        print((out / "table.md").read_text())
        files = ["certify.jsonl", "summary.json", "table.md"] + ([] if c.accuracy_only else
                                                                 ["certified-accuracy.png", "certified-accuracy.pdf"])
        print(f"results in {out}/: {', '.join(files)}", file=sys.stderr)
        return None

    return run_command(run, cfg)
