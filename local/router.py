"""A local online endpoint's front door: `python -m local.router ENDPOINT_DIR` (started by the local workspace).

One stable loopback address and one key for every deployment behind it, with a managed endpoint's
routing: `POST /score` with `Authorization: Bearer <key>` (401 otherwise), then
- the `azureml-model-deployment` header sends the request to that deployment (404 if it has none);
- otherwise live traffic is split by weight (`endpoint.json` `traffic`), 404 when no deployment has any;
- `mirror` sends a copy of that share of the live requests to one deployment; its answers are discarded.
Each answer carries `azureml-model-deployment`, the deployment that served it. A deployment that does
not answer is a 502. Errors (5xx) of live and mirrored requests are counted per deployment in
`errors.json`, so a rollout can check the new deployment's live errors between its traffic steps; a
request sent straight to one deployment (the rollout's own probes, checked on their own) is not counted.

The routing table is read again whenever `endpoint.json` changes (written atomically by the workspace),
so a traffic change applies to the next request, and no request sees half of one.
"""

from __future__ import annotations

import hmac
import http.client
import json
import random
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from shared.ml import procs
from shared.ml.procs import read_json, write_json_atomic

FORWARD_TIMEOUT_S = 120
NO_DEPLOYMENT = "No valid deployments to route to. Please check that the endpoint has at least one deployment " \
                "with positive weight values or use a deployment specific header to route."


class Table:
    """The endpoint's routing table and per-deployment error counts, kept in step with its files."""

    def __init__(self, ep_dir: Path):
        self.ep_dir = ep_dir
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self.record: dict = {}
        self.errors: dict[str, int] = read_json(ep_dir / "errors.json") or {}

    def current(self) -> dict:
        path = self.ep_dir / "endpoint.json"
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_ino)
        except FileNotFoundError:
            return self.record
        with self._lock:
            if stamp != self._stamp:
                self.record = read_json(path) or self.record
                self._stamp = stamp
            return self.record

    def port_of(self, deployment: str) -> int | None:
        record = read_json(self.ep_dir / "deployments" / deployment / "deployment.json")
        if not record or record.get("state") not in ("Succeeded", "Updating"):
            return None
        return int(record.get("port") or 0) or None

    def count_error(self, deployment: str) -> None:
        with self._lock:
            self.errors[deployment] = self.errors.get(deployment, 0) + 1
            write_json_atomic(self.ep_dir / "errors.json", self.errors)


def forward(port: int, body: bytes, headers: dict) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=FORWARD_TIMEOUT_S)
    try:
        conn.request("POST", "/score", body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def make_handler(table: Table, key: str):
    class Handler(BaseHTTPRequestHandler):
        server_version = "tuneflow-local-endpoint"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            print("http " + fmt % args, flush=True)

        def _reply(self, status: int, data: bytes, deployment: str = "", json_body: bool = True) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if json_body else "text/plain")
            self.send_header("Content-Length", str(len(data)))
            if deployment:
                self.send_header("azureml-model-deployment", deployment)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, deployment: str = "") -> None:
            self._reply(status, json.dumps({"error": message}).encode(), deployment)

        def do_GET(self):
            if self.path.rstrip("/") in ("/health", ""):
                return self._reply(200, b'{"status": "Healthy"}')
            self._error(404, "not found")

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.rstrip("/") != "/score":
                return self._error(404, "not found: POST /score")
            auth = self.headers.get("Authorization", "")
            given = auth[7:] if auth.lower().startswith("bearer ") else ""
            if not given or not hmac.compare_digest(given.encode(), key.encode()):
                return self._error(401, "missing or wrong key: send 'Authorization: Bearer <endpoint key>'")
            record = table.current()
            chosen = self.headers.get("azureml-model-deployment")
            if chosen is None:
                live = {d: w for d, w in (record.get("traffic") or {}).items() if w > 0}
                if not live:
                    return self._error(404, NO_DEPLOYMENT)
                chosen = random.choices(list(live), weights=list(live.values()))[0]
                for mirror, pct in (record.get("mirror") or {}).items():
                    if pct > 0 and random.random() * 100 < pct:
                        self._mirror(mirror, body)
            port = table.port_of(chosen)
            if port is None:
                return self._error(404, f"Deployment {chosen} not found for endpoint {record.get('name')}")
            headers = {"Content-Type": "application/json", "Authorization": auth}
            live = self.headers.get("azureml-model-deployment") is None  # a request sent straight to one is not
            try:                                                           # live traffic (a rollout's probes)
                status, data = forward(port, body, headers)
            except (OSError, http.client.HTTPException) as exc:
                if live:
                    table.count_error(chosen)
                return self._error(502, f"Bad gateway: deployment {chosen} did not answer ({exc})", chosen)
            if status >= 500 and live:
                table.count_error(chosen)
            self._reply(status, data, chosen)

        def _mirror(self, deployment: str, body: bytes) -> None:
            port = table.port_of(deployment)
            if port is None:
                return
            headers = {"Content-Type": "application/json", "Authorization": self.headers.get("Authorization", "")}

            def send() -> None:
                try:
                    status, _ = forward(port, body, headers)
                    if status >= 500:
                        table.count_error(deployment)
                except (OSError, http.client.HTTPException):
                    table.count_error(deployment)

            threading.Thread(target=send, daemon=True).start()

    return Handler


def main(argv: list[str]) -> int:
    ep_dir = Path(argv[1])
    procs.announce(ep_dir)  # first: whoever looks finds this process, even if its starter died
    table = Table(ep_dir)
    record = table.current()
    key = (ep_dir / "key").read_text().strip()
    # The endpoint's address is stable: a restarted router binds the port its first process was given.
    server = ThreadingHTTPServer(("127.0.0.1", int(record.get("port") or 0)), make_handler(table, key))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    procs.announce(ep_dir, port=server.server_address[1], ready=True)
    print(f"endpoint {record.get('name')} routing on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
