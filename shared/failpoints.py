"""Fail points: named places where a test or the chaos run makes this process die, as a crash would.

`TUNEFLOW_FAILPOINTS` is a comma-separated list of names; `reached("name")` at such a place kills the
process with SIGKILL (no cleanup, no finally blocks, exactly as a crash). A name may carry a count,
`name@3`, to die on its third pass (counted per process). Unset, `reached` is one dictionary lookup.
Every fail point is named after the module and the moment, e.g. `deploy.after-endpoint`.
"""

from __future__ import annotations

import os
import signal
import threading

_passes: dict[str, int] = {}
_lock = threading.Lock()


def reached(name: str) -> None:
    armed = os.environ.get("TUNEFLOW_FAILPOINTS")
    if not armed:
        return
    for entry in armed.split(","):
        point, _, nth = entry.strip().partition("@")
        if point != name:
            continue
        with _lock:
            _passes[name] = _passes.get(name, 0) + 1
            count = _passes[name]
        if count == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
