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


def test_dataset_travels_the_whole_way_and_repeats_are_harmless(real_model, host, workspace, tmp_path, monkeypatch):
    from local import sampledata
    from shared.scoring import request_body
    monkeypatch.setenv("TUNEFLOW_ENDPOINT_TTL", "3m")  # the real model answers in seconds, not milliseconds
    data = sampledata.write(tmp_path / "chat.jsonl", 240, seed=7)

    upload(data, "e2e-chat/chat.jsonl")
    status = wait_for(lambda: (s := stage_of("e2e-chat")) and s.stage in ("rolled-out", "rollout-failed", "job-failed",
                                                                          "gate-failed", "deploy-failed") and s,
                      600, "the flow to be rolled out")
    assert status.stage == "rolled-out", status.details
    assert status.details["smoke-tested"]["reply"].strip(), "the endpoint answered with empty text"

    # The job really trained the real model: loss went down on the held-out rows, and the gate said so.
    job = workspace.get_job(status.job)
    assert job.status == "Completed"
    assert job.metrics["base_eval_loss"] < 4, "SmolLM2 should already model English replies (random weights: ~10.8)"
    assert job.metrics["train_loss"][-1][1] < job.metrics["train_loss"][0][1]
    assert job.metrics["eval_loss"] < job.metrics["base_eval_loss"]
    assert status.gate == "passed" and status.details["gate-passed"]["rule"] == "passed"
    assert status.metric("eval_loss") == job.metrics["eval_loss"]
    registered = workspace.get_model(*status.model.split(":"))
    assert float(registered.tags["eval-loss"]) == pytest.approx(job.metrics["eval_loss"], rel=1e-5)

    # Key auth: 401 without the key, an answer with it.
    endpoint = workspace.get_endpoint(status.endpoint)
    body = json.dumps(request_body([{"role": "user", "content": "Tell me about volcanoes."}], {"max_new_tokens": 24})).encode()
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(urllib.request.Request(endpoint.scoring_uri, data=body, method="POST",
                                                      headers={"Content-Type": "application/json"}), timeout=30)
    assert denied.value.code == 401
    reply = workspace.invoke(status.endpoint, request_body([{"role": "user", "content": "Tell me about volcanoes."}], {"max_new_tokens": 24}))
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
    wait_for(lambda: stage_of("e2e-chat").stage == "reaped", 360, "the reaper to delete the endpoint")
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


def test_a_fine_tune_that_learned_nothing_useful_is_kept_away_from_endpoints(real_model, host, workspace, tmp_path):
    """Gibberish replies in the train split, normal ones in the test split: the real model gets worse on the test
    rows, the gate fails with the figures, no deploy message is sent and no endpoint exists."""
    from local import sampledata
    rows = list(sampledata.rows(160, seed=11))
    sampledata.write_rows(tmp_path / "train_sft.jsonl", sampledata.gibberish(rows[:120], seed=1))
    sampledata.write_rows(tmp_path / "test_sft.jsonl", rows[120:])
    (tmp_path / "dataset.json").write_text(json.dumps({"files": ["train_sft.jsonl", "test_sft.jsonl"]}))
    for name in ("train_sft.jsonl", "test_sft.jsonl", "dataset.json"):
        upload(tmp_path / name, f"e2e-gibberish/{name}")
    status = wait_for(lambda: (s := stage_of("e2e-gibberish")) and s.stage in ("gate-failed", "gate-passed", "deployed",
                                                                               "smoke-tested", "job-failed") and s,
                      600, "the gate's verdict")
    assert status.stage == "gate-failed", status.details
    verdict = status.details["gate-failed"]
    assert verdict["rule"] == "no-improvement" and verdict["eval_loss"] > verdict["base_eval_loss"]
    assert f"{verdict['base_eval_loss']:.4f}" in verdict["reason"] and f"{verdict['eval_loss']:.4f}" in verdict["reason"]
    assert status.gate == "failed" and status.model  # registered (with its figures), never deployed
    wait_for(lambda: len(invocations(host, "job_events", "Succeeded")) >= 1, 60, "job_events to finish")
    # No deploy message was ever sent: the Service Bus stand-in keeps a marker per MessageId it accepted.
    from shared import storage
    sent = list(storage.container("azure-webjobs-hosts").list_blobs(name_starts_with="servicebus-duplicates/deployments/"))
    assert sent == []
    assert invocations(host, "deploy") == []
    assert workspace.list_endpoints() == []
