"""Event Grid, the publisher side: a local stand-in (Azurite sends no Event Grid events).

Two parts, each doing what Azure's does (sources: Event Grid's "Message delivery and retry" and
"Set dead-letter location and retry policy" docs, and infra/app/event-subscriptions.bicep):

- `deliver(url, events)`: one delivery to a webhook subscription. POST the Event Grid schema
  array with `aeg-event-type: Notification`; only 200-204 count as delivered. Event Grid waits
  30 s for an answer: after that, or after any other answer, it retries on its schedule (10 s,
  30 s, 1 min, 5 min, 10 min, 30 min, 1 h, 3 h, 6 h, then every 12 h) while the first request may
  still be running on the receiver, until `maxDeliveryAttempts` (30) or the event time-to-live
  (1440 min) runs out. A webhook's 400, 401, 403 and 413 are not retried. What is not delivered
  is written to the subscription's dead-letter container (`eventgrid-deadletters`, as
  infra/app/storage.bicep names it) at `<SUBSCRIPTION>/<y>/<m>/<d>/<h>/<uuid>.json` (the name
  in capitals, hours not zero-padded, UTC), an array of the events each with the reason.
  `RetryPolicy.scaled` shrinks every duration for tests.
- `BlobEventPublisher`: the storage account's system topic plus the `tuneflow-datasets`
  subscription (BlobCreated under `/blobServices/default/containers/datasets/`, one event per
  request). It polls the container and publishes one `Microsoft.Storage.BlobCreated` event per
  new blob version (name + etag), shaped as Azure publishes it, concurrently for different
  blobs. At-least-once: a version is marked done in Azurite (container `eventgrid-standin`) only
  after it was delivered or dead-lettered, so a crash in between publishes it again, and a
  restart neither republishes what was done nor misses what arrived while it was stopped. Blobs
  that existed when the subscription was first created are never published; with `validate=True`
  creating it first makes Event Grid's handshake (`validate_webhook`). `redeliver()` and
  `redeliver_probability` make it deliver an event twice, as Event Grid may.

Local differences (stated, not hidden): no jitter and no skipped retries on the schedule; a late
answer to a timed-out request is never seen, so the retry always goes out (Event Grid removes
the event from its retry queue, best effort, when the answer comes within 3 minutes); a dead
letter is written at once (Event Grid waits about 5 minutes to batch them); the 30 s timeout is
the socket's, per read.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import urllib.error
import urllib.request
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from http import HTTPStatus

log = logging.getLogger("tuneflow.eventgrid")

DEAD_LETTER_CONTAINER = "eventgrid-deadletters"  # infra/app/storage.bicep `deadLetterContainer`
STATE_CONTAINER = "eventgrid-standin"  # the stand-in's own state: subscription start, done versions
DATASETS_SUBSCRIPTION = "tuneflow-datasets"  # the subscription names of infra/app/event-subscriptions.bicep
JOB_EVENTS_SUBSCRIPTION = "tuneflow-job-events"
BLOB_CREATED = "Microsoft.Storage.BlobCreated"
LOCAL_SUBSCRIPTION_ID = "00000000-0000-0000-0000-000000000000"

SUCCESS = frozenset({200, 201, 202, 203, 204})
NOT_RETRIED = frozenset({400, 401, 403, 413})  # a webhook's answers Event Grid dead-letters at once


@dataclass(frozen=True)
class RetryPolicy:
    """Event Grid's delivery timing; `schedule[i]` is the wait after failed attempt i+1 (the last repeats)."""

    timeout_s: float = 30.0
    schedule: tuple[float, ...] = (10, 30, 60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600)
    max_attempts: int = 30  # the subscriptions' retryPolicy.maxDeliveryAttempts
    ttl_s: float = 1440 * 60  # retryPolicy.eventTimeToLiveInMinutes

    def scaled(self, factor: float) -> "RetryPolicy":
        """The same policy with every duration multiplied by `factor` (tests run it in seconds)."""
        return replace(self, timeout_s=self.timeout_s * factor, schedule=tuple(s * factor for s in self.schedule),
                       ttl_s=self.ttl_s * factor)

    def delay(self, failed_attempts: int) -> float:
        return self.schedule[min(failed_attempts, len(self.schedule)) - 1]


