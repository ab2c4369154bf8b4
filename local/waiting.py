"""Waiting on a condition with a deadline, never on a fixed sleep: for the tests and the benchmarks."""

from __future__ import annotations

import time


class TimedOut(AssertionError):
    """The condition did not hold in time (an AssertionError, so a test reports it as a failure)."""


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    """Poll `condition` until it returns something truthy, and return that; TimedOut naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimedOut(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
