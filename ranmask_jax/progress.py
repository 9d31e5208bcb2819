"""Progress for long runs: a tqdm bar on a terminal, a log line every so often when the output goes to a file."""

from __future__ import annotations

import logging
import time


class Heartbeat:
    """Logs ``msg % args`` at most every ``every`` seconds, and only when ``bar`` is not shown (tqdm disables
    itself when stderr is not a terminal, e.g. in a batch job's log file)."""

    def __init__(self, logger: logging.Logger, bar, every: float = 30.0):
        self.logger, self.bar, self.every = logger, bar, every
        self.last = time.monotonic()

    def __call__(self, msg: str, *args) -> None:
        now = time.monotonic()
        if getattr(self.bar, "disable", False) and now - self.last >= self.every:
            self.last = now
            self.logger.info(msg, *args)
