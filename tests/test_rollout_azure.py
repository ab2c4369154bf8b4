"""Rollouts through the Azure backend against the strict fake (tests/azure_fake.py: every endpoint and
deployment change a long-running operation over several polls, traffic validated as ARM validates it, a
deployment with traffic refused deletion), with the app's handlers on real Azurite storage.

Two model versions of one dataset share one endpoint; each traffic change is one PUT, never repeated;
a failed smoke test or check gives the traffic back and deletes the new deployment; a redelivery after
the handler died at any step finishes the rollout without a second traffic change.
"""

from __future__ import annotations

import json

import pytest

from shared import naming
from shared.ml.base import MLError
from tests.test_azure_first_contact import _completion_event, driver

pytestmark = pytest.mark.integration


class Crash(BaseException):
    """A worker dying at a fail point: nothing after it runs (BaseException passes every `except Exception`)."""


@pytest.fixture
def azure(storage_env, monkeypatch):
    monkeypatch.setenv("TUNEFLOW_ML_BACKEND", "azure")
    monkeypatch.setenv("TUNEFLOW_ENDPOINT_TTL", "2h")
    monkeypatch.setenv("TUNEFLOW_ROLLOUT_STEPS", "10,50,100")
    monkeypatch.setenv("TUNEFLOW_ROLLOUT_STEP_WAIT", "1s")
    monkeypatch.setenv("TUNEFLOW_ROLLOUT_PROBES", "2")
    return driver(polls=2)


def _model_version(d, dataset: str, seed: int):
    """Drop a dataset (new content per seed), fine-tune, register: the deploy request of a new version."""
    from local import sampledata
    from shared import storage
    from shared.arrival import handle_dataset_blob
    from shared.events import decide, normalize
    from shared.finetune import handle_request
    from shared.registration import handle_decision
    rows = "".join(json.dumps(r) + "\n" for r in sampledata.rows(60, seed=seed)).encode()
    blob = storage.container("datasets").get_blob_client(f"{dataset}/train.jsonl")
    blob.upload_blob(rows, overwrite=True)
    request = handle_dataset_blob(blob)
    job = handle_request(request, d.backend, storage.container("prepared"), storage.container("flows"))
    d.fake.finish_job(job.name)
    return handle_decision(decide(normalize(_completion_event(d.backend.get_job(job.name)))), d.backend,
                           storage.container("flows"))


def _deploy(d, request):
    from shared import storage
    from shared.deployment import handle_deploy
    return handle_deploy(request, d.backend, storage.container("prepared"), storage.container("flows"),
                         sleep=lambda s: None)


def _stages(flow_id: str) -> dict:
    from shared import flows, storage
    return {(r["stage"], r.get("key", "")): r for r in flows.read_all(storage.container("flows"))
            if r["flow_id"] == flow_id}


def _traffic_puts(d, endpoint: str) -> list[tuple[dict, dict]]:
    return [({k: v for k, v in (b["properties"].get("traffic") or {}).items() if v},
             {k: v for k, v in (b["properties"].get("mirrorTraffic") or {}).items() if v})
            for b in d.fake.bodies("PUT", f"/onlineEndpoints/{endpoint}")]


def test_two_versions_of_a_dataset_share_one_endpoint_and_the_new_one_takes_the_traffic_in_steps(azure):
    d = azure
    first = _model_version(d, "roll", seed=1)
    one = _deploy(d, first)
    name = naming.endpoint_name("roll", d.backend.workspace_id)
    assert one.name == name and one.traffic == {naming.deployment_name(first.model_version): 100}
    key, uri = d.fake.keys[name], one.scoring_uri

    second = _model_version(d, "roll", seed=2)
    assert second.flow_id != first.flow_id
    two = _deploy(d, second)
    old, new = naming.deployment_name(first.model_version), naming.deployment_name(second.model_version)
    assert two.name == name and two.scoring_uri == uri and d.fake.keys[name] == key
    assert two.traffic == {new: 100} and two.deployment(old).traffic == 0  # kept, at 0 %, for a rollback
    assert _traffic_puts(d, name) == [({}, {}), ({old: 100}, {}), ({new: 10, old: 90}, {}), ({new: 50, old: 50}, {}),
                                      ({new: 100}, {})]
    stages = _stages(second.flow_id)
    assert {s for s, _k in stages} >= {"deployed", "smoke-tested", "shifted", "rolled-out"}
    assert sorted(k for s, k in stages if s == "shifted") == ["010", "050", "100"]
    assert stages[("rolled-out", "")]["detail"]["previous"] == old
    assert _deploy(d, second) is None and len(_traffic_puts(d, name)) == 5  # a redelivery changes nothing
    # the probes and the smoke test went straight to the new deployment, never through the live split
    targeted = [h.get("azureml-model-deployment") for h in d.fake.score_headers]
    assert targeted.count(new) >= 1 + 2 * 2


