"""The timer listener as the Functions host runs it (local/timer.py), against Azurite."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import wait_for

EVERY_SECOND = "* * * * * *"
YEARLY = "0 0 0 1 1 *"
HOST_ID = "tuneflow-test"


class Calls:
    """An `invoke` for the listener that records (request, due timestamp, monotonic time)."""

    def __init__(self):
        self.calls: list[tuple] = []
        self._lock = threading.Lock()

    def __call__(self, request, due: float) -> bool:
        with self._lock:
            self.calls.append((request, due, time.monotonic()))
        return True

    def __len__(self):
        with self._lock:
            return len(self.calls)

    def requests(self):
        with self._lock:
            return [c[0] for c in self.calls]


def make_listener(invoke, schedule=EVERY_SECOND, **options):
    from local.ncrontab import Schedule
    from local.timer import TimerListener
    from shared.settings import StorageConnection
    options = {"use_monitor": True, "run_on_startup": False, "host_id": HOST_ID, "lease_s": 15, "recovery_s": 0.2,
               **options}
    return TimerListener("tick", Schedule.parse(schedule), StorageConnection.from_env(), invoke, **options)


@contextmanager
def running(listener):
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield listener
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the listener did not stop"


def hosts_blob(name: str):
    from shared.storage import blob_service
    return blob_service().get_container_client("azure-webjobs-hosts").get_blob_client(name)


STATUS = f"timers/{HOST_ID}/Host.Functions.tick/status"
LOCK = f"locks/{HOST_ID}/Host.Functions.tick.Listener"


def read_status() -> dict:
    return json.loads(hosts_blob(STATUS).download_blob().readall())


def write_status(last: datetime, next_: datetime, last_updated: datetime) -> None:
    from local.timer import _format
    from shared.storage import blob_service, ensure_container
    ensure_container(blob_service().get_container_client("azure-webjobs-hosts"))
    body = {"Last": _format(last), "Next": _format(next_), "LastUpdated": _format(last_updated)}
    hosts_blob(STATUS).upload_blob(json.dumps(body), overwrite=True)


def test_status_is_kept_in_the_hosts_container_and_handed_to_the_function(storage_env):
    from local.timer import ScheduleStatus
    calls = Calls()
    with running(make_listener(calls)):
        wait_for(lambda: len(calls) >= 3, 30, "three invocations")
    status = read_status()
    assert set(status) == {"Last", "Next", "LastUpdated"}
    recorded = ScheduleStatus.from_json(status)
    assert recorded.last_updated == recorded.last
    assert recorded.next == recorded.last.replace(microsecond=0) + timedelta(seconds=1)
    requests = calls.requests()
    assert [r.past_due for r in requests] == [False] * len(requests)
    assert requests[0].schedule == {"AdjustForDST": True}
    # each invocation sees the status written after the one before (read back from the blob at start)
    for before, after in zip(requests, requests[1:]):
        seen = ScheduleStatus.from_json(after.schedule_status)
        assert seen.last >= ScheduleStatus.from_json(before.schedule_status).next
        assert seen.next == seen.last.replace(microsecond=0) + timedelta(seconds=1)
    assert recorded.last >= ScheduleStatus.from_json(requests[-1].schedule_status).next


def _stale(case: str, now: datetime):
    last = now.replace(microsecond=0) - timedelta(hours=1)
    return {"missed": (last, last + timedelta(seconds=1), last),       # Next = schedule after Last: missed
            "schedule changed": (last, last + timedelta(minutes=30), last),  # not this schedule's Next
            "never ran": None}[case]


@pytest.mark.parametrize("case, use_monitor, first_past_due", [
    ("missed", True, True),
    ("schedule changed", True, False),   # the host recomputes Next from now instead
    ("never ran", True, False),
    ("missed", False, False),            # without the monitor nothing is recorded or read
])
def test_an_occurrence_missed_while_no_host_ran_runs_at_start_as_past_due(storage_env, case, use_monitor,
                                                                          first_past_due):
    from local.timer import DEFAULT, ScheduleStatus, _format
    stale = _stale(case, datetime.now(timezone.utc))
    if stale:
        write_status(*stale)
    calls = Calls()
    with running(make_listener(calls, use_monitor=use_monitor)):
        wait_for(lambda: len(calls) >= 2, 30, "two invocations")
    first, second = calls.requests()[:2]
    assert (first.past_due, second.past_due) == (first_past_due, False)
    if not use_monitor:
        assert first.schedule_status == {} and read_status() == {k: _format(v) for k, v in
                                                                  zip(("Last", "Next", "LastUpdated"), stale)}
    elif first_past_due:
        assert ScheduleStatus.from_json(first.schedule_status) == ScheduleStatus(*stale)
        assert calls.calls[0][1] == stale[1].timestamp()  # due: the occurrence that was missed
    else:  # what the host starts from: Last unset, Next from now
        seen = ScheduleStatus.from_json(first.schedule_status)
        assert seen.last == DEFAULT and seen.next > datetime.now(timezone.utc) - timedelta(seconds=10)
    if use_monitor:
        assert ScheduleStatus.from_json(read_status()).next > datetime.now(timezone.utc) - timedelta(seconds=5)


def test_only_one_listener_runs_across_host_processes_and_another_takes_over_when_it_stops(storage_env):
    """Two hosts on one storage account: the lease holder runs the timer; the other waits, then takes over."""
    first_calls, second_calls = Calls(), Calls()
    first, second = make_listener(first_calls), make_listener(second_calls)
    stop_first = threading.Event()
    thread = threading.Thread(target=first.run, args=(stop_first,), daemon=True)
    thread.start()
    try:
        wait_for(first.holds_lock.is_set, 30, "the first listener to take the lock")
        with running(second):
            wait_for(lambda: len(first_calls) >= 3, 30, "invocations by the lock holder")
            assert len(second_calls) == 0 and not second.holds_lock.is_set()
            stop_first.set()
            thread.join(timeout=30)
            calls_by_first = len(first_calls)
            wait_for(lambda: len(second_calls) >= 2, 15, "the waiting listener to take over")
        assert len(first_calls) == calls_by_first
    finally:
        stop_first.set()
        thread.join(timeout=30)


def test_a_dead_holder_is_taken_over_when_its_lease_runs_out(storage_env):
    """A host that died holds the lease until it lapses (not renewed); then another host runs the timer."""
    from azure.storage.blob import BlobLeaseClient
    from shared.storage import blob_service, ensure_container
    ensure_container(blob_service().get_container_client("azure-webjobs-hosts"))
    hosts_blob(LOCK).upload_blob(b"")
    BlobLeaseClient(hosts_blob(LOCK)).acquire(lease_duration=15)  # never renewed, never released
    lapses_at = time.monotonic() + 15
    calls = Calls()
    with running(make_listener(calls)):
        wait_for(lambda: len(calls) >= 1, 40, "the listener to take over the lapsed lease")
    assert calls.calls[0][2] >= lapses_at - 1.0


@pytest.mark.parametrize("stale_status, first_past_due", [(False, False), (True, True)])
def test_run_on_startup_runs_at_once_unless_a_past_due_run_does(storage_env, stale_status, first_past_due):
    from local.timer import ScheduleStatus
    now = datetime.now(timezone.utc)
    if stale_status:  # a yearly timer whose last New Year's run was missed
        last = datetime(now.year - 1, 1, 1, tzinfo=timezone.utc)
        write_status(last, datetime(now.year, 1, 1, tzinfo=timezone.utc), last)
    calls = Calls()
    with running(make_listener(calls, schedule=YEARLY, run_on_startup=True)):
        wait_for(lambda: len(calls) >= 1, 15, "the startup invocation")
        wait_for(lambda: ScheduleStatus.from_json(read_status()).last > now, 15, "the status after it")
    assert calls.requests()[0].past_due is first_past_due
    status = ScheduleStatus.from_json(read_status())
    assert status.next == datetime(now.year + 1, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("schedule, monitored", [
    ("0 */5 * * * *", True), ("0 * * * * *", True), ("0 0 0 31 2 *", True),
    ("*/30 * * * * *", False), (EVERY_SECOND, False),  # more than once a minute: not monitored by default
])
def test_use_monitor_defaults_as_the_timer_attribute_does(schedule, monitored):
    from local.ncrontab import Schedule
    from local.timer import TimerListener
    from shared.settings import StorageConnection
    listener = TimerListener("tick", Schedule.parse(schedule), StorageConnection(connection_string="unused"),
                             Calls(), use_monitor=None, run_on_startup=False, host_id=HOST_ID)
    assert listener.use_monitor is monitored


@pytest.mark.parametrize("name", ["tick", "Host.Functions.tick"])
def test_the_blobs_are_named_after_the_functions_full_name(name):
    from local.ncrontab import Schedule
    from local.timer import TimerListener
    from shared.settings import StorageConnection
    listener = TimerListener(name, Schedule.parse(YEARLY), StorageConnection(connection_string="unused"), Calls(),
                             use_monitor=True, run_on_startup=False, host_id=HOST_ID)
    assert (listener.status_blob, listener.lock_blob) == (STATUS, LOCK)
