"""Load: many datasets dropped at once on the local stack (2 cores): every flow must complete, and each
stage's hand-off latency is measured under that load, beside the one-at-a-time figures of
bench/handoff_latency.py. Training is excluded (a few steps of the tiny model, and not a hand-off).

    python bench/load.py --datasets 50 [--out bench/results/load.json]
    python bench/load.py --arrival-only      # the burst only: stop once every fine-tune request is enqueued

Hand-offs as bench/handoffs.py defines them, from the host's own invocation records.
Memory: the Functions host process's peak RSS (sampled every 0.2 s), and the peak of everything the
run started (host, training jobs, scoring servers, Azurite) together.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.chaos import SETTINGS  # noqa: E402
from bench.chaoslib.stack import ChaosStack  # noqa: E402
from bench.chaoslib.verdict import read_storage  # noqa: E402
from bench.handoffs import STAGES, handoffs, percentile, ts  # noqa: E402

DONE = ("reaped", "job-failed", "deploy-failed", "refused")


class Memory:
    """Peak RSS of the host process, and of the run's processes together: the host, its children (training
    jobs and scoring servers) and Azurite. Sampled from known pids only, so the sampling costs little CPU."""

    def __init__(self, stack: ChaosStack, interval: float = 0.5):
        self.stack, self.interval = stack, interval
        self.host_peak = self.all_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil
        while not self._stop.wait(self.interval):
            try:
                host = psutil.Process(self.stack.host.pid)
                procs = [host, *host.children(recursive=True), psutil.Process(self.stack.azurite.process.pid)]
                rss = []
                for proc in procs:
                    try:
                        rss.append(proc.memory_info().rss)
                    except psutil.Error:
                        rss.append(0)
            except psutil.Error:
                continue
            self.host_peak = max(self.host_peak, rss[0])
            self.all_peak = max(self.all_peak, sum(rss))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def finished(connection_string: str) -> int:
    from azure.storage.blob import BlobServiceClient
    from shared import flows
    from azure.core.exceptions import ResourceNotFoundError
    log = BlobServiceClient.from_connection_string(connection_string).get_container_client("flows")
    try:
        records = flows.read_all(log)
    except ResourceNotFoundError:  # nothing recorded yet
        return 0
    return sum(1 for f in flows.summarize(records) if any(s in f.stage_times for s in DONE))


def arrival_only(console, stack: ChaosStack, names: list[str], uploads: dict[str, float], started: float, args) -> int:
    """Wait until every dataset's fine-tune request is enqueued (the host's invocation records), then report the
    data_arrival hand-off of the burst; the stack is stopped by the caller."""
    from bench.chaoslib.verdict import read_storage
    from local.waiting import wait_for
    log = stack.work / "invocations.jsonl"

    def sent() -> dict[str, dict]:
        first: dict[str, dict] = {}
        for line in (log.read_text().splitlines() if log.exists() else []):
            r = json.loads(line)
            if r["function"] == "data_arrival" and r["outcome"] == "Succeeded" and r["outputs_sent_at"]:
                first.setdefault(r["flow_id"], r)
        return first
    wait_for(lambda: len(sent()) >= len(names), args.deadline, "every dataset's fine-tune request", interval=0.5)
    flows = read_storage(stack.connection_string)["flows"]
    upload_of = {f["flow_id"]: uploads[n] for n in names for f in flows.get(n, [])}
    values = [ts(r["outputs_sent_at"]) - upload_of[fid] for fid, r in sent().items() if fid in upload_of]
    report = {"datasets": len(names), "flows": len(values), "wall_s": round(time.time() - started, 1),
              "data_arrival": {"p50_s": round(statistics.median(values), 3), "p95_s": round(percentile(values, 0.95), 3),
                               "max_s": round(max(values), 3)}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    d = report["data_arrival"]
    console.print(f"{len(values)} of {len(names)} fine-tune requests enqueued; data_arrival p50 {d['p50_s']:.2f} s, "
                  f"p95 {d['p95_s']:.2f} s, max {d['max_s']:.2f} s ({args.out})")
    return 0 if len(values) == len(names) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=50)
    parser.add_argument("--rows", type=int, default=80)
    parser.add_argument("--deadline", type=float, default=3600)
    parser.add_argument("--out", default=None, help="default bench/results/load.json (load-arrival.json with "
                                                    "--arrival-only)")
    parser.add_argument("--arrival-only", action="store_true",
                        help="measure the data_arrival hand-off of the burst only (seconds, not minutes)")
    args = parser.parse_args(argv)
    args.out = args.out or str(ROOT / "bench" / "results" / ("load-arrival.json" if args.arrival_only else "load.json"))
    from azure.storage.blob import BlobServiceClient
    from rich.console import Console
    from rich.table import Table

    from bench.chaos import leftover
    from bench.chaoslib.plan import _file
    from local import sampledata
    from local.tinymodel import build
    console = Console()
    work = ROOT / ".tuneflow" / "load"
    leftover(work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    settings = {**SETTINGS, "TUNEFLOW_BASE_MODEL": "phi-3-tiny", "TUNEFLOW_BASE_MODEL_DIR": str(build(work / "base-model"))}
    names = [f"load-{i:03d}" for i in range(args.datasets)]
    files = {n: _file(list(sampledata.rows(args.rows, seed=7000 + i)), ".jsonl") for i, n in enumerate(names)}
    stack = ChaosStack(work, settings, proxy=False).start()  # nothing kills Azurite here
    uploads: dict[str, float] = {}
    try:
        with Memory(stack) as memory:
            container = BlobServiceClient.from_connection_string(stack.connection_string).get_container_client("datasets")
            barrier = threading.Barrier(len(names))

            def drop(name: str) -> None:
                barrier.wait()
                container.upload_blob(f"{name}/data.jsonl", files[name], overwrite=True)
                uploads[name] = time.time()
            threads = [threading.Thread(target=drop, args=(n,)) for n in names]
            started = time.time()
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            if args.arrival_only:
                return arrival_only(console, stack, names, uploads, started, args)
            console.print(f"{len(uploads)} datasets dropped at once in {time.time() - started:.1f} s; waiting for "
                          f"every flow (training, deploy, smoke test, reap)")
            with console.status("flows running") as status:
                while time.time() - started < args.deadline:
                    # The driver's own reads compete with the stack for the same 2 cores and Azurite: only the
                    # flow records, every 10 s (the full outside read comes once, at the end).
                    time.sleep(10)
                    done = finished(stack.connection_string)
                    status.update(f"{done} / {len(names)} flows finished, {time.time() - started:.0f} s")
                    if done >= len(names):
                        break
            wall = time.time() - started
        flows = read_storage(stack.connection_string)["flows"]
    finally:
        stack.stop()
    complete = [n for n in names if any("rolled-out" in f["stages"] and "reaped" in f["stages"] for f in flows.get(n, []))]
    by_flow = {f["flow_id"]: uploads[n] for n in names for f in flows.get(n, []) if n in uploads}
    records = [json.loads(line) for line in (work / "invocations.jsonl").read_text().splitlines()]
    values = handoffs(records, by_flow)
    summary = {k: {"flows": len(v), "p50_s": round(statistics.median(v), 3), "p95_s": round(percentile(v, 0.95), 3),
                   "max_s": round(max(v), 3)} for k, v in values.items() if v}
    durations = {k: [r["duration_ms"] / 1000 for r in records if r["function"] == k and r["outcome"] == "Succeeded"]
                 for k in STAGES}
    incomplete = {n: [{"stages": list(f["stages"]), "details": f["details"]} for f in flows.get(n, [])]
                  for n in sorted(set(names) - set(complete))}
    report = {"datasets": len(names), "complete": len(complete), "wall_s": round(wall, 1),
              "host_peak_rss_mb": round(memory.host_peak / 2**20), "all_processes_peak_rss_mb": round(memory.all_peak / 2**20),
              "handoff": summary, "run_s": {k: {"p50_s": round(statistics.median(v), 3), "p95_s": round(percentile(v, 0.95), 3)}
                                             for k, v in durations.items() if v},
              "incomplete": incomplete}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    table = Table(title=f"{len(names)} datasets at once: {len(complete)} complete in {wall:.0f} s")
    for col in ("hand-off", "flows", "p50 s", "p95 s", "max s"):
        table.add_column(col, justify="right" if col != "hand-off" else "left")
    for k, v in summary.items():
        table.add_row(k, str(v["flows"]), f"{v['p50_s']:.2f}", f"{v['p95_s']:.2f}", f"{v['max_s']:.2f}")
    console.print(table)
    console.print(f"host peak RSS {report['host_peak_rss_mb']} MB; all processes together {report['all_processes_peak_rss_mb']} MB")
    if incomplete:
        console.print(f"[red]incomplete:[/] {json.dumps(incomplete)[:2000]} (folder kept: {work})")
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
