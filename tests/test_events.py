"""Decisions on the published event shapes (../shared/reference/events)."""

import copy
import json
from dataclasses import astuple

import pytest

from shared.events import Decision, Event, InvalidEvent, decide, explain_all, normalize, read_events
from tests.conftest import reference_events


def _first(name):
    data = reference_events(name)
    return data[0] if isinstance(data, list) else data


def _in_full(decision: Decision) -> tuple:
    """Every field, `at` too (Decision's equality leaves it out: a redelivery keeps the event's time)."""
    return astuple(decision)


@pytest.mark.parametrize("file, expected", [
    ("ml-pipeline-run-completed.eventgrid.json",
     Decision("register", "ft-ultrachat-3f9a1c2b", "pipeline run completed", "c0ffee01-0000-4000-8000-000000000001",
              "Completed", "2026-11-20T10:42:13.1234567Z")),
    ("ml-pipeline-run-completed.cloudevent.json",
     Decision("register", "ft-ultrachat-3f9a1c2b", "pipeline run completed", "c0ffee01-0000-4000-8000-000000000001",
              "Completed", "2026-11-20T10:42:13.1234567Z")),
    ("ml-pipeline-run-failed.eventgrid.json",
     Decision("record-failure", "ft-ultrachat-77aa01de", "pipeline run failed", "c0ffee01-0000-4000-8000-000000000002",
              "Failed", "2026-11-20T11:05:40.0000000Z")),
    ("ml-step-run-completed.eventgrid.json",
     Decision("ignore", "0d4e2a77-91b3-4c08-b1f2-6a7e5d3c2b10",
              "run type 'azureml.StepRun' is not a pipeline run (a step of ft-ultrachat-3f9a1c2b)")),
    ("subscription-validation.eventgrid.json", Decision("validate", "", "subscription validation handshake")),
    ("storage-blob-created.eventgrid.json",
     Decision("ignore", "", "event type Microsoft.Storage.BlobCreated is not an Azure ML run event")),
])
def test_reference_events(file, expected):
    assert _in_full(decide(normalize(_first(file)))) == _in_full(expected)


WORKSPACE = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-demo/providers/"
             "Microsoft.MachineLearningServices/workspaces/mlw-demo")
RUNS = "experiments/5b9d3c1e-7f0a-4d1e-9a55-2f1c0b7e8a11/runs/"


@pytest.mark.parametrize("raw, subject, time, source", [
    (_first("ml-pipeline-run-completed.eventgrid.json"), RUNS + "ft-ultrachat-3f9a1c2b", "2026-11-20T10:42:13.1234567Z",
     WORKSPACE),  # Event Grid: eventType, eventTime, topic
    (_first("ml-pipeline-run-completed.cloudevent.json"), RUNS + "ft-ultrachat-3f9a1c2b", "2026-11-20T10:42:13.1234567Z",
     WORKSPACE),  # CloudEvents: type, time, source
    (_first("subscription-validation.eventgrid.json"), "", "2026-11-20T09:00:00.0000000Z",
     "/subscriptions/00000000-0000-0000-0000-000000000000"),
    ({"specversion": "1.0", "id": "1", "type": "T"}, "", "", ""),  # optional fields absent: empty, not made up
])
def test_normalize_reads_the_fields_of_either_schema(raw, subject, time, source):
    assert normalize(raw) == Event(id=raw["id"], type=raw.get("eventType") or raw["type"], subject=subject, time=time,
                                   data=raw.get("data", {}), source=source)


def test_step_run_names_its_parent():
    assert "ft-ultrachat-3f9a1c2b" in decide(normalize(_first("ml-step-run-completed.eventgrid.json"))).reason


def test_flow_id_comes_from_run_tags():
    d = decide(normalize(_first("ml-pipeline-run-completed.eventgrid.json")))
    assert d.flow_id == "c0ffee01-0000-4000-8000-000000000001"


@pytest.mark.parametrize("status, action", [("Running", "ignore"), ("NotStarted", "ignore"), ("Failed", "record-failure"),
                                            ("Canceled", "record-failure"), ("Completed", "register"), (None, "ignore")])
def test_status_changes(status, action):
    event = _first("ml-pipeline-run-failed.eventgrid.json")
    event = {**event, "data": {**event["data"], "runStatus": status}}
    assert decide(normalize(event)).action == action


