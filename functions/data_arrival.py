"""data_arrival: a dataset blob lands in `datasets/` -> prepared JSONL + a fine-tune request."""

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob

from shared.arrival import handle_dataset_blob
from shared.contracts import DATASETS_CONTAINER, FINETUNE_QUEUE
from shared.observability import new_invocation

bp = func.Blueprint()


@bp.function_name("data_arrival")
@bp.blob_trigger(arg_name="client", path=f"{DATASETS_CONTAINER}/{{name}}", connection="AzureWebJobsStorage",
                 source="EventGrid")
@bp.queue_output(arg_name="request", queue_name=FINETUNE_QUEUE, connection="AzureWebJobsStorage")
def data_arrival(client: blob.BlobClient, request: func.Out[str]) -> None:
    new_invocation()
    message = handle_dataset_blob(client)
    if message is not None:
        request.set(message.to_json())
