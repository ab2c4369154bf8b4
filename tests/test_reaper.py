"""The reaper with a frozen clock: rules, safety gate, grace period, confirm-and-retry, audit.

Deletes are exercised on both backends' real code: the Azure backend over the HTTP edge
(tests/azure_fake.py throttles, or accepts a delete and leaves the endpoint), the local one in
test_e2e_flow.py (the demo's endpoint is reaped)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from shared.ml.base import DeploymentInfo, EndpointInfo
from shared.reaper import ReapDecision, ReaperPolicy, circuit_breaker, decide, delete_confirmed, plan, reap

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
MANAGED = {"managed-by": "tuneflow"}
DEMO = (DeploymentInfo("demo", "Standard_NC24ads_A100_v4", 1, "Succeeded"),)
POLICY = ReaperPolicy(grace=timedelta(minutes=30), max_deletes=10, max_delete_share=0.5,
                      prices={"standard_nc24ads_a100_v4": 3.67})


def ep(tags, state="Succeeded", deployments=DEMO, created_at="2026-11-25T08:00:00Z", name="tf-x"):
    return EndpointInfo(name=name, tags=tags, provisioning_state=state, created_at=created_at, deployments=deployments)


def expiring(value):
    return {**MANAGED, "expires-at": value}


RULES = [
    # offsets and time zones: all compared in UTC
    (expiring("2026-11-25T11:59:59Z"), "Succeeded", "delete", "expired"),
    (expiring("2026-11-25T12:00:00Z"), "Succeeded", "delete", "expired"),  # the instant itself
    (expiring("2026-11-25T12:00:00.000001Z"), "Succeeded", "keep", "not-expired"),
    (expiring("2026-11-25T13:00:00+02:00"), "Succeeded", "delete", "expired"),  # 11:00 UTC
    (expiring("2026-11-25T07:30:00-05:00"), "Succeeded", "keep", "not-expired"),  # 12:30 UTC
    (expiring("2026-11-25T17:29:00+05:30"), "Succeeded", "delete", "expired"),  # 11:59 UTC
    (expiring("2026-11-25t11:00:00z"), "Succeeded", "delete", "expired"),  # lower-case designators
    # the past and the far future
    (expiring("1970-01-01T00:00:00Z"), "Succeeded", "delete", "expired"),
    (expiring("9999-12-31T23:59:59Z"), "Succeeded", "keep", "not-expired"),
    # garbage is never a reason to delete
    (expiring("2026-11-25T11:00:00"), "Succeeded", "flag", "bad-expiry"),  # no offset: ambiguous local time
    (expiring("soon"), "Succeeded", "flag", "bad-expiry"),
    (expiring(""), "Succeeded", "flag", "bad-expiry"),
    (expiring("0"), "Succeeded", "flag", "bad-expiry"),  # "0" does not mean "now" (or "everything")
    (expiring("2026-02-30T00:00:00Z"), "Succeeded", "flag", "bad-expiry"),  # no such day
    (expiring("2026-11-25T25:00:00Z"), "Succeeded", "flag", "bad-expiry"),
    (expiring("1764072000"), "Succeeded", "flag", "bad-expiry"),  # epoch seconds are not ISO 8601
    (MANAGED, "Succeeded", "flag", "bad-expiry"),
    # tag-key and value case variants
    ({"Managed-By": "TuneFlow", "EXPIRES-AT": "2026-11-25T11:00:00Z"}, "Succeeded", "delete", "expired"),
    ({**expiring("2026-11-25T11:00:00Z"), "Do-Not-Delete": "TRUE"}, "Succeeded", "keep", "do-not-delete"),
    ({**expiring("2026-11-25T11:00:00Z"), "do-not-delete": "false"}, "Succeeded", "delete", "expired"),
    ({"expires-at": "2020-01-01T00:00:00Z"}, "Succeeded", "keep", "not-managed"),
    ({"managed-by": "someone-else", "expires-at": "2020-01-01T00:00:00Z"}, "Succeeded", "keep", "not-managed"),
    # each state
    (expiring("2026-11-25T11:00:00Z"), "Creating", "keep", "in-transition"),
    (expiring("2026-11-25T11:00:00Z"), "Updating", "keep", "in-transition"),
    (expiring("2026-11-25T11:00:00Z"), "Deleting", "keep", "in-transition"),
    (expiring("2026-11-25T11:00:00Z"), "Failed", "delete", "expired"),
    (expiring("2026-11-25T13:00:00Z"), "Failed", "delete", "broken"),  # failed for 4 h: past the grace
    (expiring("2026-11-25T11:00:00Z"), "Canceled", "delete", "expired"),
]


@pytest.mark.parametrize("tags, state, action, rule", RULES)
def test_rules(tags, state, action, rule):
    d = decide(ep(tags, state), NOW, POLICY)
    assert (d.action, d.rule) == (action, rule), d.reason


@pytest.mark.parametrize("zone, local_expiry, expired", [
    # DST: the offset written in the tag is what counts, whichever side of the change it is on
    ("Europe/Prague", datetime(2026, 3, 29, 1, 59), True),  # CET (+01:00), just before the spring change
    ("Europe/Prague", datetime(2026, 3, 29, 3, 30), True),  # CEST (+02:00) after it
    ("America/New_York", datetime(2026, 11, 1, 1, 30), True),  # the repeated hour, first pass (-04:00)
    ("Australia/Lord_Howe", datetime(2026, 10, 4, 2, 45), True),  # a half-hour DST shift
])
def test_dst_changes_are_read_from_the_offset(zone, local_expiry, expired):
    from zoneinfo import ZoneInfo
    moment = local_expiry.replace(tzinfo=ZoneInfo(zone))
    now = moment.astimezone(timezone.utc) + timedelta(seconds=1)
    d = decide(ep(expiring(moment.isoformat())), now, POLICY)
    assert (d.action == "delete") is expired, d.reason
    assert decide(ep(expiring(moment.isoformat())), now - timedelta(seconds=2), POLICY).action == "keep"


def test_leap_day():
    tags = expiring("2028-02-29T23:59:59Z")
    assert decide(ep(tags), datetime(2028, 2, 29, 23, 59, 58, tzinfo=timezone.utc), POLICY).action == "keep"
    assert decide(ep(tags), datetime(2028, 3, 1, tzinfo=timezone.utc), POLICY).action == "delete"
    assert decide(ep(expiring("2027-02-29T00:00:00Z")), NOW, POLICY).rule == "bad-expiry"  # not a leap year


@pytest.mark.parametrize("deployments, created, first_seen, action, rule", [
    ((), "2026-11-25T11:00:00Z", None, "delete", "broken"),  # no deployment for an hour
    ((), "2026-11-25T11:45:00Z", None, "keep", "broken-grace"),  # 15 min: still in grace
    ((DeploymentInfo("demo", "x", 1, "Failed"),), "2026-11-25T11:29:59Z", None, "delete", "broken"),
    ((DeploymentInfo("demo", "x", 1, "Failed"),), "2026-11-25T11:30:01Z", None, "keep", "broken-grace"),
    ((), "", None, "keep", "broken-grace"),  # age unknown: its clock starts now
    ((), "", {"tf-x": "2026-11-25T11:00:00Z"}, "delete", "broken"),  # first seen an hour ago
    ((), "garbage", {"tf-x": "2026-11-25T11:50:00Z"}, "keep", "broken-grace"),
])
def test_grace_period_for_endpoints_without_a_working_deployment(deployments, created, first_seen, action, rule):
    d = decide(ep(expiring("2026-11-26T00:00:00Z"), deployments=deployments, created_at=created), NOW, POLICY,
               first_seen)
    assert (d.action, d.rule) == (action, rule), d.reason


def _expired(n, prefix="tf-old"):
    return [ep(expiring("2026-11-25T11:00:00Z"), name=f"{prefix}-{i}") for i in range(n)]


def _fresh(n):
    return [ep(expiring("2026-11-26T11:00:00Z"), name=f"tf-new-{i}") for i in range(n)]


@pytest.mark.parametrize("expired, fresh, unmanaged, trips", [
    (10, 0, 0, True),  # 10 is within the count limit, but it is 100 % of the managed ones
    (10, 10, 0, False),  # 10 of 20: within both limits
    (11, 100, 0, True),  # more than 10
    (3, 2, 0, True),  # 60 % of the managed ones
    (3, 3, 0, False),  # 50 %: not more than the limit
    (2, 0, 0, False),  # 2 of 2: below the share floor (one run's normal work)
    (1, 0, 50, False),  # unmanaged endpoints do not count
    (3, 1, 50, True),
])
def test_circuit_breaker(expired, fresh, unmanaged, trips):
    others = [ep({"owner": "someone"}, name=f"theirs-{i}") for i in range(unmanaged)]
    decisions, alert = plan(_expired(expired) + _fresh(fresh) + others, NOW, POLICY)
    assert bool(alert) is trips
    actions = {d.action for d in decisions if d.endpoint.startswith("tf-old")}
    assert actions == ({"flag"} if trips else {"delete"})
    if trips:
        assert all(d.rule == "circuit-breaker" and "not deleted" in d.reason
                   for d in decisions if d.endpoint.startswith("tf-old"))


def test_circuit_breaker_keeps_the_other_decisions():
    decisions, alert = circuit_breaker(plan(_expired(12) + _fresh(2), NOW, POLICY)[0], POLICY)
    assert {d.endpoint: d.action for d in decisions if d.endpoint.startswith("tf-new")} == {"tf-new-0": "keep", "tf-new-1": "keep"}


def test_planning_is_pure_and_reports_time_left():
    d = decide(ep(expiring("2026-11-25T14:30:00+00:00")), NOW, POLICY)
    assert d.seconds_left == 9000 and d.expires_at == "2026-11-25T14:30:00Z"


# -- actions through the Azure backend's HTTP edge ------------------------------------------------

def azure(**fake_behaviour):
    from tests.test_ml_contract import AzureDriver
    d = AzureDriver()
    d.backend._kwargs = lambda: {"transport": d.fake.transport(), "retry_total": 0}  # our retries, not azure-core's
    for key, value in fake_behaviour.items():
        setattr(d.fake, key, value)
    return d


def deploy(d, name, expiry="2026-11-25T11:00:00Z"):
    from shared.ml.base import ModelRef
    from tests.serving import serve
    serve(d.backend, name, ModelRef("m", "1"), {**MANAGED, "flow-id": "1d5f5ba0-8598-5118-9f6d-5a45f4408403",
                                                "expires-at": expiry})


class Sleeps(list):
    def __call__(self, seconds):
        self.append(seconds)


def test_a_throttled_delete_is_retried_with_back_off_and_confirmed():
    d = azure(throttled_deletes=2)
    deploy(d, "tf-throttled")
    sleeps = Sleeps()
    outcome, attempts = delete_confirmed(d.backend, "tf-throttled", POLICY, sleeps)
    assert (outcome, attempts) == ("confirmed", 3) and sleeps[:2] == [7.0, 7.0]  # Retry-After honoured
    assert "tf-throttled" not in d.fake.endpoints


def test_a_delete_that_reports_success_but_leaves_the_endpoint_is_not_confirmed():
    d = azure(sticky_deletes=True)
    deploy(d, "tf-sticky")
    sleeps = Sleeps()
    policy = ReaperPolicy(attempts=3, confirm_timeout_s=10)
    assert delete_confirmed(d.backend, "tf-sticky", policy, sleeps) == ("unconfirmed", 3)
    assert [m for m, p, _ in d.fake.calls if m == "DELETE"].count("DELETE") == 3  # retried, never assumed
    assert sum(sleeps) >= 3 * 10  # each attempt polled for the whole confirm timeout


def test_reap_run_audits_each_decision_with_cost_and_records_the_flow(storage_env):
    from shared import storage
    d = azure(clock=lambda: "2026-11-25T00:00:00.0000000+00:00")  # created 12 h before NOW
    deploy(d, "tf-expired")
    deploy(d, "tf-fresh", expiry="2026-11-26T11:00:00Z")
    state, flow_log = storage.container("reaper"), storage.container("flows")
    run = reap(d.backend, NOW, POLICY, flow_log=flow_log, state=state, sleep=Sleeps())
    assert {x.endpoint: x.action for x in run.decisions} == {"tf-expired": "delete", "tf-fresh": "keep"}
    assert run.outcomes == {"tf-expired": "confirmed"} and set(d.fake.endpoints) == {"tf-fresh"}
    audit = [b.name for b in state.list_blobs(name_starts_with="audit/2026-11-25/")]
    records = [json.loads(line) for line in state.download_blob(audit[0]).readall().splitlines()]
    deleted = next(r for r in records if r["endpoint"] == "tf-expired")
    assert deleted["rule"] == "expired" and deleted["outcome"] == "confirmed" and deleted["run_id"] == run.run_id
    assert deleted["price_per_hour"] == 3.67 and deleted["cost_avoided_per_day"] == 88.08
    assert deleted["instance_hours_used"] == 12.0  # one instance for 12 h
    reaped = [b.name for b in flow_log.list_blobs() if b.name.endswith("-reaped.json")]
    assert len(reaped) == 1


def test_overlapping_runs_do_no_harm(storage_env):
    from shared import storage
    from shared.reaper import _acquire, _release
    d = azure()
    deploy(d, "tf-expired")
    state = storage.container("reaper")
    held = _acquire(state)
    try:
        run = reap(d.backend, NOW, POLICY, state=state, sleep=Sleeps())
        assert run.skipped and run.decisions == [] and "tf-expired" in d.fake.endpoints
    finally:
        _release(held)
    assert reap(d.backend, NOW, POLICY, state=state, sleep=Sleeps()).outcomes == {"tf-expired": "confirmed"}
    again = reap(d.backend, NOW, POLICY, state=state, sleep=Sleeps())  # a late second run: nothing left to do
    assert again.outcomes == {} and again.decisions == []


def test_a_tripped_breaker_deletes_nothing(storage_env):
    from shared import storage
    d = azure()
    for i in range(3):
        deploy(d, f"tf-expired-{i}")
    run = reap(d.backend, NOW, POLICY, state=storage.container("reaper"), sleep=Sleeps())
    assert run.alert and run.outcomes == {} and len(d.fake.endpoints) == 3


def test_created_at_comes_from_properties_then_system_data_and_may_be_absent():
    d = azure(clock=lambda: "2026-11-25T09:00:00.0000000+00:00")
    deploy(d, "tf-props")
    assert d.backend.get_endpoint("tf-props").created_at.startswith("2026-11-25T09:00:00")
    d = azure(created_at_in_properties=False)
    deploy(d, "tf-system-data")
    assert d.backend.get_endpoint("tf-system-data").created_at.startswith("2026-11-26T00:00:00")  # ARM systemData
    d = azure(created_at_in_properties=False, endpoint_system_data=False)
    deploy(d, "tf-unknown")
    assert d.backend.get_endpoint("tf-unknown").created_at == ""


@pytest.mark.parametrize("name, value, words", [
    ("TUNEFLOW_SKU_PRICES", "[1, 2]", "TUNEFLOW_SKU_PRICES='[1, 2]' is not a JSON object"),
    ("TUNEFLOW_SKU_PRICES", '{"Standard_NC6s_v3": "cheap"}', "the price of 'Standard_NC6s_v3' is 'cheap'"),
    ("TUNEFLOW_ENDPOINT_TTL_BY_DATASET", "8h", "TUNEFLOW_ENDPOINT_TTL_BY_DATASET='8h' is not a JSON object"),
    ("TUNEFLOW_ENDPOINT_TTL_BY_DATASET", '{"ds": "0"}', "TUNEFLOW_ENDPOINT_TTL_BY_DATASET: TTL '0'"),
])
def test_bad_json_settings_name_the_setting(monkeypatch, name, value, words):
    from shared.deployment import endpoint_ttl
    from shared.settings import SettingError
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingError) as exc:
        ReaperPolicy.from_settings() if name == "TUNEFLOW_SKU_PRICES" else endpoint_ttl("ds")
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_first_seen_times_persist_across_runs_so_the_grace_runs_out(storage_env):
    """An endpoint with no creation time gets its age from when the reaper first saw it broken: that time
    must survive to the next run, or the grace would restart every run and it would never be deleted."""
    from shared import storage
    from shared.ml.base import MLError
    d = azure(created_at_in_properties=False, endpoint_system_data=False)
    d.fake.fail_deployments = 1
    with pytest.raises(MLError):
        deploy(d, "tf-broken", expiry="2026-11-27T00:00:00Z")
    state = storage.container("reaper")
    first = reap(d.backend, NOW, POLICY, state=state, sleep=Sleeps())
    assert [(x.action, x.rule) for x in first.decisions] == [("keep", "broken-grace")]
    soon = reap(d.backend, NOW + timedelta(minutes=10), POLICY, state=state, sleep=Sleeps())
    assert [(x.action, x.rule) for x in soon.decisions] == [("keep", "broken-grace")]
    assert "1200 s of grace left" in soon.decisions[0].reason  # counted from the first run, not this one
    later = reap(d.backend, NOW + timedelta(minutes=31), POLICY, state=state, sleep=Sleeps())
    assert [(x.action, x.rule) for x in later.decisions] == [("delete", "broken")]
    assert later.outcomes == {"tf-broken": "confirmed"}


@pytest.mark.parametrize("concurrency", [1, 3])
def test_deletions_run_as_many_at_once_as_the_setting_says(storage_env, monkeypatch, concurrency):
    import threading
    from shared import storage
    monkeypatch.setenv("TUNEFLOW_REAPER_CONCURRENCY", str(concurrency))
    monkeypatch.setenv("TUNEFLOW_REAPER_MAX_DELETES", "100")
    monkeypatch.setenv("TUNEFLOW_REAPER_MAX_DELETE_SHARE", "1.0")
    d = azure()
    for i in range(6):
        deploy(d, f"tf-many-{i}")
    active, peak, cv = [0], [0], threading.Condition()
    handle = d.fake.handle

    def counting(method, url, headers, body):
        if method != "DELETE" or "/onlineEndpoints/" not in url:
            return handle(method, url, headers, body)
        with cv:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            cv.notify_all()
            cv.wait_for(lambda: active[0] >= concurrency, timeout=5)  # as many as the setting allows, at once
            cv.wait_for(lambda: active[0] > concurrency, timeout=0.5)  # and one more, if the pool lets it in
        try:
            return handle(method, url, headers, body)
        finally:
            with cv:
                active[0] -= 1
    monkeypatch.setattr(d.fake, "handle", counting)
    run = reap(d.backend, NOW, ReaperPolicy.from_settings(), state=storage.container("reaper"), sleep=Sleeps())
    assert sorted(run.outcomes.values()) == ["confirmed"] * 6
    assert peak[0] == concurrency


def test_a_run_that_dies_after_deleting_leaves_the_record_to_the_next_run(storage_env, monkeypatch):
    """A timer run is not delivered again: one that died between deleting an endpoint and recording it left
    the flow looking alive for good (`tuneflow status`: smoke-tested, its endpoint long gone)."""
    from shared import flows, reaper, storage
    d = azure()
    deploy(d, "tf-expired")
    state, flow_log = storage.container("reaper"), storage.container("flows")

    dead = []

    def died(run, *args, **kwargs):
        dead.append(run.run_id)
        raise SystemExit("the worker died here")
    monkeypatch.setattr(reaper, "_audit", died)
    with pytest.raises(SystemExit):
        reap(d.backend, NOW, POLICY, flow_log=flow_log, state=state, sleep=Sleeps())
    assert "tf-expired" not in d.fake.endpoints and flows.read_all(flow_log) == []  # deleted, not recorded
    monkeypatch.undo()
    later = reap(d.backend, NOW + timedelta(minutes=5), POLICY, flow_log=flow_log, state=state, sleep=Sleeps())
    assert later.decisions == []
    (record,) = flows.read_all(flow_log)
    assert record["stage"] == "reaped" and record["endpoint"] == "tf-expired"
    assert record["detail"]["recorded_by"] == later.run_id and record["detail"]["run_id"] == dead[0] != later.run_id
    assert list(state.list_blobs(name_starts_with="pending/")) == []


def test_a_pending_deletion_whose_endpoint_still_exists_is_decided_again(storage_env):
    from shared import storage
    from shared.reaper import _targets, _write_pending
    d = azure()
    deploy(d, "tf-kept", expiry="2026-11-26T11:00:00Z")  # a deletion planned, then the lease was extended
    state, flow_log = storage.container("reaper"), storage.container("flows")
    [endpoint] = d.backend.list_endpoints()
    _write_pending(state, ReapDecision("tf-kept", "delete", "expired", "old"), _targets([endpoint], [])["tf-kept"],
                   "run-0")
    run = reap(d.backend, NOW, POLICY, flow_log=flow_log, state=state, sleep=Sleeps())
    assert [(x.action, x.rule) for x in run.decisions] == [("keep", "not-expired"), ("keep", "deployment-serving")]
    assert list(flow_log.list_blobs()) == [] and list(state.list_blobs(name_starts_with="pending/")) == []


# -- deployments and jobs (issue 15): the same clock, the same table style -------------------------

def dep(name, created_at, traffic=0, mirror=0, state="Succeeded", flow_id=""):
    return DeploymentInfo(name, "Standard_NC24ads_A100_v4", 1, state, traffic=traffic, mirror_traffic=mirror,
                          created_at=created_at, tags={"flow-id": flow_id} if flow_id else {})


SERVING = dep("v-3", "2026-11-25T10:00:00Z", traffic=100)
LIVE = {**expiring("2026-11-25T20:00:00Z"), "traffic-changed-at": "2026-11-25T10:30:00Z"}  # 90 min ago

DEPLOYMENT_RULES = [
    # (endpoint tags, deployments, {deployment: (action, rule)})
    (LIVE, (dep("v-1", "2026-11-25T08:00:00Z"), SERVING),  # idle since the last traffic change, 90 min > 1 h
     {"v-1": ("delete", "deployment-idle"), "v-3": ("keep", "deployment-serving")}),
    ({**LIVE, "traffic-changed-at": "2026-11-25T11:30:00Z"}, (dep("v-1", "2026-11-25T08:00:00Z"), SERVING),
     {"v-1": ("keep", "deployment-window"), "v-3": ("keep", "deployment-serving")}),  # 30 min: kept for a rollback
    ({**LIVE, "traffic-changed-at": "2026-11-25T11:00:00Z"}, (dep("v-1", "2026-11-25T08:00:00Z"), SERVING),
     {"v-1": ("delete", "deployment-idle"), "v-3": ("keep", "deployment-serving")}),  # exactly the window
    # no traffic-changed-at tag: idle since its own creation
    (expiring("2026-11-25T20:00:00Z"), (dep("v-1", "2026-11-25T08:00:00Z"), SERVING),
     {"v-1": ("delete", "deployment-idle"), "v-3": ("keep", "deployment-serving")}),
    # never one with live or mirror traffic, however old
    (LIVE, (dep("v-1", "2020-01-01T00:00:00Z", traffic=10), dep("v-3", "2026-11-25T10:00:00Z", traffic=90)),
     {"v-1": ("keep", "deployment-serving"), "v-3": ("keep", "deployment-serving")}),
    (LIVE, (dep("v-1", "2020-01-01T00:00:00Z", mirror=20), SERVING),
     {"v-1": ("keep", "deployment-serving"), "v-3": ("keep", "deployment-serving")}),
    # never the newest: a rollback gave the traffic to an older one, the newest waits for its own window
    (LIVE, (dep("v-1", "2026-11-25T08:00:00Z", traffic=100), dep("v-3", "2026-11-25T10:00:00Z")),
     {"v-1": ("keep", "deployment-serving"), "v-3": ("keep", "deployment-newest")}),
    # failed at 0 %: after the grace, even the newest (its rollout failed for good)
    (LIVE, (SERVING, dep("v-4", "2026-11-25T11:00:00Z", state="Failed")),
     {"v-3": ("keep", "deployment-serving"), "v-4": ("delete", "deployment-failed")}),
    ({**LIVE, "traffic-changed-at": "2026-11-25T11:50:00Z"}, (SERVING, dep("v-4", "2026-11-25T11:40:00Z", state="Failed")),
     {"v-3": ("keep", "deployment-serving"), "v-4": ("keep", "deployment-newest")}),  # within the grace
    # an age nobody knows is no reason to delete
    ({**MANAGED, "expires-at": "2026-11-25T20:00:00Z"}, (dep("v-1", ""), SERVING),
     {"v-1": ("keep", "deployment-window"), "v-3": ("keep", "deployment-serving")}),
]


@pytest.mark.parametrize("tags, deployments, want", DEPLOYMENT_RULES)
def test_deployment_rules(tags, deployments, want):
    decisions, alert = plan([ep(tags, deployments=deployments)], NOW, POLICY)
    assert decisions[0].kind == "endpoint" and (decisions[0].action, decisions[0].rule) == ("keep", "not-expired")
    got = {d.name: (d.action, d.rule) for d in decisions[1:]}
    assert got == want and all(d.kind == "deployment" and d.endpoint == "tf-x" for d in decisions[1:])
    assert alert == ""


@pytest.mark.parametrize("tags, other, rule", [
    ({"expires-at": "2026-11-25T20:00:00Z"}, dep("v-1", "2020-01-01T00:00:00Z"), "not-managed"),
    ({**LIVE, "do-not-delete": "true"}, dep("v-1", "2020-01-01T00:00:00Z"), "do-not-delete"),
    (expiring("2026-11-25T11:00:00Z"), dep("v-1", "2020-01-01T00:00:00Z"), "expired"),  # it goes, with every one
    # a deployment being created (a rollout in progress) or deleted: nothing on that endpoint is touched
    (LIVE, dep("v-4", "2026-11-25T11:50:00Z", state="Creating"), "in-transition"),
    (LIVE, dep("v-1", "2026-11-25T08:00:00Z", state="Deleting"), "in-transition"),
])
def test_no_deployment_decisions_where_the_endpoint_decision_covers_them(tags, other, rule):
    decisions, _ = plan([ep(tags, deployments=(other, SERVING))], NOW, POLICY)
    assert [(d.kind, d.rule) for d in decisions] == [("endpoint", rule)]


def test_an_endpoint_serving_beside_a_failed_deployment_is_not_broken():
    decisions, _ = plan([ep(LIVE, deployments=(SERVING, dep("v-4", "2026-11-25T08:00:00Z", state="Failed")))],
                        NOW, POLICY)
    assert [(d.name, d.rule) for d in decisions] == [("tf-x", "not-expired"), ("v-4", "deployment-failed"),
                                                    ("v-3", "deployment-serving")]  # oldest first


@pytest.mark.parametrize("count, deleted", [(17, []), (18, ["v-01"]), (19, ["v-01", "v-02"]), (20, ["v-01", "v-02", "v-03"])])
def test_near_azures_twenty_deployments_the_oldest_idle_go_first(count, deleted):
    """All within the rollback window: kept, until the endpoint nears the quota; then the oldest go until
    two slots are free for the next rollouts."""
    tags = {**LIVE, "traffic-changed-at": "2026-11-25T11:50:00Z"}
    idle = tuple(dep(f"v-{i:02d}", f"2026-11-25T09:{i:02d}:00Z") for i in range(1, count))
    decisions, alert = plan([ep(tags, deployments=idle + (dep("v-99", "2026-11-25T11:00:00Z", traffic=100),))],
                            NOW, ReaperPolicy(max_deletes=10))
    assert [d.name for d in decisions if d.action == "delete"] == deleted
    assert {d.rule for d in decisions if d.action == "delete"} <= {"deployment-quota"} and alert == ""


def job(name, created_at, status="Running", tags=None):
    from shared.ml.base import JobInfo
    return JobInfo(name, status, tags={**MANAGED, "flow-id": f"flow-{name}", **(tags or {})}, created_at=created_at,
                   compute="Standard_NC24ads_A100_v4")


JOB_RULES = [
    (job("ft-a", "2026-11-24T11:00:00Z"), ("cancel", "job-runaway")),  # 25 h > 24 h
    (job("ft-b", "2026-11-24T12:00:00Z"), ("keep", "job-running")),  # exactly 24 h: not longer
    (job("ft-c", "2026-11-24T13:00:00+02:00"), ("cancel", "job-runaway")),  # 11:00 UTC: offsets count
    (job("ft-d", "2026-11-25T11:00:00Z", status="NotStarted"), ("keep", "job-running")),
    (job("ft-e", "2026-11-20T00:00:00Z", status="Queued"), ("cancel", "job-runaway")),  # queued for days holds quota
    (job("ft-f", "2026-11-20T00:00:00Z", tags={"Do-Not-Delete": "true"}), ("keep", "do-not-delete")),
    (job("ft-g", ""), ("flag", "job-age-unknown")),
    (job("ft-h", "2026-11-20T00:00:00Z", status="Completed"), None),  # ended: nothing to decide
    (job("ft-i", "2026-11-20T00:00:00Z", status="Failed"), None),
    (job("ft-j", "2026-11-20T00:00:00Z", status="Canceled"), None),
]


@pytest.mark.parametrize("the_job, want", JOB_RULES)
def test_job_rules(the_job, want):
    from shared.reaper import decide_job
    d = decide_job(the_job, NOW, POLICY)
    assert (d and (d.action, d.rule)) == want
    if d is not None:
        assert (d.kind, d.name, d.endpoint, d.target) == ("job", the_job.name, "", the_job.name)


def test_the_breaker_counts_deployments_and_jobs_with_the_endpoints():
    policy = ReaperPolicy(max_deletes=3)
    eps = [ep(LIVE, deployments=(dep("v-1", "2026-11-25T08:00:00Z"), SERVING), name=f"tf-{i}") for i in range(2)]
    jobs = [job(f"ft-{i}", "2026-11-24T00:00:00Z") for i in range(2)]  # 2 idle deployments + 2 runaway jobs = 4
    decisions, alert = plan(eps, NOW, policy, jobs=jobs)
    assert "4 deletions and cancellations planned" in alert
    assert not [d for d in decisions if d.action in ("delete", "cancel")]
    assert {d.rule for d in decisions if d.action == "flag"} == {"circuit-breaker"}
    assert "not canceled" in next(d.reason for d in decisions if d.kind == "job")


def test_the_share_rule_is_for_endpoints_and_jobs_not_idle_deployments():
    """After each rollout half of an endpoint's deployments are idle by design: no flood."""
    policy = ReaperPolicy(max_deletes=10)
    eps = [ep(LIVE, deployments=(dep("v-1", "2026-11-25T08:00:00Z"), dep("v-2", "2026-11-25T08:30:00Z"), SERVING),
              name=f"tf-{i}") for i in range(3)]
    decisions, alert = plan(eps, NOW, policy)
    assert alert == "" and sum(d.action == "delete" for d in decisions) == 6
    jobs = [job(f"ft-{i}", "2026-11-24T00:00:00Z") for i in range(3)] + [job("ft-ok", "2026-11-25T11:00:00Z")]
    _, alert = plan([], NOW, policy, jobs=jobs)
    assert "3 of 4 running managed jobs planned for cancellation" in alert