def test_runs_of_other_tools_are_ignored():
    event = _first("ml-pipeline-run-completed.eventgrid.json")
    event = {**event, "data": {**event["data"], "runTags": {"flow-id": "x"}}}
    d = decide(normalize(event))
    assert d.action == "ignore" and "managed-by" in d.reason


@pytest.mark.parametrize("raw, message", [  # explain-event prints these ("invalid event: ...")
    ([], "an event must be a JSON object, got list"),
    ("x", "an event must be a JSON object, got str"),
    ({}, "not an event: neither Event Grid (eventType) nor CloudEvents (specversion) schema"),
    ({"eventType": ""}, "event lacks id, eventType"),
    ({"specversion": "1.0"}, "event lacks id, type"),
    ({"specversion": "1.0", "id": "1"}, "event lacks type"),
    ({"eventType": "T", "id": "1", "data": "text"}, "event data must be a JSON object"),
])
def test_malformed_events_are_refused(raw, message):
    with pytest.raises(InvalidEvent) as refused:
        normalize(raw)
    assert str(refused.value) == message


# -- as Azure publishes them -------------------------------------------------------------------
# The RunStatusChanged sample of the Event Grid page "Azure Machine Learning as an Event Grid
# source" (MicrosoftDocs/azure-docs, articles/event-grid/event-schema-machine-learning.md), its
# long AutoML runProperties cut to one: `runType` null, `runTags` empty, `"runStatus": "failed"`
# in lower case. Older versions of the same page spell the data keys in PascalCase.
PUBLISHED_STATUS_CHANGED = {
    "topic": "/subscriptions/{subscription-id}/resourceGroups/{resource-group-name}/providers/"
             "Microsoft.MachineLearningServices/workspaces/{workspace-name}",
    "subject": "experiments/0fa9dfaa-cba3-4fa7-b590-23e48548f5c1/runs/AutoML_ad912b2d-6467-4f32-a616-dbe4af6dd8fc_5",
    "eventType": "Microsoft.MachineLearningServices.RunStatusChanged",
    "eventTime": "2017-06-26T18:41:00.9584103Z",
    "id": "831e1650-001e-001b-66ab-eeb76e069631",
    "data": {
        "experimentId": "0fa9dfaa-cba3-4fa7-b590-23e48548f5c1",
        "experimentName": "automl-local-regression",
        "runId": "AutoML_ad912b2d-6467-4f32-a616-dbe4af6dd8fc_5",
        "runType": None,
        "runTags": {},
        "runProperties": {"runTemplate": "automl_child"},
        "runStatus": "failed",
    },
    "dataVersion": "",
    "metadataVersion": "1",
}
PUBLISHED_JOB = PUBLISHED_STATUS_CHANGED["data"]["runId"]
PUBLISHED_TIME = PUBLISHED_STATUS_CHANGED["eventTime"]
OUR_TAGS = {"managed-by": "tuneflow", "flow-id": "c0ffee01-0000-4000-8000-000000000003"}
OUR_FLOW = OUR_TAGS["flow-id"]


def published(event_type="RunStatusChanged", status="failed", pascal=False, ours=True, run_type=None,
              runsource="azureml.PipelineRun", data_version="", **data_keys):
    """The published sample, as one of our pipeline runs (tags, runsource) unless told otherwise;
    `data_keys` replace data keys (e.g. runId=None), before any PascalCase."""
    event = copy.deepcopy(PUBLISHED_STATUS_CHANGED)
    event["eventType"] = f"Microsoft.MachineLearningServices.{event_type}"
    event["dataVersion"] = data_version
    data = event["data"]
    data["runType"] = run_type
    if ours:
        data["runTags"] = dict(OUR_TAGS)
        data["runProperties"]["azureml.runsource"] = runsource
    if event_type == "RunCompleted":
        del data["runStatus"]
    else:
        data["runStatus"] = status
    data.update(data_keys)
    if pascal:
        event["data"] = {key[0].upper() + key[1:]: value for key, value in data.items()}
    return event


