"""The local host behaves like the real Functions host (issue 12): concurrency per trigger with the
limits of host.json, trigger arguments as the library's converters build them, blob events without
receipts, storage queue details and the Event Grid webhook's rules. Runs a probe app
(tests/hostapp.py) whose functions wait until the test releases them."""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request

import azure.functions as func
import pytest

from tests.conftest import invocations, reference_events, wait_for
from tests.hostapp import probe

pytestmark = pytest.mark.integration


@pytest.fixture
def probe_host(storage_env, tmp_path, monkeypatch):
    """Start the local host on the probe app with a host.json `extensions` section of the test's choosing."""
    from local.host import LocalHost
    monkeypatch.delenv("TUNEFLOW_EVENTS_URL", raising=False)
    hosts = []

    def start(extensions: dict | None = None, threads: int = 32, event_grid: bool = False):
        project = tmp_path / f"project{len(hosts)}"
        project.mkdir()
        (project / "host.json").write_text(json.dumps({"version": "2.0", "extensions": extensions or {}}))
        monkeypatch.setenv("PYTHON_THREADPOOL_THREAD_COUNT", str(threads))
        h = LocalHost(app_module="tests.hostapp", project_dir=project, port=0, poll_interval=0.05,
                      invocations_log=project / "invocations.jsonl", settings_file="none.json", event_grid=event_grid)
        hosts.append(h.start())
        return h

    yield start
    probe.release.set()
    for h in hosts:
        h.stop()
    probe.reset()


def _post(url: str, body, event_type: str | None = "Notification", raw: bytes | None = None):
    headers = {"Content-Type": "application/json", **({"aeg-event-type": event_type} if event_type else {})}
    req = urllib.request.Request(url, data=raw if raw is not None else json.dumps(body).encode(), method="POST",
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _in_background(fn, *args):
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("value", fn(*args)), daemon=True)
    t.start()
    return t, result


def _eg_url(host, name: str = "eg") -> str:
    return f"{host.base_url}/runtime/webhooks/EventGrid?functionName={name}"


def _blob_url(host, name: str = "Host.Functions.b") -> str:
    return f"{host.base_url}/runtime/webhooks/blobs?functionName={name}"


def _event(i: int = 0, **overrides) -> dict:
    return {"id": f"e{i}", "eventType": "Probe.Happened", "subject": f"probe/{i}", "topic": "/probe",
            "eventTime": "2026-12-01T10:00:00.1234567Z", "data": {"i": i}, "dataVersion": "1", **overrides}


def _blob_created(container: str, name: str) -> list[dict]:
    event = reference_events("storage-blob-created.eventgrid.json")
    event[0]["subject"] = f"/blobServices/default/containers/{container}/blobs/{name}"
    return event


def _queue(name: str):
    from shared import storage
    return storage.queue(name)


def _peek(name: str) -> list[str]:
    return [m.content for m in _queue(name).peek_messages(max_messages=32)]


def _poisoned(name: str) -> list[dict]:
    return [json.loads(base64.b64decode(m)) for m in _peek(name)]


def _upload(container: str, name: str, data: bytes = b"{}") -> None:
    from shared import storage
    storage.container(container).upload_blob(name, data, overwrite=True)


# -- 1. concurrency -------------------------------------------------------------------------------

def test_a_queue_trigger_runs_batch_size_plus_new_batch_threshold_at_once(probe_host):
    from shared import storage
    probe.reset(hold=True)
    for i in range(10):
        storage.send_queue_message("probe-q", f"m{i}")
    host = probe_host({"queues": {"batchSize": 3, "newBatchThreshold": 3}})
    wait_for(lambda: probe.running("q") == 6, 60, "six queue invocations at once (3 + 3)")
    assert len(_peek("probe-q")) == 4, "no batch is fetched while more than newBatchThreshold run"
    probe.release.set()
    wait_for(lambda: len(invocations(host, "q", "Succeeded")) == 10, 60, "all ten messages")
    assert probe.peak["q"] == 6


