"""The local host's trigger listeners, each with its real extension's concurrency and retry rules.

| trigger | fetched | at once (per host) | a failure | given up |
| --- | --- | --- | --- | --- |
| storage queue | `batchSize` when at most `newBatchThreshold` run | batchSize + newBatchThreshold | visible again after `visibilityTimeout` | `maxDequeueCount` -> `<queue>-poison` |
| Service Bus | as slots free up | `maxConcurrentCalls` | abandoned: redelivered at once | 10 deliveries -> `<queue>-deadletter` |
| blob (EventGrid source) | from the host's internal queue | `maxDegreeOfParallelism` | visible again at once | `poisonBlobThreshold` -> `webjobs-blobtrigger-poison` |
| timer | `local/timer.py` | one listener across hosts | - | - |

All of them run the function on the host's worker pool, so at most `worker_threads` run at once in
all. A message stays hidden while its function runs: received with a lease (the host's 10-minute
visibility timeout for storage queues, the queue's 5-minute lockDuration for Service Bus, or
TUNEFLOW_LOCAL_LEASE_S) that is renewed at half its length, as the host renews it; when the host
dies, its messages come back once their lease runs out. A message whose dequeue count is already past the limit when it is received (its run ended
without completing it: a crashed worker) goes to the poison queue without running again. A message
that cannot even be decoded goes there at once. One failing message never stops a listener.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import threading
import time
from datetime import datetime, timezone
from urllib.parse import unquote

from local import bindings

log = logging.getLogger("tuneflow.host")
STORAGE_QUEUE_LEASE_S = 600  # the queue listener's visibility timeout on receive (10 minutes), renewed at half
SERVICE_BUS_LOCK_S = 300  # infra/app/servicebus.bicep lockDuration PT5M, renewed by the host
SERVICE_BUS_MAX_DELIVERY = 10  # Azure Service Bus' default MaxDeliveryCount
BLOB_POISON_QUEUE = "webjobs-blobtrigger-poison"
BLOB_CREATED = "Microsoft.Storage.BlobCreated"
MAX_RECEIVE = 32  # the most messages one storage queue receive returns


def blob_trigger_queue(host_id: str) -> str:
    """The real host's internal queue for blob-trigger work items (one per host id)."""
    return f"azure-webjobs-blobtrigger-{host_id}"