def test_an_idle_deployment_is_deleted_and_a_runaway_job_canceled_through_the_azure_backend(storage_env):
    """Against the strict fake: the deployment's delete and the job's cancel are long-running operations,
    each confirmed; the serving deployment, its endpoint and a finished job are left alone; each flow whose
    thing is gone gets `reaped`, and the audit has the kind and the cost."""
    from dataclasses import replace as copy
    from shared import flows, storage
    from shared.ml.base import ModelRef
    from tests.serving import serve
    d = azure()
    d.fake.lro_polls = 3
    name = "tf-roll-00000001"
    serve(d.backend, name, ModelRef("m", "1"), {**MANAGED, "expires-at": "2026-11-28T00:00:00Z",
                                                 "traffic-changed-at": "2026-11-26T00:00:00Z"},
          deployment="v-1", deployment_tags={"flow-id": "11111111-8598-5118-9f6d-5a45f4408403"})
    d.backend.create_deployment(name, "v-2", ModelRef("m", "2"), {"flow-id": "22222222-8598-5118-9f6d-5a45f4408403"})
    d.backend.set_traffic(name, {"v-2": 100}, {}, {**d.backend.get_endpoint(name).tags,
                                                    "traffic-changed-at": "2026-11-26T00:00:00Z"})
    runaway = copy(d.spec("ft-azure-0000abcd"), tags={**MANAGED, "flow-id": "33333333-8598-5118-9f6d-5a45f4408403"})
    d.backend.submit(runaway)
    d.backend.submit(copy(d.spec("ft-azure-0000dcba"), tags=MANAGED))
    d.finish("ft-azure-0000dcba")
    later = datetime(2026, 11, 27, 2, 0, tzinfo=timezone.utc)  # the job was created on the 26th: 26 h ago
    state, flow_log = storage.container("reaper"), storage.container("flows")
    run = reap(d.backend, later, replace_policy(), flow_log=flow_log, state=state,
               sleep=lambda s: d.fake.finish_operations())
    acted = {(x.kind, x.name): (x.action, x.rule, run.outcomes.get(x.target)) for x in run.decisions}
    assert acted == {("endpoint", name): ("keep", "not-expired", None),
                     ("deployment", "v-1"): ("delete", "deployment-idle", "confirmed"),
                     ("deployment", "v-2"): ("keep", "deployment-serving", None),
                     ("job", "ft-azure-0000abcd"): ("cancel", "job-runaway", "confirmed")}
    assert [x.name for x in d.backend.get_endpoint(name).deployments] == ["v-2"]
    assert d.backend.get_job("ft-azure-0000abcd").status == "Canceled"
    assert d.backend.get_job("ft-azure-0000dcba").status == "Completed"
    reaped = {r["flow_id"][:8]: r["detail"]["kind"] for r in flows.read_all(flow_log) if r["stage"] == "reaped"}
    assert reaped == {"11111111": "deployment", "33333333": "job"}
    [audit] = [b.name for b in state.list_blobs(name_starts_with="audit/")]
    records = [json.loads(line) for line in state.download_blob(audit).readall().splitlines()]
    job_record = next(r for r in records if r["kind"] == "job")
    assert job_record["cost_avoided_per_day"] == round(3.67 * 24, 2) and job_record["instance_hours_used"] >= 26
    assert list(state.list_blobs(name_starts_with="pending/")) == []


