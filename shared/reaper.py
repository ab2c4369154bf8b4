"""The reaper: delete what tuneflow made and nobody needs any more, and nothing else. Rules as data,
a safety gate, then actions that are confirmed. Three kinds of thing, each with its own rules:

Endpoints (`decide`), first match wins:
  not-managed     keep   not tagged managed-by=tuneflow (never ours to touch)
  do-not-delete   keep   tagged do-not-delete=true (any key case)
  in-transition   keep   the endpoint or any of its deployments Creating, Updating or Deleting
                         (a large model's deployment takes 20+ minutes: whatever the grace)
  expired         delete expires-at (ISO 8601 with an offset) has passed (a rollout renews it)
  broken          delete no deployment, every one failed, or the endpoint failed with no traffic, for
                         longer than the grace period
  broken-grace    keep   broken, still within the grace period (or its age is unknown)
  bad-expiry      flag   expires-at missing or unparseable: reported every run, never a reason to delete
  not-expired     keep   time left

Deployments of an endpoint that is kept (`decide_deployments`), oldest first:
  deployment-serving    keep    it has live or mirror traffic: never deleted
  deployment-in-transition keep Creating, Updating or Deleting
  deployment-failed     delete  failed, at 0 %, for longer than the grace period
  deployment-newest     keep    the newest one (being rolled out, or the one a rollback gave traffic to)
  deployment-idle       delete  0 % live and mirror since the endpoint's last traffic change (or its
                                creation) for longer than TUNEFLOW_ROLLBACK_WINDOW
  deployment-quota      delete  within the window, but the endpoint nears Azure's 20 deployments: the
                                oldest idle ones go first, until a rollout has room again
  deployment-window     keep    idle, kept for a rollback until the window ends

Fine-tune jobs tagged managed-by=tuneflow that have not ended (`decide_job`):
  do-not-delete   keep    tagged do-not-delete=true
  job-runaway     cancel  running longer than TUNEFLOW_JOB_MAX_RUNTIME (a hung job holding GPUs)
  job-age-unknown flag    no creation time: never canceled on that basis
  job-running     keep    time left

Safety gate (`circuit_breaker`): when one run would delete or cancel more than `max_deletes` things in
all, or (from `share_floor` up) more than `max_delete_share` of the managed endpoints or of the running
jobs, it deletes and cancels nothing, flags each would-be action and raises an alert. (Idle deployments
are no share: after every rollout half of an endpoint's deployments are idle by design.)

Actions (`reap`): one run at a time (a blob lease; an overlapping run backs off, and the actions are
idempotent anyway), bounded concurrency, each retried with back-off when throttled and confirmed by
polling until the thing is gone (a job: ended); one audit record per decision, in storage and in the
log as structured data, with the instance-hours used and the cost the action avoids per day.

A timer run is never delivered again, so a run that dies between an action and recording it would leave
its flow looking alive for good. Each action is therefore written ahead (`pending/...json` in the state
container) and cleared once recorded; the next run records the pending ones whose target is gone
(`reaped`, saying which run acted).
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
from shared.contracts import (MANAGED_BY_VALUE, TAG_DO_NOT_DELETE, TAG_EXPIRES_AT, TAG_FLOW_ID, TAG_MANAGED_BY,
                              TAG_TRAFFIC_CHANGED_AT)
from shared.ml.base import (TERMINAL_JOB_STATES, DeploymentInfo, EndpointInfo, HasTraffic, JobInfo, MLBackend, NotFound,
                            Throttled)
from shared.ttl import format_utc, parse_expires_at

log = logging.getLogger("tuneflow.reaper")
TRANSITIONAL_STATES = ("creating", "updating", "deleting")
FAILED_STATES = ("failed", "canceled")
LOCK_BLOB = "lock"
FIRST_SEEN_BLOB = "first-seen.json"
PENDING_PREFIX = "pending/"
MAX_DEPLOYMENTS = 20  # Azure's quota of deployments per endpoint (shared.rollout refuses a 21st)
QUOTA_ROOM = 2  # the reaper keeps this many deployment slots free on an endpoint near the quota
DESTRUCTIVE = ("delete", "cancel")


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
    rollback_window: timedelta = timedelta(hours=1)  # an idle deployment is kept this long for a rollback
    job_max_runtime: timedelta = timedelta(hours=24)  # a managed job running longer is canceled

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
        return cls(grace=settings.get_duration("TUNEFLOW_REAPER_GRACE"),
                   rollback_window=settings.get_duration("TUNEFLOW_ROLLBACK_WINDOW"),
                   job_max_runtime=settings.get_duration("TUNEFLOW_JOB_MAX_RUNTIME"),
                   max_deletes=settings.get_int("TUNEFLOW_REAPER_MAX_DELETES", 0),
                   max_delete_share=settings.get_float("TUNEFLOW_REAPER_MAX_DELETE_SHARE", 0.0, 1.0),
                   concurrency=settings.get_int("TUNEFLOW_REAPER_CONCURRENCY", 1), prices=prices)


@dataclass(frozen=True)
class ReapDecision:
    endpoint: str  # the endpoint, or the deployment's endpoint; "" for a job
    action: str  # delete | cancel | keep | flag
    rule: str
    reason: str
    expires_at: str = ""
    seconds_left: int | None = None
    kind: str = "endpoint"  # endpoint | deployment | job
    name: str = ""  # the deployment's or the job's name; the endpoint's for an endpoint

    @property
    def target(self) -> str:
        """What the decision is about, as the audit and the table name it: `ep`, `ep/deployment`, `job`."""
        return {"endpoint": self.endpoint, "deployment": f"{self.endpoint}/{self.name}"}.get(self.kind, self.name)

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
    """Why the endpoint serves nothing and never will without a new deployment, or None."""
    if _state(ep) in FAILED_STATES and not ep.traffic:
        return f"endpoint provisioning {ep.provisioning_state} with no traffic"
    if not ep.deployments:
        return "no deployment"
    failed = [d.name for d in ep.deployments if (d.provisioning_state or "").lower() in FAILED_STATES]
    return f"deployment {', '.join(failed)} failed" if len(failed) == len(ep.deployments) else None


def _managed(tags: dict) -> bool:
    return str(tag(tags, TAG_MANAGED_BY) or "").strip().lower() == MANAGED_BY_VALUE


def _do_not_delete(tags: dict) -> bool:
    return str(tag(tags, TAG_DO_NOT_DELETE) or "").strip().lower() == "true"


def decide(ep: EndpointInfo, now: datetime, policy: ReaperPolicy, first_seen: dict | None = None) -> ReapDecision:
    tags = ep.tags or {}
    raw_expiry = tag(tags, TAG_EXPIRES_AT)
    expiry = parse_expires_at(raw_expiry)
    left = int((expiry - now).total_seconds()) if expiry else None
    d = lambda action, rule, reason: ReapDecision(ep.name, action, rule, reason,  # noqa: E731
                                                  format_utc(expiry) if expiry else str(raw_expiry or ""), left,
                                                  name=ep.name)
    if not _managed(tags):
        return d("keep", "not-managed", f"not tagged {TAG_MANAGED_BY}={MANAGED_BY_VALUE}")
    if _do_not_delete(tags):
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


def decide_deployments(ep: EndpointInfo, now: datetime, policy: ReaperPolicy) -> list[ReapDecision]:
    """One decision per deployment of an endpoint the reaper keeps, oldest first (see the module's table)."""
    if not _managed(ep.tags or {}) or _do_not_delete(ep.tags or {}) or _state(ep) in TRANSITIONAL_STATES:
        return []
    ordered = sorted(ep.deployments, key=lambda x: (x.created_at, x.name))
    newest = ordered[-1].name if ordered else ""
    changed = parse_expires_at(tag(ep.tags, TAG_TRAFFIC_CHANGED_AT))
    window = int(policy.rollback_window.total_seconds())
    out = []
    for dep in ordered:
        d = lambda action, rule, reason, _dep=dep: ReapDecision(  # noqa: E731
            ep.name, action, rule, reason, kind="deployment", name=_dep.name)
        state = (dep.provisioning_state or "").lower()
        created = parse_expires_at(dep.created_at)
        idle_since = max((t for t in (changed, created) if t is not None), default=None)
        idle = int((now - idle_since).total_seconds()) if idle_since else None
        if dep.traffic or dep.mirror_traffic:
            out.append(d("keep", "deployment-serving", f"{dep.traffic} % live, {dep.mirror_traffic} % mirror traffic"))
        elif state in TRANSITIONAL_STATES:
            out.append(d("keep", "deployment-in-transition", f"provisioning state is {dep.provisioning_state}"))
        elif state in FAILED_STATES and idle is not None and idle >= policy.grace.total_seconds():
            out.append(d("delete", "deployment-failed", f"{dep.provisioning_state} at 0 % for {idle} s "
                                                        f"(grace {int(policy.grace.total_seconds())} s)"))
        elif dep.name == newest:
            out.append(d("keep", "deployment-newest", "the newest deployment: being rolled out, or rolled back to"))
        elif idle is None:
            out.append(d("keep", "deployment-window", "0 % traffic; its idle time is unknown (no creation time and "
                                                      "no traffic-changed-at tag), so it stays"))
        elif idle >= window:
            out.append(d("delete", "deployment-idle", f"0 % live and mirror traffic for {idle} s "
                                                      f"(TUNEFLOW_ROLLBACK_WINDOW {window} s)"))
        else:
            out.append(d("keep", "deployment-window", f"0 % traffic, kept for a rollback: {window - idle} s left"))
    remaining = len(ep.deployments) - sum(x.action == "delete" for x in out)
    for i, x in enumerate(out):  # oldest first: free room for the next rollout
        if remaining < MAX_DEPLOYMENTS - QUOTA_ROOM:
            break
        if x.rule == "deployment-window":
            out[i] = replace(x, action="delete", rule="deployment-quota", reason=(
                f"{x.reason}; but the endpoint has {len(ep.deployments)} deployments, near Azure's limit of "
                f"{MAX_DEPLOYMENTS}: the oldest idle ones go first"))
            remaining -= 1
    return out


def decide_job(job: JobInfo, now: datetime, policy: ReaperPolicy) -> ReapDecision | None:
    """The decision for a managed job that has not ended; None for one that has (nothing to do)."""
    if job.status in TERMINAL_JOB_STATES:
        return None
    d = lambda action, rule, reason, left=None: ReapDecision(  # noqa: E731
        "", action, rule, reason, seconds_left=left, kind="job", name=job.name)
    if _do_not_delete(job.tags):
        return d("keep", "do-not-delete", f"tagged {TAG_DO_NOT_DELETE}=true")
    started = parse_expires_at(job.created_at)
    if started is None:
        return d("flag", "job-age-unknown", f"{job.status}, with no creation time: never canceled on that basis")
    ran = int((now - started).total_seconds())
    limit = int(policy.job_max_runtime.total_seconds())
    if ran > limit:
        return d("cancel", "job-runaway", f"{job.status} for {ran} s, longer than TUNEFLOW_JOB_MAX_RUNTIME ({limit} s)",
                 limit - ran)
    return d("keep", "job-running", f"{job.status}: {limit - ran} s of TUNEFLOW_JOB_MAX_RUNTIME left", limit - ran)


def circuit_breaker(decisions: list[ReapDecision], policy: ReaperPolicy) -> tuple[list[ReapDecision], str]:
    """(decisions, alert): every delete and cancel becomes a flag when the run would do too much."""
    acting = sum(d.action in DESTRUCTIVE for d in decisions)
    alert = ""
    if acting > policy.max_deletes:
        alert = f"{acting} deletions and cancellations planned, more than TUNEFLOW_REAPER_MAX_DELETES={policy.max_deletes}"
    for kind, things in (("endpoint", "managed endpoints"), ("job", "running managed jobs")):
        if alert:
            break
        of_kind = [d for d in decisions if d.kind == kind]
        hits = sum(d.action in DESTRUCTIVE for d in of_kind)
        managed = sum(d.rule != "not-managed" for d in of_kind)
        if hits >= policy.share_floor and managed and hits / managed > policy.max_delete_share:
            verb = "deletion" if kind == "endpoint" else "cancellation"
            alert = (f"{hits} of {managed} {things} planned for {verb} ({hits / managed:.0%}), more "
                     f"than TUNEFLOW_REAPER_MAX_DELETE_SHARE={policy.max_delete_share:.0%}")
    if not alert:
        return decisions, ""
    verb = {"delete": "deleted", "cancel": "canceled"}
    tripped = [replace(d, action="flag", rule="circuit-breaker", reason=f"{d.reason}; not {verb[d.action]}: {alert}")
               if d.action in DESTRUCTIVE else d for d in decisions]
    return tripped, alert


def plan(endpoints: list[EndpointInfo], now: datetime, policy: ReaperPolicy | None = None,
         first_seen: dict | None = None, jobs: list[JobInfo] = ()) -> tuple[list[ReapDecision], str]:
    """Every decision of one run, endpoints first (each followed by its deployments'), then jobs."""
    policy = policy or ReaperPolicy()
    decisions = []
    for ep in endpoints:
        decision = decide(ep, now, policy, first_seen)
        decisions.append(decision)
        if decision.action != "delete" and decision.rule not in ("not-managed", "do-not-delete", "in-transition",
                                                                 "broken-grace"):
            decisions.extend(decide_deployments(ep, now, policy))
    decisions.extend(x for x in (decide_job(job, now, policy) for job in jobs) if x is not None)
    return circuit_breaker(decisions, policy)


# -- actions ---------------------------------------------------------------------------------------

def delete_confirmed(backend: MLBackend, name: str, policy: ReaperPolicy,
                     sleep: Callable[[float], None] = time.sleep) -> tuple[str, int]:
    """Delete an endpoint and poll until it is gone. (outcome, attempts): outcome is `confirmed`,
    `already-gone` or `unconfirmed`."""
    def gone() -> bool:
        try:
            backend.get_endpoint(name)
        except NotFound:
            return True
        return False
    return _acted(lambda: backend.delete_endpoint(name), gone, policy, sleep, f"endpoint {name}")


def delete_deployment_confirmed(backend: MLBackend, endpoint: str, deployment: str, policy: ReaperPolicy,
                                sleep: Callable[[float], None] = time.sleep) -> tuple[str, int]:
    """As delete_confirmed, for one deployment; `refused` when it has traffic again (never forced)."""
    def gone() -> bool:
        try:
            return backend.get_endpoint(endpoint).deployment(deployment) is None
        except NotFound:
            return True
    return _acted(lambda: backend.delete_deployment(endpoint, deployment), gone, policy, sleep,
                  f"deployment {endpoint}/{deployment}")


def cancel_confirmed(backend: MLBackend, job: str, policy: ReaperPolicy,
                     sleep: Callable[[float], None] = time.sleep) -> tuple[str, int]:
    """Cancel a job and poll until it has ended; `already-gone` when it had ended (or no longer exists)."""
    def ended() -> bool:
        return backend.get_job(job).status in TERMINAL_JOB_STATES

    def cancel() -> None:
        if ended():
            raise NotFound(f"job {job} has ended: nothing to cancel")
        backend.cancel_job(job)
    return _acted(cancel, ended, policy, sleep, f"job {job}")


def _acted(act: Callable[[], None], done: Callable[[], bool], policy: ReaperPolicy, sleep,
           what: str) -> tuple[str, int]:
    """`act`, then poll `done` until true; retried with back-off when throttled, or when the service accepted
    the action and nothing happened. NotFound from `act`: nothing (more) to do; HasTraffic: `refused`."""
    for attempt in range(1, policy.attempts + 1):
        try:
            act()
        except NotFound:
            return ("already-gone" if attempt == 1 else "confirmed"), attempt
        except HasTraffic:
            return "refused", attempt
        except Throttled as exc:
            sleep(exc.retry_after or min(2 ** attempt, 60))
            continue
        if _confirmed(done, policy.confirm_timeout_s, sleep):
            return "confirmed", attempt
        log.warning("reaper: %s still there after the service accepted its removal (attempt %d)", what, attempt)
    return "unconfirmed", policy.attempts


def _confirmed(check: Callable[[], bool], timeout_s: float, sleep) -> bool:
    waited, interval = 0.0, 1.0
    while True:
        try:
            if check():
                return True
        except Throttled as exc:
            interval = max(interval, exc.retry_after or interval)
        if waited >= timeout_s:
            return False
        sleep(interval)
        waited += interval
        interval = min(interval * 2, 30.0)


def _cost(items: list[tuple[str, int]], created_at: str, now: datetime, prices: dict) -> dict:
    """What a thing costs: `items` are (instance type, instance count) pairs."""
    count = sum(max(n, 0) for _sku, n in items)
    created = parse_expires_at(created_at)
    hours = round((now - created).total_seconds() / 3600 * count, 2) if created else None
    per_hour = sum(prices.get((sku or "").lower(), 0.0) * max(n, 0) for sku, n in items)
    unpriced = sorted({sku for sku, _n in items if (sku or "").lower() not in prices})
    return {"instance_hours_used": hours, "price_per_hour": round(per_hour, 4),
            "cost_avoided_per_day": round(per_hour * 24, 2), "unpriced_skus": unpriced}


@dataclass(frozen=True)
class Target:
    """What a decision acts on: its flows (recorded `reaped` once it is gone) and its cost."""
    kind: str
    endpoint: str
    name: str
    flow_ids: tuple[str, ...]
    items: tuple[tuple[str, int], ...]
    created_at: str

    @property
    def key(self) -> str:  # the pending blob's name
        return {"endpoint": f"{PENDING_PREFIX}{self.endpoint}.json",
                "deployment": f"{PENDING_PREFIX}{self.endpoint}/{self.name}.json"}.get(
            self.kind, f"{PENDING_PREFIX}job/{self.name}.json")


def _targets(endpoints: list[EndpointInfo], jobs: list[JobInfo]) -> dict[str, Target]:
    """By decision target (`ReapDecision.target`)."""
    out = {}
    for ep in endpoints:
        ids = [tag(ep.tags, TAG_FLOW_ID)] + [tag(d.tags, TAG_FLOW_ID) for d in ep.deployments]
        out[ep.name] = Target("endpoint", ep.name, ep.name, tuple(dict.fromkeys(i for i in ids if i)),
                              tuple((d.instance_type, d.instance_count) for d in ep.deployments), ep.created_at)
        for d in ep.deployments:
            out[f"{ep.name}/{d.name}"] = Target("deployment", ep.name, d.name,
                                               tuple(i for i in [tag(d.tags, TAG_FLOW_ID)] if i),
                                               ((d.instance_type, d.instance_count),), d.created_at)
    for job in jobs:
        out[job.name] = Target("job", "", job.name, tuple(i for i in [tag(job.tags, TAG_FLOW_ID)] if i),
                               ((job.compute, 1),), job.created_at)
    return out


@dataclass
class ReapRun:
    run_id: str
    decisions: list[ReapDecision]
    alert: str = ""
    outcomes: dict = field(default_factory=dict)  # target -> confirmed | already-gone | unconfirmed | refused | error
    skipped: str = ""  # why the run did nothing (another run holds the lock)


def reap(backend: MLBackend, now: datetime, policy: ReaperPolicy | None = None, dry_run: bool = False,
         flow_log=None, state=None, sleep: Callable[[float], None] = time.sleep) -> ReapRun:
    """One reaper run. `state` is the container for the lock, first-seen times and the audit
    (`reaper` in the app); `flow_log` (`flows`) gets a `reaped` record per flow whose thing is gone."""
    policy = policy or ReaperPolicy.from_settings()
    run = ReapRun(run_id=str(uuid.uuid4()), decisions=[])
    lease = None if dry_run or state is None else _acquire(state)
    if lease is False:
        run.skipped = "another reaper run holds the lock"
        log.info("reaper: %s; this run does nothing", run.skipped)
        return run
    try:
        endpoints = backend.list_endpoints()
        jobs = backend.list_jobs({TAG_MANAGED_BY: MANAGED_BY_VALUE})
        if not dry_run:
            _settle_pending(state, backend, endpoints, run, flow_log)
        first_seen = _first_seen(state, endpoints, now, dry_run)
        run.decisions, run.alert = plan(endpoints, now, policy, first_seen, jobs)
        if run.alert:
            log.critical("reaper circuit breaker: %s; nothing deleted", run.alert,
                         extra={"tuneflow": {"event": "reaper-circuit-breaker", "run_id": run.run_id,
                                             "alert": run.alert}})
        targets = _targets(endpoints, jobs)
        acting = [d for d in run.decisions if d.action in DESTRUCTIVE]
        if acting and not dry_run:
            for d in acting:  # written ahead: a run that dies after acting leaves its record to the next run
                _write_pending(state, d, targets[d.target], run.run_id)
            with ThreadPoolExecutor(max_workers=max(1, policy.concurrency), thread_name_prefix="reaper") as pool:
                for d, outcome in zip(acting, pool.map(lambda x: _act(backend, x, policy, sleep), acting)):
                    run.outcomes[d.target] = outcome
        _audit(run, targets, now, policy, dry_run, state, flow_log)
        for d in acting if not dry_run else ():
            _clear_pending(state, targets[d.target].key)
    finally:
        if lease:
            _release(lease)
    return run


def _act(backend: MLBackend, d: ReapDecision, policy: ReaperPolicy, sleep) -> str:
    try:
        if d.kind == "endpoint":
            outcome, attempts = delete_confirmed(backend, d.endpoint, policy, sleep)
        elif d.kind == "deployment":
            outcome, attempts = delete_deployment_confirmed(backend, d.endpoint, d.name, policy, sleep)
        else:
            outcome, attempts = cancel_confirmed(backend, d.name, policy, sleep)
    except Exception as exc:  # one failure must not stop the others
        log.error("reaper: %s of %s %s failed: %s", d.action, d.kind, d.target, exc)
        return f"error: {exc}"
    (log.info if outcome in ("confirmed", "already-gone") else log.error)(
        "reaper: %s %s %s after %d attempt(s)", d.kind, d.target, outcome, attempts)
    return outcome


def _audit(run: ReapRun, targets: dict, now: datetime, policy: ReaperPolicy, dry_run: bool, state, flow_log) -> None:
    lines = []
    for d in run.decisions:
        target = targets[d.target]
        record = {"run_id": run.run_id, "at": format_utc(now), "dry_run": dry_run, **d.as_dict(),
                  "outcome": run.outcomes.get(d.target, "planned" if d.action in DESTRUCTIVE and dry_run else ""),
                  **(_cost(list(target.items), target.created_at, now, policy.prices)
                     if d.action in DESTRUCTIVE else {})}
        lines.append(json.dumps(record, sort_keys=True))
        (log.warning if d.action == "flag" else log.info)(
            "reaper %s %s %s: %s (%s)%s", d.action, d.kind, d.target, d.reason, d.rule,
            " [dry run]" if dry_run else "", extra={"tuneflow": record})
        if flow_log is not None and run.outcomes.get(d.target) in ("confirmed", "already-gone"):
            for flow_id in target.flow_ids:
                flows.record(flow_log, flow_id, "reaped", endpoint=target.endpoint,
                             detail={"reason": d.reason, "rule": d.rule, "run_id": run.run_id, "kind": d.kind,
                                     "name": target.name})
    if state is not None and not dry_run and lines:
        name = f"audit/{format_utc(now)[:10]}/{format_utc(now)}-{run.run_id[:8]}.jsonl"
        state.upload_blob(name, ("\n".join(lines) + "\n").encode(), overwrite=False)


def _write_pending(state, decision: ReapDecision, target: Target, run_id: str) -> None:
    if state is None:
        return
    from shared.storage import put_json
    put_json(state, target.key, {"kind": target.kind, "endpoint": target.endpoint, "name": target.name,
                                 "flow_ids": list(target.flow_ids), "rule": decision.rule, "reason": decision.reason,
                                 "run_id": run_id})


def _clear_pending(state, key: str) -> None:
    if state is None:
        return
    from azure.core.exceptions import ResourceNotFoundError
    try:
        state.delete_blob(key)
    except ResourceNotFoundError:
        pass


def _gone(backend: MLBackend, pending: dict, endpoints: list[EndpointInfo]) -> bool:
    kind, endpoint, name = pending.get("kind", "endpoint"), pending.get("endpoint", ""), pending.get("name", "")
    by_name = {ep.name: ep for ep in endpoints}
    if kind == "endpoint":
        return endpoint not in by_name
    if kind == "deployment":
        return endpoint not in by_name or by_name[endpoint].deployment(name) is None
    try:
        return backend.get_job(name).status in TERMINAL_JOB_STATES
    except NotFound:
        return True


def _settle_pending(state, backend: MLBackend, endpoints: list[EndpointInfo], run: "ReapRun", flow_log) -> None:
    """Actions an earlier run started and did not record (it died): done now, they are recorded as reaped."""
    if state is None:
        return
    from shared.storage import get_json
    for blob in list(state.list_blobs(name_starts_with=PENDING_PREFIX)):
        pending = get_json(state, blob.name) or {}
        flow_ids = pending.get("flow_ids") or ([pending["flow_id"]] if pending.get("flow_id") else [])
        if pending and _gone(backend, pending, endpoints) and flow_log is not None:
            for flow_id in flow_ids:
                flows.record(flow_log, flow_id, "reaped", endpoint=pending.get("endpoint", ""),
                             detail={"reason": pending.get("reason", ""), "rule": pending.get("rule", ""),
                                     "run_id": pending.get("run_id", ""), "recorded_by": run.run_id,
                                     "kind": pending.get("kind", "endpoint"), "name": pending.get("name", "")})
            log.warning("reaper: %s %s was acted on by run %s, which ended before recording it: recorded now",
                        pending.get("kind", "endpoint"), pending.get("name") or pending.get("endpoint"),
                        pending.get("run_id"))
        _clear_pending(state, blob.name)  # still there: this run decides about it afresh


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
