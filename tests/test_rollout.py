"""The rollout's rules (shared/rollout.py) as tables: steps, the split at each step, what serves, what
supersedes, what a rollback goes back to; and Azure's traffic rules (shared/ml/base.check_traffic)."""

from __future__ import annotations

import pytest

from shared import rollout, settings
from shared.ml.base import DeploymentInfo, EndpointInfo, MLError, check_traffic
from shared.rollout import NoRollback, RolloutPolicy


def dep(name, traffic=0, created_at="2026-12-01T10:00:00Z", state="Succeeded", mirror=0, started=""):
    return DeploymentInfo(name, "x", 1, state, traffic=traffic, mirror_traffic=mirror, created_at=created_at,
                          tags={"flow-started-at": started} if started else {})


def ep(*deployments):
    return EndpointInfo("tf-x", {}, "Succeeded", deployments=tuple(deployments))


@pytest.mark.parametrize("text, steps", [
    ("100", (100,)), ("10,100", (10, 100)), ("5,25,50,100", (5, 25, 50, 100)), (" 10, 100", (10, 100)),
    ("1,100", (1, 100)), ("1,99,100", (1, 99, 100)),
])
def test_steps_that_are_accepted(text, steps):
    assert rollout.parse_steps(text) == steps


@pytest.mark.parametrize("text", ["", "10", "10,50", "100,10", "0,100", "10,10,100", "10,110", "-5,100", "ten,100",
                                  "10;100", "10.5,100", "101,100", "10,100,100"])
def test_steps_that_are_refused_name_the_accepted_form(text):
    with pytest.raises(settings.SettingError, match="rising, ending at 100"):
        rollout.parse_steps(text)


@pytest.mark.parametrize("previous, steps, mirror, want_steps, want_mirror", [
    ("v-1", (10, 100), 20, (10, 100), 20),
    ("", (10, 100), 20, (100,), 0),  # the first version: nothing to shift from, nothing to mirror
    ("v-1", (100,), 0, (100,), 0),
])
def test_the_first_version_of_a_dataset_goes_to_100_at_once(previous, steps, mirror, want_steps, want_mirror):
    policy = RolloutPolicy(steps=steps, mirror_pct=mirror)
    assert rollout.steps_for(policy, previous) == want_steps
    assert rollout.mirror_for(policy, previous) == want_mirror


@pytest.mark.parametrize("new, previous, pct, split", [
    ("v-2", "v-1", 10, {"v-2": 10, "v-1": 90}), ("v-2", "v-1", 100, {"v-2": 100, "v-1": 0}),
    ("v-2", "", 100, {"v-2": 100}),
])
def test_the_split_at_each_step_sums_to_100(new, previous, pct, split):
    assert rollout.split(new, previous, pct) == split and sum(split.values()) == 100


@pytest.mark.parametrize("name, value, words", [
    ("TUNEFLOW_ROLLOUT_MIRROR_PCT", "60", "at most 50"),
    ("TUNEFLOW_ROLLOUT_STEP_WAIT", "soon", "TUNEFLOW_ROLLOUT_STEP_WAIT"),
    ("TUNEFLOW_ROLLBACK_WINDOW", "0", "TUNEFLOW_ROLLBACK_WINDOW"),
    ("TUNEFLOW_ROLLOUT_STEPS", "50", "TUNEFLOW_ROLLOUT_STEPS"),
    ("TUNEFLOW_ROLLOUT_PROBES", "0", "TUNEFLOW_ROLLOUT_PROBES"),
    ("TUNEFLOW_ROLLOUT_MIRROR_PCT", "-1", "TUNEFLOW_ROLLOUT_MIRROR_PCT"),
])
def test_bad_settings_are_refused_with_their_name(monkeypatch, name, value, words):
    monkeypatch.setenv(name, value)
    with pytest.raises(settings.SettingError, match=words):
        RolloutPolicy.from_settings()


@pytest.mark.parametrize("env, field, value", [
    ({"TUNEFLOW_ROLLOUT_MIRROR_PCT": "50"}, "mirror_pct", 50),  # Azure's limit itself is allowed
    ({"TUNEFLOW_ROLLOUT_MIRROR_PCT": "0"}, "mirror_pct", 0),
    ({"TUNEFLOW_ROLLOUT_PROBES": "5"}, "probes", 5),
    ({"TUNEFLOW_ROLLOUT_PROBES": "1"}, "probes", 1),  # the fewest
    ({"TUNEFLOW_ROLLOUT_STEPS": "5,25,100"}, "steps", (5, 25, 100)),
])
def test_settings_that_are_accepted(monkeypatch, env, field, value):
    for name, text in env.items():
        monkeypatch.setenv(name, text)
    assert getattr(RolloutPolicy.from_settings(), field) == value


def test_the_default_policy():
    policy = RolloutPolicy.from_settings()
    assert (policy.steps, policy.mirror_pct, policy.probes) == ((10, 100), 0, 3)
    assert policy.step_wait.total_seconds() == 120 and policy.window.total_seconds() == 3600


@pytest.mark.parametrize("deployments, exclude, serving", [
    ((dep("v-1", 100), dep("v-2")), "", "v-1"),
    ((dep("v-1", 90), dep("v-2", 10)), "", "v-1"),
    ((dep("v-1", 10), dep("v-2", 90)), "", "v-2"),
    ((dep("v-1", 50, "2026-12-01T09:00:00Z"), dep("v-2", 50, "2026-12-01T10:00:00Z")), "", "v-2"),  # a tie: newer
    ((dep("v-1", 90), dep("v-2", 10)), "v-1", "v-2"),
    ((dep("v-1"), dep("v-2", mirror=20)), "", None),  # a mirror serves nobody
    ((), "", None),
    ((dep("v-1", 1), dep("v-2", 99)), "v-2", "v-1"),  # 1 % is live traffic
    (None, "", None),  # no endpoint yet
])
def test_what_serves(deployments, exclude, serving):
    found = rollout.serving(ep(*deployments) if deployments is not None else None, exclude=exclude)
    assert (found.name if found else None) == serving


