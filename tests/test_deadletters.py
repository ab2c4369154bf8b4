"""tuneflow dead-letters: list what failed and why, show one, requeue it without loss or duplication
(Azurite: the storage poison queues and the local Service Bus stand-in's dead-letter queue)."""

from __future__ import annotations

import base64
import json

import pytest

from local.servicebus import ServiceBusStandIn, decode
from shared import bus, deadletters, storage
from shared.deadletters import requeue_message_id
from shared.settings import StorageConnection
from tests.conftest import wait_for
from tests.test_cli import tuneflow

REQUEST = json.dumps({"schema_version": 1, "flow_id": "1d5f5ba0-8598-5118-9f6d-5a45f4408403", "dataset": "ds",
                      "version": "0123456789abcdef", "params": {}})
DEPLOY = json.dumps({"schema_version": 1, "flow_id": "1d5f5ba0-8598-5118-9f6d-5a45f4408403", "dataset": "ds",
                     "version": "0123456789abcdef", "job": "ft-ds-01234567", "model_name": "m", "model_version": "1"})


def envelope(body: str, reason: str, function: str, **extra) -> str:
    """What the local host writes to a poison / dead-letter queue (see local/host.py)."""
    return json.dumps({"reason": reason, "function": function, "deliveries": 5, "failed_at": "2026-11-26T01:00:00Z",
                       "message": body, **extra})


def test_list_show_and_requeue(storage_env):
    poison = storage.queue("finetune-requests-poison")
    poison.send_message(base64.b64encode(envelope(REQUEST, "PreparedVersionMissing: prepared/ds/... does not exist",
                                                  "submit").encode()).decode())
    poison.send_message(storage.encode_queue_message(REQUEST))  # the real host: the bare body, reason in the logs
    storage.queue("deployments-deadletter").send_message(envelope(DEPLOY, "NotFound: model m:1", "deploy"))
    storage.queue("webjobs-blobtrigger-poison").send_message(base64.b64encode(
        envelope('{"container": "datasets", "blob": "ds/x.jsonl"}', "BlobChanged", "data_arrival").encode()).decode())

    res = tuneflow("dead-letters", "list", "--json")
    assert res.returncode == 0, res.stderr
    letters = json.loads(res.stdout)
    by_source = {}
    for x in letters:
        by_source.setdefault(x["source"], []).append(x)
    assert len(by_source["finetune-requests"]) == 2 and len(by_source["deployments"]) == 1
    wrapped = next(x for x in by_source["finetune-requests"] if x["function"] == "submit")
    assert wrapped["reason"].startswith("PreparedVersionMissing") and json.loads(wrapped["body"])["dataset"] == "ds"
    bare = next(x for x in by_source["finetune-requests"] if x["function"] == "")
    assert "logs" in bare["reason"] and bare["body"] == REQUEST

    shown = json.loads(tuneflow("dead-letters", "show", wrapped["id"]).stdout)
    assert shown == wrapped
    table = tuneflow("dead-letters", "list")
    assert table.returncode == 0 and "PreparedVersionMissing" in table.stdout

    # requeue: the original body goes back to its queue exactly once, then leaves the dead letters
    for letter in (wrapped, by_source["deployments"][0]):
        res = tuneflow("dead-letters", "requeue", letter["id"])
        assert res.returncode == 0 and f"requeued {letter['id']}" in res.stdout, res.stderr
    main = [base64.b64decode(m.content).decode() for m in storage.queue("finetune-requests").receive_messages(max_messages=32)]
    assert main == [REQUEST]
    [deploy] = [decode(m.content) for m in storage.queue("deployments").receive_messages(max_messages=32)]
    assert deploy.body == DEPLOY  # through the Service Bus stand-in, with a MessageId of its own
    assert deploy.message_id == requeue_message_id(by_source["deployments"][0]["id"], by_source["deployments"][0]["id"])
    left = {x["id"] for x in json.loads(tuneflow("dead-letters", "list", "--json").stdout)}
    assert wrapped["id"] not in left and bare["id"] in left
    again = tuneflow("dead-letters", "requeue", wrapped["id"])  # already requeued: nothing to duplicate
    assert again.returncode == 1 and "no dead letter" in again.stderr

    blob = by_source["datasets (blob trigger)"][0]
    res = tuneflow("dead-letters", "requeue", blob["id"])
    assert res.returncode == 1 and "drop the blob again" in res.stderr and len(res.stderr.strip().splitlines()) == 1


# -- requeue into a Service Bus queue: never dropped as a repeat of the original -------------------

def _dead_letter_the_deploy_request() -> str:
    """The first send of a deploy request (MessageId m:1), then what the host does when `deploy` fails
    for good: the body goes to the stand-in's dead-letter queue with its MessageId. Returns its id there."""
    ServiceBusStandIn(StorageConnection.from_env()).send("deployments", DEPLOY, "m:1")
    main = storage.queue("deployments")
    [msg] = main.receive_messages(max_messages=32)
    sent = decode(msg.content)
    dead = storage.queue("deployments-deadletter").send_message(
        envelope(sent.body, "NotFound: model m:1", "deploy", message_id=sent.message_id))
    main.delete_message(msg)
    return dead.id


def _marker_exists(message_id: str) -> bool:
    import hashlib
    return storage.exists(storage.container("azure-webjobs-hosts"),
                          f"servicebus-duplicates/deployments/{hashlib.sha256(message_id.encode()).hexdigest()}")


