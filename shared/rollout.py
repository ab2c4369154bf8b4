"""Rollout rules: what a new model version's rollout does at each step, as data and pure functions.

A dataset has one endpoint; each model version is a deployment on it. A new version is created at
0 %, smoke-tested through the `azureml-model-deployment` header, optionally given a mirror of the live
traffic, then given live traffic in steps (`TUNEFLOW_ROLLOUT_STEPS`) with checks between them. The
first version of a dataset has nothing to shift from: it goes from smoke-tested to 100 % at once.
The previous deployment stays at 0 % for `TUNEFLOW_ROLLBACK_WINDOW` (the reaper removes it after).

shared/deployment.py runs these steps against the backend and records each in the flow; this module
decides, without Azure, storage or a clock of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from shared import settings
from shared.contracts import TAG_FLOW_STARTED_AT
from shared.ml.base import DeploymentInfo, EndpointInfo

MAX_MIRROR_PCT = 50  # Azure: mirror traffic to one deployment, at most 50 %
MAX_DEPLOYMENTS = 20  # Azure's quota of deployments per endpoint
STEPS_FORM = "comma-separated whole percents, rising, ending at 100, e.g. 10,100 or 5,25,50,100"


class NoRollback(ValueError):
    """Nothing to roll back to: one line saying why and what to do."""


@dataclass(frozen=True)
class RolloutPolicy:
    steps: tuple[int, ...] = (10, 100)
    step_wait: timedelta = timedelta(minutes=2)
    mirror_pct: int = 0
    probes: int = 3
    window: timedelta = timedelta(hours=1)
    lock_wait_s: float = 600.0  # how long a rollout waits for another one on the same endpoint

    @classmethod
    def from_settings(cls) -> "RolloutPolicy":
        mirror = settings.get_int("TUNEFLOW_ROLLOUT_MIRROR_PCT", 0)
        if mirror > MAX_MIRROR_PCT:
            raise settings.SettingError(f"TUNEFLOW_ROLLOUT_MIRROR_PCT={mirror}: Azure mirrors at most "
                                        f"{MAX_MIRROR_PCT} % of the live traffic; use 0 to {MAX_MIRROR_PCT}")
        return cls(steps=parse_steps(settings.get("TUNEFLOW_ROLLOUT_STEPS")),
                   step_wait=settings.get_duration("TUNEFLOW_ROLLOUT_STEP_WAIT"), mirror_pct=mirror,
                   probes=settings.get_int("TUNEFLOW_ROLLOUT_PROBES", 1),
                   window=settings.get_duration("TUNEFLOW_ROLLBACK_WINDOW"))


def parse_steps(text: str) -> tuple[int, ...]:
    """`10,100` -> (10, 100); anything else is refused with the accepted form."""
    bad = settings.SettingError(f"TUNEFLOW_ROLLOUT_STEPS={text!r} is not {STEPS_FORM}")
    try:
        steps = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        raise bad from None
    if not steps or steps[0] < 1 or steps[-1] != 100 or list(steps) != sorted(set(steps)):  # rising: 1..100
        raise bad
    return steps


def steps_for(policy: RolloutPolicy, previous: str) -> tuple[int, ...]:
    """The live shares the new deployment gets in turn: all of them at once when nothing serves yet."""
    return policy.steps if previous else (100,)


def mirror_for(policy: RolloutPolicy, previous: str) -> int:
    """The mirror share before any live traffic: only when there is live traffic to mirror."""
    return policy.mirror_pct if previous else 0


def split(new: str, previous: str, pct: int) -> dict[str, int]:
    """The live traffic at one step: `pct` to the new deployment, the rest to the previous one."""
    return {new: pct, previous: 100 - pct} if previous else {new: pct}


def serving(endpoint: EndpointInfo | None, exclude: str = "") -> DeploymentInfo | None:
    """The deployment carrying the most live traffic (other than `exclude`), or None."""
    live = [d for d in (endpoint.deployments if endpoint else ()) if d.traffic > 0 and d.name != exclude]
    return max(live, key=lambda d: (d.traffic, d.created_at, d.name)) if live else None


def superseded_by(endpoint: EndpointInfo | None, started_at: str, exclude: str) -> DeploymentInfo | None:
    """A serving deployment whose flow began after this one's: rolling this one out would replace newer
    data with older (a late or reordered delivery). ISO 8601 UTC strings compare in time order."""
    current = serving(endpoint, exclude)
    theirs = current and (current.tags or {}).get(TAG_FLOW_STARTED_AT)
    return current if theirs and started_at and theirs > started_at else None


def rollback_pair(endpoint: EndpointInfo) -> tuple[DeploymentInfo, DeploymentInfo]:
    """(serving, the one to give the traffic back to): the newest Succeeded deployment at 0 % created before it."""
    current = serving(endpoint)
    if current is None or current.traffic != 100:
        raise NoRollback(f"endpoint {endpoint.name} has no deployment carrying all the traffic "
                         f"({endpoint.traffic or 'no traffic'}): a rollout may be in progress; wait for it")
    older = [d for d in endpoint.deployments if d.name != current.name and d.traffic == 0 and d.mirror_traffic == 0
             and d.provisioning_state == "Succeeded" and d.created_at <= current.created_at]
    if not older:
        raise NoRollback(f"endpoint {endpoint.name} keeps no previous deployment (it is removed "
                         f"TUNEFLOW_ROLLBACK_WINDOW after a rollout): deploy an earlier model version instead")
    return current, max(older, key=lambda d: (d.created_at, d.name))
