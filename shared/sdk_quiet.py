"""Keep azure-ai-ml's "This is an experimental class" chatter out of what tuneflow prints.

azure-ai-ml marks classes and methods `@experimental` (azure/ai/ml/_utils/_experimental.py); the first
use of each logs a WARNING on the logger `azure.ai.ml._utils._experimental`. With no logging set up,
Python's last-resort handler prints those on stderr: six lines before the first line a dry run says.
`sdk_quiet()` drops that logger's records while the calls inside it run (in this thread or task), and
nothing else: the SDK's other warnings and errors still show.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from contextvars import ContextVar

EXPERIMENTAL_LOGGER = "azure.ai.ml._utils._experimental"
_quiet: ContextVar[bool] = ContextVar("tuneflow_sdk_quiet", default=False)


def _outside_sdk_quiet(record: logging.LogRecord) -> bool:
    return not _quiet.get()


@contextmanager
def sdk_quiet():
    """`with sdk_quiet(): ml_client.jobs.create_or_update(...)`: no experimental-class warnings."""
    logging.getLogger(EXPERIMENTAL_LOGGER).addFilter(_outside_sdk_quiet)  # once: addFilter ignores a repeat
    token = _quiet.set(True)
    try:
        yield
    finally:
        _quiet.reset(token)
