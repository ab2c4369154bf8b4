"""The local host against a real Azurite: bad input, poison / dead-letter queues, webhooks."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import pytest

from tests.conftest import invocations, reference_events, wait_for

pytestmark = pytest.mark.integration


def _queue(name: str):
    from shared import storage
    return storage.queue_service().get_queue_client(name)


def _peek(name: str) -> list[str]:
    """The messages waiting in a queue (none when the queue was never created); any other error fails the test."""
    from azure.core.exceptions import ResourceNotFoundError
    try:
        return [m.content for m in _queue(name).peek_messages(max_messages=32)]
    except ResourceNotFoundError:
        return []


def _sent_nothing(host, function: str = "data_arrival", runs: int = 1) -> None:
    """The function ran `runs` times and handed on nothing. A peek at the queue cannot tell: the next
    function may already have taken the message; the host records when a run's outputs went out."""
    records = wait_for(lambda: (r := invocations(host, function)) and len(r) >= runs and r, 60,
                       f"{runs} run(s) of {function}")
    assert [r["outcome"] for r in records] == ["Succeeded"] * runs
    assert [r["outputs_sent_at"] for r in records] == [""] * runs, "a run sent a message"
    assert invocations(host, "submit") == []


def _post(url: str, body, headers: dict | None = None, method: str = "POST"):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", "aeg-event-type": "Notification", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def _alive(host) -> bool:
    with urllib.request.urlopen(host.base_url + "/admin/host/status", timeout=10) as resp:
        return json.loads(resp.read())["state"] == "Running"


@pytest.mark.parametrize("raw, reason", [
    (base64.b64encode(b"not json at all").decode(), "ValidationError"),
    (base64.b64encode(b'{"flow_id": "x"}').decode(), "ValidationError"),
    ("%%% not base64 %%%", "not base64"),
])
def test_malformed_queue_message_ends_in_poison_queue_with_reason(host, raw, reason):
    from shared import storage
    storage.queue_service().get_queue_client("finetune-requests").send_message(raw)
    poison = wait_for(lambda: _peek("finetune-requests-poison"), 90, "the poison queue to receive the message")
    envelope = json.loads(base64.b64decode(poison[0]))
    assert reason in envelope["reason"]
    # A body the trigger cannot decode is poisoned at once; one it decodes is retried maxDequeueCount times.
    assert envelope["deliveries"] == (1 if reason == "not base64" else host.config.max_dequeue_count)
    assert envelope["function"] == "submit"
    assert envelope["message"] in (base64.b64decode(raw).decode() if reason != "not base64" else raw,)
    assert _peek("finetune-requests") == []
    assert _alive(host)


def test_request_for_a_version_never_prepared_is_poisoned(host):
    from shared import naming, storage
    from shared.messages import FinetuneRequest
    req = FinetuneRequest(flow_id=naming.flow_id("ghost", "0" * 16, {}), dataset="ghost", version="0" * 16)
    storage.send_queue_message("finetune-requests", req.to_json())
    poison = wait_for(lambda: _peek("finetune-requests-poison"), 90, "the poison queue")
    assert "was never prepared" in json.loads(base64.b64decode(poison[0]))["reason"]


def test_malformed_service_bus_message_is_dead_lettered(host):
    _queue("deployments").send_message('{"model_name": "x"}')
    dead = wait_for(lambda: _peek("deployments-deadletter"), 120, "the dead-letter queue")
    envelope = json.loads(dead[0])
    assert "ValidationError" in envelope["reason"] and envelope["deliveries"] == 10
    assert envelope["message"] == '{"model_name": "x"}'


def test_malformed_dataset_gets_an_error_report_and_no_message(host):
    from shared import storage
    content = b'{"prompt": "only one broken row"\nnot json either\n'
    datasets = storage.container("datasets")
    datasets.upload_blob("broken/data.jsonl", content)
    etag = datasets.get_blob_client("broken/data.jsonl").get_blob_properties().etag
    prepared = storage.container("prepared")
    errors = wait_for(lambda: [b.name for b in prepared.list_blobs(name_starts_with="broken/") if b.name.endswith("error.json")],
                      60, "error.json for the broken dataset")
    report = json.loads(prepared.download_blob(errors[0]).readall())
    assert "2 of 2 rows rejected" in report["error"] and report["fix"] and report["sources"][0]["etag"] == etag.strip('"')
    rejected = prepared.download_blob(errors[0].replace("error.json", "rejected.jsonl")).readall().decode()
    assert '"where": "data.jsonl:1"' in rejected
    assert not any(b.name.endswith("manifest.json") for b in prepared.list_blobs(name_starts_with="broken/"))
    # The original is untouched, no request was sent, the host still runs.
    blob = datasets.get_blob_client("broken/data.jsonl")
    assert blob.download_blob().readall() == content and blob.get_blob_properties().etag == etag
    _sent_nothing(host)
    assert _peek("finetune-requests") == []
    assert _alive(host)
    # Event Grid delivers the same event again: still nothing sent (the webhook answers 202 before the run).
    event = reference_events("storage-blob-created.eventgrid.json")
    event[0]["subject"] = "/blobServices/default/containers/datasets/blobs/broken/data.jsonl"
    status, _, _ = _post(host.base_url + "/runtime/webhooks/blobs?functionName=Host.Functions.data_arrival", event)
    assert status == 202
    _sent_nothing(host, runs=2)