def replace_policy() -> ReaperPolicy:
    from dataclasses import replace as copy
    return copy(POLICY, rollback_window=timedelta(hours=1), job_max_runtime=timedelta(hours=24))


# -- every decision in full: what the audit and `tuneflow endpoints` show ------------------------------

def _f(state="Failed", name="demo"):
    return DeploymentInfo(name, "x", 1, state)


DECISIONS_IN_FULL = [
    # (tags, endpoint state, deployments, created_at, (action, rule, reason, expires_at, seconds_left))
    ({"expires-at": "2026-11-25T11:00:00Z"}, "Succeeded", DEMO, "",
     ("keep", "not-managed", "not tagged managed-by=tuneflow", "2026-11-25T11:00:00Z", -3600)),
    ({**expiring("2026-11-25T11:00:00Z"), "do-not-delete": " True "}, "Succeeded", DEMO, "",
     ("keep", "do-not-delete", "tagged do-not-delete=true", "2026-11-25T11:00:00Z", -3600)),
    ({"managed-by": " TuneFlow ", **expiring("2026-11-25T11:00:00Z")}, "Updating", DEMO, "",
     ("keep", "in-transition", "provisioning state is Updating", "2026-11-25T11:00:00Z", -3600)),
    (expiring("2026-11-25T11:00:00Z"), "Succeeded", (_f("Creating", "v-1"), _f("Succeeded", "v-2"), _f("deleting", "v-3")),
     "", ("keep", "in-transition", "deployment v-1 Creating, v-3 deleting", "2026-11-25T11:00:00Z", -3600)),
    (expiring("2026-11-25T11:00:00+00:00"), "Succeeded", DEMO, "",
     ("delete", "expired", "expired at 2026-11-25T11:00:00Z", "2026-11-25T11:00:00Z", -3600)),
    (expiring("2026-11-25T13:00:00Z"), "Succeeded", (), "2026-11-25T11:00:00Z",
     ("delete", "broken", "no deployment for 3600 s (grace 1800 s)", "2026-11-25T13:00:00Z", 3600)),
    (expiring("2026-11-25T13:00:00Z"), "Succeeded", (), "2026-11-25T11:30:00Z",  # exactly the grace
     ("delete", "broken", "no deployment for 1800 s (grace 1800 s)", "2026-11-25T13:00:00Z", 3600)),
    (expiring("2026-11-25T13:00:00Z"), "Canceled", DEMO, "2026-11-25T11:00:00Z",
     ("delete", "broken", "endpoint provisioning Canceled with no traffic for 3600 s (grace 1800 s)",
      "2026-11-25T13:00:00Z", 3600)),
    (expiring("2026-11-25T13:00:00Z"), "Succeeded", (_f("Failed", "v-1"), _f("canceled", "v-2")), "2026-11-25T11:00:00Z",
     ("delete", "broken", "deployment v-1, v-2 failed for 3600 s (grace 1800 s)", "2026-11-25T13:00:00Z", 3600)),
    (expiring("2026-11-25T13:00:00Z"), "Succeeded", (_f("Failed", "v-1"), _f("Succeeded", "v-2")), "2026-11-25T11:00:00Z",
     ("keep", "not-expired", "3600 s left", "2026-11-25T13:00:00Z", 3600)),  # one still works: not broken
    (expiring("2026-11-25T13:00:00Z"), "Succeeded", (), "2026-11-25T11:45:00Z",
     ("keep", "broken-grace", "no deployment; 900 s of grace left", "2026-11-25T13:00:00Z", 3600)),
    (expiring("2026-11-25T13:00:00Z"), "Succeeded", (), "",
     ("keep", "broken-grace", "no deployment; its age is unknown, so it waits (first seen this run)",
      "2026-11-25T13:00:00Z", 3600)),
    (expiring("soon"), "Succeeded", DEMO, "",
     ("flag", "bad-expiry", "expires-at='soon' is missing or not ISO 8601 with an offset: never deleted on that basis; "
                            "fix the tag (`tuneflow endpoints extend`)", "soon", None)),
    (MANAGED, "Succeeded", DEMO, "",
     ("flag", "bad-expiry", "expires-at=None is missing or not ISO 8601 with an offset: never deleted on that basis; "
                            "fix the tag (`tuneflow endpoints extend`)", "", None)),
    (expiring("2026-11-25T13:00:00+01:00"), "Succeeded", DEMO, "",
     ("keep", "not-expired", "0 s left", "2026-11-25T12:00:00Z", 0)),  # the instant, one hour east: expired
]


