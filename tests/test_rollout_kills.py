"""A worker killed (SIGKILL) between any two rollout steps, then the deploy message delivered again: the
rollout finishes, each traffic change made once, never two deployments half-live at the end.

On the local workspace for real: router and scoring processes, the endpoint's files, Azurite. The kill
is a fail point (shared/failpoints.py) in a subprocess running the deploy handler, as the host would
run it; the redelivery runs the same handler in this process, counting the traffic changes it makes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

from shared import naming
from shared.ml.base import JobSpec
from tests.conftest import ROOT, wait_for
from tests.test_rollout_azure import _stages

pytestmark = pytest.mark.integration
VERSION = "0123456789abcdef"
ROLLOUT = {"TUNEFLOW_ROLLOUT_STEPS": "50,100", "TUNEFLOW_ROLLOUT_MIRROR_PCT": "20",
           "TUNEFLOW_ROLLOUT_STEP_WAIT": "1s", "TUNEFLOW_ROLLOUT_PROBES": "1", "TUNEFLOW_ENDPOINT_TTL": "1h"}
# fail point -> traffic changes the redelivery still has to make (of three: mirror, 50 %, 100 %)
STEPS = [
    ("deploy.deployment-created", 3),  # the deployment exists, `deployed` not recorded
    ("deploy.smoke-tested", 3),  # smoke-tested recorded, nothing routed
    ("deploy.before-traffic@1", 3),  # about to set the mirror
    ("deploy.mirror-set", 2),  # the mirror set, `mirrored` not recorded: not set again
    ("deploy.shifted-50", 1),  # 50 % set, not recorded: not set again
    ("deploy.shifted-100", 0),  # 100 % set, not recorded
    ("deploy.before-verdict", 0),  # every step recorded, no verdict yet
]


class Counting:
    """The backend, counting the traffic changes that reach it."""

    def __init__(self, backend):
        self._backend, self.traffic_changes = backend, []

    def set_traffic(self, endpoint, traffic, mirror, tags=None):
        self.traffic_changes.append(({k: v for k, v in traffic.items() if v}, {k: v for k, v in mirror.items() if v}))
        return self._backend.set_traffic(endpoint, traffic, mirror, tags)

    def __getattr__(self, name):
        return getattr(self._backend, name)


@pytest.fixture
def rollout_env(monkeypatch):
    for key, value in ROLLOUT.items():
        monkeypatch.setenv(key, value)


_trained: dict = {}


def _job(workspace) -> str:
    """One short fine-tune per test session; every model version of these tests is registered from it."""
    name = "ft-kills-00000001"
    if _trained.get("job") != name or not (workspace.jobs / name).exists():
        from tests.test_platform import _prepared, _spec
        _prepared()
        if not (workspace.jobs / name).exists():
            workspace.submit(JobSpec(**{**_spec(name).__dict__, "params": {"max_steps": 2}}))
        wait_for(lambda: workspace.get_job(name).status in ("Completed", "Failed"), 400, "the fine-tune")
        assert workspace.get_job(name).status == "Completed", workspace.get_job(name).error
        _trained["job"] = name
    return name


def _request(workspace, dataset: str, model_version: str):
    """A registered model version of `dataset` and its deploy message, with the records a real flow has."""
    from local import sampledata
    from shared import flows, storage
    from shared.messages import DeployRequest
    job = _job(workspace)
    prepared = storage.container("prepared")
    test_rows = "".join(json.dumps(r) + "\n" for r in sampledata.rows(4, seed=3)).encode()
    prepared.upload_blob(f"{naming.prepared_prefix(dataset, VERSION)}/test.jsonl", test_rows, overwrite=True)
    model = f"kills-{dataset}"
    workspace.register_model(model, model_version, job, {"dataset": dataset})
    flow_id = str(uuid.uuid4())
    flows.record(storage.container("flows"), flow_id, "submitted", dataset=dataset, version=VERSION, job=job)
    return DeployRequest(flow_id=flow_id, dataset=dataset, version=VERSION, job=job, model_name=model,
                         model_version=model_version)


def _deploy(backend, request):
    from shared import storage
    from shared.deployment import handle_deploy
    return handle_deploy(request, backend, storage.container("prepared"), storage.container("flows"))


def _killed_at(point: str, request) -> None:
    """The deploy handler in a worker process of its own, SIGKILLed at `point`."""
    code = ("import sys; from shared import storage; from shared.deployment import handle_deploy; "
            "from shared.messages import DeployRequest; from shared.ml.local import LocalWorkspace; "
            "from shared.settings import state_dir; "
            "handle_deploy(DeployRequest.model_validate_json(sys.argv[1]), LocalWorkspace(state_dir()), "
            "storage.container('prepared'), storage.container('flows'))")
    proc = subprocess.run([sys.executable, "-c", code, request.model_dump_json()], cwd=ROOT, capture_output=True,
                          env={**os.environ, "TUNEFLOW_FAILPOINTS": point}, timeout=400)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]


@pytest.mark.parametrize("point, changes_left", STEPS, ids=[p for p, _ in STEPS])
def test_a_worker_killed_between_two_rollout_steps_is_finished_by_the_redelivery(rollout_env, workspace, point,
                                                                                 changes_left):
    dataset = "kill-" + point.split(".")[1].split("@")[0]
    first = _request(workspace, dataset, "1")
    served = _deploy(workspace, first)
    old, new = naming.deployment_name("1"), naming.deployment_name("2")
    assert served.traffic == {old: 100}
    uri, key = served.scoring_uri, workspace.key(served.name)

    second = _request(workspace, dataset, "2")
    _killed_at(point, second)
    assert "rolled-out" not in {s for s, _k in _stages(second.flow_id)}
    between = workspace.get_endpoint(served.name)
    assert sum(between.traffic.values()) == 100  # the endpoint serves all the while

    counting = Counting(workspace)
    done = _deploy(counting, second)  # the message delivered again, to a new worker
    assert done is not None and done.traffic == {new: 100} and done.mirror_traffic == {}
    assert done.deployment(old).traffic == 0  # kept for a rollback
    assert (done.scoring_uri, workspace.key(done.name)) == (uri, key)
    assert len(counting.traffic_changes) == changes_left, counting.traffic_changes
    stages = _stages(second.flow_id)
    assert stages[("rolled-out", "")]["detail"]["previous"] == old
    assert {k for s, k in stages if s == "shifted"} == {"050", "100"}
    assert _deploy(Counting(workspace), second) is None  # a third delivery: nothing left to do


def test_a_worker_killed_after_a_failed_rollout_is_decided_finishes_the_undoing(rollout_env, workspace, monkeypatch):
    """The verdict first, then the undoing: a worker killed in between leaves the traffic on the new deployment
    at 0 % and the deployment itself; the redelivery gives the traffic back and deletes it."""
    first = _request(workspace, "kill-undo", "1")
    _deploy(workspace, first)
    monkeypatch.setenv("TUNEFLOW_LOCAL_SCORING_FAULT", "Kill-undo marker")  # the new deployment's model crashes
    second = _request(workspace, "kill-undo", "2")
    from local import sampledata
    from shared import storage
    rows = [{**r, "messages": [{**m, "content": m["content"] + " Kill-undo marker"} for m in r["messages"]]}
            for r in sampledata.rows(4, seed=5)]
    storage.container("prepared").upload_blob(f"{naming.prepared_prefix('kill-undo', VERSION)}/test.jsonl",
                                              "".join(json.dumps(r) + "\n" for r in rows).encode(), overwrite=True)
    _killed_at("deploy.rollout-failed", second)
    stages = _stages(second.flow_id)
    assert ("rollout-failed", "") in stages and ("smoke-failed", "") in stages
    assert "crashed" in stages[("smoke-failed", "")]["detail"]["error"]
    name = naming.endpoint_name("kill-undo", workspace.workspace_id)
    assert workspace.get_endpoint(name).traffic == {"v-1": 100}  # it never left the old deployment
    assert _deploy(workspace, second) is None
    after = workspace.get_endpoint(name)
    assert after.traffic == {"v-1": 100} and after.deployment("v-2") is None
