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
                    status = json.loads(r.read())
                    return status if status["state"] == "Running" else None
            except OSError:
                return None
        status = wait_for(running, 60, "`tuneflow up` to report the host Running")
        assert status["functions"] == ["data_arrival", "deploy", "job_events", "reaper", "submit"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "job_events" in proc.stdout.read()


def test_prepare_runs_the_function_code_on_local_files(tmp_path):
    from local import sampledata
    rows = list(sampledata.rows(260, seed=21))
    sampledata.write_rows(tmp_path / "data" / "train_sft-00000-of-00001.parquet", rows[:200])
    sampledata.write_rows(tmp_path / "data" / "test_sft-00000-of-00001.jsonl", rows[200:])
    inputs = [str(tmp_path / "data" / "train_sft-00000-of-00001.parquet"), str(tmp_path / "data" / "test_sft-00000-of-00001.jsonl")]
    res = tuneflow("prepare", *inputs, "--out", str(tmp_path / "out"), "--split-pc", "50")
    assert res.returncode == 0, res.stderr
    manifest = json.loads(res.stdout)
    assert (manifest["rows"]["train"], manifest["rows"]["test"]) == (100, 30)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    for name in ("train.jsonl", "test.jsonl", "rejected.jsonl"):
        import hashlib
        assert hashlib.sha256((tmp_path / "out" / name).read_bytes()).hexdigest() == manifest["files"][name]["sha256"]
    again = json.loads(tuneflow("prepare", *inputs, "--out", str(tmp_path / "again"), "--split-pc", "50").stdout)
    assert again["version"] == manifest["version"]


@pytest.mark.parametrize("content, words", [
    (b"", "no rows"), (b"[1, 2]", "looks like a JSON array"), (b"garbage\n" * 5, "5 of 5 rows rejected"),
])
def test_prepare_refuses_unusable_input_in_one_line_and_leaves_it_untouched(tmp_path, content, words):
    src = tmp_path / "d.jsonl"
    src.write_bytes(content)
    res = tuneflow("prepare", str(src), "--out", str(tmp_path / "out"))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "d.jsonl" in lines[0]
    assert src.read_bytes() == content
    assert not (tmp_path / "out" / "manifest.json").exists() and (tmp_path / "out" / "error.json").exists()


@pytest.mark.integration
def test_ingest_from_a_local_hub_layout_folder(storage_env, tmp_path):
    from local import sampledata
    repo = tmp_path / "ultrachat_200k"
    rows = list(sampledata.rows(150, seed=5))
    sampledata.write_rows(repo / "data" / "train_sft-00000-of-00001.parquet", rows[:100])
    sampledata.write_rows(repo / "data" / "test_sft-00000-of-00001.parquet", rows[100:120])
    sampledata.write_rows(repo / "data" / "train_gen-00000-of-00001.parquet", rows[120:])
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n"
                                    + "".join(f"  - split: {s}\n    path: data/{s}-*\n" for s in ("train_sft", "test_sft", "train_gen"))
                                    + "---\n")
    res = tuneflow("ingest", "--hf", str(repo), "--split-pc", "10",
                   env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert res.returncode == 0, res.stderr
    from shared import storage
    from shared.arrival import handle_dataset_blob
    datasets = storage.container("datasets")
    names = sorted(b.name for b in datasets.list_blobs(name_starts_with="ultrachat_200k/"))
    assert names == ["ultrachat_200k/data/test_sft-00000-of-00001.parquet", "ultrachat_200k/data/train_gen-00000-of-00001.parquet",
                     "ultrachat_200k/data/train_sft-00000-of-00001.parquet", "ultrachat_200k/dataset.json"]
    request = handle_dataset_blob(datasets.get_blob_client("ultrachat_200k/dataset.json"))
    manifest = storage.get_json(storage.container("prepared"), f"ultrachat_200k/{request.version}/manifest.json")
    assert (manifest["rows"]["train"], manifest["rows"]["test"]) == (10, 2)
    assert manifest["unused_files"] == ["data/train_gen-00000-of-00001.parquet"]


# -- the Azure ML path, offline -----------------------------------------------------------------

def _prepared(tmp_path):
    from local import sampledata
    train = sampledata.write(tmp_path / "ds" / "train.jsonl", 20, seed=1)
    test = sampledata.write(tmp_path / "ds" / "test.jsonl", 5, seed=2)
    return str(train), str(test)


@pytest.mark.parametrize("component", ["chat_completion_pipeline.spec.yaml", "chat_completion_pipeline.0.0.57.spec.yaml"])
def test_submit_dry_run_prints_the_pipeline_job(tmp_path, component):
    from tests.conftest import REFERENCE
    train, test = _prepared(tmp_path)
    res = tuneflow("submit", "--dry-run", "--train", train, "--test", test,
                   "--model-spec", str(REFERENCE / "azureml" / "phi-4.spec.yaml"),
                   "--component-spec", str(REFERENCE / "azureml" / component),
                   "--compute-size", "standard_nc48ads_a100_v4", "--gpus", "2",
                   "--param", "num_train_epochs=2", "--param", "learning_rate_min=1e-7")
    assert res.returncode == 0, res.stderr
    job = json.loads(res.stdout)
    inputs = job["jobs"]["chat_completion_pipeline"]["inputs"]
    assert job["display_name"] == "Phi-4-ultrachat-bs2-cosine-ds3-lora-save_limit1-seqlen-1"
    assert inputs["number_of_gpu_to_use_finetuning"] == 2 and inputs["num_train_epochs"] == 2
    assert inputs["instance_type_finetune"] == "standard_nc48ads_a100_v4"
    # azure-ai-ml's own serialization marks a local file "azureml:<path>"; submit would upload it first
    assert inputs["train_file_path"]["type"] == "uri_file" and inputs["train_file_path"]["path"].endswith(train)
    assert inputs["mlflow_model_path"]["path"] == "azureml://registries/azureml/models/Phi-4/versions/8"
    assert "learning_rate_min" not in inputs and "learning_rate_min" in res.stderr  # dropped, and said so
    # only what tuneflow says: no azure-ai-ml "This is an experimental class" chatter
    assert [line for line in res.stderr.splitlines() if not line.startswith("note: ")] == [], res.stderr
    again = tuneflow("submit", "--dry-run", "--train", train, "--test", test,
                     "--model-spec", str(REFERENCE / "azureml" / "phi-4.spec.yaml"),
                     "--component-spec", str(REFERENCE / "azureml" / component),
                     "--compute-size", "standard_nc48ads_a100_v4", "--gpus", "2",
                     "--param", "num_train_epochs=2", "--param", "learning_rate_min=1e-7")
    assert json.loads(again.stdout)["name"] == job["name"]  # deterministic


@pytest.mark.parametrize("change, words", [
    ({"model": "phi-3-mini-4k-instruct.spec.yaml"}, "retired on 2025-08-30; set TUNEFLOW_BASE_MODEL=Phi-4"),
    ({"model": "phi-3-mini-4k-instruct.legacy-tags.spec.yaml"}, "TUNEFLOW_BASE_MODEL=Phi-4"),
    ({"model": "phi-3.5-mini-instruct.spec.yaml"}, "TUNEFLOW_BASE_MODEL=Phi-4"),
    ({"size": "Standard_NC6s_v3"}, "Phi-4 cannot be fine-tuned on"),
    ({"gpus": "0"}, "at least one GPU"),
    ({"param": "precision=8"}, "precision=8 is not one of 32, 16"),
    ({"train": "missing.jsonl"}, "--train missing.jsonl is not a file"),
    ({"component": "phi-4.spec.yaml"}, "is not a pipeline component"),
    ({"model": "no-such.yaml"}, "does not exist"),
])
def test_submit_dry_run_errors_are_one_line(tmp_path, change, words):
    from tests.conftest import REFERENCE
    train, test = _prepared(tmp_path)
    ref = REFERENCE / "azureml"
    args = ["submit", "--dry-run", "--train", change.get("train", train), "--test", test,
            "--model-spec", str(ref / change.get("model", "phi-4.spec.yaml")),
            "--component-spec", str(ref / change.get("component", "chat_completion_pipeline.spec.yaml")),
            "--compute-size", change.get("size", "Standard_NC24ads_A100_v4"), "--gpus", change.get("gpus", "1")]
    if "param" in change:
        args += ["--param", change["param"]]
    res = tuneflow(*args)
    lines = res.stderr.splitlines()  # the error is the first line, and the only one (no SDK chatter before it)
    assert res.returncode == 1 and res.stdout == "" and len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert words in lines[0]



def test_sdk_quiet_drops_only_the_experimental_warnings_and_only_inside(caplog):
    import logging

    from shared.sdk_quiet import EXPERIMENTAL_LOGGER, sdk_quiet
    experimental, other = logging.getLogger(EXPERIMENTAL_LOGGER), logging.getLogger("azure.ai.ml.other")
    with caplog.at_level(logging.WARNING):
        with sdk_quiet():
            experimental.warning("Class A: This is an experimental class")
            with sdk_quiet():
                experimental.warning("Class B: This is an experimental class")
            experimental.warning("Class C: This is an experimental class")  # still inside the outer block
            other.warning("a real SDK warning")
        experimental.warning("Class D: This is an experimental class")
    assert [r.getMessage() for r in caplog.records] == ["a real SDK warning", "Class D: This is an experimental class"]

def test_explain_event_says_what_job_events_would_do(tmp_path):
    from tests.conftest import reference_events
    completed = reference_events("ml-pipeline-run-completed.eventgrid.json")
    completed = completed if isinstance(completed, list) else [completed]
    failed = reference_events("ml-pipeline-run-failed.eventgrid.json")
    failed = failed if isinstance(failed, list) else [failed]
    step = reference_events("ml-step-run-completed.eventgrid.json")
    step = step if isinstance(step, list) else [step]
    late = json.loads(json.dumps(failed[0]))
    late["id"], late["data"]["runId"] = "late-1", completed[0]["data"]["runId"]
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps(completed + step + completed + failed + [late, {"not": "an event"}]))
    res = tuneflow("explain-event", str(batch))
    assert res.returncode == 0, res.stderr
    out = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(o["action"], o["job"]) for o in out] == [
        ("register", completed[0]["data"]["runId"]), ("ignore", step[0]["data"]["runId"]),
        ("ignore", completed[0]["data"]["runId"]), ("record-failure", failed[0]["data"]["runId"]),
        ("ignore", completed[0]["data"]["runId"]), ("ignore", "")]
    assert "repeat" in out[2]["reason"] and "stale" in out[4]["reason"] and "invalid event" in out[5]["reason"]
    assert all(set(o) >= {"action", "job", "reason"} for o in out)

    one = tmp_path / "one.json"
    one.write_text(json.dumps(reference_events("ml-pipeline-run-completed.cloudevent.json")))
    assert json.loads(tuneflow("explain-event", str(one)).stdout)["action"] == "register"
    (tmp_path / "bad.json").write_text("{nope")
    bad = tuneflow("explain-event", str(tmp_path / "bad.json"))
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "not JSON" in bad.stderr


