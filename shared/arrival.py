"""Data arrival: dataset blobs in, one prepared version (or an error report) out.

Which files make a dataset:
- a single file `datasets/<dataset>/<file>` is prepared as soon as it lands;
- a multi-file dataset has a `datasets/<dataset>/dataset.json`:
  `{"files": ["data/train_sft-00000-of-00002.parquet", ...], "options": {"split_pc": 5}}`.
  It is prepared once every listed file is there, whichever blob lands last; until then each
  arrival just waits (no error). A file named like a hub shard (`-00000-of-00003`) or a split
  (`train_sft`, `test_sft`, `train_gen`, `test_gen`) without a dataset.json waits for one: it is
  one part of a dataset, and preparing it alone would fine-tune the wrong data.
  A waiting dataset is recorded (`flows/_waiting/<dataset>.json`: what it waits for, as of the
  listing that found it incomplete), so `tuneflow status` shows it.

Memory: the host runs several blob events at once (`extensions.blobs.maxDegreeOfParallelism`), and a
preparation's memory follows its largest parquet row group. Each one reserves its expected peak
(`shared.dataset.peak_memory_mb`) from one budget per process (TUNEFLOW_PREP_MEMORY_MB) before it
starts, and waits while the budget is spent: many small datasets prepare at once, two at the row-group
limit share the budget, and one larger than the whole budget runs alone.

Order of writes, so that nothing half-done looks done: data files, `manifest.json`, then the
sources index, and the queue message only after that (the host writes output bindings after the
function returns). A repeated trigger finds the manifest (through the index of the sources'
etags, without downloading them) and re-emits the same request; submit is idempotent.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared import failpoints, flows, naming, storage
from shared.contracts import DATASETS_CONTAINER, FLOWS_CONTAINER, PREPARED_CONTAINER
from shared.dataset import DatasetRefused, PrepareOptions, peak_memory_mb, prepare_to_dir, version_of
from shared.outputs import OUTPUT_FILES
from shared.observability import bind_flow
from shared.sources import SHARD_RE, Source, split_of
from shared.ttl import format_utc, utcnow

if TYPE_CHECKING:  # pydantic is imported when a message is built, not at worker start-up
    from shared.messages import FinetuneRequest

log = logging.getLogger("tuneflow.arrival")


class MemoryBudget:
    """Megabytes that preparations reserve before they run; a reservation waits until it fits (or until
    nothing else is reserved, so that one larger than the whole budget still runs, alone)."""

    def __init__(self, total_mb: int):
        self.total_mb, self.used_mb, self.peak_mb = total_mb, 0, 0
        self._cv = threading.Condition()

    @contextmanager
    def reserve(self, mb: int):
        with self._cv:
            self._cv.wait_for(lambda: self.used_mb == 0 or self.used_mb + mb <= self.total_mb)
            self.used_mb += mb
            self.peak_mb = max(self.peak_mb, self.used_mb)
        try:
            yield
        finally:
            with self._cv:
                self.used_mb -= mb
                self._cv.notify_all()


_budget: MemoryBudget | None = None
_budget_lock = threading.Lock()


def budget() -> MemoryBudget:
    """The process's preparation budget (TUNEFLOW_PREP_MEMORY_MB), made on first use."""
    global _budget
    from shared import settings
    with _budget_lock:
        if _budget is None:
            _budget = MemoryBudget(settings.get_int("TUNEFLOW_PREP_MEMORY_MB", 1))
        return _budget


class BlobChanged(RuntimeError):
    """The blob was overwritten while it was being read: raise, so the trigger retries the new version."""


@dataclass
class Waiting:
    """The dataset is incomplete: `waiting_for` says what is missing (a line for the log and the status)."""
    dataset: str
    waiting_for: str
    files: list[str]  # the dataset's files present when it was found incomplete


@dataclass
class DatasetFiles:
    dataset: str
    files: dict[str, str]  # file path inside the dataset -> etag
    options: dict


def spool(blob_client, dest: Path, etag: str | None = None) -> tuple[str, int, str]:
    """Copy the blob to a local file by chunks (never whole in memory); return (sha256, bytes, etag).

    The download is pinned to one etag, so a blob overwritten mid-read fails loudly (BlobChanged)
    instead of yielding a mix of two versions.
    """
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceModifiedError
    etag = etag or blob_client.get_blob_properties().etag
    h, size = hashlib.sha256(), 0
    try:
        stream = blob_client.download_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
        with open(dest, "wb") as f:
            for chunk in stream.chunks():
                h.update(chunk)
                f.write(chunk)
                size += len(chunk)
    except ResourceModifiedError:
        raise BlobChanged(f"{blob_client.blob_name} changed while it was read: preparing again") from None
    return h.hexdigest(), size, etag


