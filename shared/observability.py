"""Correlation: the flow id of the work in progress, for log records and the host's invocation line.

A function starts every invocation with `new_invocation()` and binds the flow id as soon as it
knows it; every log record created afterwards in that invocation, by any logger (`tuneflow.*`,
the SDKs', the root), carries it as `flow_id` ("-" when none is bound): in Azure an Application
Insights custom dimension, locally the host's one line per invocation.

Why a log-record factory and an explicit start, not a filter and contextvars alone: a filter on
the root logger only sees records logged on the root itself, never those propagated from named
loggers; and the Python worker runs synchronous functions in a ThreadPoolExecutor through
`loop.run_in_executor`, which does not copy contextvars, so what one invocation bound stays set
on that thread for the next invocation it runs.
"""

from __future__ import annotations

import contextvars
import logging
import threading

_flow_id: contextvars.ContextVar[str] = contextvars.ContextVar("tuneflow_flow_id", default="")
_install_lock = threading.Lock()


def new_invocation() -> None:
    """Forget the flow id an earlier invocation bound on this worker thread: the first line of every function."""
    _flow_id.set("")


def bind_flow(flow_id: str) -> None:
    _flow_id.set(flow_id)


def current_flow() -> str:
    return _flow_id.get()


def install_flow_ids() -> None:
    """Make every log record carry `flow_id`; once per process (a second call changes nothing). The factory
    in place before is kept and called first, so another library's factory still applies."""
    with _install_lock:
        previous = logging.getLogRecordFactory()
        if getattr(previous, "adds_flow_id", False):
            return

        def factory(*args, **kwargs) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            record.flow_id = _flow_id.get() or "-"
            return record

        factory.adds_flow_id = True
        logging.setLogRecordFactory(factory)