# -- the reaper's commands ----------------------------------------------------------------------

INVENTORY = [
    {"name": "tf-expired", "tags": {"managed-by": "tuneflow", "expires-at": "2026-11-26T11:00:00+01:00"},
     "provisioning_state": "Succeeded", "created_at": "2026-11-26T06:00:00Z",
     "deployments": [{"name": "demo", "instance_type": "Standard_NC24ads_A100_v4", "instance_count": 1,
                      "provisioning_state": "Succeeded"}]},
    {"name": "tf-fresh", "tags": {"Managed-By": "tuneflow", "Expires-At": "2026-11-26T20:00:00Z",
                                  "traffic-changed-at": "2026-11-26T10:00:00Z"},
     "provisioning_state": "Succeeded", "created_at": "2026-11-26T06:00:00Z",
     "deployments": [{"name": "v-1", "instance_type": "x", "instance_count": 1, "provisioning_state": "Succeeded",
                      "created_at": "2026-11-26T06:00:00Z"},
                     {"name": "v-2", "instance_type": "x", "instance_count": 1, "provisioning_state": "Succeeded",
                      "created_at": "2026-11-26T09:00:00Z", "traffic": 100}]},
    {"name": "tf-garbage", "tags": {"managed-by": "tuneflow", "expires-at": "tomorrow"}, "provisioning_state": "Succeeded",
     "created_at": "", "deployments": [{"name": "demo", "instance_type": "x", "instance_count": 1,
                                        "provisioning_state": "Succeeded"}]},
    {"name": "tf-empty", "tags": {"managed-by": "tuneflow", "expires-at": "2026-11-27T00:00:00Z"},
     "provisioning_state": "Succeeded", "created_at": "2026-11-26T09:00:00Z", "deployments": []},
    {"name": "someone-elses", "tags": {}, "provisioning_state": "Succeeded", "created_at": "", "deployments": []},
]