def test_the_mirror_copies_live_traffic_before_any_is_shifted_and_is_cleared_with_the_first_step(azure, monkeypatch):
    d = azure
    monkeypatch.setenv("TUNEFLOW_ROLLOUT_MIRROR_PCT", "20")
    monkeypatch.setenv("TUNEFLOW_ROLLOUT_STEPS", "100")
    first = _model_version(d, "mirror", seed=1)
    _deploy(d, first)
    second = _model_version(d, "mirror", seed=2)
    _deploy(d, second)
    name = naming.endpoint_name("mirror", d.backend.workspace_id)
    old, new = naming.deployment_name(first.model_version), naming.deployment_name(second.model_version)
    assert _traffic_puts(d, name)[2:] == [({old: 100}, {new: 20}), ({new: 100}, {})]
    assert ("mirrored", "") in _stages(second.flow_id)


def test_a_failed_smoke_test_leaves_the_traffic_where_it_was_and_deletes_the_new_deployment(azure):
    d = azure
    first = _model_version(d, "smoke", seed=1)
    _deploy(d, first)
    name = naming.endpoint_name("smoke", d.backend.workspace_id)
    puts = len(_traffic_puts(d, name))
    second = _model_version(d, "smoke", seed=2)
    d.fake.container_errors = 1  # the smoke test's request: 424 from the new deployment's container
    assert _deploy(d, second) is None
    stages = _stages(second.flow_id)
    assert ("smoke-failed", "") in stages and ("rollout-failed", "") in stages
    assert "smoke test" in stages[("rollout-failed", "")]["detail"]["reason"]
    old = naming.deployment_name(first.model_version)
    assert len(_traffic_puts(d, name)) == puts  # traffic never left the old deployment
    assert set(d.fake.deployments) == {(name, old)}
    assert d.fake.endpoints[name]["properties"]["traffic"] == {old: 100}


def test_a_check_failing_between_steps_gives_the_traffic_back(azure):
    d = azure
    first = _model_version(d, "check", seed=1)
    _deploy(d, first)
    second = _model_version(d, "check", seed=2)
    name = naming.endpoint_name("check", d.backend.workspace_id)
    old, new = naming.deployment_name(first.model_version), naming.deployment_name(second.model_version)
    d.fake.fail_scoring_after = (new, 1)  # the smoke test passes, the probes after the first step fail
    assert _deploy(d, second) is None
    assert _traffic_puts(d, name)[-2:] == [({new: 10, old: 90}, {}), ({old: 100}, {})]
    assert set(d.fake.deployments) == {(name, old)}
    reason = _stages(second.flow_id)[("rollout-failed", "")]["detail"]["reason"]
    assert "10 %" in reason, reason


STEPS = ["deploy.deployment-created", "deploy.smoke-tested", "deploy.before-traffic@1", "deploy.shifted-10",
         "deploy.before-traffic@2", "deploy.shifted-50", "deploy.shifted-100"]


@pytest.mark.parametrize("point", STEPS)
def test_a_worker_dying_at_any_step_is_finished_by_the_redelivery_without_a_repeated_traffic_change(
        azure, monkeypatch, point):
    from shared import failpoints
    d = azure
    first = _model_version(d, "crash", seed=1)
    _deploy(d, first)
    second = _model_version(d, "crash", seed=2)
    name = naming.endpoint_name("crash", d.backend.workspace_id)
    where, _, nth = point.partition("@")
    passes = {"n": 0}

    def reached(at: str) -> None:
        if at == where:
            passes["n"] += 1
            if passes["n"] == int(nth or 1):
                raise Crash(at)

    monkeypatch.setattr(failpoints, "reached", reached)
    with pytest.raises(Crash):
        _deploy(d, second)
    monkeypatch.setattr(failpoints, "reached", lambda at: None)
    done = _deploy(d, second)  # the redelivery (the lease of the dead worker released by its unwinding)
    old, new = naming.deployment_name(first.model_version), naming.deployment_name(second.model_version)
    assert done is not None and done.traffic == {new: 100}
    shifts = [t for t, _m in _traffic_puts(d, name)[2:]]
    assert shifts == [{new: 10, old: 90}, {new: 50, old: 50}, {new: 100}], shifts  # each change once, in order
    assert ("rolled-out", "") in _stages(second.flow_id)


