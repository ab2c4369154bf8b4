"""Trigger arguments built the way the Python worker builds them: by the libraries' own converters.

The worker never constructs `func.QueueMessage` or `func.EventGridEvent` by hand; it hands the
host's payload (a `Datum`) and trigger metadata to the converter registered for the binding. The
local host does the same, so a function sees exactly the type and fields it will see in Azure
(an Event Grid delivery in the CloudEvents schema is a `func.CloudEvent`, not an EventGridEvent;
a queue message carries its dequeue count and timestamps; a Service Bus message its MessageId).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from types import SimpleNamespace

from azure.functions import meta
from azure.functions.eventgrid import EventGridEventInConverter
from azure.functions.queue import QueueMessageInConverter
from azure.functions.servicebus import ServiceBusMessageInConverter


def _when(moment: datetime | None) -> meta.Datum | None:
    # The host sends .NET round-trip timestamps (seven fractional digits, `Z`); the converters strip the seventh.
    if moment is None:
        return None
    return meta.Datum(moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z", "string")


def _metadata(**fields) -> dict[str, meta.Datum]:
    out = {}
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, meta.Datum):
            out[name] = value
        elif isinstance(value, int):
            out[name] = meta.Datum(value, "int")
        else:
            out[name] = meta.Datum(str(value), "string")
    return out


def queue_message(msg, body: str):
    """A storage queue message (azure-storage-queue's QueueMessage) and its decoded body."""
    return QueueMessageInConverter.decode(
        meta.Datum(body, "string"),
        trigger_metadata=_metadata(Id=msg.id, DequeueCount=int(msg.dequeue_count or 0), PopReceipt=msg.pop_receipt,
                                   InsertionTime=_when(msg.inserted_on), ExpirationTime=_when(msg.expires_on),
                                   NextVisibleTime=_when(msg.next_visible_on)))


def service_bus_message(body: str, *, message_id: str, delivery_count: int, enqueued_at: datetime | None,
                        sequence_number: int | None = None, content_type: str | None = "application/json"):
    return ServiceBusMessageInConverter.decode(
        meta.Datum(body, "string"),
        trigger_metadata=_metadata(MessageId=message_id, DeliveryCount=delivery_count,
                                   EnqueuedTimeUtc=_when(enqueued_at), SequenceNumber=sequence_number,
                                   ContentType=content_type,
                                   # The host always sends the property bags (the converter reads "one message" from them).
                                   UserProperties=meta.Datum("{}", "json"),
                                   ApplicationProperties=meta.Datum("{}", "json")))


def event_grid_event(event: dict):
    """One event of a delivery (Event Grid or CloudEvents schema): `func.EventGridEvent` or `func.CloudEvent`.
    Raises ValueError for what the library cannot decode (the real worker fails that invocation)."""
    return EventGridEventInConverter.decode(meta.Datum(json.dumps(event), "json"), trigger_metadata={})


def blob_client(connection: str, container: str, blob: str):
    """The SDK-type `BlobClient` the blob extension's converter makes from the host's model binding data."""
    from azurefunctions.extensions.base import Datum
    from azurefunctions.extensions.bindings.blob import BlobClient
    from azurefunctions.extensions.bindings.blob.blobClientConverter import BlobClientConverter
    data = SimpleNamespace(version="1.0", source="AzureStorageBlobs", content_type="application/json",
                           content=json.dumps({"Connection": connection, "ContainerName": container, "BlobName": blob}))
    return BlobClientConverter.decode(Datum(data, "model_binding_data"), trigger_metadata={}, pytype=BlobClient)
