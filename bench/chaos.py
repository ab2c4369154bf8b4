"""Chaos run: many datasets at once on the local stack while processes are SIGKILLed at random moments;
then a verdict from the outside: each dataset became exactly what it should, exactly once, and
nothing is lost, stuck or left running.

    python bench/chaos.py --seed 1 --datasets 12 --kills 8 --out bench/results/chaos-1.json

Seeded and reproducible in its choices (the mix of datasets, their upload order and timing, what is
killed and when); the machine's timing still varies. The kills, `--kills` in all: the Functions host
(restarted, as the platform restarts a worker), a training job, a scoring process, and Azurite once
(restarted on the same data folder; see bench/chaoslib/proxy.py for how). Training is cut to a few
steps of the tiny model, so that orchestration, not training, dominates. The verdict is printed as
a table and written as JSON to --out; the exit code is 0 only when there is no violation.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.chaoslib import plan as plans  # noqa: E402
from bench.chaoslib.observe import Observer  # noqa: E402
from bench.chaoslib.stack import ChaosStack  # noqa: E402
from bench.chaoslib.verdict import Observed, Verdict, judge, open_ports, read_models, read_storage  # noqa: E402

JOB_ATTEMPTS = 3
SETTINGS = {
    "TUNEFLOW_ML_BACKEND": "local",
    "TUNEFLOW_FINETUNE_PARAMS": json.dumps({"max_steps": 3, "eval_rows": 8, "per_device_train_batch_size": 4}),
    "TUNEFLOW_ENDPOINT_TTL": "90s", "TUNEFLOW_ENDPOINT_TTL_BY_DATASET": "{}",
    "TUNEFLOW_REAPER_SCHEDULE": "*/5 * * * * *", "TUNEFLOW_REAPER_GRACE": "2m",
    # Every endpoint of the run expires within minutes of the others, by design: the breaker that stops
    # a flood of deletions in production would stop the run's own clean-up.
    "TUNEFLOW_REAPER_MAX_DELETES": "1000", "TUNEFLOW_REAPER_MAX_DELETE_SHARE": "1.0",
    "TUNEFLOW_LOCAL_LEASE_S": "15", "TUNEFLOW_LOCAL_MAX_JOBS": "3",
    "TUNEFLOW_LOCAL_JOB_ATTEMPTS": str(JOB_ATTEMPTS),
    # A re-dropped dataset rolls its second version out into the first one's endpoint, in steps, while
    # processes are killed; the first version's deployment is reaped once the rollback window ends.
    "TUNEFLOW_ROLLOUT_STEPS": "10,50,100", "TUNEFLOW_ROLLOUT_STEP_WAIT": "3s", "TUNEFLOW_ROLLOUT_PROBES": "1",
    "TUNEFLOW_ROLLBACK_WINDOW": "20s", "TUNEFLOW_JOB_MAX_RUNTIME": "1h",
}
KILLABLE = {"train": "local.train", "scoring": "local.scoring", "router": "local.router"}
TERMINAL = ("reaped", "job-failed", "deploy-failed", "superseded", "gate-failed", "refused")


def kill_sequence(rng: random.Random, n: int) -> list[str]:
    """Each kind once (Azurite exactly once), the rest of the kills at random among the others."""
    first = ["azurite", "host", "train", "scoring"][:n]
    rest = [rng.choice(("host", "train", "train", "scoring", "router")) for _ in range(n - len(first))]
    sequence = first + rest
    rng.shuffle(sequence)
    return sequence


class Drops:
    """Uploads each dataset's files at their planned moments, concurrently, retrying while storage is down."""

    def __init__(self, stack: ChaosStack, dataset_plans: list[plans.DatasetPlan], started: float):
        self.stack, self.plans, self.started = stack, dataset_plans, started
        self.log: list[dict] = []
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._drop, args=(p,), daemon=True) for p in dataset_plans]

    def start(self) -> "Drops":
        for t in self.threads:
            t.start()
        return self

    @property
    def done(self) -> bool:
        return not any(t.is_alive() for t in self.threads)

    def _drop(self, plan: plans.DatasetPlan) -> None:
        from azure.storage.blob import BlobServiceClient
        container = BlobServiceClient.from_connection_string(self.stack.connection_string).get_container_client("datasets")
        for upload in plan.uploads:
            time.sleep(max(0.0, self.started + upload.at - time.time()))  # the planned moment, not synchronization
            deadline = time.monotonic() + 180
            while True:
                try:
                    container.upload_blob(upload.blob, upload.data, overwrite=True)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)  # storage is down (the Azurite kill): try again
            with self._lock:
                self.log.append({"at": round(time.time() - self.started, 1), "blob": upload.blob})


