"""deploy: a deploy request from the `deployments` Service Bus queue -> the model version rolled out into its
dataset's endpoint (docs/rollout.md)."""

import azure.functions as func

from shared import storage
from shared.contracts import DEPLOY_QUEUE, FLOWS_CONTAINER, PREPARED_CONTAINER
from shared.deployment import handle_deploy
from shared.ml import get_backend
from shared.observability import bind_flow, new_invocation

bp = func.Blueprint()


@bp.function_name("deploy")
@bp.service_bus_queue_trigger(arg_name="msg", queue_name=DEPLOY_QUEUE, connection="ServiceBusConnection")
def deploy(msg: func.ServiceBusMessage) -> None:
    new_invocation()
    from shared.messages import DeployRequest  # pydantic: imported on the first message, not at start-up
    request = DeployRequest.parse(msg.get_body())  # invalid -> raises -> redelivered, then dead-lettered
    bind_flow(request.flow_id)
    handle_deploy(request, get_backend(), storage.container(PREPARED_CONTAINER), storage.container(FLOWS_CONTAINER))
