"""Decisions on the published event shapes (../shared/reference/events)."""

import pytest

from shared.events import InvalidEvent, decide, normalize
from tests.conftest import reference_events


def _first(name):
    data = reference_events(name)
    return data[0] if isinstance(data, list) else data


@pytest.mark.parametrize("file, action, job", [
    ("ml-pipeline-run-completed.eventgrid.json", "register", "ft-ultrachat-3f9a1c2b"),
    ("ml-pipeline-run-completed.cloudevent.json", "register", "ft-ultrachat-3f9a1c2b"),
    ("ml-pipeline-run-failed.eventgrid.json", "record-failure", "ft-ultrachat-77aa01de"),
    ("ml-step-run-completed.eventgrid.json", "ignore", "0d4e2a77-91b3-4c08-b1f2-6a7e5d3c2b10"),
    ("subscription-validation.eventgrid.json", "validate", ""),
    ("storage-blob-created.eventgrid.json", "ignore", ""),
])
def test_reference_events(file, action, job):
    decision = decide(normalize(_first(file)))
    assert (decision.action, decision.job) == (action, job)


def test_step_run_names_its_parent():
    assert "ft-ultrachat-3f9a1c2b" in decide(normalize(_first("ml-step-run-completed.eventgrid.json"))).reason


def test_flow_id_comes_from_run_tags():
    d = decide(normalize(_first("ml-pipeline-run-completed.eventgrid.json")))
    assert d.flow_id == "c0ffee01-0000-4000-8000-000000000001"


@pytest.mark.parametrize("status, action", [("Running", "ignore"), ("NotStarted", "ignore"), ("Failed", "record-failure"),
                                            ("Canceled", "record-failure"), ("Completed", "ignore"), (None, "ignore")])
def test_status_changes(status, action):
    event = _first("ml-pipeline-run-failed.eventgrid.json")
    event = {**event, "data": {**event["data"], "runStatus": status}}
    assert decide(normalize(event)).action == action


def test_runs_of_other_tools_are_ignored():
    event = _first("ml-pipeline-run-completed.eventgrid.json")
    event = {**event, "data": {**event["data"], "runTags": {"flow-id": "x"}}}
    d = decide(normalize(event))
    assert d.action == "ignore" and "managed-by" in d.reason


@pytest.mark.parametrize("raw", [[], "x", {}, {"eventType": ""}, {"specversion": "1.0", "id": "1"},
                                 {"eventType": "T", "id": "1", "data": "text"}])
def test_malformed_events_are_refused(raw):
    with pytest.raises(InvalidEvent):
        normalize(raw)
