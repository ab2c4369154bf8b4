"""Start and stop Azurite (npm package, pinned in package.json) for the local stack and tests."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from shared.settings import azurite_connection_string

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def azurite_bin() -> Path:
    """node_modules/.bin/azurite in the project or a folder above it, as npm resolves packages (a copy of
    the project inside it, such as mutmut's `mutants/`, finds the project's own)."""
    for folder in (PROJECT_ROOT, *PROJECT_ROOT.parents):
        candidate = folder / "node_modules" / ".bin" / "azurite"
        if candidate.exists():
            return candidate
    return PROJECT_ROOT / "node_modules" / ".bin" / "azurite"
_LISTENING = re.compile(r"Azurite (Blob|Queue|Table) service is successfully listening at http://[^:]+:(\d+)")


class AzuriteError(RuntimeError):
    pass


@dataclass
class Azurite:
    """A running Azurite; `connection_string` reaches its blob and queue services."""

    process: subprocess.Popen
    blob_port: int
    queue_port: int

    @property
    def connection_string(self) -> str:
        return azurite_connection_string(self.blob_port, self.queue_port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start(location: Path, blob_port: int = 0, queue_port: int = 0, timeout: float = 60.0) -> Azurite:
    """Start Azurite with its data in `location`; port 0 lets it pick free ports (read back from its output)."""
    binary = azurite_bin()
    if not binary.exists():
        raise AzuriteError(f"Azurite is not installed at {binary}: run `make setup` (npm ci)")
    location.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(binary), "--location", str(location), "--blobPort", str(blob_port), "--queuePort",
         str(queue_port), "--tablePort", "0", "--skipApiVersionCheck", "--loose", "--disableTelemetry",
         "--silent"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    ports: dict[str, int] = {}
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            m = _LISTENING.search(line)
            if m:
                ports[m.group(1)] = int(m.group(2))

    threading.Thread(target=read, daemon=True, name="azurite-output").start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "Blob" in ports and "Queue" in ports:
            return Azurite(proc, ports["Blob"], ports["Queue"])
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AzuriteError("Azurite did not start: " + " | ".join(l.strip() for l in lines[-5:]))
