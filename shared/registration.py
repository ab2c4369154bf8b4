"""job_events: a finished pipeline run becomes a registered model and a deploy request.

Safe when two runs for the same job go at once (Event Grid redelivers after 30 s without an answer,
while the first run goes on): the model version is derived from the job, so both name the same
version and at most one is created (the local registry registers under a lock; Azure ML keeps one
version per name and number, and a run that loses the race is refused or updates it to the same
content); the flow record is first-write-wins; both send the deploy request with the same MessageId,
and Service Bus' duplicate detection drops the second. The `registered` record is written only once
the version exists, so a run that dies half-way leaves nothing that looks done.

Between registration and the deploy request stands the quality gate (`shared/gate.py`): its verdict is
recorded once per flow (`gate-passed` or `gate-failed`, one record for both), and every delivery acts on
the verdict that stands; metrics not reported yet raise before anything is written.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from shared import flows, gate, naming, settings
from shared.contracts import (MANAGED_BY_VALUE, TAG_BASE_EVAL_LOSS, TAG_BASE_MODEL, TAG_DATASET, TAG_DATASET_VERSION,
                              TAG_EVAL_LOSS, TAG_FLOW_ID, TAG_GATE, TAG_MANAGED_BY, TAG_MODEL)
from shared.events import FAILED_STATES, Decision
from shared.ml import base_model_name
from shared.ml.base import AlreadyExists, MLBackend, MLError, NotFound
from shared.ttl import parse_ttl, utcnow

if TYPE_CHECKING:  # pydantic stays out of the worker's start-up
    from shared.messages import DeployRequest

log = logging.getLogger("tuneflow.job_events")


class JobNotFinished(MLError):
    """The event says done but the workspace does not (yet): raise so the event is redelivered."""


class MetricsNotReady(MLError):
    """The job is done but its metrics are not reported yet (Azure ML logs them late): raise to be redelivered."""


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
    fields = dict(dataset=dataset, version=dataset_version, job=job.name, model=f"{name}:{model_version}")
    metrics = backend.job_metrics(job)
    verdict = gate.judge(_evidence(decision, job, metrics, backend, dataset, dataset_version, f"{name}:{model_version}"))
    if verdict.verdict == "retry":  # nothing written yet: the redelivered event starts from here
        raise MetricsNotReady(f"job {job.name}: {verdict.reason}; the event will be delivered again")
    tags = {TAG_MANAGED_BY: MANAGED_BY_VALUE, TAG_FLOW_ID: flow_id, TAG_DATASET: dataset,
            TAG_DATASET_VERSION: dataset_version, "source-job": job.name}
    if job.tags.get(TAG_BASE_MODEL):  # the registry version it was tuned from: deploy reads its sizes there
        tags[TAG_BASE_MODEL] = job.tags[TAG_BASE_MODEL]
    for tag, key in ((TAG_EVAL_LOSS, "eval_loss"), (TAG_BASE_EVAL_LOSS, "base_eval_loss")):
        if gate.as_float(metrics.get(key)) is not None:
            tags[tag] = f"{gate.as_float(metrics[key]):.6g}"
    _register_once(backend, name, model_version, job.name, tags)
    flows.record(flow_log, flow_id, "registered", **fields, detail={"metrics": metrics})
    stage = "gate-passed" if verdict.deploys else "gate-failed"
    standing = flows.decide_once(flow_log, flow_id, stage, **fields, detail=verdict.as_detail())
    if standing["stage"] != "gate-passed":
        log.warning("gate failed for %s:%s (%s): %s", name, model_version, standing["detail"]["rule"],
                    standing["detail"]["reason"])
        return None
    log.info("gate %s for %s:%s: %s", standing["detail"]["verdict"], name, model_version, standing["detail"]["reason"])
    from shared.messages import DeployRequest
    return DeployRequest(flow_id=flow_id, dataset=dataset, version=dataset_version, job=job.name,
                         model_name=name, model_version=model_version)


def _evidence(decision: Decision, job, metrics: dict, backend: MLBackend, dataset: str, dataset_version: str,
              model: str) -> gate.Evidence:
    setting = settings.get("TUNEFLOW_GATE").strip().lower()
    if setting not in ("on", "off"):
        raise settings.SettingError(f"TUNEFLOW_GATE={setting!r}: use `on` (judge every fine-tune) or `off` (deploy unjudged)")
    switched_off_by = ("request" if job.tags.get(TAG_GATE, "").lower() == "off"
                       else "setting" if setting == "off" else "")
    serving_loss, serving_model = (None, "") if switched_off_by else serving(backend, dataset, dataset_version, model)
    return gate.Evidence(
        eval_loss=gate.as_float(metrics.get("eval_loss")), base_eval_loss=gate.as_float(metrics.get("base_eval_loss")),
        min_improvement=settings.get_float("TUNEFLOW_GATE_MIN_IMPROVEMENT", 0.0, 0.99),
        serving_eval_loss=serving_loss, serving_model=serving_model, switched_off_by=switched_off_by,
        waited_s=_since(decision.at), metrics_wait_s=parse_ttl(settings.get("TUNEFLOW_GATE_METRICS_WAIT")).total_seconds())


def _since(at: str) -> float:
    from datetime import datetime, timezone
    try:
        when = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        return 0.0  # no usable event time: count from now, the wait starts with this delivery
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (utcnow() - when).total_seconds())


def serving(backend: MLBackend, dataset: str, dataset_version: str, own_model: str) -> tuple[float | None, str]:
    """The lowest eval loss among the models that serve a flow of this dataset version (same test rows), and
    which model that is; (None, "") when none serves or none carries its figures."""
    best: tuple[float | None, str] = (None, "")
    for endpoint in backend.list_endpoints():
        if endpoint.tags.get(TAG_MANAGED_BY) != MANAGED_BY_VALUE or endpoint.tags.get(TAG_DATASET) != dataset \
                or endpoint.provisioning_state != "Succeeded":
            continue
        for deployment in endpoint.deployments:  # those with live traffic serve
            model = deployment.tags.get(TAG_MODEL, "") or deployment.model
            if deployment.provisioning_state != "Succeeded" or not deployment.traffic or not model \
                    or model == own_model or ":" not in model:
                continue
            try:
                ref = backend.get_model(*model.rsplit(":", 1))
            except NotFound:
                continue
            loss = gate.as_float(ref.tags.get(TAG_EVAL_LOSS))
            if ref.tags.get(TAG_DATASET_VERSION) == dataset_version and loss is not None \
                    and (best[0] is None or loss < best[0]):
                best = (loss, model)
    return best


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
