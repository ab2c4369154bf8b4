"""The `tuneflow` command as a user runs it (a subprocess), against a real Azurite."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def tuneflow(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "local.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **(env or {})}, timeout=120)


def test_sample_data_has_exactly_the_ultrachat_schema(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    res = tuneflow("sample-data", "--rows", "200", "--out", str(tmp_path / "d.parquet"))
    assert res.returncode == 0, res.stderr
    table = pq.read_table(tmp_path / "d.parquet")
    assert table.schema.equals(pa.schema([
        ("prompt", pa.string()), ("prompt_id", pa.string()),
        ("messages", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())])))]))
    rows = table.to_pylist()
    lengths = [len(r["messages"]) for r in rows]
    assert min(lengths) >= 2 and max(lengths) <= 8 and len(set(lengths)) > 1
    sizes = sorted(len(json.dumps(r)) for r in rows)
    assert sizes[len(sizes) // 2] > 1000 and sizes[-1] > 3 * sizes[len(sizes) // 2]  # a few KB, some long
    assert all(len(r["prompt_id"]) == 64 for r in rows) and len({r["prompt_id"] for r in rows}) == 200


@pytest.mark.parametrize("args, words", [
    (["sample-data", "--rows", "0", "--out", "x.jsonl"], "--rows 0"),
    (["sample-data", "--rows", "5", "--out", "x.csv"], "use a .jsonl, .json or .parquet"),
    (["drop", "does-not-exist.jsonl"], "is not a file"),
    (["submit", "nonsense"], "not a prepared version"),
    (["submit", "prepared/d/0123456789abcdef", "--param", "novalue"], "not KEY=VALUE"),
])
def test_usage_errors_are_one_clear_line(args, words):
    res = tuneflow(*args)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], res.stderr


@pytest.mark.integration
def test_commands_against_storage(storage_env, tmp_path):
    bad = tmp_path / "bad name.jsonl"
    bad.write_text("{}")
    res = tuneflow("drop", str(bad), "--dataset", "../up")
    assert res.returncode == 1 and "not allowed" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = tuneflow("submit", "prepared/ghost/0123456789abcdef")
    assert res.returncode == 1 and "does not exist" in res.stderr
    res = tuneflow("status", "--json")
    assert res.returncode == 0 and json.loads(res.stdout) == []
    res = tuneflow("reap", "--dry-run", "--json")
    assert res.returncode == 0 and json.loads(res.stdout) == []
    res = tuneflow("chat", "tf-nope", "hello")
    assert res.returncode == 1 and "tf-nope not found" in res.stderr
    good = tmp_path / "good.jsonl"
    assert tuneflow("sample-data", "--rows", "20", "--out", str(good)).returncode == 0
    res = tuneflow("drop", str(good), "--dataset", "mine")
    assert res.returncode == 0 and "datasets/mine/good.jsonl" in res.stdout


def test_storage_down_is_one_line_that_says_what_to_do():
    res = tuneflow("status", env={"AzureWebJobsStorage": "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                                  "AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"})
    assert res.returncode == 1
    assert "tuneflow up" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.integration
def test_up_runs_the_host_until_interrupted(storage_env, tmp_path):
    import signal
    import socket
    import urllib.request

    from tests.conftest import wait_for
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TUNEFLOW_REAPER_SCHEDULE": "0 0 0 1 1 *", "TUNEFLOW_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen([sys.executable, "-m", "local.cli", "up", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def running():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/host/status", timeout=2) as r:
                    return json.loads(r.read())
            except OSError:
                return None
        status = wait_for(running, 60, "`tuneflow up` to serve the host status")
        assert status["functions"] == ["data_arrival", "deploy", "job_events", "reaper", "submit"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "job_events" in proc.stdout.read()
