"""Flow records (shared/flows.py): first write wins, the summary is the furthest stage with every field
any stage recorded, repeatable stages keep each record, waiting datasets count until prepared."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from shared import flows

T = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)


def rec(stage: str, minute: int, flow: str = "f1", **fields) -> dict:
    return {"flow_id": flow, "stage": stage, "at": (T + timedelta(minutes=minute)).isoformat(timespec="milliseconds"),
            **fields}


@pytest.mark.parametrize("records, stage, fields", [
    pytest.param([rec("prepared", 0, dataset="d", version="v")], "prepared", {"dataset": "d", "version": "v"},
                 id="one-record"),
    pytest.param([rec("deployed", 3, endpoint="e", expires_at="x"), rec("prepared", 0, dataset="d"),
                  rec("submitted", 1, job="j")], "deployed", {"dataset": "d", "job": "j", "endpoint": "e"},
                 id="out-of-order-reads"),
    pytest.param([rec("smoke-tested", 5), rec("reaped", 9), rec("deployed", 4)], "reaped", {}, id="reaped-is-last"),
    pytest.param([rec("registered", 3, model="m:1"), rec("job-failed", 2)], "registered", {"model": "m:1"},
                 id="same-position-later-wins"),
    pytest.param([rec("deployed", 4, endpoint="e1"), rec("extended", 5), rec("extended", 8)], "extended",
                 {"endpoint": "e1"}, id="extended"),
    pytest.param([rec("registered", 3, model="m:1"), {"flow_id": "f1", "stage": "job-failed"}], "registered",
                 {"model": "m:1"}, id="untimed-record-is-earliest-of-its-position"),
])
def test_summary_is_the_furthest_stage_with_every_field(records, stage, fields):
    (status,) = flows.summarize(records)
    assert status.stage == stage
    for key, value in fields.items():
        assert getattr(status, key) == value


def test_summary_is_one_row_per_flow_oldest_first():
    rows = flows.summarize([rec("prepared", 5, flow="late"), rec("prepared", 1, flow="early"),
                            rec("submitted", 6, flow="early")])
    assert [(r.flow_id, r.stage) for r in rows] == [("early", "submitted"), ("late", "prepared")]


def test_details_are_kept_per_stage_and_notes_name_the_error():
    (status,) = flows.summarize([rec("prepared", 0, detail={"rows": 3}),
                                 rec("smoke-failed", 5, detail={"error": "endpoint answered 424"})])
    assert status.details == {"prepared": {"rows": 3}, "smoke-failed": {"error": "endpoint answered 424"}}
    assert status.note() == "endpoint answered 424"


@pytest.mark.integration
def test_a_stage_recorded_twice_keeps_its_first_record(storage_env):
    from shared import storage
    log = storage.container("flows")
    first = flows.record(log, "f1", "registered", model="m:1")
    flows.record(log, "f1", "registered", model="m:2")  # a repeated delivery, different content
    (only,) = flows.read_all(log)
    assert only["model"] == "m:1" and only["at"] == first["at"]
    assert flows.reached(log, "f1", "registered") and not flows.reached(log, "f1", "deployed")


@pytest.mark.integration
def test_a_repeatable_stage_keeps_every_record(storage_env):
    from shared import storage
    log = storage.container("flows")
    first = flows.record(log, "f1", "extended", expires_at="a")
    from shared.ttl import utcnow
    from tests.conftest import wait_for
    # two renewals are two moments (the record's name holds its millisecond), as two commands are
    wait_for(lambda: utcnow().isoformat(timespec="milliseconds") != first["at"], 5, "the clock to move", 0.001)
    flows.record(log, "f1", "extended", expires_at="b")
    assert sorted(r["expires_at"] for r in flows.read_all(log)) == ["a", "b"]


@pytest.mark.integration
def test_a_waiting_dataset_counts_until_a_flow_of_it_is_prepared_after_the_listing(storage_env):
    from shared import storage
    log = storage.container("flows")
    flows.record_waiting(log, "d", "dataset.json", ["train_sft.jsonl"], T)
    assert [m["dataset"] for m in flows.read_waiting(log, flows.read_all(log))] == ["d"]
    assert flows.read_all(log) == []  # a marker is not a flow record
    older = [rec("prepared", -5, dataset="d")]  # an earlier version: the dataset still waits
    assert [m["dataset"] for m in flows.read_waiting(log, older)] == ["d"]
    newer = [rec("refused", 1, dataset="d")]
    assert flows.read_waiting(log, newer) == []


@pytest.mark.integration
def test_waiting_markers_read_back_in_full_oldest_first_and_only_for_their_own_dataset(storage_env):
    from shared import storage
    log = storage.container("flows")
    flows.record_waiting(log, "late", "dataset.json (x)", ["a.jsonl"], T + timedelta(minutes=2))
    flows.record_waiting(log, "early", "2 of 3 files", ["b.jsonl", "c.jsonl"], T)
    flows.record(log, "f9", "prepared")  # a flow record without a dataset says nothing about markers
    records = flows.read_all(log) + [rec("prepared", 0, flow="f8", dataset="other"),  # another dataset's flow
                                     rec("submitted", 9, flow="f7", dataset="late")]  # not a preparation
    markers = flows.read_waiting(log, records)
    assert markers == [
        {"dataset": "early", "stage": "waiting", "waiting_for": "2 of 3 files", "files": ["b.jsonl", "c.jsonl"],
         "at": T.isoformat(timespec="milliseconds")},
        {"dataset": "late", "stage": "waiting", "waiting_for": "dataset.json (x)", "files": ["a.jsonl"],
         "at": (T + timedelta(minutes=2)).isoformat(timespec="milliseconds")}]
    same_moment = [rec("prepared", 0, flow="f6", dataset="early")]  # prepared by the very listing's moment
    assert [m["dataset"] for m in flows.read_waiting(log, same_moment)] == ["late"]
    two = [rec("prepared", 3, flow="f5", dataset="late"), rec("prepared", 1, flow="f4", dataset="late")]
    assert [m["dataset"] for m in flows.read_waiting(log, two)] == ["early"]  # the latest preparation counts


def test_a_waiting_row_and_its_note():
    marker = {"dataset": "d", "stage": "waiting", "waiting_for": "dataset.json", "files": ["a"], "at": "t"}
    row = flows.waiting_status(marker)
    assert row.as_dict() == {"flow_id": "", "stage": "waiting", "dataset": "d", "version": "", "job": "", "model": "",
                             "endpoint": "", "expires_at": "", "gate": "", "eval_loss": None, "base_eval_loss": None,
                             "stage_times": {"waiting": "t"},
                             "details": {"waiting": {"waiting_for": "dataset.json", "files": ["a"]}}}
    assert row.note() == "waits for dataset.json"
    assert flows.waiting_status({"dataset": "d", "waiting_for": "x", "at": "t"}).details["waiting"]["files"] == []


@pytest.mark.parametrize("stage, detail, note", [
    ("smoke-failed", {"error": "e" * 200}, "e" * 120),
    ("deploy-failed", {"reason": "no error field"}, ""),
    ("prepared", "not a dict", ""),
    ("waiting", {"files": []}, "waits for "),
    ("registered", None, ""),
    ("gate-failed", {"reason": "eval_loss 1.9 is not below 1.8", "error": "x"}, "eval_loss 1.9 is not below 1.8"),
    ("rollout-failed", {"reason": "smoke test: endpoint answered 424"}, "smoke test: endpoint answered 424"),
    ("superseded", {"reason": "e1 already serves m:3 of flow f9"}, "e1 already serves m:3 of flow f9"),
    ("rolled-back", {"reason": "rolled back by hand: from d2 to d1"}, "rolled back by hand: from d2 to d1"),
    ("superseded", {"reason": "r" * 200}, "r" * 120),
    ("rollout-failed", {"error": "no reason field"}, ""),
])
def test_notes(stage, detail, note):
    status = flows.FlowStatus(flow_id="f", stage=stage, details={stage: detail} if detail is not None else {})
    assert status.note() == note


def test_summary_orders_by_stage_then_time_and_keeps_each_stage_time():
    records = [rec("reaped", 9), {"flow_id": "f1", "stage": "mystery", "at": rec("x", 8)["at"]},
               rec("deployed", 4, endpoint="e"), {"flow_id": "f1", "stage": "prepared"}]
    (status,) = flows.summarize(records)
    assert status.stage == "reaped"  # an unknown stage sorts first, a record without a time before timed ones
    assert status.stage_times == {"mystery": rec("x", 8)["at"], "prepared": "", "deployed": rec("x", 4)["at"],
                                  "reaped": rec("x", 9)["at"]}
    assert list(status.stage_times) == ["mystery", "prepared", "deployed", "reaped"]


@pytest.mark.parametrize("details, eval_loss, base_eval_loss", [
    pytest.param({"gate-passed": {"verdict": "passed", "eval_loss": 1.25, "base_eval_loss": 1.5},
                  "registered": {"metrics": {"eval_loss": 1.3, "base_eval_loss": 1.6}}}, 1.25, 1.5,
                 id="the-gate-figures-stand"),
    pytest.param({"gate-failed": {"verdict": "failed", "eval_loss": 2, "base_eval_loss": 1.5},
                  "registered": {"metrics": {"eval_loss": 1.3, "base_eval_loss": 1.6}}}, 2, 1.5,
                 id="a-failed-gate-figures-stand-ints-too"),
    pytest.param({"registered": {"metrics": {"eval_loss": 1.3, "base_eval_loss": 1.6}}}, 1.3, 1.6,
                 id="before-the-gate-the-job-figures"),
    pytest.param({"gate-passed": {"verdict": "off", "eval_loss": True, "base_eval_loss": "1.5"},
                  "registered": {"metrics": {"eval_loss": 0.9, "base_eval_loss": None}}}, 0.9, None,
                 id="a-gate-non-number-falls-back-to-the-job"),
    pytest.param({"registered": {"metrics": {"eval_loss": "nan", "base_eval_loss": False}}}, None, None,
                 id="job-non-numbers-are-none"),
    pytest.param({"registered": {"rows": 3}}, None, None, id="no-metrics"),
    pytest.param({}, None, None, id="no-details"),
])
def test_metrics_are_the_gate_figures_else_the_job_figures(details, eval_loss, base_eval_loss):
    status = flows.FlowStatus(flow_id="f", stage="registered", details=details)
    row = status.as_dict()
    assert (row["eval_loss"], row["base_eval_loss"]) == (eval_loss, base_eval_loss)
    assert (status.metric("eval_loss"), status.metric("base_eval_loss")) == (eval_loss, base_eval_loss)


@pytest.mark.parametrize("stage, at, key, name", [
    ("registered", "", "", "f1/3-registered.json"),
    ("registered", "2026-12-01T10:00:00.000+00:00", "010", "f1/3-registered.json"),  # neither time nor key named
    ("gate-failed", "", "", "f1/4-gate.json"),  # a slot: one record for either verdict
    ("superseded", "", "", "f1/9-rollout.json"),
    ("extended", "2026-12-01T10:00:00.000+00:00", "", "f1/5-extended-2026-12-01T100000.000+0000.json"),
    ("shifted", "", "010", "f1/8-shifted-010.json"),
])
def test_record_names_are_stable(stage, at, key, name):
    assert flows.record_name("f1", stage, at, key) == name


@pytest.mark.integration
@pytest.mark.parametrize("stage, key, fields", [
    pytest.param("registered", "", {"model": "m:1"}, id="plain"),
    pytest.param("shifted", "010", {"endpoint": "e"}, id="keyed"),
    pytest.param("shifted", "", {}, id="keyed-without-key"),
    pytest.param("gate-passed", "", {"detail": {"verdict": "passed"}}, id="slot"),
])
def test_a_record_reads_back_by_the_same_arguments_and_only_for_its_flow(storage_env, stage, key, fields):
    from shared import storage
    log = storage.container("flows")
    by = {"key": key} if key else {}  # no key: the arguments' defaults
    body = flows.record(log, "f1", stage, **by, **fields)
    assert body == {"flow_id": "f1", "stage": stage, "at": body["at"], **fields, **by}
    assert flows.get(log, "f1", stage, **by) == body and flows.reached(log, "f1", stage, **by)
    assert flows.get(log, "f2", stage, **by) is None and not flows.reached(log, "f2", stage, **by)
    if key:  # another key is another record
        assert flows.get(log, "f1", stage, key="020") is None and not flows.reached(log, "f1", stage, key="020")


@pytest.mark.integration
@pytest.mark.parametrize("first, second, other", [
    ("gate-failed", "gate-passed", "gate-passed"),
    ("rolled-out", "superseded", "rollout-failed"),
    ("superseded", "rollout-failed", "rolled-out"),
])
def test_the_first_decision_stands_for_its_flow_only(storage_env, first, second, other):
    from shared import storage
    log = storage.container("flows")
    standing = flows.decide_once(log, "f1", first, model="m:1", detail={"reason": "first"})
    assert standing == {"flow_id": "f1", "stage": first, "at": standing["at"], "model": "m:1",
                        "detail": {"reason": "first"}}
    assert datetime.fromisoformat(standing["at"]).tzinfo is not None
    assert flows.decide_once(log, "f1", second, model="m:1", detail={"reason": "second"}) == standing
    assert flows.get(log, "f1", second) == standing and flows.get(log, "f1", first) == standing
    theirs = flows.decide_once(log, "f2", other, detail={"reason": "theirs"})
    assert theirs["stage"] == other and flows.get(log, "f2", first) == theirs
    assert flows.get(log, "f1", first) == standing


def _at(minute: int) -> str:
    return (T + timedelta(minutes=minute)).isoformat(timespec="milliseconds")


@pytest.mark.integration
@pytest.mark.parametrize("blobs, start", [
    pytest.param({"1-prepared.json": 0, "2-submitted.json": 1, "3-registered.json": 2}, _at(0), id="prepared"),
    pytest.param({"2-submitted.json": 1, "3-registered.json": 2}, _at(1), id="begun-by-submit"),
    pytest.param({"1-prepared.json": None, "3-registered.json": 2}, "", id="untimed"),
    pytest.param({}, "", id="no-records"),
])
def test_a_flow_starts_at_its_earliest_prepared_or_submitted_record(storage_env, blobs, start):
    from shared import storage
    log = storage.container("flows")
    for name, minute in blobs.items():
        storage.put_json(log, f"f1/{name}", {"flow_id": "f1", **({"at": _at(minute)} if minute is not None else {})})
    storage.put_json(log, "f10/1-prepared.json", {"flow_id": "f10", "at": _at(-60)})  # its id starts alike
    assert flows.started_at(log, "f1") == start
