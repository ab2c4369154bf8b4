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
    from local.host import LocalHost
    from shared import storage
    from shared.settings import StorageConnection
    host = LocalHost(project_dir=ROOT, port=0, settings_file="no-local-settings.json")
    host._storage = StorageConnection.from_env()  # the stand-in needs storage only, not the running host
    bus.use(host._service_bus_send)
    try:
        bus.send("deployments", REQUEST.to_json(), REQUEST.message_id)
        bus.send("deployments", REQUEST.to_json(), REQUEST.message_id)  # a redelivered event: same id
        other = REQUEST.model_copy(update={"model_version": "43"})
        bus.send("deployments", other.to_json(), other.message_id)
    finally:
        bus.use(None)
    bodies = [m.content for m in storage.queue("deployments").receive_messages(max_messages=32)]
    assert sorted(DeployRequest.parse(b).model_version for b in bodies) == ["42", "43"]
