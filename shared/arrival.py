"""Data arrival: one dataset blob in, one prepared version (or an error report) out.

Order of writes, so that nothing half-done looks done: the data files first, `manifest.json` last,
and the queue message only after the manifest (the caller's output binding is written by the host
after the function returns). A version whose manifest exists is complete; a repeated trigger then
re-emits the same request (the submit step is idempotent) instead of preparing again.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from pathlib import Path

from shared import flows, naming, storage
from shared.contracts import FLOWS_CONTAINER, PREPARED_CONTAINER
from shared.dataset import OUTPUT_FILES, DatasetRefused, PrepareOptions, prepare
from shared.messages import FinetuneRequest
from shared.observability import bind_flow
from shared.ttl import format_utc, utcnow

log = logging.getLogger("tuneflow.arrival")
CHUNK = 4 * 1024 * 1024


def spool(blob_client, dest: Path) -> tuple[str, int, str]:
    """Copy the blob to a local file by chunks (never whole in memory); return (sha256, bytes, etag).

    The download is pinned to the etag seen first, so a blob overwritten mid-read fails loudly
    instead of yielding a mix of two versions.
    """
    props = blob_client.get_blob_properties()
    h = hashlib.sha256()
    size = 0
    stream = blob_client.download_blob(etag=props.etag, match_condition=_if_match())
    with open(dest, "wb") as f:
        for chunk in stream.chunks():
            h.update(chunk)
            f.write(chunk)
            size += len(chunk)
    return h.hexdigest(), size, props.etag


def _not_found():
    from azure.core.exceptions import ResourceNotFoundError
    return ResourceNotFoundError


def _if_match():
    from azure.core import MatchConditions
    return MatchConditions.IfNotModified


def handle_dataset_blob(blob_client, options: PrepareOptions | None = None) -> FinetuneRequest | None:
    """Prepare the dataset blob; return the fine-tune request to enqueue, or None when refused."""
    blob_name = blob_client.blob_name
    if naming.is_ignored_blob(blob_name):
        log.info("ignoring %s (not a dataset file)", blob_name)
        return None
    options = options or PrepareOptions.from_settings()
    prepared = storage.container(PREPARED_CONTAINER)
    flow_log = storage.container(FLOWS_CONTAINER)
    try:
        dataset, filename = naming.dataset_blob(blob_name)
    except naming.InvalidName as exc:
        report = {"error": str(exc), "where": f"datasets/{blob_name}", "rows": {},
                  "fix": "rename the blob to datasets/<dataset>/<file>.jsonl|.json|.parquet"}
        name = f"_invalid-names/{hashlib.sha256(blob_name.encode()).hexdigest()[:16]}/error.json"
        storage.put_json(prepared, name, report)
        log.error("refused blob %r: %s (report: prepared/%s)", blob_name, exc, name)
        return None

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tuneflow-prep-") as tmp:
        src = Path(tmp) / filename
        try:
            sha, size, etag = spool(blob_client, src)
        except _not_found() as exc:  # deleted since the trigger fired: nothing to prepare
            log.warning("dataset blob %s is gone (%s): nothing to prepare", blob_name, type(exc).__name__)
            return None
        version = naming.dataset_version(sha, options.as_dict())
        prefix = naming.prepared_prefix(dataset, version)
        request = FinetuneRequest(flow_id=naming.flow_id(dataset, version, {}), dataset=dataset, version=version)
        bind_flow(request.flow_id)
        if storage.exists(prepared, f"{prefix}/manifest.json"):
            log.info("%s/%s already prepared as %s; re-emitting its request", dataset, filename, prefix)
            return request
        out = Path(tmp) / "out"
        source = {"blob": f"datasets/{blob_name}", "etag": etag, "bytes": size, "sha256": sha}
        try:
            result = prepare(src, filename, out, options)
        except DatasetRefused as refused:
            _write_refusal(prepared, flow_log, prefix, out, refused, source, request)
            return None
        for name in OUTPUT_FILES:
            with open(out / name, "rb") as f:
                prepared.upload_blob(f"{prefix}/{name}", f, overwrite=True)
        prepare_s = result.pop("seconds")
        manifest = {"dataset": dataset, "version": version, "flow_id": request.flow_id, "sources": [source],
                    "options": options.as_dict(), **result,
                    "timings": {"prepare_s": prepare_s, "total_s": round(time.perf_counter() - started, 3)},
                    "created_at": format_utc(utcnow())}
        storage.put_json(prepared, f"{prefix}/manifest.json", manifest)
    flows.record(flow_log, request.flow_id, "prepared", dataset=dataset, version=version,
                 detail={"rows": manifest["rows"], "blob": f"datasets/{blob_name}"})
    log.info("prepared %s -> prepared/%s: %s", blob_name, prefix, manifest["rows"])
    return request


def _write_refusal(prepared, flow_log, prefix, out: Path, refused: DatasetRefused, source: dict,
                   request: FinetuneRequest) -> None:
    rejected = out / "rejected.jsonl"
    if rejected.exists():
        with open(rejected, "rb") as f:
            prepared.upload_blob(f"{prefix}/rejected.jsonl", f, overwrite=True)
    report = {**refused.report, "source": source, "created_at": format_utc(utcnow())}
    storage.put_json(prepared, f"{prefix}/error.json", report)
    flows.record(flow_log, request.flow_id, "refused", dataset=request.dataset, version=request.version,
                 detail={"error": refused.one_line(), "report": f"prepared/{prefix}/error.json"})
    log.error("refused %s: %s (report: prepared/%s/error.json)", source["blob"], refused.one_line(), prefix)