def test_reap_dry_run_over_an_inventory_with_a_frozen_now(tmp_path):
    inv = tmp_path / "inventory.json"
    inv.write_text(json.dumps(INVENTORY))
    res = tuneflow("reap", "--dry-run", "--inventory", str(inv), "--now", "2026-11-26T12:00:00Z", "--json")
    assert res.returncode == 0, res.stderr
    got = {(d["kind"], d["name"]): (d["action"], d["rule"]) for d in json.loads(res.stdout)}
    assert got == {("endpoint", "tf-expired"): ("delete", "expired"), ("endpoint", "tf-fresh"): ("keep", "not-expired"),
                   ("endpoint", "tf-garbage"): ("flag", "bad-expiry"), ("endpoint", "tf-empty"): ("delete", "broken"),
                   ("endpoint", "someone-elses"): ("keep", "not-managed"),
                   ("deployment", "v-1"): ("delete", "deployment-idle"),  # 0 % since 10:00, window 1 h
                   ("deployment", "v-2"): ("keep", "deployment-serving"),
                   ("deployment", "demo"): ("keep", "deployment-newest")}  # tf-garbage's only one
    earlier = tuneflow("reap", "--dry-run", "--inventory", str(inv), "--now", "2026-11-26T09:10:00+00:00", "--json")
    assert {d["endpoint"]: d["rule"] for d in json.loads(earlier.stdout)}["tf-empty"] == "broken-grace"
    table = tuneflow("reap", "--dry-run", "--inventory", str(inv), "--now", "2026-11-26T12:00:00Z")
    assert table.returncode == 0 and "dry run" in table.stdout and "tf-garbage" in table.stdout
    assert "tf-fresh/v-1" in table.stdout and "deployment" in table.stdout