@dataclass
class Delivery:
    """What became of one delivery: `Delivered`, `DeadLettered` or `Stopped` (the publisher stopped first)."""

    outcome: str
    attempts: int = 0
    status: int | None = None  # the last HTTP answer; None after a timeout or a failed connection
    last_outcome: str = ""  # as Event Grid's dead letters name it: Succeeded, TimedOut, BadRequest, ...
    dead_letter_reason: str | None = None
    dead_letter_blob: str | None = None
    history: list[tuple[str, int | None]] = field(default_factory=list)  # (outcome, status) per attempt

    @property
    def delivered(self) -> bool:
        return self.outcome == "Delivered"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def event_time(moment: datetime) -> str:
    """Event Grid's timestamp form: seven fraction digits and Z."""
    moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a 3xx is a failed delivery, not followed
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def _outcome_of(status: int) -> str:
    if status in SUCCESS:
        return "Succeeded"
    try:
        return HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    except ValueError:
        return "GenericError"


def _post(url: str, body: bytes, timeout_s: float, event_type: str = "Notification") -> tuple[int, bytes]:
    """POST as Event Grid does (no redirects followed); (status, body). Raises on timeout or connection errors."""
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "aeg-event-type": event_type})
    try:
        with _opener.open(request, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, b""


def _attempt(url: str, body: bytes, timeout_s: float) -> tuple[str, int | None]:
    """One delivery attempt; (outcome, status). A timeout abandons the request: the receiver may still be running it."""
    try:
        status, _ = _post(url, body, timeout_s)
        return _outcome_of(status), status
    except TimeoutError:
        return "TimedOut", None
    except urllib.error.URLError as exc:
        return ("TimedOut" if isinstance(exc.reason, TimeoutError) else "CannotConnect"), None
    except OSError:  # reset or closed without an answer
        return "GenericError", None


class SubscriptionValidationError(RuntimeError):
    """The webhook did not answer Event Grid's handshake: Azure refuses to create the subscription."""


def validate_webhook(url: str, subscription: str, topic: str, timeout_s: float = 30.0) -> None:
    """The handshake Event Grid makes when a webhook subscription is created: a
    `SubscriptionValidationEvent` (header `aeg-event-type: SubscriptionValidation`) that the endpoint
    must answer 200 with `{"validationResponse": <validationCode>}`."""
    code, ident = str(uuid.uuid4()), str(uuid.uuid4())
    event = {"id": ident, "topic": topic, "subject": "", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
             "eventTime": event_time(_now()), "metadataVersion": "1", "dataVersion": "1",
             "data": {"validationCode": code,
                      "validationUrl": f"http://127.0.0.1/eventsubscriptions/{subscription}/validate?id={ident}"}}
    try:
        status, body = _post(url, json.dumps([event]).encode(), timeout_s, "SubscriptionValidation")
        answer = json.loads(body or b"null")
    except (OSError, ValueError) as exc:
        raise SubscriptionValidationError(f"{subscription}: the handshake with {url} failed: {exc}") from exc
    if status != 200 or not isinstance(answer, dict) or answer.get("validationResponse") != code:
        raise SubscriptionValidationError(
            f"{subscription}: {url} answered the handshake with {status} {body[:200]!r}, not the validation code")


def deliver(url: str, events: list[dict], *, subscription: str = JOB_EVENTS_SUBSCRIPTION,
            policy: RetryPolicy = RetryPolicy(), stop: threading.Event | None = None, storage=None,
            published: datetime | None = None) -> Delivery:
    """Deliver one batch to a webhook as Event Grid does; dead-letter it when that fails for good.

    `published` is when the events entered Event Grid (the time-to-live counts from it; default now);
    `stop` ends the retries early with outcome `Stopped` (nothing dead-lettered); `storage` is the
    `StorageConnection` of the dead-letter container (default: the `AzureWebJobsStorage` setting).
    Raises when the dead letter cannot be written (the caller keeps the events, as they are not done).
    """
    stop = stop or threading.Event()
    published = published or _now()
    expires = published.timestamp() + policy.ttl_s
    body = json.dumps(events).encode()
    result = Delivery("Stopped")
    while True:
        outcome, status = _attempt(url, body, policy.timeout_s)
        result.attempts += 1
        result.status, result.last_outcome = status, outcome
        result.history.append((outcome, status))
        if status in SUCCESS:
            result.outcome = "Delivered"
            return result
        log.info("%s: delivery %d to %s failed: %s %s", subscription, result.attempts, url, outcome, status or "")
        if status in NOT_RETRIED:
            reason = "UndeliverableDueToHttpBadRequest" if status == 400 else "UndeliverableDueToClientError"
        elif result.attempts >= policy.max_attempts:
            reason = "MaxDeliveryAttemptsExceeded"
        elif _now().timestamp() + policy.delay(result.attempts) > expires:
            reason = "TimeToLiveExceeded"
        else:
            if stop.wait(policy.delay(result.attempts)):
                result.outcome = "Stopped"
                return result
            continue
        result.outcome, result.dead_letter_reason = "DeadLettered", reason
        result.dead_letter_blob = write_dead_letter(events, subscription, result, published, storage)
        log.warning("%s: %d event(s) dead-lettered (%s) to %s/%s", subscription, len(events), reason,
                    DEAD_LETTER_CONTAINER, result.dead_letter_blob)
        return result


def write_dead_letter(events: list[dict], subscription: str, result: Delivery, published: datetime,
                      storage=None) -> str:
    """Write the events as Event Grid dead-letters them: one blob, an array, each event with why."""
    from shared.storage import container
    now = _now()
    name = f"{subscription.upper()}/{now.year}/{now.month}/{now.day}/{now.hour}/{uuid.uuid4()}.json"
    extra = {"deadLetterReason": result.dead_letter_reason, "deliveryAttempts": result.attempts,
             "lastDeliveryOutcome": result.last_outcome, "lastHttpStatusCode": result.status or 0,
             "publishTime": event_time(published), "lastDeliveryAttemptTime": event_time(now)}
    body = json.dumps([{**event, **extra} for event in events], indent=2).encode()
    container(DEAD_LETTER_CONTAINER, storage).upload_blob(name, body, overwrite=True)
    return name


class BlobEventPublisher:
    """The storage account's system topic + the BlobCreated webhook subscription, by polling a container.

    State in Azurite, container `eventgrid-standin`, under `<subscription>/`: `subscription.json` (when
    the subscription was created and which blob versions existed then) and `done/<etag>/<blob name>`
    (one per version delivered or dead-lettered, holding the event that went out).
    """

    def __init__(self, url: str, container: str = "datasets", *, subscription: str = DATASETS_SUBSCRIPTION,
                 storage=None, poll_interval: float = 1.0, policy: RetryPolicy = RetryPolicy(),
                 max_workers: int = 8, redeliver_probability: float = 0.0, seed: int | None = None,
                 validate: bool = False) -> None:
        self.url, self.container_name, self.subscription = url, container, subscription
        self.validate = validate
        self.storage, self.poll_interval, self.policy = storage, poll_interval, policy
        self.max_workers = max_workers
        self.redeliver_probability = redeliver_probability
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._done: set[tuple[str, str]] = set()
        self._in_flight: set[tuple[str, str]] = set()
        self._existing: dict[str, str] = {}
        self.created: datetime | None = None
        self.deliveries: list[tuple[str, str, Delivery]] = []  # (blob, etag, delivery), in completion order

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "BlobEventPublisher":
        from shared.storage import blob_service, ensure_container
        service = blob_service(self.storage)
        self._source = service.get_container_client(self.container_name)
        self._state = service.get_container_client(STATE_CONTAINER)
        ensure_container(self._source)
        ensure_container(self._state)
        self._load_state()
        self._stop.clear()
        self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix=f"eventgrid-{self.subscription}")
        self._thread = threading.Thread(target=self._loop, name=f"eventgrid-{self.subscription}-scan", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop scanning and retrying; joins every thread (an HTTP request in flight ends within its timeout).
        What was not delivered yet is published again by the next start."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self._pool:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._thread = self._pool = None
        with self._lock:
            self._in_flight.clear()

    @property
    def topic(self) -> str:
        """The storage account's system topic, as BlobCreated events name it."""
        return (f"/subscriptions/{LOCAL_SUBSCRIPTION_ID}/resourceGroups/local/providers/"
                f"Microsoft.Storage/storageAccounts/{self._source.account_name}")

    @property
    def in_flight(self) -> int:
        """How many blob versions are being delivered (or waiting for a retry) now."""
        with self._lock:
            return len(self._in_flight)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _load_state(self) -> None:
        from shared.storage import get_json, put_json
        path = f"{self.subscription}/subscription.json"
        state = get_json(self._state, path)
        if state is None:  # the subscription is created now: what exists already is never published
            if self.validate:
                validate_webhook(self.url, self.subscription, self.topic, self.policy.timeout_s)
            existing = {b.name: b.etag.strip('"') for b in self._source.list_blobs()}
            state = {"subscription": self.subscription, "container": self.container_name,
                     "createdTime": event_time(_now()), "existingVersions": existing}
            put_json(self._state, path, state)
        self.created = datetime.fromisoformat(state["createdTime"])
        self._existing = state["existingVersions"]
        prefix = f"{self.subscription}/done/"
        with self._lock:
            self._done = {tuple(b.name[len(prefix):].split("/", 1)[::-1])
                          for b in self._state.list_blobs(name_starts_with=prefix)}

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as exc:  # Azurite restarting, a container deleted: try again next round
                log.warning("%s: cannot scan %s: %s", self.subscription, self.container_name, exc)
            self._stop.wait(self.poll_interval)

    # -- publishing -----------------------------------------------------------------------------
    def poll(self) -> list[tuple[str, str]]:
        """One scan: submit every new blob version for delivery; returns the (name, etag) submitted."""
        submitted = []
        for blob in self._source.list_blobs():
            key = (blob.name, blob.etag.strip('"'))
            with self._lock:
                if self._existing.get(key[0]) == key[1] or key in self._done or key in self._in_flight:
                    continue
                if self._stop.is_set() or self._pool is None:
                    break
                self._in_flight.add(key)
            self._pool.submit(self._publish, key, blob)
            submitted.append(key)
        return submitted

    def _publish(self, key: tuple[str, str], blob) -> None:
        try:
            event = self.blob_created(blob)
            published = datetime.fromisoformat(event["eventTime"])  # the time-to-live counts from the write
            delivery = deliver(self.url, [event], subscription=self.subscription, policy=self.policy,
                               stop=self._stop, storage=self.storage, published=published)
            if delivery.outcome == "Stopped":
                return
            self._mark_done(key, event, delivery)
            with self._lock:
                self._done.add(key)
                self.deliveries.append((*key, delivery))
                twice = delivery.delivered and self._rng.random() < self.redeliver_probability
            if twice:
                self._send_again(key, event)
        except Exception:  # not marked: the next scan publishes it again (at least once)
            log.exception("%s: publishing %s failed; the next scan publishes it again", self.subscription, key[0])
        finally:
            with self._lock:
                self._in_flight.discard(key)

    def _mark_done(self, key: tuple[str, str], event: dict, delivery: Delivery) -> None:
        from shared.storage import put_json
        name, etag = key
        put_json(self._state, f"{self.subscription}/done/{etag}/{name}",
                 {"event": event, "outcome": delivery.outcome, "attempts": delivery.attempts,
                  "deadLetterBlob": delivery.dead_letter_blob, "at": event_time(_now())})

    def _send_again(self, key: tuple[str, str], event: dict) -> Delivery:
        delivery = deliver(self.url, [event], subscription=self.subscription, policy=self.policy,
                           stop=self._stop, storage=self.storage, published=_now())
        with self._lock:
            self.deliveries.append((*key, delivery))
        return delivery

    def redeliver(self, blob_name: str) -> Future:
        """Deliver the event of the blob's current version once more (the same event id, as an Event Grid
        duplicate has); marks are not touched. Returns the future of its `Delivery`."""
        from shared.storage import get_json
        blob = self._source.get_blob_client(blob_name).get_blob_properties()
        etag = blob.etag.strip('"')
        done = get_json(self._state, f"{self.subscription}/done/{etag}/{blob_name}")
        event = done["event"] if done else self.blob_created(blob)
        if self._pool is None:
            raise RuntimeError("the publisher is not started")
        return self._pool.submit(self._send_again, (blob_name, etag), event)

    def blob_created(self, blob) -> dict:
        """The BlobCreated event Azure publishes for this blob version (blob: listing item or properties)."""
        etag = blob.etag.strip('"')
        client = self._source.get_blob_client(blob.name)
        blob_type = str(getattr(blob.blob_type, "value", blob.blob_type))
        api = "PutBlob"
        if blob_type == "BlockBlob" and client.get_block_list("committed")[0]:
            api = "PutBlockList"  # committed from staged blocks (uploads above the single-put size)
        ident = uuid.uuid5(uuid.NAMESPACE_URL, f"{self.subscription}/{self.container_name}/{blob.name}/{etag}")
        modified = blob.last_modified or _now()
        ticks = int(modified.timestamp() * 10_000_000)
        return {
            "topic": self.topic,
            "subject": f"/blobServices/default/containers/{self.container_name}/blobs/{blob.name}",
            "eventType": BLOB_CREATED,
            "eventTime": event_time(modified),
            "id": str(ident),
            "data": {
                "api": api,
                "clientRequestId": str(uuid.uuid5(ident, "client")),
                "requestId": str(uuid.uuid5(ident, "request")),
                "eTag": etag,
                "contentType": blob.content_settings.content_type or "application/octet-stream",
                "contentLength": blob.size,
                "blobType": blob_type,
                "url": client.url,
                "sequencer": f"{ticks:016x}{uuid.uuid5(ident, 'sequencer').int & (2**64 - 1):016x}",
                "storageDiagnostics": {"batchId": str(uuid.uuid5(ident, "batch"))},
            },
            "dataVersion": "",
            "metadataVersion": "1",
        }
