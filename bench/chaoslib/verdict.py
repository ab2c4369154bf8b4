"""The chaos run's verdict, from the outside: storage (flow records, prepared versions, queues, dead
letters), the ML workspace (job folders, MLflow's registry read straight from its SQLite file,
endpoints), and the processes and ports left. Each dataset's plan says what must have come of it.

A killed training job is started again by the local platform (as Azure ML replaces a lost node) up
to TUNEFLOW_LOCAL_JOB_ATTEMPTS: its flow must still complete, exactly once. Only a job killed in
every one of its attempts may end its flow `job-failed`, and then it must say why.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bench.chaoslib.observe import Seen
from bench.chaoslib.plan import DatasetPlan

DEPLOYED_STAGES = ("prepared", "submitted", "registered", "deployed", "smoke-tested", "rolled-out", "reaped")
# A flow whose dataset already serves a later flow's model (a re-drop overtook it) is not rolled out over it.
SUPERSEDED_STAGES = ("prepared", "submitted", "registered", "superseded")


@dataclass
class Verdict:
    seed: int
    datasets: int
    kills: int
    flows_expected: int = 0
    flows_exactly_once: int = 0
    duplicates: int = 0
    lost: int = 0
    stuck: int = 0
    orphans: int = 0
    refused_as_expected: int = 0
    failed_as_documented: int = 0  # flows whose job was killed in every attempt: job-failed, saying why
    rolled_out_over_a_previous: int = 0  # versions rolled out in steps into an endpoint serving an earlier one
    wall_s: float = 0.0
    violations: list[dict] = field(default_factory=list)

    def violation(self, kind: str, dataset: str, expected: str, found: str, after_kill: dict | None) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        self.violations.append({"kind": kind, "dataset": dataset, "expected": expected, "found": found,
                                "after_kill": after_kill})

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Observed:
    """Everything read from the outside once the run settled."""
    flows: dict[str, list[dict]]  # dataset -> its flows: {flow_id, stages: {stage: at}, details}
    waiting: set[str]
    invalid_reports: list[dict]
    prepared: dict[str, set[str]]  # dataset -> versions with a manifest
    models: dict[str, Counter]  # dataset -> Counter of dataset versions over registered model versions
    queues: dict[str, int]  # queue -> messages left
    dead_letters: list[str]  # Event Grid dead-letter blobs
    endpoints_left: list[str]
    running_while_up: list[dict]  # scoring servers and jobs still running once everything was reaped
    left_after_stop: list[dict]  # any process of the run after the stack stopped
    ports_open: list[int]


def read_storage(connection_string: str) -> dict:
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueServiceClient
    from shared import flows
    blobs = BlobServiceClient.from_connection_string(connection_string)
    existing = {c.name for c in blobs.list_containers()}
    for name in ("flows", "prepared", "eventgrid-deadletters"):  # a container nothing wrote to yet holds nothing
        if name not in existing:
            try:
                blobs.create_container(name)
            except ResourceExistsError:
                pass
    log = blobs.get_container_client("flows")
    records = flows.read_all(log)
    by_dataset: dict[str, list[dict]] = defaultdict(list)
    for status in flows.summarize(records):
        by_dataset[status.dataset].append({"flow_id": status.flow_id, "stages": status.stage_times,
                                           "details": status.details, "version": status.version,
                                           "endpoint": status.endpoint, "job": status.job})
    waiting = {m["dataset"] for m in flows.read_waiting(log, records)}
    prepared_container = blobs.get_container_client("prepared")
    prepared: dict[str, set[str]] = defaultdict(set)
    invalid = []
    for blob in prepared_container.list_blobs():
        parts = blob.name.split("/")
        if parts[0] == "_invalid" and parts[-1] == "error.json":
            invalid.append(json.loads(prepared_container.download_blob(blob.name).readall()))
        elif len(parts) == 3 and parts[2] == "manifest.json":
            prepared[parts[0]].add(parts[1])
    queues = {}
    queue_service = QueueServiceClient.from_connection_string(connection_string)
    for q in queue_service.list_queues():
        queues[q.name] = len(list(queue_service.get_queue_client(q.name).peek_messages(max_messages=32)))
    dead = [b.name for b in blobs.get_container_client("eventgrid-deadletters").list_blobs()]
    return {"flows": dict(by_dataset), "waiting": waiting, "invalid_reports": invalid, "prepared": dict(prepared),
            "queues": queues, "dead_letters": dead}


def read_models(state: Path) -> dict[str, Counter]:
    """Registered model versions per dataset (and dataset version), straight from MLflow's SQLite file."""
    db = state / "mlflow.db"
    out: dict[str, Counter] = defaultdict(Counter)
    if not db.exists():
        return out
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        tags = defaultdict(dict)
        for name, version, key, value in conn.execute("SELECT name, version, key, value FROM model_version_tags"):
            tags[(name, version)][key] = value
        for name, version in conn.execute("SELECT name, version FROM model_versions"):
            t = tags.get((name, version), {})
            out[t.get("dataset", "?")][t.get("dataset-version", "?")] += 1
    return out


