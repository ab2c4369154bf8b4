"""Scoring traffic while a new model version rolls out: failed requests (target 0), latency before,
during and after, and the time from the deploy message to 100 %.

Runs the real local stack (Azurite, the host running function_app.py, the local workspace: a router in
front of scoring processes) on free ports. The first version of a dataset is rolled out; then a client
sends a steady stream of scoring requests to the endpoint's one scoring URI, with its key, while a new
version of the same dataset is dropped, fine-tuned, registered and rolled out (`TUNEFLOW_ROLLOUT_STEPS`,
checks between steps) into the same endpoint; it goes on for a while after. Every request is counted:
any answer but 200, or none, is a failure.

  phase    from                                      to
  before   the client starts                         the deploy message is sent (the flow's `registered`)
  during   the deploy message                        the new deployment carries 100 % (`shifted` 100)
  after    100 %                                     the client stops (--after seconds later)

Usage: python bench/rollout.py [--clients N] [--after S] [--steps 10,100] [--step-wait 10s]
       (writes bench/results/rollout.json)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.handoffs import percentile  # noqa: E402

STATE = ROOT / ".tuneflow" / "bench-rollout"
DATASET = "bench-rollout"
DONE = ("rolled-out", "rollout-failed", "superseded", "job-failed", "gate-failed", "deploy-failed", "refused")


class Client(threading.Thread):
    """Scoring requests one after another, as fast as the endpoint answers; (sent at, seconds, status, deployment)."""

    def __init__(self, uri: str, key: str, stop: threading.Event, n: int):
        super().__init__(name=f"client-{n}", daemon=True)
        self.uri, self.key, self.stop, self.n = uri, key, stop, n
        self.results: list[tuple[float, float, int, str]] = []

    def run(self) -> None:
        from shared.scoring import request_body
        i = 0
        while not self.stop.is_set():
            i += 1
            body = json.dumps(request_body([{"role": "user", "content": f"Name a colour ({self.n}.{i})."}],
                                           {"max_new_tokens": 4})).encode()
            req = urllib.request.Request(self.uri, data=body, method="POST", headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {self.key}"})
            sent = time.time()
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    resp.read()
                    status, served_by = resp.status, resp.headers.get("azureml-model-deployment", "")
            except urllib.error.HTTPError as exc:
                status, served_by = exc.code, exc.headers.get("azureml-model-deployment", "")
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                status, served_by = 0, ""
            self.results.append((sent, time.time() - sent, status, served_by))


def _drop(seed: int) -> None:
    from local import sampledata
    from shared import storage
    rows = "".join(json.dumps(r) + "\n" for r in sampledata.rows(80, seed=seed)).encode()
    storage.container("datasets").upload_blob(f"{DATASET}/data.jsonl", rows, overwrite=True)


def _flows() -> list:
    from shared import flows, storage
    return [f for f in flows.summarize(flows.read_all(storage.container("flows"))) if f.dataset == DATASET]


def _wait_for(what: str, check, deadline_s: float, status):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        status.update(f"{what} ({deadline_s - (end - time.monotonic()):.0f} s)")
        time.sleep(1)  # polling cadence of the benchmark driver
    raise SystemExit(f"{what}: not within {deadline_s:.0f} s")


def _record_time(flow_id: str, stage: str, key: str = "") -> float:
    from shared import flows, storage
    return datetime.fromisoformat(flows.get(storage.container("flows"), flow_id, stage, key=key)["at"]).timestamp()


def _phase_stats(results: list, start: float, end: float) -> dict:
    inside = [r for r in results if start <= r[0] < end]
    latencies = [r[1] for r in inside if r[2] == 200]
    return {"requests": len(inside), "failed": sum(r[2] != 200 for r in inside),
            "p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
            "p95_ms": round(percentile(latencies, 0.95) * 1000, 1) if latencies else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--after", type=float, default=20.0, help="seconds of traffic after the rollout")
    parser.add_argument("--steps", default="10,100", help="TUNEFLOW_ROLLOUT_STEPS")
    parser.add_argument("--step-wait", default="10s", help="TUNEFLOW_ROLLOUT_STEP_WAIT")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "rollout.json"))
    args = parser.parse_args()
    os.environ.update({
        "TUNEFLOW_STATE_DIR": str(STATE), "TUNEFLOW_ML_BACKEND": "local", "TUNEFLOW_BASE_MODEL": "phi-3-tiny",
        "TUNEFLOW_ENDPOINT_TTL": "1h", "TUNEFLOW_REAPER_SCHEDULE": "0 0 0 1 1 *", "TUNEFLOW_GATE": "off",
        "TUNEFLOW_FINETUNE_PARAMS": json.dumps({"max_steps": 4}), "TUNEFLOW_ROLLOUT_STEPS": args.steps,
        "TUNEFLOW_ROLLOUT_STEP_WAIT": args.step_wait, "TUNEFLOW_ROLLOUT_PROBES": "3",
    })
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)

    from rich.console import Console
    from rich.table import Table

    from local.chart import plot
    from local.stack import LocalStack
    from shared import naming
    console = Console()
    stop = threading.Event()
    clients: list[Client] = []
    with LocalStack(free_ports=True, invocations_log=STATE / "invocations.jsonl") as stack, \
            console.status("starting") as status:
        _drop(seed=1)
        [first] = _wait_for("the first version to roll out", lambda: [f for f in _flows() if f.stage in DONE], 900,
                            status)
        if first.stage != "rolled-out":
            raise SystemExit(f"the first version ended {first.stage}: {first.details.get(first.stage)}")
        name = naming.endpoint_name(DATASET, stack.workspace.workspace_id)
        endpoint = stack.workspace.get_endpoint(name)
        clients = [Client(endpoint.scoring_uri, stack.workspace.key(name), stop, n) for n in range(args.clients)]
        started = time.time()
        for c in clients:
            c.start()
        time.sleep(5)  # traffic before the new version's drop (a measured phase, not synchronisation)
        _drop(seed=2)
        second = _wait_for("the second version to roll out", lambda: next(
            (f for f in _flows() if f.flow_id != first.flow_id and f.stage in DONE), None), 900, status)
        if second.stage != "rolled-out":
            raise SystemExit(f"the second version ended {second.stage}: {second.details.get(second.stage)}")
        sent_at = _record_time(second.flow_id, "registered")  # job_events sends the deploy message with it
        full_at = _record_time(second.flow_id, "shifted", key="100")
        deployed_at = _record_time(second.flow_id, "deployed")
        status.update(f"traffic for {args.after:.0f} s more")
        time.sleep(args.after)  # the "after" phase: a measured interval
        stop.set()
        for c in clients:
            c.join(90)
        final = stack.workspace.get_endpoint(name)
    results = sorted(r for c in clients for r in c.results)
    phases = {"before": _phase_stats(results, started, sent_at), "during": _phase_stats(results, sent_at, full_at),
              "after": _phase_stats(results, full_at, float("inf"))}
    old, new = (naming.deployment_name(f.model.split(":")[1]) for f in (first, second))
    summary = {
        "clients": args.clients, "steps": args.steps, "step_wait": args.step_wait, "requests": len(results),
        "failed": sum(r[2] != 200 for r in results), "phases": phases,
        "deploy_message_to_100_s": round(full_at - sent_at, 1), "deployment_created_to_100_s": round(full_at - deployed_at, 1),
        "served_by": {d: sum(r[3] == d for r in results) for d in (old, new)},
        "same_scoring_uri": final.scoring_uri == endpoint.scoring_uri, "final_traffic": final.traffic,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")

    table = Table(title=f"scoring during a rollout ({args.clients} clients, steps {args.steps}, wait {args.step_wait})")
    for col in ("phase", "requests", "failed", "p50 ms", "p95 ms"):
        table.add_column(col, justify="right" if col != "phase" else "left")
    for phase, s in phases.items():
        table.add_row(phase, str(s["requests"]), str(s["failed"]), str(s["p50_ms"]), str(s["p95_ms"]))
    console.print(table)
    share = []  # the new deployment's share of the answers, per 5 s
    for t0 in range(0, int(results[-1][0] - started) + 1, 5):
        window = [r for r in results if started + t0 <= r[0] - 0 < started + t0 + 5 and r[3]]
        if window:
            share.append((t0, 100 * sum(r[3] == new for r in window) / len(window)))
    console.print("\n".join(plot({f"% answered by {new}": share}, width=60, height=8)).replace("step ", "s "))
    console.print(f"failed requests: [bold]{summary['failed']}[/] of {len(results)}; deploy message -> 100 %: "
                  f"{summary['deploy_message_to_100_s']} s (deployment created -> 100 %: "
                  f"{summary['deployment_created_to_100_s']} s); same scoring URI: {summary['same_scoring_uri']}")
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