def settled(stack: ChaosStack, dataset_plans: list[plans.DatasetPlan]) -> bool:
    try:
        seen = read_storage(stack.connection_string)
    except Exception:
        return False  # storage is down
    for plan in dataset_plans:
        flows = seen["flows"].get(plan.name, [])
        if plan.expect == "deployed":
            if len(flows) < plan.flows or not all(any(s in f["stages"] for s in TERMINAL) for f in flows):
                return False
        elif plan.expect == "gate-failed":
            if len(flows) < plan.flows or not all(any(s in f["stages"] for s in (*TERMINAL, "gate-failed", "gate-passed"))
                                                  for f in flows):
                return False
        elif plan.expect == "refused" and not any("refused" in f["stages"] for f in flows):
            return False
        elif plan.expect == "invalid" and not any(plan.uploads[0].blob in str(r.get("where")) for r in seen["invalid_reports"]):
            return False
        elif plan.expect == "waiting" and plan.name not in seen["waiting"]:
            return False
    return not any((stack.state / "endpoints").glob("*/endpoint.json"))


def kill(stack: ChaosStack, target: str, rng: random.Random) -> dict | None:
    """Kill one `target`; None when there is nothing of that kind running right now."""
    if target == "host":
        pid = stack.kill_host()
        stack.start_host()  # as the platform restarts a worker
        return {"pid": pid, "detail": f"host restarted ({stack.host_starts} starts)"}
    if target == "azurite":
        return {"pid": stack.kill_azurite(), "detail": "restarted on the same data folder"}
    running = sorted(stack.processes(KILLABLE[target]), key=lambda p: p["pid"])
    if not running:
        return None
    victim = rng.choice(running)
    stack.kill(victim["pid"])
    return {"pid": victim["pid"], "detail": victim["dir"]}


