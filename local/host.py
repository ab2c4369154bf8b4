"""A local Functions host: runs the very same `function_app.py` against Azurite, as the real host would.

It discovers functions, triggers and bindings through `app.get_functions()` and drives them the
way the Azure Functions host and the Python worker do (the README's stand-in table says, per
trigger, what is the same and what cannot be):

- every invocation runs on one worker thread pool, min(32, cores + 4) threads (the Python worker's
  sync pool, `PYTHON_THREADPOOL_THREAD_COUNT`), which does not copy contextvars between invocations;
- each trigger runs several invocations at once with the limits the real extensions read from
  `host.json` (`local/listeners.py`);
- trigger arguments are built by the azure-functions library's own converters (`local/bindings.py`);
- blob trigger (`source=EventGrid`): the webhook `/runtime/webhooks/blobs?functionName=Host.Functions.<fn>`
  queues each BlobCreated event on the host's internal queue, and every queued event runs the function
  (no receipts: the function's own idempotence carries repeats). Locally Azurite sends no events, so
  `local/eventgrid.py` plays Event Grid: it watches the container and delivers BlobCreated events at
  least once, with Event Grid's 30 s answer timeout and retry schedule;
- Event Grid trigger: `/runtime/webhooks/EventGrid?functionName=<short name>`, dispatched by the
  `aeg-event-type` header, the events of one delivery run in parallel, 202 when all succeeded;
- Service Bus: an Azurite queue of the same name behind `local/servicebus.py` (MessageId, duplicate
  detection), redelivered up to 10 times, then `<queue>-deadletter` with the reason;
- timer: NCRONTAB (`local/ncrontab.py`), schedule monitor and singleton listener (`local/timer.py`);
- output bindings: written after the function returns successfully, before its trigger message is
  completed.

Every invocation logs one line: function, invocation id, flow id, outcome, duration.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import ThreadingHTTPServer
from pathlib import Path

import azure.functions as func

from shared import bus
from shared.observability import current_flow
from shared.settings import StorageConnection, load_local_settings

log = logging.getLogger("tuneflow.host")
HOSTS_CONTAINER = "azure-webjobs-hosts"


class HostError(RuntimeError):
    pass


# -- configuration ------------------------------------------------------------------------------

def resolve(value: str) -> str:
    """Resolve `%NAME%` app-setting references in binding attributes."""
    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise HostError(f"binding refers to %{name}% but no app setting {name} is defined "
                            f"(add it to local.settings.json Values)")
        return os.environ[name]
    return re.sub(r"%([^%]+)%", sub, value)


def _timespan_seconds(text: str) -> float:
    """host.json timespans: 'hh:mm:ss' (optionally 'd.hh:mm:ss')."""
    days = 0
    if "." in text.split(":")[0]:
        d, text = text.split(".", 1)
        days = int(d)
    h, m, s = (float(p) for p in text.split(":"))
    return days * 86400 + h * 3600 + m * 60 + s


def _cores() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class HostConfig:
    """What the real host reads from host.json, with the extensions' defaults (N = cores)."""
    max_dequeue_count: int = 5                      # queues.maxDequeueCount
    visibility_timeout_s: float = 0.0               # queues.visibilityTimeout: the delay before a retry
    queue_batch_size: int = 16                      # queues.batchSize
    queue_new_batch_threshold: int = 8              # queues.newBatchThreshold: N * batchSize / 2
    service_bus_max_concurrent_calls: int = 32      # serviceBus.maxConcurrentCalls: 16 * N
    blob_parallelism: int = 16                      # blobs.maxDegreeOfParallelism: 8 * N
    poison_blob_threshold: int = 5                  # blobs.poisonBlobThreshold
    worker_threads: int = 6                         # the Python worker's sync pool: min(32, N + 4)

    @classmethod
    def from_host_json(cls, path: Path, cores: int | None = None) -> "HostConfig":
        n = cores or _cores()
        data = json.loads(path.read_text()) if path.exists() else {}
        ext = data.get("extensions", {})
        queues, sb, blobs = ext.get("queues", {}), ext.get("serviceBus", {}), ext.get("blobs", {})
        batch = int(queues.get("batchSize", 16))
        threads = os.environ.get("PYTHON_THREADPOOL_THREAD_COUNT")
        return cls(max_dequeue_count=int(queues.get("maxDequeueCount", 5)),
                   visibility_timeout_s=_timespan_seconds(queues.get("visibilityTimeout", "00:00:00")),
                   queue_batch_size=batch,
                   queue_new_batch_threshold=int(queues.get("newBatchThreshold", n * batch // 2)),
                   service_bus_max_concurrent_calls=int(sb.get("maxConcurrentCalls", 16 * n)),
                   blob_parallelism=int(blobs.get("maxDegreeOfParallelism", 8 * n)),
                   poison_blob_threshold=int(blobs.get("poisonBlobThreshold", 5)),
                   worker_threads=int(threads) if threads else min(32, n + 4))


# -- invocation ---------------------------------------------------------------------------------

class LocalOut(func.Out):
    """The host's side of an output binding: collects what the function sets."""

    def __init__(self) -> None:
        self._value = None

    def set(self, val) -> None:
        self._value = val

    def get(self):
        return self._value


@dataclass
class FunctionSpec:
    name: str
    trigger: dict
    outputs: list[dict]
    user_function: object

    @property
    def full_name(self) -> str:
        return f"Host.Functions.{self.name}"


@dataclass
class Outcome:
    ok: bool
    error: str = ""
    flow_id: str = ""


@dataclass
class InvocationRecord:
    function: str
    invocation_id: str
    flow_id: str
    outcome: str
    duration_ms: float
    trigger_at: str = ""
    started_at: str = ""
    outputs_sent_at: str = ""
    error: str = ""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


class _Invocation(threading.local):
    """Per worker thread: when the running invocation's Service Bus sends went out."""
    sent_at: float | None = None


class LocalHost:
    def __init__(self, app_module: str = "function_app", project_dir: Path | None = None, port: int = 7071,
                 poll_interval: float = 0.25, invocations_log: Path | None = None,
                 settings_file: str = "local.settings.json", host_json: str = "host.json",
                 event_grid: bool = True, host_id: str | None = None):
        self.project_dir = Path(project_dir or Path.cwd()).resolve()
        load_local_settings(self.project_dir / settings_file)
        self.config = HostConfig.from_host_json(self.project_dir / host_json)
        self.app_module = app_module
        self.requested_port = port
        self.poll_interval = poll_interval
        self.invocations_log = invocations_log
        self.event_grid = event_grid  # play Event Grid for the blob triggers (local/eventgrid.py)
        # The real host id is the app's name (at most 32 characters); hosts sharing storage share it.
        self.host_id = (host_id or os.environ.get("WEBSITE_SITE_NAME") or "tuneflow-local").lower()[:32]
        self._stop = threading.Event()
        self.state = "Starting"  # /admin/host/status: Starting until every listener and publisher is ready
        self._threads: list[threading.Thread] = []
        self._server: ThreadingHTTPServer | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._log_lock = threading.Lock()
        self._local = _Invocation()
        self._publishers: list = []
        self.functions: dict[str, FunctionSpec] = {}
        self.storage: StorageConnection | None = None
        self.service_bus = None  # local.servicebus.ServiceBusStandIn once started

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self.requested_port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dropped_duplicates(self) -> list[str]:
        """MessageIds the Service Bus stand-in accepted and dropped (duplicate detection)."""
        return self.service_bus.dropped if self.service_bus else []

    def blob_webhook(self, spec: FunctionSpec) -> str:
        return f"{self.base_url}/runtime/webhooks/blobs?functionName={spec.full_name}"

    def start(self) -> "LocalHost":
        from local.listeners import listener_for
        from local.ncrontab import Schedule
        from local.servicebus import ServiceBusStandIn
        from local.webhooks import handler_for
        from shared.observability import install_flow_ids
        if str(self.project_dir) not in sys.path:
            sys.path.insert(0, str(self.project_dir))
        install_flow_ids()  # every record carries its invocation's flow id (record factory)
        logging.getLogger("azure").setLevel(logging.WARNING)  # the SDKs log every HTTP call at INFO
        app = importlib.import_module(self.app_module).app
        for fn in _functions_of(app):
            bindings = [b.get_dict_repr() for b in fn.get_bindings()]
            trigger = fn.get_trigger().get_dict_repr()
            outputs = [b for b in bindings if getattr(b["direction"], "name", b["direction"]) == "OUT"]
            self.functions[fn.get_function_name()] = FunctionSpec(
                fn.get_function_name(), trigger, outputs, fn.get_user_function())
        for spec in self.functions.values():  # a bad schedule stops the start, loudly
            if spec.trigger["type"] == "timerTrigger":
                Schedule.parse(resolve(spec.trigger["schedule"]))
        self.storage = StorageConnection.from_env()
        self.service_bus = ServiceBusStandIn(self.storage)
        self._pool = ThreadPoolExecutor(self.config.worker_threads, thread_name_prefix="worker")
        self._server = ThreadingHTTPServer(("127.0.0.1", self.requested_port), handler_for(self))
        self._server.daemon_threads = True
        os.environ.setdefault("TUNEFLOW_EVENTS_URL", f"{self.base_url}/runtime/webhooks/EventGrid?functionName=job_events")
        self._spawn("http", self._server.serve_forever)
        bus.use(self._service_bus_send)
        # Listeners are ready (queues and containers exist) before start() returns, as with the real host.
        for spec in self.functions.values():
            if spec.trigger["type"] == "eventGridTrigger":
                continue  # a webhook, served by the HTTP server
            listener = listener_for(self, spec)
            self._spawn(f"{spec.trigger['type']}:{spec.name}", listener.run, self._stop)
            if spec.trigger["type"] == "blobTrigger" and self.event_grid:
                self._start_publisher(spec)
        self.state = "Running"
        log.info("local Functions host listening on %s with %d functions: %s", self.base_url,
                 len(self.functions), ", ".join(f"{s.name} ({s.trigger['type']})" for s in self.functions.values()))
        return self

    def _start_publisher(self, spec: FunctionSpec) -> None:
        from local.eventgrid import DATASETS_SUBSCRIPTION, BlobEventPublisher
        container = resolve(spec.trigger["path"]).split("/", 1)[0]
        subscription = DATASETS_SUBSCRIPTION if container == "datasets" else f"{spec.name}-blobs"
        publisher = BlobEventPublisher(self.blob_webhook(spec), container, subscription=subscription,
                                       storage=self.storage, poll_interval=self.poll_interval, validate=True)
        publisher.start()
        self._publishers.append(publisher)

    def _spawn(self, name: str, target, *args) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        self.state = "Stopping"
        self._stop.set()
        for publisher in self._publishers:
            publisher.stop()
        bus.use(None)
        if self._server:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(timeout=timeout)
        if self._pool:  # invocations in progress finish; queued ones are dropped (their messages come back)
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- invoking a function --------------------------------------------------------------------
    def submit(self, spec: FunctionSpec, trigger_value, trigger_at: float | None = None) -> Future:
        """Queue an invocation on the worker's thread pool (contextvars are not copied, as in the worker)."""
        return self._pool.submit(self.invoke, spec, trigger_value, trigger_at)

    def invoke(self, spec: FunctionSpec, trigger_value, trigger_at: float | None = None) -> Outcome:
        invocation_id = str(uuid.uuid4())
        outs = {o["name"]: LocalOut() for o in spec.outputs}
        self._local.sent_at = None
        started = time.time()
        t0 = time.perf_counter()
        error = ""
        try:
            spec.user_function(**{spec.trigger["name"]: trigger_value}, **outs)
            sent_at = self._send_outputs(spec, outs) or self._local.sent_at
        except Exception as exc:  # the function failed: the trigger decides on retry / poison
            error = f"{type(exc).__name__}: {exc}"
            sent_at = None
            log.debug("%s failed:\n%s", spec.name, traceback.format_exc())
        duration_ms = (time.perf_counter() - t0) * 1000
        flow_id = current_flow()
        outcome = "Succeeded" if not error else "Failed"
        line = (f"{spec.name} invocation={invocation_id} flow={flow_id or '-'} outcome={outcome} "
                f"duration={duration_ms:.0f}ms")
        (log.info if not error else log.error)(line + (f" error={error}" if error else ""))
        self._record(InvocationRecord(spec.name, invocation_id, flow_id, outcome, round(duration_ms, 1),
                                      _iso(trigger_at) if trigger_at else "", _iso(started),
                                      _iso(sent_at) if sent_at else "", error))
        return Outcome(ok=not error, error=error, flow_id=flow_id)

    def _record(self, rec: InvocationRecord) -> None:
        if not self.invocations_log:
            return
        with self._log_lock, open(self.invocations_log, "a") as f:
            f.write(json.dumps(rec.__dict__) + "\n")

    def _send_outputs(self, spec: FunctionSpec, outs: dict[str, LocalOut]) -> float | None:
        sent = None
        for binding in spec.outputs:
            value = outs[binding["name"]].get()
            if value is None:
                continue
            values = value if isinstance(value, list) else [value]
            queue = resolve(binding.get("queueName") or binding.get("queue_name") or "")
            if binding["type"] == "queue":
                client = self.queue(queue)
                for v in values:
                    client.send_message(base64.b64encode(_text(v).encode()).decode())
            elif binding["type"] == "serviceBus":
                for v in values:  # the output binding sets no MessageId: Service Bus gives each a new one
                    self.service_bus.send(queue, _text(v))
            else:
                raise HostError(f"output binding type {binding['type']} is not supported by the local host")
            sent = time.time()
        return sent

    def _service_bus_send(self, queue: str, body: str, message_id: str | None = None):
        """`shared.bus` sends (with MessageId) go through the stand-in's duplicate detection."""
        accepted = self.service_bus.send(queue, body, message_id)
        self._local.sent_at = time.time()
        return accepted

    # -- storage helpers ------------------------------------------------------------------------
    def queue(self, name: str):
        from shared.storage import queue
        return queue(name, self.storage)

    def poison(self, queue: str, body: str, reason: str, spec: FunctionSpec, deliveries: int, encode: bool,
               **extra) -> None:
        """Move a message the function could not take to its poison / dead-letter queue, with the reason."""
        envelope = json.dumps({"reason": reason, "function": spec.name, "deliveries": deliveries,
                               "failed_at": _iso(time.time()), "message": body, **extra})
        self.queue(queue).send_message(base64.b64encode(envelope.encode()).decode() if encode else envelope)
        log.error("%s: message moved to %s after %d deliveries: %s", spec.name, queue, deliveries, reason)

    # -- webhooks -------------------------------------------------------------------------------
    def function_for(self, name: str, trigger_type: str) -> FunctionSpec | None:
        """Event Grid deliveries name the function by its short name, blob webhooks by its full name."""
        if trigger_type == "blobTrigger":
            if not name.startswith("Host.Functions."):
                return None
            name = name.removeprefix("Host.Functions.")
        spec = self.functions.get(name)
        return spec if spec and spec.trigger["type"] == trigger_type else None


_INDEXED: dict[int, tuple[object, list]] = {}


def _functions_of(app) -> list:
    """`app.get_functions()`, once per app object: a second call raises "not a unique function name"."""
    if id(app) not in _INDEXED:
        _INDEXED[id(app)] = (app, app.get_functions())
    return _INDEXED[id(app)][1]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
