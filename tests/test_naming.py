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


@pytest.mark.parametrize("dataset", ["ultrachat", "ultrachat-200k", "9" * 63, "a", "x_y.z", "_".join("ab" * 10)])
def test_endpoint_names_follow_azure_rules(dataset):
    name = naming.endpoint_name(dataset, "sub/rg/ws")
    assert AZURE_ENDPOINT.match(name), name
    assert 3 <= len(name) <= 32


@pytest.mark.parametrize("version", ["1", "42", "2147483647"])
def test_deployment_names_follow_azure_rules(version):
    name = naming.deployment_name(version)
    assert naming.DEPLOYMENT_RE.match(name) and 3 <= len(name) <= 32, name


@pytest.mark.parametrize("version", ["0", "-1", "2147483648", "01", "1.5", "", "v1"])
def test_a_model_version_azure_would_refuse_has_no_deployment_name(version):
    with pytest.raises(naming.InvalidName):
        naming.deployment_name(version)


def test_a_retry_is_a_flow_and_a_job_of_its_own_and_the_first_attempt_keeps_its_names():
    v = "0123456789abcdef"
    assert naming.flow_id("d", v, {}, 1) == naming.flow_id("d", v, {})
    assert naming.job_name("d", v, {}, 1) == naming.job_name("d", v, {})
    assert len({naming.flow_id("d", v, {}, a) for a in (1, 2, 3)}) == 3
    assert len({naming.job_name("d", v, {}, a) for a in (1, 2, 3)}) == 3


def test_one_endpoint_per_dataset_whatever_the_model_version_and_one_deployment_per_version():
    """The endpoint's scoring URI and key outlive a model version: its name ignores the version; each
    version is a deployment of its own on it."""
    assert naming.endpoint_name("ultrachat", "sub/rg/ws") == naming.endpoint_name("ultrachat", "sub/rg/ws")
    assert naming.endpoint_name("ultrachat", "w") != naming.endpoint_name("ultrachat-2", "w")
    assert len({naming.deployment_name(str(v)) for v in (1, 2, 3, 2147483647)}) == 4


def test_endpoint_names_differ_per_workspace_and_ignore_its_case():
    """Azure makes online endpoint names unique per region across workspaces: dev and prod in one
    region deploying the same dataset must not compute the same name."""
    dev = naming.endpoint_name("ultrachat", "sub/rg-dev/ws")
    assert dev != naming.endpoint_name("ultrachat", "sub/rg-prod/ws")
    assert dev == naming.endpoint_name("ultrachat", "SUB/RG-DEV/WS")


def test_ignored_blobs():
    assert naming.is_ignored_blob("d/x.error.json")
    assert not naming.is_ignored_blob("d/x.json")


# -- golden names: a deployed tuneflow and the next release must name the same thing the same way, or a
# repeat after an upgrade is a second job, model version or endpoint. Changing one of these is a migration.
@pytest.mark.parametrize("made, expected", [
    (lambda: naming.canonical_json({"b": 1, "a": ["é", 2]}), '{"a":["\\u00e9",2],"b":1}'),
    (lambda: naming.flow_id("ds", "v1", {}), "e8436b39-bf01-556d-a9a8-74d891421130"),
    (lambda: naming.flow_id("ds", "v1", {}, 2), "eb48e502-3660-53fe-b0ad-817c98080eeb"),
    (lambda: naming.job_name("ultrachat", "v1", {"lr": 1}), "ft-ultrachat-a9fe2a58"),
    (lambda: naming.job_name("ultrachat", "v1", {"lr": 1}, attempt=2), "ft-ultrachat-0a852094"),
    (lambda: naming.job_name("a" * 40, "v1", {}), "ft-" + "a" * 24 + "-" + naming.job_name("a" * 40, "v1", {})[-8:]),
    (lambda: naming.endpoint_name("ultrachat-200k", "sub/rg/WS"), "tf-ultrachat-200k-49d5febe"),
    (lambda: naming.endpoint_name("ultrachat-200k", "sub/rg/ws"), "tf-ultrachat-200k-49d5febe"),
    (lambda: naming.deployment_name("7"), "v-7"),
    (lambda: naming.flow_id("ds", "v1", {}, gate="off"), "79f21420-c562-5c15-baa4-0897ab71457f"),
    (lambda: naming.flow_id("ds", "v1", {}, 2, gate="off"), "72de392c-23ef-5b27-9440-fa9ed53d8dd0"),
    (lambda: naming.flow_id("ds", "v1", {}, gate="on"), "e8436b39-bf01-556d-a9a8-74d891421130"),
    (lambda: naming.job_name("ultrachat", "v1", {"lr": 1}, gate="off"), "ft-ultrachat-cb3c730e"),
    (lambda: naming.job_name("ultrachat", "v1", {"lr": 1}, attempt=2, gate="off"), "ft-ultrachat-fcf83b2c"),
    (lambda: naming.job_name("ultrachat", "v1", {"lr": 1}, gate="on"), "ft-ultrachat-a9fe2a58"),
    (lambda: naming.endpoint_name("a" * 30, "sub/rg/ws"), "tf-" + "a" * 18 + "-dab399c8"),  # the dataset cut at 18
    (lambda: naming.prepared_uri("ds", "0123456789abcdef", "train.jsonl"), "prepared/ds/0123456789abcdef/train.jsonl"),
    (lambda: naming.model_version("ft-ultrachat-a9fe2a58"), "1604322783"),
    (lambda: naming.model_name("Phi-3-mini-4k-instruct", "ultrachat_200k"), "Phi-3-mini-4k-instruct-ultrachat-200k"),
    (lambda: naming.model_name("Phi-3 mini/4k Instruct", "u" * 45), "Phi-3-mini-4k-Instruct-" + "u" * 40),
], ids=["canonical-json", "flow", "flow-retry", "job", "job-retry", "job-long-dataset", "endpoint", "endpoint-ws-case",
        "deployment", "flow-ungated", "flow-retry-ungated", "flow-gated", "job-ungated", "job-retry-ungated", "job-gated",
        "endpoint-long-dataset", "prepared-uri", "model-version", "model-name", "model-name-odd-characters"])
