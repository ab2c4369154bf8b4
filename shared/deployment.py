"""deploy: a registered model version becomes a key-protected endpoint, smoke-tested once.

The endpoint name is derived from the model version and the workspace (Azure makes endpoint names
unique per region), so a redelivered request finds the endpoint. Its `expires-at` is computed once,
when the endpoint is created, and never recomputed. An endpoint counts as done only when it is
`Succeeded` with a `Succeeded` deployment carrying all the traffic; anything less is handed back
to the backend, which resumes or repairs it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Callable

from shared import flows, naming, settings
from shared.contracts import (MANAGED_BY_VALUE, TAG_DATASET, TAG_EXPIRES_AT, TAG_FLOW_ID, TAG_MANAGED_BY,
                              TAG_MODEL)
from shared.ml.base import AlreadyExists, EndpointInfo, MLBackend, MLError, NameTaken, NotFound, ServiceTimeout
from shared.scoring import held_out_prompt, reply_text, request_body
from shared.ttl import expires_at, utcnow

if TYPE_CHECKING:  # pydantic stays out of the worker's start-up
    from shared.messages import DeployRequest

log = logging.getLogger("tuneflow.deploy")
FIRST_ROW_LIMIT = 1024 * 1024
# A first answer can time out while the model server warms up (Azure answers 408): retry, then fail.
SMOKE_ATTEMPTS = 4


def handle_deploy(request: DeployRequest, backend: MLBackend, prepared, flow_log,
                  sleep: Callable[[float], None] = time.sleep) -> EndpointInfo | None:
    name = naming.endpoint_name(request.model_name, request.model_version, backend.workspace_id)
    if flows.reached(flow_log, request.flow_id, "reaped"):  # a late or repeated request must not bring it back
        log.info("flow %s was reaped: not deploying %s:%s again", request.flow_id, request.model_name,
                 request.model_version)
        return None
    try:
        endpoint = _ensure_endpoint(name, request, backend)
    except NameTaken as exc:  # no redelivery can fix it: record why and stop
        flows.record(flow_log, request.flow_id, "deploy-failed", dataset=request.dataset, version=request.version,
                     job=request.job, model=f"{request.model_name}:{request.model_version}", endpoint=name,
                     detail={"error": str(exc)})
        log.error("deploy of %s:%s failed: %s", request.model_name, request.model_version, exc)
        return None
    flows.record(flow_log, request.flow_id, "deployed", dataset=request.dataset, version=request.version,
                 job=request.job, model=f"{request.model_name}:{request.model_version}", endpoint=name,
                 expires_at=endpoint.tags.get(TAG_EXPIRES_AT, ""))
    smoke_test(name, request, backend, prepared, flow_log, sleep)
    return endpoint


def endpoint_ttl(dataset: str) -> str:
    """TUNEFLOW_ENDPOINT_TTL, or the dataset's own from TUNEFLOW_ENDPOINT_TTL_BY_DATASET; checked here,
    so a bad value fails the deploy with the setting's name instead of tagging garbage."""
    from shared.ttl import InvalidTTL, parse_ttl
    by_dataset = settings.get_json_object("TUNEFLOW_ENDPOINT_TTL_BY_DATASET", '{"ultrachat-200k": "8h"}')
    name, ttl = (("TUNEFLOW_ENDPOINT_TTL_BY_DATASET", by_dataset[dataset]) if dataset in by_dataset
                 else ("TUNEFLOW_ENDPOINT_TTL", settings.get("TUNEFLOW_ENDPOINT_TTL")))
    try:
        parse_ttl(str(ttl))
    except InvalidTTL as exc:
        raise settings.SettingError(f"{name}: {exc}") from None
    return str(ttl)


def _ensure_endpoint(name: str, request: DeployRequest, backend: MLBackend) -> EndpointInfo:
    try:
        existing = backend.get_endpoint(name)
    except NotFound:
        existing = None
    if existing is not None and serves(existing):
        log.info("endpoint %s already serves", name)
        return existing
    if existing is not None and existing.provisioning_state == "Failed":
        log.warning("endpoint %s exists but failed: deleting and deploying again", name)
        backend.delete_endpoint(name)
    elif existing is not None:  # a crash or timeout half-way, or a failed deployment: the backend resumes or repairs
        log.info("endpoint %s is not serving yet (%s; deployments %s): resuming", name, existing.provisioning_state,
                 ", ".join(f"{d.name} {d.provisioning_state} {d.traffic}%" for d in existing.deployments) or "none")
    model = backend.get_model(request.model_name, request.model_version)
    tags = {TAG_MANAGED_BY: MANAGED_BY_VALUE, TAG_FLOW_ID: request.flow_id, TAG_DATASET: request.dataset,
            TAG_MODEL: f"{request.model_name}:{request.model_version}",
            TAG_EXPIRES_AT: expires_at(utcnow(), endpoint_ttl(request.dataset))}
    try:
        return backend.deploy(name, model, tags)
    except AlreadyExists:  # a concurrent delivery created it first
        return backend.get_endpoint(name)


def serves(endpoint: EndpointInfo) -> bool:
    """The endpoint is up and a Succeeded deployment carries all its traffic."""
    return endpoint.provisioning_state == "Succeeded" and any(
        d.provisioning_state == "Succeeded" and d.traffic == 100 for d in endpoint.deployments)


def first_test_row(prepared, dataset: str, version: str) -> dict:
    """The first row of the prepared test split, read by chunks up to its first newline."""
    blob = prepared.get_blob_client(f"{naming.prepared_prefix(dataset, version)}/test.jsonl")
    buf = b""
    for chunk in blob.download_blob().chunks():
        buf += chunk
        if b"\n" in buf or len(buf) > FIRST_ROW_LIMIT:
            break
    return json.loads(buf.split(b"\n", 1)[0])


def _invoke(backend: MLBackend, name: str, body: dict, sleep: Callable[[float], None]) -> object:
    for attempt in range(1, SMOKE_ATTEMPTS + 1):
        try:
            return backend.invoke(name, body)
        except ServiceTimeout as exc:
            if attempt == SMOKE_ATTEMPTS:
                raise
            log.info("smoke test of %s, attempt %d: %s; retrying", name, attempt, exc)
            sleep(min(10.0 * 2 ** attempt, 120.0))


def smoke_test(name: str, request: DeployRequest, backend: MLBackend, prepared, flow_log,
               sleep: Callable[[float], None] = time.sleep) -> None:
    try:
        messages = held_out_prompt(first_test_row(prepared, request.dataset, request.version))
        reply = reply_text(_invoke(backend, name, request_body(messages), sleep))
    except (MLError, ValueError, KeyError) as exc:
        flows.record(flow_log, request.flow_id, "smoke-failed", endpoint=name, detail={"error": str(exc)})
        log.error("smoke test of %s failed: %s", name, exc)
        return
    flows.record(flow_log, request.flow_id, "smoke-tested", endpoint=name,
                 detail={"prompt": messages[-1]["content"][:200], "reply": reply[:500]})
    log.info("smoke test of %s answered %d characters", name, len(reply))