@pytest.mark.parametrize("tags, state, deployments, created_at, want", DECISIONS_IN_FULL)
def test_each_endpoint_decision_in_full(tags, state, deployments, created_at, want):
    d = decide(ep(tags, state, deployments, created_at), NOW, POLICY)
    if want[1] == "not-expired" and want[4] == 0:
        want = ("delete", "expired", "expired at 2026-11-25T12:00:00Z", "2026-11-25T12:00:00Z", 0)
    assert (d.action, d.rule, d.reason, d.expires_at, d.seconds_left) == want
    assert (d.endpoint, d.name, d.kind, d.target) == ("tf-x", "tf-x", "endpoint", "tf-x")


def test_a_failed_endpoint_still_serving_is_not_broken():
    serving = (DeploymentInfo("v-1", "x", 1, "Succeeded", traffic=100),)
    d = decide(ep(expiring("2026-11-25T13:00:00Z"), "Failed", serving, "2026-11-25T08:00:00Z"), NOW, POLICY)
    assert (d.action, d.rule) == ("keep", "not-expired")


DEPLOYMENTS_IN_FULL = [
    # (endpoint tags, deployments, [(name, action, rule, reason)])
    (LIVE, (dep("v-1", "2026-11-25T08:00:00Z"), dep("v-3", "2026-11-25T10:00:00Z", traffic=90, mirror=10)),
     [("v-1", "delete", "deployment-idle", "0 % live and mirror traffic for 5400 s (TUNEFLOW_ROLLBACK_WINDOW 3600 s)"),
      ("v-3", "keep", "deployment-serving", "90 % live, 10 % mirror traffic")]),
    ({**LIVE, "traffic-changed-at": "2026-11-25T11:30:00Z"}, (dep("v-1", "2026-11-25T08:00:00Z"), SERVING),
     [("v-1", "keep", "deployment-window", "0 % traffic, kept for a rollback: 1800 s left"),
      ("v-3", "keep", "deployment-serving", "100 % live, 0 % mirror traffic")]),
    # created after the last traffic change: idle since its creation, the later of the two
    ({**LIVE, "traffic-changed-at": "2026-11-25T08:00:00Z"}, (dep("v-1", "2026-11-25T11:00:00Z"), SERVING),
     [("v-3", "keep", "deployment-serving", "100 % live, 0 % mirror traffic"),
      ("v-1", "keep", "deployment-newest", "the newest deployment: being rolled out, or rolled back to")]),
    ({**LIVE, "traffic-changed-at": "2026-11-25T08:00:00Z"},
     (dep("v-1", "2026-11-25T11:30:00Z"), dep("v-2", "2026-11-25T11:40:00Z"), SERVING),
     [("v-3", "keep", "deployment-serving", "100 % live, 0 % mirror traffic"),
      ("v-1", "keep", "deployment-window", "0 % traffic, kept for a rollback: 1800 s left"),
      ("v-2", "keep", "deployment-newest", "the newest deployment: being rolled out, or rolled back to")]),
    (LIVE, (SERVING, dep("v-4", "2026-11-25T10:00:00Z", state="Canceled")),  # same creation time: by name
     [("v-3", "keep", "deployment-serving", "100 % live, 0 % mirror traffic"),
      ("v-4", "delete", "deployment-failed", "Canceled at 0 % for 5400 s (grace 1800 s)")]),
    ({**LIVE, "traffic-changed-at": "2026-11-25T11:30:00Z"}, (dep("v-0", "2026-11-25T08:00:00Z", state="failed"), SERVING),
     [("v-0", "delete", "deployment-failed", "failed at 0 % for 1800 s (grace 1800 s)"),  # exactly the grace
      ("v-3", "keep", "deployment-serving", "100 % live, 0 % mirror traffic")]),
    ({**MANAGED, "expires-at": "2026-11-25T20:00:00Z"}, (dep("v-0", "", state="Failed"), SERVING),
     [("v-0", "keep", "deployment-window", "0 % traffic; its idle time is unknown (no creation time and no "
                                           "traffic-changed-at tag), so it stays"),
      ("v-3", "keep", "deployment-serving", "100 % live, 0 % mirror traffic")]),  # a failure of unknown age stays
]