def test_a_deploy_request_dead_lettered_within_the_window_is_requeued(storage_env):
    """Within 10 minutes of the first send, a requeue that kept MessageId m:1 would be accepted and
    dropped by duplicate detection (in Azure, and by the stand-in): the deploy request lost."""
    dead_id = _dead_letter_the_deploy_request()
    res = tuneflow("dead-letters", "requeue", dead_id)
    assert res.returncode == 0 and f"requeued {dead_id}" in res.stdout, res.stderr
    arrived = [decode(m.content) for m in storage.queue("deployments").receive_messages(max_messages=32)]
    assert [m.body for m in arrived] == [DEPLOY], "the requeued deploy request did not arrive"
    new_id = requeue_message_id("m:1", dead_id)
    assert arrived[0].message_id == new_id != "m:1", "the requeue did not go through the Service Bus stand-in"
    assert _marker_exists(new_id)  # the stand-in's duplicate detection saw it
    assert storage.queue("deployments-deadletter").peek_messages(max_messages=32) == []


def test_a_requeue_repeated_after_a_crash_is_dropped_as_a_duplicate(storage_env, monkeypatch):
    """A crash between the send and removing the dead letter: the next requeue of that dead letter sends
    the same MessageId again, which duplicate detection drops (one deploy request, not two)."""
    from azure.storage.queue import QueueClient
    dead_id = _dead_letter_the_deploy_request()
    stand_in = ServiceBusStandIn(StorageConnection.from_env())
    monkeypatch.setattr(deadletters, "REQUEUE_LEASE_S", 1)
    real_delete = QueueClient.delete_message

    def crash_on_the_dead_letter(self, message, *args, **kwargs):
        if self.queue_name == "deployments-deadletter":
            raise RuntimeError("crashed before removing the dead letter")
        return real_delete(self, message, *args, **kwargs)

    bus.use(stand_in.send)
    try:
        with monkeypatch.context() as crash:
            crash.setattr(QueueClient, "delete_message", crash_on_the_dead_letter)
            with pytest.raises(RuntimeError):
                deadletters.requeue(dead_id)

        def requeue_again():
            try:
                return deadletters.requeue(dead_id)
            except deadletters.NoSuchDeadLetter:  # still hidden by the crashed requeue's lease
                return None
        wait_for(requeue_again, 30, "the dead letter to be visible again")
    finally:
        bus.use(None)
    new_id = requeue_message_id("m:1", dead_id)
    assert stand_in.dropped == [new_id]
    assert [decode(m.content).message_id for m in storage.queue("deployments").receive_messages(max_messages=32)] == [new_id]


@pytest.mark.parametrize("original, dead_letter, expected", [
    ("phi-3-tiny-ds:42", 7, "phi-3-tiny-ds:42#requeue-7"),
    ("phi-3-tiny-ds:42#requeue-7", 12, "phi-3-tiny-ds:42#requeue-12"),  # dead-lettered again after a requeue
    (None, "0b1c", "#requeue-0b1c"),
    ("m" * 200, 7, "m" * 118 + "#requeue-7"),  # Service Bus takes at most 128 characters
])
def test_the_requeue_message_id(original, dead_letter, expected):
    assert requeue_message_id(original, dead_letter) == expected
    assert requeue_message_id(original, dead_letter) == expected  # the same dead letter: the same id
    assert len(expected) <= 128 and expected != original


class _FakeServiceBus:
    """azure-servicebus' client surface as ServiceBusDeadLetters uses it: the dead-letter receiver (receive,
    abandon, complete) and a queue sender. Every attribute read from a message exists on the SDK's own
    ServiceBusReceivedMessage (checked below), so the fake cannot drift from the real type."""

    MESSAGE_FIELDS = ("message_id", "sequence_number", "body", "dead_letter_reason", "dead_letter_error_description",
                      "delivery_count", "enqueued_time_utc")

    def __init__(self, messages):
        self.messages, self.events = messages, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def get_queue_receiver(self, queue, sub_queue=None, max_wait_time=None):
        assert (queue, str(sub_queue.value if hasattr(sub_queue, "value") else sub_queue)) == ("deployments", "deadletter")
        return self

    def get_queue_sender(self, queue):
        assert queue == "deployments"
        return self

    def receive_messages(self, max_message_count=None, max_wait_time=None):
        return list(self.messages)

    def abandon_message(self, msg):
        self.events.append(("abandon", msg.message_id))

    def complete_message(self, msg):
        self.events.append(("complete", msg.message_id))

    def send_messages(self, message):
        self.events.append(("send", message))


def test_a_service_bus_requeue_gets_a_message_id_from_the_sequence_number(monkeypatch):
    from types import SimpleNamespace

    from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage
    assert all(hasattr(ServiceBusReceivedMessage, f) for f in _FakeServiceBus.MESSAGE_FIELDS)

    def dead(message_id, sequence_number):
        return SimpleNamespace(message_id=message_id, sequence_number=sequence_number, body=iter([DEPLOY.encode()]),
                               dead_letter_reason="MaxDeliveryCountExceeded", dead_letter_error_description=None,
                               delivery_count=10, enqueued_time_utc=None)
    fake = _FakeServiceBus([dead("other:1", 3), dead("m:1", 7)])
    monkeypatch.setattr(deadletters.ServiceBusDeadLetters, "_client", lambda self: fake)
    letter = deadletters.ServiceBusDeadLetters("deployments", "sb-x.servicebus.windows.net").requeue("m:1")
    abandoned, sent, completed = fake.events
    assert isinstance(sent[1], ServiceBusMessage) and sent[1].message_id == "m:1#requeue-7"
    assert b"".join(sent[1].body) == DEPLOY.encode() and letter.body == DEPLOY
    assert abandoned == ("abandon", "other:1") and completed == ("complete", "m:1")  # completed only after the send
