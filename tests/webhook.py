"""A webhook receiver for tests: what Event Grid deliveries (or any POSTs) reached it, answered as told."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """A webhook on a free port; `answer(n, events)` gives request n's status (or (status, body)); it may block."""

    def __init__(self, answer=lambda n, events: 202):
        self.answer = answer
        self.requests: list[dict] = []
        self.active = self.max_active = 0
        self.release = threading.Event()  # set at stop: every blocked answer returns
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    n = len(receiver.requests)
                    record = {"at": time.monotonic(), "headers": {k.lower(): v for k, v in self.headers.items()},
                              "events": json.loads(body), "finished": None}
                    receiver.requests.append(record)
                    receiver.active += 1
                    receiver.max_active = max(receiver.max_active, receiver.active)
                try:
                    answer = receiver.answer(n, record["events"])
                finally:
                    with receiver._lock:
                        receiver.active -= 1
                        record["finished"] = time.monotonic()
                status, reply = answer if isinstance(answer, tuple) else (answer, b"")
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:
                    pass  # the sender gave up waiting (its timeout)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = False
        self.server.block_on_close = True  # server_close joins the request threads
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/runtime/webhooks/blobs?functionName=x"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def hold(self, seconds: float = 30.0) -> None:
        """Block an answer (a long-running function) until released."""
        self.release.wait(seconds)

    def ids(self) -> list[str]:
        return [r["events"][0]["id"] for r in self.requests]

    def subjects(self) -> list[str]:
        return [r["events"][0]["subject"].rsplit("/blobs/", 1)[1] for r in self.requests]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