def test_blob_with_an_unsafe_name_is_refused_with_a_report(host):
    from shared import storage
    storage.container("datasets").upload_blob("notes.txt", b"hello")
    prepared = storage.container("prepared")
    errors = wait_for(lambda: list(prepared.list_blobs(name_starts_with="_invalid/")), 60, "the report")
    assert "notes.txt" in json.loads(prepared.download_blob(errors[0].name).readall())["error"]
    _sent_nothing(host)


def test_event_grid_validation_handshakes(host):
    url = host.base_url + "/runtime/webhooks/EventGrid?functionName=job_events"
    validation = reference_events("subscription-validation.eventgrid.json")
    status, _, body = _post(url, validation, {"aeg-event-type": "SubscriptionValidation"})
    assert status == 200 and body == {"validationResponse": validation[0]["data"]["validationCode"]}
    status, headers, _ = _post(url, None, {"WebHook-Request-Origin": "eventgrid.azure.net"}, method="OPTIONS")
    assert status == 200 and headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    status, _, _ = _post(host.base_url + "/runtime/webhooks/EventGrid?functionName=nope", validation)
    assert status == 404


@pytest.mark.parametrize("file", ["ml-step-run-completed.eventgrid.json", "ml-pipeline-run-completed.cloudevent.json",
                                  "ml-pipeline-run-failed.eventgrid.json"])
def test_events_about_foreign_or_unknown_runs_are_acknowledged_and_ignored(host, file):
    url = host.base_url + "/runtime/webhooks/EventGrid?functionName=job_events"
    status, _, _ = _post(url, reference_events(file))
    assert status == 202
    assert [i["outcome"] for i in invocations(host, "job_events")] == ["Succeeded"]
    assert _peek("deployments") == []


def test_a_blob_event_delivered_twice_runs_twice_and_the_dataset_is_prepared_and_submitted_once(host, workspace, tmp_path):
    from local import sampledata
    from shared import flows, storage
    from shared.contracts import FLOWS_CONTAINER
    data = sampledata.write(tmp_path / "d.jsonl", 60)
    with open(data, "rb") as f:
        storage.container("datasets").upload_blob("hooked/d.jsonl", f)  # the Event Grid stand-in delivers it
    event = reference_events("storage-blob-created.eventgrid.json")
    event[0]["subject"] = "/blobServices/default/containers/datasets/blobs/hooked/d.jsonl"
    status, _, _ = _post(host.base_url + "/runtime/webhooks/blobs?functionName=Host.Functions.data_arrival", event)
    assert status == 202  # ... and Event Grid delivers it once more: no receipts, the function runs again
    wait_for(lambda: len(invocations(host, "data_arrival", "Succeeded")) == 2, 120, "both deliveries to run")
    wait_for(lambda: len(invocations(host, "submit", "Succeeded")) == 2, 120, "both fine-tune requests")
    prepared = {b.name.split("/")[1] for b in storage.container("prepared").list_blobs(name_starts_with="hooked/")
                if b.name.endswith("/manifest.json")}
    assert len(prepared) == 1, prepared
    rows = [f for f in flows.summarize(flows.read_all(storage.container(FLOWS_CONTAINER))) if f.dataset == "hooked"]
    assert len(rows) == 1 and rows[0].job


def test_a_bad_timer_schedule_stops_the_host_from_starting(workspace, monkeypatch):
    from local.host import LocalHost
    from local.ncrontab import InvalidSchedule
    from tests.conftest import ROOT
    monkeypatch.setenv("TUNEFLOW_REAPER_SCHEDULE", "every five minutes")
    with pytest.raises(InvalidSchedule) as exc:
        LocalHost(project_dir=ROOT, port=0, settings_file="none.json").start()
    assert "seconds first" in str(exc.value)