class _Slots:
    """Invocations in flight for one listener."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self.active = 0

    def wait_at_most(self, n: int, stop: threading.Event, timeout: float) -> bool:
        with self._cv:
            self._cv.wait_for(lambda: self.active <= n or stop.is_set(), timeout)
            return self.active <= n and not stop.is_set()

    def take(self) -> None:
        with self._cv:
            self.active += 1

    def release(self) -> None:
        with self._cv:
            self.active -= 1
            self._cv.notify_all()


def lease_seconds(default: float) -> float:
    from shared import settings
    raw = settings.get("TUNEFLOW_LOCAL_LEASE_S")
    return float(settings.get_int("TUNEFLOW_LOCAL_LEASE_S", 2)) if raw else default


class _Leases:
    """The messages whose functions run, kept hidden: each lease is renewed at half its length (the
    host's UpdateQueueMessageVisibility timer). `settle` ends the renewals before the message is
    deleted or released, with the pop receipt of the last renewal."""

    def __init__(self, client, lease_s: float):
        self.client, self.lease_s = client, lease_s
        self._lock = threading.Lock()
        self._held: dict[str, tuple[object, float]] = {}  # message id -> (message, when last renewed)

    def hold(self, msg) -> None:
        with self._lock:
            self._held[msg.id] = (msg, time.monotonic())

    def settle(self, msg):
        with self._lock:  # waits for a renewal in flight, whose new receipt `msg` then carries
            self._held.pop(msg.id, None)
        return msg

    def renew_due(self) -> None:
        with self._lock:
            for ident, (msg, renewed) in list(self._held.items()):
                if time.monotonic() - renewed < self.lease_s / 2:
                    continue
                try:
                    msg.pop_receipt = self.client.update_message(msg, visibility_timeout=int(self.lease_s)).pop_receipt
                    self._held[ident] = (msg, time.monotonic())
                except Exception as exc:  # storage unreachable: try again next round, while the lease lasts
                    log.warning("cannot renew the lease of message %s: %s", ident, exc)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(min(1.0, self.lease_s / 4)):
            self.renew_due()


class QueueListener:
    """Receive from an Azurite queue; run each message on the worker pool, at most `limit` at once.
    A new batch of `batch` is fetched when at most `threshold` are in flight."""

    def __init__(self, host, spec, queue_name: str, *, batch: int, threshold: int, limit: int, lease_s: float):
        self.host, self.spec = host, spec
        self.client = host.queue(queue_name)
        self.batch, self.threshold, self.limit = batch, threshold, limit
        self.slots = _Slots()
        self.leases = _Leases(self.client, lease_s)

    def run(self, stop: threading.Event) -> None:
        renewer = threading.Thread(target=self.leases.run, args=(stop,), daemon=True,
                                   name=f"leases:{self.spec.name}")
        renewer.start()
        while not stop.is_set():
            if not self.slots.wait_at_most(self.threshold, stop, self.host.poll_interval):
                continue
            want = max(1, min(MAX_RECEIVE, self.batch, self.limit - self.slots.active))
            try:
                messages = list(self.client.receive_messages(messages_per_page=want, max_messages=want,
                                                             visibility_timeout=int(self.leases.lease_s)))
            except Exception as exc:  # Azurite restarting: keep polling
                log.warning("%s: cannot read queue %s: %s", self.spec.name, self.client.queue_name, exc)
                messages = []
            for msg in messages:
                self.slots.take()
                self.leases.hold(msg)
                try:
                    self.host._pool.submit(self._guarded, msg)
                except RuntimeError:  # the host is stopping: the message comes back after its lease
                    self.leases.settle(msg)
                    self.slots.release()
            if not messages:
                stop.wait(self.host.poll_interval)
        renewer.join()

    def _guarded(self, msg) -> None:
        try:
            self.handle(msg)
        except Exception:  # e.g. Azurite gone mid-way: the message comes back after its lease
            log.exception("%s: message %s not settled", self.spec.name, msg.id)
        finally:
            self.leases.settle(msg)
            self.slots.release()

    def handle(self, msg) -> None:
        raise NotImplementedError

    def _delete(self, msg) -> None:
        with self._taken_over(msg):
            self.client.delete_message(self.leases.settle(msg))

    def _settle(self, msg, ok: bool, deliveries: int, max_deliveries: int, retry_delay_s: float, give_up) -> None:
        if ok:
            self._delete(msg)
        elif deliveries >= max_deliveries:
            give_up()
            self._delete(msg)
        else:
            with self._taken_over(msg):
                self.client.update_message(self.leases.settle(msg), visibility_timeout=int(retry_delay_s))

    @contextlib.contextmanager
    def _taken_over(self, msg):
        """As the host's DeleteMessage/ReleaseMessage: a pop receipt that no longer matches (the lease ran
        out, say while storage was down, and another receiver has the message) or a message already gone
        means someone else settles it: nothing to do."""
        from azure.core.exceptions import HttpResponseError
        try:
            yield
        except HttpResponseError as exc:
            if exc.status_code == 404 or getattr(exc, "error_code", None) == "PopReceiptMismatch":
                log.info("%s: message %s was taken over by another receiver (%s)", self.spec.name, msg.id,
                         getattr(exc, "error_code", exc.status_code))
                return
            raise


class StorageQueueListener(QueueListener):
    def __init__(self, host, spec):
        c = host.config
        super().__init__(host, spec, _resolve(spec.trigger["queueName"]), batch=c.queue_batch_size,
                         threshold=c.queue_new_batch_threshold, limit=c.queue_batch_size + c.queue_new_batch_threshold,
                         lease_s=lease_seconds(STORAGE_QUEUE_LEASE_S))
        self.poison_queue = f"{self.client.queue_name}-poison"

    def handle(self, msg) -> None:
        max_count = self.host.config.max_dequeue_count
        try:
            body = base64.b64decode(msg.content, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return self._poison_now(msg, msg.content, "message is not base64 (the queue trigger's messageEncoding); "
                                    "send it base64-encoded")
        if msg.dequeue_count > max_count:
            return self._poison_now(msg, body, f"dequeued {msg.dequeue_count} times, more than maxDequeueCount "
                                    f"{max_count}: an earlier run ended without completing it")
        outcome = self.host.invoke(self.spec, bindings.queue_message(msg, body), _ts(msg.inserted_on))
        self._settle(msg, outcome.ok, msg.dequeue_count, max_count, self.host.config.visibility_timeout_s,
                     lambda: self.host.poison(self.poison_queue, body, outcome.error, self.spec, msg.dequeue_count, True))

    def _poison_now(self, msg, body: str, reason: str) -> None:
        self.host.poison(self.poison_queue, body, reason, self.spec, msg.dequeue_count, encode=True)
        self._delete(msg)


class ServiceBusListener(QueueListener):
    def __init__(self, host, spec):
        limit = host.config.service_bus_max_concurrent_calls
        super().__init__(host, spec, _resolve(spec.trigger["queueName"]), batch=limit, threshold=limit - 1, limit=limit,
                         lease_s=lease_seconds(SERVICE_BUS_LOCK_S))
        self.dead_letter_queue = f"{self.client.queue_name}-deadletter"

    def handle(self, msg) -> None:
        from local.servicebus import decode
        m = decode(msg.content)
        message_id = m.message_id or msg.id
        deliveries = msg.dequeue_count

        def dead_letter(reason: str) -> None:
            self.host.poison(self.dead_letter_queue, m.body, reason, self.spec, deliveries, encode=False,
                             message_id=message_id)
        if deliveries > SERVICE_BUS_MAX_DELIVERY:
            dead_letter(f"MaxDeliveryCountExceeded: delivered {deliveries} times, more than {SERVICE_BUS_MAX_DELIVERY}")
            self._delete(msg)
            return
        arg = bindings.service_bus_message(m.body, message_id=message_id, delivery_count=deliveries,
                                           enqueued_at=m.enqueued_at or msg.inserted_on)
        outcome = self.host.invoke(self.spec, arg, _ts(m.enqueued_at or msg.inserted_on))
        self._settle(msg, outcome.ok, deliveries, SERVICE_BUS_MAX_DELIVERY, 0, lambda: dead_letter(outcome.error))


class BlobTriggerListener(QueueListener):
    """Work items the blob webhook queued, one per delivered BlobCreated event; each runs the function
    (no receipts in the EventGrid source mode)."""

    def __init__(self, host, spec):
        # The extension derives its own queue options from maxDegreeOfParallelism (host.json's `queues`
        # section does not apply): batch min(32, mdop / 2 + 1), new batch at mdop - batch, so at most mdop.
        mdop = host.config.blob_parallelism
        batch = min(MAX_RECEIVE, mdop // 2 + 1)
        super().__init__(host, spec, blob_trigger_queue(host.host_id), batch=batch, threshold=mdop - batch, limit=mdop,
                         lease_s=lease_seconds(STORAGE_QUEUE_LEASE_S))

    def handle(self, msg) -> None:
        threshold = self.host.config.poison_blob_threshold
        try:
            item = json.loads(base64.b64decode(msg.content))
            spec = self.host.function_for(item["FunctionId"], "blobTrigger")
            container, blob = item["ContainerName"], item["BlobName"]
        except (ValueError, KeyError, TypeError):
            log.error("blob trigger: unreadable work item %r dropped", msg.content[:200])
            self._delete(msg)
            return
        if spec is None:
            log.error("blob trigger: work item for unknown function %s dropped", item.get("FunctionId"))
            self._delete(msg)
            return
        where = json.dumps({"container": container, "blob": blob, "etag": item.get("ETag", "")})
        give_up = lambda reason: self.host.poison(BLOB_POISON_QUEUE, where, reason, spec, msg.dequeue_count, True)  # noqa: E731
        if msg.dequeue_count > threshold:
            give_up(f"dequeued {msg.dequeue_count} times, more than poisonBlobThreshold {threshold}: "
                    f"an earlier run ended without completing it")
            self._delete(msg)
            return
        client = bindings.blob_client(spec.trigger.get("connection") or "AzureWebJobsStorage", container, blob)
        if not client.exists():  # deleted since the event: nothing to process
            log.info("%s: %s/%s no longer exists", spec.name, container, blob)
            self._delete(msg)
            return
        outcome = self.host.invoke(spec, client, _ts(msg.inserted_on))
        self._settle(msg, outcome.ok, msg.dequeue_count, threshold, 0, lambda: give_up(outcome.error))


def blob_work_item(spec, event: dict) -> dict | None:
    """The internal queue's work item for one delivered event (None: not a BlobCreated event)."""
    if str(event.get("eventType", "")) != BLOB_CREATED:
        return None
    subject = str(event.get("subject", ""))
    prefix = "/blobServices/default/containers/"
    if not subject.startswith(prefix) or "/blobs/" not in subject:
        return None
    container, _, blob = subject[len(prefix):].partition("/blobs/")
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    return {"Type": "BlobTrigger", "FunctionId": spec.full_name, "BlobType": "BlockBlob",
            "ContainerName": container, "BlobName": unquote(blob), "ETag": str(data.get("eTag", ""))}


class TimerTrigger:
    def __init__(self, host, spec):
        from local.ncrontab import Schedule
        from local.timer import TimerListener
        self.listener = TimerListener(
            spec.full_name, Schedule.parse(_resolve(spec.trigger["schedule"])), host.storage,
            lambda request, due: host.submit(spec, request, due).result().ok,
            use_monitor=spec.trigger.get("useMonitor"), run_on_startup=bool(spec.trigger.get("runOnStartup")),
            host_id=host.host_id)

    def run(self, stop: threading.Event) -> None:
        self.listener.run(stop)


_LISTENERS = {"queueTrigger": StorageQueueListener, "serviceBusTrigger": ServiceBusListener,
              "blobTrigger": BlobTriggerListener, "timerTrigger": TimerTrigger}


def listener_for(host, spec):
    from local.host import HostError
    kind = spec.trigger["type"]
    if kind not in _LISTENERS:
        raise HostError(f"function {spec.name}: trigger type {kind} is not supported by the local host")
    return _LISTENERS[kind](host, spec)


def _resolve(value: str) -> str:
    from local.host import resolve
    return resolve(value)


def _ts(moment: datetime | None) -> float | None:
    return moment.astimezone(timezone.utc).timestamp() if moment else None
