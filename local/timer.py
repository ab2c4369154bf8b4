"""The timer trigger's listener as the Functions host runs it, for the local host.

Stands in for the timer extension's TimerListener and StorageScheduleMonitor
(Azure/azure-webjobs-sdk-extensions, src/WebJobs.Extensions/Extensions/Timers) inside the WebJobs
SDK's singleton listener lock (SingletonListener, BlobLeaseDistributedLockManager in
Azure/azure-webjobs-sdk):

- One listener per function across all host processes on the storage account: the listener runs
  only while it holds a blob lease on `azure-webjobs-hosts/locks/{hostId}/Host.Functions.{name}.Listener`
  (60 s in Azure, renewed at half its period by a thread). A host without the lease tries again
  every `recovery_s` (1 minute in Azure) and takes over when the holder releases it (clean stop)
  or stops renewing it (crash: after the lease period). A listener that loses its lease stops.
- use_monitor: the schedule status `{"Last", "Next", "LastUpdated"}` is kept as JSON in
  `azure-webjobs-hosts/timers/{hostId}/Host.Functions.{name}/status`, written at start (first
  run, or schedule changed) and after each invocation. At start, when the recorded `Next` is in
  the past (an occurrence was missed while no host ran), the function runs at once with
  `past_due` true, then the schedule continues.
- run_on_startup: the function runs at once whenever the listener starts (each time a host takes
  the lease), unless a past-due run already does.
- Function errors never stop the schedule. The TimerRequest is built by azure.functions' own
  TimerRequestConverter from the JSON the host sends: `{"Schedule", "ScheduleStatus", "IsPastDue"}`,
  ScheduleStatus null without use_monitor.

Times are UTC (the local host does not support WEBSITE_TIME_ZONE).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

import azure.functions as func
from azure.functions import meta
from azure.functions.timer import TimerRequestConverter

from local.ncrontab import Schedule
from shared.settings import StorageConnection

log = logging.getLogger(__name__)

HOSTS_CONTAINER = "azure-webjobs-hosts"
# ScheduleMonitor.DefaultDateTime (DateTime.MinValue) and the threshold below which a value is unset
DEFAULT = datetime(1, 1, 1, tzinfo=timezone.utc)
_UNSET_BELOW = datetime(2, 1, 1, tzinfo=timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _format(t: datetime) -> str:
    """As Json.NET writes a local DateTime (IsoDateFormat) on a host whose time zone is UTC."""
    t = t.astimezone(timezone.utc)
    fraction = f".{t.microsecond:06d}".rstrip("0") if t.microsecond else ""
    return t.replace(tzinfo=None, microsecond=0).isoformat() + fraction + "+00:00"


def _parse(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    if t.year <= 1:
        return DEFAULT
    return t.astimezone(timezone.utc) if t.tzinfo else t.replace(tzinfo=timezone.utc)  # unspecified: UTC


@dataclass
class ScheduleStatus:
    last: datetime
    next: datetime
    last_updated: datetime

    def to_json(self) -> dict:
        return {"Last": _format(self.last), "Next": _format(self.next), "LastUpdated": _format(self.last_updated)}

    @classmethod
    def from_json(cls, data: dict) -> "ScheduleStatus":
        """As ScheduleMonitor.GetSafeStatusAsync reads it: values near DateTime.MinValue are unset."""
        values = [_parse(data[key]) if data.get(key) else DEFAULT for key in ("Last", "Next", "LastUpdated")]
        return cls(*(DEFAULT if v < _UNSET_BELOW else v for v in values))


def default_use_monitor(schedule: Schedule, now: datetime) -> bool:
    """TimerTriggerAttribute's default: monitored unless it fires more than once in the next minute."""
    first = schedule.next_after(now)
    return schedule.next_after(first) >= now + timedelta(minutes=1)


