"""The local ML workspace: the stand-in for an Azure ML workspace on one machine.

- Jobs are subprocesses (`python -m local.train`) that really fine-tune a small Phi-3-architecture
  model with LoRA, log to MLflow and, when done, post the Azure ML event to the host's Event Grid
  route, as Azure ML does through Event Grid.
- The model registry is MLflow's, on SQLite in the state folder.
- An endpoint is a scoring-server process (`python -m local.scoring`) on a free loopback port,
  protected by a key.

State lives in plain files under the state folder (`jobs/<name>/`, `endpoints/<name>/`), written
atomically; a directory created with `mkdir` is the claim on a name, so two deliveries of the same
request cannot both create it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import uuid
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from shared import failpoints, settings
from shared.contracts import DEPLOYMENT_NAME
from shared.ml import procs
from shared.ml.procs import read_json, write_json_atomic  # noqa: F401  (the local modules' file helpers)
from shared.ml import base_model_name
from shared.ml.base import (AlreadyExists, DeploymentInfo, EndpointInfo, JobInfo, JobSpec, MLError,
                            ModelRef, NotFound, Unavailable)
from shared.ttl import format_utc, utcnow

ENDPOINT_START_TIMEOUT_S = 180.0
JOB_NICE = 10


def _lost(job_dir: Path, attempts: int) -> str:
    return (f"the job's process was lost (killed) in each of its {attempts} attempt(s) "
            f"(TUNEFLOW_LOCAL_JOB_ATTEMPTS); see {job_dir / 'log.txt'}")


class LocalWorkspace:
    workspace_id = "local"  # endpoint names need only be unique on this machine

    def __init__(self, state_dir: Path):
        self.root = Path(state_dir)
        self.jobs = self.root / "jobs"
        self.endpoints = self.root / "endpoints"
        for d in (self.jobs, self.endpoints):
            d.mkdir(parents=True, exist_ok=True)

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    # -- jobs ---------------------------------------------------------------------------------
    # A job folder holds job.json (the request, written once), spawn.json and process.json (the running
    # attempt's process and number, shared/ml/procs.py), result.json (written by the job when it ends) and
    # event.json (its Azure ML event was delivered or dead-lettered). Like a compute cluster, the workspace runs at most
    # TUNEFLOW_LOCAL_MAX_JOBS at once (the rest wait NotStarted) and starts a job whose process was lost
    # (killed, machine restarted) again, as Azure ML does with a preempted node, until
    # TUNEFLOW_LOCAL_JOB_ATTEMPTS; then the job fails with the reason and its Failed event is published.
    # `local/platform.py` does the starting, retrying and publishing while the stack runs.
    def submit(self, spec: JobSpec) -> JobInfo:
        """Claim the job's name with its record in one step: the folder is built under a temporary name and
        renamed into place, which fails when the name is taken; so no claim is ever without its record
        (a concurrent or repeated submit finds the job whole, and a crash leaves nothing half made)."""
        self.ensure_tracking_store()  # before the job exists: whoever starts it finds the store ready
        record = {"spec": spec.__dict__, "created_at": format_utc(utcnow()),
                  "events_url": settings.get("TUNEFLOW_EVENTS_URL"), "tracking_uri": self.tracking_uri,
                  "base_model_dir": self._base_model_dir()}
        building = self.jobs / f".{spec.name}.{uuid.uuid4().hex[:8]}"
        building.mkdir()
        write_json_atomic(building / "job.json", record)
        try:
            os.rename(building, self.jobs / spec.name)
        except OSError:  # ENOTEMPTY / EEXIST: the name is taken
            import shutil
            shutil.rmtree(building, ignore_errors=True)
            raise AlreadyExists(f"job {spec.name} already exists") from None
        self.start_queued()
        return self.get_job(spec.name)

    def ensure_tracking_store(self) -> None:
        """Create and migrate the MLflow database once, before any job: jobs started together on a new state
        folder would otherwise each create and migrate it at the same moment and fail ("table ... already
        exists"). It is built under another name and renamed into place, so a process killed half-way leaves
        no half-migrated database behind; and built by a child process, so the caller (the Functions host,
        which submits) does not import MLflow (seconds of CPU, holding the GIL) for it."""
        db = self.root / "mlflow.db"
        if db.exists():
            return
        with self._lock("tracking"):
            if db.exists():
                return
            done = subprocess.run([sys.executable, "-m", "shared.ml.local", "tracking-store", str(self.root)],
                                  env=procs.child_env(), capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise MLError(f"creating the MLflow tracking store in {self.root} failed: "
                              f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")

    def _base_model_dir(self) -> str:
        configured = settings.get("TUNEFLOW_BASE_MODEL_DIR")
        if configured:
            return str(Path(configured).resolve())
        return str(self.root / "base-models" / base_model_name())

    @staticmethod
    def max_attempts() -> int:
        return settings.get_int("TUNEFLOW_LOCAL_JOB_ATTEMPTS", 1)

    def _job_state(self, job_dir: Path) -> str:
        """queued | running | lost (its process died without a result) | done."""
        if (job_dir / "result.json").exists():
            return "done"
        if procs.spawned(job_dir) is None:
            return "queued"
        return "running" if procs.alive(job_dir) else "lost"

    @staticmethod
    def _attempt(job_dir: Path) -> int:
        return int((procs.spawned(job_dir) or {}).get("attempt") or 1)

    def _job_dirs(self) -> list[Path]:
        return sorted((d for d in self.jobs.iterdir() if not d.name.startswith(".") and (d / "job.json").exists()),
                      key=lambda d: ((read_json(d / "job.json") or {}).get("created_at", ""), d.name))

    def start_queued(self) -> list[str]:
        """Start queued jobs, oldest first, while fewer than TUNEFLOW_LOCAL_MAX_JOBS run; the names started."""
        limit = settings.get_int("TUNEFLOW_LOCAL_MAX_JOBS", 0)
        started = []
        with self._lock("jobs"):
            dirs = self._job_dirs()
            running = sum(self._job_state(d) == "running" for d in dirs)
            for job_dir in dirs:
                if limit and running >= limit:
                    break
                if self._job_state(job_dir) == "queued":
                    self._start_attempt(job_dir, 1)
                    started.append(job_dir.name)
                    running += 1
        return started

    def _start_attempt(self, job_dir: Path, attempt: int) -> None:
        self.ensure_tracking_store()
        procs.forget(job_dir)  # the lost attempt's records
        # At a lower CPU priority: in Azure a job runs on its own compute and never competes with the
        # Functions host; on one machine this keeps the host's hand-offs quick while jobs train.
        procs.spawn(job_dir, "local.train", job_dir / "log.txt",
                    {"attempt": attempt, "started_at": format_utc(utcnow())}, nice=JOB_NICE)

    def recover_lost(self) -> list[tuple[str, str]]:
        """Start each job whose process was lost again, or fail it after its last attempt (writing the result
        its process never wrote); [(job, "restarted" | "failed")]. The caller publishes the failures' events."""
        out = []
        with self._lock("jobs"):
            for job_dir in self._job_dirs():
                if self._job_state(job_dir) != "lost":
                    continue
                attempt = self._attempt(job_dir)
                if attempt < self.max_attempts():
                    with open(job_dir / "log.txt", "a") as f:
                        f.write(f"attempt {attempt} of job {job_dir.name} was lost: starting attempt {attempt + 1}\n")
                    self._start_attempt(job_dir, attempt + 1)
                    out.append((job_dir.name, "restarted"))
                else:
                    write_json_atomic(job_dir / "result.json", {
                        "status": "Failed", "finished_at": format_utc(utcnow()), "error": _lost(job_dir, attempt)})
                    out.append((job_dir.name, "failed"))
        return out

    def unannounced(self) -> list[str]:
        """Jobs that ended without their event being delivered, whose own process is gone (it died after
        writing its result): the workspace publishes their event, as Azure ML always does."""
        return [d.name for d in self._job_dirs() if (d / "result.json").exists() and not (d / "event.json").exists()
                and not procs.alive(d)]

    def job_record(self, name: str) -> dict:
        record = read_json(self.jobs / name / "job.json")
        if record is None:
            raise NotFound(f"job {name} not found")
        return record

    def get_job(self, name: str) -> JobInfo:
        job_dir = self.jobs / name
        tags = self.job_record(name)["spec"]["tags"]
        result = read_json(job_dir / "result.json")
        if result is not None:
            return JobInfo(name=name, status=result["status"], tags=tags, output_uri=result.get("output_uri", ""),
                           error=result.get("error", ""), metrics=result.get("metrics", {}))
        if procs.spawned(job_dir) is None:
            return JobInfo(name=name, status="NotStarted", tags=tags)  # waiting for a free slot
        if procs.alive(job_dir) or self._attempt(job_dir) < self.max_attempts():
            return JobInfo(name=name, status="Running", tags=tags)  # running, or lost and about to start again
        return JobInfo(name=name, status="Failed", tags=tags, error=_lost(job_dir, self._attempt(job_dir)))

    def job_metrics(self, job: JobInfo) -> dict:
        """What the job reported in its result: the gate's figures (eval_loss, base_eval_loss) and the curves."""
        return dict(job.metrics)

    # -- models -------------------------------------------------------------------------------
    def _client(self):
        from mlflow import MlflowClient  # heavy: only when a model is registered or looked up
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _find_version(self, client, name: str, version: str):
        from mlflow.exceptions import MlflowException
        try:
            found = client.search_model_versions(f"name = '{name}' and tag.`tuneflow.version` = '{version}'")
        except MlflowException:
            return None
        return found[0] if found else None

    def register_model(self, name: str, version: str, job: str, tags: dict) -> ModelRef:
        info = self.get_job(job)
        if info.status != "Completed" or not info.output_uri:
            raise MLError(f"job {job} is {info.status}, not Completed with an output: nothing to register")
        with self._lock("registry"):
            client = self._client()
            if self._find_version(client, name, version) is not None:
                raise AlreadyExists(f"model {name} version {version} already exists")
            import mlflow
            mlflow.set_tracking_uri(self.tracking_uri)  # register_model resolves the job's logged model there
            mlflow.set_registry_uri(self.tracking_uri)
            all_tags = {**tags, "tuneflow.version": version, "job": job}
            mv = mlflow.register_model(info.output_uri, name, tags=all_tags)
        return ModelRef(name=name, version=version, tags={**all_tags, "mlflow.version": str(mv.version)})

    def get_model(self, name: str, version: str) -> ModelRef:
        mv = self._find_version(self._client(), name, version)
        if mv is None:
            raise NotFound(f"model {name} version {version} not found")
        return ModelRef(name=name, version=version, tags={**mv.tags, "mlflow.version": str(mv.version)})

    @contextmanager
    def _lock(self, what: str, wait: bool = True):
        """An exclusive lock across processes (released when its holder dies); with wait=False it yields
        False at once when another holds it."""
        import fcntl
        locks = self.root / "locks"
        locks.mkdir(exist_ok=True)
        with open(locks / f"{what}.lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- endpoints ----------------------------------------------------------------------------
    # endpoint.json holds the provisioning state (Creating, Succeeded, Failed, Deleting), as Azure's
    # resource does: a scoring process that crashed leaves it Succeeded (requests fail until the
    # workspace restarts the process on the same port), as a managed endpoint's container does.
    # Everything that changes an endpoint holds its lock, so a deploy, a restart and a delete never
    # interleave, and one whose process died half-way is finished by the next.
    def deploy(self, endpoint: str, model: ModelRef, tags: dict) -> EndpointInfo:
        ep_dir = self.endpoints / endpoint
        with self._lock(f"endpoint-{endpoint}"):
            record = read_json(ep_dir / "endpoint.json")
            if record is not None and record["state"] == "Succeeded":
                raise AlreadyExists(f"endpoint {endpoint} already exists")
            if record is None:  # new, or a claim whose record was never written (a crash half-way)
                ep_dir.mkdir(exist_ok=True)
                key_file = ep_dir / "key"
                if not key_file.exists():
                    key_file.touch(mode=0o600)
                    key_file.write_text(secrets.token_urlsafe(32))
                mlflow_version = model.tags.get("mlflow.version") or \
                    self.get_model(model.name, model.version).tags["mlflow.version"]
                write_json_atomic(ep_dir / "endpoint.json", {
                    "name": endpoint, "tags": tags, "created_at": format_utc(utcnow()), "state": "Creating",
                    "model": {"name": model.name, "version": model.version,
                              "uri": f"models:/{model.name}/{mlflow_version}"},
                    "tracking_uri": self.tracking_uri, "port": 0})
            else:  # Creating (its deploy died) or Failed: start its server again
                self._set_state(ep_dir, "Creating")
            self._start_server(ep_dir, raise_on_failure=True)
        return self.get_endpoint(endpoint)

    def _start_server(self, ep_dir: Path, raise_on_failure: bool = False) -> bool:
        """Start the endpoint's scoring process (on its recorded port, once it has one) and wait until it
        serves; the endpoint's lock is held by the caller. One already starting (its starter died) is waited
        for, not doubled. Failed to start: the state becomes Failed."""
        record = read_json(ep_dir / "endpoint.json")
        if not procs.alive(ep_dir):
            procs.forget(ep_dir)
            procs.spawn(ep_dir, "local.scoring", ep_dir / "log.txt")
        deadline = time.monotonic() + ENDPOINT_START_TIMEOUT_S
        while time.monotonic() < deadline:
            server = procs.info(ep_dir)
            if server.get("ready"):
                write_json_atomic(ep_dir / "endpoint.json", {**record, "state": "Succeeded", "port": server["port"]})
                return True
            if not procs.alive(ep_dir):
                break
            time.sleep(0.1)
        procs.stop(ep_dir)
        self._set_state(ep_dir, "Failed")
        tail = (ep_dir / "log.txt").read_text(errors="replace")[-600:] if (ep_dir / "log.txt").exists() else ""
        message = f"endpoint {ep_dir.name}: scoring server did not start: {tail.strip().splitlines()[-1:]}"
        if raise_on_failure:
            raise MLError(message)
        return False

    def _set_state(self, ep_dir: Path, state: str) -> None:
        record = read_json(ep_dir / "endpoint.json")
        record["state"] = state
        write_json_atomic(ep_dir / "endpoint.json", record)

    def get_endpoint(self, name: str) -> EndpointInfo:
        ep_dir = self.endpoints / name
        record = read_json(ep_dir / "endpoint.json")
        if record is None:
            raise NotFound(f"endpoint {name} not found")
        state = record["state"]
        deployment = DeploymentInfo(name=DEPLOYMENT_NAME, instance_type="local-cpu", instance_count=1,
                                    provisioning_state=state, traffic=100 if state == "Succeeded" else 0)
        uri = f"http://127.0.0.1:{record['port']}/score" if record.get("port") else ""
        return EndpointInfo(name=name, tags=record["tags"], provisioning_state=state,
                            created_at=record["created_at"], scoring_uri=uri, deployments=(deployment,))

    def set_endpoint_tags(self, name: str, tags: dict) -> EndpointInfo:
        ep_dir = self.endpoints / name
        with self._lock(f"endpoint-{name}"):
            record = read_json(ep_dir / "endpoint.json")
            if record is None:
                raise NotFound(f"endpoint {name} not found")
            record["tags"] = dict(tags)
            write_json_atomic(ep_dir / "endpoint.json", record)
        return self.get_endpoint(name)

    def list_endpoints(self) -> list[EndpointInfo]:
        out = []
        for ep_dir in sorted(self.endpoints.iterdir()):
            try:
                out.append(self.get_endpoint(ep_dir.name))
            except NotFound:
                continue  # a claim whose record was never written (crash half-way): not an endpoint yet
        return out

    def invoke(self, endpoint: str, body: dict):
        info = self.get_endpoint(endpoint)
        if not info.scoring_uri or info.provisioning_state != "Succeeded":
            raise MLError(f"endpoint {endpoint} is {info.provisioning_state}, not serving")
        key = (self.endpoints / endpoint / "key").read_text().strip()
        req = urllib.request.Request(info.scoring_uri, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise MLError(f"endpoint {endpoint} answered {exc.code}: {exc.read()[:300].decode(errors='replace')}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:  # its process is gone or restarting: Azure answers 502
            raise Unavailable(f"endpoint {endpoint} is not answering ({getattr(exc, 'reason', exc)}): "
                              f"its scoring process is restarting") from None

    def delete_endpoint(self, name: str) -> None:
        ep_dir = self.endpoints / name
        with self._lock(f"endpoint-{name}"):
            if not (ep_dir / "endpoint.json").exists():
                raise NotFound(f"endpoint {name} not found")
            self._finish_delete(ep_dir)

    def _finish_delete(self, ep_dir: Path) -> None:
        """Deleting, its process stopped, its folder removed (the endpoint's lock is held by the caller)."""
        import shutil
        self._set_state(ep_dir, "Deleting")
        failpoints.reached("workspace.endpoint-deleting")
        procs.stop(ep_dir)
        shutil.rmtree(ep_dir)

    # -- what the platform does on its own (local/platform.py calls these) ------------------------
    def repair_endpoints(self, wait: bool = True) -> list[tuple[str, str]]:
        """What Azure does on its own for endpoints: a scoring process that should serve and does not
        (Succeeded whose process died, Creating whose deploy died half-way) is started, a deletion whose
        deleter died is finished. [(endpoint, "started" | "failed" | "deleted")]. With wait=False an
        endpoint whose lock is held (a deploy, restart or delete in progress) is skipped."""
        out = []
        for ep_dir in sorted(self.endpoints.iterdir()):
            if not self._needs_repair(read_json(ep_dir / "endpoint.json"), ep_dir):
                continue
            with self._lock(f"endpoint-{ep_dir.name}", wait=wait) as held:
                record = read_json(ep_dir / "endpoint.json")  # again, under the lock
                if not held or not self._needs_repair(record, ep_dir):
                    continue
                if record["state"] == "Deleting":
                    self._finish_delete(ep_dir)
                    out.append((ep_dir.name, "deleted"))
                else:
                    out.append((ep_dir.name, "started" if self._start_server(ep_dir) else "failed"))
        return out

    @staticmethod
    def _needs_repair(record: dict | None, ep_dir: Path) -> bool:
        if not record:
            return False
        return record["state"] == "Deleting" or (record["state"] in ("Succeeded", "Creating") and
                                                 not (procs.alive(ep_dir) and procs.info(ep_dir).get("ready")))

    def resume(self) -> None:
        """At the stack's start: what should serve, serves; what was being deleted, is gone."""
        self.repair_endpoints()

    def stop_all(self) -> None:
        """Stop every scoring server and running job this workspace has (the stack is shutting down)."""
        for sub in (self.endpoints, self.jobs):
            for d in sub.iterdir():
                procs.stop(d)


def build_tracking_store(root: Path) -> None:
    """`python -m shared.ml.local tracking-store STATE_DIR`: MLflow's SQLite store, built beside and renamed
    into place (the caller holds the workspace's tracking lock)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    building = root / f"mlflow.db.building-{uuid.uuid4().hex[:8]}"
    store = SqlAlchemyStore(f"sqlite:///{building}", (root / "artifacts").resolve().as_uri())
    store.engine.dispose()
    failpoints.reached("workspace.tracking-store-built")
    os.replace(building, root / "mlflow.db")


if __name__ == "__main__":
    if sys.argv[1:2] == ["tracking-store"]:
        build_tracking_store(Path(sys.argv[2]))