@pytest.mark.parametrize("args, words", [
    (["reap", "--dry-run", "--inventory", "missing.json"], "does not exist"),
    (["reap", "--inventory", "x.json"], "add --dry-run"),
    (["reap", "--dry-run", "--inventory", "INV", "--now", "2026-11-26T12:00:00"], "not ISO 8601 with an offset"),
    (["reap", "--dry-run", "--inventory", "NOTLIST"], "must be a JSON list"),
    # validated against the reaper's dataclasses: the error names the field's path
    (["reap", "--dry-run", "--inventory", "BADCOUNT"], "endpoints[1].deployments[0].instance_count: Input should be "
                                                        "a valid integer"),
    (["reap", "--dry-run", "--inventory", "NONAME"], "endpoints[4].name: Field required"),
])
def test_reap_usage_errors_are_one_line(tmp_path, args, words):
    files = {"INV": INVENTORY, "NOTLIST": {},
             "BADCOUNT": [INVENTORY[0], {**INVENTORY[1], "deployments": [{**INVENTORY[1]["deployments"][0],
                                                                          "instance_count": "two"}]}],
             "NONAME": [*INVENTORY[:4], {k: v for k, v in INVENTORY[4].items() if k != "name"}]}
    for name, content in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    args = [str(tmp_path / f"{a}.json") if a in files else a for a in args]
    res = tuneflow(*args)
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1 and words in res.stderr, res.stderr


def test_reap_dry_run_warns_when_the_breaker_would_trip(tmp_path):
    many = [{**INVENTORY[0], "name": f"tf-old-{i}"} for i in range(12)]
    (tmp_path / "inv.json").write_text(json.dumps(many))
    res = tuneflow("reap", "--dry-run", "--inventory", str(tmp_path / "inv.json"), "--now", "2026-11-26T12:00:00Z",
                   "--json")
    assert res.returncode == 0 and "circuit breaker" in res.stderr
    assert {d["rule"] for d in json.loads(res.stdout)} == {"circuit-breaker"}


