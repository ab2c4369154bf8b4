"""The local workspace's process handles: a pid is trusted only with its creation time, so a recycled
pid never makes a dead job or endpoint look alive, and a stop never signals somebody else's process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shared.ml.local import LocalWorkspace, process_alive, process_handle, stop_process

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def sleeper():
    """A live process that is not the workspace's: its own session, as the workspace's children have."""
    proc = subprocess.Popen(SLEEPER, start_new_session=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def _job(ws: LocalWorkspace, name: str, pid_file: dict) -> None:
    job_dir = ws.jobs / name
    job_dir.mkdir()
    (job_dir / "job.json").write_text(json.dumps({"spec": {"tags": {}}, "created_at": "2026-01-01T00:00:00Z"}))
    (job_dir / "pid.json").write_text(json.dumps(pid_file))


@pytest.mark.parametrize("pid_file, status, signalled", [
    pytest.param(lambda pid: {"pid": pid, "create_time": process_handle(pid)["create_time"] - 3600}, "Failed", False,
                 id="pid-reused"),
    pytest.param(lambda pid: {"pid": pid}, "Failed", False, id="older-file-without-creation-time"),
    pytest.param(lambda pid: {"pid": pid, "create_time": None}, "Failed", False, id="no-creation-time"),
    pytest.param(lambda pid: process_handle(pid), "Running", True, id="the-very-process"),
])
def test_a_pid_counts_only_with_its_creation_time(tmp_path, sleeper, pid_file, status, signalled):
    ws = LocalWorkspace(tmp_path)
    _job(ws, "ft-handle-00000000", pid_file(sleeper.pid))
    assert ws.get_job("ft-handle-00000000").status == status
    ws.stop_all()
    if signalled:
        assert sleeper.wait(timeout=30) < 0  # ended by a signal
    else:
        assert sleeper.poll() is None, "stop_all signalled a process that is not the workspace's"


def test_an_endpoint_whose_pid_was_reused_is_not_serving_and_is_left_alone(tmp_path, sleeper):
    ws = LocalWorkspace(tmp_path)
    ep_dir = ws.endpoints / "tf-handle"
    ep_dir.mkdir()
    (ep_dir / "endpoint.json").write_text(json.dumps({"name": "tf-handle", "tags": {}, "created_at": "", "state": "Succeeded"}))
    (ep_dir / "server.json").write_text(json.dumps({"port": 1, "pid": sleeper.pid}))  # written before creation times
    assert ws.get_endpoint("tf-handle").provisioning_state == "Failed"
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
