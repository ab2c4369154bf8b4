"""What failed for good, why, and putting it back once the cause is fixed.

Three places hold messages the app gave up on:
  finetune-requests-poison     storage queue (base64), after `maxDequeueCount` failures of `submit`
  webjobs-blobtrigger-poison   storage queue, a blob the `data_arrival` trigger gave up on
  deployments (dead letters)   Service Bus' dead-letter sub-queue of `deployments`; locally the
                               stand-in queue `deployments-deadletter`

A requeue sends the original body back to its queue first and removes the dead letter only once
that send is accepted, so a crash in between can repeat a message but never lose one; a repeat is
harmless (every handler is idempotent). A blob is re-triggered by dropping it again: the poison
entry says which.

A requeue to a Service Bus queue cannot keep the MessageId: the queue's duplicate detection accepts
and silently drops a message whose MessageId it saw in the last 10 minutes, and a deploy request
dead-lettered that soon after its first send would be lost. It gets a new MessageId derived from the
dead letter (`requeue_message_id`): a repeated requeue of the same dead letter is still dropped as a
duplicate, a requeue is never taken for its original. Locally the same send goes through
`shared.bus`, i.e. through the stand-in's duplicate detection.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import asdict, dataclass

from shared import bus, storage
from shared.contracts import DEPLOY_QUEUE, FINETUNE_QUEUE

PEEK_LIMIT = 32  # storage queues show at most 32 messages without taking them
REQUEUE_LEASE_S = 30  # a storage dead letter being requeued is hidden this long from other readers
MESSAGE_ID_MAX = 128  # Service Bus refuses longer MessageIds
_REQUEUE_SUFFIX = re.compile(r"#requeue-[^#]*$")


def requeue_message_id(original: str | None, dead_letter: int | str) -> str:
    """The MessageId of a requeued message: the original's (less any earlier requeue suffix) plus
    `#requeue-<dead_letter>`, where `dead_letter` is what identifies that dead letter for good (its
    Service Bus sequence number; locally its storage message id). Same dead letter, same id."""
    suffix = f"#requeue-{dead_letter}"
    base = _REQUEUE_SUFFIX.sub("", original or "")
    return base[:MESSAGE_ID_MAX - len(suffix)] + suffix


class NoSuchDeadLetter(LookupError):
    pass


@dataclass(frozen=True)
class DeadLetter:
    source: str  # the queue the message came from (and goes back to)
    id: str
    reason: str
    function: str
    deliveries: int
    failed_at: str
    body: str  # the original message, as its trigger reads it
    message_id: str = ""  # its Service Bus MessageId, where it came from a Service Bus queue

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StorageDeadLetters:
    """A poison queue: the local host's envelope {reason, function, deliveries, failed_at, message}, or
    the real host's bare original body (its reason is only in the logs)."""
    source: str
    queue: str
    encoded: bool = True  # storage-queue triggers read base64
    requeue_to: str | None = None  # None: cannot be requeued as a message
    service_bus: bool = False  # the stand-in's dead letters: requeue with `shared.bus.send` and a new MessageId

    def _parse(self, msg) -> DeadLetter:
        raw = msg.content
        text = raw
        if self.encoded:
            try:
                text = base64.b64decode(raw, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                text = raw
        try:
            envelope = json.loads(text)
        except ValueError:
            envelope = None
        if isinstance(envelope, dict) and {"reason", "message"} <= set(envelope):
            return DeadLetter(self.source, msg.id, str(envelope["reason"]), str(envelope.get("function", "")),
                              int(envelope.get("deliveries") or msg.dequeue_count or 0), str(envelope.get("failed_at", "")),
                              str(envelope["message"]), str(envelope.get("message_id") or ""))
        failed = msg.inserted_on.isoformat() if getattr(msg, "inserted_on", None) else ""
        return DeadLetter(self.source, msg.id, "see the function's logs (the host records the reason there)", "",
                          int(msg.dequeue_count or 0), failed, text)

    def list(self) -> list[DeadLetter]:
        return [self._parse(m) for m in storage.queue(self.queue).peek_messages(max_messages=PEEK_LIMIT)]

    def requeue(self, message_id: str) -> DeadLetter:
        if self.requeue_to is None:
            raise NoSuchDeadLetter(f"{self.queue} holds blobs, not messages: fix the cause, then drop the blob again "
                                   f"(`tuneflow drop`), which triggers it anew")
        client = storage.queue(self.queue)
        for msg in client.receive_messages(max_messages=PEEK_LIMIT, visibility_timeout=REQUEUE_LEASE_S):
            if msg.id != message_id:
                client.update_message(msg, visibility_timeout=0)  # back at once for the next reader
                continue
            letter = self._parse(msg)
            if self.service_bus:  # the host's envelope names the MessageId; the real host's bare body does not
                bus.send(self.requeue_to, letter.body, requeue_message_id(letter.message_id or msg.id, msg.id))
            else:
                target = storage.queue(self.requeue_to)
                target.send_message(storage.encode_queue_message(letter.body) if self.encoded else letter.body)
            client.delete_message(msg)  # only after the send was accepted
            return letter
        raise NoSuchDeadLetter(f"no message {message_id} in {self.queue} (`tuneflow dead-letters list` shows them)")


@dataclass(frozen=True)
class ServiceBusDeadLetters:
    """The dead-letter sub-queue of a Service Bus queue (azure-servicebus, identity-based)."""
    source: str
    namespace: str

    def _client(self):
        from azure.servicebus import ServiceBusClient
        return ServiceBusClient(self.namespace, bus.credential())

    @staticmethod
    def _letter(source: str, msg) -> DeadLetter:
        reason = " ".join(filter(None, [msg.dead_letter_reason, msg.dead_letter_error_description]))
        return DeadLetter(source, str(msg.message_id), reason or "no reason recorded", "deploy",
                          int(msg.delivery_count or 0), msg.enqueued_time_utc.isoformat() if msg.enqueued_time_utc else "",
                          b"".join(msg.body).decode("utf-8") if not isinstance(msg.body, (str, bytes)) else
                          (msg.body.decode() if isinstance(msg.body, bytes) else msg.body), str(msg.message_id))

    def list(self) -> list[DeadLetter]:
        from azure.servicebus import ServiceBusSubQueue
        with self._client() as client, client.get_queue_receiver(self.source, sub_queue=ServiceBusSubQueue.DEAD_LETTER) as r:
            return [self._letter(self.source, m) for m in r.peek_messages(max_message_count=PEEK_LIMIT)]

    def requeue(self, message_id: str) -> DeadLetter:
        from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
        with self._client() as client, \
                client.get_queue_receiver(self.source, sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=5) as r, \
                client.get_queue_sender(self.source) as sender:
            for msg in r.receive_messages(max_message_count=PEEK_LIMIT, max_wait_time=5):
                if str(msg.message_id) != message_id:
                    r.abandon_message(msg)
                    continue
                letter = self._letter(self.source, msg)
                # The sequence number: assigned by the broker when the message was accepted, unique in the
                # entity and unchanged by dead-lettering; it names this dead letter for good.
                sender.send_messages(ServiceBusMessage(
                    letter.body, message_id=requeue_message_id(msg.message_id, msg.sequence_number),
                    content_type="application/json"))
                r.complete_message(msg)
                return letter
        raise NoSuchDeadLetter(f"no message {message_id} in the dead letters of {self.source}")


def service_bus_namespace() -> str:
    """The Service Bus namespace when one is set; "" locally (the stand-in's queues are in storage)."""
    namespace = os.environ.get(f"{bus.CONNECTION}__fullyQualifiedNamespace", "")
    return namespace if namespace and "<" not in namespace else ""


def sources() -> list:
    namespace = service_bus_namespace()
    deployments = (ServiceBusDeadLetters(DEPLOY_QUEUE, namespace) if namespace else
                   StorageDeadLetters(DEPLOY_QUEUE, f"{DEPLOY_QUEUE}-deadletter", encoded=False, requeue_to=DEPLOY_QUEUE,
                                      service_bus=True))
    return [StorageDeadLetters(FINETUNE_QUEUE, f"{FINETUNE_QUEUE}-poison", requeue_to=FINETUNE_QUEUE),
            StorageDeadLetters("datasets (blob trigger)", "webjobs-blobtrigger-poison"),
            deployments]


def list_all() -> list[DeadLetter]:
    return [letter for source in sources() for letter in source.list()]


def find(message_id: str) -> DeadLetter:
    for letter in list_all():
        if letter.id == message_id:
            return letter
    raise NoSuchDeadLetter(f"no dead letter {message_id} (`tuneflow dead-letters list` shows them)")


def requeue(message_id: str) -> DeadLetter:
    letter = find(message_id)
    source = next(s for s in sources() if s.source == letter.source)
    return source.requeue(message_id)
