"""The local stack: Azurite + the local ML workspace (and its platform loop, `local/platform.py`) + the
local Functions host, started and stopped as one."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from local import azurite
from local.host import LocalHost
from shared import settings
from shared.settings import load_local_settings
from shared.ml.local import LocalWorkspace

PROJECT_ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("tuneflow.stack")


def load_settings(project_dir: Path = PROJECT_ROOT) -> None:
    """CLI commands see the same settings as the host: local.settings.json Values (env wins)."""
    load_local_settings(project_dir / "local.settings.json")


def _uses_dev_storage() -> bool:
    value = os.environ.get("AzureWebJobsStorage", "")
    return value.strip().rstrip(";").lower() in ("", "usedevelopmentstorage=true")


class LocalStack:
    """Start order: storage, then the workspace's endpoints, then the host; stop in reverse."""

    def __init__(self, port: int = 7071, free_ports: bool = False, invocations_log: Path | None = None,
                 project_dir: Path = PROJECT_ROOT):
        self.project_dir = project_dir
        self.port = port
        self.free_ports = free_ports
        self.invocations_log = invocations_log
        self.azurite: azurite.Azurite | None = None
        self.host: LocalHost | None = None
        self.workspace: LocalWorkspace | None = None
        self._platform_stop = threading.Event()
        self._platform: threading.Thread | None = None

    def start(self) -> "LocalStack":
        load_settings(self.project_dir)
        state = settings.state_dir()
        state.mkdir(parents=True, exist_ok=True)
        try:
            if self.free_ports or _uses_dev_storage():
                ports = (0, 0) if self.free_ports else (10000, 10001)
                self.azurite = azurite.start(state / "azurite", *ports)
                os.environ["AzureWebJobsStorage"] = self.azurite.connection_string
            if settings.get("TUNEFLOW_ML_BACKEND") == "local":
                from local.platform import Platform
                self.workspace = LocalWorkspace(state)
                self.workspace.ensure_tracking_store()  # before the host takes work: no job waits for it
                self.workspace.resume()
                self._platform = threading.Thread(target=Platform(self.workspace).run, args=(self._platform_stop,),
                                                  name="platform", daemon=True)
                self._platform.start()
            self.host = LocalHost(project_dir=self.project_dir, port=0 if self.free_ports else self.port,
                                  invocations_log=self.invocations_log).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.host:
            self.host.stop()
        self._platform_stop.set()
        if self._platform:
            self._platform.join(timeout=60)
        if self.workspace:
            self.workspace.stop_all()
        if self.azurite:
            self.azurite.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
