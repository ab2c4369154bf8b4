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
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from shared import settings
from shared.contracts import DEPLOYMENT_NAME
from shared.ml import base_model_name
from shared.ml.base import (AlreadyExists, DeploymentInfo, EndpointInfo, JobInfo, JobSpec, MLError,
                            ModelRef, NotFound)
from shared.ttl import format_utc, utcnow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENDPOINT_START_TIMEOUT_S = 180.0
# Children this process started, so their exit is noticed (and no zombie looks alive). A pid.json or
# server.json holds a process handle, {"pid", "create_time"}: a pid is reused once its process is gone,
# the pair is not, so a recycled pid never makes a dead job or endpoint look alive or gets signalled.
_CHILDREN: dict[int, subprocess.Popen] = {}


def write_json_atomic(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def process_handle(pid: int) -> dict:
    """What identifies a process for good: its pid and creation time (a pid alone is reused)."""
    import psutil
    return {"pid": pid, "create_time": psutil.Process(pid).create_time()}


def _ours(handle: dict | None):
    """The psutil.Process the handle names, if it still runs (not a zombie) and is the same process:
    same pid and creation time. A handle without a creation time (an older file) is not ours."""
    import psutil
    pid, created = (handle or {}).get("pid"), (handle or {}).get("create_time")
    if not isinstance(pid, int) or pid <= 0 or not isinstance(created, (int, float)):
        return None
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return None  # our child exited (and is reaped now)
    try:
        proc = psutil.Process(pid)
        if proc.create_time() != created or proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return proc


def process_alive(handle: dict | None) -> bool:
    return _ours(handle) is not None


def stop_process(handle: dict | None, timeout: float = 10.0) -> None:
    """SIGTERM the process (its whole group when it leads one, as the children started here do), wait
    for it to go, SIGKILL if it does not. A process that is not the one the handle names is left alone."""
    import psutil
    proc = _ours(handle)
    if proc is not None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                if os.getpgid(proc.pid) == proc.pid:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
            except (ProcessLookupError, psutil.Error):
                break
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and process_alive(handle):
                time.sleep(0.05)
            if not process_alive(handle):
                break
    child = _CHILDREN.pop((handle or {}).get("pid"), None) if proc is not None else None
    if child is not None:
        child.wait(timeout=timeout)  # reaped: no zombie left behind


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    env.update(extra)
    return env


def spawn(module: str, arg: Path, log: Path, **env: str) -> dict:
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", module, str(arg)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=child_env(**env), start_new_session=True,
                                cwd=str(PROJECT_ROOT))
    _CHILDREN[proc.pid] = proc
    return process_handle(proc.pid)  # a child not yet waited for keeps its pid, so this is its creation time


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
    def submit(self, spec: JobSpec) -> JobInfo:
        job_dir = self.jobs / spec.name
        try:
            job_dir.mkdir()
        except FileExistsError:
            raise AlreadyExists(f"job {spec.name} already exists") from None
        record = {"spec": spec.__dict__, "created_at": format_utc(utcnow()),
                  "events_url": settings.get("TUNEFLOW_EVENTS_URL"), "tracking_uri": self.tracking_uri,
                  "base_model_dir": self._base_model_dir()}
        write_json_atomic(job_dir / "job.json", record)
        self._ensure_tracking_store()
        write_json_atomic(job_dir / "pid.json", spawn("local.train", job_dir, job_dir / "log.txt"))
        return self.get_job(spec.name)

    def _ensure_tracking_store(self) -> None:
        """Create and migrate the MLflow database once, before any job: jobs started together on a new state
        folder would otherwise each create and migrate it at the same moment and fail ("table ... already exists")."""
        ready = self.root / "mlflow.db.ready"
        if ready.exists():
            return
        with self._lock("tracking"):
            if ready.exists():
                return
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # heavy: once per state folder
            SqlAlchemyStore(self.tracking_uri, (self.root / "artifacts").resolve().as_uri())
            ready.write_text("created\n")  # only after the migrations completed

    def _base_model_dir(self) -> str:
        configured = settings.get("TUNEFLOW_BASE_MODEL_DIR")
        if configured:
            return str(Path(configured).resolve())
        return str(self.root / "base-models" / base_model_name())

    def get_job(self, name: str) -> JobInfo:
        job_dir = self.jobs / name
        record = read_json(job_dir / "job.json")
        if record is None:
            raise NotFound(f"job {name} not found")
        tags = record["spec"]["tags"]
        result = read_json(job_dir / "result.json")
        if result is not None:
            return JobInfo(name=name, status=result["status"], tags=tags, output_uri=result.get("output_uri", ""),
                           error=result.get("error", ""), metrics=result.get("metrics", {}))
        handle = read_json(job_dir / "pid.json")
        if process_alive(handle):
            return JobInfo(name=name, status="Running", tags=tags)
        if handle is None and time.time() - (job_dir / "job.json").stat().st_mtime < 30:
            return JobInfo(name=name, status="NotStarted", tags=tags)
        return JobInfo(name=name, status="Failed", tags=tags,
                       error=f"job process exited without a result; see {job_dir / 'log.txt'}")

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
    def _lock(self, what: str):
        import fcntl
        with open(self.root / f"{what}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- endpoints ----------------------------------------------------------------------------
    def deploy(self, endpoint: str, model: ModelRef, tags: dict) -> EndpointInfo:
        ep_dir = self.endpoints / endpoint
        try:
            ep_dir.mkdir()
        except FileExistsError:
            raise AlreadyExists(f"endpoint {endpoint} already exists") from None
        key_file = ep_dir / "key"
        key_file.touch(mode=0o600)
        key_file.write_text(secrets.token_urlsafe(32))
        mlflow_version = model.tags.get("mlflow.version") or self.get_model(model.name, model.version).tags["mlflow.version"]
        write_json_atomic(ep_dir / "endpoint.json", {
            "name": endpoint, "tags": tags, "created_at": format_utc(utcnow()), "state": "Creating",
            "model": {"name": model.name, "version": model.version,
                      "uri": f"models:/{model.name}/{mlflow_version}"},
            "tracking_uri": self.tracking_uri})
        self._start_server(ep_dir)
        return self.get_endpoint(endpoint)

    def _start_server(self, ep_dir: Path) -> None:
        (ep_dir / "server.json").unlink(missing_ok=True)
        handle = spawn("local.scoring", ep_dir, ep_dir / "log.txt")
        deadline = time.monotonic() + ENDPOINT_START_TIMEOUT_S
        while time.monotonic() < deadline:
            server = read_json(ep_dir / "server.json")
            if server is not None and server.get("pid") == handle["pid"]:
                # The server writes its port and pid; the creation time is the one taken at spawn.
                write_json_atomic(ep_dir / "server.json", {**server, **handle})
                self._set_state(ep_dir, "Succeeded")
                return
            if not process_alive(handle):
                break
            time.sleep(0.1)
        stop_process(handle)
        self._set_state(ep_dir, "Failed")
        tail = (ep_dir / "log.txt").read_text(errors="replace")[-600:]
        raise MLError(f"endpoint {ep_dir.name}: scoring server did not start: {tail.strip().splitlines()[-1:]}")

    def _set_state(self, ep_dir: Path, state: str) -> None:
        record = read_json(ep_dir / "endpoint.json")
        record["state"] = state
        write_json_atomic(ep_dir / "endpoint.json", record)

    def get_endpoint(self, name: str) -> EndpointInfo:
        ep_dir = self.endpoints / name
        record = read_json(ep_dir / "endpoint.json")
        if record is None:
            raise NotFound(f"endpoint {name} not found")
        server = read_json(ep_dir / "server.json") or {}
        state = record["state"]
        if state == "Succeeded" and not process_alive(server):
            state = "Failed"  # the process is gone: the endpoint no longer serves
        deployment = DeploymentInfo(name=DEPLOYMENT_NAME, instance_type="local-cpu", instance_count=1,
                                    provisioning_state=state, traffic=100 if state == "Succeeded" else 0)
        uri = f"http://127.0.0.1:{server['port']}/score" if server.get("port") else ""
        return EndpointInfo(name=name, tags=record["tags"], provisioning_state=state,
                            created_at=record["created_at"], scoring_uri=uri, deployments=(deployment,))

    def set_endpoint_tags(self, name: str, tags: dict) -> EndpointInfo:
        ep_dir = self.endpoints / name
        with self._lock("endpoints"):
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

    def delete_endpoint(self, name: str) -> None:
        ep_dir = self.endpoints / name
        if not (ep_dir / "endpoint.json").exists():
            raise NotFound(f"endpoint {name} not found")
        self._set_state(ep_dir, "Deleting")
        stop_process(read_json(ep_dir / "server.json"))
        import shutil
        shutil.rmtree(ep_dir)

    # -- lifecycle of the local stack ------------------------------------------------------------
    def resume(self) -> None:
        """Restart the scoring servers of endpoints that exist but whose process is gone."""
        for ep_dir in sorted(self.endpoints.iterdir()):
            record = read_json(ep_dir / "endpoint.json")
            if record and record["state"] == "Succeeded" and not process_alive(read_json(ep_dir / "server.json")):
                try:
                    self._start_server(ep_dir)
                except MLError:
                    pass  # stays Failed and visible in `tuneflow status`

    def stop_all(self) -> None:
        """Stop every scoring server and running job this workspace has (the stack is shutting down)."""
        for sub in (self.endpoints, self.jobs):
            for d in sub.iterdir():
                for f in ("server.json", "pid.json"):
                    stop_process(read_json(d / f))
