"""Shared by the benchmark scripts: print lines and append the result as one JSON line."""

from __future__ import annotations

import json


def report(lines: list[str], result: dict, json_path: str | None) -> dict:
    for line in lines:
        print(line)
    if json_path:
        with open(json_path, "a") as f:
            f.write(json.dumps(result) + "\n")
    return result
