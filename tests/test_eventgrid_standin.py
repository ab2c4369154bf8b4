"""The Event Grid stand-in (local/eventgrid.py), publisher side, against a webhook receiver in the test.

Delivery: 30 s answer timeout with a retry while the first request still runs, the retry schedule,
the codes dead-lettered at once, max attempts and time-to-live. The BlobCreated publisher: the
subscription's start, at-least-once across restarts and crashes, new versions, duplicates on demand,
concurrent deliveries. Every duration is scaled down (RetryPolicy.scaled) so this runs in seconds.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from local.eventgrid import (DEAD_LETTER_CONTAINER, STATE_CONTAINER, BlobEventPublisher, RetryPolicy,
                             SubscriptionValidationError, deliver)
from tests.conftest import reference_events, wait_for
from tests.webhook import Receiver

# 30 s timeout -> 0.6 s; schedule 10 s, 30 s, 1 min, ... -> 0.2 s, 0.6 s, 1.2 s, ...
FAST = RetryPolicy().scaled(0.02)
JITTER = 0.05  # the receiver notes a request when its thread runs, a little after it arrived
EVENTS = [{"id": "e1", "eventType": "Test.Event", "subject": "s", "data": {"n": 1}, "eventTime": "2026-01-01T00:00:00Z",
           "topic": "t", "dataVersion": "", "metadataVersion": "1"}]


@pytest.fixture(autouse=True)
def no_threads_left():
    before = set(threading.enumerate())
    yield
    left = [t.name for t in set(threading.enumerate()) - before if t.name.startswith("eventgrid-") or not t.daemon]
    assert not left, f"threads left running: {left}"


def dead_letters() -> list[tuple[str, list[dict]]]:
    from shared import storage
    c = storage.container(DEAD_LETTER_CONTAINER)
    return [(b.name, json.loads(c.download_blob(b.name).readall())) for b in c.list_blobs()]


# -- deliver -----------------------------------------------------------------------------------

def test_an_answer_slower_than_30s_is_retried_while_the_first_request_still_runs():
    with Receiver(lambda n, events: receiver.hold() or 202 if n == 0 else 202) as receiver:
        result = deliver(receiver.url, EVENTS, policy=FAST)
        assert result.delivered and result.attempts == 2
        assert result.history == [("TimedOut", None), ("Succeeded", 202)]
        first, second = receiver.requests
        assert first["finished"] is None, "the retry went out while the first request was still running"
        assert receiver.max_active == 2
        # the retry waited the answer timeout, then the schedule's first step (less the receiver's jitter)
        assert second["at"] - first["at"] >= FAST.timeout_s + FAST.schedule[0] - JITTER
        assert first["headers"]["aeg-event-type"] == "Notification"
        assert first["headers"]["content-type"] == "application/json"
        assert first["events"] == second["events"] == EVENTS


@pytest.mark.parametrize("status,reason", [
    (400, "UndeliverableDueToHttpBadRequest"),
    (401, "UndeliverableDueToClientError"),
    (403, "UndeliverableDueToClientError"),
    (413, "UndeliverableDueToClientError"),
])
def test_answers_event_grid_does_not_retry_are_dead_lettered_at_once(storage_env, status, reason):
    with Receiver(lambda n, events: status) as receiver:
        result = deliver(receiver.url, EVENTS, subscription="tuneflow-job-events",
                         policy=RetryPolicy(max_attempts=3).scaled(0.02))  # a retry would show as 3 attempts
    assert (result.outcome, result.attempts, result.dead_letter_reason) == ("DeadLettered", 1, reason)
    assert len(receiver.requests) == 1
    [(name, body)] = dead_letters()
    assert name == result.dead_letter_blob and name.startswith("TUNEFLOW-JOB-EVENTS/") and name.endswith(".json")
    assert len(name.split("/")) == 6  # SUBSCRIPTION/y/m/d/h/uuid.json
    [event] = body
    assert {k: event[k] for k in EVENTS[0]} == EVENTS[0]
    assert (event["deadLetterReason"], event["deliveryAttempts"], event["lastHttpStatusCode"]) == (reason, 1, status)


@pytest.mark.parametrize("answers,max_attempts,ttl_s,outcome,attempts,reason", [
    # 5xx retried on the schedule until the attempts run out
    ([500], 4, 3600, "DeadLettered", 4, "MaxDeliveryAttemptsExceeded"),
    # a 503, a 404, then accepted
    ([503, 404, 202], 30, 3600, "Delivered", 3, None),
    # the next retry would come after the event's time-to-live: dead-lettered instead
    ([500], 30, 25, "DeadLettered", 2, "TimeToLiveExceeded"),  # 0.5 s scaled
])
def test_other_failures_are_retried_on_event_grids_schedule(storage_env, answers, max_attempts, ttl_s, outcome,
                                                             attempts, reason):
    policy = RetryPolicy(max_attempts=max_attempts, ttl_s=ttl_s).scaled(0.02)
    with Receiver(lambda n, events: answers[min(n, len(answers) - 1)]) as receiver:
        result = deliver(receiver.url, EVENTS, policy=policy)
    assert (result.outcome, result.attempts, result.dead_letter_reason) == (outcome, attempts, reason)
    arrivals = [r["at"] for r in receiver.requests]
    assert len(arrivals) == attempts
    for i, (a, b) in enumerate(zip(arrivals, arrivals[1:])):
        assert b - a >= policy.schedule[i] - JITTER, f"retry {i + 1} came {b - a:.2f}s after, not {policy.schedule[i]}s"
    assert [name for name, _ in dead_letters()] == ([result.dead_letter_blob] if reason else [])


# -- BlobEventPublisher ------------------------------------------------------------------------

def upload(name: str, data: bytes = b"{}", staged: bool = False) -> str:
    from azure.storage.blob import BlobBlock

    from shared import storage
    client = storage.container("datasets").get_blob_client(name)
    if staged:
        client.stage_block("YmxvY2s=", data)
        client.commit_block_list([BlobBlock("YmxvY2s=")])
    else:
        client.upload_blob(data, overwrite=True)
    return client.get_blob_properties().etag.strip('"')


def publisher(receiver, **kwargs) -> BlobEventPublisher:
    kwargs.setdefault("policy", FAST)
    kwargs.setdefault("poll_interval", 0.05)
    return BlobEventPublisher(receiver.url, **kwargs)


def test_blob_created_events_as_azure_publishes_them_and_never_for_blobs_older_than_the_subscription(storage_env):
    upload("before/old.jsonl")
    with Receiver() as receiver, publisher(receiver):
        etag = upload("chat/new.jsonl", b'{"a": 1}\n')
        staged_etag = upload("chat/big.parquet", b"x" * 10, staged=True)
        wait_for(lambda: len(receiver.requests) >= 2, 30, "both new blobs to be published")
        by_name = {r["events"][0]["subject"]: r for r in receiver.requests}
    assert sorted(receiver.subjects()) == ["chat/big.parquet", "chat/new.jsonl"]
    assert all(len(r["events"]) == 1 for r in receiver.requests)  # maxEventsPerBatch 1 (the default)
    assert all(r["headers"]["aeg-event-type"] == "Notification" for r in receiver.requests)

    [reference] = reference_events("storage-blob-created.eventgrid.json")
    event = by_name["/blobServices/default/containers/datasets/blobs/chat/new.jsonl"]["events"][0]
    assert event.keys() == reference.keys() and event["data"].keys() == reference["data"].keys()
    assert event["eventType"] == "Microsoft.Storage.BlobCreated"
    assert event["topic"].endswith("/providers/Microsoft.Storage/storageAccounts/devstoreaccount1")
    assert (event["dataVersion"], event["metadataVersion"]) == ("", "1")
    assert event["eventTime"].endswith("Z") and len(event["eventTime"]) == len(reference["eventTime"])
    data = event["data"]
    assert (data["api"], data["eTag"], data["contentLength"], data["blobType"]) == ("PutBlob", etag, 9, "BlockBlob")
    assert data["url"].endswith("/devstoreaccount1/datasets/chat/new.jsonl")
    assert len(data["sequencer"]) == len(reference["data"]["sequencer"])
    staged = by_name["/blobServices/default/containers/datasets/blobs/chat/big.parquet"]["events"][0]["data"]
    assert (staged["api"], staged["eTag"]) == ("PutBlockList", staged_etag)


def test_restart_publishes_what_arrived_while_stopped_and_not_what_was_delivered(storage_env):
    upload("old.jsonl")
    with Receiver() as receiver:
        with publisher(receiver):
            upload("a.jsonl")
            wait_for(lambda: receiver.subjects() == ["a.jsonl"], 30, "a.jsonl to be published")
        upload("b.jsonl")  # while no publisher runs
        with publisher(receiver) as second:
            wait_for(lambda: len(receiver.requests) >= 2, 30, "b.jsonl to be published after the restart")
            second.poll()  # one more full scan after the restart
            wait_for(lambda: not second.in_flight, 30, "the scan's deliveries to finish")
        assert receiver.subjects() == ["a.jsonl", "b.jsonl"]


def test_a_crash_between_the_answer_and_the_mark_publishes_again(storage_env, monkeypatch):
    crashed = threading.Event()

    def crash(self, key, event, delivery):
        crashed.set()
        raise RuntimeError("process killed before the mark was written")

    with Receiver() as receiver:
        with monkeypatch.context() as m:
            m.setattr(BlobEventPublisher, "_mark_done", crash)
            with publisher(receiver, poll_interval=3600) as first:  # scans only when told, then "crashes"
                upload("a.jsonl")
                first.poll()
                wait_for(crashed.is_set, 30, "the delivery to be answered")
                wait_for(lambda: len(receiver.requests) == 1 and receiver.requests[0]["finished"], 30, "the answer")
        with publisher(receiver):
            wait_for(lambda: len(receiver.requests) >= 2, 30, "the event to be published again")
        assert receiver.subjects() == ["a.jsonl", "a.jsonl"]
        assert len(set(receiver.ids())) == 1  # the same event, as an Event Grid retry


def test_a_new_version_of_a_blob_is_published_again(storage_env):
    with Receiver() as receiver, publisher(receiver):
        first = upload("a.jsonl", b"1")
        wait_for(lambda: len(receiver.requests) == 1, 30, "the first version")
        second = upload("a.jsonl", b"22")
        wait_for(lambda: len(receiver.requests) == 2, 30, "the overwrite")
    assert [r["events"][0]["data"]["eTag"] for r in receiver.requests] == [first, second]
    assert len(set(receiver.ids())) == 2


def test_redelivery_knobs_deliver_the_same_event_twice(storage_env):
    with Receiver() as receiver, publisher(receiver, redeliver_probability=1.0, seed=7) as pub:
        upload("a.jsonl")
        wait_for(lambda: len(receiver.requests) == 2, 30, "the event and its duplicate")
        assert pub.redeliver("a.jsonl").result(timeout=30).delivered
        assert len(receiver.requests) == 3
    assert len(set(receiver.ids())) == 1
    assert [d.outcome for _, _, d in pub.deliveries] == ["Delivered"] * 3


def test_redelivery_probability_is_seeded():
    decisions = []
    for _ in range(2):
        pub = BlobEventPublisher("http://unused", redeliver_probability=0.5, seed=42)
        decisions.append([pub._rng.random() < pub.redeliver_probability for _ in range(20)])
    assert decisions[0] == decisions[1] and 0 < sum(decisions[0]) < 20


def test_a_refused_event_is_dead_lettered_and_not_published_again_after_restart(storage_env):
    with Receiver(lambda n, events: 400) as receiver:
        with publisher(receiver) as pub:
            upload("bad.jsonl")
            wait_for(lambda: pub.deliveries, 30, "the refused delivery")
        with publisher(receiver) as again:
            again.poll()
            wait_for(lambda: not again.in_flight, 30, "the scan to finish")
        assert receiver.subjects() == ["bad.jsonl"]
    [(name, [event])] = dead_letters()
    assert name.startswith("TUNEFLOW-DATASETS/") and event["deadLetterReason"] == "UndeliverableDueToHttpBadRequest"
    assert event["subject"].endswith("/blobs/bad.jsonl")


def test_different_blobs_are_delivered_concurrently(storage_env):
    both = threading.Event()

    def answer(n, events):
        with receiver._lock:
            if receiver.active >= 3:
                both.set()
        both.wait(10)  # answered only once three requests are in flight together
        return 202

    with Receiver(answer) as receiver, publisher(receiver, policy=RetryPolicy().scaled(0.5)) as pub:
        for i in range(3):
            upload(f"d{i}.jsonl")
        wait_for(lambda: len(pub.deliveries) == 3, 30, "three deliveries")
    assert receiver.max_active == 3
    assert [d.attempts for _, _, d in pub.deliveries] == [1, 1, 1]


def handshake(n, events):
    """A webhook that answers Event Grid's validation handshake (and accepts every event)."""
    if events[0]["eventType"] == "Microsoft.EventGrid.SubscriptionValidationEvent":
        return 200, json.dumps({"validationResponse": events[0]["data"]["validationCode"]}).encode()
    return 202


