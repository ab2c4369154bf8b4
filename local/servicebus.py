"""The stand-in for a Service Bus queue: an Azurite queue of the same name.

What it keeps of Service Bus:
- duplicate detection (the `deployments` queue has it on, window PT10M, see infra/app/servicebus.bicep):
  a send whose MessageId was seen on that queue in the last 10 minutes is accepted and silently
  dropped. The ids seen are marker blobs `azure-webjobs-hosts/servicebus-duplicates/<queue>/<sha256(id)>`
  holding the time of the send; check-and-mark is one conditional write (create if absent, or replace
  only the version that was read), so of concurrent senders of one id exactly one gets through.
- a MessageId on every message: a send without one gets a new GUID (the broker's own), which is
  never a duplicate.
- the MessageId and enqueue time reach the trigger: each stored message is an envelope
  `{"tuneflow_servicebus": 1, "message_id", "body", "enqueued_at"}`; `decode()` takes it apart. A raw
  message written straight into the queue (by a test, or by hand) decodes to itself with no MessageId.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from shared.settings import StorageConnection

log = logging.getLogger("tuneflow.servicebus")
DUPLICATE_WINDOW_S = 600  # the queue's duplicateDetectionHistoryTimeWindow (PT10M)
MARKERS_CONTAINER = "azure-webjobs-hosts"
ENVELOPE = "tuneflow_servicebus"


@dataclass(frozen=True)
class StandInMessage:
    message_id: str | None  # None: not sent through the stand-in (the host uses the queue message id)
    body: str
    enqueued_at: datetime | None


def encode(body: str, message_id: str, enqueued_at: datetime) -> str:
    return json.dumps({ENVELOPE: 1, "message_id": message_id, "body": body, "enqueued_at": enqueued_at.isoformat()})


def decode(raw: str) -> StandInMessage:
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not (isinstance(value, dict) and value.get(ENVELOPE) == 1 and isinstance(value.get("body"), str)):
        return StandInMessage(None, raw, None)
    try:
        enqueued = datetime.fromisoformat(value.get("enqueued_at") or "")
    except (TypeError, ValueError):
        enqueued = None
    return StandInMessage(str(value.get("message_id") or "") or None, value["body"], enqueued)


class ServiceBusStandIn:
    """`send` has the shape of `shared.bus.Sender`: install it with `bus.use(stand_in.send)`."""

    def __init__(self, connection: StorageConnection, window_s: float = DUPLICATE_WINDOW_S,
                 clock: Callable[[], float] = time.time):
        self.connection = connection
        self.window_s = window_s
        self.clock = clock
        self.dropped: list[str] = []  # MessageIds accepted and dropped as duplicates, in order

    def send(self, queue: str, body: str, message_id: str | None = None) -> bool:
        """Enqueue `body`; False when it was dropped as a duplicate (Service Bus reports no difference)."""
        from shared.storage import queue as queue_client
        now = self.clock()
        if not message_id:
            message_id = str(uuid.uuid4())
            claim = None
        else:
            claim = self._claim(queue, message_id, now)
            if claim is None:
                log.info("service bus %s: duplicate MessageId %s accepted and dropped", queue, message_id)
                self.dropped.append(message_id)
                return False
        try:
            queue_client(queue, self.connection).send_message(
                encode(body, message_id, datetime.fromtimestamp(now, timezone.utc)))
        except Exception:
            if claim is not None:  # not enqueued: a retry of this send must not be taken for a duplicate
                self._release(claim)
            raise
        return True

    def _marker(self, queue: str, message_id: str):
        from shared.storage import container
        return container(MARKERS_CONTAINER, self.connection).get_blob_client(
            f"servicebus-duplicates/{queue}/{hashlib.sha256(message_id.encode()).hexdigest()}")

    def _claim(self, queue: str, message_id: str, now: float):
        """Mark `message_id` as seen at `now`, unless it was seen within the window: the marker's
        (client, etag) when this send may go, None when it is a duplicate."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
        marker = self._marker(queue, message_id)
        stamp = repr(now).encode()
        for _ in range(5):  # each round loses only to another sender that changed the marker meanwhile
            try:
                return marker, marker.upload_blob(stamp, overwrite=False)["etag"]  # If-None-Match: *
            except ResourceExistsError:
                pass
            try:
                current = marker.download_blob()
                seen_at = float(current.readall())
            except ResourceNotFoundError:
                continue  # released meanwhile: try creating it again
            except ValueError:
                seen_at = float("-inf")  # unreadable marker: treat as expired
            if now - seen_at < self.window_s:
                return None
            try:
                return marker, marker.upload_blob(stamp, overwrite=True, etag=current.properties.etag,
                                                  match_condition=MatchConditions.IfNotModified)["etag"]
            except (ResourceModifiedError, ResourceNotFoundError):
                continue  # another sender renewed or released it first: look again
        raise RuntimeError(f"service bus stand-in: the duplicate marker of {message_id} on {queue} keeps changing")

    @staticmethod
    def _release(claim) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError
        marker, etag = claim
        try:
            marker.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
        except HttpResponseError:
            pass  # someone else's claim by now, or gone: leave it
