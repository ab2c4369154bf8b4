"""A probe Function App for the local host's own tests: one function per trigger kind, each reporting
what it was handed and how many of its kind run at once; the test decides when they finish."""

from __future__ import annotations

import threading

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob

app = func.FunctionApp()


class Probe:
    def __init__(self) -> None:
        self.reset()

    def reset(self, hold: bool = False, fail=None) -> None:
        self.lock = threading.Lock()
        self.active: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.total_peak = 0
        self.calls: list[tuple[str, object]] = []
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.fail = fail or (lambda name, arg: False)

    def running(self, name: str) -> int:
        with self.lock:
            return self.active.get(name, 0)

    def args(self, name: str) -> list:
        with self.lock:
            return [a for n, a in self.calls if n == name]

    def run(self, name: str, arg) -> None:
        with self.lock:
            self.active[name] = self.active.get(name, 0) + 1
            self.peak[name] = max(self.peak.get(name, 0), self.active[name])
            self.total_peak = max(self.total_peak, sum(self.active.values()))
            self.calls.append((name, arg))
        try:
            if not self.release.wait(120):
                raise TimeoutError("the test never released the probe")
            if self.fail(name, arg):
                raise RuntimeError(f"{name} failed as the test asked")
        finally:
            with self.lock:
                self.active[name] -= 1


probe = Probe()


@app.function_name("q")
@app.queue_trigger(arg_name="msg", queue_name="probe-q", connection="AzureWebJobsStorage")
def q(msg: func.QueueMessage) -> None:
    probe.run("q", msg)


@app.function_name("sb")
@app.service_bus_queue_trigger(arg_name="msg", queue_name="probe-sb", connection="ServiceBusConnection")
def sb(msg: func.ServiceBusMessage) -> None:
    probe.run("sb", msg)


@app.function_name("eg")
@app.event_grid_trigger(arg_name="event")
def eg(event: func.EventGridEvent) -> None:
    probe.run("eg", event)


@app.function_name("b")
@app.blob_trigger(arg_name="client", path="probe-drop/{name}", connection="AzureWebJobsStorage", source="EventGrid")
def b(client: blob.BlobClient) -> None:
    probe.run("b", client)
