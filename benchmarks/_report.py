"""Shared by the benchmark scripts: their common flags, and printing lines plus appending one JSON line."""

from __future__ import annotations

import argparse
import json


def parser(doc: str, reps: int) -> argparse.ArgumentParser:
    """An argument parser with the script's docstring and the flags every benchmark takes (--reps, --json)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=reps, help="repetitions (medians are reported)")
    p.add_argument("--json", help="append the result as one JSON line to this file")
    return p


def add_run_flags(p: argparse.ArgumentParser, texts: int) -> None:
    """The flags of the benchmarks that read a trained run and test texts of a dataset."""
    import os

    p.add_argument("--run-dir", required=True, help="a trained run directory")
    p.add_argument("--dataset", default="sst2")
    p.add_argument("--data-dir", default=os.environ.get("RANMASK_DATA_DIR", "../shared/data"))
    p.add_argument("--texts", type=int, default=texts, help="test texts (the first of the seeded subset)")


def report(lines: list[str], result: dict, json_path: str | None) -> dict:
    """Print the lines and append the result, stamped with the machine and the date it was measured on, to json_path."""
    import time

    from ranmask_jax.distributed import machine

    result = {**result, "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    for line in lines:
        print(line)
    if json_path:
        with open(json_path, "a") as f:
            f.write(json.dumps(result) + "\n")
    return result


def peak_rss_mib(argv: list[str]) -> tuple[float, float]:
    """Peak resident set size (MiB) and wall time (s) of the command ``argv`` run as a child process (Linux:
    ``os.wait4``'s ru_maxrss is in KiB); a failure raises with the end of its stderr."""
    import os
    import subprocess
    import time

    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[:3]} failed:\n{err.decode()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0
