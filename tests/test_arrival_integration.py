"""Data arrival against a real Azurite: multi-file datasets, repeats, overwrites (no host needed)."""

from __future__ import annotations

import json

import pytest

from local import sampledata

pytestmark = pytest.mark.integration


def _upload(name: str, data: bytes):
    from shared import storage
    storage.container("datasets").upload_blob(name, data, overwrite=True)
    return storage.container("datasets").get_blob_client(name)


def _arrive(name: str):
    from shared import storage
    from shared.arrival import handle_dataset_blob
    return handle_dataset_blob(storage.container("datasets").get_blob_client(name))


def _prepared_names(dataset: str) -> list[str]:
    from shared import storage
    return sorted(b.name for b in storage.container("prepared").list_blobs(name_starts_with=f"{dataset}/"))


def test_a_multi_file_dataset_waits_until_complete_then_is_prepared_once(storage_env, tmp_path):
    rows = list(sampledata.rows(300, seed=11))
    shards = {"data/train_sft-00000-of-00002.parquet": rows[:120], "data/train_sft-00001-of-00002.parquet": rows[120:240],
              "data/test_sft-00000-of-00001.jsonl": rows[240:]}
    files = {}
    for rel, part in shards.items():
        files[rel] = sampledata.write_rows(tmp_path / rel.replace("/", "_"), part).read_bytes()
    first = "data/train_sft-00000-of-00002.parquet"
    _upload(f"hub/{first}", files[first])
    assert _arrive(f"hub/{first}") is None  # a shard without dataset.json waits
    _upload("hub/dataset.json", json.dumps({"files": sorted(shards), "options": {"split_pc": 50}}).encode())
    assert _arrive("hub/dataset.json") is None  # two files still missing: waits, no error
    assert _prepared_names("hub") == []
    for rel in [r for r in shards if r != first]:
        _upload(f"hub/{rel}", files[rel])
    request = _arrive("hub/data/train_sft-00001-of-00002.parquet")
    assert request is not None and request.dataset == "hub"
    from shared import storage
    manifest = storage.get_json(storage.container("prepared"), f"hub/{request.version}/manifest.json")
    assert (manifest["rows"]["train"], manifest["rows"]["test"]) == (120, 30)  # first 50 % of each split
    assert manifest["options"]["split_pc"] == 50.0 and len(manifest["sources"]) == 3
    assert all(s["etag"] and len(s["sha256"]) == 64 for s in manifest["sources"])
    # Every later trigger of the same files finds the version done and re-emits the same request.
    before = _prepared_names("hub")
    for name in ["hub/dataset.json", f"hub/{first}"]:
        assert _arrive(name) == request
    assert _prepared_names("hub") == before


@pytest.mark.parametrize("order", [("train_sft.jsonl", "test_sft.jsonl", "dataset.json"),
                                   ("train_sft.jsonl", "dataset.json", "test_sft.jsonl"),
                                   ("dataset.json", "test_sft.jsonl", "train_sft.jsonl")])
def test_files_named_as_splits_wait_for_their_dataset_json_in_any_upload_order(storage_env, tmp_path, order):
    """A split on its own is never prepared (it was: `train_sft.jsonl` split by hash and fine-tuned before the
    real dataset, an extra GPU job); every arrival event, in any order and repeated, ends in one version."""
    from shared import flows, storage
    rows = list(sampledata.rows(200, seed=5))
    files = {"train_sft.jsonl": sampledata.write_rows(tmp_path / "train_sft.jsonl", rows[:160]).read_bytes(),
             "test_sft.jsonl": sampledata.write_rows(tmp_path / "test_sft.jsonl", rows[160:]).read_bytes(),
             "dataset.json": json.dumps({"files": ["train_sft.jsonl", "test_sft.jsonl"]}).encode()}
    requests = []
    for i, name in enumerate(order):
        _upload(f"splits/{name}", files[name])
        for arrived in order[:i + 1]:  # the events so far, delivered (again) after this upload
            requests.append(_arrive(f"splits/{arrived}"))
        if i < len(order) - 1:
            assert requests[-1] is None and _prepared_names("splits") == [], f"prepared before {order[-1]} arrived"
            log = storage.container("flows")
            waiting = flows.read_waiting(log, flows.read_all(log))
            assert [w["dataset"] for w in waiting] == ["splits"]
            assert ("dataset.json" in waiting[0]["waiting_for"]) if "dataset.json" not in order[:i + 1] else \
                "of 2 files listed" in waiting[0]["waiting_for"]
    done = [r for r in requests if r is not None]
    assert done and len({r.version for r in done}) == 1
    manifest = storage.get_json(storage.container("prepared"), f"splits/{done[0].version}/manifest.json")
    assert (manifest["rows"]["train"], manifest["rows"]["test"]) == (160, 40)  # split by name, not by hash
    versions = {n.split("/")[1] for n in _prepared_names("splits") if n.endswith("/manifest.json")}
    assert versions == {done[0].version}
    # Prepared now: the dataset no longer shows as waiting, whatever marker a late arrival left.
    flows.record(storage.container("flows"), done[0].flow_id, "prepared", dataset="splits", version=done[0].version)
    log = storage.container("flows")
    assert flows.read_waiting(log, flows.read_all(log)) == []


