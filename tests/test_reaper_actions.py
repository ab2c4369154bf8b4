"""The reaper's actions, each part on its own with a frozen clock: retry and confirm, the cost of what
is deleted, what a decision acts on, the write-ahead records a dead run leaves and the next run
settles, the audit. The Azure backend is driven over its HTTP edge (tests/azure_fake.py), the state
container is Azurite's; the whole run is in test_reaper.py."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from shared.ml.base import DeploymentInfo, EndpointInfo, HasTraffic, JobInfo, NotFound, Throttled
from shared.reaper import (PENDING_PREFIX, ReapDecision, ReaperPolicy, ReapRun, Target, _acted, _audit, _confirmed,
                           _cost, _gone, _settle_pending, _targets, _write_pending, cancel_confirmed,
                           delete_deployment_confirmed, reap)
from tests.test_reaper import MANAGED, NOW, POLICY, Sleeps, azure, deploy

FLOW_A = "aaaaaaaa-8598-5118-9f6d-5a45f4408403"
FLOW_B = "bbbbbbbb-8598-5118-9f6d-5a45f4408403"
FLOW_C = "cccccccc-8598-5118-9f6d-5a45f4408403"


# -- act, then confirm: retries, back-off, outcomes -------------------------------------------------

class Script:
    """`act` follows a script: per call, an exception to raise or None (accepted)."""

    def __init__(self, *steps):
        self.steps, self.calls = list(steps), 0

    def __call__(self):
        self.calls += 1
        step = self.steps.pop(0) if self.steps else None
        if step is not None:
            raise step


ACTED = [
    # (act's script, done's answers (then the last forever), attempts, confirm timeout, outcome, attempts, sleeps)
    ((NotFound("gone"),), [True], 4, 10, ("already-gone", 1), []),
    ((Throttled("slow down"), NotFound("gone")), [True], 4, 10, ("confirmed", 2), [2]),  # gone after a retry
    ((Throttled("slow down", retry_after=7),), [True], 4, 10, ("confirmed", 2), [7]),  # Retry-After honoured
    ((HasTraffic("serving"),), [True], 4, 10, ("refused", 1), []),
    ((Throttled("slow"), HasTraffic("serving")), [True], 4, 10, ("refused", 2), [2]),
    ((), [True], 4, 10, ("confirmed", 1), []),
    ((), [False, True], 4, 10, ("confirmed", 1), [1]),
    ((), [False, False, False, True], 4, 10, ("confirmed", 1), [1, 2, 4]),  # polls back off
    ((), [False], 2, 3, ("unconfirmed", 2), [1, 2, 1, 2]),  # each attempt polls for the whole timeout
    ((), [False], 1, 0, ("unconfirmed", 1), []),  # no time to wait: one look
    ((), [False], 1, 1, ("unconfirmed", 1), [1]),  # a second to wait: one wait, then a last look
    ((), [False], 1, 100, ("unconfirmed", 1), [1, 2, 4, 8, 16, 30, 30, 30]),  # polls at most 30 s apart
    ((Throttled("t"),) * 4, [True], 4, 10, ("unconfirmed", 4), [2, 4, 8, 16]),
    ((Throttled("t"),) * 7, [True], 7, 10, ("unconfirmed", 7), [2, 4, 8, 16, 32, 60, 60]),  # back-off capped
]


@pytest.mark.parametrize("script, answers, attempts, timeout, want, sleeps", ACTED)
def test_act_then_confirm(script, answers, attempts, timeout, want, sleeps):
    answers = list(answers)

    def done():
        return answers.pop(0) if len(answers) > 1 else answers[0]
    slept = Sleeps()
    act = Script(*script)
    assert _acted(act, done, ReaperPolicy(attempts=attempts, confirm_timeout_s=timeout), slept, "thing") == want
    assert slept == sleeps and act.calls == want[1]


@pytest.mark.parametrize("answers, sleeps", [
    ([Throttled("t", retry_after=5), True], [5]),  # a throttled poll waits as long as it is told
    ([Throttled("t"), True], [1]),  # no hint: the current interval
    ([False, Throttled("t", retry_after=0.5), True], [1, 2]),  # a hint shorter than the interval: the interval
])
def test_polling_through_throttling(answers, sleeps):
    answers = list(answers)  # the table's list is read again by every run in this process

    def check():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer
    slept = Sleeps()
    assert _confirmed(check, 60, slept) is True and slept == sleeps


def test_a_deployment_is_confirmed_gone_when_its_endpoint_is_gone_too():
    d = azure()
    deploy(d, "tf-dep-gone")
    d.fake.endpoints.pop("tf-dep-gone")  # deleted by someone else, with its deployments, meanwhile
    with pytest.raises(NotFound):
        d.backend.get_endpoint("tf-dep-gone")
    assert delete_deployment_confirmed(d.backend, "tf-dep-gone", "demo", POLICY, Sleeps()) == ("already-gone", 1)


def test_an_ended_job_is_not_canceled():
    from dataclasses import replace as copy
    d = azure()
    d.backend.submit(copy(d.spec("ft-ended-0000abcd"), tags=MANAGED))
    d.finish("ft-ended-0000abcd", "Failed")
    assert cancel_confirmed(d.backend, "ft-ended-0000abcd", POLICY, Sleeps()) == ("already-gone", 1)
    assert d.backend.get_job("ft-ended-0000abcd").status == "Failed"
    assert [m for m, url, _ in d.fake.calls if m == "POST" and url.endswith("/cancel")] == []


# -- the cost of a thing ------------------------------------------------------------------------------

PRICES = {"standard_nc24ads_a100_v4": 3.67, "standard_ds3_v2": 0.293, "standard_f2s_v2": 0.123456}

COSTS = [
    # (items, created_at, what it costs)
    ([("Standard_NC24ads_A100_v4", 1)], "2026-11-25T00:00:00Z",
     {"instance_hours_used": 12.0, "price_per_hour": 3.67, "cost_avoided_per_day": 88.08, "unpriced_skus": []}),
    ([("Standard_NC24ads_A100_v4", 2), ("Standard_DS3_v2", 3)], "2026-11-25T11:00:00Z",
     {"instance_hours_used": 5.0, "price_per_hour": 8.219, "cost_avoided_per_day": 197.26, "unpriced_skus": []}),
    ([("Standard_DS3_v2", 1)], "2026-11-25T11:59:00Z",  # 1 min: 0.0167 h, to 2 places
     {"instance_hours_used": 0.02, "price_per_hour": 0.293, "cost_avoided_per_day": 7.03, "unpriced_skus": []}),
    ([("Standard_DS3_v2", 3)], "2026-11-25T11:00:00Z",  # 3 x 0.293 = 0.879 per hour
     {"instance_hours_used": 3.0, "price_per_hour": 0.879, "cost_avoided_per_day": 21.1, "unpriced_skus": []}),
    ([("standard_e4s_v3", 1), ("Standard_E4s_v3", 1), ("Standard_A1", 2)], "2026-11-25T10:00:00Z",
     {"instance_hours_used": 8.0, "price_per_hour": 0.0, "cost_avoided_per_day": 0.0,
      "unpriced_skus": ["Standard_A1", "Standard_E4s_v3", "standard_e4s_v3"]}),  # as named, sorted, once each
    ([("Standard_DS3_v2", -1), ("Standard_DS3_v2", 0)], "2026-11-25T11:00:00Z",  # no instances cost nothing
     {"instance_hours_used": 0.0, "price_per_hour": 0.0, "cost_avoided_per_day": 0.0, "unpriced_skus": []}),
    ([("Standard_DS3_v2", 1)], "", {"instance_hours_used": None, "price_per_hour": 0.293,
                                    "cost_avoided_per_day": 7.03, "unpriced_skus": []}),  # age unknown
    ([("", 1)], "garbage", {"instance_hours_used": None, "price_per_hour": 0.0, "cost_avoided_per_day": 0.0,
                            "unpriced_skus": [""]}),
    ([("Standard_F2s_v2", 1)], "2026-11-25T11:00:00Z",  # a price per hour to four places
     {"instance_hours_used": 1.0, "price_per_hour": 0.1235, "cost_avoided_per_day": 2.96, "unpriced_skus": []}),
    ([], "2026-11-25T11:00:00Z",
     {"instance_hours_used": 0.0, "price_per_hour": 0.0, "cost_avoided_per_day": 0.0, "unpriced_skus": []}),
]


@pytest.mark.parametrize("items, created_at, want", COSTS)
def test_cost(items, created_at, want):
    assert _cost(items, created_at, NOW, PRICES) == want


def test_cost_of_a_sku_named_none():
    assert _cost([(None, 1)], "2026-11-25T11:00:00Z", NOW, {"": 1.5}) == {
        "instance_hours_used": 1.0, "price_per_hour": 1.5, "cost_avoided_per_day": 36.0, "unpriced_skus": []}


# -- what a decision acts on ----------------------------------------------------------------------

@pytest.mark.parametrize("kind, endpoint, name, key", [
    ("endpoint", "tf-a", "tf-a", "pending/tf-a.json"),
    ("deployment", "tf-a", "v-2", "pending/tf-a/v-2.json"),
    ("job", "", "ft-a-0000abcd", "pending/job/ft-a-0000abcd.json"),
])
def test_pending_names(kind, endpoint, name, key):
    assert Target(kind, endpoint, name, (), (), "").key == key


def test_targets_name_each_endpoint_deployment_and_job_with_their_flows_and_instances():
    deployments = (DeploymentInfo("v-1", "Standard_DS3_v2", 2, "Succeeded", created_at="2026-11-25T08:00:00Z",
                                  tags={"flow-id": FLOW_A}),
                   DeploymentInfo("v-2", "Standard_NC24ads_A100_v4", 1, "Succeeded", created_at="2026-11-25T09:00:00Z",
                                  tags={"Flow-Id": FLOW_B}),
                   DeploymentInfo("v-3", "Standard_DS3_v2", 1, "Succeeded", tags={"flow-id": FLOW_A}))
    endpoint = EndpointInfo("tf-a", {**MANAGED, "flow-id": FLOW_B}, "Succeeded", "2026-11-25T07:00:00Z",
                            deployments=deployments)
    bare = EndpointInfo("tf-bare", MANAGED, "Succeeded")
    job = JobInfo("ft-a-0000abcd", "Running", tags={"flow-id": FLOW_A}, created_at="2026-11-25T06:00:00Z",
                  compute="Standard_NC24ads_A100_v4")
    untagged = JobInfo("ft-b-0000abcd", "Running")
    assert _targets([endpoint, bare], [job, untagged]) == {
        "tf-a": Target("endpoint", "tf-a", "tf-a", (FLOW_B, FLOW_A),  # each flow once, the endpoint's first
                       (("Standard_DS3_v2", 2), ("Standard_NC24ads_A100_v4", 1), ("Standard_DS3_v2", 1)),
                       "2026-11-25T07:00:00Z"),
        "tf-a/v-1": Target("deployment", "tf-a", "v-1", (FLOW_A,), (("Standard_DS3_v2", 2),), "2026-11-25T08:00:00Z"),
        "tf-a/v-2": Target("deployment", "tf-a", "v-2", (FLOW_B,), (("Standard_NC24ads_A100_v4", 1),),
                           "2026-11-25T09:00:00Z"),
        "tf-a/v-3": Target("deployment", "tf-a", "v-3", (FLOW_A,), (("Standard_DS3_v2", 1),), ""),
        "tf-bare": Target("endpoint", "tf-bare", "tf-bare", (), (), ""),
        "ft-a-0000abcd": Target("job", "", "ft-a-0000abcd", (FLOW_A,), (("Standard_NC24ads_A100_v4", 1),),
                                "2026-11-25T06:00:00Z"),
        "ft-b-0000abcd": Target("job", "", "ft-b-0000abcd", (), (("", 1),), ""),
    }


# -- is a pending action's thing gone? -----------------------------------------------------------------

SERVING = EndpointInfo("tf-a", MANAGED, "Succeeded", deployments=(DeploymentInfo("v-1", "x", 1, "Succeeded"),))

GONE = [
    ({"kind": "endpoint", "endpoint": "tf-a", "name": "tf-a"}, [SERVING], False),
    ({"kind": "endpoint", "endpoint": "tf-a", "name": "tf-a"}, [], True),
    ({"kind": "endpoint", "endpoint": "tf-b", "name": "tf-b"}, [SERVING], True),
    ({"endpoint": "tf-a", "flow_id": FLOW_A}, [SERVING], False),  # an older run's record: no kind, an endpoint
    ({"endpoint": "tf-a", "flow_id": FLOW_A}, [], True),
    ({"kind": "deployment", "endpoint": "tf-a", "name": "v-1"}, [SERVING], False),
    ({"kind": "deployment", "endpoint": "tf-a", "name": "v-2"}, [SERVING], True),
    ({"kind": "deployment", "endpoint": "tf-a", "name": "v-1"}, [], True),  # its endpoint went too
    ({"kind": "deployment", "endpoint": "tf-b", "name": "v-1"}, [SERVING], True),
]


@pytest.mark.parametrize("pending, endpoints, gone", GONE)
def test_whether_a_pending_endpoint_or_deployment_is_gone(pending, endpoints, gone):
    assert _gone(None, pending, endpoints) is gone  # endpoints and deployments: from the run's own listing


@pytest.mark.parametrize("status, gone", [("Running", False), ("Queued", False), ("Completed", True),
                                          ("Failed", True), ("Canceled", True), (None, True)])
def test_whether_a_pending_job_has_ended(status, gone):
    from dataclasses import replace as copy
    d = azure()
    if status is not None:  # None: no such job (any more)
        d.backend.submit(copy(d.spec("ft-pending-0000abcd"), tags=MANAGED))
        d.fake.finish_job("ft-pending-0000abcd", status)  # sets any status the service reports
    pending = {"kind": "job", "endpoint": "", "name": "ft-pending-0000abcd"}
    assert _gone(d.backend, pending, [SERVING]) is gone


# -- written ahead, settled by the next run ---------------------------------------------------------

def test_the_write_ahead_record_in_full(storage_env):
    from shared import storage
    state = storage.container("reaper")
    target = Target("deployment", "tf-a", "v-1", (FLOW_A, FLOW_B), (("x", 1),), "")
    _write_pending(state, ReapDecision("tf-a", "delete", "deployment-idle", "idle for 4000 s", kind="deployment",
                                       name="v-1"), target, "run-1")
    assert [b.name for b in state.list_blobs()] == ["pending/tf-a/v-1.json"]
    assert storage.get_json(state, "pending/tf-a/v-1.json") == {
        "kind": "deployment", "endpoint": "tf-a", "name": "v-1", "flow_ids": [FLOW_A, FLOW_B],
        "rule": "deployment-idle", "reason": "idle for 4000 s", "run_id": "run-1"}
    _write_pending(None, ReapDecision("tf-a", "delete", "expired", "x"), target, "run-2")  # no state: nothing


def test_pending_records_are_settled_once_their_thing_is_gone(storage_env):
    """Three records a dead run left: a deployment that is gone, one that is still there (decided afresh),
    and an older version's endpoint record (one `flow_id`, no kind). Each is cleared; the gone ones are
    recorded `reaped` for each of their flows, naming both runs."""
    from shared import flows, storage
    state, flow_log = storage.container("reaper"), storage.container("flows")
    storage.put_json(state, "pending/tf-a/v-9.json", {
        "kind": "deployment", "endpoint": "tf-a", "name": "v-9", "flow_ids": [FLOW_A, FLOW_B],
        "rule": "deployment-idle", "reason": "idle", "run_id": "run-1"})
    storage.put_json(state, "pending/tf-a/v-1.json", {
        "kind": "deployment", "endpoint": "tf-a", "name": "v-1", "flow_ids": [FLOW_A], "rule": "deployment-idle",
        "reason": "idle", "run_id": "run-1"})
    storage.put_json(state, "pending/tf-old.json", {"endpoint": "tf-old", "flow_id": FLOW_C, "rule": "expired",
                                                   "reason": "expired at 2026-11-25T11:00:00Z", "run_id": "run-0"})
    storage.put_json(state, "audit/not-pending.json", {})
    _settle_pending(state, None, [SERVING], ReapRun("run-2", []), flow_log)
    assert [b.name for b in state.list_blobs()] == ["audit/not-pending.json"]
    got = sorted((r["flow_id"], r["stage"], r["endpoint"], json.dumps(r["detail"], sort_keys=True))
                 for r in flows.read_all(flow_log))
    assert got == sorted([
        (FLOW_A, "reaped", "tf-a", json.dumps({"reason": "idle", "rule": "deployment-idle", "run_id": "run-1",
                                               "recorded_by": "run-2", "kind": "deployment", "name": "v-9"},
                                              sort_keys=True)),
        (FLOW_B, "reaped", "tf-a", json.dumps({"reason": "idle", "rule": "deployment-idle", "run_id": "run-1",
                                               "recorded_by": "run-2", "kind": "deployment", "name": "v-9"},
                                              sort_keys=True)),
        (FLOW_C, "reaped", "tf-old", json.dumps({"reason": "expired at 2026-11-25T11:00:00Z", "rule": "expired",
                                                 "run_id": "run-0", "recorded_by": "run-2", "kind": "endpoint",
                                                 "name": ""}, sort_keys=True)),
    ])


def test_pending_records_without_a_flow_log_are_cleared_all_the_same(storage_env):
    from shared import storage
    state = storage.container("reaper")
    storage.put_json(state, "pending/tf-old.json", {"kind": "endpoint", "endpoint": "tf-old", "name": "tf-old",
                                                   "flow_ids": [FLOW_A], "rule": "expired", "reason": "x",
                                                   "run_id": "run-0"})
    storage.put_json(state, "pending/empty.json", {})
    _settle_pending(state, None, [], ReapRun("run-1", []), None)
    assert list(state.list_blobs()) == []
    _settle_pending(None, None, [], ReapRun("run-1", []), None)  # no state: nothing to settle


# -- the audit ---------------------------------------------------------------------------------------

def _run_with(outcomes: dict, decisions: list[ReapDecision]) -> ReapRun:
    return ReapRun("0123456789abcdef", decisions, outcomes=outcomes)


TARGETS = {
    "tf-a": Target("endpoint", "tf-a", "tf-a", (FLOW_A,), (("Standard_NC24ads_A100_v4", 1),), "2026-11-25T00:00:00Z"),
    "tf-b": Target("endpoint", "tf-b", "tf-b", (FLOW_B,), (("Standard_NC24ads_A100_v4", 1),), "2026-11-25T00:00:00Z"),
    "tf-c/v-1": Target("deployment", "tf-c", "v-1", (FLOW_A, FLOW_B), (("Standard_DS3_v2", 2),), ""),
}
DECISIONS = [ReapDecision("tf-a", "delete", "expired", "expired at 2026-11-25T11:00:00Z", "2026-11-25T11:00:00Z", -3600,
                          name="tf-a"),
             ReapDecision("tf-b", "keep", "not-expired", "3600 s left", "2026-11-25T13:00:00Z", 3600, name="tf-b"),
             ReapDecision("tf-c", "delete", "deployment-idle", "idle", kind="deployment", name="v-1")]


def _audit_records(state) -> tuple[str, list[dict]]:
    [blob] = list(state.list_blobs(name_starts_with="audit/"))
    return blob.name, [json.loads(line) for line in state.download_blob(blob.name).readall().decode().splitlines()]


def test_the_audit_in_full(storage_env):
    from shared import flows, storage
    state, flow_log = storage.container("reaper"), storage.container("flows")
    policy = ReaperPolicy(prices={"standard_nc24ads_a100_v4": 3.67})
    run = _run_with({"tf-a": "confirmed", "tf-c/v-1": "unconfirmed"}, DECISIONS)
    _audit(run, TARGETS, NOW, policy, False, state, flow_log)
    name, records = _audit_records(state)
    assert name == "audit/2026-11-25/2026-11-25T12:00:00Z-01234567.jsonl"
    common = {"run_id": "0123456789abcdef", "at": "2026-11-25T12:00:00Z", "dry_run": False}
    assert records == [
        {**common, **DECISIONS[0].as_dict(), "outcome": "confirmed", "instance_hours_used": 12.0,
         "price_per_hour": 3.67, "cost_avoided_per_day": 88.08, "unpriced_skus": []},
        {**common, **DECISIONS[1].as_dict(), "outcome": ""},  # kept: no cost
        {**common, **DECISIONS[2].as_dict(), "outcome": "unconfirmed", "instance_hours_used": None,
         "price_per_hour": 0.0, "cost_avoided_per_day": 0.0, "unpriced_skus": ["Standard_DS3_v2"]},
    ]
    reaped = flows.read_all(flow_log)  # only what is confirmed gone
    assert [(r["flow_id"], r["stage"], r["endpoint"], r["detail"]) for r in reaped] == [
        (FLOW_A, "reaped", "tf-a", {"reason": "expired at 2026-11-25T11:00:00Z", "rule": "expired",
                                    "run_id": "0123456789abcdef", "kind": "endpoint", "name": "tf-a"})]
    raw = state.download_blob(name).readall().decode()
    assert raw == "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)  # one line each, keys sorted


def test_an_audit_record_is_never_overwritten(storage_env):
    """Audit blobs are written once: the same run at the same moment again is refused, the first kept."""
    from azure.core.exceptions import ResourceExistsError
    from shared import storage
    state = storage.container("reaper")
    _audit(_run_with({"tf-a": "confirmed"}, DECISIONS), TARGETS, NOW, POLICY, False, state, None)
    with pytest.raises(ResourceExistsError):
        _audit(_run_with({"tf-a": "unconfirmed"}, DECISIONS), TARGETS, NOW, POLICY, False, state, None)
    assert _audit_records(state)[1][0]["outcome"] == "confirmed"


@pytest.mark.parametrize("outcome, recorded", [("confirmed", True), ("already-gone", True), ("unconfirmed", False),
                                               ("refused", False), ("error: boom", False)])
def test_flows_are_recorded_reaped_only_when_their_thing_is_gone(storage_env, outcome, recorded):
    from shared import flows, storage
    flow_log = storage.container("flows")
    run = _run_with({"tf-c/v-1": outcome}, [DECISIONS[2]])
    _audit(run, TARGETS, NOW, POLICY, False, None, flow_log)
    got = sorted(r["flow_id"] for r in flows.read_all(flow_log))
    assert got == (sorted([FLOW_A, FLOW_B]) if recorded else [])


def test_a_dry_run_audits_nothing_to_storage_and_plans_its_actions(storage_env, caplog):
    from shared import storage
    state = storage.container("reaper")
    with caplog.at_level("INFO", logger="tuneflow.reaper"):
        _audit(_run_with({}, DECISIONS), TARGETS, NOW, POLICY, True, state, None)
    assert list(state.list_blobs()) == []
    records = [r.tuneflow for r in caplog.records if hasattr(r, "tuneflow")]
    assert [(r["dry_run"], r["outcome"]) for r in records] == [(True, "planned"), (True, ""), (True, "planned")]
    assert all(r.message.endswith("[dry run]") for r in caplog.records)


def test_a_run_with_nothing_to_decide_writes_no_audit(storage_env):
    from shared import storage
    state = storage.container("reaper")
    _audit(_run_with({}, []), {}, NOW, POLICY, False, state, None)
    assert list(state.list_blobs()) == []


def test_flags_are_warnings_the_rest_information(caplog):
    flag = ReapDecision("tf-b", "flag", "bad-expiry", "missing", name="tf-b")
    with caplog.at_level("INFO", logger="tuneflow.reaper"):
        _audit(_run_with({}, [flag, DECISIONS[1]]), TARGETS, NOW, POLICY, False, None, None)
    assert [(r.levelname, r.message) for r in caplog.records] == [
        ("WARNING", "reaper flag endpoint tf-b: missing (bad-expiry)"),
        ("INFO", "reaper keep endpoint tf-b: 3600 s left (not-expired)")]


# -- a whole run, dry ----------------------------------------------------------------------------------

def test_a_dry_run_acts_on_nothing_and_writes_nothing(storage_env):
    from shared import storage
    d = azure(created_at_in_properties=False, endpoint_system_data=False)
    deploy(d, "tf-expired")
    state = storage.container("reaper")
    run = reap(d.backend, NOW, POLICY, dry_run=True, state=state, sleep=Sleeps())
    assert [(x.target, x.action) for x in run.decisions] == [("tf-expired", "delete")]
    assert run.outcomes == {} and "tf-expired" in d.fake.endpoints
    assert list(state.list_blobs()) == []  # no lock, no pending record, no audit, no first-seen times
    assert [m for m, _url, _ in d.fake.calls if m == "DELETE"] == []


def test_one_failing_action_does_not_stop_the_others(storage_env, monkeypatch):
    from shared import storage
    d = azure()
    deploy(d, "tf-expired-1")
    deploy(d, "tf-expired-2")
    real = d.backend.delete_endpoint

    def delete(name):
        if name == "tf-expired-1":
            raise RuntimeError("the service broke")
        return real(name)
    monkeypatch.setattr(d.backend, "delete_endpoint", delete)
    run = reap(d.backend, NOW, ReaperPolicy(max_delete_share=1.0), state=storage.container("reaper"), sleep=Sleeps())
    assert run.outcomes == {"tf-expired-1": "error: the service broke", "tf-expired-2": "confirmed"}
    assert set(d.fake.endpoints) == {"tf-expired-1"}


def test_a_refused_deployment_delete_is_reported_refused(storage_env, monkeypatch):
    from shared import storage
    from tests.test_reaper import LIVE, dep, ep
    d = azure()
    endpoint = ep(LIVE, deployments=(dep("v-1", "2026-11-25T08:00:00Z"), dep("v-3", "2026-11-25T10:00:00Z", traffic=100)))

    def delete_deployment(endpoint, deployment):
        raise HasTraffic(f"{deployment} has traffic again")
    monkeypatch.setattr(d.backend, "list_endpoints", lambda: [endpoint])
    monkeypatch.setattr(d.backend, "delete_deployment", delete_deployment)
    run = reap(d.backend, NOW, POLICY, state=storage.container("reaper"), sleep=Sleeps())
    assert run.outcomes == {"tf-x/v-1": "refused"}
    assert list(storage.container("reaper").list_blobs(name_starts_with=PENDING_PREFIX)) == []


def test_first_seen_times_are_kept_only_for_endpoints_still_broken_without_a_creation_time(storage_env):
    from shared import storage
    from shared.reaper import FIRST_SEEN_BLOB, _first_seen
    state = storage.container("reaper")
    broken = EndpointInfo("tf-broken", MANAGED, "Succeeded")  # no deployment, no creation time
    dated = EndpointInfo("tf-dated", MANAGED, "Succeeded", created_at="2026-11-25T00:00:00Z")
    assert _first_seen(state, [broken, dated, SERVING], NOW, dry_run=True) == {}
    assert not storage.exists(state, FIRST_SEEN_BLOB)  # a dry run remembers nothing
    assert _first_seen(state, [broken, dated, SERVING], NOW, dry_run=False) == {}  # first sighting: no grace served
    assert storage.get_json(state, FIRST_SEEN_BLOB) == {"tf-broken": "2026-11-25T12:00:00Z"}
    later = NOW + timedelta(minutes=5)
    assert _first_seen(state, [broken], later, dry_run=False) == {"tf-broken": "2026-11-25T12:00:00Z"}
    assert storage.get_json(state, FIRST_SEEN_BLOB) == {"tf-broken": "2026-11-25T12:00:00Z"}  # the first time stays
    assert _first_seen(state, [], later, dry_run=False) == {"tf-broken": "2026-11-25T12:00:00Z"}
    assert storage.get_json(state, FIRST_SEEN_BLOB) == {}  # fixed or gone: forgotten
    state.upload_blob(FIRST_SEEN_BLOB, b"not json", overwrite=True)
    assert _first_seen(state, [broken], later, dry_run=False) == {}  # a damaged file starts the clocks again
    assert storage.get_json(state, FIRST_SEEN_BLOB) == {"tf-broken": "2026-11-25T12:05:00Z"}
    assert _first_seen(None, [broken], later, dry_run=False) == {}


def test_the_lock_is_a_sixty_second_lease(storage_env):
    from shared import storage
    from shared.reaper import LOCK_BLOB, _acquire, _release
    state = storage.container("reaper")
    lease = _acquire(state)
    try:
        props = state.get_blob_client(LOCK_BLOB).get_blob_properties()
        assert (props.lease.state, props.lease.status, props.lease.duration) == ("leased", "locked", "fixed")
        assert _acquire(state) is False
    finally:
        _release(lease)
    assert state.get_blob_client(LOCK_BLOB).get_blob_properties().lease.state == "available"
    again = _acquire(state)  # the lock blob exists now: acquired all the same
    _release(again)
    _release(again)  # released twice (an expired lease): no error


# -- a whole run, through the Azure backend's HTTP edge -------------------------------------------------

def _throttle_once(d, monkeypatch, method: str, path_end: str) -> None:
    """The first `method` request whose path ends with `path_end` answers 429 with Retry-After, as ARM does."""
    handle, left = d.fake.handle, [1]

    def throttled(m, url, headers, body):
        if m == method and url.split("?")[0].endswith(path_end) and left[0]:
            left[0] -= 1
            return 429, {"error": {"code": "TooManyRequests", "message": "Rate limit exceeded"}}, {"Retry-After": "7"}
        return handle(m, url, headers, body)
    monkeypatch.setattr(d.fake, "handle", throttled)


@pytest.mark.parametrize("kind", ["endpoint", "deployment", "job"])
def test_a_run_waits_as_long_as_a_throttled_action_is_told_then_confirms_it(storage_env, monkeypatch, kind):
    """Each kind's action goes through the run's own `sleep`: a 429 waits its Retry-After, then the retry is
    confirmed."""
    from dataclasses import replace as copy
    from shared import storage
    from shared.ml.base import ModelRef
    from tests.serving import serve
    d = azure()
    if kind == "endpoint":
        deploy(d, "tf-expired")
        target, path = "tf-expired", "/onlineEndpoints/tf-expired"
    elif kind == "deployment":
        serve(d.backend, "tf-roll", ModelRef("m", "1"), {**MANAGED, "expires-at": "2026-12-31T00:00:00Z"},
              deployment="v-1")
        d.backend.create_deployment("tf-roll", "v-2", ModelRef("m", "2"), {})
        d.backend.set_traffic("tf-roll", {"v-2": 100}, {}, {**d.backend.get_endpoint("tf-roll").tags,
                                                           "traffic-changed-at": "2026-11-25T08:00:00Z"})
        target, path = "tf-roll/v-1", "/onlineEndpoints/tf-roll/deployments/v-1"
    else:
        d.backend.submit(copy(d.spec("ft-runaway-0000abcd"), tags=MANAGED))
        target, path = "ft-runaway-0000abcd", "/jobs/ft-runaway-0000abcd/cancel"
    _throttle_once(d, monkeypatch, "POST" if kind == "job" else "DELETE", path)
    later = NOW + timedelta(days=3)  # the job is over a day old; the idle deployment past its rollback window
    slept = Sleeps()
    run = reap(d.backend, later, POLICY, state=storage.container("reaper"), sleep=slept)
    assert run.outcomes == {target: "confirmed"} and slept == [7.0]


def test_a_pending_job_record_is_settled_by_asking_the_backend(storage_env):
    """A dead run's record of a job cancel: the next run asks the backend whether the job has ended."""
    from dataclasses import replace as copy
    from shared import flows, storage
    d = azure()
    d.backend.submit(copy(d.spec("ft-pending-0000abcd"), tags=MANAGED))
    d.finish("ft-pending-0000abcd", "Canceled")
    state, flow_log = storage.container("reaper"), storage.container("flows")
    storage.put_json(state, "pending/job/ft-pending-0000abcd.json", {
        "kind": "job", "endpoint": "", "name": "ft-pending-0000abcd", "flow_ids": [FLOW_A], "rule": "job-runaway",
        "reason": "running for 26 h", "run_id": "run-0"})
    run = reap(d.backend, NOW, POLICY, flow_log=flow_log, state=state, sleep=Sleeps())
    (record,) = flows.read_all(flow_log)
    assert (record["flow_id"], record["stage"], record["detail"]["kind"], record["detail"]["recorded_by"]) == (
        FLOW_A, "reaped", "job", run.run_id)
    assert list(state.list_blobs(name_starts_with=PENDING_PREFIX)) == []


