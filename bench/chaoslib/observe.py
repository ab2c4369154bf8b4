"""What the chaos run sees from the outside while it runs: every job folder, endpoint, deployment and
scoring port that ever existed (the reaper deletes them, so a duplicate must be seen while it lives)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Seen:
    endpoints: dict[str, dict] = field(default_factory=dict)  # name -> tags, port, first and last seen (s)
    jobs: dict[str, dict] = field(default_factory=dict)  # name -> tags
    deployments: dict[str, dict] = field(default_factory=dict)  # endpoint/deployment -> tags (flow-id), first seen


class Observer:
    def __init__(self, state: Path, started: float, interval: float = 0.5):
        self.state, self.started, self.interval = state, started, interval
        self.seen = Seen()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="observer", daemon=True)

    def start(self) -> "Observer":
        self._thread.start()
        return self

    def stop(self) -> Seen:
        self._stop.set()
        self._thread.join(30)
        self.sample()
        return self.seen

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        now = round(time.time() - self.started, 1)
        for record_file in (self.state / "endpoints").glob("*/endpoint.json"):
            record = _read(record_file)
            if record is None:
                continue
            seen = self.seen.endpoints.setdefault(record["name"], {"first_seen": now, "ports": set()})
            seen.update(tags=record.get("tags", {}), last_seen=now, state=record.get("state"))
            if record.get("port"):
                seen["ports"].add(record["port"])
        for record_file in (self.state / "endpoints").glob("*/deployments/*/deployment.json"):
            key = f"{record_file.parents[2].name}/{record_file.parent.name}"
            if key not in self.seen.deployments and (record := _read(record_file)) is not None:
                self.seen.deployments[key] = {**record.get("tags", {}), "first_seen": now}
        for job_file in (self.state / "jobs").glob("*/job.json"):
            if job_file.parent.name not in self.seen.jobs and (record := _read(job_file)) is not None:
                self.seen.jobs[job_file.parent.name] = record["spec"]["tags"]


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
