"""The local stack as separate processes the chaos run can kill: Azurite (behind a TCP proxy), the
Functions host (`tuneflow up`, which also runs the local workspace's platform loop), and, started by
them, training jobs and scoring servers. What the run kills and restarts, and what it observes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.chaoslib.proxy import TcpProxy, free_port
from local import azurite
from local.waiting import wait_for
from shared.settings import azurite_connection_string

ROOT = Path(__file__).resolve().parents[2]
AZURITE_SAVE_S = 5.5  # LokiJS autosave interval (5 s) and a margin: what Azurite acknowledged is on disk


class ChaosStack:
    def __init__(self, work: Path, settings: dict[str, str], proxy: bool = True):
        """`proxy=False`: clients reach Azurite directly (nothing will kill it; the proxy costs CPU)."""
        self.work, self.state = work, work / "state"
        self.azurite_dir = self.state / "azurite"
        self.ports = {"blob": free_port(), "queue": free_port()}  # Azurite's own
        # the proxies', which every client uses (or Azurite's own, without the proxies)
        self.public = {"blob": free_port(), "queue": free_port()} if proxy else dict(self.ports)
        self.proxied = proxy
        self.host_port = free_port()
        self.connection_string = azurite_connection_string(self.public["blob"], self.public["queue"])
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNEFLOW_", "ServiceBusConnection"))}
        self.env.update(settings, AzureWebJobsStorage=self.connection_string, PYTHONUNBUFFERED="1",
                        TUNEFLOW_STATE_DIR=str(self.state),
                        TUNEFLOW_EVENTS_URL=f"http://127.0.0.1:{self.host_port}/runtime/webhooks/EventGrid"
                                            f"?functionName=job_events")
        self.azurite: azurite.Azurite | None = None
        self.proxies: list[TcpProxy] = []
        self.host: subprocess.Popen | None = None
        self.host_starts = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> "ChaosStack":
        self.state.mkdir(parents=True, exist_ok=True)
        self._start_azurite()
        if self.proxied:
            self.proxies = [TcpProxy(self.public[k], self.ports[k]).start() for k in ("blob", "queue")]
        self.start_host()
        return self

    def _start_azurite(self) -> None:
        self.azurite = azurite.start(self.azurite_dir, self.ports["blob"], self.ports["queue"])

    def start_host(self) -> None:
        self.host_starts += 1
        log = open(self.work / "host.log", "ab")
        self.host = subprocess.Popen(
            [sys.executable, "-m", "local.cli", "up", "--port", str(self.host_port),
             "--invocations", str(self.work / "invocations.jsonl")],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log.close()
        wait_for(self._host_ready, 180, "the Functions host to answer /admin/host/status")

    def _host_ready(self) -> bool:
        if self.host.poll() is not None:
            raise RuntimeError(f"the host exited ({self.host.returncode}): see {self.work / 'host.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.host_port}/admin/host/status", timeout=5) as r:
                return json.loads(r.read()).get("state") == "Running"
        except OSError:
            return False

    def stop(self) -> None:
        if self.host and self.host.poll() is None:
            self.host.send_signal(signal.SIGTERM)  # the stack's clean stop: scoring servers and jobs too
            try:
                self.host.wait(120)
            except subprocess.TimeoutExpired:
                self.host.kill()
                self.host.wait(30)
        for proxy in self.proxies:
            proxy.stop()
        if self.azurite:
            self.azurite.stop()

    # -- kills --------------------------------------------------------------------------------------
    def kill_host(self) -> int:
        pid = self.host.pid
        self.host.kill()  # SIGKILL: in-flight invocations die with it; its children have their own sessions
        self.host.wait(30)
        return pid

    def kill_azurite(self) -> int:
        """Storage crashes: every connection reset, refused while it is down; then it is SIGKILLed and
        restarted on the same data folder. (Killed only once what it acknowledged is on disk: see proxy.py.)"""
        for proxy in self.proxies:
            proxy.cut()
        cut_at = time.time()
        wait_for(lambda: time.time() - cut_at > AZURITE_SAVE_S, 30, "Azurite's autosave")
        pid = self.azurite.process.pid
        self.azurite.process.kill()
        self.azurite.process.wait(30)
        self._start_azurite()
        for proxy in self.proxies:
            proxy.resume()
        return pid

    @staticmethod
    def kill(pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # -- what runs -------------------------------------------------------------------------------------
    def processes(self, module: str) -> list[dict]:
        """Live processes `python -m <module> <dir under this run's state>`: pid and the folder they serve."""
        import psutil
        out = []
        for proc in psutil.process_iter(["pid", "cmdline", "status"]):
            cmd = proc.info["cmdline"] or []
            if proc.info["status"] == psutil.STATUS_ZOMBIE or module not in cmd:
                continue
            target = cmd[cmd.index(module) + 1] if cmd.index(module) + 1 < len(cmd) else ""
            if target.startswith(str(self.state)):
                out.append({"pid": proc.info["pid"], "dir": Path(target).name})
        return out

    def all_processes(self) -> list[dict]:
        """Every live process of this run (its state folder in the command line), the stack's own included."""
        import psutil
        out = []
        for proc in psutil.process_iter(["pid", "cmdline", "status"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.info["status"] != psutil.STATUS_ZOMBIE and str(self.state) in cmd and proc.info["pid"] != os.getpid():
                out.append({"pid": proc.info["pid"], "cmd": cmd[:200]})
        return out
