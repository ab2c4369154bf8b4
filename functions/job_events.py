"""job_events: Azure ML run events -> registered model + a deploy request (our pipeline runs only)."""

import azure.functions as func

from shared import storage
from shared.contracts import DEPLOY_QUEUE, FLOWS_CONTAINER
from shared.events import decide, normalize
from shared.ml import get_backend
from shared.observability import bind_flow
from shared.registration import handle_decision

bp = func.Blueprint()


@bp.function_name("job_events")
@bp.event_grid_trigger(arg_name="event")
@bp.service_bus_queue_output(arg_name="deploy", queue_name=DEPLOY_QUEUE, connection="ServiceBusConnection")
def job_events(event: func.EventGridEvent, deploy: func.Out[str]) -> None:
    decision = decide(normalize({
        "id": event.id, "eventType": event.event_type, "subject": event.subject, "topic": event.topic,
        "eventTime": event.event_time.isoformat() if event.event_time else "", "data": event.get_json()}))
    bind_flow(decision.flow_id)
    request = handle_decision(decision, get_backend(), storage.container(FLOWS_CONTAINER))
    if request is not None:
        deploy.set(request.to_json())
