"""Flow records: one small JSON blob per stage a flow reached, in the `flows` container.

Append-only and first-write-wins (`flows/<flow-id>/<n>-<stage>.json`), so a repeated delivery
neither duplicates nor rewrites history, and concurrent stages never contend for one blob.
`tuneflow status` is a pure summary of these records.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.ttl import utcnow

# Stage -> position in the flow; a later position is further along.
STAGES = {
    "refused": 1, "prepared": 1, "submitted": 2, "job-failed": 3, "registered": 3,
    "deploy-failed": 4, "deployed": 4, "extended": 4, "smoke-tested": 5, "smoke-failed": 5, "reaped": 6,
}
REPEATABLE = ("extended",)  # a lease can be renewed many times: one record each
_COLUMNS = ("dataset", "version", "job", "model", "endpoint", "expires_at")


def record_name(flow_id: str, stage: str, at: str = "") -> str:
    suffix = f"-{at.replace(':', '')}" if stage in REPEATABLE else ""
    return f"{flow_id}/{STAGES[stage]}-{stage}{suffix}.json"


def record(container_client, flow_id: str, stage: str, **fields) -> dict:
    """Write a stage record once; a repeat of the same stage keeps the first record."""
    from azure.core.exceptions import ResourceExistsError
    from shared.storage import put_json
    body = {"flow_id": flow_id, "stage": stage, "at": utcnow().isoformat(timespec="milliseconds"), **fields}
    try:
        put_json(container_client, record_name(flow_id, stage, body["at"]), body, overwrite=False)
    except ResourceExistsError:
        pass
    return body


def read_all(container_client) -> list[dict]:
    import json
    records = []
    for blob in container_client.list_blobs():
        records.append(json.loads(container_client.download_blob(blob.name).readall()))
    return records


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
                "stage_times": self.stage_times, "details": self.details}


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
