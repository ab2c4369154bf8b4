"""The local ML workspace: the stand-in for an Azure ML workspace on one machine.

- Jobs are subprocesses (`python -m local.train`) that really fine-tune a small Phi-3-architecture
  model with LoRA, log to MLflow and, when done, post the Azure ML event to the host's Event Grid
  route, as Azure ML does through Event Grid.
- The model registry is MLflow's, on SQLite in the state folder.
- An endpoint is a router process (`python -m local.router`) on a stable loopback port, protected by
  a key, in front of its deployments, each a scoring-server process (`python -m local.scoring`): live
  traffic by weight, mirror traffic, the `azureml-model-deployment` header, as a managed endpoint.

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
from shared.ml import procs
from shared.ml.procs import read_json, write_json_atomic  # noqa: F401  (the local modules' file helpers)
from shared.ml import base_model_name
from shared.ml.base import (AlreadyExists, DeploymentInfo, EndpointInfo, HasTraffic, JobInfo, JobSpec, MLError,
                            ModelRef, NotFound, NotReady, Unavailable, check_traffic)
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
        record = self.job_record(name)
        tags, known = record["spec"]["tags"], {"created_at": record.get("created_at", ""), "compute": "local-cpu"}
        result = read_json(job_dir / "result.json")
        if result is not None:
            return JobInfo(name=name, status=result["status"], tags=tags, output_uri=result.get("output_uri", ""),
                           error=result.get("error", ""), metrics=result.get("metrics", {}), **known)
        if procs.spawned(job_dir) is None:
            return JobInfo(name=name, status="NotStarted", tags=tags, **known)  # waiting for a free slot
        if procs.alive(job_dir) or self._attempt(job_dir) < self.max_attempts():
            return JobInfo(name=name, status="Running", tags=tags, **known)  # running, or lost and about to restart
        return JobInfo(name=name, status="Failed", tags=tags, error=_lost(job_dir, self._attempt(job_dir)), **known)

    def list_jobs(self, tags: dict) -> list[JobInfo]:
        jobs = (self.get_job(d.name) for d in self._job_dirs())
        return [j for j in jobs if all(j.tags.get(k) == v for k, v in tags.items())]

    def cancel_job(self, name: str) -> None:
        """As Azure ML's cancel: the job ends Canceled (its event is published by the platform, as for any end);
        one already ended stays as it ended. The result is written first, so the platform never restarts it."""
        job_dir = self.jobs / name
        self.job_record(name)  # NotFound
        with self._lock("jobs"):
            if (job_dir / "result.json").exists():
                return
            write_json_atomic(job_dir / "result.json", {"status": "Canceled", "finished_at": format_utc(utcnow()),
                                                        "error": "canceled (by the reaper or by hand)"})
        procs.stop(job_dir)

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
    # An endpoint is a folder: endpoint.json (provisioning state, tags, live `traffic` and `mirror` shares,
    # the router's port), its key, and its router process (local/router.py: the one stable address); each
    # deployment a folder under deployments/ with deployment.json (model, state, port) and its scoring
    # process. States as Azure's resources have them (Creating, Succeeded, Failed, Deleting): a process that
    # crashed leaves its resource Succeeded (requests fail until the platform restarts it on the same port),
    # as a managed endpoint's container does. Everything that changes an endpoint or its deployments holds
    # the endpoint's lock, so a deploy, a traffic change, a restart and a delete never interleave, and one
    # whose process died half-way is finished by the next.
    def _ep_dir(self, name: str) -> Path:
        return self.endpoints / name

    @staticmethod
    def _dep_dir(ep_dir: Path, deployment: str) -> Path:
        return ep_dir / "deployments" / deployment

    def create_endpoint(self, name: str, tags: dict) -> EndpointInfo:
        ep_dir = self._ep_dir(name)
        with self._lock(f"endpoint-{name}"):
            record = read_json(ep_dir / "endpoint.json")
            if record is not None and record["state"] != "Creating":
                raise AlreadyExists(f"endpoint {name} already exists")
            if record is None:  # new, or a claim whose record was never written (a crash half-way)
                (ep_dir / "deployments").mkdir(parents=True, exist_ok=True)
                key_file = ep_dir / "key"
                if not key_file.exists():
                    key_file.touch(mode=0o600)
                    key_file.write_text(secrets.token_urlsafe(32))
                write_json_atomic(ep_dir / "endpoint.json", {
                    "name": name, "tags": dict(tags), "created_at": format_utc(utcnow()), "state": "Creating",
                    "traffic": {}, "mirror": {}, "port": 0})
            self._start_process(ep_dir, ep_dir / "endpoint.json", "local.router", raise_on_failure=True)
        return self.get_endpoint(name)

    def create_deployment(self, endpoint: str, deployment: str, model: ModelRef, tags: dict) -> DeploymentInfo:
        ep_dir = self._ep_dir(endpoint)
        dep_dir = self._dep_dir(ep_dir, deployment)
        with self._lock(f"endpoint-{endpoint}"):
            ep = read_json(ep_dir / "endpoint.json")
            if ep is None:
                raise NotFound(f"endpoint {endpoint} not found")
            if ep["state"] != "Succeeded":
                raise NotReady(f"endpoint {endpoint} is {ep['state']}: retry later")
            record = read_json(dep_dir / "deployment.json")
            if record is not None and record["state"] == "Failed":
                raise MLError(f"deployment {deployment} of {endpoint} is Failed: delete it and create it again")
            if record is None:
                dep_dir.mkdir(parents=True, exist_ok=True)
                mlflow_version = model.tags.get("mlflow.version") or \
                    self.get_model(model.name, model.version).tags["mlflow.version"]
                record = {"name": deployment, "endpoint": endpoint, "tags": dict(tags),
                          "created_at": format_utc(utcnow()), "state": "Creating",
                          "model": {"name": model.name, "version": model.version,
                                    "uri": f"models:/{model.name}/{mlflow_version}"},
                          "tracking_uri": self.tracking_uri, "port": 0}
                write_json_atomic(dep_dir / "deployment.json", record)
            if record["state"] != "Succeeded" or not self._serving(dep_dir):
                self._start_process(dep_dir, dep_dir / "deployment.json", "local.scoring", raise_on_failure=True)
        return self.get_endpoint(endpoint).deployment(deployment)

    @staticmethod
    def _serving(folder: Path) -> bool:
        return procs.alive(folder) and bool(procs.info(folder).get("ready"))

    def _start_process(self, folder: Path, record_file: Path, module: str, raise_on_failure: bool = False) -> bool:
        """Start the folder's process (a router or a scoring server, on its recorded port once it has one) and
        wait until it serves; the endpoint's lock is held by the caller. One already starting (its starter
        died) is waited for, not doubled. Failed to start: the state becomes Failed."""
        if not procs.alive(folder):
            procs.forget(folder)
            procs.spawn(folder, module, folder / "log.txt")
        deadline = time.monotonic() + ENDPOINT_START_TIMEOUT_S
        while time.monotonic() < deadline:
            server = procs.info(folder)
            if server.get("ready"):
                write_json_atomic(record_file, {**read_json(record_file), "state": "Succeeded", "port": server["port"]})
                return True
            if not procs.alive(folder):
                break
            time.sleep(0.1)
        procs.stop(folder)
        self._set_state(record_file, "Failed")
        tail = (folder / "log.txt").read_text(errors="replace")[-600:] if (folder / "log.txt").exists() else ""
        message = f"{folder.name}: {module} did not start: {tail.strip().splitlines()[-1:]}"
        if raise_on_failure:
            raise MLError(message)
        return False

    @staticmethod
    def _set_state(record_file: Path, state: str) -> None:
        record = read_json(record_file)
        record["state"] = state
        write_json_atomic(record_file, record)

    def _deployment_records(self, ep_dir: Path) -> list[dict]:
        out = []
        for dep_dir in sorted((ep_dir / "deployments").iterdir()) if (ep_dir / "deployments").is_dir() else ():
            record = read_json(dep_dir / "deployment.json")
            if record is not None:
                out.append(record)
        return out

    def get_endpoint(self, name: str) -> EndpointInfo:
        ep_dir = self._ep_dir(name)
        record = read_json(ep_dir / "endpoint.json")
        if record is None:
            raise NotFound(f"endpoint {name} not found")
        traffic, mirror = record.get("traffic") or {}, record.get("mirror") or {}
        deployments = tuple(
            DeploymentInfo(name=d["name"], instance_type="local-cpu", instance_count=1, provisioning_state=d["state"],
                           traffic=int(traffic.get(d["name"], 0)), mirror_traffic=int(mirror.get(d["name"], 0)),
                           created_at=d["created_at"], tags=dict(d.get("tags") or {}),
                           model=f"{d['model']['name']}:{d['model']['version']}")
            for d in self._deployment_records(ep_dir))
        uri = f"http://127.0.0.1:{record['port']}/score" if record.get("port") else ""
        return EndpointInfo(name=name, tags=record["tags"], provisioning_state=record["state"],
                            created_at=record["created_at"], scoring_uri=uri, deployments=deployments)

    def set_traffic(self, endpoint: str, traffic: dict, mirror: dict, tags: dict | None = None) -> EndpointInfo:
        ep_dir = self._ep_dir(endpoint)
        with self._lock(f"endpoint-{endpoint}"):
            record = read_json(ep_dir / "endpoint.json")
            if record is None:
                raise NotFound(f"endpoint {endpoint} not found")
            states = {d["name"]: d["state"] for d in self._deployment_records(ep_dir)}
            check_traffic(endpoint, states, dict(traffic), dict(mirror))
            record.update(traffic={k: v for k, v in traffic.items() if v}, mirror={k: v for k, v in mirror.items() if v})
            if tags is not None:
                record["tags"] = dict(tags)
            write_json_atomic(ep_dir / "endpoint.json", record)  # the router routes by it from the next request
        return self.get_endpoint(endpoint)

    def set_endpoint_tags(self, name: str, tags: dict) -> EndpointInfo:
        ep_dir = self._ep_dir(name)
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

    def key(self, endpoint: str) -> str:
        return (self._ep_dir(endpoint) / "key").read_text().strip()

    def invoke(self, endpoint: str, body: dict, deployment: str | None = None):
        info = self.get_endpoint(endpoint)
        if not info.scoring_uri or info.provisioning_state != "Succeeded":
            raise MLError(f"endpoint {endpoint} is {info.provisioning_state}, not serving")
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.key(endpoint)}"}
        if deployment:
            headers["azureml-model-deployment"] = deployment
        req = urllib.request.Request(info.scoring_uri, data=json.dumps(body).encode(), method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            text = exc.read()[:300].decode(errors="replace")
            if exc.code in (502, 503, 504):  # the deployment's process is (re)starting: worth retrying
                raise Unavailable(f"endpoint {endpoint} answered {exc.code}: {text}") from None
            raise MLError(f"endpoint {endpoint} answered {exc.code}: {text}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:  # its router is gone or restarting
            raise Unavailable(f"endpoint {endpoint} is not answering ({getattr(exc, 'reason', exc)}): "
                              f"its router process is restarting") from None

    def deployment_errors(self, endpoint: str, deployment: str) -> int | None:
        """Live requests the deployment answered with a 5xx (or not at all), as its router counted them."""
        return int((read_json(self._ep_dir(endpoint) / "errors.json") or {}).get(deployment, 0))

    def delete_deployment(self, endpoint: str, deployment: str) -> None:
        ep_dir = self._ep_dir(endpoint)
        dep_dir = self._dep_dir(ep_dir, deployment)
        with self._lock(f"endpoint-{endpoint}"):
            record = read_json(ep_dir / "endpoint.json")
            if record is None or not (dep_dir / "deployment.json").exists():
                raise NotFound(f"deployment {deployment} of endpoint {endpoint} not found")
            if (record.get("traffic") or {}).get(deployment) or (record.get("mirror") or {}).get(deployment):
                raise HasTraffic(f"deployment {deployment} of endpoint {endpoint} has live or mirror traffic: set it "
                                 f"to 0 before deleting it")
            self._finish_delete(dep_dir, dep_dir / "deployment.json")

    def delete_endpoint(self, name: str) -> None:
        ep_dir = self._ep_dir(name)
        with self._lock(f"endpoint-{name}"):
            if not (ep_dir / "endpoint.json").exists():
                raise NotFound(f"endpoint {name} not found")
            self._finish_delete(ep_dir, ep_dir / "endpoint.json")

    def _finish_delete(self, folder: Path, record_file: Path) -> None:
        """Deleting, its processes stopped, its folder removed (the endpoint's lock is held by the caller)."""
        import shutil
        self._set_state(record_file, "Deleting")
        failpoints.reached("workspace.endpoint-deleting")
        for dep_dir in sorted((folder / "deployments").iterdir()) if (folder / "deployments").is_dir() else ():
            procs.stop(dep_dir)
        procs.stop(folder)
        shutil.rmtree(folder)

    # -- what the platform does on its own (local/platform.py calls these) ------------------------
    def repair_endpoints(self, wait: bool = True) -> list[tuple[str, str]]:
        """What Azure does on its own for endpoints: a router or scoring process that should serve and does not
        (Succeeded whose process died, Creating whose creator died half-way) is started, a deletion whose
        deleter died is finished. [(endpoint or endpoint/deployment, "started" | "failed" | "deleted")]. With
        wait=False an endpoint whose lock is held (a deploy, restart or delete in progress) is skipped."""
        out = []
        for ep_dir in sorted(self.endpoints.iterdir()):
            folders = [(ep_dir, ep_dir / "endpoint.json", "local.router", ep_dir.name)] + [
                (d, d / "deployment.json", "local.scoring", f"{ep_dir.name}/{d.name}")
                for d in (sorted((ep_dir / "deployments").iterdir()) if (ep_dir / "deployments").is_dir() else ())]
            if not any(self._needs_repair(read_json(f), folder) for folder, f, _m, _n in folders):
                continue
            with self._lock(f"endpoint-{ep_dir.name}", wait=wait) as held:
                if not held:
                    continue
                for folder, record_file, module, label in folders:
                    record = read_json(record_file)  # again, under the lock
                    if not folder.exists() or not self._needs_repair(record, folder):
                        continue
                    if record["state"] == "Deleting":
                        self._finish_delete(folder, record_file)
                        out.append((label, "deleted"))
                        if folder == ep_dir:
                            break
                    else:
                        out.append((label, "started" if self._start_process(folder, record_file, module) else "failed"))
        return out

    @staticmethod
    def _needs_repair(record: dict | None, folder: Path) -> bool:
        if not record:
            return False
        return record["state"] == "Deleting" or (record["state"] in ("Succeeded", "Creating") and
                                                 not (procs.alive(folder) and procs.info(folder).get("ready")))

    def resume(self) -> None:
        """At the stack's start: what should serve, serves; what was being deleted, is gone."""
        self.repair_endpoints()

    def stop_all(self) -> None:
        """Stop every router, scoring server and running job this workspace has (the stack is shutting down)."""
        for ep_dir in self.endpoints.iterdir():
            for dep_dir in (ep_dir / "deployments").iterdir() if (ep_dir / "deployments").is_dir() else ():
                procs.stop(dep_dir)
            procs.stop(ep_dir)
        for d in self.jobs.iterdir():
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