def open_ports(ports: set[int]) -> list[int]:
    still = []
    for port in sorted(ports):
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                still.append(port)
    return still


def _at(text: str, started: float) -> float:
    return datetime.fromisoformat(text).timestamp() - started


def _kill_before(kills: list[dict], moment: float | None) -> dict | None:
    before = [k for k in kills if moment is None or k["at"] <= moment]
    return before[-1] if before else None


def judge(verdict: Verdict, plans: list[DatasetPlan], observed: Observed, seen: Seen, kills: list[dict],
          started: float, job_attempts: int) -> Verdict:
    killed_jobs = Counter(k["detail"] for k in kills if k["target"] == "train")
    for plan in plans:
        flows = observed.flows.get(plan.name, [])
        last = max((_at(at, started) for f in flows for at in f["stages"].values()), default=None)
        after = _kill_before(kills, last)
        jobs = {name: tags for name, tags in seen.jobs.items() if tags.get("dataset") == plan.name}
        endpoints = {name: e["tags"] for name, e in seen.endpoints.items() if e.get("tags", {}).get("dataset") == plan.name}
        if plan.expect == "deployed":
            verdict.flows_expected += plan.flows
            flow_ids = {f["flow_id"] for f in flows}
            deployments = {d: tags for d, tags in seen.deployments.items() if tags.get("flow-id") in flow_ids}
            _judge_deployed(verdict, plan, flows, jobs, endpoints, observed, killed_jobs, job_attempts, after,
                            deployments)
            continue
        if plan.expect == "gate-failed":
            verdict.flows_expected += plan.flows
            _judge_gate_failed(verdict, plan, flows, jobs, endpoints, observed, killed_jobs, job_attempts, after)
            continue
        ok = True
        if plan.expect == "refused":
            ok = [sorted(f["stages"]) for f in flows] == [["refused"]] and not jobs and not endpoints \
                and not observed.prepared.get(plan.name)
        elif plan.expect == "invalid":
            ok = not flows and not jobs and any(plan.uploads[0].blob in str(r.get("where", "")) for r in observed.invalid_reports)
        elif plan.expect == "waiting":
            ok = not flows and not jobs and plan.name in observed.waiting
        if ok:
            verdict.refused_as_expected += 1
        else:
            verdict.violation("lost" if not flows else "duplicates", plan.name, plan.expect,
                              f"flows {[sorted(f['stages']) for f in flows]}, jobs {sorted(jobs)}, "
                              f"endpoints {sorted(endpoints)}", after)
    _judge_leftovers(verdict, observed, kills)
    return verdict


def _judge_deployed(verdict, plan, flows, jobs, endpoints, observed, killed_jobs, job_attempts, after,
                    deployments=None) -> None:
    """Each flow exactly once: one job, one model version, one deployment on the dataset's one endpoint
    (a re-dropped dataset rolls its second version out into the endpoint of the first), rolled out and
    reaped; or superseded, and then never deployed."""
    name = plan.name
    deployments = deployments or {}
    if not flows:
        return verdict.violation("lost", name, f"{plan.flows} flow(s) deployed and reaped", "no flow at all", after)
    if len(flows) > plan.flows:
        verdict.violation("duplicates", name, f"{plan.flows} flow(s)", f"{len(flows)} flows", after)
    versions = observed.prepared.get(name, set())
    if len(versions) != plan.flows:
        verdict.violation("duplicates" if len(versions) > plan.flows else "lost", name,
                          f"{plan.flows} prepared version(s)", f"{len(versions)}: {sorted(versions)}", after)
    if len(endpoints) > 1:
        verdict.violation("duplicates", name, "one endpoint per dataset", f"endpoints {sorted(endpoints)}", after)
    models = observed.models.get(name, Counter())
    for flow in flows:
        stages, short = flow["stages"], flow["flow_id"][:8]
        if "job-failed" in stages and killed_jobs.get(flow["job"], 0) >= job_attempts \
                and "lost (killed)" in str(flow["details"].get("job-failed")):
            verdict.failed_as_documented += 1  # every attempt killed: the platform's documented outcome
            continue
        flow_deployments = [d for d, tags in deployments.items() if tags.get("flow-id") == flow["flow_id"]]
        superseded = "superseded" in stages
        want = SUPERSEDED_STAGES if superseded else DEPLOYED_STAGES
        missing = [s for s in want if s not in stages]
        if missing:
            terminal = any(s in stages for s in ("reaped", "job-failed", "deploy-failed", "rollout-failed"))
            verdict.violation("lost" if terminal else "stuck", name, f"flow {short} through {', '.join(want)}",
                              f"reached {list(stages)}; missing {missing}; {_errors(flow)}", after)
            continue
        flow_jobs = [j for j, tags in jobs.items() if tags.get("flow-id") == flow["flow_id"]]
        counts = {"jobs": len(flow_jobs), "model versions": models[flow["version"]],
                  "deployments": len(flow_deployments), "endpoints": len(endpoints)}
        expected = {"jobs": 1, "model versions": 1, "deployments": 0 if superseded else 1,
                    "endpoints": counts["endpoints"] if superseded else 1}
        extra = {what: n for what, n in counts.items() if n != expected[what]}
        if extra:
            verdict.violation("duplicates" if any(n > expected[w] for w, n in extra.items()) else "lost", name,
                              f"flow {short}: one job, one model version, "
                              + ("no deployment" if superseded else "one deployment on one endpoint"),
                              f"{counts}: jobs {flow_jobs}, deployments {flow_deployments}, endpoints {sorted(endpoints)}",
                              after)
            continue
        verdict.flows_exactly_once += 1
        if (flow["details"].get("rolled-out") or {}).get("previous"):
            verdict.rolled_out_over_a_previous += 1