def test_service_bus_runs_max_concurrent_calls_at_once_and_hands_over_message_id(probe_host):
    probe.reset(hold=True)
    host = probe_host({"serviceBus": {"maxConcurrentCalls": 3}})
    for i in range(5):
        host.service_bus.send("probe-sb", json.dumps({"i": i}), f"id-{i}")
    wait_for(lambda: probe.running("sb") == 3, 60, "three Service Bus invocations at once")
    probe.release.set()
    wait_for(lambda: len(invocations(host, "sb", "Succeeded")) == 5, 60, "all five messages")
    assert probe.peak["sb"] == 3
    messages = probe.args("sb")
    assert all(isinstance(m, func.ServiceBusMessage) for m in messages)
    assert sorted(m.message_id for m in messages) == [f"id-{i}" for i in range(5)]
    assert {m.delivery_count for m in messages} == {1} and all(m.enqueued_time_utc for m in messages)


def test_the_events_of_one_event_grid_delivery_run_in_parallel(probe_host):
    probe.reset(hold=True)
    host = probe_host()
    t, answer = _in_background(_post, _eg_url(host), [_event(i) for i in range(3)])
    wait_for(lambda: probe.running("eg") == 3, 60, "the three events of one delivery at once")
    probe.release.set()
    t.join(60)
    assert answer["value"][0] == 202


def test_blob_events_run_at_max_degree_of_parallelism(probe_host):
    from local.listeners import blob_trigger_queue
    probe.reset(hold=True)
    work = _queue(blob_trigger_queue("tuneflow-local"))
    for i in range(5):  # five delivered events waiting in the host's blob-trigger queue
        _upload("probe-drop", f"f{i}.json")
        work.send_message(base64.b64encode(json.dumps({
            "FunctionId": "Host.Functions.b", "ContainerName": "probe-drop", "BlobName": f"f{i}.json"}).encode()).decode())
    host = probe_host({"blobs": {"maxDegreeOfParallelism": 4}})
    wait_for(lambda: probe.running("b") == 3, 60, "a first batch of mdop / 2 + 1 = 3")
    assert len(_peek(blob_trigger_queue("tuneflow-local"))) == 2, "no new batch while more than mdop - batch run"
    probe.release.set()
    wait_for(lambda: len(invocations(host, "b", "Succeeded")) == 5, 60, "all five blobs")
    assert probe.peak["b"] <= 4


def test_event_grid_delivers_again_while_a_run_outlasts_its_answer_timeout(probe_host):
    from local.eventgrid import RetryPolicy, deliver
    probe.reset(hold=True)
    host = probe_host()
    policy = RetryPolicy(timeout_s=0.5, schedule=(0.5,), max_attempts=30, ttl_s=60)  # Event Grid's 30 s, scaled
    t, delivery = _in_background(lambda: deliver(_eg_url(host), [_event(7)], policy=policy))
    wait_for(lambda: probe.running("eg") == 2, 60, "the redelivery to run beside the first, slow run")
    probe.release.set()
    t.join(60)
    assert delivery["value"].delivered and delivery["value"].attempts >= 2
    assert {e.id for e in probe.args("eg")} == {"e7"}


def test_the_worker_thread_pool_bounds_all_invocations(probe_host):
    probe.reset(hold=True)
    host = probe_host(threads=2)
    t, _ = _in_background(_post, _eg_url(host), [_event(i) for i in range(4)])
    wait_for(lambda: probe.running("eg") == 2, 60, "two invocations (the pool's size)")
    assert host.config.worker_threads == 2 and probe.total_peak == 2
    probe.release.set()
    t.join(60)
    assert probe.total_peak == 2


def test_default_limits_are_the_extensions_defaults(tmp_path, monkeypatch):
    from local.host import HostConfig
    monkeypatch.delenv("PYTHON_THREADPOOL_THREAD_COUNT", raising=False)
    (tmp_path / "host.json").write_text(json.dumps({"extensions": {"queues": {"batchSize": 4}}}))
    config = HostConfig.from_host_json(tmp_path / "host.json", cores=2)
    assert (config.queue_batch_size + config.queue_new_batch_threshold, config.service_bus_max_concurrent_calls,
            config.blob_parallelism, config.poison_blob_threshold, config.worker_threads) == (8, 32, 16, 5, 6)


