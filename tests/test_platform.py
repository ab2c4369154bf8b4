"""The local platform (local/platform.py): what Azure ML does on its own, each under a kill at a named point.

A job killed mid-training starts again and completes (one job, one result, one event); killed in
every attempt, it fails with the reason and its Failed event is published; a job that died after
writing its result but before its event went out is announced by the platform; a killed scoring
process is restarted on the same port; jobs beyond TUNEFLOW_LOCAL_MAX_JOBS wait their turn.
"""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest

from local import sampledata
from local.platform import Platform
from shared.ml.base import JobSpec, Unavailable
from tests.serving import serve
from shared.ml import procs
from shared.ml.procs import read_json
from shared.scoring import request_body
from tests.conftest import wait_for
from tests.webhook import Receiver

pytestmark = pytest.mark.integration
VERSION = "0123456789abcdef"


@pytest.fixture
def events(monkeypatch):
    """Where the jobs post their Azure ML events: a receiver that accepts them all."""
    with Receiver() as receiver:
        monkeypatch.setenv("TUNEFLOW_EVENTS_URL", receiver.url)
        yield receiver


@pytest.fixture
def platform(workspace):
    stop = threading.Event()
    loop = Platform(workspace, poll_s=0.1)
    thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    thread.start()
    yield loop
    stop.set()
    thread.join(60)


def _prepared(dataset: str = "plat") -> None:
    from shared import storage
    rows = list(sampledata.rows(40, seed=3))
    for split, part in (("train", rows[:32]), ("test", rows[32:])):
        data = "".join(json.dumps(r) + "\n" for r in part).encode()
        storage.container("prepared").upload_blob(f"{dataset}/{VERSION}/{split}.jsonl", data, overwrite=True)


def _spec(name: str) -> JobSpec:
    return JobSpec(name=name, experiment="chat_completion_phi-3-tiny", display_name=name, base_model="",
                   train_uri=f"prepared/plat/{VERSION}/train.jsonl", test_uri=f"prepared/plat/{VERSION}/test.jsonl",
                   params={"max_steps": 400}, tags={"managed-by": "tuneflow", "dataset": "plat"})


def _kill_when_training(workspace, name: str) -> int:
    """SIGKILL the job's current process once it is training (its log shows a step); the pid killed."""
    job_dir = workspace.jobs / name
    handle = wait_for(lambda: (h := procs.info(job_dir)) and "step " in _log(job_dir) and h, 240, f"job {name} to train")
    os.kill(handle["pid"], signal.SIGKILL)
    return handle["pid"]


def _log(job_dir) -> str:
    text = (job_dir / "log.txt").read_text(errors="replace") if (job_dir / "log.txt").exists() else ""
    return text.rsplit("starting attempt", 1)[-1]


def _statuses(receiver) -> list[tuple[str, str]]:
    return [(e["data"]["runId"], e["data"].get("runStatus", "Completed")) for r in receiver.requests for e in r["events"]]


def test_a_job_killed_while_training_starts_again_and_completes_once(workspace, platform, events, monkeypatch):
    _prepared()
    workspace.submit(_spec("ft-plat-killed"))
    monkeypatch.setenv("TUNEFLOW_FINETUNE_PARAMS", "{}")
    killed = _kill_when_training(workspace, "ft-plat-killed")
    job = wait_for(lambda: (j := workspace.get_job("ft-plat-killed")).status in ("Completed", "Failed") and j, 400,
                   "the job to end")
    assert job.status == "Completed", job.error
    assert procs.spawned(workspace.jobs / "ft-plat-killed")["attempt"] == 2
    assert procs.info(workspace.jobs / "ft-plat-killed")["pid"] != killed
    wait_for(lambda: _statuses(events), 60, "the job's event")
    assert _statuses(events) == [("ft-plat-killed", "Completed")]  # one event: the lost attempt posted none
    import mlflow
    mlflow.set_tracking_uri(workspace.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["chat_completion_phi-3-tiny"], filter_string="tags.job = 'ft-plat-killed'")
    assert sorted(runs["status"]) == ["FINISHED", "KILLED"]  # the lost attempt's run is closed, not left RUNNING


