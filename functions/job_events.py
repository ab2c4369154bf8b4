"""job_events: Azure ML run events -> registered model + a deploy request (our pipeline runs only)."""

import azure.functions as func

from shared import bus, storage
from shared.contracts import DEPLOY_QUEUE, FLOWS_CONTAINER
from shared.events import decide, from_trigger
from shared.ml import get_backend
from shared.observability import bind_flow, new_invocation
from shared.registration import handle_decision

bp = func.Blueprint()


@bp.function_name("job_events")
@bp.event_grid_trigger(arg_name="event")
def job_events(event: func.EventGridEvent) -> None:
    # A CloudEvents delivery arrives as func.CloudEvent despite this annotation (the converter decodes by the
    # payload); the worker and the converter accept one class here, not a Union of the two.
    new_invocation()
    decision = decide(from_trigger(event))
    bind_flow(decision.flow_id)
    request = handle_decision(decision, get_backend(), storage.container(FLOWS_CONTAINER))
    if request is not None:  # SDK send, not an output binding: only the SDK sets MessageId (duplicate detection)
        bus.send(DEPLOY_QUEUE, request.to_json(), request.message_id)
