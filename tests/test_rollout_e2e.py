"""One dataset, three versions, through the local host running function_app.py: the first creates the
dataset's endpoint; the second rolls out into it (same scoring URI, same key) and the first's deployment
is reaped once the rollback window ends; the third's model crashes on the held-out prompt, so its smoke
test fails: `rollout-failed`, and the traffic never left the second."""

from __future__ import annotations

import json

import pytest

from tests.conftest import invocations, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
DATASET = "e2e-rollout"
FAULT = "Xyzzy-crash-marker"
DONE = ("rolled-out", "rollout-failed", "superseded", "job-failed", "gate-failed", "deploy-failed", "refused", "reaped")


@pytest.fixture
def rollout_env(monkeypatch):
    for key, value in {"TUNEFLOW_ROLLOUT_STEPS": "50,100", "TUNEFLOW_ROLLOUT_STEP_WAIT": "1s",
                       "TUNEFLOW_ROLLOUT_PROBES": "1", "TUNEFLOW_ROLLBACK_WINDOW": "15s",
                       "TUNEFLOW_ENDPOINT_TTL": "1h", "TUNEFLOW_GATE": "off"}.items():
        monkeypatch.setenv(key, value)


def _flows() -> list:
    from shared import flows, storage
    return [f for f in flows.summarize(flows.read_all(storage.container("flows"))) if f.dataset == DATASET]


def _drop(tmp_path, seed: int, marker: str = "") -> None:
    from local import sampledata
    from shared import storage
    rows = [{**r, "messages": [{**m, "content": f"{m['content']} {marker}".strip()} for m in r["messages"]]}
            for r in sampledata.rows(60, seed=seed)]
    storage.container("datasets").upload_blob(f"{DATASET}/data.jsonl",
                                              "".join(json.dumps(r) + "\n" for r in rows).encode(), overwrite=True)


def _finished(count: int):
    rows = _flows()
    return rows if len(rows) >= count and all(r.stage in DONE for r in rows) else None


def _newest(rows):
    return max(rows, key=lambda r: r.stage_times.get("prepared", ""))


def test_versions_of_one_dataset_roll_out_into_one_endpoint_and_a_failed_one_never_takes_traffic(
        rollout_env, host, workspace, tmp_path, monkeypatch):
    from shared import naming
    name = naming.endpoint_name(DATASET, workspace.workspace_id)

    _drop(tmp_path, seed=1)
    [first] = wait_for(lambda: _finished(1), 600, "the first version to be rolled out")
    assert first.stage == "rolled-out", first.details
    endpoint = workspace.get_endpoint(name)
    old = naming.deployment_name(first.model.split(":")[1])
    assert first.endpoint == name and endpoint.traffic == {old: 100}
    uri, key = endpoint.scoring_uri, workspace.key(name)

    _drop(tmp_path, seed=2)  # new content under the same name: a new version of the dataset
    rows = wait_for(lambda: _finished(2), 600, "the second version to be rolled out")
    second = _newest(rows)
    assert second.flow_id != first.flow_id and second.stage == "rolled-out", second.details
    new = naming.deployment_name(second.model.split(":")[1])
    after = workspace.get_endpoint(name)
    assert [e.name for e in workspace.list_endpoints()] == [name]  # one endpoint for the dataset
    assert (after.scoring_uri, workspace.key(name)) == (uri, key)  # its consumers change nothing
    assert after.traffic == {new: 100}
    assert second.details["rolled-out"]["previous"] == old
    assert set(second.stage_times) >= {"deployed", "smoke-tested", "shifted", "rolled-out"}

    # the first version's deployment stays for the rollback window, then the reaper removes it
    wait_for(lambda: workspace.get_endpoint(name).deployment(old) is None, 120, "the old deployment to be reaped")
    wait_for(lambda: "reaped" in next(r for r in _flows() if r.flow_id == first.flow_id).stage_times, 60,
             "the first flow to be recorded as reaped")
    assert workspace.get_endpoint(name).traffic == {new: 100}

    # a version whose model crashes on the held-out prompt: its smoke test fails, the traffic stays
    monkeypatch.setenv("TUNEFLOW_LOCAL_SCORING_FAULT", FAULT)  # deployments started from now on
    _drop(tmp_path, seed=3, marker=FAULT)
    rows = wait_for(lambda: _finished(3), 600, "the third version's rollout verdict")
    third = _newest(rows)
    assert third.stage == "rollout-failed", third.details
    assert "crashed" in third.details["smoke-failed"]["error"]
    assert "shifted" not in third.stage_times  # no live traffic ever went to it
    failed = naming.deployment_name(third.model.split(":")[1])
    # the verdict is written first, then the undoing: the failed deployment is deleted right after
    wait_for(lambda: workspace.get_endpoint(name).deployment(failed) is None, 60, "the failed deployment's deletion")
    final = workspace.get_endpoint(name)
    assert final.traffic == {new: 100} and final.mirror_traffic == {}
    assert (final.scoring_uri, workspace.key(name)) == (uri, key)
    assert invocations(host, "deploy", "Failed") == []  # a failed rollout is a verdict, not an error