@pytest.mark.parametrize("theirs, mine, superseded", [
    ("2026-12-01T10:00:01Z", "2026-12-01T10:00:00Z", True),  # the serving flow began later
    ("2026-12-01T10:00:00Z", "2026-12-01T10:00:01Z", False),
    ("2026-12-01T10:00:00Z", "2026-12-01T10:00:00Z", False),
    ("", "2026-12-01T10:00:00Z", False),  # unknown: never a reason to skip a rollout
    ("2026-12-01T10:00:01Z", "", False),
])
def test_a_late_delivery_is_superseded_by_a_later_flow(theirs, mine, superseded):
    endpoint = ep(dep("v-1", 100, started=theirs))
    assert (rollout.superseded_by(endpoint, mine, exclude="v-2") is not None) == superseded


@pytest.mark.parametrize("deployments, superseded_by", [
    # this flow's own deployment (v-2) carries most traffic: what counts is the other one, begun later
    ((dep("v-1", 10, started="2026-12-01T10:00:01Z"), dep("v-2", 90, started="2026-12-01T10:00:00Z")), "v-1"),
    ((dep("v-1", 0, started="2026-12-01T10:00:01Z"), dep("v-2", 100, started="2026-12-01T10:00:00Z")), None),
    ((dep("v-1", started="2026-12-01T10:00:01Z"),), None),  # nothing serves: nothing supersedes
    (None, None),
])
def test_only_another_serving_deployment_supersedes(deployments, superseded_by):
    endpoint = ep(*deployments) if deployments is not None else None
    found = rollout.superseded_by(endpoint, "2026-12-01T10:00:00Z", exclude="v-2")
    assert (found.name if found else None) == superseded_by


IN_PROGRESS = ("endpoint tf-x has no deployment carrying all the traffic ({}): a rollout may be in progress; "
               "wait for it")
NO_PREVIOUS = ("endpoint tf-x keeps no previous deployment (it is removed TUNEFLOW_ROLLBACK_WINDOW after a rollout): "
               "deploy an earlier model version instead")


@pytest.mark.parametrize("deployments, back_to", [
    ((dep("v-1", 0, "2026-12-01T09:00:00Z"), dep("v-2", 100, "2026-12-01T10:00:00Z")), "v-1"),
    ((dep("v-1", 0, "2026-12-01T08:00:00Z"), dep("v-3", 0, "2026-12-01T09:00:00Z"),
      dep("v-4", 100, "2026-12-01T10:00:00Z")), "v-3"),  # the newest of the older ones
    ((dep("v-1", 0), dep("v-2", 100)), "v-1"),  # created in the same second: still the previous one
    ((dep("v-1", 0, "2026-12-01T09:00:00Z", state="Failed"), dep("v-2", 100, "2026-12-01T10:00:00Z")), NO_PREVIOUS),
    ((dep("v-1", 100, "2026-12-01T09:00:00Z"), dep("v-2", 0, "2026-12-01T10:00:00Z")), NO_PREVIOUS),  # newer only
    ((dep("v-1", 0, "2026-12-01T09:00:00Z", mirror=10), dep("v-2", 100, "2026-12-01T10:00:00Z")), NO_PREVIOUS),
    ((dep("v-1", 100),), NO_PREVIOUS),
    ((dep("v-1", 90), dep("v-2", 10)), IN_PROGRESS.format("{'v-1': 90, 'v-2': 10}")),
    ((dep("v-1"), dep("v-2")), IN_PROGRESS.format("no traffic")),
])
def test_what_a_rollback_goes_back_to(deployments, back_to):
    endpoint = ep(*deployments)
    if back_to.startswith("endpoint "):
        with pytest.raises(NoRollback) as refused:
            rollout.rollback_pair(endpoint)
        assert str(refused.value) == back_to
    else:
        assert rollout.rollback_pair(endpoint)[1].name == back_to


OK = {"a": "Succeeded", "b": "Succeeded", "c": "Creating"}


@pytest.mark.parametrize("traffic, mirror, words", [
    ({"a": 100}, {}, None), ({"a": 90, "b": 10}, {}, None), ({}, {}, None), ({"a": 0, "b": 0}, {}, None),
    ({"a": 100}, {"b": 50}, None), ({"a": 100, "c": 0}, {}, None),
    ({"a": 90}, {}, "sums to 90"), ({"a": 60, "b": 60}, {}, "sums to 120"),
    ({"z": 100}, {}, "does not exist"), ({"c": 100}, {}, "not Succeeded"),
    ({"a": 100}, {"b": 51}, "at most 50"), ({"a": 100}, {"b": 10, "c": 0}, None),
    ({"a": 100}, {"a": 10}, "both live and mirror"), ({"a": 100.0}, {}, "whole percent"),
    ({"a": 100}, {"c": 10}, "not Succeeded"), ({"a": True}, {}, "whole percent"),
])
def test_azures_traffic_rules(traffic, mirror, words):
    if words is None:
        check_traffic("tf-x", OK, traffic, mirror)
    else:
        with pytest.raises(MLError, match=words):
            check_traffic("tf-x", OK, traffic, mirror)
