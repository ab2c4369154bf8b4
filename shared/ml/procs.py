"""The local workspace's child processes (training jobs, scoring servers), each known by a folder.

A process is named by a handle, {"pid", "started"}: a pid is reused once its process is gone,
the pair is not, so a recycled pid never makes a dead job or endpoint look alive or gets signalled.
`started` is the kernel's start time in clock ticks since boot (/proc/PID/stat), not psutil's
`create_time()`: that adds /proc/stat's `btime`, which Linux recomputes on every read as the wall
clock minus the uptime, so a clock step or NTP correction moves every process's creation time and
a live process would stop matching its handle (psutil issues 2526 and 2541): it would look lost, be
started twice, and be missed by `stop`.
Two files in the folder say which process serves it, so no crash of either side loses track of it:

- `spawn.json`, by the spawner: `{"spawning_at"}` just before it starts the process, then the handle
  (plus what the caller adds, e.g. the attempt). A spawner that dies in between leaves only the
  intent: for SPAWN_GRACE_S that counts as alive (the process may be starting), then as lost.
- `process.json`, by the process itself, first thing at its start (`announce`), then whatever it
  wants known (a scoring server's port once it serves).

The process is alive while either handle is; `stop` signals whichever it finds alive.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SPAWN_GRACE_S = 30.0
# Children this process started, so their exit is noticed (and no zombie looks alive).
_CHILDREN: dict[int, subprocess.Popen] = {}


def write_json_atomic(path: Path, value) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer thread too
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


_PROC_STAT = Path("/proc/self/stat").exists()


def started(pid: int) -> float:
    """When the process started, on a clock nothing moves: Linux's starttime (field 22 of /proc/PID/stat,
    clock ticks since boot); elsewhere psutil's creation time (the kernel's own record there)."""
    import psutil
    if not _PROC_STAT:
        return psutil.Process(pid).create_time()
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        raise psutil.NoSuchProcess(pid) from None
    return int(stat.rsplit(b")", 1)[1].split()[19])  # after "(comm)" the fields start at field 3


def process_handle(pid: int) -> dict:
    """What identifies a process for good: its pid and start time (a pid alone is reused)."""
    return {"pid": pid, "started": started(pid)}


def _ours(handle: dict | None):
    """The psutil.Process the handle names, if it still runs (not a zombie) and is the same process:
    same pid and start time. A handle without a start time (an older file) is not ours."""
    import psutil
    pid, created = (handle or {}).get("pid"), (handle or {}).get("started")
    if not isinstance(pid, int) or pid <= 0 or not isinstance(created, (int, float)):
        return None
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return None  # our child exited (and is reaped now)
    try:
        proc = psutil.Process(pid)
        if started(pid) != created or proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return proc


def process_alive(handle: dict | None) -> bool:
    return _ours(handle) is not None


def stop_process(handle: dict | None, timeout: float = 10.0) -> None:
    """SIGTERM the process (its whole group when it leads one, as the children started here do), wait
    for it to go, SIGKILL if it does not. A process that is not the one the handle names is left alone."""
    import psutil
    proc = _ours(handle)
    if proc is not None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                if os.getpgid(proc.pid) == proc.pid:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
            except (ProcessLookupError, psutil.Error):
                break
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and process_alive(handle):
                time.sleep(0.05)
            if not process_alive(handle):
                break
    child = _CHILDREN.pop((handle or {}).get("pid"), None) if proc is not None else None
    if child is not None:
        child.wait(timeout=timeout)  # reaped: no zombie left behind


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    env.update(extra)
    return env


def spawn(folder: Path, module: str, log: Path, record: dict | None = None, nice: int = 0, **env: str) -> dict:
    """Start `python -m module folder` in its own session (at CPU priority `nice`); `spawn.json` records the
    intent, then the handle (with `record`, e.g. the attempt). Returns the handle."""
    record = dict(record or {})
    write_json_atomic(folder / "spawn.json", {**record, "spawning_at": time.time()})
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", module, str(folder)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=child_env(**env), start_new_session=True,
                                cwd=str(PROJECT_ROOT))
    _CHILDREN[proc.pid] = proc
    if nice:
        _lower_priority(proc.pid, nice)
    handle = process_handle(proc.pid)  # a child not yet waited for keeps its pid, so this is its creation time
    write_json_atomic(folder / "spawn.json", {**record, **handle})
    return handle


def _lower_priority(pid: int, nice: int) -> None:
    """Nice the process, and its session's scheduling group too: with Linux's autogroups (on by default) a
    process in a session of its own gets an equal share of the CPU whatever its nice value, which only ranks
    it within its group."""
    import psutil
    try:
        psutil.Process(pid).nice(nice)
    except psutil.Error:
        return  # it ended already: its handle says so
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError:
        pass  # no autogroups (another kernel or OS): the nice value alone applies


def announce(folder: Path, **fields) -> dict:
    """Called by the process itself: record its own handle (and `fields`) in `process.json`."""
    info = {**process_handle(os.getpid()), **fields}
    write_json_atomic(folder / "process.json", info)
    return info


def spawned(folder: Path) -> dict | None:
    """What the spawner recorded (None: nothing was ever started for this folder)."""
    return read_json(folder / "spawn.json")


def info(folder: Path) -> dict:
    """What the process recorded of itself (empty until it announced itself)."""
    return read_json(folder / "process.json") or {}


def _handles(folder: Path) -> list[dict]:
    return [h for h in (read_json(folder / "process.json"), read_json(folder / "spawn.json")) if h]


def alive(folder: Path) -> bool:
    """A process serves this folder: one of its handles is alive, or a spawn is still within its grace."""
    for handle in _handles(folder):
        if "pid" in handle and process_alive(handle):
            return True
    intent = read_json(folder / "spawn.json") or {}
    return "pid" not in intent and "spawning_at" in intent and time.time() - intent["spawning_at"] < SPAWN_GRACE_S


def stop(folder: Path, timeout: float = 10.0) -> None:
    for handle in _handles(folder):
        stop_process(handle, timeout)


def forget(folder: Path) -> None:
    """Before a new process is started for the folder: the old one's own record goes (it is gone). The
    spawner's record stays until `spawn` replaces it in one step: a reader never sees the folder as never
    started, and a spawner that dies here leaves the attempt it was on, not a fresh count."""
    (folder / "process.json").unlink(missing_ok=True)