def _report_invalid(prepared, key: str, report: dict) -> str:
    name = f"_invalid/{hashlib.sha256(key.encode()).hexdigest()[:16]}/error.json"
    storage.put_json(prepared, name, {**report, "created_at": format_utc(utcnow())})
    return name


def find_dataset_files(datasets, dataset: str, arrived: str) -> DatasetFiles | Waiting | str:
    """The files of the dataset the arrived blob belongs to, what it waits for, or a string saying why the
    blob is ignored."""
    listing = {b.name.split("/", 1)[1]: b.etag for b in datasets.list_blobs(name_starts_with=f"{dataset}/")}
    spec = storage.get_json(datasets, f"{dataset}/{naming.DATASET_FILE}") if naming.DATASET_FILE in listing else None
    present = sorted(f for f in listing if f != naming.DATASET_FILE)
    if spec is None:
        if arrived == naming.DATASET_FILE:
            return "dataset.json vanished"
        part = ("a hub shard" if SHARD_RE.search(arrived) else
                f"a split ({Path(arrived).name})" if split_of(arrived) != "hash" else None)
        if part:
            return Waiting(dataset, f"{naming.DATASET_FILE} ({arrived} is named as {part} of a multi-file dataset)",
                           present)
        return DatasetFiles(dataset, {arrived: listing.get(arrived, "")}, {})
    files, options = _read_spec(spec, dataset)
    if arrived != naming.DATASET_FILE and arrived not in files:
        return f"{arrived} is not listed in {dataset}/{naming.DATASET_FILE}: ignored"
    missing = [f for f in files if f not in listing]
    if missing:
        return Waiting(dataset, f"{len(missing)} of {len(files)} files listed in {naming.DATASET_FILE} "
                                f"(e.g. {missing[0]})", present)
    return DatasetFiles(dataset, {f: listing[f] for f in files}, options)


def _read_spec(spec, dataset: str) -> tuple[list[str], dict]:
    where = f"datasets/{dataset}/{naming.DATASET_FILE}"
    if not isinstance(spec, dict) or not isinstance(spec.get("files"), list) or not spec["files"]:
        raise DatasetRefused(f"{where} has no 'files' list", 'write {"files": ["data/train_sft-00000-of-00001.parquet", ...], '
                             '"options": {...}}', where=where)
    files = []
    for f in spec["files"]:
        if not isinstance(f, str) or f == naming.DATASET_FILE:
            raise DatasetRefused(f"{where} lists {f!r}, which is not a data file", "list file paths inside the dataset folder", where=where)
        try:
            naming.dataset_blob(f"{dataset}/{f}")
        except naming.InvalidName as exc:
            raise DatasetRefused(f"{where} lists an unusable file: {exc}", "fix the name in dataset.json", where=where) from None
        files.append(f)
    options = spec.get("options") or {}
    if not isinstance(options, dict):
        raise DatasetRefused(f"{where}: 'options' must be an object", "e.g. {\"split_pc\": 5}", where=where)
    return sorted(set(files)), options


def handle_dataset_blob(blob_client) -> FinetuneRequest | None:
    """Prepare the dataset the blob completes; return the fine-tune request to enqueue, or None."""
    blob_name = blob_client.blob_name
    if blob_client.container_name != DATASETS_CONTAINER:  # the host does not check an event's path: we do
        log.error("ignoring %s/%s: not in the %s container (check the Event Grid subscription's subject filter)",
                  blob_client.container_name, blob_name, DATASETS_CONTAINER)
        return None
    if naming.is_ignored_blob(blob_name):
        log.info("ignoring %s (not a dataset file)", blob_name)
        return None
    prepared = storage.container(PREPARED_CONTAINER)
    try:
        dataset, arrived = naming.dataset_blob(blob_name)
    except naming.InvalidName as exc:
        name = _report_invalid(prepared, blob_name, {"error": str(exc), "where": f"datasets/{blob_name}", "rows": {},
                                                     "fix": "rename the blob to datasets/<dataset>/<file>.jsonl|.jsonl.gz|.json|.parquet"})
        log.error("refused blob %r: %s (report: prepared/%s)", blob_name, exc, name)
        return None
    datasets = storage.container(DATASETS_CONTAINER)
    try:
        listed_at = utcnow()  # before the listing: a marker never claims more than the listing saw
        found = find_dataset_files(datasets, dataset, arrived)
        if isinstance(found, str):
            log.info("%s: %s", blob_name, found)
            return None
        if isinstance(found, Waiting):
            log.info("%s: %s waits for %s", blob_name, dataset, found.waiting_for)
            flows.record_waiting(storage.container(FLOWS_CONTAINER), dataset, found.waiting_for, found.files, listed_at)
            return None
        options = PrepareOptions.from_settings(found.options)
    except (DatasetRefused, ValueError) as exc:
        report = exc.report if isinstance(exc, DatasetRefused) else {
            "error": f"datasets/{dataset}/{naming.DATASET_FILE}: {exc}", "where": f"datasets/{dataset}", "rows": {},
            "fix": "fix the options in dataset.json"}
        name = _report_invalid(prepared, f"{dataset}/{naming.DATASET_FILE}", report)
        log.error("refused dataset %s: %s (report: prepared/%s)", dataset, report["error"], name)
        return None
    return _prepare_files(found, options, datasets, prepared)


