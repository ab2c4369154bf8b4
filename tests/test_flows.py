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