@pytest.mark.parametrize("kind", ["q", "sb"])
def test_a_run_longer_than_its_lease_keeps_its_message_hidden_and_runs_once(probe_host, monkeypatch, kind):
    """The host renews a running message's lease at half its length: without that, a run longer than the
    lease is handed to a second invocation while the first goes on."""
    from shared import storage
    monkeypatch.setenv("TUNEFLOW_LOCAL_LEASE_S", "2")
    probe.reset(hold=True)
    host = probe_host()
    if kind == "q":
        storage.send_queue_message("probe-q", "long")
    else:
        host.service_bus.send("probe-sb", "long", "long-1")
    wait_for(lambda: probe.running(kind) == 1, 60, "the run to start")
    queue = "probe-q" if kind == "q" else "probe-sb"
    import time
    deadline = time.monotonic() + 7  # three and a half leases
    while time.monotonic() < deadline:
        assert len(probe.args(kind)) == 1, "the message was handed out again while its run went on"
        assert _peek(queue) == [], "the running message became visible"
        time.sleep(0.2)
    probe.release.set()
    wait_for(lambda: len(invocations(host, kind, "Succeeded")) == 1, 60, "the run to end")
    wait_for(lambda: not list(_queue(queue).peek_messages()), 30, "the message to be completed")
    assert len(probe.args(kind)) == 1


def test_a_message_taken_over_after_its_lease_ran_out_is_left_to_its_new_receiver(probe_host, monkeypatch, caplog):
    """Renewals failed (storage was unreachable) and the lease ran out: the message was handed out again,
    and the first run's delete meets a pop receipt that no longer matches. As the host does, that is the
    new receiver's message now: no error, and the new receiver completes it."""
    import logging

    from local import listeners
    from shared import storage
    monkeypatch.setenv("TUNEFLOW_LOCAL_LEASE_S", "2")
    monkeypatch.setattr(listeners._Leases, "renew_due", lambda self: None)
    probe.reset(hold=True)
    host = probe_host()
    storage.send_queue_message("probe-q", "taken")
    wait_for(lambda: len(probe.args("q")) == 2, 60, "the message to be handed out again")
    with caplog.at_level(logging.INFO, logger="tuneflow.host"):
        probe.release.set()
        wait_for(lambda: len(invocations(host, "q", "Succeeded")) == 2, 60, "both runs to end")
        wait_for(lambda: not list(_queue("probe-q").peek_messages()), 30, "the message to be completed")
        # the second settle may come after the queue is already empty (the first delete emptied it)
        wait_for(lambda: "taken over by another receiver" in caplog.text, 30, "the stale settle to be let go")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


# -- 2. blob trigger through Event Grid: no receipts -------------------------------------------------

def test_every_delivered_blob_event_runs_the_function(probe_host):
    host = probe_host()
    _upload("probe-drop", "twice.json")
    for _ in range(2):  # an Event Grid redelivery
        assert _post(_blob_url(host), _blob_created("probe-drop", "twice.json"))[0] == 202
    wait_for(lambda: len(invocations(host, "b", "Succeeded")) == 2, 60, "both deliveries to run the function")
    assert {c.blob_name for c in probe.args("b")} == {"twice.json"}