class TimerListener:
    """Runs one timer-triggered function on its schedule; `run(stop)` blocks until `stop` is set.

    `function_name` is the function's name or full name (`Host.Functions.{name}`); `use_monitor`
    None takes the host's default; `invoke(request, due_timestamp)` runs the function.
    """

    def __init__(self, function_name: str, schedule: Schedule, storage: StorageConnection,
                 invoke: Callable[[func.TimerRequest, float], bool], *, use_monitor: bool | None, run_on_startup: bool,
                 host_id: str, lease_s: float = 60.0, recovery_s: float = 60.0,
                 clock: Callable[[], datetime] = utcnow):
        if not 15 <= lease_s <= 60:
            raise ValueError(f"lease_s {lease_s}: blob leases last 15 to 60 seconds")
        if not host_id:
            raise ValueError("a host id is required (it scopes the lock and the schedule status)")
        # the function's full name in the host: Host.Functions.{name}
        self.function_name = function_name.removeprefix("Host.Functions.")
        self.timer_name = f"Host.Functions.{self.function_name}"
        self.schedule, self.storage, self.invoke = schedule, storage, invoke
        self.use_monitor = default_use_monitor(schedule, clock()) if use_monitor is None else use_monitor
        self.run_on_startup, self.host_id = run_on_startup, host_id
        self.lease_s, self.recovery_s, self.clock = lease_s, recovery_s, clock
        self.status_blob = f"timers/{host_id}/{self.timer_name}/status"
        self.lock_blob = f"locks/{host_id}/{self.timer_name}.Listener"
        self.holds_lock = threading.Event()  # set while this listener holds the singleton lease
        self._container = None
        self._status: ScheduleStatus | None = None

    # -- the singleton listener lock ----------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                lease = self._try_lock()
            except Exception as exc:  # storage unreachable: as a failed acquisition
                log.warning("timer %s: cannot take the listener lock: %s", self.function_name, exc)
                lease = None
            if lease is None:
                stop.wait(self.recovery_s)
                continue
            log.info("timer %s: singleton lock acquired (%s)", self.function_name, self.lock_blob)
            done, lost = threading.Event(), threading.Event()
            renewer = threading.Thread(target=self._renew, args=(lease, done, lost), daemon=True,
                                       name=f"lease:{self.function_name}")
            renewer.start()
            self.holds_lock.set()
            try:
                self._listen(stop, lost)
            except Exception:
                log.exception("timer %s: listener failed; retrying in %ss", self.function_name, self.recovery_s)
                stop.wait(self.recovery_s)
            finally:
                self.holds_lock.clear()
                done.set()
                renewer.join()
                if not lost.is_set():
                    self._release(lease)

    def _hosts(self):
        if self._container is None:
            from shared.storage import blob_service
            self._container = blob_service(self.storage).get_container_client(HOSTS_CONTAINER)
        return self._container

    def _try_lock(self):
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
        from azure.storage.blob import BlobLeaseClient
        blob = self._hosts().get_blob_client(self.lock_blob)
        for attempt in (1, 2):
            try:
                lease = BlobLeaseClient(blob)
                lease.acquire(lease_duration=int(self.lease_s))
                return lease
            except ResourceNotFoundError:
                if attempt == 2:
                    raise
                self._create_lock_blob(blob)
            except HttpResponseError as exc:
                if exc.status_code == 409:  # another host holds it
                    return None
                raise
        return None

    def _create_lock_blob(self, blob) -> None:
        from azure.core.exceptions import HttpResponseError
        from shared.storage import ensure_container
        ensure_container(self._hosts())
        try:
            blob.upload_blob(b"", overwrite=False)
        except HttpResponseError as exc:
            if exc.status_code not in (409, 412):  # created, or leased, by another host meanwhile
                raise

    def _renew(self, lease, done: threading.Event, lost: threading.Event) -> None:
        from azure.core.exceptions import HttpResponseError
        renewed_at = time.monotonic()
        delay = self.lease_s / 2
        while not done.wait(delay):
            try:
                lease.renew()
                renewed_at, delay = time.monotonic(), self.lease_s / 2
            except HttpResponseError as exc:
                if exc.status_code is not None and 400 <= exc.status_code < 500:  # the lease is someone else's
                    log.error("timer %s: singleton lock lost (%s)", self.function_name, exc.status_code)
                    lost.set()
                    return
                delay = 1.0  # a server error: retry sooner, before the lease runs out
            except Exception:
                delay = 1.0
            if time.monotonic() - renewed_at > self.lease_s:
                log.error("timer %s: singleton lock expired before it could be renewed", self.function_name)
                lost.set()
                return

    def _release(self, lease) -> None:
        try:
            lease.release()
        except Exception as exc:  # expired or taken: nothing to release
            log.debug("timer %s: lease release: %s", self.function_name, exc)

    # -- the timer listener -------------------------------------------------------------------
    def _listen(self, stop: threading.Event, lost: threading.Event) -> None:
        now = self.clock()
        past_due, status = False, None
        if self.use_monitor:
            past_due, status = self._check_past_due(now, self._read_status())
        self._status = status or ScheduleStatus(DEFAULT, self.schedule.next_after(now), DEFAULT)
        startup = "past_due" if past_due else "run_on_startup" if self.run_on_startup else None
        if startup:
            log.info("timer %s: %s, running now", self.function_name,
                     "past due" if past_due else "run on startup")
        while not (stop.is_set() or lost.is_set()):
            if startup is None:
                while (wait := (self._status.next - self.clock()).total_seconds()) > 0:
                    if stop.wait(min(wait, 0.25)) or lost.is_set():
                        return
            self._invoke(self.clock(), past_due=startup == "past_due", run_on_startup=startup == "run_on_startup")
            startup = None

    def _invoke(self, invoked_at: datetime, *, past_due: bool, run_on_startup: bool) -> None:
        status = self._status
        body = {"Schedule": {"AdjustForDST": True}, "ScheduleStatus": status.to_json() if self.use_monitor else None,
                "IsPastDue": past_due}
        request = TimerRequestConverter.decode(meta.Datum(json.dumps(body), "json"), trigger_metadata={})
        due = invoked_at if run_on_startup else status.next  # past due: the occurrence that was missed
        try:
            self.invoke(request, due.timestamp())
        except Exception:  # errors never stop the schedule
            log.exception("timer %s: invocation failed", self.function_name)
        # Fired a moment before the occurrence (clock skew)? Count from the occurrence, or the same
        # Next would be recorded twice.
        adjusted = status.next if not (past_due or run_on_startup) and status.next > invoked_at else invoked_at
        self._status = ScheduleStatus(adjusted, self.schedule.next_after(adjusted), adjusted)
        if self.use_monitor:
            self._write_status(self._status)

    # -- the schedule monitor -----------------------------------------------------------------
    def _read_status(self) -> ScheduleStatus | None:
        from azure.core.exceptions import ResourceNotFoundError
        try:
            text = self._hosts().get_blob_client(self.status_blob).download_blob().readall()
        except ResourceNotFoundError:
            return None
        try:
            return ScheduleStatus.from_json(json.loads(text))
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning("timer %s: unreadable status %s (%s): starting afresh", self.function_name,
                        self.status_blob, exc)
            return None

    def _write_status(self, status: ScheduleStatus) -> None:
        from shared.storage import ensure_container
        try:
            ensure_container(self._hosts())
            self._hosts().get_blob_client(self.status_blob).upload_blob(json.dumps(status.to_json()), overwrite=True)
        except Exception as exc:  # best effort, as in the host
            log.error("timer %s: failed to update the timer trigger status: %s", self.function_name, exc)

    def _check_past_due(self, now: datetime, status: ScheduleStatus | None) -> tuple[bool, ScheduleStatus | None]:
        """ScheduleMonitor.CheckPastDueAsync: record a first or changed schedule, then compare Next with now."""
        if status is None:
            recorded = self.schedule.next_after(now)
            self._write_status(ScheduleStatus(DEFAULT, recorded, now))
        else:
            # Next was computed from Last (after a run), else from LastUpdated (never ran), else unknown
            since = next((t for t in (status.last, status.last_updated) if t > DEFAULT), now)
            expected = self.schedule.next_after(since)
            if status.next != expected:  # the schedule changed since the status was written
                if now > expected:
                    since, expected = now, self.schedule.next_after(now)
                status = ScheduleStatus(DEFAULT, expected, since)
                self._write_status(status)
            recorded = status.next
        return now > recorded, status
