"""job_events run twice at once for one completed job, as Event Grid does when the first run has not
answered within 30 s: one model version, one deploy request past duplicate detection, one
consistent flow record. Local backend (real MLflow registry) + Azurite + the Service Bus stand-in.
"""

from __future__ import annotations

import json
import threading

import pytest

from shared.contracts import TAG_DATASET, TAG_DATASET_VERSION, TAG_FLOW_ID, TAG_MANAGED_BY, MANAGED_BY_VALUE
from tests.conftest import reference_events

FLOW = "c0ffee01-0000-4000-8000-0000000000aa"
JOB = "ft-race-0000aaaa"


def user_function(module, name: str):
    """The function as the worker calls it: the blueprint's user function, through a fresh app."""
    import azure.functions as func
    app = func.FunctionApp()
    app.register_functions(module.bp)
    return next(f.get_user_function() for f in app.get_functions() if f.get_function_name() == name)


IMPROVED = {"eval_loss": 1.2, "base_eval_loss": 2.0, "train_loss": [[1, 2.4], [2, 1.5]]}  # passes the gate


def finished_job(workspace, tmp_path, name: str = JOB, flow: str = FLOW, metrics: dict | None = None,
                 extra_tags: dict | None = None) -> None:
    """A pipeline run that completed, as local.train leaves it in the workspace (job.json, result.json),
    without training: its output is a folder the MLflow registry accepts as a model source."""
    from shared.ml.procs import write_json_atomic
    model = tmp_path / "trained_model"
    model.mkdir()
    (model / "MLmodel").write_text("flavors: {}\n")
    tags = {TAG_MANAGED_BY: MANAGED_BY_VALUE, TAG_FLOW_ID: flow, TAG_DATASET: "race",
            TAG_DATASET_VERSION: "0123456789abcdef", **(extra_tags or {})}
    job_dir = workspace.jobs / name
    job_dir.mkdir()
    write_json_atomic(job_dir / "job.json", {"spec": {"name": name, "tags": tags}})
    write_json_atomic(job_dir / "result.json", {"status": "Completed", "output_uri": model.as_uri(),
                                                "metrics": IMPROVED if metrics is None else metrics})


def completion(name: str = JOB, flow: str = FLOW, schema: str = "eventgrid"):
    """RunCompleted as Azure ML publishes it, decoded by azure-functions' own converter (as the worker does)."""
    from azure.functions import meta
    from azure.functions.eventgrid import EventGridEventInConverter
    raw = reference_events(f"ml-pipeline-run-completed.{schema}.json")
    raw = raw[0] if isinstance(raw, list) else raw
    raw["data"]["runId"] = name
    raw["data"]["runTags"] = {TAG_MANAGED_BY: MANAGED_BY_VALUE, TAG_FLOW_ID: flow}
    return EventGridEventInConverter.decode(meta.Datum(json.dumps(raw), "json"), trigger_metadata={})


@pytest.fixture
def service_bus(storage_env):
    """Sends go to the Service Bus stand-in (duplicate detection included), as the local host routes them."""
    from local.servicebus import ServiceBusStandIn
    from shared import bus
    from shared.settings import StorageConnection
    stand_in = ServiceBusStandIn(StorageConnection.from_env())
    bus.use(stand_in.send)
    yield stand_in
    bus.use(None)


def queued(queue: str) -> list:
    from local.servicebus import decode
    from shared import storage
    return [decode(m.content) for m in storage.queue(queue).peek_messages(max_messages=32)]


def run_at_once(target, *args, parties: int = 2) -> list[BaseException]:
    """Start `parties` threads that call `target(*args)` together (a barrier); every thread is joined."""
    barrier, errors = threading.Barrier(parties), []

    def one():
        try:
            barrier.wait(timeout=30)
            target(*args)
        except BaseException as exc:  # reported to the test, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(parties)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not any(t.is_alive() for t in threads), "a job_events run did not finish"
    return errors


