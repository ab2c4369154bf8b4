"""The reaper: delete managed endpoints whose time is up, and nothing else. Rules as data, a safety
gate, then actions that are confirmed.

Rules, first match wins (`RULES`):
  not-managed     keep   not tagged managed-by=tuneflow (never ours to touch)
  do-not-delete   keep   tagged do-not-delete=true (any key case)
  in-transition   keep   the endpoint or any of its deployments Creating, Updating or Deleting
                         (a large model's deployment takes 20+ minutes: whatever the grace)
  expired         delete expires-at (ISO 8601 with an offset) has passed
  broken          delete no deployment, or a failed one, for longer than the grace period
  broken-grace    keep   broken, still within the grace period (or its age is unknown)
  bad-expiry      flag   expires-at missing or unparseable: reported every run, never a reason to delete
  not-expired     keep   time left

Safety gate (`circuit_breaker`): when one run would delete more than `max_deletes` endpoints, or
(from `share_floor` deletions up) more than `max_delete_share` of the managed ones, it deletes
nothing, flags each would-be deletion and raises an alert.

Actions (`reap`): one run at a time (a blob lease; an overlapping run backs off, and deletes are
idempotent anyway), bounded concurrency, each delete retried with back-off when throttled and
confirmed by polling until the endpoint is gone; one audit record per decision, in storage and in
the log as structured data, with the instance-hours used and the cost a deletion avoids per day.

A timer run is never delivered again, so a run that dies between deleting an endpoint and recording
it would leave its flow looking alive for good. Each deletion is therefore written ahead
(`pending/<endpoint>.json` in the state container) and cleared once recorded; the next run records
the pending deletions whose endpoint is gone (`reaped`, saying which run deleted it).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Callable

from shared import flows, settings
from shared.contracts import MANAGED_BY_VALUE, TAG_DO_NOT_DELETE, TAG_EXPIRES_AT, TAG_FLOW_ID, TAG_MANAGED_BY
from shared.ml.base import EndpointInfo, MLBackend, NotFound, Throttled
from shared.ttl import format_utc, parse_expires_at, parse_ttl

log = logging.getLogger("tuneflow.reaper")
TRANSITIONAL_STATES = ("creating", "updating", "deleting")
FAILED_STATES = ("failed", "canceled")
LOCK_BLOB = "lock"
FIRST_SEEN_BLOB = "first-seen.json"
PENDING_PREFIX = "pending/"


@dataclass(frozen=True)
class ReaperPolicy:
    grace: timedelta = timedelta(minutes=30)
    max_deletes: int = 10
    max_delete_share: float = 0.5
    share_floor: int = 3  # the share rule applies from this many deletions up (1 of 1 is not a flood)
    concurrency: int = 4
    attempts: int = 4
    confirm_timeout_s: float = 480.0
    prices: dict = field(default_factory=dict)  # SKU (lower case) -> price per instance-hour

    @classmethod
    def from_settings(cls) -> "ReaperPolicy":
        example = '{"Standard_NC24ads_A100_v4": 3.67}'
        prices = {}
        for sku, price in settings.get_json_object("TUNEFLOW_SKU_PRICES", example).items():
            try:
                prices[str(sku).lower()] = float(price)
            except (TypeError, ValueError):
                raise settings.SettingError(f"TUNEFLOW_SKU_PRICES: the price of {sku!r} is {price!r}, not a number "
                                            f"per instance-hour; use e.g. {example}") from None
        return cls(grace=parse_ttl(settings.get("TUNEFLOW_REAPER_GRACE")),
                   max_deletes=settings.get_int("TUNEFLOW_REAPER_MAX_DELETES", 0),
                   max_delete_share=settings.get_float("TUNEFLOW_REAPER_MAX_DELETE_SHARE", 0.0, 1.0),
                   concurrency=settings.get_int("TUNEFLOW_REAPER_CONCURRENCY", 1), prices=prices)


@dataclass(frozen=True)
class ReapDecision:
    endpoint: str
    action: str  # delete | keep | flag
    rule: str
    reason: str
    expires_at: str = ""
    seconds_left: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def tag(tags: dict, key: str) -> str | None:
    """Tag lookup that tolerates key case variants (`Expires-At`, `MANAGED-BY`)."""
    for k, v in (tags or {}).items():
        if str(k).lower() == key:
            return v
    return None


def _state(ep: EndpointInfo) -> str:
    return (ep.provisioning_state or "").lower()


def _broken(ep: EndpointInfo) -> str | None:
    if _state(ep) in FAILED_STATES:
        return f"endpoint provisioning {ep.provisioning_state}"
    if not ep.deployments:
        return "no deployment"
    failed = [d.name for d in ep.deployments if (d.provisioning_state or "").lower() in FAILED_STATES]
    return f"deployment {', '.join(failed)} failed" if failed else None


def decide(ep: EndpointInfo, now: datetime, policy: ReaperPolicy, first_seen: dict | None = None) -> ReapDecision:
    tags = ep.tags or {}
    raw_expiry = tag(tags, TAG_EXPIRES_AT)
    expiry = parse_expires_at(raw_expiry)
    left = int((expiry - now).total_seconds()) if expiry else None
    d = lambda action, rule, reason: ReapDecision(ep.name, action, rule, reason,  # noqa: E731
                                                  format_utc(expiry) if expiry else str(raw_expiry or ""), left)
    if str(tag(tags, TAG_MANAGED_BY) or "").strip().lower() != MANAGED_BY_VALUE:
        return d("keep", "not-managed", f"not tagged {TAG_MANAGED_BY}={MANAGED_BY_VALUE}")
    if str(tag(tags, TAG_DO_NOT_DELETE) or "").strip().lower() == "true":
        return d("keep", "do-not-delete", f"tagged {TAG_DO_NOT_DELETE}=true")
    if _state(ep) in TRANSITIONAL_STATES:
        return d("keep", "in-transition", f"provisioning state is {ep.provisioning_state}")
    moving = [f"{x.name} {x.provisioning_state}" for x in ep.deployments
              if (x.provisioning_state or "").lower() in TRANSITIONAL_STATES]
    if moving:
        return d("keep", "in-transition", f"deployment {', '.join(moving)}")
    if expiry is not None and expiry <= now:
        return d("delete", "expired", f"expired at {format_utc(expiry)}")
    broken = _broken(ep)
    if broken:
        since = parse_expires_at(ep.created_at) or parse_expires_at((first_seen or {}).get(ep.name))
        if since is None:
            return d("keep", "broken-grace", f"{broken}; its age is unknown, so it waits (first seen this run)")
        age = now - since
        if age >= policy.grace:
            return d("delete", "broken", f"{broken} for {int(age.total_seconds())} s (grace {int(policy.grace.total_seconds())} s)")
        return d("keep", "broken-grace", f"{broken}; {int((policy.grace - age).total_seconds())} s of grace left")
    if expiry is None:
        return d("flag", "bad-expiry", f"{TAG_EXPIRES_AT}={raw_expiry!r} is missing or not ISO 8601 with an offset: "
                                       f"never deleted on that basis; fix the tag (`tuneflow endpoints extend`)")
    return d("keep", "not-expired", f"{left} s left")


def circuit_breaker(decisions: list[ReapDecision], policy: ReaperPolicy) -> tuple[list[ReapDecision], str]:
    """(decisions, alert): every delete becomes a flag when the run would delete too much."""
    deletes = sum(d.action == "delete" for d in decisions)
    managed = sum(d.rule != "not-managed" for d in decisions)
    alert = ""
    if deletes > policy.max_deletes:
        alert = f"{deletes} deletions planned, more than TUNEFLOW_REAPER_MAX_DELETES={policy.max_deletes}"
    elif deletes >= policy.share_floor and managed and deletes / managed > policy.max_delete_share:
        alert = (f"{deletes} of {managed} managed endpoints planned for deletion ({deletes / managed:.0%}), more "
                 f"than TUNEFLOW_REAPER_MAX_DELETE_SHARE={policy.max_delete_share:.0%}")
    if not alert:
        return decisions, ""
    tripped = [replace(d, action="flag", rule="circuit-breaker", reason=f"{d.reason}; not deleted: {alert}")
               if d.action == "delete" else d for d in decisions]
    return tripped, alert


def plan(endpoints: list[EndpointInfo], now: datetime, policy: ReaperPolicy | None = None,
         first_seen: dict | None = None) -> tuple[list[ReapDecision], str]:
    policy = policy or ReaperPolicy()
    return circuit_breaker([decide(ep, now, policy, first_seen) for ep in endpoints], policy)


# -- actions ---------------------------------------------------------------------------------------

def delete_confirmed(backend: MLBackend, name: str, policy: ReaperPolicy,
                     sleep: Callable[[float], None] = time.sleep) -> tuple[str, int]:
    """Delete and poll until gone; retry with back-off when throttled or when the endpoint stays.
    (outcome, attempts): outcome is `confirmed`, `already-gone` or `unconfirmed`."""
    for attempt in range(1, policy.attempts + 1):
        try:
            backend.delete_endpoint(name)
        except NotFound:
            return ("already-gone" if attempt == 1 else "confirmed"), attempt
        except Throttled as exc:
            sleep(exc.retry_after or min(2 ** attempt, 60))
            continue
        if _gone_within(backend, name, policy.confirm_timeout_s, sleep):
            return "confirmed", attempt
        log.warning("reaper: %s still exists after its delete was accepted (attempt %d)", name, attempt)
    return "unconfirmed", policy.attempts


def _gone_within(backend: MLBackend, name: str, timeout_s: float, sleep) -> bool:
    waited, interval = 0.0, 1.0
    while True:
        try:
            backend.get_endpoint(name)
        except NotFound:
            return True
        except Throttled as exc:
            interval = max(interval, exc.retry_after or interval)
        if waited >= timeout_s:
            return False
        sleep(interval)
        waited += interval
        interval = min(interval * 2, 30.0)


def _cost(ep: EndpointInfo, now: datetime, prices: dict) -> dict:
    count = sum(max(d.instance_count, 0) for d in ep.deployments)
    created = parse_expires_at(ep.created_at)
    hours = round((now - created).total_seconds() / 3600 * count, 2) if created else None
    per_hour = sum(prices.get((d.instance_type or "").lower(), 0.0) * max(d.instance_count, 0) for d in ep.deployments)
    unpriced = sorted({d.instance_type for d in ep.deployments if (d.instance_type or "").lower() not in prices})
    return {"instance_hours_used": hours, "price_per_hour": round(per_hour, 4),
            "cost_avoided_per_day": round(per_hour * 24, 2), "unpriced_skus": unpriced}


@dataclass
class ReapRun:
    run_id: str
    decisions: list[ReapDecision]
    alert: str = ""
    outcomes: dict = field(default_factory=dict)  # endpoint -> confirmed | already-gone | unconfirmed | error
    skipped: str = ""  # why the run did nothing (another run holds the lock)


def reap(backend: MLBackend, now: datetime, policy: ReaperPolicy | None = None, dry_run: bool = False,
         flow_log=None, state=None, sleep: Callable[[float], None] = time.sleep) -> ReapRun:
    """One reaper run. `state` is the container for the lock, first-seen times and the audit
    (`reaper` in the app); `flow_log` (`flows`) gets a `reaped` record per deleted flow."""
    policy = policy or ReaperPolicy.from_settings()
    run = ReapRun(run_id=str(uuid.uuid4()), decisions=[])
    lease = None if dry_run or state is None else _acquire(state)
    if lease is False:
        run.skipped = "another reaper run holds the lock"
        log.info("reaper: %s; this run does nothing", run.skipped)
        return run
    try:
        endpoints = backend.list_endpoints()
        if not dry_run:
            _settle_pending(state, endpoints, run, flow_log)
        first_seen = _first_seen(state, endpoints, now, dry_run)
        run.decisions, run.alert = plan(endpoints, now, policy, first_seen)
        if run.alert:
            log.critical("reaper circuit breaker: %s; nothing deleted", run.alert,
                         extra={"tuneflow": {"event": "reaper-circuit-breaker", "run_id": run.run_id,
                                             "alert": run.alert}})
        by_name = {ep.name: ep for ep in endpoints}
        deletes = [d for d in run.decisions if d.action == "delete"]
        if deletes and not dry_run:
            for d in deletes:  # written ahead: a run that dies after a delete leaves its record to the next run
                _write_pending(state, d, by_name[d.endpoint], run.run_id)
            with ThreadPoolExecutor(max_workers=max(1, policy.concurrency), thread_name_prefix="reaper") as pool:
                names = [d.endpoint for d in deletes]
                for name, outcome in zip(names, pool.map(lambda n: _delete(backend, n, policy, sleep), names)):
                    run.outcomes[name] = outcome
        _audit(run, by_name, now, policy, dry_run, state, flow_log)
        for d in deletes if not dry_run else ():
            _clear_pending(state, d.endpoint)
    finally:
        if lease:
            _release(lease)
    return run


def _delete(backend: MLBackend, name: str, policy: ReaperPolicy, sleep) -> str:
    try:
        outcome, attempts = delete_confirmed(backend, name, policy, sleep)
    except Exception as exc:  # one endpoint's failure must not stop the others
        log.error("reaper: deleting %s failed: %s", name, exc)
        return f"error: {exc}"
    (log.info if outcome != "unconfirmed" else log.error)("reaper: %s %s after %d attempt(s)", name, outcome, attempts)
    return outcome


def _audit(run: ReapRun, by_name: dict, now: datetime, policy: ReaperPolicy, dry_run: bool, state, flow_log) -> None:
    lines = []
    for d in run.decisions:
        ep = by_name[d.endpoint]
        record = {"run_id": run.run_id, "at": format_utc(now), "dry_run": dry_run, **d.as_dict(),
                  "outcome": run.outcomes.get(d.endpoint, "planned" if d.action == "delete" and dry_run else ""),
                  **(_cost(ep, now, policy.prices) if d.action == "delete" else {})}
        lines.append(json.dumps(record, sort_keys=True))
        (log.warning if d.action == "flag" else log.info)(
            "reaper %s %s: %s (%s)%s", d.action, d.endpoint, d.reason, d.rule, " [dry run]" if dry_run else "",
            extra={"tuneflow": record})
        flow_id = tag(ep.tags, TAG_FLOW_ID)
        if flow_log is not None and flow_id and run.outcomes.get(d.endpoint) in ("confirmed", "already-gone"):
            flows.record(flow_log, flow_id, "reaped", endpoint=d.endpoint,
                         detail={"reason": d.reason, "rule": d.rule, "run_id": run.run_id})
    if state is not None and not dry_run and lines:
        name = f"audit/{format_utc(now)[:10]}/{format_utc(now)}-{run.run_id[:8]}.jsonl"
        state.upload_blob(name, ("\n".join(lines) + "\n").encode(), overwrite=False)


def _write_pending(state, decision: ReapDecision, ep: EndpointInfo, run_id: str) -> None:
    if state is None:
        return
    from shared.storage import put_json
    put_json(state, f"{PENDING_PREFIX}{decision.endpoint}.json",
             {"endpoint": decision.endpoint, "flow_id": tag(ep.tags, TAG_FLOW_ID) or "", "rule": decision.rule,
              "reason": decision.reason, "run_id": run_id})


def _clear_pending(state, endpoint: str) -> None:
    if state is None:
        return
    from azure.core.exceptions import ResourceNotFoundError
    try:
        state.delete_blob(f"{PENDING_PREFIX}{endpoint}.json")
    except ResourceNotFoundError:
        pass


def _settle_pending(state, endpoints: list[EndpointInfo], run: "ReapRun", flow_log) -> None:
    """Deletions an earlier run started and did not record (it died): gone now, they are recorded as reaped."""
    if state is None:
        return
    from shared.storage import get_json
    live = {ep.name for ep in endpoints}
    for blob in list(state.list_blobs(name_starts_with=PENDING_PREFIX)):
        pending = get_json(state, blob.name) or {}
        endpoint = pending.get("endpoint", "")
        if endpoint and endpoint not in live and pending.get("flow_id") and flow_log is not None:
            flows.record(flow_log, pending["flow_id"], "reaped", endpoint=endpoint,
                         detail={"reason": pending.get("reason", ""), "rule": pending.get("rule", ""),
                                 "run_id": pending.get("run_id", ""), "recorded_by": run.run_id})
            log.warning("reaper: %s was deleted by run %s, which ended before recording it: recorded now", endpoint,
                        pending.get("run_id"))
        _clear_pending(state, endpoint)  # still there: this run decides about it afresh


def _first_seen(state, endpoints: list[EndpointInfo], now: datetime, dry_run: bool) -> dict:
    """When each endpoint without a creation time was first seen broken: its age for the grace rule."""
    if state is None:
        return {}
    from azure.core.exceptions import ResourceNotFoundError
    blob = state.get_blob_client(FIRST_SEEN_BLOB)
    try:
        seen = json.loads(blob.download_blob().readall())
    except (ResourceNotFoundError, ValueError):
        seen = {}
    current = {ep.name for ep in endpoints if not ep.created_at and _broken(ep)}
    updated = {name: seen.get(name, format_utc(now)) for name in current}
    if updated != seen and not dry_run:
        blob.upload_blob(json.dumps(updated, sort_keys=True).encode(), overwrite=True)
    return seen  # a first sighting starts the clock; it never counts as grace already served


def _acquire(state):
    """A 60 s lease on the lock blob, or False when another run holds it."""
    from azure.core.exceptions import HttpResponseError, ResourceExistsError
    blob = state.get_blob_client(LOCK_BLOB)
    try:
        blob.upload_blob(b"", overwrite=False)
    except ResourceExistsError:
        pass
    try:
        return blob.acquire_lease(lease_duration=60)
    except HttpResponseError as exc:
        if exc.status_code == 409:  # LeaseAlreadyPresent
            return False
        raise


def _release(lease) -> None:
    try:
        lease.release()
    except Exception as exc:  # an expired lease is released already
        log.debug("reaper lock release: %s", exc)