@pytest.mark.parametrize("name", ["train_sft.jsonl", "data/test_gen-00000-of-00001.parquet", "my_train_sft_part.jsonl"])
def test_a_split_or_shard_without_dataset_json_waits_and_says_so(storage_env, tmp_path, name):
    from shared import flows, storage
    data = sampledata.write(tmp_path / "x.jsonl" if name.endswith("jsonl") else tmp_path / "x.parquet", 40).read_bytes()
    _upload(f"alone/{name}", data)
    assert _arrive(f"alone/{name}") is None
    assert _prepared_names("alone") == []
    log = storage.container("flows")
    (marker,) = flows.read_waiting(log, flows.read_all(log))
    assert marker["dataset"] == "alone" and marker["waiting_for"].startswith("dataset.json") and name in marker["waiting_for"]
    assert flows.waiting_status(marker).note().startswith("waits for dataset.json")


def test_files_not_listed_are_ignored_and_a_bad_dataset_json_is_reported(storage_env, tmp_path):
    data = sampledata.write(tmp_path / "a.jsonl", 50).read_bytes()
    _upload("listed/dataset.json", json.dumps({"files": ["a.jsonl"]}).encode())
    _upload("listed/other.jsonl", data)
    assert _arrive("listed/other.jsonl") is None
    _upload("broken/dataset.json", json.dumps({"files": ["../x.jsonl"]}).encode())
    assert _arrive("broken/dataset.json") is None
    from shared import storage
    reports = [b.name for b in storage.container("prepared").list_blobs(name_starts_with="_invalid/")]
    report = storage.get_json(storage.container("prepared"), reports[0])
    assert "unusable file" in report["error"] and report["fix"]


def test_a_blob_overwritten_while_read_fails_loudly_and_the_retry_prepares_the_new_bytes(storage_env, tmp_path):
    from shared.arrival import BlobChanged, spool
    v1 = sampledata.write(tmp_path / "v1.jsonl", 60, seed=1).read_bytes()
    v2 = sampledata.write(tmp_path / "v2.jsonl", 60, seed=2).read_bytes()
    client = _upload("over/d.jsonl", v1)
    old_etag = client.get_blob_properties().etag
    _upload("over/d.jsonl", v2)  # overwritten between the trigger (old etag) and the read
    with pytest.raises(BlobChanged):
        spool(client, tmp_path / "copy", old_etag)
    request = _arrive("over/d.jsonl")  # the retry reads what is there now
    from shared import storage
    manifest = storage.get_json(storage.container("prepared"), f"over/{request.version}/manifest.json")
    import hashlib
    assert manifest["sources"][0]["sha256"] == hashlib.sha256(v2).hexdigest()
    assert client.download_blob().readall() == v2  # and the original is untouched


def test_a_blob_outside_the_datasets_container_is_ignored(storage_env):
    from shared import storage
    from shared.arrival import handle_dataset_blob
    other = storage.container("elsewhere")
    other.upload_blob("ds/train.jsonl", b'{"messages": []}\n')
    assert handle_dataset_blob(other.get_blob_client("ds/train.jsonl")) is None
    assert list(storage.container("prepared").list_blobs()) == []


def test_a_preparation_killed_between_its_files_leaves_no_manifest_and_the_retry_completes_it(storage_env, tmp_path):
    """The manifest is what marks a version done: written after every data file, so a crash in between
    leaves a version that the next run prepares again, never one that looks done without its data."""
    import os
    import signal
    import subprocess
    import sys
    from shared import storage
    _upload("killed/d.jsonl", sampledata.write(tmp_path / "d.jsonl", 60).read_bytes())
    code = ("from shared import storage; from shared.arrival import handle_dataset_blob; "
            "handle_dataset_blob(storage.container('datasets').get_blob_client('killed/d.jsonl'))")
    for nth in (1, 2):  # after the first data file, after the second
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                              env={**os.environ, "TUNEFLOW_FAILPOINTS": f"arrival.output-uploaded@{nth}"})
        assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-1500:]
        names = _prepared_names("killed")
        assert len([n for n in names if not n.endswith("manifest.json")]) >= nth
        assert not any(n.endswith("/manifest.json") for n in names), f"a manifest before all the data: {names}"
    request = _arrive("killed/d.jsonl")
    assert request is not None
    manifest = storage.get_json(storage.container("prepared"), f"killed/{request.version}/manifest.json")
    assert manifest["rows"]["train"] + manifest["rows"]["test"] == 60
