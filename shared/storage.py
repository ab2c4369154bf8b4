"""Storage clients for the `AzureWebJobsStorage` account (connection string or identity)."""

from __future__ import annotations

import base64
import json
import threading
from functools import lru_cache

from shared.settings import StorageConnection


# Extra keyword arguments for every client; interactive tools lower the retries to fail fast.
_client_options: dict = {}


def set_client_options(**options) -> None:
    _client_options.clear()
    _client_options.update(options)  # part of the service clients' cache key: later clients use them


@lru_cache(maxsize=8)
def _credential():
    from azure.identity import DefaultAzureCredential  # identity only when no connection string
    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


# One service client per account, kind and options, shared by every thread of the process (Azure SDK
# clients are thread-safe): its connection pool is reused, instead of a new TCP connection and a new
# pipeline for every container or queue an invocation touches.
_services: dict[tuple, object] = {}
_services_lock = threading.Lock()


def _service(kind: str, conn: StorageConnection | None):
    conn = conn or StorageConnection.from_env()
    key = (kind, conn.connection_string, conn.blob_service_uri, conn.queue_service_uri, repr(sorted(_client_options.items())))
    with _services_lock:
        client = _services.get(key)
        if client is None:
            if kind == "blob":
                from azure.storage.blob import BlobServiceClient as cls
                uri = conn.blob_service_uri
            else:
                from azure.storage.queue import QueueServiceClient as cls
                uri = conn.queue_service_uri
            client = (cls.from_connection_string(conn.connection_string, **_client_options) if conn.connection_string
                      else cls(uri, credential=_credential(), **_client_options))
            _services[key] = client
        return client


def blob_service(conn: StorageConnection | None = None):
    return _service("blob", conn)


def queue_service(conn: StorageConnection | None = None):
    return _service("queue", conn)


# Containers and queues this process has already made sure exist (by URL): one create call each,
# not one per invocation.
_ensured: set[str] = set()


def container(name: str, conn: StorageConnection | None = None, create: bool = True):
    client = blob_service(conn).get_container_client(name)
    if create:
        ensure_container(client)
    return client


def ensure_container(client) -> None:
    _ensure(client.url, client.create_container)


def queue(name: str, conn: StorageConnection | None = None):
    """A queue client; the queue is created if it does not exist yet."""
    client = queue_service(conn).get_queue_client(name)
    _ensure(client.url, client.create_queue)
    return client


def forget_ensured() -> None:
    """Forget which containers and queues exist (after something deleted them, e.g. between tests)."""
    _ensured.clear()


def _ensure(url: str, create) -> None:
    from azure.core.exceptions import ResourceExistsError
    if url in _ensured:
        return
    try:
        create()
    except ResourceExistsError:
        pass
    _ensured.add(url)


def put_json(container_client, name: str, value, overwrite: bool = True) -> None:
    from azure.storage.blob import ContentSettings
    container_client.upload_blob(
        name, json.dumps(value, indent=2, sort_keys=True).encode(), overwrite=overwrite,
        content_settings=ContentSettings(content_type="application/json"))


def get_json(container_client, name: str):
    """The blob parsed as JSON, or None when it does not exist."""
    from azure.core.exceptions import ResourceNotFoundError
    try:
        return json.loads(container_client.download_blob(name).readall())
    except ResourceNotFoundError:
        return None


def exists(container_client, name: str) -> bool:
    return container_client.get_blob_client(name).exists()


def encode_queue_message(text: str) -> str:
    """Storage-queue triggers expect base64 bodies (the host's default `messageEncoding`)."""
    return base64.b64encode(text.encode()).decode()


def send_queue_message(queue_name: str, text: str, conn: StorageConnection | None = None) -> None:
    """Enqueue as the queue output binding would (base64), for tools outside the Functions host."""
    queue(queue_name, conn).send_message(encode_queue_message(text))