def test_a_dry_run_leaves_a_dead_runs_records_alone(storage_env):
    """A record a dead run wrote before deleting: a dry run planning the same deletion leaves it for the next
    real run, which settles it."""
    from shared import storage
    d = azure()
    deploy(d, "tf-expired")
    state = storage.container("reaper")
    storage.put_json(state, "pending/tf-expired.json", {
        "kind": "endpoint", "endpoint": "tf-expired", "name": "tf-expired", "flow_ids": [FLOW_A], "rule": "expired",
        "reason": "expired", "run_id": "run-0"})
    run = reap(d.backend, NOW, POLICY, dry_run=True, state=state, sleep=Sleeps())
    assert [(x.target, x.action) for x in run.decisions] == [("tf-expired", "delete")]
    assert storage.exists(state, "pending/tf-expired.json")


def test_first_seen_times_are_stored_sorted(storage_env, monkeypatch):
    from shared import storage
    from shared.reaper import FIRST_SEEN_BLOB
    d = azure()
    names = [f"tf-broken-{c}" for c in "hgfedcba"]
    monkeypatch.setattr(d.backend, "list_endpoints", lambda: [EndpointInfo(n, MANAGED, "Succeeded") for n in names])
    state = storage.container("reaper")
    reap(d.backend, NOW, POLICY, state=state, sleep=Sleeps())
    raw = state.download_blob(FIRST_SEEN_BLOB).readall().decode()
    assert raw == json.dumps({n: "2026-11-25T12:00:00Z" for n in sorted(names)})


