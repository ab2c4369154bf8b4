"""Hand-off latency per stage, from the host's own invocation records (`--invocations FILE`): one definition
for bench/handoff_latency.py (one flow at a time) and bench/load.py (many at once).

  data_arrival   upload finished (client clock)           -> fine-tune request enqueued
  submit         fine-tune request enqueued               -> job submitted (submit returned)
  job_events     completion event received by the host    -> deploy request enqueued (incl. registration)
  deploy         deploy request enqueued                  -> deploy function started
"""

from __future__ import annotations

from datetime import datetime

STAGES = ("data_arrival", "submit", "job_events", "deploy")


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def handoffs(records: list[dict], uploads: dict[str, float]) -> dict[str, list[float]]:
    """Per stage, the hand-off of each flow whose upload time is known (`uploads`: flow id -> time), from its
    first successful run of each function."""
    by_flow: dict[str, dict[str, dict]] = {}
    for r in records:
        if r["flow_id"] and r["outcome"] == "Succeeded":
            by_flow.setdefault(r["flow_id"], {}).setdefault(r["function"], r)
    out: dict[str, list[float]] = {k: [] for k in STAGES}
    for flow_id, fns in by_flow.items():
        if flow_id not in uploads or not all(k in fns for k in STAGES):
            continue
        da, sub, je, dep = (fns[k] for k in STAGES)
        out["data_arrival"].append(ts(da["outputs_sent_at"]) - uploads[flow_id])
        out["submit"].append(ts(sub["started_at"]) + sub["duration_ms"] / 1000 - ts(da["outputs_sent_at"]))
        out["job_events"].append(ts(je["outputs_sent_at"]) - ts(je["started_at"]))
        out["deploy"].append(ts(dep["started_at"]) - ts(je["outputs_sent_at"]))
    return out