def _prepare_files(found: DatasetFiles, options: PrepareOptions, datasets, prepared) -> FinetuneRequest | None:
    dataset = found.dataset
    # Index of (file names + etags + options) -> version: a repeat is recognised without downloading.
    key = hashlib.sha256((naming.canonical_json(found.files) + naming.canonical_json(options.identity())).encode())
    index = f"{dataset}/_sources/{key.hexdigest()[:24]}.json"
    known = storage.get_json(prepared, index)
    if known and storage.exists(prepared, f"{naming.prepared_prefix(dataset, known['version'])}/manifest.json"):
        request = _request(dataset, known["version"])
        log.info("%s already prepared as %s (same files and etags): re-emitting its request", dataset, known["version"])
        return request

    started = time.perf_counter()
    flow_log = storage.container(FLOWS_CONTAINER)
    with tempfile.TemporaryDirectory(prefix="tuneflow-prep-") as tmp:
        sources = []
        for i, (rel, etag) in enumerate(sorted(found.files.items())):
            src = Source(rel, Path(tmp) / f"in-{i}-{Path(rel).name}")
            src.sha256, src.bytes, src.etag = spool(datasets.get_blob_client(f"{dataset}/{rel}"), src.path, etag or None)
            sources.append(src)
        version = version_of(sources, options)
        request = _request(dataset, version)
        prefix = naming.prepared_prefix(dataset, version)
        if storage.exists(prepared, f"{prefix}/manifest.json"):
            log.info("%s already prepared as %s: re-emitting its request", dataset, prefix)
        else:
            out = Path(tmp) / "out"
            try:
                with budget().reserve(peak_memory_mb(sources)):
                    manifest = prepare_to_dir(dataset, sources, options, out, started)
            except DatasetRefused as refused:
                _write_refusal(prepared, flow_log, prefix, out, refused, request)
                return None
            for name in OUTPUT_FILES:
                with open(out / name, "rb") as f:
                    prepared.upload_blob(f"{prefix}/{name}", f, overwrite=True)
                failpoints.reached("arrival.output-uploaded")
            storage.put_json(prepared, f"{prefix}/manifest.json", manifest)  # last: it marks the version done
            flows.record(flow_log, request.flow_id, "prepared", dataset=dataset, version=version,
                         detail={"rows": manifest["rows"], "files": [d["blob"] for d in manifest["sources"]]})
            log.info("prepared %s -> prepared/%s: %s", dataset, prefix, manifest["rows"])
    storage.put_json(prepared, index, {"version": version, "files": found.files})
    return request


def _request(dataset: str, version: str) -> FinetuneRequest:
    from shared.messages import FinetuneRequest
    request = FinetuneRequest(flow_id=naming.flow_id(dataset, version, {}), dataset=dataset, version=version)
    bind_flow(request.flow_id)
    return request


def _write_refusal(prepared, flow_log, prefix, out: Path, refused: DatasetRefused, request: FinetuneRequest) -> None:
    rejected = out / "rejected.jsonl"
    if rejected.exists():
        with open(rejected, "rb") as f:
            prepared.upload_blob(f"{prefix}/rejected.jsonl", f, overwrite=True)
    storage.put_json(prepared, f"{prefix}/error.json", {**refused.report, "created_at": format_utc(utcnow())})
    flows.record(flow_log, request.flow_id, "refused", dataset=request.dataset, version=request.version,
                 detail={"error": refused.one_line(), "report": f"prepared/{prefix}/error.json"})
    log.error("refused %s: %s (report: prepared/%s/error.json)", request.dataset, refused.one_line(), prefix)
