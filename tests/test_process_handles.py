"""The local workspace's process handles (shared/ml/procs.py): a pid is trusted only with its creation
time, so a recycled pid never makes a dead job or endpoint look alive, and a stop never signals somebody
else's process; and a process is never lost track of, whichever side dies: the spawner between its
intent and the handle, or the process before it announced itself."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from bench.chaoslib.proxy import free_port
from shared.ml import procs
from shared.ml.local import LocalWorkspace
from shared.ml.procs import process_alive, process_handle, stop_process

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def sleeper():
    """A live process that is not the workspace's: its own session, as the workspace's children have."""
    proc = subprocess.Popen(SLEEPER, start_new_session=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def _job(ws: LocalWorkspace, name: str, spawn_file: dict | None = None, process_file: dict | None = None) -> None:
    job_dir = ws.jobs / name
    job_dir.mkdir()
    (job_dir / "job.json").write_text(json.dumps({"spec": {"tags": {}}, "created_at": "2026-01-01T00:00:00Z"}))
    for name, content in (("spawn.json", spawn_file), ("process.json", process_file)):
        if content is not None:
            (job_dir / name).write_text(json.dumps(content))


@pytest.mark.parametrize("spawn_file, status, signalled", [
    pytest.param(lambda pid: {"pid": pid, "started": process_handle(pid)["started"] - 3600}, "Failed", False,
                 id="pid-reused"),
    pytest.param(lambda pid: {"pid": pid}, "Failed", False, id="older-file-without-creation-time"),
    pytest.param(lambda pid: {"pid": pid, "started": None}, "Failed", False, id="no-creation-time"),
    pytest.param(lambda pid: process_handle(pid), "Running", True, id="the-very-process"),
])
def test_a_pid_counts_only_with_its_creation_time(tmp_path, sleeper, spawn_file, status, signalled, monkeypatch):
    monkeypatch.setenv("TUNEFLOW_LOCAL_JOB_ATTEMPTS", "1")  # a lost process is Failed at once, not started again
    ws = LocalWorkspace(tmp_path)
    _job(ws, "ft-handle-00000000", spawn_file(sleeper.pid))
    assert ws.get_job("ft-handle-00000000").status == status
    ws.stop_all()
    if signalled:
        assert sleeper.wait(timeout=30) < 0  # ended by a signal
    else:
        assert sleeper.poll() is None, "stop_all signalled a process that is not the workspace's"


def test_a_process_that_announced_itself_is_found_though_its_spawner_died_before_recording_it(tmp_path, sleeper,
                                                                                                monkeypatch):
    """The spawner wrote its intent, started the process and died; the process recorded itself. It is this
    job's running attempt (no second one is started) and the stack's stop reaches it (no orphan)."""
    monkeypatch.setenv("TUNEFLOW_LOCAL_JOB_ATTEMPTS", "1")
    ws = LocalWorkspace(tmp_path)
    _job(ws, "ft-handle-00000001", {"attempt": 1, "spawning_at": time.time() - 3600}, process_handle(sleeper.pid))
    assert ws.get_job("ft-handle-00000001").status == "Running"
    assert ws.start_queued() == [] and ws.recover_lost() == []
    ws.stop_all()
    assert sleeper.wait(timeout=30) < 0


def test_a_restart_that_dies_after_forgetting_the_lost_attempt_keeps_its_count(tmp_path, monkeypatch):
    """The platform forgot the lost attempt's process and died before starting the next one: the job is not
    seen as never started (NotStarted, and counted from attempt 1 again), but as lost on attempt 2 of 2."""
    monkeypatch.setenv("TUNEFLOW_LOCAL_JOB_ATTEMPTS", "2")
    ws = LocalWorkspace(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    _job(ws, "ft-handle-00000003", {"attempt": 2, "pid": dead.pid, "started": 1.0}, {"pid": dead.pid})
    procs.forget(ws.jobs / "ft-handle-00000003")
    assert procs.spawned(ws.jobs / "ft-handle-00000003")["attempt"] == 2
    assert ws.start_queued() == []
    assert ws.recover_lost() == [("ft-handle-00000003", "failed")]
    assert "each of its 2 attempt(s)" in ws.get_job("ft-handle-00000003").error


@pytest.mark.parametrize("age_s, status", [(1, "Running"), (procs.SPAWN_GRACE_S + 5, "Failed")])
def test_a_spawn_that_never_recorded_a_process_counts_as_starting_then_as_lost(tmp_path, monkeypatch, age_s, status):
    monkeypatch.setenv("TUNEFLOW_LOCAL_JOB_ATTEMPTS", "1")
    ws = LocalWorkspace(tmp_path)
    _job(ws, "ft-handle-00000002", {"attempt": 1, "spawning_at": time.time() - age_s})
    assert ws.get_job("ft-handle-00000002").status == status


def test_an_endpoint_whose_pid_was_reused_is_not_serving_and_is_left_alone(tmp_path, sleeper):
    from shared.ml.base import Unavailable
    ws = LocalWorkspace(tmp_path)
    ep_dir = ws.endpoints / "tf-handle"
    ep_dir.mkdir()
    (ep_dir / "endpoint.json").write_text(json.dumps({"name": "tf-handle", "tags": {}, "created_at": "", "state": "Succeeded",
                                                      "port": free_port()}))
    (ep_dir / "key").write_text("k")
    (ep_dir / "process.json").write_text(json.dumps({"port": 1, "pid": sleeper.pid, "ready": True}))  # no creation time
    assert not procs.alive(ep_dir)
    # As a managed endpoint whose container died: still Succeeded (provisioning), but not answering.
    assert ws.get_endpoint("tf-handle").provisioning_state == "Succeeded"
    with pytest.raises(Unavailable):
        ws.invoke("tf-handle", {})
    ws.delete_endpoint("tf-handle")
    assert sleeper.poll() is None and not ep_dir.exists()


def test_a_process_that_leads_no_group_is_signalled_alone():
    """killpg on a pid that is no group's id would miss it (or, were it one, hit the whole group)."""
    proc = subprocess.Popen(SLEEPER)  # in this test's own process group
    try:
        handle = process_handle(proc.pid)
        assert process_alive(handle)
        stop_process(handle)
        assert proc.wait(timeout=30) < 0 and not process_alive(handle)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@pytest.mark.skipif(not procs._PROC_STAT, reason="Linux's /proc: where btime moves with the wall clock")
def test_a_process_stays_ours_when_the_wall_clock_steps(tmp_path, sleeper, monkeypatch):
    """Linux recomputes /proc/stat's btime on every read as the wall clock minus the uptime, and psutil's
    create_time() adds it: an NTP step moves every creation time. The job's process must still be its
    running attempt (not lost and started twice) and the stack's stop must still reach it (no orphan)."""
    import psutil._pslinux
    monkeypatch.setenv("TUNEFLOW_LOCAL_JOB_ATTEMPTS", "1")
    ws = LocalWorkspace(tmp_path)
    _job(ws, "ft-handle-00000004", {"attempt": 1, **process_handle(sleeper.pid)})
    stepped = psutil._pslinux.boot_time() + 7.0
    monkeypatch.setattr(psutil._pslinux, "boot_time", lambda: stepped)  # the clock stepped 7 s forward
    assert ws.get_job("ft-handle-00000004").status == "Running"
    assert ws.recover_lost() == []
    ws.stop_all()
    assert sleeper.wait(timeout=30) < 0
