"""What Azure ML does on its own, for the local workspace: the platform side of jobs and endpoints.

The app never calls this; it reacts to what it produces, as it reacts to Azure ML:

- job events: a finished job's `RunCompleted` (or `RunStatusChanged` Failed) event is published to
  the host's Event Grid route at least once (`announce`): by the job process itself when it ends,
  and, when that process died after writing its result, by the platform. `event.json` in the job
  folder records that it went out (delivered, or dead-lettered as Event Grid does);
- a compute cluster: queued jobs start as slots free up (TUNEFLOW_LOCAL_MAX_JOBS), and a job whose
  process was lost (killed) starts again, as Azure ML replaces a preempted node, until
  TUNEFLOW_LOCAL_JOB_ATTEMPTS; then it fails with the reason and its Failed event is published;
- endpoints: a scoring process that died is started again on the same port (a managed endpoint's
  container is restarted by its liveness probe); an endpoint whose deploy died half-way is finished,
  and so is a deletion whose deleter died (Azure completes a delete it accepted).

`Platform(workspace).run(stop)` does all of it, once a `poll_s`; the local stack runs it in a thread
of the host's process (so it stops with the host, and the next host takes over).
"""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shared.contracts import EVENT_RUN_COMPLETED, EVENT_RUN_STATUS_CHANGED, PIPELINE_RUN_TYPE
from shared.ml.local import LocalWorkspace
from shared.ml.procs import read_json, write_json_atomic
from shared.ttl import format_utc, utcnow

log = logging.getLogger("tuneflow.platform")
LOCAL_WORKSPACE_TOPIC = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/local/providers/"
                         "Microsoft.MachineLearningServices/workspaces/local")
EVENT_TTL_S = 1800.0  # how long a job's event is retried before it is dead-lettered (Event Grid: 24 h)


def run_event(job: dict, status: str) -> list[dict]:
    """The Azure ML event for this pipeline run, in the Event Grid schema (see shared/reference/events)."""
    spec = job["spec"]
    data = {"experimentId": str(uuid.uuid5(uuid.NAMESPACE_URL, spec["experiment"])),
            "experimentName": spec["experiment"], "runId": spec["name"], "runType": PIPELINE_RUN_TYPE,
            "runTags": spec["tags"], "runProperties": {"azureml.runsource": PIPELINE_RUN_TYPE}}
    if status != "Completed":
        data["runStatus"] = status
    return [{"topic": LOCAL_WORKSPACE_TOPIC, "subject": f"experiments/{data['experimentId']}/runs/{spec['name']}",
             "eventType": EVENT_RUN_COMPLETED if status == "Completed" else EVENT_RUN_STATUS_CHANGED,
             "eventTime": format_utc(utcnow()), "id": str(uuid.uuid4()), "data": data,
             "dataVersion": "", "metadataVersion": "1"}]


def post_event(url: str, events: list[dict], deadline_s: float = EVENT_TTL_S, stop: threading.Event | None = None):
    """Deliver like Event Grid (local/eventgrid.py): 30 s per answer, its retry schedule, dead-lettered
    to `eventgrid-deadletters` when refused (400/401/403/413) or not accepted before `deadline_s`.
    True: delivered; False: dead-lettered; None: not settled (stopped first, or the dead letter could not
    be written): publish it again later."""
    from local.eventgrid import JOB_EVENTS_SUBSCRIPTION, RetryPolicy, deliver
    try:
        result = deliver(url, events, subscription=JOB_EVENTS_SUBSCRIPTION, policy=RetryPolicy(ttl_s=deadline_s),
                         stop=stop)
    except Exception as exc:  # the dead letter could not be written either
        log.warning("event delivery to %s failed and was not dead-lettered: %s", url, exc)
        return None
    if result.outcome == "Stopped":
        return None
    if not result.delivered:
        log.warning("event delivery to %s failed after %d attempt(s) (%s); dead-lettered: %s", url, result.attempts,
                    result.last_outcome, result.dead_letter_blob)
    return result.delivered


def announce(job_dir: Path, stop: threading.Event | None = None) -> bool | None:
    """Publish the finished job's event (its result.json says how it ended) and record that it went out."""
    job, result = read_json(job_dir / "job.json"), read_json(job_dir / "result.json")
    delivered = post_event(job["events_url"], run_event(job, result["status"]), stop=stop)
    if delivered is not None:
        write_json_atomic(job_dir / "event.json", {"delivered": delivered, "status": result["status"],
                                                   "at": format_utc(utcnow())})
    return delivered


class Platform:
    """The loop that plays Azure ML's own part for one local workspace."""

    def __init__(self, workspace: LocalWorkspace, poll_s: float = 0.5, workers: int = 8):
        self.workspace, self.poll_s = workspace, poll_s
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="platform")
        self._busy: set[str] = set()  # jobs being announced, endpoints being restarted
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # storage or a file mid-write: the next tick sees it again
                log.exception("platform tick failed")
            stop.wait(self.poll_s)
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def tick(self) -> None:
        ws = self.workspace
        for name in ws.start_queued():
            log.info("job %s started", name)
        for name, what in ws.recover_lost():
            log.warning("job %s: its process was lost; %s", name, "started again" if what == "restarted" else
                        "no attempts left: Failed")
        for name in ws.unannounced():
            self._background(f"job:{name}", announce, ws.jobs / name, self._stop)
        self._background("endpoints", self._repair_endpoints)

    def _repair_endpoints(self) -> None:
        for name, what in self.workspace.repair_endpoints(wait=False):
            (log.error if what == "failed" else log.info)("endpoint %s: %s", name, {
                "started": "scoring process started again", "failed": "scoring process did not start: Failed",
                "deleted": "deletion finished"}[what])

    def _background(self, key: str, fn, *args) -> None:
        with self._lock:
            if key in self._busy:
                return
            self._busy.add(key)

        def run():
            try:
                fn(*args)
            except Exception:
                log.exception("platform: %s failed", key)
            finally:
                with self._lock:
                    self._busy.discard(key)
        try:
            self._pool.submit(run)
        except RuntimeError:  # shutting down
            with self._lock:
                self._busy.discard(key)