def test_a_dry_run_starts_no_first_seen_clock(storage_env, monkeypatch):
    from shared import storage
    from shared.reaper import FIRST_SEEN_BLOB
    d = azure()
    broken = EndpointInfo("tf-broken", MANAGED, "Succeeded")  # no deployment, no creation time
    monkeypatch.setattr(d.backend, "list_endpoints", lambda: [broken])
    state = storage.container("reaper")
    run = reap(d.backend, NOW, POLICY, dry_run=True, state=state, sleep=Sleeps())
    assert [(x.target, x.action, x.rule) for x in run.decisions] == [("tf-broken", "keep", "broken-grace")]
    assert not storage.exists(state, FIRST_SEEN_BLOB)
    reap(d.backend, NOW, POLICY, state=state, sleep=Sleeps())
    assert storage.get_json(state, FIRST_SEEN_BLOB) == {"tf-broken": "2026-11-25T12:00:00Z"}


def test_a_run_that_finds_the_lock_held_says_so(storage_env):
    from shared import storage
    from shared.reaper import _acquire, _release
    state = storage.container("reaper")
    held = _acquire(state)
    try:
        assert reap(azure().backend, NOW, POLICY, state=state, sleep=Sleeps()).skipped == (
            "another reaper run holds the lock")
    finally:
        _release(held)