@pytest.mark.integration
def test_endpoints_list_and_extend_on_the_local_backend(workspace, tmp_path):
    from shared.ml.base import ModelRef
    from tests.test_ml_contract import LocalDriver
    driver = LocalDriver(workspace, tmp_path)
    spec = driver.spec("ft-cli-0000aaaa")
    workspace.submit(spec)
    driver.finish(spec.name)
    model = workspace.register_model("cli-model", "7", spec.name, {})
    from tests.serving import serve
    serve(workspace, "tf-cli-0000aaaa", ModelRef(model.name, model.version, model.tags),
          {"managed-by": "tuneflow", "flow-id": "1d5f5ba0-8598-5118-9f6d-5a45f4408403",
           "expires-at": "2026-01-01T00:00:00Z"}, deployment="v-7", deployment_tags={"model": "cli-model:7"})
    res = tuneflow("endpoints", "list", "--json")
    assert res.returncode == 0, res.stderr
    [item] = json.loads(res.stdout)
    assert item["name"] == "tf-cli-0000aaaa" and item["deployments"][0]["name"] == "v-7"
    assert set(item) == {"name", "tags", "provisioning_state", "created_at", "scoring_uri", "deployments"}
    assert set(item["deployments"][0]) == {"name", "instance_type", "instance_count", "provisioning_state", "traffic",
                                           "mirror_traffic", "created_at", "model", "tags"}
    assert (item["deployments"][0]["traffic"], item["deployments"][0]["mirror_traffic"]) == (100, 0)
    assert item["deployments"][0]["created_at"] and item["deployments"][0]["model"] == "cli-model:7"
    table = tuneflow("endpoints", "list")
    assert table.returncode == 0 and "v-7 100 %" in table.stdout
    inv = tmp_path / "inventory.json"
    inv.write_text(res.stdout)
    plan = tuneflow("reap", "--dry-run", "--inventory", str(inv), "--json")
    assert json.loads(plan.stdout)[0]["action"] == "delete"  # expired in January

    res = tuneflow("endpoints", "extend", "tf-cli-0000aaaa", "--ttl", "4h")
    assert res.returncode == 0, res.stderr
    expiry = workspace.get_endpoint("tf-cli-0000aaaa").tags["expires-at"]
    assert expiry > "2026-01-01T00:00:00Z" and "left" in res.stdout
    assert json.loads(tuneflow("reap", "--dry-run", "--json").stdout)[0]["action"] == "keep"
    for ttl, words in (("0", "not understood"), ("0h", "longer than zero"), ("PT0S", "longer than zero")):
        bad = tuneflow("endpoints", "extend", "tf-cli-0000aaaa", "--ttl", ttl)
        assert bad.returncode == 1 and words in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    from shared import storage
    assert [b.name for b in storage.container("flows").list_blobs() if "-extended-" in b.name]


    # rollback: the dataset's endpoint gives the traffic back to the deployment kept at 0 %
    from shared import naming
    name = naming.endpoint_name("cli-back", workspace.workspace_id)
    serve(workspace, name, ModelRef(model.name, model.version, model.tags), {"managed-by": "tuneflow"}, deployment="v-7",
          deployment_tags={"flow-id": "1d5f5ba0-8598-5118-9f6d-5a45f4408403"})
    serve(workspace, name, ModelRef(model.name, model.version, model.tags), {}, deployment="v-8",
          deployment_tags={"flow-id": "2e6f5ba0-8598-5118-9f6d-5a45f4408404"})
    res = tuneflow("rollback", "cli-back", "--json")
    assert res.returncode == 0, res.stderr
    assert (json.loads(res.stdout)["from"], json.loads(res.stdout)["to"]) == ("v-8", "v-7")
    assert workspace.get_endpoint(name).traffic == {"v-7": 100}
    again = tuneflow("rollback", "cli-back")  # v-8 came after v-7: there is nothing older to go back to
    assert again.returncode == 1 and "no previous deployment" in again.stderr.splitlines()[0]
    missing = tuneflow("rollback", "no-such-dataset")
    assert missing.returncode == 1 and "has no endpoint" in missing.stderr.splitlines()[0]
    assert [b.name for b in storage.container("flows").list_blobs() if "-rolled-back" in b.name]


@pytest.mark.integration
def test_submit_retry_redoes_a_failed_fine_tune_as_a_new_flow_and_only_then(storage_env):
    """A fine-tune whose job failed for good (say, killed in every attempt) is redone by `submit --retry`:
    a new flow with its own job, never the failed job's name again (Azure ML does not reuse job names)."""
    from shared import flows, naming, storage
    from shared.messages import FinetuneRequest
    version = "0123456789abcdef"
    storage.put_json(storage.container("prepared"), f"again/{version}/manifest.json", {})
    log = storage.container("flows")
    first = naming.flow_id("again", version, {})
    res = tuneflow("submit", f"prepared/again/{version}", "--retry")
    assert res.returncode == 1 and "no fine-tune with these parameters yet" in res.stderr
    flows.record(log, first, "submitted", dataset="again", version=version, job=naming.job_name("again", version, {}))
    res = tuneflow("submit", f"prepared/again/{version}", "--retry")
    assert res.returncode == 1 and "is at stage submitted, not job-failed" in res.stderr
    flows.record(log, first, "job-failed", dataset="again", version=version, detail={"error": "killed"})
    res = tuneflow("submit", f"prepared/again/{version}", "--retry")
    assert res.returncode == 0, res.stderr
    (msg,) = storage.queue("finetune-requests").receive_messages()
    import base64
    request = FinetuneRequest.parse(base64.b64decode(msg.content))
    assert request.attempt == 2 and request.flow_id == naming.flow_id("again", version, {}, 2) != first
    retried = naming.job_name("again", version, {}, 2)
    assert retried != naming.job_name("again", version, {}) and retried in res.stdout.replace("\n", "")
