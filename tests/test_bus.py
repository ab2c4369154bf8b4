"""Deploy requests carry MessageId = model:version; Service Bus (and the local stand-in) drop a
repeat within the duplicate-detection window."""

from __future__ import annotations

import pytest

from shared import bus
from shared.messages import DeployRequest
from shared.settings import SettingError
from tests.conftest import ROOT

REQUEST = DeployRequest(flow_id="1d5f5ba0-8598-5118-9f6d-5a45f4408403", dataset="ds", version="0123456789abcdef",
                        job="ft-ds-01234567", model_name="phi-3-tiny-ds", model_version="42")


def test_the_message_id_is_model_and_version():
    assert REQUEST.message_id == "phi-3-tiny-ds:42"


def test_without_a_namespace_the_error_names_the_setting(monkeypatch):
    monkeypatch.delenv("ServiceBusConnection__fullyQualifiedNamespace", raising=False)
    bus.use(None)
    with pytest.raises(SettingError, match="ServiceBusConnection__fullyQualifiedNamespace"):
        bus.send("deployments", REQUEST.to_json(), REQUEST.message_id)
    monkeypatch.setenv("ServiceBusConnection__fullyQualifiedNamespace", "<namespace>.servicebus.windows.net")
    with pytest.raises(SettingError):  # the example file's placeholder is not a namespace
        bus.send("deployments", REQUEST.to_json(), REQUEST.message_id)


def test_the_local_stand_in_drops_a_repeated_message_id(storage_env):
    from local.servicebus import ServiceBusStandIn, decode
    from shared import storage
    from shared.settings import StorageConnection
    stand_in = ServiceBusStandIn(StorageConnection.from_env())  # what the host and the CLI install
    bus.use(stand_in.send)
    try:
        assert bus.send("deployments", REQUEST.to_json(), REQUEST.message_id) is True
        # a redelivered event: same id, accepted and dropped
        assert bus.send("deployments", REQUEST.to_json(), REQUEST.message_id) is False
        other = REQUEST.model_copy(update={"model_version": "43"})
        assert bus.send("deployments", other.to_json(), other.message_id) is True
    finally:
        bus.use(None)
    received = [decode(m.content) for m in storage.queue("deployments").receive_messages(max_messages=32)]
    assert sorted((m.message_id, DeployRequest.parse(m.body).model_version) for m in received) == [
        ("phi-3-tiny-ds:42", "42"), ("phi-3-tiny-ds:43", "43")]
    assert stand_in.dropped == ["phi-3-tiny-ds:42"]


# -- which identity the SDK clients use ----------------------------------------------------------

def _send(namespace):
    bus.use(None)
    bus.send("deployments", REQUEST.to_json(), REQUEST.message_id)


def _dead_letters(namespace):
    from shared.deadletters import ServiceBusDeadLetters
    ServiceBusDeadLetters("deployments", namespace)._client()


@pytest.mark.parametrize("client", [_send, _dead_letters])
@pytest.mark.parametrize("client_id, expected", [
    (None, {}),  # unset: DefaultAzureCredential's own choice (AZURE_CLIENT_ID) must stand
    ("", {}),
    ("0f0e0d0c-0000-4000-8000-00000000abcd", {"managed_identity_client_id": "0f0e0d0c-0000-4000-8000-00000000abcd"}),
])
def test_the_client_id_setting_is_passed_only_when_set(monkeypatch, client, client_id, expected):
    from unittest import mock
    made = []
    monkeypatch.setattr("azure.identity.DefaultAzureCredential", lambda **kwargs: made.append(kwargs) or object())
    monkeypatch.setattr("azure.servicebus.ServiceBusClient", mock.MagicMock())
    monkeypatch.setenv("AZURE_CLIENT_ID", "11111111-0000-4000-8000-0000000000ee")
    monkeypatch.setenv("ServiceBusConnection__fullyQualifiedNamespace", "sb-tuneflow.servicebus.windows.net")
    if client_id is None:
        monkeypatch.delenv("ServiceBusConnection__clientId", raising=False)
    else:
        monkeypatch.setenv("ServiceBusConnection__clientId", client_id)
    client("sb-tuneflow.servicebus.windows.net")
    assert made == [{"exclude_interactive_browser_credential": True, **expected}]
