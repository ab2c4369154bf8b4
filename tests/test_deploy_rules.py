"""The deploy function's rules (shared/deployment.py) on real Azurite and the strict Azure ML fake:
a request repeated after its flow was reaped brings nothing back; a smoke test with no usable answer
records smoke-failed; an endpoint left Failed is replaced, not reused; a dataset's own TTL is applied."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.ttl import parse_expires_at, utcnow
from tests.test_azure_first_contact import _reap_after_expiry, _run_flow, driver

pytestmark = pytest.mark.integration


@pytest.fixture
def azure_flow(storage_env, monkeypatch):
    monkeypatch.setenv("TUNEFLOW_ML_BACKEND", "azure")
    monkeypatch.setenv("TUNEFLOW_ENDPOINT_TTL", "2h")
    return driver(polls=2)


def _stages(flow_id: str) -> dict:
    from shared import flows, storage
    return {r["stage"]: r for r in flows.read_all(storage.container("flows")) if r["flow_id"] == flow_id}


def _deploy_again(d, deploy):
    from shared import storage
    from shared.deployment import handle_deploy
    return handle_deploy(deploy, d.backend, storage.container("prepared"), storage.container("flows"),
                         sleep=lambda s: None)


def test_a_deploy_request_repeated_after_its_flow_was_reaped_brings_nothing_back(azure_flow):
    """A late Service Bus redelivery (say, after a host crash) found the endpoint gone and created it again:
    a second endpoint for one flow, which nobody would reap before its new TTL."""
    d = azure_flow
    request, deploy, endpoint, _ = _run_flow(d, "rules-reaped")
    _reap_after_expiry(d, endpoint)
    assert d.fake.endpoints == {} and "reaped" in _stages(request.flow_id)
    puts = len(d.fake.bodies("PUT", f"/onlineEndpoints/{endpoint.name}"))
    assert _deploy_again(d, deploy) is None
    assert d.fake.endpoints == {} and len(d.fake.bodies("PUT", f"/onlineEndpoints/{endpoint.name}")) == puts


def test_a_smoke_test_without_a_usable_answer_records_smoke_failed_with_the_reason(azure_flow):
    d = azure_flow
    d.fake.container_errors = 1  # the first scoring request: 424 from the container, plain text
    request, _deploy, _endpoint, stages = _run_flow(d, "rules-smoke")
    assert "smoke-failed" in stages and "smoke-tested" not in stages
    assert "scoring container failed" in _stages(request.flow_id)["smoke-failed"]["detail"]["error"]


def test_an_endpoint_left_failed_without_traffic_is_deleted_and_created_again_not_reused(azure_flow):
    from shared import naming
    from tests.test_rollout_azure import _model_version
    d = azure_flow
    deploy = _model_version(d, "rules-failed", seed=1)
    name = naming.endpoint_name("rules-failed", d.backend.workspace_id)
    d.backend.create_endpoint(name, {"managed-by": "tuneflow"})  # an earlier attempt's, whose creation failed
    d.fake.endpoints[name]["properties"]["provisioningState"] = "Failed"
    done = _deploy_again(d, deploy)
    assert done is not None and done.provisioning_state == "Succeeded"
    assert done.traffic == {naming.deployment_name(deploy.model_version): 100}
    writes = [m for m, p, _b in d.fake.calls if p.endswith(f"/onlineEndpoints/{name}") and m in ("PUT", "DELETE")]
    assert writes == ["PUT", "DELETE", "PUT", "PUT"]  # the failed one, deleted, created again, its traffic routed


def test_an_endpoint_that_failed_an_update_while_serving_is_kept_with_its_address(azure_flow):
    """Failed after an update, yet still routing: deleting it would drop its scoring URI and key; the next
    model version is rolled out into it (an update is what repairs a Failed endpoint in Azure)."""
    from tests.test_rollout_azure import _model_version
    d = azure_flow
    _request, _deploy, endpoint, _ = _run_flow(d, "rules-kept")
    d.fake.endpoints[endpoint.name]["properties"]["provisioningState"] = "Failed"
    second = _model_version(d, "rules-kept", seed=2)
    done = _deploy_again(d, second)
    assert done is not None and done.scoring_uri == endpoint.scoring_uri
    assert not [m for m, p, _b in d.fake.calls if p.endswith(f"/onlineEndpoints/{endpoint.name}") and m == "DELETE"]


def test_a_datasets_own_ttl_sets_its_endpoints_expiry(azure_flow, monkeypatch):
    monkeypatch.setenv("TUNEFLOW_ENDPOINT_TTL_BY_DATASET", '{"rules-ttl": "45m"}')
    before = utcnow()
    _request, _deploy, endpoint, _ = _run_flow(azure_flow, "rules-ttl")
    expiry = parse_expires_at(endpoint.tags["expires-at"])
    assert before + timedelta(minutes=45) - timedelta(seconds=1) <= expiry <= utcnow() + timedelta(minutes=45)
