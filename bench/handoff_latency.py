"""Local hand-off latency of each stage: event or message in -> next message out.

Runs the real local stack (Azurite, host, workspace) on free ports and pushes N distinct datasets
through it one after another; training and model loading are excluded by measuring only the
hand-offs, from the host's own invocation records:

  data_arrival   upload finished (client clock)           -> fine-tune request enqueued
  submit         fine-tune request enqueued               -> job submitted (submit returned)
  job_events     completion event received by the host    -> deploy request enqueued (incl. registration)
  deploy         deploy request enqueued                  -> deploy function started

Usage: python bench/handoff_latency.py [--runs N] [--rows R]   (writes bench/results/handoff.json)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.handoffs import handoffs, percentile  # noqa: E402

STATE = ROOT / ".tuneflow" / "bench"
os.environ.update({
    "TUNEFLOW_STATE_DIR": str(STATE), "TUNEFLOW_ML_BACKEND": "local", "TUNEFLOW_ENDPOINT_TTL": "1h",
    "TUNEFLOW_REAPER_SCHEDULE": "0 0 0 1 1 *", "TUNEFLOW_FINETUNE_PARAMS": json.dumps({"max_steps": 2}),
})


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--rows", type=int, default=120)
    args = parser.parse_args()
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)

    from local import sampledata
    from local.stack import LocalStack
    from shared import flows, storage
    from shared.contracts import DATASETS_CONTAINER, FLOWS_CONTAINER

    log_path = STATE / "invocations.jsonl"
    uploads: dict[str, float] = {}
    with LocalStack(free_ports=True, invocations_log=log_path):
        datasets, flow_log = storage.container(DATASETS_CONTAINER), storage.container(FLOWS_CONTAINER)
        for i in range(args.runs):
            name = f"bench-{i}"
            path = sampledata.write(STATE / f"{name}.jsonl", args.rows, seed=1000 + i)
            with open(path, "rb") as f:
                datasets.upload_blob(f"{name}/{path.name}", f)
            uploads[name] = time.time()
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                status = next((s for s in flows.summarize(flows.read_all(flow_log)) if s.dataset == name), None)
                if status and status.stage in ("rolled-out", "rollout-failed", "job-failed", "refused", "deploy-failed"):
                    break
                time.sleep(0.2)  # polling cadence of the benchmark driver
            else:
                raise SystemExit(f"{name} did not finish within 300 s")
            print(f"run {i + 1}/{args.runs}: {name} -> {status.stage}", flush=True)
            uploads[status.flow_id] = uploads.pop(name)  # the host's records are keyed by flow id

    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    values = handoffs(records, uploads)
    summary = {k: {"runs": len(v), "median_s": round(statistics.median(v), 3), "p95_s": round(percentile(v, 0.95), 3),
                   "max_s": round(max(v), 3), "values_s": [round(x, 3) for x in v]} for k, v in values.items() if v}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "handoff.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{'hand-off':<14}{'runs':>6}{'median s':>11}{'p95 s':>9}{'max s':>9}")
    for k, v in summary.items():
        print(f"{k:<14}{v['runs']:>6}{v['median_s']:>11.3f}{v['p95_s']:>9.3f}{v['max_s']:>9.3f}")
    shutil.rmtree(STATE / "azurite", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