@pytest.mark.parametrize("event, action, status, words", [
    # the sample exactly as published: not one of our runs (no tags, AutoML child) -> ignored
    (published(ours=False), "ignore", "", "not a pipeline run"),
    (published(ours=False, pascal=True), "ignore", "", "not a pipeline run"),
    # our pipeline run, runType null, recognised by runProperties' azureml.runsource
    (published(), "record-failure", "Failed", "pipeline run failed"),
    (published(pascal=True), "record-failure", "Failed", "pipeline run failed"),
    (published(status="FAILED"), "record-failure", "Failed", "pipeline run failed"),
    (published(status="canceled"), "record-failure", "Canceled", "pipeline run canceled"),
    (published(status="Canceled", pascal=True), "record-failure", "Canceled", "pipeline run canceled"),
    (published(status="completed"), "register", "Completed", "completed"),
    (published(status="Completed", pascal=True), "register", "Completed", "completed"),
    (published(status="running"), "ignore", "running", "not terminal"),
    (published(status="NotStarted", pascal=True), "ignore", "NotStarted", "not terminal"),
    (published(event_type="RunCompleted"), "register", "Completed", "completed"),
    (published(event_type="RunCompleted", pascal=True), "register", "Completed", "completed"),
    # runType names the pipeline run, in any case; runsource then does not matter
    (published(run_type="azureml.pipelinerun", runsource="HTTP"), "record-failure", "Failed", "failed"),
    (published(run_type="azureml.PipelineRun", runsource="HTTP", pascal=True), "record-failure", "Failed", "failed"),
    # a step of our pipeline, by either field, is still not the pipeline run
    (published(run_type="azureml.StepRun", runsource="azureml.StepRun"), "ignore", "", "not a pipeline run"),
    (published(runsource="azureml.StepRun", pascal=True), "ignore", "", "not a pipeline run"),
    # dataVersion as Event Grid may set it
    (published(data_version="2"), "record-failure", "Failed", "failed"),
    (published(event_type="RunCompleted", data_version="2", pascal=True), "register", "Completed", "completed"),
])
def test_published_event_shapes(event, action, status, words):
    decision = decide(normalize(event))
    assert (decision.action, decision.status) == (action, status), decision
    assert words in decision.reason
    if action != "ignore":
        assert (decision.job, decision.flow_id) == (PUBLISHED_JOB, OUR_TAGS["flow-id"])


@pytest.mark.parametrize("event, expected", [
    # not a pipeline run: no parent named when the run has none; the flow tag is still read
    (published(ours=False), Decision("ignore", PUBLISHED_JOB, "run type None is not a pipeline run")),
    (published(run_type="azureml.StepRun", runsource="azureml.StepRun"),
     Decision("ignore", PUBLISHED_JOB, "run type 'azureml.StepRun' is not a pipeline run", OUR_FLOW)),
    # another tool's pipeline run, and one of ours without a runId
    (published(runTags={"managed-by": "someone-else", "flow-id": OUR_FLOW}),
     Decision("ignore", PUBLISHED_JOB, "run is not tagged managed-by=tuneflow", OUR_FLOW)),
    (published(runId=None), Decision("ignore", "", "event has no runId", OUR_FLOW)),
    # terminal: the decision carries the event's time (the gate's metrics wait counts from it)
    (published(event_type="RunCompleted"),
     Decision("register", PUBLISHED_JOB, "pipeline run completed", OUR_FLOW, "Completed", PUBLISHED_TIME)),
    (published(status="completed"),
     Decision("register", PUBLISHED_JOB, "pipeline run completed (status change)", OUR_FLOW, "Completed", PUBLISHED_TIME)),
    (published(), Decision("record-failure", PUBLISHED_JOB, "pipeline run failed", OUR_FLOW, "Failed", PUBLISHED_TIME)),
    (published(status="CANCELED"),
     Decision("record-failure", PUBLISHED_JOB, "pipeline run canceled", OUR_FLOW, "Canceled", PUBLISHED_TIME)),
    # not terminal: the status as sent, or "unknown" in the reason when there is none
    (published(status="running"), Decision("ignore", PUBLISHED_JOB, "status running is not terminal", OUR_FLOW, "running")),
    (published(status=None), Decision("ignore", PUBLISHED_JOB, "status unknown is not terminal", OUR_FLOW, "")),
])
def test_each_rule_decides_in_full(event, expected):
    assert _in_full(decide(normalize(event))) == _in_full(expected)


def test_pascal_case_step_run_still_names_its_parent():
    event = _first("ml-step-run-completed.eventgrid.json")
    event = {**event, "data": {key[0].upper() + key[1:]: value for key, value in event["data"].items()}}
    decision = decide(normalize(event))
    assert decision.action == "ignore" and "ft-ultrachat-3f9a1c2b" in decision.reason