@pytest.mark.parametrize("tags, deployments, want", DEPLOYMENTS_IN_FULL)
def test_each_deployment_decision_in_full(tags, deployments, want):
    from shared.reaper import decide_deployments
    got = decide_deployments(ep(tags, deployments=deployments), NOW, POLICY)
    assert [(d.name, d.action, d.rule, d.reason) for d in got] == want
    assert all((d.endpoint, d.kind, d.target, d.seconds_left) == ("tf-x", "deployment", f"tf-x/{d.name}", None)
               for d in got)


def test_a_deployment_in_transition_on_a_steady_endpoint_is_kept():
    from shared.reaper import decide_deployments
    got = decide_deployments(ep(LIVE, deployments=(dep("v-1", "2020-01-01T00:00:00Z", state="Updating"), SERVING)),
                             NOW, POLICY)
    assert [(d.name, d.action, d.rule, d.reason) for d in got][0] == (
        "v-1", "keep", "deployment-in-transition", "provisioning state is Updating")


@pytest.mark.parametrize("tags, state", [({"expires-at": "2026-11-25T20:00:00Z"}, "Succeeded"),
                                         ({**LIVE, "do-not-delete": "true"}, "Succeeded"),
                                         (LIVE, "Creating"), (LIVE, "updating"), (LIVE, "Deleting")])
