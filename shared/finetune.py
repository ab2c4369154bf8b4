"""Submit: a fine-tune request becomes one pipeline job with a deterministic name.

A redelivered request computes the same job name and finds the job instead of creating another.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from shared import flows, naming, settings, storage
from shared.contracts import (MANAGED_BY_VALUE, TAG_DATASET, TAG_DATASET_VERSION, TAG_FLOW_ID, TAG_GATE,
                              TAG_MANAGED_BY)
from shared.ml import base_model_name
from shared.ml.base import AlreadyExists, JobInfo, JobSpec, MLBackend

if TYPE_CHECKING:  # pydantic stays out of the worker's start-up
    from shared.messages import FinetuneRequest

log = logging.getLogger("tuneflow.submit")


def default_params() -> dict:
    return settings.get_json_object("TUNEFLOW_FINETUNE_PARAMS", '{"num_train_epochs": 1}')


def job_spec(request: FinetuneRequest) -> JobSpec:
    base_model = base_model_name()
    return JobSpec(
        name=naming.job_name(request.dataset, request.version, request.params, request.attempt, request.gate),
        experiment=f"chat_completion_{base_model}",
        display_name=f"{base_model}-{request.dataset}-{request.version[:8]}",
        base_model=base_model,
        train_uri=naming.prepared_uri(request.dataset, request.version, "train.jsonl"),
        test_uri=naming.prepared_uri(request.dataset, request.version, "test.jsonl"),
        params={**default_params(), **request.params},
        tags={TAG_MANAGED_BY: MANAGED_BY_VALUE, TAG_FLOW_ID: request.flow_id,
              TAG_DATASET: request.dataset, TAG_DATASET_VERSION: request.version,
              **({TAG_GATE: "off"} if request.gate == "off" else {})},
    )


class PreparedVersionMissing(LookupError):
    pass


def handle_request(request: FinetuneRequest, backend: MLBackend, prepared, flow_log) -> JobInfo:
    """`prepared` and `flow_log` are the `prepared` and `flows` container clients."""
    manifest = f"{naming.prepared_prefix(request.dataset, request.version)}/manifest.json"
    if not storage.exists(prepared, manifest):
        raise PreparedVersionMissing(
            f"prepared/{manifest} does not exist: the request names a version that was never prepared "
            f"(see `tuneflow status` for prepared versions)")
    spec = job_spec(request)
    try:
        job = backend.submit(spec)
        log.info("submitted job %s for %s/%s", spec.name, request.dataset, request.version)
    except AlreadyExists:
        job = backend.get_job(spec.name)
        log.info("job %s already exists (%s): nothing to submit", spec.name, job.status)
    flows.record(flow_log, request.flow_id, "submitted", dataset=request.dataset, version=request.version,
                 job=spec.name, detail={"params": spec.params, "request_params": request.params,
                                        "attempt": request.attempt})
    return job