def test_explain_all_reads_a_completion_reported_by_both_event_types_once():
    completed = published(event_type="RunCompleted")
    changed = {**published(status="Completed", pascal=True), "id": "second-event"}
    late_failure = {**published(status="failed"), "id": "third-event"}
    out = explain_all([completed, changed, late_failure])
    assert [o["action"] for o in out] == ["register", "ignore", "ignore"]
    assert "same outcome reported again" in out[1]["reason"] and "stale" in out[2]["reason"]
    first = explain_all([changed, completed])
    assert [o["action"] for o in first] == ["register", "ignore"]


# -- as the Functions trigger hands them over ------------------------------------------------------
# azure-functions' converter (the one the Python worker calls) decodes an Event Grid delivery into
# func.EventGridEvent and a CloudEvents one into func.CloudEvent; job_events must decide the same on both.

def _decoded(raw: dict):
    import json
    from azure.functions import meta
    from azure.functions.eventgrid import EventGridEventInConverter
    return EventGridEventInConverter.decode(meta.Datum(json.dumps(raw), "json"), trigger_metadata={})


def _as_cloudevent(raw: dict) -> dict:
    """The same event in the CloudEvents 1.0 schema, as Event Grid delivers it to a CloudEvents subscription."""
    return {"specversion": "1.0", "id": raw["id"], "type": raw["eventType"], "source": raw.get("topic", ""),
            "subject": raw.get("subject", ""), "time": raw.get("eventTime", ""), "data": raw.get("data")}


EVENT_GRID_FILES = ["ml-pipeline-run-completed.eventgrid.json", "ml-pipeline-run-failed.eventgrid.json",
                    "ml-step-run-completed.eventgrid.json", "subscription-validation.eventgrid.json",
                    "storage-blob-created.eventgrid.json"]


@pytest.mark.parametrize("raw", [_first(f) for f in EVENT_GRID_FILES]
                         + [published(), published(event_type="RunCompleted", pascal=True), published(ours=False)])
@pytest.mark.parametrize("schema", ["eventgrid", "cloudevents"])
def test_both_trigger_types_reach_the_same_decision(raw, schema):
    from azure.functions import CloudEvent, EventGridEvent
    from shared.events import from_trigger
    event = _decoded(raw if schema == "eventgrid" else _as_cloudevent(raw))
    assert isinstance(event, EventGridEvent if schema == "eventgrid" else CloudEvent)
    decoded, direct = from_trigger(event), normalize(raw)
    assert decide(decoded) == decide(direct)
    # the same fields too (the time differs only in spelling: the converter parses it)
    assert (decoded.id, decoded.type, decoded.subject, decoded.source, decoded.data) == \
           (direct.id, direct.type, direct.subject, direct.source, direct.data)


@pytest.mark.parametrize("raw", [{"id": "1", "eventType": "T", "subject": "s", "topic": "/x", "data": {}},
                                 {"specversion": "1.0", "id": "1", "type": "T", "subject": "s", "source": "/x", "data": {}}])
def test_a_trigger_event_without_a_time_has_an_empty_time(raw):
    from shared.events import from_trigger
    assert from_trigger(_decoded(raw)) == Event(id="1", type="T", subject="s", time="", data={}, source="/x")


def test_the_published_cloudevent_decodes_to_a_registration():
    from azure.functions import CloudEvent
    from shared.events import from_trigger
    event = _decoded(_first("ml-pipeline-run-completed.cloudevent.json"))
    assert isinstance(event, CloudEvent)
    normalized = from_trigger(event)
    assert normalized.source.endswith("/workspaces/mlw-demo") and normalized.time.startswith("2026-11-20T10:42:13")
    assert decide(normalized).action == "register"


def test_a_trigger_event_without_a_type_is_refused():
    from shared.events import from_trigger
    with pytest.raises(InvalidEvent, match="type"):
        from_trigger(_decoded({"specversion": "1.0", "id": "1", "source": "/x", "data": {}}))


def test_job_events_declares_a_type_the_worker_and_the_converter_accept():
    """The worker refuses a binding annotation that is not a class ("invalid non-type annotation") and then
    asks the converter, which accepts a subclass of EventGridEvent or CloudEvent: a Union fails both, so
    the function declares one class and still receives either (the converter decodes by the payload)."""
    import typing
    import azure.functions as func
    from azure.functions.eventgrid import EventGridEventInConverter
    from functions import job_events
    from tests.test_job_events_concurrency import user_function
    annotation = typing.get_type_hints(user_function(job_events, "job_events"))["event"]
    assert isinstance(annotation, type) and EventGridEventInConverter.check_input_type_annotation(annotation)
    assert not EventGridEventInConverter.check_input_type_annotation(typing.Union[func.EventGridEvent, func.CloudEvent])