def test_no_deployment_decisions_on_an_endpoint_that_is_not_ours_or_is_moving(tags, state):
    from shared.reaper import decide_deployments
    assert decide_deployments(ep(tags, state, deployments=(dep("v-1", "2020-01-01T00:00:00Z"), SERVING)),
                              NOW, POLICY) == []


def test_no_deployment_decisions_on_an_endpoint_without_deployments():
    from shared.reaper import decide_deployments
    assert decide_deployments(ep(LIVE, deployments=()), NOW, POLICY) == []


def test_the_quota_rule_counts_what_is_deleted_anyway_and_says_why():
    """18 deployments, one of them idle past the window (deleted anyway): 17 remain, below 18: none for the quota."""
    from shared.reaper import decide_deployments
    tags = {**LIVE, "traffic-changed-at": "2026-11-25T11:00:00Z"}  # the idle ones were created after it
    old = dep("v-00", "2026-11-25T08:00:00Z", state="Failed")  # failed long ago: deleted on its own rule
    idle = tuple(dep(f"v-{i:02d}", f"2026-11-25T11:{i:02d}:00Z") for i in range(1, 17))
    got = decide_deployments(ep(tags, deployments=(old, *idle, dep("v-99", "2026-11-25T11:55:00Z", traffic=100))),
                             NOW, POLICY)
    assert [(d.name, d.rule) for d in got if d.action == "delete"] == [("v-00", "deployment-failed")]
    got = decide_deployments(ep(tags, deployments=(*idle, dep("v-17", "2026-11-25T11:17:00Z"),
                                                   dep("v-99", "2026-11-25T11:55:00Z", traffic=100))), NOW, POLICY)
    [quota] = [d for d in got if d.action == "delete"]
    assert (quota.name, quota.rule, quota.reason) == (
        "v-01", "deployment-quota", "0 % traffic, kept for a rollback: 60 s left; but the endpoint has 18 "
        "deployments, near Azure's limit of 20: the oldest idle ones go first")


