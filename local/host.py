"""A local Functions host: runs the very same `function_app.py` against Azurite.

It discovers functions, triggers and bindings through `app.get_functions()` and drives them the
way the Azure Functions host does:

- blob trigger (`source=EventGrid`): the real host waits for Event Grid; here the container is
  scanned and each blob version (name + etag) is processed once, with receipts stored in
  `azure-webjobs-hosts/blobreceipts/...` as the real host does. The same webhook route the real
  host exposes (`/runtime/webhooks/blobs?functionName=Host.Functions.<fn>`) accepts BlobCreated
  events too.
- storage queue trigger: base64 bodies, `maxDequeueCount` and `visibilityTimeout` from
  `host.json`, then `<queue>-poison` with the reason.
- Service Bus queue trigger: an Azurite queue of the same name (raw bodies), redelivered up to 10
  times (Service Bus' default MaxDeliveryCount), then `<queue>-deadletter` with the reason.
- timer trigger: NCRONTAB (six fields, seconds first), `%SETTING%` resolved.
- Event Grid trigger: `/runtime/webhooks/EventGrid?functionName=<fn>`, Event Grid and CloudEvents
  schemas, with the subscription validation handshake of both.
- output bindings: queue (base64) and Service Bus (stand-in queue), written after the function
  returns successfully and before its trigger message is completed.
- Service Bus sends through the SDK (`shared.bus`, for MessageId): the same stand-in queue, with
  Service Bus' duplicate detection (a MessageId seen in the last 10 minutes is accepted and dropped).

Every invocation logs one line: function, invocation id, flow id, outcome, duration.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
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
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import azure.functions as func
from azure.functions.timer import TimerRequest

from local.ncrontab import Schedule
from shared import bus
from shared.observability import FlowIdFilter, bind_flow, current_flow
from shared.settings import StorageConnection, load_local_settings

log = logging.getLogger("tuneflow.host")
SERVICE_BUS_MAX_DELIVERY = 10  # Azure Service Bus' default MaxDeliveryCount
SERVICE_BUS_DUPLICATE_WINDOW_S = 600  # Service Bus' default duplicate detection window (10 minutes)
_SERVICE_BUS_SENT_AT: contextvars.ContextVar[float | None] = contextvars.ContextVar("service_bus_sent_at", default=None)
RECEIPTS_CONTAINER = "azure-webjobs-hosts"
BLOB_POISON_QUEUE = "webjobs-blobtrigger-poison"
# How long a received message stays invisible to others while its function runs (the real host
# renews this lease; long enough here for any local handler).
PROCESSING_LEASE_S = 600


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


@dataclass(frozen=True)
class HostConfig:
    max_dequeue_count: int = 5
    visibility_timeout_s: float = 0.0
    batch_size: int = 16

    @classmethod
    def from_host_json(cls, path: Path) -> "HostConfig":
        data = json.loads(path.read_text()) if path.exists() else {}
        queues = data.get("extensions", {}).get("queues", {})
        return cls(max_dequeue_count=int(queues.get("maxDequeueCount", 5)),
                   visibility_timeout_s=_timespan_seconds(queues.get("visibilityTimeout", "00:00:00")),
                   batch_size=int(queues.get("batchSize", 16)))


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


class LocalHost:
    def __init__(self, app_module: str = "function_app", project_dir: Path | None = None, port: int = 7071,
                 poll_interval: float = 0.25, invocations_log: Path | None = None,
                 settings_file: str = "local.settings.json", host_json: str = "host.json"):
        self.project_dir = Path(project_dir or Path.cwd()).resolve()
        load_local_settings(self.project_dir / settings_file)
        self.config = HostConfig.from_host_json(self.project_dir / host_json)
        self.app_module = app_module
        self.requested_port = port
        self.poll_interval = poll_interval
        self.invocations_log = invocations_log
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: ThreadingHTTPServer | None = None
        self._blob_locks: dict[str, threading.Lock] = {}
        self._blob_lock_guard = threading.Lock()
        self._blob_failures: dict[str, int] = {}
        self._log_lock = threading.Lock()
        self.functions: dict[str, FunctionSpec] = {}
        self._storage: StorageConnection | None = None
        self.dropped_duplicates: list[str] = []  # MessageIds the Service Bus stand-in dropped

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self.requested_port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LocalHost":
        if str(self.project_dir) not in sys.path:
            sys.path.insert(0, str(self.project_dir))
        logging.getLogger().addFilter(FlowIdFilter())
        logging.getLogger("azure").setLevel(logging.WARNING)  # the SDKs log every HTTP call at INFO
        app = importlib.import_module(self.app_module).app
        for fn in _functions_of(app):
            bindings = [b.get_dict_repr() for b in fn.get_bindings()]
            trigger = fn.get_trigger().get_dict_repr()
            outputs = [b for b in bindings if getattr(b["direction"], "name", b["direction"]) == "OUT"]
            self.functions[fn.get_function_name()] = FunctionSpec(
                fn.get_function_name(), trigger, outputs, fn.get_user_function())
        self._storage = StorageConnection.from_env()
        schedules = {spec.name: Schedule.parse(resolve(spec.trigger["schedule"])) for spec in self.functions.values()
                     if spec.trigger["type"] == "timerTrigger"}  # a bad schedule stops the start, loudly
        self._server = ThreadingHTTPServer(("127.0.0.1", self.requested_port), _handler_for(self))
        self._server.daemon_threads = True
        os.environ.setdefault("TUNEFLOW_EVENTS_URL", f"{self.base_url}/runtime/webhooks/EventGrid?functionName=job_events")
        self._spawn("http", self._server.serve_forever)
        bus.use(self._service_bus_send)
        # Listeners are ready (queues and containers exist) before start() returns, as with the real host.
        for spec in self.functions.values():
            kind = spec.trigger["type"]
            if kind == "blobTrigger":
                self._spawn(f"blob:{spec.name}", self._blob_loop, spec, self._blob_listener(spec))
            elif kind == "queueTrigger":
                self._spawn(f"queue:{spec.name}", self._queue_loop, spec, True, self._queue(resolve(spec.trigger["queueName"])))
            elif kind == "serviceBusTrigger":
                self._spawn(f"servicebus:{spec.name}", self._queue_loop, spec, False, self._queue(resolve(spec.trigger["queueName"])))
            elif kind == "timerTrigger":
                self._spawn(f"timer:{spec.name}", self._timer_loop, spec, schedules[spec.name])
            elif kind != "eventGridTrigger":
                raise HostError(f"function {spec.name}: trigger type {kind} is not supported by the local host")
        log.info("local Functions host listening on %s with %d functions: %s", self.base_url,
                 len(self.functions), ", ".join(f"{s.name} ({s.trigger['type']})" for s in self.functions.values()))
        return self

    def _spawn(self, name: str, target, *args) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        bus.use(None)
        if self._server:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(timeout=timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- invoking a function --------------------------------------------------------------------
    def invoke(self, spec: FunctionSpec, trigger_value, trigger_at: float | None = None) -> Outcome:
        invocation_id = str(uuid.uuid4())
        outs = {o["name"]: LocalOut() for o in spec.outputs}
        ctx = contextvars.copy_context()
        ctx.run(bind_flow, "")
        started = time.time()
        t0 = time.perf_counter()
        error = ""
        try:
            ctx.run(spec.user_function, **{spec.trigger["name"]: trigger_value}, **outs)
            sent_at = self._send_outputs(spec, outs) or ctx.run(_SERVICE_BUS_SENT_AT.get)
        except Exception as exc:  # the function failed: the trigger decides on retry / poison
            error = f"{type(exc).__name__}: {exc}"
            sent_at = None
            log.debug("%s failed:\n%s", spec.name, traceback.format_exc())
        duration_ms = (time.perf_counter() - t0) * 1000
        flow_id = ctx.run(current_flow)
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
                client = self._queue(queue)
                for v in values:
                    client.send_message(base64.b64encode(_text(v).encode()).decode())
            elif binding["type"] == "serviceBus":
                client = self._queue(queue)
                for v in values:
                    client.send_message(_text(v))
            else:
                raise HostError(f"output binding type {binding['type']} is not supported by the local host")
            sent = time.time()
        return sent

    def _service_bus_send(self, queue: str, body: str, message_id: str) -> None:
        """The stand-in for an SDK send with MessageId: duplicate detection, then the stand-in queue."""
        import hashlib
        from azure.core.exceptions import ResourceExistsError
        from shared.storage import container
        marker = container(RECEIPTS_CONTAINER, self._storage).get_blob_client(
            f"servicebus-duplicates/{queue}/{hashlib.sha256(message_id.encode()).hexdigest()}")
        now = time.time()
        try:
            marker.upload_blob(str(now).encode(), overwrite=False)
        except ResourceExistsError:
            if now - float(marker.download_blob().readall()) < SERVICE_BUS_DUPLICATE_WINDOW_S:
                log.info("service bus %s: duplicate MessageId %s dropped", queue, message_id)
                self.dropped_duplicates.append(message_id)
                _SERVICE_BUS_SENT_AT.set(now)
                return
            marker.upload_blob(str(now).encode(), overwrite=True)
        self._queue(queue).send_message(body)
        _SERVICE_BUS_SENT_AT.set(now)

    # -- storage helpers ------------------------------------------------------------------------
    def _queue(self, name: str):
        from shared.storage import queue
        return queue(name, self._storage)

    def _poison(self, queue: str, body: str, reason: str, spec: FunctionSpec, deliveries: int,
                encode: bool) -> None:
        envelope = json.dumps({"reason": reason, "function": spec.name, "deliveries": deliveries,
                               "failed_at": _iso(time.time()), "message": body})
        self._queue(queue).send_message(base64.b64encode(envelope.encode()).decode() if encode else envelope)
        log.error("%s: message moved to %s after %d deliveries: %s", spec.name, queue, deliveries, reason)

    # -- queue and Service Bus triggers ---------------------------------------------------------
    def _queue_loop(self, spec: FunctionSpec, storage_queue: bool, client) -> None:
        name = client.queue_name
        if storage_queue:
            max_deliveries, retry_delay = self.config.max_dequeue_count, self.config.visibility_timeout_s
            dead_letter = f"{name}-poison"
        else:
            max_deliveries, retry_delay, dead_letter = SERVICE_BUS_MAX_DELIVERY, 0.0, f"{name}-deadletter"
        while not self._stop.is_set():
            try:
                batch = list(client.receive_messages(messages_per_page=self.config.batch_size,
                                                     visibility_timeout=PROCESSING_LEASE_S, max_messages=self.config.batch_size))
            except Exception as exc:  # Azurite restarting: keep polling
                log.warning("%s: cannot read queue %s: %s", spec.name, name, exc)
                batch = []
            for msg in batch:
                self._handle_message(spec, client, msg, storage_queue, max_deliveries, retry_delay, dead_letter)
            if not batch:
                self._stop.wait(self.poll_interval)

    def _handle_message(self, spec, client, msg, storage_queue, max_deliveries, retry_delay, dead_letter):
        raw = msg.content
        trigger_at = msg.inserted_on.timestamp() if msg.inserted_on else None
        if storage_queue:
            try:
                body = base64.b64decode(raw, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                outcome, body = Outcome(False, "message is not base64 (the queue trigger's messageEncoding)"), raw
            else:
                outcome = self.invoke(spec, func.QueueMessage(id=msg.id, body=body.encode(), pop_receipt=msg.pop_receipt),
                                      trigger_at)
        else:
            body = raw
            outcome = self.invoke(spec, func.ServiceBusMessage(body=body.encode()), trigger_at)
        if outcome.ok:
            client.delete_message(msg)
        elif msg.dequeue_count >= max_deliveries:
            self._poison(dead_letter, body, outcome.error, spec, msg.dequeue_count, encode=storage_queue)
            client.delete_message(msg)
        else:
            client.update_message(msg, visibility_timeout=int(retry_delay))

    # -- timer trigger --------------------------------------------------------------------------
    def _timer_loop(self, spec: FunctionSpec, schedule: Schedule) -> None:
        while not self._stop.is_set():
            now = datetime.now(timezone.utc)
            due = schedule.next_after(now)
            if self._stop.wait((due - now).total_seconds()):
                return
            self.invoke(spec, TimerRequest(past_due=False), due.timestamp())

    # -- blob trigger ---------------------------------------------------------------------------
    def _blob_container(self, spec: FunctionSpec) -> str:
        return resolve(spec.trigger["path"]).split("/", 1)[0]

    def _blob_listener(self, spec: FunctionSpec):
        from shared.storage import blob_service, ensure_container
        service = blob_service(self._storage)
        container = service.get_container_client(self._blob_container(spec))
        ensure_container(container)
        ensure_container(service.get_container_client(RECEIPTS_CONTAINER))
        return container

    def _blob_loop(self, spec: FunctionSpec, container) -> None:
        while not self._stop.is_set():
            try:
                blobs = [(b.name, b.etag, b.last_modified) for b in container.list_blobs()]
            except Exception as exc:
                log.warning("%s: cannot list %s: %s", spec.name, container.container_name, exc)
                blobs = []
            for name, etag, modified in blobs:
                if self._stop.is_set():
                    return
                self.process_blob(spec, name, etag, modified.timestamp() if modified else None)
            self._stop.wait(self.poll_interval)

    def _receipt_name(self, spec: FunctionSpec, blob_name: str, etag: str) -> str:
        return f"blobreceipts/local/{spec.name}/{etag}/{self._blob_container(spec)}/{blob_name}"

    def process_blob(self, spec: FunctionSpec, blob_name: str, etag: str, trigger_at: float | None = None) -> bool:
        """Invoke the blob function once per blob version; True when a receipt exists afterwards."""
        from shared.storage import blob_service
        etag = etag.strip('"')  # listings and properties quote etags differently
        service = blob_service(self._storage)
        receipts = service.get_container_client(RECEIPTS_CONTAINER)
        receipt = self._receipt_name(spec, blob_name, etag)
        key = f"{spec.name}/{blob_name}/{etag}"
        with self._blob_lock_guard:
            lock = self._blob_locks.setdefault(key, threading.Lock())
        with lock:
            if receipts.get_blob_client(receipt).exists():
                return True
            client = service.get_blob_client(self._blob_container(spec), blob_name)
            outcome = self.invoke(spec, client, trigger_at)
            if not outcome.ok:
                failures = self._blob_failures.get(key, 0) + 1
                self._blob_failures[key] = failures
                if failures < self.config.max_dequeue_count:
                    return False
                self._poison(BLOB_POISON_QUEUE, json.dumps({"container": self._blob_container(spec), "blob": blob_name,
                                                           "etag": etag}), outcome.error, spec, failures, encode=True)
            receipts.upload_blob(receipt, json.dumps({"invocation": "done", "ok": outcome.ok}).encode(), overwrite=True)
            return True

    # -- webhooks -------------------------------------------------------------------------------
    def function_for(self, name: str, trigger_type: str) -> FunctionSpec | None:
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


def _event_grid_event(raw: dict) -> func.EventGridEvent:
    """An Event Grid or CloudEvents event as the Python worker hands it to the function."""
    cloud = "specversion" in raw
    when = raw.get("time" if cloud else "eventTime")
    try:
        event_time = datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", when.replace("Z", "+00:00"))) if when else None
    except ValueError:
        event_time = None
    return func.EventGridEvent(
        id=str(raw.get("id", "")), data=raw.get("data") or {}, topic=str(raw.get("source" if cloud else "topic", "")),
        subject=str(raw.get("subject", "")), event_type=str(raw.get("type" if cloud else "eventType", "")),
        event_time=event_time, data_version=str(raw.get("dataschema" if cloud else "dataVersion", "") or ""))


def _handler_for(host: LocalHost):
    class Handler(BaseHTTPRequestHandler):
        server_version = "tuneflow-local-host"

        def log_message(self, fmt, *args):  # access log at debug: one line per invocation is the contract
            log.debug("http %s", fmt % args)

        def _reply(self, status: int, body: object = None, headers: dict | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _route(self):
            url = urlparse(self.path)
            return url.path.rstrip("/").lower(), parse_qs(url.query).get("functionName", [""])[0]

        def do_GET(self):
            path, _ = self._route()
            if path == "/admin/host/status":
                return self._reply(200, {"state": "Running", "functions": sorted(host.functions)})
            self._reply(404, {"error": f"no route {self.path}"})

        def do_OPTIONS(self):
            # CloudEvents webhook validation (abuse protection) handshake.
            origin = self.headers.get("WebHook-Request-Origin")
            if origin:
                return self._reply(200, None, {"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*"})
            self._reply(400, {"error": "OPTIONS without WebHook-Request-Origin"})

        def do_POST(self):
            path, fn_name = self._route()
            length = int(self.headers.get("Content-Length") or 0)
            try:
                payload = json.loads(self.rfile.read(length) or b"null")
            except ValueError:
                return self._reply(400, {"error": "body is not JSON"})
            if path == "/runtime/webhooks/eventgrid":
                spec = host.function_for(fn_name, "eventGridTrigger")
                if spec is None:
                    return self._reply(404, {"error": f"no Event Grid function {fn_name!r}"})
                return self._event_grid(spec, payload)
            if path == "/runtime/webhooks/blobs":
                spec = host.function_for(fn_name, "blobTrigger")
                if spec is None:
                    return self._reply(404, {"error": f"no blob trigger function {fn_name!r}"})
                return self._blob_events(spec, payload)
            self._reply(404, {"error": f"no route {self.path}"})

        def _events_or_handshake(self, payload) -> list[dict] | None:
            """The delivered events; None when this request was answered already (bad body, handshake)."""
            events = payload if isinstance(payload, list) else [payload]
            if not all(isinstance(e, dict) for e in events):
                self._reply(400, {"error": "body must be an event or an array of events"})
                return None
            for e in events:
                if e.get("eventType") == "Microsoft.EventGrid.SubscriptionValidationEvent":
                    self._reply(200, {"validationResponse": (e.get("data") or {}).get("validationCode")})
                    return None
            return events

        def _event_grid(self, spec: FunctionSpec, payload) -> None:
            events = self._events_or_handshake(payload)
            if events is None:
                return
            failed = [o.error for o in (host.invoke(spec, _event_grid_event(e), time.time()) for e in events) if not o.ok]
            if failed:  # Event Grid retries the delivery on any non-2xx answer
                return self._reply(500, {"error": failed[0]})
            self._reply(200, {})

        def _blob_events(self, spec: FunctionSpec, payload) -> None:
            events = self._events_or_handshake(payload)
            if events is None:
                return
            container = host._blob_container(spec)
            from shared.storage import blob_service
            service = blob_service(host._storage)
            for e in events:
                subject = str(e.get("subject", ""))
                prefix = f"/blobServices/default/containers/{container}/blobs/"
                if not subject.startswith(prefix):
                    continue
                name = unquote(subject[len(prefix):])
                try:
                    props = service.get_blob_client(container, name).get_blob_properties()
                except Exception:
                    continue  # deleted since the event: nothing to process
                threading.Thread(target=host.process_blob, args=(spec, name, props.etag, time.time()),
                                 daemon=True).start()
            self._reply(202, {})

    return Handler