def test_a_job_killed_in_every_attempt_fails_with_the_reason_and_its_failed_event(workspace, platform, events,
                                                                                  monkeypatch):
    monkeypatch.setenv("TUNEFLOW_LOCAL_JOB_ATTEMPTS", "2")
    _prepared()
    workspace.submit(_spec("ft-plat-doomed"))
    _kill_when_training(workspace, "ft-plat-doomed")
    wait_for(lambda: procs.spawned(workspace.jobs / "ft-plat-doomed")["attempt"] == 2 and
             procs.info(workspace.jobs / "ft-plat-doomed"), 60, "attempt 2")
    _kill_when_training(workspace, "ft-plat-doomed")
    job = wait_for(lambda: (j := workspace.get_job("ft-plat-doomed")).status == "Failed" and j, 120, "the job to fail")
    assert "lost (killed) in each of its 2 attempt(s)" in job.error
    wait_for(lambda: _statuses(events), 60, "the Failed event")
    assert _statuses(events) == [("ft-plat-doomed", "Failed")]
    assert read_json(workspace.jobs / "ft-plat-doomed" / "event.json")["delivered"] is True


def test_a_job_that_died_after_its_result_is_announced_by_the_platform(workspace, events, monkeypatch):
    monkeypatch.setenv("TUNEFLOW_FAILPOINTS", "train.after-result")
    monkeypatch.setenv("TUNEFLOW_FINETUNE_PARAMS", "{}")
    _prepared()
    job = _spec("ft-plat-mute")
    workspace.submit(JobSpec(**{**job.__dict__, "params": {"max_steps": 2}}))
    wait_for(lambda: workspace.get_job("ft-plat-mute").status == "Completed" and
             not _alive(workspace, "ft-plat-mute"), 240, "the job to end and its process to die")
    assert _statuses(events) == [] and workspace.unannounced() == ["ft-plat-mute"]
    Platform(workspace).tick()  # what the platform's loop does next
    wait_for(lambda: _statuses(events), 60, "the platform to publish the event")
    assert _statuses(events) == [("ft-plat-mute", "Completed")]
    wait_for(lambda: workspace.unannounced() == [], 30, "the event to be recorded as sent")


def _alive(workspace, name: str) -> bool:
    return procs.alive(workspace.jobs / name)


def test_jobs_beyond_the_limit_wait_their_turn(workspace, platform, events, monkeypatch):
    monkeypatch.setenv("TUNEFLOW_LOCAL_MAX_JOBS", "1")
    _prepared()
    short = lambda name: JobSpec(**{**_spec(name).__dict__, "params": {"max_steps": 2}})  # noqa: E731
    workspace.submit(short("ft-plat-first"))
    second = workspace.submit(short("ft-plat-second"))
    assert second.status == "NotStarted" and procs.spawned(workspace.jobs / "ft-plat-second") is None
    wait_for(lambda: workspace.get_job("ft-plat-second").status == "Completed", 400, "both jobs to complete")
    first_end = read_json(workspace.jobs / "ft-plat-first" / "result.json")["finished_at"]
    second_start = procs.spawned(workspace.jobs / "ft-plat-second")["started_at"]
    assert second_start >= first_end, "the second job ran beside the first"


def test_a_killed_scoring_process_is_started_again_on_the_same_port(workspace, platform, events):
    _prepared()
    job = workspace.submit(JobSpec(**{**_spec("ft-plat-serve").__dict__, "params": {"max_steps": 2}}))
    wait_for(lambda: workspace.get_job(job.name).status == "Completed", 240, "the job")
    model = workspace.register_model("plat-model", "1", job.name, {})
    endpoint = serve(workspace, "tf-plat-serve", model, {"managed-by": "tuneflow"})
    body = request_body([{"role": "user", "content": "hi"}], {"max_new_tokens": 4})
    assert workspace.invoke(endpoint.name, body)["output"] is not None
    scoring = workspace.endpoints / endpoint.name / "deployments" / "v-1"
    server, router = procs.info(scoring), procs.info(workspace.endpoints / endpoint.name)
    os.kill(server["pid"], signal.SIGKILL)
    wait_for(lambda: not procs.process_alive(server), 30, "the scoring process to die")
    counted = [workspace.deployment_errors(endpoint.name, "v-1")]
    for deployment in ("v-1", None):  # a request straight to the deployment (a probe), then a live one
        try:
            workspace.invoke(endpoint.name, body, deployment=deployment)
            failed = False
        except Unavailable:  # the router answers 502 while the platform has not restarted it yet
            failed = True
        counted.append(workspace.deployment_errors(endpoint.name, "v-1"))
        if deployment is not None:
            assert counted[-1] == counted[-2], "a probe's 502 counted as a live error"
        elif failed:
            assert counted[-1] == counted[-2] + 1, "a live request's 502 not counted"
    os.kill(router["pid"], signal.SIGKILL)

    def answers():
        try:
            return workspace.invoke(endpoint.name, body)
        except Unavailable:
            return None
    wait_for(answers, 120, "the endpoint to answer again")
    again = workspace.get_endpoint(endpoint.name)
    assert again.scoring_uri == endpoint.scoring_uri and again.provisioning_state == "Succeeded"
    assert procs.info(scoring)["pid"] != server["pid"] and procs.info(scoring)["port"] == server["port"]
    assert procs.info(workspace.endpoints / endpoint.name)["pid"] != router["pid"]


