"""submit: a fine-tune request from `finetune-requests` -> one pipeline job in the ML workspace."""

import azure.functions as func

from shared import storage
from shared.contracts import FINETUNE_QUEUE, FLOWS_CONTAINER, PREPARED_CONTAINER
from shared.finetune import handle_request
from shared.ml import get_backend
from shared.observability import bind_flow, new_invocation

bp = func.Blueprint()


@bp.function_name("submit")
@bp.queue_trigger(arg_name="msg", queue_name=FINETUNE_QUEUE, connection="AzureWebJobsStorage")
def submit(msg: func.QueueMessage) -> None:
    new_invocation()
    from shared.messages import FinetuneRequest  # pydantic: imported on the first message, not at start-up
    request = FinetuneRequest.parse(msg.get_body())  # invalid -> raises -> retried, then poison queue
    bind_flow(request.flow_id)
    handle_request(request, get_backend(), storage.container(PREPARED_CONTAINER), storage.container(FLOWS_CONTAINER))
