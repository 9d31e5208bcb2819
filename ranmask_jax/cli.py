"""Console entry points; ``train.py`` and ``certify.py`` at the repository root call these."""

from __future__ import annotations

import argparse


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ranmask-train", description="Train a RanMASK base classifier.")
    parser.parse_args(argv)
    parser.print_help()
    return 0


def certify_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ranmask-certify", description="Certify a RanMASK smoothed classifier.")
    parser.parse_args(argv)
    parser.print_help()
    return 0
