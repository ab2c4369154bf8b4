"""job_events: Azure ML run events -> registered model + a deploy request (our pipeline runs only)."""

import azure.functions as func

from shared import bus, storage
from shared.contracts import DEPLOY_QUEUE, FLOWS_CONTAINER
from shared.events import decide, normalize
from shared.ml import get_backend
from shared.observability import bind_flow
from shared.registration import handle_decision

bp = func.Blueprint()


@bp.function_name("job_events")
@bp.event_grid_trigger(arg_name="event")
def job_events(event: func.EventGridEvent) -> None:
    decision = decide(normalize({
        "id": event.id, "eventType": event.event_type, "subject": event.subject, "topic": event.topic,
        "eventTime": event.event_time.isoformat() if event.event_time else "", "data": event.get_json()}))
    bind_flow(decision.flow_id)
    request = handle_decision(decision, get_backend(), storage.container(FLOWS_CONTAINER))
    if request is not None:  # SDK send, not an output binding: only the SDK sets MessageId (duplicate detection)
        bus.send(DEPLOY_QUEUE, request.to_json(), request.message_id)
