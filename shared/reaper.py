"""The reaper: delete managed endpoints whose `expires-at` has passed. Rules as data, then actions.

Never deletes what it cannot prove expired: a missing or unparseable `expires-at` is flagged,
not deleted; `do-not-delete=true` and endpoints in transition are kept.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime

from shared import flows
from shared.contracts import MANAGED_BY_VALUE, TAG_DO_NOT_DELETE, TAG_EXPIRES_AT, TAG_FLOW_ID, TAG_MANAGED_BY
from shared.ml.base import EndpointInfo, MLBackend, NotFound
from shared.ttl import format_utc, parse_expires_at

log = logging.getLogger("tuneflow.reaper")
TRANSITIONAL_STATES = ("Creating", "Updating", "Deleting")


@dataclass(frozen=True)
class ReapDecision:
    endpoint: str
    action: str  # delete | keep | flag
    rule: str
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def _tag(tags: dict, key: str) -> str | None:
    """Tag lookup that tolerates key case variants (`Expires-At`)."""
    for k, v in (tags or {}).items():
        if k.lower() == key:
            return v
    return None


def decide(ep: EndpointInfo, now: datetime) -> ReapDecision:
    tags = ep.tags or {}
    if _tag(tags, TAG_MANAGED_BY) != MANAGED_BY_VALUE:
        return ReapDecision(ep.name, "keep", "not-managed", f"not tagged {TAG_MANAGED_BY}={MANAGED_BY_VALUE}")
    if str(_tag(tags, TAG_DO_NOT_DELETE)).lower() == "true":
        return ReapDecision(ep.name, "keep", "do-not-delete", f"tagged {TAG_DO_NOT_DELETE}=true")
    if ep.provisioning_state in TRANSITIONAL_STATES:
        return ReapDecision(ep.name, "keep", "in-transition", f"provisioning state is {ep.provisioning_state}")
    raw = _tag(tags, TAG_EXPIRES_AT)
    moment = parse_expires_at(raw)
    if moment is None:
        return ReapDecision(ep.name, "flag", "bad-expiry",
                            f"{TAG_EXPIRES_AT}={raw!r} is missing or not ISO 8601 with a time zone: never deleted on that basis")
    if moment <= now:
        return ReapDecision(ep.name, "delete", "expired", f"expired at {format_utc(moment)}")
    return ReapDecision(ep.name, "keep", "not-expired", f"{int((moment - now).total_seconds())} s left")


def plan(endpoints: list[EndpointInfo], now: datetime) -> list[ReapDecision]:
    return [decide(ep, now) for ep in endpoints]


def reap(backend: MLBackend, flow_log, now: datetime, dry_run: bool = False) -> list[ReapDecision]:
    endpoints = backend.list_endpoints()
    decisions = plan(endpoints, now)
    by_name = {ep.name: ep for ep in endpoints}
    for d in decisions:
        log_fn = log.warning if d.action == "flag" else log.info
        log_fn("reaper %s %s: %s (%s)%s", d.action, d.endpoint, d.reason, d.rule, " [dry run]" if dry_run else "")
        if d.action != "delete" or dry_run:
            continue
        try:
            backend.delete_endpoint(d.endpoint)
        except NotFound:
            pass  # an overlapping run, or a user, deleted it first: the goal holds
        try:
            backend.get_endpoint(d.endpoint)
            log.error("reaper deleted %s but it still exists", d.endpoint)
            continue
        except NotFound:
            pass
        flow_id = _tag(by_name[d.endpoint].tags, TAG_FLOW_ID)
        if flow_id and flow_log is not None:
            flows.record(flow_log, flow_id, "reaped", endpoint=d.endpoint, detail={"reason": d.reason})
    return decisions