def test_names_are_stable_across_releases(made, expected):
    assert made() == expected


@pytest.mark.parametrize("blob, message", [
    ("a/b/c/d.txt", "blob 'a/b/c/d.txt' is not '<dataset>/<file>' (or '<dataset>/<folder>/<file>'): put each dataset "
                    "in its own folder, e.g. datasets/my-data/train.jsonl"),
    ("a/../b.jsonl", "folder name '..' in blob 'a/../b.jsonl' is not allowed: use letters, digits, '_', '-', '.', "
                     "starting with a letter or digit (^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$)"),
    ("ds/sub/x y.jsonl", "file name 'x y.jsonl' in blob 'ds/sub/x y.jsonl' is not allowed: use letters, digits, '_', "
                         "'-', '.', starting with a letter or digit (^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$)"),
    ("Bad Name/x.jsonl", "dataset name 'Bad Name' in blob 'Bad Name/x.jsonl' is not allowed: use letters, digits, '_', "
                         "'-', '.', starting with a letter or digit (^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$)"),
    ("d/" + "f" * 100 + ".jsonl", None),  # a file name may be longer than a dataset name
    ("d" * 63 + "/x.jsonl", None),
    ("d" * 64 + "/x.jsonl", "dataset name"),
    ("ds/a..b.jsonl", "file name 'a..b.jsonl'"),
    ("ds/x.txt", "file 'x.txt' has an unsupported type: use one of .jsonl, .jsonl.gz, .json, .parquet"),
    ("ds/data/x.txt", "file 'x.txt' has an unsupported type: use one of .jsonl, .jsonl.gz, .json, .parquet"),
])
def test_a_refused_blob_name_says_which_part_is_wrong_and_the_rule(blob, message):
    if message is None:
        naming.dataset_blob(blob)
        return
    with pytest.raises(naming.InvalidName) as exc:
        naming.dataset_blob(blob)
    assert str(exc.value).startswith(message) if message.endswith(")") or "unsupported" in message else message in str(exc.value)


# -- names from messages: refused in full, with the rule ----------------------------------------------
@pytest.mark.parametrize("check, value, message", [
    (naming.check_dataset, "ultrachat_200k", None),
    (naming.check_dataset, "a..b", "dataset name 'a..b' is not allowed (^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$)"),
    (naming.check_dataset, "bad name", "dataset name 'bad name' is not allowed (^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$)"),
    (naming.check_version, "0123456789abcdef", None),
    (naming.check_version, "0123456789ABCDEF", "dataset version '0123456789ABCDEF' is not 16 lowercase hex digits"),
    (naming.deployment_name, "0", "model version '0' is not an integer 1..2147483647"),
    (lambda v: naming.prepared_prefix(v, "0123456789abcdef"), "../x", "dataset name '../x' is not allowed"),
    (lambda v: naming.prepared_prefix("ds", v), "v1", "dataset version 'v1' is not 16 lowercase hex digits"),
])
def test_a_name_from_a_message_is_checked_before_use(check, value, message):
    if message is None:
        assert check(value) == value
        return
    with pytest.raises(naming.InvalidName) as refused:
        check(value)
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize("text, limit, slug", [
    ("UltraChat_200k", 40, "ultrachat-200k"),
    ("--a  b--", 10, "a-b"),            # runs of other characters are one hyphen, none at either end
    ("abc-def", 4, "abc"),              # cut at the limit, then no trailing hyphen
    ("--a  b--", 3, "a-b"),             # the limit counts what is left after the leading hyphens go
    ("!!!", 5, "x"),                    # nothing left: a placeholder, never an empty name part
    ("", 5, "x"),
])
def test_slug(text, limit, slug):
    assert naming.slug(text, limit) == slug