@pytest.mark.integration
@pytest.mark.parametrize("schema", ["eventgrid", "cloudevent"])
def test_job_events_registers_and_requests_a_deploy_from_either_schema(schema, workspace, tmp_path, monkeypatch):
    from functions import job_events
    from shared import bus, naming
    from shared.ml import base_model_name
    from tests.test_job_events_concurrency import JOB, completion, finished_job, user_function
    monkeypatch.setenv("TUNEFLOW_ML_BACKEND", "local")
    finished_job(workspace, tmp_path)
    sent = []
    bus.use(lambda queue, body, message_id: sent.append((queue, message_id)))
    try:
        user_function(job_events, "job_events")(completion(schema=schema))
    finally:
        bus.use(None)
    model = naming.model_name(base_model_name(), "race")
    assert sent == [("deployments", f"{model}:{naming.model_version(JOB)}")]


def test_explain_all_says_what_each_event_became_in_full():
    """Every field of every line: the CLI's table and `--json` print exactly these."""
    completed = published(event_type="RunCompleted")
    repeat = dict(completed)
    late_failure = {**published(status="failed"), "id": "third-event"}
    invalid = {"id": "x"}
    out = explain_all([completed, repeat, invalid, late_failure])
    job, eid = PUBLISHED_JOB, completed["id"]
    assert out[0] == {"action": "register", "job": job, "reason": out[0]["reason"], "event_id": eid,
                      "event_type": "Microsoft.MachineLearningServices.RunCompleted"}
    assert out[1] == {"action": "ignore", "job": job, "reason": f"repeat of event {eid}", "event_id": eid,
                      "event_type": "Microsoft.MachineLearningServices.RunCompleted"}
    assert out[2]["action"] == "ignore" and out[2]["job"] == "" and out[2]["reason"].startswith("invalid event: ")
    assert set(out[2]) == {"action", "job", "reason"}
    assert out[3] == {"action": "ignore", "job": job, "reason": f"stale: job already completed (event {eid})",
                      "event_id": "third-event", "event_type": "Microsoft.MachineLearningServices.RunStatusChanged"}


def test_explain_all_keeps_a_failure_as_the_terminal_status_and_reads_on_after_it():
    failed = published(status="failed")
    completed_later = {**published(event_type="RunCompleted"), "id": "later"}
    again = {**published(status="Failed", pascal=True), "id": "again"}
    out = explain_all([failed, completed_later, again, failed])
    assert [o["action"] for o in out] == ["record-failure", "ignore", "ignore", "ignore"]
    assert out[1]["reason"] == f"stale: job already failed (event {failed['id']})"
    assert out[2]["reason"] == f"the same outcome reported again: job already failed (event {failed['id']})"
    assert out[3]["reason"] == f"repeat of event {failed['id']}"


# -- explain-event's input file ------------------------------------------------------------------

COMPLETED, FAILED = _first("ml-pipeline-run-completed.eventgrid.json"), _first("ml-pipeline-run-failed.eventgrid.json")


@pytest.mark.parametrize("text, events", [
    (json.dumps(COMPLETED), [COMPLETED]),  # one event object
    (json.dumps([COMPLETED, FAILED]), [COMPLETED, FAILED]),  # an array, as Event Grid delivers
    (f"{json.dumps(COMPLETED)}\n\n{json.dumps(FAILED)}\n", [COMPLETED, FAILED]),  # JSON Lines, blank lines skipped
    ("\ufeff" + json.dumps([COMPLETED]), [COMPLETED]),  # with the byte order mark Windows editors write
])
def test_read_events_reads_an_object_an_array_or_json_lines(tmp_path, text, events):
    path = tmp_path / "events.json"
    path.write_text(text, encoding="utf-8")
    assert read_events(path) == events


@pytest.mark.parametrize("text, message", [
    ("", "{path} holds no events"),
    ("\n  \n", "{path} holds no events"),
    ("[]", "{path} holds no events"),
    ("{}", "{path} holds no events"),
    (json.dumps(COMPLETED) + "\nnot json\n", "{path} is not JSON (Expecting value: line 1 column 1 (char 0)): "
                                              "give an event object, an array of events or JSON Lines"),
])
def test_read_events_refuses_a_file_without_events(tmp_path, text, message):
    path = tmp_path / "events.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidEvent) as refused:
        read_events(path)
    assert str(refused.value) == message.format(path=path)
