"""reaper: on a timer, delete managed endpoints whose time is up (rules, safety gate, audit: shared/reaper.py)."""

import azure.functions as func

from shared import storage
from shared.contracts import FLOWS_CONTAINER, REAPER_CONTAINER
from shared.ml import get_backend
from shared.observability import new_invocation
from shared.reaper import reap
from shared.ttl import utcnow

bp = func.Blueprint()


@bp.function_name("reaper")
@bp.timer_trigger(arg_name="timer", schedule="%TUNEFLOW_REAPER_SCHEDULE%", run_on_startup=False, use_monitor=True)
def reaper(timer: func.TimerRequest) -> None:
    new_invocation()
    reap(get_backend(), utcnow(), flow_log=storage.container(FLOWS_CONTAINER), state=storage.container(REAPER_CONTAINER))