@pytest.mark.integration
def test_two_deliveries_at_once_register_one_version_and_send_one_deploy_request(
        workspace, service_bus, tmp_path, monkeypatch):
    from functions import job_events as module
    from shared import flows, naming, storage
    from shared.contracts import DEPLOY_QUEUE, FLOWS_CONTAINER
    from shared.ml import base_model_name
    monkeypatch.setenv("TUNEFLOW_ML_BACKEND", "local")
    finished_job(workspace, tmp_path)
    job_events = user_function(module, "job_events")

    errors = run_at_once(job_events, completion())  # mlflow is imported by the runs themselves, at once

    assert errors == []
    from mlflow import MlflowClient
    name, version = naming.model_name(base_model_name(), "race"), naming.model_version(JOB)
    registry = MlflowClient(tracking_uri=workspace.tracking_uri, registry_uri=workspace.tracking_uri)
    versions = registry.search_model_versions(f"name = '{name}'")
    assert [v.tags["tuneflow.version"] for v in versions] == [version]
    message_id = f"{name}:{version}"
    sent = [(m.message_id, json.loads(m.body)["model_version"]) for m in queued(DEPLOY_QUEUE)]
    assert sent == [(message_id, version)]
    assert service_bus.dropped == [message_id]  # the second run's send, dropped by duplicate detection
    records = [r for r in flows.read_all(storage.container(FLOWS_CONTAINER)) if r["flow_id"] == FLOW]
    assert sorted(r["stage"] for r in records) == ["gate-passed", "registered"]  # one verdict for both runs
    [status] = flows.summarize(records)
    assert (status.stage, status.job, status.model, status.gate) == ("gate-passed", JOB, message_id, "passed")


class _RacedBackend:
    """A workspace where another run creates the version between our check and our create: the create is
    refused (as Azure ML may answer a second PUT of one version), the version is there."""

    def __init__(self, job, exists_after_refusal: bool):
        self.job, self.exists, self.registered = job, exists_after_refusal, []

    def get_job(self, name):
        return self.job

    def job_metrics(self, job):
        return dict(IMPROVED)

    def list_endpoints(self):
        return []

    def register_model(self, name, version, job, tags):
        from shared.ml.base import MLError
        raise MLError(f"registering model {name}:{version}: Azure ML answered 409 (Conflict)")

    def get_model(self, name, version):
        from shared.ml.base import ModelRef, NotFound
        if not self.exists:
            raise NotFound(f"model {name}:{version}: not found")
        return ModelRef(name=name, version=version, tags={})


@pytest.mark.parametrize("exists, outcome", [(True, "deploy request"), (False, "raised")])
def test_a_refused_create_counts_as_registered_only_when_the_version_is_there(exists, outcome):
    from shared.events import Decision
    from shared.ml.base import JobInfo, MLError
    from shared.registration import handle_decision

    class FlowLog:  # the flows container: flows.record uploads one blob per stage; we keep the names
        def __init__(self):
            self.names = []

        def upload_blob(self, name, *args, **kwargs):
            self.names.append(name)

    tags = {TAG_MANAGED_BY: MANAGED_BY_VALUE, TAG_FLOW_ID: FLOW, TAG_DATASET: "race",
            TAG_DATASET_VERSION: "0123456789abcdef"}
    backend = _RacedBackend(JobInfo(name=JOB, status="Completed", tags=tags), exists)
    decision, flow_log = Decision("register", JOB, "pipeline run completed", FLOW, "Completed"), FlowLog()
    if outcome == "raised":
        with pytest.raises(MLError, match="409"):
            handle_decision(decision, backend, flow_log)
        assert flow_log.names == []  # nothing recorded: nothing looks done
    else:
        request = handle_decision(decision, backend, flow_log)
        assert request.job == JOB and flow_log.names == [f"{FLOW}/3-registered.json", f"{FLOW}/4-gate.json"]