@pytest.mark.parametrize("the_job, want", [
    (job("ft-a", "2026-11-24T11:00:00Z"),
     ("cancel", "job-runaway", "Running for 90000 s, longer than TUNEFLOW_JOB_MAX_RUNTIME (86400 s)", -3600)),
    (job("ft-b", "2026-11-25T11:00:00Z", status="Queued"),
     ("keep", "job-running", "Queued: 82800 s of TUNEFLOW_JOB_MAX_RUNTIME left", 82800)),
    (job("ft-c", "2026-11-24T11:59:59Z"),
     ("cancel", "job-runaway", "Running for 86401 s, longer than TUNEFLOW_JOB_MAX_RUNTIME (86400 s)", -1)),
    (job("ft-d", ""), ("flag", "job-age-unknown", "Running, with no creation time: never canceled on that basis", None)),
    (job("ft-e", "garbage"),
     ("flag", "job-age-unknown", "Running, with no creation time: never canceled on that basis", None)),
    (job("ft-f", "2026-11-20T00:00:00Z", tags={"do-not-delete": "True"}),
     ("keep", "do-not-delete", "tagged do-not-delete=true", None)),
])
def test_each_job_decision_in_full(the_job, want):
    from shared.reaper import decide_job
    d = decide_job(the_job, NOW, POLICY)
    assert (d.action, d.rule, d.reason, d.seconds_left) == want
    assert (d.expires_at, d.endpoint, d.kind) == ("", "", "job")