@pytest.mark.parametrize("blobs, runs", [({}, 5), ({"poisonBlobThreshold": 2}, 2)], ids=["default-5", "host.json-2"])
def test_a_failing_blob_goes_to_the_poison_queue_after_poison_blob_threshold(probe_host, blobs, runs):
    """The host moves it there itself, after poisonBlobThreshold runs (5 by default), not the queues'
    maxDequeueCount (here 9)."""
    probe.reset(fail=lambda name, arg: True)
    host = probe_host({"queues": {"maxDequeueCount": 9, "visibilityTimeout": "00:00:00"}, "blobs": blobs})
    _upload("probe-drop", "bad.json")
    _post(_blob_url(host), _blob_created("probe-drop", "bad.json"))
    poison = wait_for(lambda: _poisoned("webjobs-blobtrigger-poison"), 60, "the blob poison queue")
    assert poison[0]["deliveries"] == runs and "failed as the test asked" in poison[0]["reason"]
    assert json.loads(poison[0]["message"])["blob"] == "bad.json"
    assert len(invocations(host, "b")) == runs


def test_a_blob_deleted_before_its_event_runs_nothing(probe_host):
    host = probe_host()
    _upload("probe-drop", "kept.json")
    _post(_blob_url(host), _blob_created("probe-drop", "gone.json"))
    _post(_blob_url(host), _blob_created("probe-drop", "kept.json"))
    wait_for(lambda: invocations(host, "b"), 60, "the blob that exists")
    wait_for(lambda: not _peek("azure-webjobs-blobtrigger-tuneflow-local"), 60, "both work items settled")
    assert [c.blob_name for c in probe.args("b")] == ["kept.json"]


def test_the_event_path_is_not_checked_against_the_trigger_path(probe_host):
    host = probe_host()  # the trigger watches probe-drop/{name}; the event names another container
    _upload("elsewhere", "odd.json")
    assert _post(_blob_url(host), _blob_created("elsewhere", "odd.json"))[0] == 202
    wait_for(lambda: invocations(host, "b", "Succeeded"), 60, "the function to run anyway")
    assert [(c.container_name, c.blob_name) for c in probe.args("b")] == [("elsewhere", "odd.json")]


def test_blobs_that_existed_before_the_subscription_are_never_processed(probe_host):
    _upload("probe-drop", "early.json")
    host = probe_host(event_grid=True)
    _upload("probe-drop", "late.json")
    wait_for(lambda: invocations(host, "b", "Succeeded"), 60, "the blob uploaded after the start")
    assert [c.blob_name for c in probe.args("b")] == ["late.json"]


# -- 5. what the function is handed ----------------------------------------------------------------

def test_a_cloudevents_delivery_is_a_cloud_event_and_an_event_grid_one_an_event_grid_event(probe_host):
    host = probe_host()
    cloud = {"specversion": "1.0", "id": "c1", "source": "/probe", "type": "Probe.Happened",
             "time": "2026-12-01T10:00:00Z", "subject": "probe/c1", "data": {"i": 1}}
    assert _post(_eg_url(host), [cloud])[0] == 202
    assert _post(_eg_url(host), [_event(2)])[0] == 202
    first, second = probe.args("eg")
    assert isinstance(first, func.CloudEvent) and first.type == "Probe.Happened" and first.source == "/probe"
    assert isinstance(second, func.EventGridEvent) and second.event_type == "Probe.Happened"
    assert second.event_time.microsecond == 123456  # seven fractional digits, as the library trims them


def test_a_delivery_whose_function_fails_is_answered_500_so_event_grid_delivers_it_again(probe_host):
    probe.reset(fail=lambda name, arg: arg.subject == "probe/1")
    host = probe_host()
    status, body = _post(_eg_url(host), [_event(0), _event(1)])
    assert status == 500 and "failed as the test asked" in body["error"]
    assert sorted(e.subject for e in probe.args("eg")) == ["probe/0", "probe/1"]  # both ran
    probe.reset()
    status, _ = _post(_eg_url(host), [_event(0), _event(1)])
    assert status == 202


def test_an_event_time_the_library_cannot_read_fails_the_delivery(probe_host):
    host = probe_host()
    status, body = _post(_eg_url(host), [_event(1, eventTime="2026-12-01T11:00:00+01:00")])
    assert status == 500 and "cannot be decoded" in body["error"]
    assert probe.args("eg") == []