def test_creating_the_subscription_validates_the_webhook_once(storage_env):
    from shared import storage
    with Receiver(handshake) as receiver:
        with publisher(receiver, validate=True):
            upload("a.jsonl")
            wait_for(lambda: len(receiver.requests) == 2, 30, "the handshake, then the event")
        with publisher(receiver, validate=True) as again:  # a restart: the subscription exists already
            again.poll()
            wait_for(lambda: not again.in_flight, 30, "the scan to finish")
    [validation, event] = receiver.requests
    assert validation["headers"]["aeg-event-type"] == "SubscriptionValidation"
    assert validation["events"][0]["eventType"] == "Microsoft.EventGrid.SubscriptionValidationEvent"
    assert event["headers"]["aeg-event-type"] == "Notification"
    assert storage.exists(storage.container(STATE_CONTAINER), "tuneflow-datasets/subscription.json")


def test_a_webhook_that_fails_the_handshake_gets_no_subscription(storage_env):
    from shared import storage
    with Receiver(lambda n, events: 202) as receiver:
        with pytest.raises(SubscriptionValidationError):
            publisher(receiver, validate=True).start()
    assert not storage.exists(storage.container(STATE_CONTAINER), "tuneflow-datasets/subscription.json")


@pytest.mark.parametrize("status,delivered,dead_lettered", [(202, True, False), (400, False, True)])
def test_finished_jobs_post_their_event_like_event_grid(storage_env, status, delivered, dead_lettered):
    from local.platform import post_event
    with Receiver(lambda n, events: status) as receiver:
        assert post_event(receiver.url, EVENTS, deadline_s=5) is delivered
    assert len(receiver.requests) == 1  # a 400 is not retried
    assert [name.split("/")[0] for name, _ in dead_letters()] == (["TUNEFLOW-JOB-EVENTS"] if dead_lettered else [])
