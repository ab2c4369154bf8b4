"""The Service Bus stand-in (local/servicebus.py): an Azurite queue with Service Bus' duplicate
detection (a MessageId seen on the queue in the last 10 minutes is accepted and dropped), race-free
for concurrent senders, and a MessageId the trigger can read on every stored message."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest

from local.servicebus import DUPLICATE_WINDOW_S, ServiceBusStandIn, StandInMessage, decode
from shared import storage
from shared.settings import StorageConnection

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _received(queue: str) -> list[StandInMessage]:
    return [decode(m.content) for m in storage.queue(queue).receive_messages(max_messages=32)]


# (seconds after T0, queue, message id or None, expected: sent and kept)
@pytest.mark.parametrize("sends", [
    pytest.param([(0, "deployments", "m:1", True), (1, "deployments", "m:1", False)], id="repeat-in-window"),
    pytest.param([(0, "deployments", "m:1", True), (DUPLICATE_WINDOW_S - 1, "deployments", "m:1", False)],
                 id="repeat-at-the-window's-end"),
    pytest.param([(0, "deployments", "m:1", True), (DUPLICATE_WINDOW_S + 1, "deployments", "m:1", True),
                  (DUPLICATE_WINDOW_S + 2, "deployments", "m:1", False)], id="window-restarts-after-expiry"),
    pytest.param([(0, "deployments", None, True), (0, "deployments", None, True)], id="no-id-never-a-duplicate"),
    pytest.param([(0, "deployments", "m:1", True), (0, "other", "m:1", True)], id="per-queue"),
])
def test_duplicate_detection(storage_env, sends):
    clock = Clock()
    stand_in = ServiceBusStandIn(StorageConnection.from_env(), clock=clock)
    for at, queue, message_id, kept in sends:
        clock.now = T0 + at
        assert stand_in.send(queue, json.dumps({"at": at}), message_id) is kept
    assert stand_in.dropped == [m for _, _, m, kept in sends if not kept]
    for queue in {q for _, q, _, _ in sends}:
        kept = [(at, message_id) for at, q, message_id, kept in sends if q == queue and kept]
        got = _received(queue)
        assert [m.body for m in got] == [json.dumps({"at": at}) for at, _ in kept]
        assert [m.enqueued_at for m in got] == [datetime.fromtimestamp(T0 + at, timezone.utc) for at, _ in kept]
        for m, (_, message_id) in zip(got, kept):
            assert m.message_id == (message_id or str(uuid.UUID(m.message_id)))  # none given: a GUID
        assert len({m.message_id for m in got if m.message_id != "m:1"}) == len([1 for _, i in kept if i is None])


@pytest.mark.parametrize("seen_before", [False, True], ids=["first-send", "after-the-window"])
def test_concurrent_senders_of_one_message_id_enqueue_it_once(storage_env, seen_before):
    """Eight senders at once (a redelivered event, several host processes): exactly one is enqueued,
    both when the id is new (create-if-absent) and when its marker has expired (replace-if-unchanged)."""
    clock = Clock()
    stand_in = ServiceBusStandIn(StorageConnection.from_env(), clock=clock)
    if seen_before:
        stand_in.send("deployments", "first", "m:1")
        storage.queue("deployments").clear_messages()
        clock.now += DUPLICATE_WINDOW_S + 1
    start = threading.Barrier(8)

    def send(i: int) -> bool:
        start.wait(timeout=30)
        return stand_in.send("deployments", f"sender {i}", "m:1")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, range(8)))
    assert results.count(True) == 1 and sorted(stand_in.dropped) == ["m:1"] * 7
    [message] = _received("deployments")
    assert message.message_id == "m:1" and message.body == f"sender {results.index(True)}"


def test_a_send_that_fails_is_not_remembered(storage_env, monkeypatch):
    """Service Bus records a MessageId only for a message it accepted: the sender's retry must get through."""
    from azure.storage.queue import QueueClient
    real = QueueClient.send_message
    failures = []

    def flaky(self, *args, **kwargs):
        if not failures:
            failures.append(1)
            raise ConnectionError("storage unreachable")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(QueueClient, "send_message", flaky)
    stand_in = ServiceBusStandIn(StorageConnection.from_env())
    with pytest.raises(ConnectionError):
        stand_in.send("deployments", "body", "m:1")
    assert stand_in.send("deployments", "body", "m:1") is True
    assert [(m.message_id, m.body) for m in _received("deployments")] == [("m:1", "body")] and not stand_in.dropped


@pytest.mark.parametrize("raw, expected", [
    (json.dumps({"tuneflow_servicebus": 1, "message_id": "m:1", "body": "{\"a\": 1}",
                 "enqueued_at": "2026-11-26T01:00:00+00:00"}),
     StandInMessage("m:1", "{\"a\": 1}", datetime(2026, 11, 26, 1, tzinfo=timezone.utc))),
    ('{"model_name": "x"}', StandInMessage(None, '{"model_name": "x"}', None)),  # written straight into the queue
    ("not json", StandInMessage(None, "not json", None)),
    ('{"tuneflow_servicebus": 2, "body": "b"}', StandInMessage(None, '{"tuneflow_servicebus": 2, "body": "b"}', None)),
    ('{"tuneflow_servicebus": 1, "message_id": "m", "body": "b", "enqueued_at": "later"}', StandInMessage("m", "b", None)),
])
def test_decode(raw, expected):
    assert decode(raw) == expected