GATE_FAILED_STAGES = ("prepared", "submitted", "registered", "gate-failed")


def _judge_gate_failed(verdict, plan, flows, jobs, endpoints, observed, killed_jobs, job_attempts, after) -> None:
    """A fine-tune that learned nothing useful: one flow, one job, one model version, the gate's verdict
    `gate-failed`, and never an endpoint or a deploy."""
    name = plan.name
    if len(flows) != plan.flows:
        return verdict.violation("lost" if not flows else "duplicates", name, f"{plan.flows} flow(s) gate-failed",
                                 f"{len(flows)} flows", after)
    models = observed.models.get(name, Counter())
    for flow in flows:
        stages, short = flow["stages"], flow["flow_id"][:8]
        if "job-failed" in stages and killed_jobs.get(flow["job"], 0) >= job_attempts \
                and "lost (killed)" in str(flow["details"].get("job-failed")):
            verdict.failed_as_documented += 1
            continue
        missing = [s for s in GATE_FAILED_STAGES if s not in stages]
        deployed = [s for s in ("gate-passed", "deployed", "deploy-failed", "smoke-tested", "smoke-failed") if s in stages]
        flow_jobs = [j for j, tags in jobs.items() if tags.get("flow-id") == flow["flow_id"]]
        if missing or deployed or endpoints:
            verdict.violation("stuck" if missing and not deployed else "duplicates", name,
                              f"flow {short} through {', '.join(GATE_FAILED_STAGES)} and no endpoint",
                              f"reached {list(stages)}; endpoints {sorted(endpoints)}; {_errors(flow)}", after)
        elif len(flow_jobs) != 1 or models[flow["version"]] != 1:
            verdict.violation("duplicates", name, f"flow {short}: one job, one model version",
                              f"jobs {flow_jobs}, model versions {models[flow['version']]}", after)
        else:
            verdict.flows_exactly_once += 1


def _errors(flow: dict) -> str:
    errors = {stage: d.get("error") or d.get("reason") for stage, d in flow["details"].items()
              if isinstance(d, dict) and (d.get("error") or (stage.endswith("-failed") and d.get("reason")))}
    return f"errors {errors}" if errors else "no error recorded"


def _judge_leftovers(verdict: Verdict, observed: Observed, kills: list[dict]) -> None:
    last = kills[-1] if kills else None
    for queue, count in sorted(observed.queues.items()):
        if not count:
            continue
        given_up = queue.endswith(("-poison", "-deadletter"))
        verdict.violation("lost" if given_up else "stuck", "-", f"queue {queue} empty",
                          f"{count} message(s) left" + (" (given up on)" if given_up else ""), last)
    for blob in observed.dead_letters:
        verdict.violation("lost", "-", "no Event Grid dead letter", f"eventgrid-deadletters/{blob}", last)
    for name in observed.endpoints_left:
        verdict.violation("orphans", "-", "every endpoint reaped", f"endpoint {name} left", last)
    for proc in observed.running_while_up:
        verdict.violation("orphans", "-", "no scoring server or job running once all was reaped", str(proc), last)
    for proc in observed.left_after_stop:
        verdict.violation("orphans", "-", "no process of the run after the stack stopped", str(proc), last)
    for port in observed.ports_open:
        verdict.violation("orphans", "-", "every scoring port closed", f"port {port} still accepts", last)
