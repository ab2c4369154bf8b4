"""Flow records: one small JSON blob per stage a flow reached, in the `flows` container.

Append-only and first-write-wins (`flows/<flow-id>/<n>-<stage>.json`), so a repeated delivery
neither duplicates nor rewrites history, and concurrent stages never contend for one blob.
`tuneflow status` is a pure summary of these records.

A dataset still incomplete (a multi-file dataset missing files, a split waiting for its
dataset.json) has no flow yet: `flows/_waiting/<dataset>.json` says what it waits for, as of the
listing that found it incomplete. It counts until a flow of that dataset is prepared or refused
after that listing (`waiting`), so a late or repeated arrival never shows a prepared dataset as waiting.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.ttl import utcnow

# Stage -> position in the flow; a later position is further along.
STAGES = {
    "refused": 1, "prepared": 1, "submitted": 2, "job-failed": 3, "registered": 3, "gate-passed": 4, "gate-failed": 4,
    "deploy-failed": 5, "deployed": 5, "extended": 5, "smoke-tested": 6, "smoke-failed": 6, "mirrored": 7,
    "shifted": 8, "rolled-out": 9, "rollout-failed": 9, "superseded": 9, "rolled-back": 10, "reaped": 11,
}
REPEATABLE = ("extended", "rolled-back")  # can happen many times: one record each, by time
KEYED = ("shifted",)  # one record per key: a traffic step, by its percent (`8-shifted-010.json`)
# Stages that are one decision: they share one record, so the first verdict is the only one.
SLOTS = {"gate-passed": "gate", "gate-failed": "gate",
         "rolled-out": "rollout", "rollout-failed": "rollout", "superseded": "rollout"}
_COLUMNS = ("dataset", "version", "job", "model", "endpoint", "expires_at")
WAITING_PREFIX = "_waiting/"  # every name starting with "_" is not a flow record (`_locks/` too)


def record_name(flow_id: str, stage: str, at: str = "", key: str = "") -> str:
    suffix = f"-{at.replace(':', '')}" if stage in REPEATABLE else (f"-{key}" if stage in KEYED else "")
    return f"{flow_id}/{STAGES[stage]}-{SLOTS.get(stage, stage)}{suffix}.json"


def record(container_client, flow_id: str, stage: str, key: str = "", **fields) -> dict:
    """Write a stage record once; a repeat of the same stage (and key) keeps the first record."""
    from azure.core.exceptions import ResourceExistsError
    from shared.storage import put_json
    body = {"flow_id": flow_id, "stage": stage, "at": utcnow().isoformat(timespec="milliseconds"), **fields}
    if key:
        body["key"] = key
    try:
        put_json(container_client, record_name(flow_id, stage, body["at"], key), body, overwrite=False)
    except ResourceExistsError:
        pass
    return body


def get(container_client, flow_id: str, stage: str, key: str = "") -> dict | None:
    """The record of `stage` (of a slot: the verdict that stands, whichever stage it is), or None."""
    from shared.storage import get_json
    return get_json(container_client, record_name(flow_id, stage, key=key))


def started_at(container_client, flow_id: str) -> str:
    """When the flow began: its earliest record (prepared, or submitted for a flow `tuneflow submit` began)."""
    import json
    ats = [json.loads(container_client.download_blob(b.name).readall()).get("at", "")
           for b in container_client.list_blobs(name_starts_with=f"{flow_id}/")
           if b.name.split("/", 1)[1].startswith(("1-", "2-"))]
    return min((a for a in ats if a), default="")


def decide_once(container_client, flow_id: str, stage: str, **fields) -> dict:
    """Record a decision (a stage of a slot, e.g. gate-passed or gate-failed) unless one is recorded; return the
    record that stands: the first, whoever wrote it. Two concurrent deliveries thus act on the same verdict."""
    from azure.core.exceptions import ResourceExistsError
    from shared.storage import get_json, put_json
    body = {"flow_id": flow_id, "stage": stage, "at": utcnow().isoformat(timespec="milliseconds"), **fields}
    name = record_name(flow_id, stage)
    try:
        put_json(container_client, name, body, overwrite=False)
        return body
    except ResourceExistsError:
        return get_json(container_client, name)


def reached(container_client, flow_id: str, stage: str, key: str = "") -> bool:
    """Whether the flow has a record of `stage` (not for repeatable stages; for a slot, of its verdict)."""
    from shared.storage import exists
    return exists(container_client, record_name(flow_id, stage, key=key))


def record_waiting(container_client, dataset: str, waiting_for: str, files: list[str], listed_at) -> None:
    """Say that `dataset` waits for `waiting_for` (as of `listed_at`); the latest listing's word wins."""
    from shared.storage import put_json
    put_json(container_client, f"{WAITING_PREFIX}{dataset}.json",
             {"dataset": dataset, "stage": "waiting", "waiting_for": waiting_for, "files": files,
              "at": listed_at.isoformat(timespec="milliseconds")})


