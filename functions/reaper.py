"""reaper: on a timer, delete managed endpoints whose `expires-at` has passed."""

import azure.functions as func

from shared import storage
from shared.contracts import FLOWS_CONTAINER
from shared.ml import get_backend
from shared.reaper import reap
from shared.ttl import utcnow

bp = func.Blueprint()


@bp.function_name("reaper")
@bp.timer_trigger(arg_name="timer", schedule="%TUNEFLOW_REAPER_SCHEDULE%", run_on_startup=False, use_monitor=True)
def reaper(timer: func.TimerRequest) -> None:
    reap(get_backend(), storage.container(FLOWS_CONTAINER), utcnow())