def test_an_older_flow_delivered_late_does_not_replace_a_newer_one(azure):
    d = azure
    older = _model_version(d, "late", seed=1)
    newer = _model_version(d, "late", seed=2)
    _deploy(d, newer)
    assert _deploy(d, older) is None
    stages = _stages(older.flow_id)
    assert ("superseded", "") in stages and ("deployed", "") not in stages
    name = naming.endpoint_name("late", d.backend.workspace_id)
    assert d.fake.endpoints[name]["properties"]["traffic"] == {naming.deployment_name(newer.model_version): 100}


def test_rollback_gives_the_traffic_back_to_the_previous_deployment_and_records_it(azure):
    from shared import storage
    from shared.deployment import rollback
    from shared.rollout import NoRollback
    d = azure
    first = _model_version(d, "back", seed=1)
    with pytest.raises(NoRollback):
        rollback(d.backend, storage.container("flows"), "back")  # no endpoint yet
    _deploy(d, first)
    with pytest.raises(NoRollback, match="no previous deployment"):
        rollback(d.backend, storage.container("flows"), "back")
    second = _model_version(d, "back", seed=2)
    _deploy(d, second)
    done = rollback(d.backend, storage.container("flows"), "back")
    old, new = naming.deployment_name(first.model_version), naming.deployment_name(second.model_version)
    assert (done["from"], done["to"]) == (new, old)
    name = naming.endpoint_name("back", d.backend.workspace_id)
    assert {k: v for k, v in d.fake.endpoints[name]["properties"]["traffic"].items() if v} == {old: 100}
    assert any(s == "rolled-back" for s, _k in _stages(second.flow_id))


@pytest.mark.parametrize("traffic, mirror, words", [
    ({"v-1": 60}, {}, "sum to 0 or 100"),
    ({"v-9": 100}, {}, "does not exist"),
    ({"v-1": 100}, {"v-1": 10}, "both live traffic and mirror"),
])
def test_the_fake_refuses_traffic_azure_refuses(azure, traffic, mirror, words):
    from shared.ml.base import ModelRef
    d = azure
    d.backend.create_endpoint("tf-traffic-00000001", {"managed-by": "tuneflow"})
    d.backend.create_deployment("tf-traffic-00000001", "v-1", ModelRef("m", "1"), {})
    with pytest.raises(MLError, match=words):
        d.backend.set_traffic("tf-traffic-00000001", traffic, mirror)


def test_a_deployment_with_traffic_is_refused_deletion(azure):
    from shared.ml.base import HasTraffic, ModelRef
    d = azure
    d.backend.create_endpoint("tf-traffic-00000002", {"managed-by": "tuneflow"})
    d.backend.create_deployment("tf-traffic-00000002", "v-1", ModelRef("m", "1"), {})
    d.backend.set_traffic("tf-traffic-00000002", {"v-1": 100}, {})
    with pytest.raises(HasTraffic):
        d.backend.delete_deployment("tf-traffic-00000002", "v-1")


def test_an_endpoint_is_not_reaped_under_a_rollout_a_crash_left_between_steps(azure, monkeypatch):
    """Found by the chaos run: the worker died during the 10 % step wait, the previous version's TTL ran out
    before the redelivery, and the reaper deleted the endpoint under the rollout (`rollout-failed`). The first
    traffic step now moves a sooner expiry to one TTL on: the reaper keeps it and the redelivery finishes."""
    from datetime import timedelta
    from shared import failpoints, storage
    from shared.reaper import ReaperPolicy, reap
    from shared.ttl import format_utc, utcnow
    d = azure
    first = _model_version(d, "late", seed=1)
    _deploy(d, first)
    name = naming.endpoint_name("late", d.backend.workspace_id)
    soon = format_utc(utcnow() + timedelta(minutes=1))  # the previous version's TTL nearly run out
    d.fake.endpoints[name]["tags"]["expires-at"] = soon
    second = _model_version(d, "late", seed=2)

    def reached(at: str) -> None:
        if at == "deploy.shifted-10":
            raise Crash(at)
    monkeypatch.setattr(failpoints, "reached", reached)
    with pytest.raises(Crash):
        _deploy(d, second)
    monkeypatch.setattr(failpoints, "reached", lambda at: None)
    renewed = d.backend.get_endpoint(name).tags["expires-at"]
    assert renewed > soon
    later = utcnow() + timedelta(minutes=30)  # past the old expiry, the redelivery not yet here
    run = reap(d.backend, later, ReaperPolicy(), state=storage.container("reaper"), sleep=lambda s: None)
    assert [(x.target, x.action) for x in run.decisions if x.kind == "endpoint"] == [(name, "keep")]
    done = _deploy(d, second)
    assert done is not None and done.traffic == {naming.deployment_name(second.model_version): 100}
    assert ("rolled-out", "") in _stages(second.flow_id)
