"""deploy: a registered model version is rolled out into its dataset's endpoint, safely.

One endpoint per dataset (its name from the dataset and the workspace: the scoring URI and the key
outlive every model version), one deployment per model version. The steps (shared/rollout.py says
which), each recorded in the flow before the next begins, so a redelivery after a crash resumes
where the last attempt stopped and never repeats a traffic change:

  deployed      the new deployment exists, Succeeded, at 0 % (the record names the previous one)
  smoke-tested  it answered the first held-out prompt, sent straight to it (`azureml-model-deployment`)
  mirrored      it got TUNEFLOW_ROLLOUT_MIRROR_PCT of the live traffic, answers discarded, for a step wait
  shifted       one record per traffic step (`10`, `100`), each followed by a check of its errors
  rolled-out    it carries 100 %; the endpoint's expires-at is renewed; the previous deployment stays at
                0 % for TUNEFLOW_ROLLBACK_WINDOW
  rollout-failed  smoke test or a check failed: traffic back to the previous deployment, the new one deleted
  superseded    the endpoint already serves a model of a flow that began later (a late delivery): nothing done

Every traffic change also moves an expires-at sooner than one TTL from now to one TTL from now: an
endpoint is never reaped under a rollout still under way (a step wait, a redelivery after a crash).

A rollout holds its endpoint's lock (shared/locks.py) from start to verdict: two model versions of one
dataset never move its traffic at once. rolled-out, rollout-failed and superseded share one record
(the first verdict stands).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Callable

from shared import flows, locks, naming, rollout, settings
from shared.contracts import (MANAGED_BY_VALUE, TAG_DATASET, TAG_EXPIRES_AT, TAG_FLOW_ID, TAG_FLOW_STARTED_AT,
                              TAG_MANAGED_BY, TAG_MODEL, TAG_TRAFFIC_CHANGED_AT)
from shared.ml.base import AlreadyExists, EndpointInfo, MLBackend, MLError, NameTaken, NotFound, ServiceTimeout
from shared.reaper import tag
from shared.rollout import RolloutPolicy
from shared.scoring import held_out_prompt, reply_text, request_body
from shared.ttl import expires_at, format_utc, parse_expires_at, utcnow
from shared import failpoints

if TYPE_CHECKING:  # pydantic stays out of the worker's start-up
    from shared.messages import DeployRequest

log = logging.getLogger("tuneflow.deploy")
FIRST_ROW_LIMIT = 1024 * 1024
# A first answer can time out while the model server warms up (Azure answers 408): retry, then fail.
SMOKE_ATTEMPTS = 4


class RolloutFailed(Exception):
    """A check of the new deployment failed: the rollout is undone (reason in the message)."""


def handle_deploy(request: DeployRequest, backend: MLBackend, prepared, flow_log,
                  sleep: Callable[[float], None] = time.sleep,
                  clock: Callable[[], datetime] = utcnow) -> EndpointInfo | None:
    """Roll the request's model version out into its dataset's endpoint; None when there is nothing to do
    (reaped, already decided, superseded, refused)."""
    if _settled(request, flow_log):
        return None
    policy = RolloutPolicy.from_settings()
    name = naming.endpoint_name(request.dataset, backend.workspace_id)
    with locks.hold(flow_log, f"rollout-{name}", wait_s=policy.lock_wait_s):
        if _settled(request, flow_log):  # a concurrent delivery finished while this one waited
            return None
        steps = Rollout(request, backend, prepared, flow_log, policy, name, sleep, clock)
        verdict = flows.get(flow_log, request.flow_id, "rolled-out")
        if verdict is not None:  # rollout-failed, and its undoing was cut short: finish it (idempotent)
            steps.undo((flows.get(flow_log, request.flow_id, "deployed") or {}).get("detail", {}).get("previous", ""))
            return None
        return steps.run()


def _settled(request: DeployRequest, flow_log) -> bool:
    """Nothing left to do: reaped, refused, or a verdict that needs no more work."""
    if flows.reached(flow_log, request.flow_id, "reaped"):  # a late or repeated request must not bring it back
        log.info("flow %s was reaped: not deploying %s:%s again", request.flow_id, request.model_name,
                 request.model_version)
        return True
    verdict = flows.get(flow_log, request.flow_id, "rolled-out")
    if verdict is not None and verdict["stage"] != "rollout-failed":  # a failed one is re-checked: undone?
        log.info("flow %s: rollout already %s", request.flow_id, verdict["stage"])
        return True
    return flows.reached(flow_log, request.flow_id, "deploy-failed")


class Rollout:
    def __init__(self, request, backend: MLBackend, prepared, flow_log, policy: RolloutPolicy, endpoint: str,
                 sleep, clock):
        self.r, self.backend, self.prepared, self.flow_log, self.policy = request, backend, prepared, flow_log, policy
        self.endpoint, self.sleep, self.clock = endpoint, sleep, clock
        self.deployment = naming.deployment_name(request.model_version)
        self.model = f"{request.model_name}:{request.model_version}"

    def _record(self, stage: str, key: str = "", **fields) -> dict:
        return flows.record(self.flow_log, self.r.flow_id, stage, key=key, dataset=self.r.dataset,
                            version=self.r.version, job=self.r.job, model=self.model, endpoint=self.endpoint, **fields)

    def run(self) -> EndpointInfo | None:
        fid = self.r.flow_id
        try:
            endpoint = self._ensure_endpoint()
        except NameTaken as exc:  # no redelivery can fix it: record why and stop
            self._record("deploy-failed", detail={"error": str(exc)})
            log.error("deploy of %s failed: %s", self.model, exc)
            return None
        deployed = flows.get(self.flow_log, fid, "deployed")
        if deployed is None:
            started = flows.started_at(self.flow_log, fid)
            newer = rollout.superseded_by(endpoint, started, exclude=self.deployment)
            if newer is not None:
                reason = (f"{self.endpoint} already serves {newer.model or newer.name} of flow "
                          f"{newer.tags.get(TAG_FLOW_ID, '?')}, which began later ({newer.tags.get(TAG_FLOW_STARTED_AT)}"
                          f" > {started}): not rolled out over it")
                flows.decide_once(self.flow_log, fid, "superseded", endpoint=self.endpoint, detail={"reason": reason})
                log.warning("flow %s superseded: %s", fid, reason)
                return None
            current = rollout.serving(endpoint, exclude=self.deployment)
            previous = current.name if current else ""
            self._ensure_deployment(endpoint, started)
            failpoints.reached("deploy.deployment-created")
            deployed = self._record("deployed", detail={"deployment": self.deployment, "previous": previous})
        previous = (deployed.get("detail") or {}).get("previous", "")
        if not previous or self.backend.get_endpoint(self.endpoint).deployment(previous) is None:
            previous = ""  # the previous deployment is gone (reaped, deleted by hand): nothing to shift from
        try:
            self._smoke_test()
            self._mirror(previous)
            self._shift(previous)
        except RolloutFailed as exc:
            self._fail(previous, str(exc))
            return None
        return self._finish(previous)

    # -- the steps --------------------------------------------------------------------------------
    def _ensure_endpoint(self) -> EndpointInfo:
        try:
            existing = self.backend.get_endpoint(self.endpoint)
        except NotFound:
            existing = None
        if existing is not None and existing.provisioning_state == "Failed" and not existing.traffic:
            log.warning("endpoint %s exists, failed, with no traffic: deleting it and creating it again", self.endpoint)
            self.backend.delete_endpoint(self.endpoint)
            existing = None
        if existing is not None:
            return existing
        tags = {TAG_MANAGED_BY: MANAGED_BY_VALUE, TAG_DATASET: self.r.dataset, TAG_FLOW_ID: self.r.flow_id,
                TAG_EXPIRES_AT: expires_at(self.clock(), endpoint_ttl(self.r.dataset))}
        try:
            return self.backend.create_endpoint(self.endpoint, tags)
        except AlreadyExists:  # a concurrent or earlier delivery created it first
            return self.backend.get_endpoint(self.endpoint)

    def _ensure_deployment(self, endpoint: EndpointInfo, started: str) -> None:
        existing = endpoint.deployment(self.deployment)
        if existing is not None and existing.provisioning_state in ("Failed", "Canceled"):
            log.warning("deployment %s of %s is %s: deleting it and creating it again", self.deployment,
                        self.endpoint, existing.provisioning_state)
            self.backend.delete_deployment(self.endpoint, self.deployment)
            existing = None
        if existing is None and len(endpoint.deployments) >= rollout.MAX_DEPLOYMENTS:
            raise MLError(f"endpoint {self.endpoint} has {len(endpoint.deployments)} deployments, Azure's limit: the "
                          f"reaper removes the idle ones (oldest first); retried later")
        model = self.backend.get_model(self.r.model_name, self.r.model_version)
        tags = {TAG_FLOW_ID: self.r.flow_id, TAG_MODEL: self.model, TAG_FLOW_STARTED_AT: started}
        self.backend.create_deployment(self.endpoint, self.deployment, model, tags)  # waits; resumes one Creating

    def _smoke_test(self) -> None:
        if flows.reached(self.flow_log, self.r.flow_id, "smoke-tested"):
            return
        try:
            messages, reply = self._probe()
        except (MLError, ValueError, KeyError) as exc:
            self._record("smoke-failed", detail={"error": str(exc), "deployment": self.deployment})
            log.error("smoke test of %s/%s failed: %s", self.endpoint, self.deployment, exc)
            raise RolloutFailed(f"smoke test of {self.deployment} failed: {exc}") from None
        self._record("smoke-tested", detail={"deployment": self.deployment, "prompt": messages[-1]["content"][:200],
                                             "reply": reply[:500]})
        log.info("smoke test of %s/%s answered %d characters", self.endpoint, self.deployment, len(reply))
        failpoints.reached("deploy.smoke-tested")

    def _mirror(self, previous: str) -> None:
        pct = rollout.mirror_for(self.policy, previous)
        if not pct or flows.reached(self.flow_log, self.r.flow_id, "shifted", key=_key(rollout.steps_for(
                self.policy, previous)[0])):
            return
        mirrored = flows.get(self.flow_log, self.r.flow_id, "mirrored")
        if mirrored is None:
            self._set_traffic({previous: 100, self.deployment: 0}, {self.deployment: pct})
            failpoints.reached("deploy.mirror-set")
            mirrored = self._record("mirrored", detail={"mirror_pct": pct, "until": self._until(),
                                                        "errors_before": self._errors()})
        self._hold_and_check(mirrored["detail"], f"mirror of {pct} %")

    def _shift(self, previous: str) -> None:
        for pct in rollout.steps_for(self.policy, previous):
            step = flows.get(self.flow_log, self.r.flow_id, "shifted", key=_key(pct))
            if step is None:
                self._set_traffic(rollout.split(self.deployment, previous, pct), {},
                                  final=pct == 100)
                failpoints.reached(f"deploy.shifted-{pct}")
                step = self._record("shifted", key=_key(pct), detail={
                    "traffic": rollout.split(self.deployment, previous, pct), "until": self._until(),
                    "errors_before": self._errors()})
            if pct < 100:
                self._hold_and_check(step["detail"], f"{pct} % of the live traffic")

    def _finish(self, previous: str) -> EndpointInfo:
        failpoints.reached("deploy.before-verdict")
        endpoint = self.backend.get_endpoint(self.endpoint)
        keep_until = format_utc(self.clock() + self.policy.window) if previous else ""
        verdict = flows.decide_once(self.flow_log, self.r.flow_id, "rolled-out", dataset=self.r.dataset,
                                    model=self.model, endpoint=self.endpoint,
                                    expires_at=endpoint.tags.get(TAG_EXPIRES_AT, ""),
                                    detail={"deployment": self.deployment, "previous": previous,
                                            "keep_previous_until": keep_until})
        log.info("flow %s: %s %s on %s (previous: %s)", self.r.flow_id, verdict["stage"], self.deployment,
                 self.endpoint, previous or "none")
        return endpoint

    def _fail(self, previous: str, reason: str) -> None:
        """The verdict first (the first one stands), then the undoing: a redelivery after a crash in between
        finds the verdict and finishes the undoing."""
        verdict = flows.decide_once(self.flow_log, self.r.flow_id, "rollout-failed", dataset=self.r.dataset,
                                    model=self.model, endpoint=self.endpoint,
                                    detail={"reason": reason, "deployment": self.deployment,
                                            "traffic_back_to": previous})
        log.error("rollout of %s to %s failed: %s; traffic back to %s", self.deployment, self.endpoint, reason,
                  previous or "none")
        failpoints.reached("deploy.rollout-failed")
        if verdict["stage"] == "rollout-failed":
            self.undo(previous)

    def undo(self, previous: str) -> None:
        """Traffic back to the previous deployment (or none), the new deployment deleted; each idempotent."""
        endpoint = self.backend.get_endpoint(self.endpoint)
        if previous and endpoint.deployment(previous) is None:
            previous = ""
        if endpoint.deployment(self.deployment) is not None:
            self._set_traffic({previous: 100, self.deployment: 0} if previous else {self.deployment: 0}, {})
            self.backend.delete_deployment(self.endpoint, self.deployment)

    # -- helpers ----------------------------------------------------------------------------------
    def _set_traffic(self, traffic: dict, mirror: dict, final: bool = False) -> None:
        """One traffic update, skipped when the endpoint already has it (a redelivery after a crash just
        after the update). The final step also renews expires-at and names this flow on the endpoint."""
        endpoint = self.backend.get_endpoint(self.endpoint)
        want = {k: v for k, v in traffic.items() if v}
        want_mirror = {k: v for k, v in mirror.items() if v}
        if endpoint.traffic == want and endpoint.mirror_traffic == want_mirror:
            return
        tags = dict(endpoint.tags)
        tags[TAG_TRAFFIC_CHANGED_AT] = format_utc(self.clock())
        renewed = expires_at(self.clock(), endpoint_ttl(self.r.dataset))
        current = parse_expires_at(tag(tags, TAG_EXPIRES_AT))
        if final or current is None or current < parse_expires_at(renewed):
            # The TTL counts from the last successful rollout; while one is under way (its steps, a redelivery
            # after a crash) the endpoint does not expire under it: each step moves a sooner expiry to one TTL on.
            tags = {k: v for k, v in tags.items() if k.lower() != TAG_EXPIRES_AT}
            tags[TAG_EXPIRES_AT] = renewed
        if final:
            tags[TAG_FLOW_ID] = self.r.flow_id
        names = {d.name for d in endpoint.deployments}
        failpoints.reached("deploy.before-traffic")
        self.backend.set_traffic(self.endpoint, {k: v for k, v in traffic.items() if k in names},
                                 {k: v for k, v in mirror.items() if k in names}, tags)

    def _until(self) -> str:
        return (self.clock() + self.policy.step_wait).isoformat(timespec="milliseconds")

    def _errors(self) -> int | None:
        return self.backend.deployment_errors(self.endpoint, self.deployment)

    def _hold_and_check(self, step: dict, what: str) -> None:
        """Wait out the step (from its record: a redelivery waits only what is left), then check the new
        deployment: its live errors since the step began, and probes sent straight to it."""
        left = (parse_expires_at(step["until"]) - self.clock()).total_seconds()
        if left > 0:
            self.sleep(left)
        before, now = step.get("errors_before"), self._errors()
        if before is not None and now is not None and now > before:
            raise RolloutFailed(f"{self.deployment} answered {now - before} live request(s) with an error at {what}")
        for _ in range(self.policy.probes):
            try:
                self._probe()
            except (MLError, ValueError, KeyError) as exc:
                raise RolloutFailed(f"a probe of {self.deployment} at {what} failed: {exc}") from None

    def _probe(self) -> tuple[list, str]:
        messages = held_out_prompt(first_test_row(self.prepared, self.r.dataset, self.r.version))
        return messages, reply_text(_invoke(self.backend, self.endpoint, self.deployment, request_body(messages),
                                            self.sleep))


def _key(pct: int) -> str:
    return f"{pct:03d}"


def rollback(backend: MLBackend, flow_log, dataset: str, clock: Callable[[], datetime] = utcnow) -> dict:
    """`tuneflow rollback DATASET`: the traffic back to the previous deployment while it exists; recorded in
    the flow of the deployment that loses it (`rolled-back`). rollout.NoRollback when there is none."""
    name = naming.endpoint_name(dataset, backend.workspace_id)
    with locks.hold(flow_log, f"rollout-{name}", wait_s=60):
        try:
            endpoint = backend.get_endpoint(name)
        except NotFound:
            raise rollout.NoRollback(f"dataset {dataset} has no endpoint ({name}) in this workspace") from None
        current, previous = rollout.rollback_pair(endpoint)
        tags = {**endpoint.tags, TAG_TRAFFIC_CHANGED_AT: format_utc(clock()),
                TAG_FLOW_ID: previous.tags.get(TAG_FLOW_ID, endpoint.tags.get(TAG_FLOW_ID, ""))}
        backend.set_traffic(name, {previous.name: 100, current.name: 0}, {}, tags)
    detail = {"reason": f"rolled back by hand: traffic from {current.name} to {previous.name}",
              "from": current.name, "to": previous.name}
    flow_id = current.tags.get(TAG_FLOW_ID)
    if flow_id:
        flows.record(flow_log, flow_id, "rolled-back", dataset=dataset, endpoint=name, detail=detail)
    return {"endpoint": name, **detail}


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


def _invoke(backend: MLBackend, name: str, deployment: str, body: dict, sleep: Callable[[float], None]) -> object:
    for attempt in range(1, SMOKE_ATTEMPTS + 1):
        try:
            return backend.invoke(name, body, deployment=deployment)
        except ServiceTimeout as exc:
            if attempt == SMOKE_ATTEMPTS:
                raise
            log.info("request to %s/%s, attempt %d: %s; retrying", name, deployment, attempt, exc)
            sleep(min(10.0 * 2 ** attempt, 120.0))