def test_the_policy_from_settings(monkeypatch):
    for name, value in {"TUNEFLOW_REAPER_GRACE": "45m", "TUNEFLOW_ROLLBACK_WINDOW": "2h",
                        "TUNEFLOW_JOB_MAX_RUNTIME": "3d", "TUNEFLOW_REAPER_MAX_DELETES": "0",
                        "TUNEFLOW_REAPER_MAX_DELETE_SHARE": "0.25", "TUNEFLOW_REAPER_CONCURRENCY": "1",
                        "TUNEFLOW_SKU_PRICES": '{"Standard_NC24ads_A100_v4": 3.67, "Standard_DS3_v2": "0.293", '
                                               '"X": 2}'}.items():
        monkeypatch.setenv(name, value)
    assert ReaperPolicy.from_settings() == ReaperPolicy(
        grace=timedelta(minutes=45), rollback_window=timedelta(hours=2), job_max_runtime=timedelta(days=3),
        max_deletes=0, max_delete_share=0.25, concurrency=1,
        prices={"standard_nc24ads_a100_v4": 3.67, "standard_ds3_v2": 0.293, "x": 2.0})
    assert all(isinstance(v, float) for v in ReaperPolicy.from_settings().prices.values())


@pytest.mark.parametrize("name, value, ok", [
    ("TUNEFLOW_REAPER_MAX_DELETES", "-1", False), ("TUNEFLOW_REAPER_CONCURRENCY", "0", False),
    ("TUNEFLOW_REAPER_MAX_DELETE_SHARE", "1.0", True), ("TUNEFLOW_REAPER_MAX_DELETE_SHARE", "0", True),
    ("TUNEFLOW_REAPER_MAX_DELETE_SHARE", "1.01", False), ("TUNEFLOW_REAPER_MAX_DELETE_SHARE", "-0.1", False),
])
def test_the_policy_settings_bounds(monkeypatch, name, value, ok):
    from shared.settings import SettingError
    monkeypatch.setenv(name, value)
    if ok:
        ReaperPolicy.from_settings()
    else:
        with pytest.raises(SettingError, match=name):
            ReaperPolicy.from_settings()


@pytest.mark.parametrize("value, message", [
    ("3.67", "TUNEFLOW_SKU_PRICES='3.67' is not a JSON object; use e.g. {\"Standard_NC24ads_A100_v4\": 3.67}"),
    ('{"Standard_DS3_v2": null}', "TUNEFLOW_SKU_PRICES: the price of 'Standard_DS3_v2' is None, not a number per "
                                  "instance-hour; use e.g. {\"Standard_NC24ads_A100_v4\": 3.67}"),
])
def test_refused_prices_in_one_line_with_an_example(monkeypatch, value, message):
    from shared.settings import SettingError
    monkeypatch.setenv("TUNEFLOW_SKU_PRICES", value)
    with pytest.raises(SettingError) as exc:
        ReaperPolicy.from_settings()
    assert str(exc.value) == message


def test_the_breaker_alerts_in_full():
    _, alert = plan(_expired(11, "tf-old") + _fresh(100), NOW, POLICY)
    assert alert == "11 deletions and cancellations planned, more than TUNEFLOW_REAPER_MAX_DELETES=10"
    decisions, alert = plan(_expired(3) + _fresh(2), NOW, POLICY)
    assert alert == ("3 of 5 managed endpoints planned for deletion (60%), more than "
                     "TUNEFLOW_REAPER_MAX_DELETE_SHARE=50%")
    assert decisions[0].reason == f"expired at 2026-11-25T11:00:00Z; not deleted: {alert}"
