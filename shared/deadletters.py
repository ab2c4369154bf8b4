"""What failed for good, why, and putting it back once the cause is fixed.

Three places hold messages the app gave up on:
  finetune-requests-poison     storage queue (base64), after `maxDequeueCount` failures of `submit`
  webjobs-blobtrigger-poison   storage queue, a blob the `data_arrival` trigger gave up on
  deployments (dead letters)   Service Bus' dead-letter sub-queue of `deployments`; locally the
                               stand-in queue `deployments-deadletter`

A requeue sends the original body back to its queue first and removes the dead letter only once
that send is accepted, so a crash in between can repeat a message but never lose one; a repeat is
harmless (every handler is idempotent, and a Service Bus requeue keeps the MessageId, which the
queue's duplicate detection recognizes). A blob is re-triggered by dropping it again: the poison
entry says which.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import asdict, dataclass

from shared import bus, storage
from shared.contracts import DEPLOY_QUEUE, FINETUNE_QUEUE

PEEK_LIMIT = 32  # storage queues show at most 32 messages without taking them


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
                              str(envelope["message"]))
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
        for msg in client.receive_messages(max_messages=PEEK_LIMIT, visibility_timeout=30):
            if msg.id != message_id:
                client.update_message(msg, visibility_timeout=0)  # back at once for the next reader
                continue
            letter = self._parse(msg)
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
                          (msg.body.decode() if isinstance(msg.body, bytes) else msg.body))

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
                # Same MessageId: the queue's duplicate detection drops a second requeue of the same message.
                sender.send_messages(ServiceBusMessage(letter.body, message_id=msg.message_id,
                                                       content_type="application/json"))
                r.complete_message(msg)
                return letter
        raise NoSuchDeadLetter(f"no message {message_id} in the dead letters of {self.source}")


def sources() -> list:
    namespace = os.environ.get("ServiceBusConnection__fullyQualifiedNamespace", "")
    deployments = (ServiceBusDeadLetters(DEPLOY_QUEUE, namespace) if namespace and "<" not in namespace else
                   StorageDeadLetters(DEPLOY_QUEUE, f"{DEPLOY_QUEUE}-deadletter", encoded=False, requeue_to=DEPLOY_QUEUE))
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