def test_a_pending_record_missing_its_fields_is_settled_with_empty_ones(storage_env):
    """The oldest records name only their flow: settled as an endpoint that is gone, nothing made up."""
    from shared import flows, storage
    state, flow_log = storage.container("reaper"), storage.container("flows")
    storage.put_json(state, "pending/tf-ancient.json", {"flow_id": FLOW_A})
    _settle_pending(state, None, [SERVING], ReapRun("run-2", []), flow_log)
    (record,) = flows.read_all(flow_log)
    assert (record["stage"], record["endpoint"], record["detail"]) == ("reaped", "", {
        "reason": "", "rule": "", "run_id": "", "recorded_by": "run-2", "kind": "endpoint", "name": ""})


def test_a_deployment_whose_endpoint_goes_while_it_is_deleted_is_confirmed(monkeypatch):
    d = azure()
    deploy(d, "tf-dep-going")

    def delete_deployment(endpoint, deployment):  # accepted; meanwhile someone deletes the whole endpoint
        d.backend.delete_endpoint(endpoint)
    monkeypatch.setattr(d.backend, "delete_deployment", delete_deployment)
    assert delete_deployment_confirmed(d.backend, "tf-dep-going", "v-1", POLICY, Sleeps()) == ("confirmed", 1)


# -- what the log says about each action ------------------------------------------------------------------