def read_all(container_client) -> list[dict]:
    """Every flow record (the waiting markers are read by `read_waiting`)."""
    return [r for _, r in _read(container_client, private=False)]


def read_waiting(container_client, records: list[dict]) -> list[dict]:
    """The datasets that still wait: a marker newer than every prepared/refused record of its dataset."""
    from datetime import datetime
    done: dict[str, datetime] = {}
    for r in records:
        if r.get("stage") in ("prepared", "refused") and r.get("dataset"):
            at = datetime.fromisoformat(r["at"])
            done[r["dataset"]] = max(done.get(r["dataset"], at), at)
    markers = [r for _, r in _read(container_client, WAITING_PREFIX)]
    return sorted((m for m in markers if m["dataset"] not in done or datetime.fromisoformat(m["at"]) > done[m["dataset"]]),
                  key=lambda m: m["at"])


def _read(container_client, prefix: str | None = None, private: bool = True):
    """(name, record) of each blob under `prefix`; `private=False` skips `_`-names (markers, locks)."""
    import json
    for blob in container_client.list_blobs(name_starts_with=prefix):
        if private or not blob.name.startswith("_"):
            yield blob.name, json.loads(container_client.download_blob(blob.name).readall())


@dataclass
class FlowStatus:
    flow_id: str
    stage: str = ""
    stage_times: dict[str, str] = field(default_factory=dict)
    details: dict[str, object] = field(default_factory=dict)
    dataset: str = ""
    version: str = ""
    job: str = ""
    model: str = ""
    endpoint: str = ""
    expires_at: str = ""

    def as_dict(self) -> dict:
        return {"flow_id": self.flow_id, "stage": self.stage, **{c: getattr(self, c) for c in _COLUMNS},
                "gate": self.gate, "eval_loss": self.metric("eval_loss"), "base_eval_loss": self.metric("base_eval_loss"),
                "stage_times": self.stage_times, "details": self.details}

    @property
    def gate(self) -> str:
        """`passed`, `failed`, `off` (switched off for this flow or by the setting), or "" while undecided."""
        if "gate-failed" in self.stage_times:
            return "failed"
        if "gate-passed" in self.stage_times:
            return "off" if (self.details.get("gate-passed") or {}).get("verdict") == "off" else "passed"
        return ""

    def metric(self, key: str) -> float | None:
        """A figure the gate judged by (or, before the gate, the job reported)."""
        for stage in ("gate-passed", "gate-failed"):
            value = (self.details.get(stage) or {}).get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return value
        value = ((self.details.get("registered") or {}).get("metrics") or {}).get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def note(self) -> str:
        """One line for the table: what a waiting dataset waits for, why a stage failed."""
        detail = self.details.get(self.stage)
        if not isinstance(detail, dict):
            return ""
        if self.stage == "waiting":
            return f"waits for {detail.get('waiting_for', '')}"
        if self.stage in ("gate-failed", "rollout-failed", "superseded", "rolled-back"):
            return str(detail.get("reason", ""))[:120]
        return str(detail.get("error", ""))[:120]


def waiting_status(marker: dict) -> FlowStatus:
    """A waiting dataset as a status row: no flow id yet, stage `waiting`."""
    return FlowStatus(flow_id="", stage="waiting", dataset=marker["dataset"], stage_times={"waiting": marker["at"]},
                      details={"waiting": {"waiting_for": marker["waiting_for"], "files": marker.get("files", [])}})


def summarize(records: list[dict]) -> list[FlowStatus]:
    """One status per flow: the furthest stage reached and every field any stage recorded."""
    flows: dict[str, FlowStatus] = {}
    for rec in sorted(records, key=lambda r: (STAGES.get(r.get("stage"), 0), r.get("at", ""))):
        st = flows.setdefault(rec["flow_id"], FlowStatus(flow_id=rec["flow_id"]))
        st.stage = rec["stage"]
        st.stage_times[rec["stage"]] = rec.get("at", "")
        for col in _COLUMNS:
            if rec.get(col):
                setattr(st, col, rec[col])
        if rec.get("detail"):
            st.details[rec["stage"]] = rec["detail"]
    return sorted(flows.values(), key=lambda s: min(s.stage_times.values()))
