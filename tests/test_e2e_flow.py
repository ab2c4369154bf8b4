"""The whole flow through the local host: drop -> prepare -> fine-tune -> register -> deploy -> chat -> reap."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest

from tests.conftest import invocations, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def flow_status():
    from shared import flows, storage
    from shared.contracts import FLOWS_CONTAINER
    return flows.summarize(flows.read_all(storage.container(FLOWS_CONTAINER)))


def stage_of(dataset: str):
    rows = [f for f in flow_status() if f.dataset == dataset]
    return rows[0] if rows else None


def upload(path, blob_name: str):
    from shared import storage
    with open(path, "rb") as f:
        storage.container("datasets").upload_blob(blob_name, f, overwrite=True)


def test_dataset_travels_the_whole_way_and_repeats_are_harmless(host, workspace, tmp_path, monkeypatch):
    from local import sampledata
    from shared.scoring import request_body
    monkeypatch.setenv("TUNEFLOW_ENDPOINT_TTL", "40s")
    data = sampledata.write(tmp_path / "chat.jsonl", 240, seed=7)

    upload(data, "e2e-chat/chat.jsonl")
    status = wait_for(lambda: (s := stage_of("e2e-chat")) and s.stage in ("smoke-tested", "smoke-failed", "job-failed") and s,
                      420, "the flow to reach the smoke test")
    assert status.stage == "smoke-tested", status.details
    assert status.details["smoke-tested"]["reply"].strip(), "the endpoint answered with empty text"

    # The job really trained: loss went down, and MLflow has the metrics.
    job = workspace.get_job(status.job)
    assert job.status == "Completed"
    assert job.metrics["train_loss_last"] < job.metrics["train_loss_first"]
    assert job.metrics["eval_loss_after"] < job.metrics["eval_loss_before"]

    # Key auth: 401 without the key, an answer with it.
    endpoint = workspace.get_endpoint(status.endpoint)
    body = json.dumps(request_body([{"role": "user", "content": "Tell me about volcanoes."}])).encode()
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(urllib.request.Request(endpoint.scoring_uri, data=body, method="POST",
                                                      headers={"Content-Type": "application/json"}), timeout=30)
    assert denied.value.code == 401
    reply = workspace.invoke(status.endpoint, request_body([{"role": "user", "content": "Tell me about volcanoes."}]))
    assert isinstance(reply["output"], str)

    # Same file again (a new blob version, same bytes): one prepared version, one job.
    upload(data, "e2e-chat/chat-again.jsonl")
    wait_for(lambda: len(invocations(host, "data_arrival", "Succeeded")) >= 2, 60, "the second drop to be processed")
    wait_for(lambda: len(invocations(host, "submit", "Succeeded")) >= 2, 60, "the second request to be handled")
    from shared import storage
    versions = {b.name.split("/")[1] for b in storage.container("prepared").list_blobs(name_starts_with="e2e-chat/")
                if b.name.endswith("/manifest.json")}
    assert len(versions) == 1
    assert [d.name for d in workspace.jobs.iterdir()] == [status.job]

    # The completion event delivered again: still one model version and one endpoint.
    from local.platform import post_event, run_event
    from shared.ml.procs import read_json
    job_record = read_json(workspace.jobs / status.job / "job.json")
    assert post_event(host.base_url + "/runtime/webhooks/EventGrid?functionName=job_events",
                      run_event(job_record, "Completed"), deadline_s=30)
    wait_for(lambda: len(invocations(host, "job_events", "Succeeded")) >= 2, 60, "the redelivered event")
    # job_events sent the deploy request again; duplicate detection (MessageId model:version) dropped it
    assert host.dropped_duplicates == [status.model]
    assert len(invocations(host, "deploy")) == 1
    assert [e.name for e in workspace.list_endpoints()] == [status.endpoint]
    from mlflow import MlflowClient
    name = status.model.split(":")[0]
    assert len(MlflowClient(tracking_uri=workspace.tracking_uri).search_model_versions(f"name = '{name}'")) == 1

    # The reaper deletes the endpoint when its time is up: its process is gone, its port closed.
    port = int(endpoint.scoring_uri.split(":")[2].split("/")[0])
    wait_for(lambda: stage_of("e2e-chat").stage == "reaped", 120, "the reaper to delete the endpoint")
    assert workspace.list_endpoints() == []
    with socket.socket() as s:  # nothing listens there any more
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_a_failed_job_is_recorded_and_visible_and_nothing_is_deployed(host, workspace, tmp_path, monkeypatch):
    from local import sampledata
    empty_checkpoint = tmp_path / "no-model-here"
    empty_checkpoint.mkdir()
    monkeypatch.setenv("TUNEFLOW_BASE_MODEL_DIR", str(empty_checkpoint))
    upload(sampledata.write(tmp_path / "f.jsonl", 60), "e2e-fail/f.jsonl")
    status = wait_for(lambda: (s := stage_of("e2e-fail")) and s.stage == "job-failed" and s, 180,
                      "the failed job to be recorded")
    assert "TUNEFLOW_BASE_MODEL_DIR" in status.details["job-failed"]["error"]
    assert workspace.list_endpoints() == []
    assert invocations(host, "deploy") == []