def test_a_queue_message_carries_dequeue_count_and_timestamps(probe_host):
    from shared import storage
    probe.reset(fail=lambda name, arg: arg.dequeue_count == 1)
    host = probe_host({"queues": {"visibilityTimeout": "00:00:00"}})
    storage.send_queue_message("probe-q", "hello")
    wait_for(lambda: invocations(host, "q", "Succeeded"), 60, "the retry to succeed")
    first, second = probe.args("q")
    assert (first.dequeue_count, second.dequeue_count) == (1, 2) and first.id == second.id
    assert first.insertion_time and first.expiration_time and first.get_body() == b"hello"


# -- 10. storage queue details ---------------------------------------------------------------------

def test_a_body_that_is_not_base64_is_poisoned_at_once_without_running(probe_host):
    host = probe_host({"queues": {"maxDequeueCount": 5, "visibilityTimeout": "00:00:00"}})
    _queue("probe-q").send_message("%%% not base64 %%%")
    poison = wait_for(lambda: _poisoned("probe-q-poison"), 60, "the poison queue")
    assert poison[0]["deliveries"] == 1 and "not base64" in poison[0]["reason"]
    assert invocations(host, "q") == []


def test_a_message_dequeued_past_the_maximum_is_poisoned_without_running(probe_host):
    q = _queue("probe-q")
    q.send_message(base64.b64encode(b"crashed twice").decode())
    for _ in range(2):  # two runs that died without completing the message
        msg = next(iter(q.receive_messages(visibility_timeout=30)))
        q.update_message(msg, visibility_timeout=0)
    host = probe_host({"queues": {"maxDequeueCount": 2}})
    poison = wait_for(lambda: _poisoned("probe-q-poison"), 60, "the poison queue")
    assert poison[0]["message"] == "crashed twice" and "more than maxDequeueCount 2" in poison[0]["reason"]
    assert invocations(host, "q") == []


def test_one_failing_message_never_stops_the_listener(probe_host, monkeypatch):
    from shared import storage
    host = probe_host({"queues": {"visibilityTimeout": "00:00:00"}})
    calls = []

    def poison_fails_once(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("storage unreachable")
    monkeypatch.setattr(host, "poison", poison_fails_once)
    _queue("probe-q").send_message("%%% not base64 %%%")
    wait_for(lambda: calls, 60, "the poison attempt")
    storage.send_queue_message("probe-q", "after")
    wait_for(lambda: invocations(host, "q", "Succeeded"), 60, "the next message to run")


# -- 11. webhooks ------------------------------------------------------------------------------------

def test_the_handshake_is_decided_by_the_aeg_event_type_header(probe_host):
    host = probe_host()
    validation = reference_events("subscription-validation.eventgrid.json")
    status, body = _post(_eg_url(host), validation, event_type="SubscriptionValidation")
    assert status == 200 and body == {"validationResponse": validation[0]["data"]["validationCode"]}
    # The same body delivered as a notification is an event like any other: the function runs.
    assert _post(_eg_url(host), validation, event_type="Notification")[0] == 202
    assert len(probe.args("eg")) == 1
    assert _post(_eg_url(host), [_event()], event_type=None)[0] == 400
    assert _post(_eg_url(host), [_event()], event_type="Unsubscribe")[0] == 202
    assert len(probe.args("eg")) == 1


@pytest.mark.parametrize("name, status", [("eg", 202), ("Host.Functions.eg", 404), ("EG", 404), ("q", 404)])
def test_event_grid_deliveries_are_routed_by_the_short_name_only(probe_host, name, status):
    host = probe_host()
    assert _post(_eg_url(host, name), [_event()])[0] == status


@pytest.mark.parametrize("raw", [b"[" * 200_000 + b"]" * 200_000, b"{not json", b'"a string"', b"[1, 2]", b"[]"])
def test_a_body_that_cannot_be_read_gets_400(probe_host, raw):
    host = probe_host()
    for url in (_eg_url(host), _blob_url(host)):
        assert _post(url, None, raw=raw)[0] == 400
    assert probe.args("eg") == []
