"""One holder at a time across workers: a blob lease (60 s, renewed while held), in the `flows` container
under `_locks/`. A holder that dies stops renewing and its lease ends within a minute; nothing to clean up.

The deploy function holds its endpoint's lock for a whole rollout (and `tuneflow rollback` for its
traffic change), so two model versions of one dataset never shift the same endpoint's traffic at once.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager

from shared.ml.base import NotReady

log = logging.getLogger("tuneflow.locks")
LEASE_S = 60
RENEW_S = 20
PREFIX = "_locks/"


@contextmanager
def hold(container_client, name: str, wait_s: float = 600.0, poll_s: float = 2.0):
    """Hold the lock `name`; wait for it up to `wait_s` (then NotReady: the message is retried later)."""
    from azure.core.exceptions import HttpResponseError, ResourceExistsError
    blob = container_client.get_blob_client(f"{PREFIX}{name}")
    try:
        blob.upload_blob(b"", overwrite=False)
    except ResourceExistsError:
        pass
    deadline = time.monotonic() + wait_s
    while True:
        try:
            lease = blob.acquire_lease(lease_duration=LEASE_S)
            break
        except HttpResponseError as exc:
            if exc.status_code != 409:  # LeaseAlreadyPresent: another holder
                raise
        if time.monotonic() >= deadline:
            raise NotReady(f"{name} is held by another worker for more than {int(wait_s)} s: retry later")
        time.sleep(poll_s)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(RENEW_S):
            try:
                lease.renew()
            except Exception as exc:  # noqa: BLE001 - logged; the holder finds out at its next write
                log.warning("lock %s: renewing the lease failed: %s", name, exc)

    renewer = threading.Thread(target=renew, name=f"lock-{name}", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        try:
            lease.release()
        except Exception as exc:  # noqa: BLE001 - an expired lease is released already
            log.debug("lock %s release: %s", name, exc)
