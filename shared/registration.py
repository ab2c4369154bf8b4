"""job_events: a finished pipeline run becomes a registered model and a deploy request.

Safe when two runs for the same job go at once (Event Grid redelivers after 30 s without an answer,
while the first run goes on): the model version is derived from the job, so both name the same
version and at most one is created (the local registry registers under a lock; Azure ML keeps one
version per name and number, and a run that loses the race is refused or updates it to the same
content); the flow record is first-write-wins; both send the deploy request with the same MessageId,
and Service Bus' duplicate detection drops the second. The `registered` record is written only once
the version exists, so a run that dies half-way leaves nothing that looks done.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from shared import flows, naming
from shared.contracts import TAG_BASE_MODEL, TAG_DATASET, TAG_DATASET_VERSION, TAG_FLOW_ID, TAG_MANAGED_BY, MANAGED_BY_VALUE
from shared.events import FAILED_STATES, Decision
from shared.ml import base_model_name
from shared.ml.base import AlreadyExists, MLBackend, MLError, NotFound

if TYPE_CHECKING:  # pydantic stays out of the worker's start-up
    from shared.messages import DeployRequest

log = logging.getLogger("tuneflow.job_events")


class JobNotFinished(MLError):
    """The event says done but the workspace does not (yet): raise so the event is redelivered."""


def handle_decision(decision: Decision, backend: MLBackend, flow_log) -> DeployRequest | None:
    if decision.action not in ("register", "record-failure"):
        log.info("ignoring event for %r: %s", decision.job, decision.reason)
        return None
    try:
        job = backend.get_job(decision.job)
    except NotFound:
        log.warning("ignoring event for job %s: the workspace has no such job", decision.job)
        return None
    flow_id = job.tags.get(TAG_FLOW_ID) or decision.flow_id
    dataset, dataset_version = job.tags.get(TAG_DATASET, ""), job.tags.get(TAG_DATASET_VERSION, "")
    if decision.action == "record-failure":
        if job.status not in FAILED_STATES:  # a late or repeated event: the workspace knows better
            log.info("ignoring %s event for job %s: the workspace says %s", decision.status, job.name, job.status)
            return None
        flows.record(flow_log, flow_id, "job-failed", dataset=dataset, version=dataset_version, job=job.name,
                     detail={"status": decision.status, "error": job.error})
        log.warning("job %s %s: %s", job.name, decision.status.lower(), job.error or "no error recorded")
        return None
    if job.status != "Completed":
        raise JobNotFinished(f"event says job {job.name} completed, workspace says {job.status}: retry later")
    name = naming.model_name(base_model_name(), dataset)
    model_version = naming.model_version(job.name)
    tags = {TAG_MANAGED_BY: MANAGED_BY_VALUE, TAG_FLOW_ID: flow_id, TAG_DATASET: dataset,
            TAG_DATASET_VERSION: dataset_version, "source-job": job.name}
    if job.tags.get(TAG_BASE_MODEL):  # the registry version it was tuned from: deploy reads its sizes there
        tags[TAG_BASE_MODEL] = job.tags[TAG_BASE_MODEL]
    _register_once(backend, name, model_version, job.name, tags)
    flows.record(flow_log, flow_id, "registered", dataset=dataset, version=dataset_version, job=job.name,
                 model=f"{name}:{model_version}", detail={"metrics": job.metrics})
    from shared.messages import DeployRequest
    return DeployRequest(flow_id=flow_id, dataset=dataset, version=dataset_version, job=job.name,
                         model_name=name, model_version=model_version)


def _register_once(backend: MLBackend, name: str, version: str, job: str, tags: dict) -> None:
    """Register `name:version` unless it exists. A refused create counts as success when the version is there
    afterwards (a concurrent run created it first; Azure ML may answer the second PUT with a conflict)."""
    try:
        backend.register_model(name, version, job, tags)
        log.info("registered %s version %s from job %s", name, version, job)
        return
    except AlreadyExists:
        log.info("model %s version %s already registered: sending the deploy request again", name, version)
        return
    except MLError as refused:
        try:
            backend.get_model(name, version)
        except NotFound:
            raise refused from None
        log.info("model %s version %s registered by a concurrent run (%s)", name, version, refused)
