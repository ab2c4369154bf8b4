"""Service Bus sends that need a MessageId.

The deploy request's MessageId is `model:version`, so the `deployments` queue's duplicate
detection drops a second request for the same model version (a redelivered event, a re-run).
Functions' Service Bus output binding cannot set MessageId outside .NET, so job_events sends with
the SDK, through the same identity-based connection settings the trigger uses
(`ServiceBusConnection__fullyQualifiedNamespace`, optionally `__clientId`). The local host and the
CLI plug in the stand-in (`local/servicebus.py`: an Azurite queue with the same duplicate detection)
with `use()`.
"""

from __future__ import annotations

import os
from typing import Callable

from shared.settings import SettingError

CONNECTION = "ServiceBusConnection"
# (queue, body, message_id or None) -> False when the sender knows the message was dropped as a duplicate
Sender = Callable[[str, str, str | None], bool | None]
_sender: Sender | None = None


def use(sender: Sender | None) -> None:
    """Route sends to `sender` (the local stand-in); None restores Service Bus."""
    global _sender
    _sender = sender


def send(queue: str, body: str, message_id: str | None = None) -> bool:
    """Send `body` with `message_id` (None: Service Bus gives it one). False only when the stand-in dropped
    it as a duplicate; Service Bus accepts a duplicate like any message, so there it is always True."""
    return (_sender or _send_to_service_bus)(queue, body, message_id) is not False


def _send_to_service_bus(queue: str, body: str, message_id: str | None) -> bool:
    namespace = os.environ.get(f"{CONNECTION}__fullyQualifiedNamespace", "")
    if not namespace or "<" in namespace:
        raise SettingError(f"{CONNECTION}__fullyQualifiedNamespace is not set: give the Service Bus namespace "
                           f"(e.g. sb-tuneflow.servicebus.windows.net); the Function App's identity needs "
                           f"'Azure Service Bus Data Sender' on it")
    from azure.servicebus import ServiceBusClient, ServiceBusMessage
    with ServiceBusClient(namespace, credential()) as client, client.get_queue_sender(queue) as sender:
        sender.send_messages(ServiceBusMessage(body, message_id=message_id, content_type="application/json"))
    return True


def credential():
    """The identity the Service Bus trigger uses: `ServiceBusConnection__clientId` names a user-assigned
    identity; unset, DefaultAzureCredential chooses as usual (AZURE_CLIENT_ID, then the system-assigned
    identity). Passing `managed_identity_client_id=None` would override AZURE_CLIENT_ID."""
    from azure.identity import DefaultAzureCredential
    client_id = os.environ.get(f"{CONNECTION}__clientId")
    chosen = {"managed_identity_client_id": client_id} if client_id else {}
    return DefaultAzureCredential(exclude_interactive_browser_credential=True, **chosen)
