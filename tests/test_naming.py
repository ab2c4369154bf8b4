import re

import pytest

from shared import naming

AZURE_ENDPOINT = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")


@pytest.mark.parametrize("blob, expected", [
    ("ultrachat/train.jsonl", ("ultrachat", "train.jsonl")),
    ("datasets/my-data/part_1.parquet", ("my-data", "part_1.parquet")),
    ("A1/x.JSON", ("A1", "x.JSON")),
    ("ultrachat_200k/data/train_sft-00000-of-00003.parquet", ("ultrachat_200k", "data/train_sft-00000-of-00003.parquet")),
    ("d/x.jsonl.gz", ("d", "x.jsonl.gz")),
])
def test_dataset_blob_accepts_safe_names(blob, expected):
    assert naming.dataset_blob(blob) == expected


@pytest.mark.parametrize("blob", [
    "train.jsonl",                      # no dataset folder
    "a/b/c/d.jsonl",                    # nested too deep
    "../etc/passwd.jsonl", "x/..jsonl", "x/../y.jsonl",
    "my data/train.jsonl",              # space
    "data/tr$ain.jsonl", "-x/a.jsonl", "x/.hidden.jsonl",
    "x/train.csv", "x/train",           # unsupported type
    "x/" + "a" * 200 + ".jsonl",
])
def test_dataset_blob_refuses_unsafe_or_unsupported_names(blob):
    with pytest.raises(naming.InvalidName) as exc:
        naming.dataset_blob(blob)
    assert blob.split("/")[-1][:20] in str(exc.value) or "dataset" in str(exc.value)


def test_names_are_deterministic_and_depend_on_every_input():
    src = [("jsonl", "hash", "a" * 64)]
    v = naming.dataset_version(src, {"test_fraction": 0.1})
    assert v == naming.dataset_version(src, {"test_fraction": 0.1})
    assert v != naming.dataset_version(src, {"test_fraction": 0.2})
    assert v != naming.dataset_version([("jsonl", "train", "a" * 64)], {"test_fraction": 0.1})
    assert naming.VERSION_RE.match(v)
    j = naming.job_name("ultrachat", v, {})
    assert j == naming.job_name("ultrachat", v, {}) != naming.job_name("ultrachat", v, {"learning_rate": 1e-4})
    assert naming.flow_id("d", v, {}) != naming.flow_id("d", v, {"x": 1})
    assert naming.model_version(j).isdigit()


@pytest.mark.parametrize("model", ["phi-3-tiny-ultrachat", "Phi-3-mini-4k-instruct-ultrachat-200k", "9" * 80,
                                   "---", "a", "Ünïcode-model", "x_y.z"])
@pytest.mark.parametrize("version", ["1", "2147483647"])
def test_endpoint_names_follow_azure_rules(model, version):
    name = naming.endpoint_name(model, version, "sub/rg/ws")
    assert AZURE_ENDPOINT.match(name), name
    assert 3 <= len(name) <= 32


def test_endpoint_names_differ_per_workspace_and_ignore_its_case():
    """Azure makes online endpoint names unique per region across workspaces: dev and prod in one
    region deploying the same model version must not compute the same name."""
    dev = naming.endpoint_name("Phi-4-ultrachat", "7", "sub/rg-dev/ws")
    assert dev != naming.endpoint_name("Phi-4-ultrachat", "7", "sub/rg-prod/ws")
    assert dev == naming.endpoint_name("Phi-4-ultrachat", "7", "SUB/RG-DEV/WS")


@pytest.mark.parametrize("job", ["ft-a-00000000", "ft-ultrachat-ffffffff", *(f"ft-x-{i:08x}" for i in range(300))])
def test_model_versions_are_positive_32_bit_integers(job):
    version = naming.model_version(job)
    assert version.isdigit() and 1 <= int(version) <= 2**31 - 1, version
    assert version == naming.model_version(job)


def test_model_versions_use_the_whole_range():
    """A version taken from 32 bits of the hash reached 4,294,967,295; Azure ML refuses past 2**31 - 1."""
    versions = [int(naming.model_version(f"ft-x-{i:08x}")) for i in range(2000)]
    assert max(versions) > 2**30 and len(set(versions)) == len(versions)


def test_ignored_blobs():
    assert naming.is_ignored_blob("d/x.error.json")
    assert not naming.is_ignored_blob("d/x.json")