def view(started, dataset_plans, kills, planned, drops, note):
    from rich.table import Table
    table = Table(title=f"tuneflow chaos — {time.time() - started:5.0f} s", min_width=80)
    table.add_column("what")
    table.add_column("progress")
    table.add_row("uploads", f"{len(drops.log)} / {sum(len(p.uploads) for p in dataset_plans)}")
    table.add_row("kills", f"{len(kills)} / {planned}  " + ", ".join(f"{k['target']}@{k['at']:.0f}s" for k in kills[-4:]))
    table.add_row("state", note)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--datasets", type=int, default=12)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--deadline", type=float, default=1800, help="seconds for every flow to finish")
    parser.add_argument("--out", default=None, help="the verdict as JSON (default bench/results/chaos-SEED.json)")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (.tuneflow/chaos-SEED)")
    args = parser.parse_args(argv)
    out = Path(args.out or ROOT / "bench" / "results" / f"chaos-{args.seed}.json")
    work = ROOT / ".tuneflow" / f"chaos-{args.seed}"
    leftover(work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)

    from rich.console import Console
    from rich.live import Live

    from local.tinymodel import build
    console = Console()
    rng = random.Random(args.seed)
    dataset_plans = plans.build(args.seed, args.datasets)
    targets = kill_sequence(rng, args.kills)
    settings = {**SETTINGS, "TUNEFLOW_BASE_MODEL": "phi-3-tiny", "TUNEFLOW_BASE_MODEL_DIR": str(build(work / "base-model"))}
    (work / "plan.json").write_text(json.dumps({"datasets": [p.as_dict() for p in dataset_plans], "kills": targets},
                                               indent=2))
    console.print(f"[bold]chaos run[/] seed {args.seed}: {len(dataset_plans)} datasets, {args.kills} kills "
                  f"({', '.join(targets)}); folder {work}")
    stack = ChaosStack(work, settings).start()
    started = time.time()
    observer = Observer(stack.state, started).start()
    kills: list[dict] = []
    drops = Drops(stack, dataset_plans, started).start()
    next_kill, postponed = started + rng.uniform(4, 10), 0.0
    note, verdict = "flows running", None
    try:
        with Live(view(started, dataset_plans, kills, args.kills, drops, note), console=console,
                  refresh_per_second=1) as live:
            while True:
                now = time.time()
                if targets and now >= next_kill:
                    target = targets[0]
                    if postponed > 120 and target in KILLABLE:
                        target = "host"  # none appeared in two minutes
                    done = kill(stack, target, rng)
                    if done is None:
                        postponed += 2
                        next_kill = now + 2
                    else:
                        targets.pop(0)
                        kills.append({"n": len(kills) + 1, "at": round(now - started, 1), "target": target, **done})
                        postponed, next_kill = 0.0, time.time() + rng.uniform(5, 18)
                elif not targets and drops.done and settled(stack, dataset_plans):
                    note = "settled"
                    break
                if now - started > args.deadline:
                    note = f"deadline of {args.deadline:.0f} s passed"
                    break
                live.update(view(started, dataset_plans, kills, args.kills, drops, note))
                time.sleep(1)  # the driver's cadence
            live.update(view(started, dataset_plans, kills, args.kills, drops, note))
        seen = observer.stop()
        storage_view = read_storage(stack.connection_string)
        running = stack.processes("local.scoring") + stack.processes("local.train")
        endpoints_left = sorted(p.parent.name for p in (stack.state / "endpoints").glob("*/endpoint.json"))
        models = read_models(stack.state)
    finally:
        stack.stop()
    wall = time.time() - started
    left = stack.all_processes()
    ports = open_ports(set().union(*(e["ports"] for e in seen.endpoints.values())) if seen.endpoints else set())
    observed = Observed(flows=storage_view["flows"], waiting=storage_view["waiting"],
                        invalid_reports=storage_view["invalid_reports"], prepared=storage_view["prepared"],
                        models=models, queues=storage_view["queues"], dead_letters=storage_view["dead_letters"],
                        endpoints_left=endpoints_left, running_while_up=running, left_after_stop=left, ports_open=ports)
    verdict = judge(Verdict(seed=args.seed, datasets=len(dataset_plans), kills=len(kills)), dataset_plans, observed,
                    seen, kills, started, JOB_ATTEMPTS)
    verdict.wall_s = round(wall, 1)
    if note != "settled":
        verdict.violation("stuck", "-", "every flow finished before the deadline", note, kills[-1] if kills else None)
    report = {**verdict.as_dict(), "kill_log": kills, "drops": drops.log, "settled": note}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print_verdict(console, verdict, kills)
    if not args.keep and not verdict.violations:
        shutil.rmtree(work, ignore_errors=True)
    console.print(f"verdict: {out}" + ("" if verdict.violations else "  (no violation)"))
    return 0 if not verdict.violations else 1


def leftover(work: Path) -> None:
    """An earlier run of this seed that was interrupted may have left processes in its folder: stop them."""
    import psutil
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if str(work) in " ".join(proc.info["cmdline"] or []) and proc.info["pid"] != os.getpid():
            try:
                proc.kill()
            except psutil.Error:
                pass


def print_verdict(console, verdict: Verdict, kills: list[dict]) -> None:
    from rich.table import Table
    table = Table(title=f"chaos verdict — seed {verdict.seed}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key in ("datasets", "kills", "flows_expected", "flows_exactly_once", "duplicates", "lost", "stuck", "orphans",
                "refused_as_expected", "failed_as_documented", "rolled_out_over_a_previous", "wall_s"):
        table.add_row(key, str(getattr(verdict, key)))
    console.print(table)
    console.print("kills: " + ", ".join(f"{k['n']}:{k['target']}@{k['at']:.0f}s" for k in kills))
    if verdict.violations:
        v = Table(title="violations", show_lines=True)
        for col in ("kind", "dataset", "expected", "found", "after kill"):
            v.add_column(col, overflow="fold")
        for item in verdict.violations:
            k = item["after_kill"]
            v.add_row(item["kind"], item["dataset"], item["expected"], item["found"],
                      f"{k['n']}:{k['target']}@{k['at']:.0f}s" if k else "-")
        console.print(v)


if __name__ == "__main__":
    sys.exit(main())
