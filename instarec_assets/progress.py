"""Progress inside long steps as ordinary log records.

The `instarec_assets` loggers are managed by Dagster (`python_logs` in both instance configs), so a
record logged here during a step lands in that step's event log: the UI shows it in the run's
logs, and `instarec materialize` shows it live beside the step.
"""

from __future__ import annotations

import logging
import time


class Stages:
    """Logs `<label> i/n: <name>` as each of n stages of a step starts, with the previous one's time."""

    def __init__(self, logger: logging.Logger, label: str, total: int) -> None:
        self.logger = logger
        self.label = label
        self.total = total
        self.done = 0
        self.started = time.perf_counter()

    def start(self, name: str) -> None:
        now = time.perf_counter()
        previous = f" (previous {now - self.started:.1f}s)" if self.done else ""
        self.done += 1
        self.started = now
        self.logger.info("%s %d/%d: %s%s", self.label, self.done, self.total, name, previous)
