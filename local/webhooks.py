"""The local host's HTTP routes: the extension webhooks Event Grid delivers to, and the host status.

As the real extensions do:
- `/runtime/webhooks/EventGrid?functionName=<short name>`: dispatched by the `aeg-event-type` header
  (`SubscriptionValidation` answers the handshake, `Notification` runs the function once per event,
  all events of the delivery in parallel, `Unsubscribe` 202, anything else 400); 202 when every
  event succeeded, 500 with the first error otherwise (Event Grid then redelivers the whole batch).
- `/runtime/webhooks/blobs?functionName=Host.Functions.<fn>`: the same handshake; each BlobCreated
  event becomes a work item on the host's internal blob-trigger queue; 202 once they are queued.
- CloudEvents' abuse-protection handshake: `OPTIONS` with `WebHook-Request-Origin`.
- A body that is not JSON, or too deeply nested to parse, gets 400 (never a dropped connection).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlparse

log = logging.getLogger("tuneflow.host")
MAX_BODY_BYTES = 64 * 1024 * 1024


def handler_for(host):
    from local import bindings
    from local.listeners import blob_trigger_queue, blob_work_item

    class Handler(BaseHTTPRequestHandler):
        server_version = "tuneflow-local-host"

        def log_message(self, fmt, *args):  # access log at debug: one line per invocation is the contract
            log.debug("http %s", fmt % args)

        def _reply(self, status: int, body: object = None, headers: dict | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the sender stopped waiting (Event Grid: after 30 s)
                log.info("%s: the sender had gone before the answer (%d)", self.path, status)

        def _route(self):
            url = urlparse(self.path)
            return url.path.rstrip("/").lower(), parse_qs(url.query).get("functionName", [""])[0]

        def do_GET(self):
            path, _ = self._route()
            if path == "/admin/host/status":  # Running once every listener is ready, as the real host reports it
                return self._reply(200, {"state": host.state, "functions": sorted(host.functions)})
            self._reply(404, {"error": f"no route {self.path}"})

        def do_OPTIONS(self):
            # CloudEvents webhook validation (abuse protection) handshake.
            origin = self.headers.get("WebHook-Request-Origin")
            if origin:
                return self._reply(200, None, {"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*"})
            self._reply(400, {"error": "OPTIONS without WebHook-Request-Origin"})

        def do_POST(self):
            path, fn_name = self._route()
            if path == "/runtime/webhooks/eventgrid":
                spec, deliver = host.function_for(fn_name, "eventGridTrigger"), self._run_events
            elif path == "/runtime/webhooks/blobs":
                spec, deliver = host.function_for(fn_name, "blobTrigger"), self._queue_blob_events
            else:
                return self._reply(404, {"error": f"no route {self.path}"})
            if spec is None:
                return self._reply(404, {"error": f"cannot find function: {fn_name!r}"})
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                return self._reply(413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
            raw = self.rfile.read(length)
            kind = (self.headers.get("aeg-event-type") or "").lower()
            if kind not in ("subscriptionvalidation", "notification"):
                return self._reply(202 if kind == "unsubscribe" else 400,
                                   None if kind == "unsubscribe" else
                                   {"error": "missing or unknown aeg-event-type header (SubscriptionValidation, "
                                             "Notification or Unsubscribe)"})
            try:
                payload = json.loads(raw or b"null")
            except (ValueError, RecursionError):
                return self._reply(400, {"error": "body is not JSON (or nested too deeply to read)"})
            events = payload if isinstance(payload, list) else [payload]
            if not events or not all(isinstance(e, dict) for e in events):
                return self._reply(400, {"error": "body must be an event or an array of events"})
            if kind == "subscriptionvalidation":
                data = events[0].get("data")
                if isinstance(data, str):  # CloudEvents: the data is JSON in a string
                    try:
                        data = json.loads(data)
                    except ValueError:
                        data = None
                code = data.get("validationCode") if isinstance(data, dict) else None
                if not code:
                    return self._reply(400, {"error": "subscription validation without data.validationCode"})
                return self._reply(200, {"validationResponse": code})
            deliver(spec, events)

        def _run_events(self, spec, events: list[dict]) -> None:
            received = time.time()
            futures = []
            for event in events:
                try:
                    arg = bindings.event_grid_event(event)
                except (ValueError, TypeError, RecursionError) as exc:  # the worker fails such an invocation
                    return self._reply(500, {"error": f"event {event.get('id')!r} cannot be decoded: {exc}"})
                futures.append(host.submit(spec, arg, received))
            failed = [o.error for o in (f.result() for f in futures) if not o.ok]
            if failed:  # Event Grid redelivers the whole batch on any non-2xx answer
                return self._reply(500, {"error": failed[0]})
            self._reply(202, None)

        def _queue_blob_events(self, spec, events: list[dict]) -> None:
            queue = host.queue(blob_trigger_queue(host.host_id))
            for event in events:
                item = blob_work_item(spec, event)
                if item is not None:
                    queue.send_message(base64.b64encode(json.dumps(item).encode()).decode())
            self._reply(202, None)

    return Handler