# -- what the chaos run found, each reproduced by a kill at a named point ---------------------------

def _die_at(point: str, code: str, state) -> None:
    """Run `code` (with `ws`, a LocalWorkspace on `state`) in a process that is SIGKILLed at `point`."""
    import subprocess
    import sys
    env = {**os.environ, "TUNEFLOW_FAILPOINTS": point}
    proc = subprocess.run([sys.executable, "-c", f"from shared.ml.local import LocalWorkspace; "
                           f"ws = LocalWorkspace({str(state)!r}); {code}"], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


def test_jobs_started_together_on_a_new_state_folder_share_one_tracking_store(workspace, platform, events):
    """Two jobs at once on a new state folder each created and migrated MLflow's database at the same
    moment ("table ... already exists"), and one or both failed."""
    _prepared()
    short = lambda name: JobSpec(**{**_spec(name).__dict__, "params": {"max_steps": 2}})  # noqa: E731
    threads = [threading.Thread(target=workspace.submit, args=(short(f"ft-plat-pair-{i}"),)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(3):
        job = wait_for(lambda: (j := workspace.get_job(f"ft-plat-pair-{i}")).status in ("Completed", "Failed") and j,
                       400, f"job {i} to end")
        assert job.status == "Completed", job.error


def test_a_process_killed_while_building_the_tracking_store_leaves_none_half_built(workspace, events):
    state = workspace.root
    _die_at("workspace.tracking-store-built", "from shared.ml.local import build_tracking_store; build_tracking_store(ws.root)", state)
    assert not (state / "mlflow.db").exists()  # the half-built one is under another name
    _prepared()
    job = workspace.submit(JobSpec(**{**_spec("ft-plat-after").__dict__, "params": {"max_steps": 2}}))
    done = wait_for(lambda: (j := workspace.get_job(job.name)).status in ("Completed", "Failed") and j, 400, "the job")
    assert done.status == "Completed", done.error


def test_a_deletion_whose_deleter_died_is_finished_by_the_platform(workspace, events):
    """The host died between marking an endpoint Deleting and removing it: the reaper kept it for ever
    ("in transition") and its scoring process ran on."""
    _prepared()
    job = workspace.submit(JobSpec(**{**_spec("ft-plat-gone").__dict__, "params": {"max_steps": 2}}))
    wait_for(lambda: workspace.get_job(job.name).status == "Completed", 240, "the job")
    endpoint = serve(workspace, "tf-plat-gone", workspace.register_model("plat-gone", "1", job.name, {}), {})
    server = procs.info(workspace.endpoints / endpoint.name / "deployments" / "v-1")
    _die_at("workspace.endpoint-deleting", f"ws.delete_endpoint({endpoint.name!r})", workspace.root)
    assert workspace.get_endpoint(endpoint.name).provisioning_state == "Deleting"
    assert procs.process_alive(server)
    assert workspace.repair_endpoints() == [(endpoint.name, "deleted")]
    assert workspace.list_endpoints() == [] and not procs.process_alive(server)


def test_repeated_submits_of_one_job_at_once_find_it_whole(workspace, events):
    """A redelivered fine-tune request ran while the first was between claiming the job's folder and writing
    its record (slow on a new state folder): it found the folder, no record, failed five times and was
    poisoned; the flow was lost."""
    from shared.ml.base import AlreadyExists
    _prepared()
    spec = JobSpec(**{**_spec("ft-plat-twice").__dict__, "params": {"max_steps": 2}})
    results = []

    def submit():
        try:
            results.append(workspace.submit(spec).name)
        except AlreadyExists:
            results.append(workspace.get_job(spec.name).name)  # what the submit function does next
    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == ["ft-plat-twice"] * 4
    assert [d.name for d in workspace.jobs.iterdir()] == ["ft-plat-twice"]
