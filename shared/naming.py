"""Deterministic names, and validation of names that come from outside.

Every resource name is a pure function of its inputs (dataset content hash, fine-tune parameters,
job name, model version), so a repeated delivery computes the same name and finds the work done.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid

from shared.contracts import DATASETS_CONTAINER, PREPARED_CONTAINER

_FLOW_NAMESPACE = uuid.UUID("6f1d6c1e-7a55-4c53-9b0e-2f7d1f0c9a10")

DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
VERSION_RE = re.compile(r"^[0-9a-f]{16}$")
DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")
# The file that lists a multi-file dataset's files and options (see shared/arrival.py).
DATASET_FILE = "dataset.json"
# Blobs the app itself writes next to data or that tools leave behind; never datasets.
IGNORED_SUFFIXES = (".error.json", ".tmp", ".partial")


class InvalidName(ValueError):
    """A name from outside (blob, message field) that the app refuses to use."""


def dataset_blob(blob_name: str) -> tuple[str, str]:
    """Split a `datasets` blob name into (dataset, file path inside the dataset), refusing anything unsafe.

    Accepted: `<dataset>/<file>` or `<dataset>/<folder>/<file>` (hub layout: `data/train_sft-00000-of-00003.parquet`),
    files ending in .jsonl, .jsonl.gz, .json or .parquet. Names are letters, digits, `_`, `-`, `.`, starting
    with a letter or digit (no path traversal, no odd characters).
    """
    blob_name = blob_name.removeprefix(f"{DATASETS_CONTAINER}/")
    parts = blob_name.split("/")
    if len(parts) not in (2, 3):
        raise InvalidName(
            f"blob {blob_name!r} is not '<dataset>/<file>' (or '<dataset>/<folder>/<file>'): put each dataset in "
            f"its own folder, e.g. datasets/my-data/train.jsonl")
    labels = ["dataset"] + ["folder"] * (len(parts) - 2) + ["file"]
    for label, value in zip(labels, parts):
        pattern = DATASET_RE if label == "dataset" else FILE_RE
        if not pattern.match(value) or ".." in value:
            raise InvalidName(
                f"{label} name {value!r} in blob {blob_name!r} is not allowed: use letters, digits, "
                f"'_', '-', '.', starting with a letter or digit ({pattern.pattern})")
    if not parts[-1].lower().endswith(DATA_SUFFIXES):
        raise InvalidName(
            f"file {parts[-1]!r} has an unsupported type: use one of {', '.join(DATA_SUFFIXES)}")
    return parts[0], "/".join(parts[1:])


def is_ignored_blob(blob_name: str) -> bool:
    return blob_name.lower().endswith(IGNORED_SUFFIXES)


def check_dataset(name: str) -> str:
    if not DATASET_RE.match(name) or ".." in name:
        raise InvalidName(f"dataset name {name!r} is not allowed ({DATASET_RE.pattern})")
    return name


def check_version(version: str) -> str:
    if not VERSION_RE.match(version):
        raise InvalidName(f"dataset version {version!r} is not 16 lowercase hex digits")
    return version


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


def dataset_version(sources: list[tuple[str, ...]], options: dict) -> str:
    """Version of a prepared dataset: a hash of what its files hold and the options.

    `sources` are tuples of what decides the output (file kind, split named by the file, sha256 of
    the bytes), not the file names: the same bytes dropped again under another name are one version."""
    return _digest(canonical_json(sorted(sources)), canonical_json(options))[:16]


def prepared_prefix(dataset: str, version: str) -> str:
    """Blob prefix (inside the `prepared` container) of one prepared version."""
    return f"{check_dataset(dataset)}/{check_version(version)}"


def prepared_uri(dataset: str, version: str, file: str) -> str:
    return f"{PREPARED_CONTAINER}/{prepared_prefix(dataset, version)}/{file}"


def flow_id(dataset: str, version: str, params: dict, attempt: int = 1, gate: str = "on") -> str:
    """Correlation id of one flow: one prepared version fine-tuned with one set of parameters (a retry of a
    failed fine-tune, `attempt` 2 and up, is a flow of its own, and so is one with the quality gate off)."""
    again = f"/attempt={attempt}" if attempt > 1 else ""
    ungated = "/gate=off" if gate == "off" else ""
    return str(uuid.uuid5(_FLOW_NAMESPACE, f"{dataset}/{version}/{canonical_json(params)}{again}{ungated}"))


def slug(text: str, limit: int) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return s or "x"


def job_name(dataset: str, version: str, params: dict, attempt: int = 1, gate: str = "on") -> str:
    """Azure ML job names: letters, digits, '-' and '_'; ours are `ft-<dataset>-<hash8>` (a retry's hash
    covers its attempt: Azure ML never reuses a job's name; an ungated flow's covers that too)."""
    parts = ((dataset, version, canonical_json(params)) + ((f"attempt={attempt}",) if attempt > 1 else ())
             + (("gate=off",) if gate == "off" else ()))
    return f"ft-{slug(dataset, 24)}-{_digest(*parts)[:8]}"


def model_name(base_model: str, dataset: str) -> str:
    """As the seed: the base model's name plus the dataset's (`Phi-3-mini-4k-instruct-ultrachat-200k`)."""
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', base_model)}-{slug(dataset, 40)}"


MAX_MODEL_VERSION = 2**31 - 1  # Azure ML model versions are positive 32-bit integers


def model_version(job: str) -> str:
    """A deterministic, numeric model version derived from the job (not a timestamp): 1..2,147,483,647."""
    return str(int(_digest(job)[:16], 16) % MAX_MODEL_VERSION + 1)


def endpoint_name(dataset: str, workspace: str) -> str:
    """One endpoint per dataset, the same for every model version of it (its scoring URI and keys stay).

    Azure's rule: 3-32 chars, starts with a letter, letters/digits/hyphens, no trailing hyphen. Online
    endpoint names are unique per Azure region across every workspace, so the hash covers the workspace
    (`MLBackend.workspace_id`) too: dev and prod in one region fine-tuning one dataset get different names."""
    return f"tf-{slug(check_dataset(dataset), 18)}-{_digest(workspace.lower(), 'endpoint', dataset)[:8]}"


DEPLOYMENT_RE = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")


def deployment_name(model_version: str) -> str:
    """The deployment of one model version, named after it (Azure: 3-32 chars, a letter first, letters,
    digits and hyphens): `v-<version>`, at most 12 characters for a 32-bit version."""
    if not re.fullmatch(r"[1-9][0-9]{0,9}", str(model_version)) or int(model_version) > MAX_MODEL_VERSION:
        raise InvalidName(f"model version {model_version!r} is not an integer 1..{MAX_MODEL_VERSION}")
    return f"v-{model_version}"
