"""Correlation: the flow id of the work in progress, for log records and the host's invocation line.

A function binds the flow id as soon as it knows it; every log record emitted afterwards in the
same invocation carries it (`flow_id` attribute), in Azure (Application Insights custom dimension)
and locally (the host's one line per invocation).
"""

from __future__ import annotations

import contextvars
import logging

_flow_id: contextvars.ContextVar[str] = contextvars.ContextVar("tuneflow_flow_id", default="")


def bind_flow(flow_id: str) -> None:
    _flow_id.set(flow_id)


def current_flow() -> str:
    return _flow_id.get()


class FlowIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.flow_id = _flow_id.get() or "-"
        return True