def _ours(caplog) -> list[tuple[str, str]]:
    return [(r.levelname, r.message) for r in caplog.records if r.name == "tuneflow.reaper"]


def test_each_outcome_is_logged_at_its_level(caplog, monkeypatch):
    """Gone is information; anything else is an error an operator must see."""
    from shared.reaper import _act
    d = azure()
    deploy(d, "tf-going")
    deploy(d, "tf-sticky")
    real = d.backend.delete_endpoint
    # tf-sticky's deletion is accepted and the endpoint stays (a service that lies)
    monkeypatch.setattr(d.backend, "delete_endpoint", lambda name: None if name == "tf-sticky" else real(name))
    once = ReaperPolicy(attempts=1, confirm_timeout_s=0)
    with caplog.at_level("INFO", logger="tuneflow.reaper"):
        outcomes = [_act(d.backend, ReapDecision(n, "delete", "expired", "x", name=n), once, Sleeps())
                    for n in ("tf-going", "tf-going", "tf-sticky")]
    assert outcomes == ["confirmed", "already-gone", "unconfirmed"]
    assert _ours(caplog) == [
        ("INFO", "reaper: endpoint tf-going confirmed after 1 attempt(s)"),
        ("INFO", "reaper: endpoint tf-going already-gone after 1 attempt(s)"),
        ("WARNING", "reaper: endpoint tf-sticky still there after the service accepted its removal (attempt 1)"),
        ("ERROR", "reaper: endpoint tf-sticky unconfirmed after 1 attempt(s)")]


def test_a_removal_the_service_accepted_and_did_not_do_is_named_in_the_warning(caplog, monkeypatch):
    """Deployments and jobs as endpoints: accepted, still there, and the warning says which."""
    from dataclasses import replace as copy
    d = azure()
    deploy(d, "tf-lying")
    d.backend.submit(copy(d.spec("ft-lying-0000abcd"), tags=MANAGED))
    monkeypatch.setattr(d.backend, "delete_deployment", lambda endpoint, deployment: None)
    monkeypatch.setattr(d.backend, "cancel_job", lambda name: None)
    once = ReaperPolicy(attempts=1, confirm_timeout_s=0)
    with caplog.at_level("WARNING", logger="tuneflow.reaper"):
        assert delete_deployment_confirmed(d.backend, "tf-lying", "v-1", once, Sleeps()) == ("unconfirmed", 1)
        assert cancel_confirmed(d.backend, "ft-lying-0000abcd", once, Sleeps()) == ("unconfirmed", 1)
    assert [message for _level, message in _ours(caplog)] == [
        "reaper: deployment tf-lying/v-1 still there after the service accepted its removal (attempt 1)",
        "reaper: job ft-lying-0000abcd still there after the service accepted its removal (attempt 1)"]
