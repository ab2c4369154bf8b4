"""tests/azure_fake.py is as strict as Azure ML: its answers are checked against real recorded traffic
(tests/reference/recordings/, from the azure-ai-ml SDK's own e2e recordings), and each strict
behaviour is driven through the real azure-ai-ml SDK (MLClient on FakeCredential and the fake's
transport, as tests/test_ml_contract.py's AzureDriver builds it) or, where the SDK hides the HTTP
answer, through the fake's `requests` session at the HTTP edge. Nothing here sleeps.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.azure_fake import (LOCATION, PROVIDER, RESOURCE_GROUP, SUBSCRIPTION, WORKSPACE, FakeAzureML,
                              FakeCredential, FakeRegion)
from tests.conftest import REFERENCE

RECORDINGS = REFERENCE / "recordings"
API = "?api-version=2022-02-01-preview"
SEED_BODY = {"input_data": {"input_string": [[{"role": "user", "content": "Explain photosynthesis."}]],
                            "parameters": {"max_new_tokens": 64}}, "params": {}}


def recording(name: str) -> list[dict]:
    return json.loads((RECORDINGS / f"{name}.json").read_text())["Entries"]


def recorded(name: str, method: str, pattern: str, status: int | None = None) -> dict:
    """The first recorded entry of `method` whose URI matches `pattern` (and answered `status`)."""
    for e in recording(name):
        if e["RequestMethod"] == method and re.search(pattern, e["RequestUri"]) and status in (None, e["StatusCode"]):
            return e
    raise LookupError(f"{name}: no {method} {pattern}")


def op_path(url: str) -> str:
    """The operation URL with the account-specific parts replaced, to compare its shape."""
    path = re.sub(r"https://[^/]+", "", url.split("?")[0])
    path = re.sub(r"/subscriptions/[^/]+/", "/subscriptions/<sub>/", path)
    path = re.sub(r"/locations/[^/]+/", "/locations/<loc>/", path)
    return re.sub(r"(o[ed]idp):[0-9a-f-]+:[0-9a-f-]+", r"\1:<workspace id>:<uuid>", path)


@pytest.fixture
def fake() -> FakeAzureML:
    return FakeAzureML(REFERENCE / "azureml")


def client(fake: FakeAzureML, **kwargs):
    from azure.ai.ml import MLClient
    if "registry_name" not in kwargs:
        kwargs = dict(subscription_id=fake.subscription, resource_group_name=fake.resource_group,
                      workspace_name=fake.workspace, **kwargs)
    return MLClient(FakeCredential(), transport=fake.transport(), enable_telemetry=False, show_progress=False,
                    **kwargs)


@pytest.fixture
def ml(fake):
    return client(fake)


class Http:
    """The fake at the HTTP edge, with the caller's token, for the answers the SDK hides."""

    def __init__(self, fake: FakeAzureML):
        self.fake, self.session = fake, fake.session()
        self.token = FakeCredential().get_token("https://management.azure.com/.default").token

    def arm(self, method: str, path: str, body=None):
        url = f"https://management.azure.com{path}" + ("" if "?" in path else API)
        return self.session.request(method, url, json=body, headers={"Authorization": f"Bearer {self.token}"})

    def get(self, url: str):
        return self.session.get(url, headers={"Authorization": f"Bearer {self.token}"})

    def score(self, endpoint: str, body=None, key: str | None = "primary", headers: dict | None = None, data=None):
        headers = dict(headers or {})
        if key:
            headers["Authorization"] = f"Bearer {self.fake.keys[endpoint] if key == 'primary' else key}"
        url = f"https://{endpoint}.{self.fake.location}.inference.ml.azure.com/score"
        return self.session.post(url, json=body if data is None else None, data=data, headers=headers)

    def poll_until_done(self, operation_url: str) -> list[dict]:
        bodies = []
        while not bodies or bodies[-1]["status"] not in ("Succeeded", "Failed", "Canceled"):
            bodies.append(self.get(operation_url).json())
            assert len(bodies) < 50
        return bodies


@pytest.fixture
def http(fake):
    return Http(fake)


def endpoint_body(traffic=None) -> dict:
    return {"tags": {}, "location": LOCATION, "identity": {"type": "SystemAssigned"},
            "properties": {"authMode": "Key", "properties": {}, "mirrorTraffic": {}, "traffic": traffic or {}}}


def deployment_body(fake: FakeAzureML) -> dict:
    probe = {"failureThreshold": 30, "successThreshold": 1, "timeout": "PT2S", "period": "PT10S",
             "initialDelay": "PT600S"}
    return {"location": LOCATION, "sku": {"name": "Default", "capacity": 1},
            "properties": {"endpointComputeType": "Managed", "instanceType": "Standard_NC24ads_A100_v4",
                           "model": f"{fake.scope}/models/m/versions/1", "scaleSettings": {"scaleType": "Default"},
                           "requestSettings": {"requestTimeout": "PT90S", "maxConcurrentRequestsPerInstance": 1},
                           "livenessProbe": probe, "readinessProbe": probe}}


def live_endpoint(fake: FakeAzureML, http: Http, name: str = "tf-fake-00000001", deployment: str = "demo") -> str:
    """An endpoint with one Succeeded deployment carrying all traffic, made over HTTP."""
    ep = f"{fake.scope}/onlineEndpoints/{name}"
    http.arm("PUT", ep, endpoint_body())
    http.arm("PUT", f"{ep}/deployments/{deployment}", deployment_body(fake))
    fake.finish_operations()
    http.arm("PUT", ep, endpoint_body({deployment: 100}))
    fake.finish_operations()
    return name


# --- the answers, against the recordings -----------------------------------------------------------

def test_endpoint_creation_answers_as_recorded(fake, http):
    fake.lro_polls = 2
    for source in ("online_deployment_create", "online_endpoint_e2e"):
        real = recorded(source, "PUT", r"/onlineEndpoints/[^/?]+\?", 201)
        name = f"tf-{source.replace('_', '-')[:20]}"
        answer = http.arm("PUT", f"{fake.scope}/onlineEndpoints/{name}", endpoint_body())
        assert answer.status_code == real["StatusCode"] == 201
        for header in ("Azure-AsyncOperation", "Location", "x-ms-async-operation-timeout"):
            assert header in real["ResponseHeaders"] and header in answer.headers, header
        assert op_path(answer.headers["Azure-AsyncOperation"]) == op_path(real["ResponseHeaders"]["Azure-AsyncOperation"])
        assert answer.headers["Location"].split("?")[0].endswith(f"/onlineEndpoints/{name}")  # the resource, as recorded
        body, real_body = answer.json(), real["ResponseBody"]
        assert set(real_body) <= set(body)
        assert set(real_body["properties"]) <= set(body["properties"])
        assert body["properties"]["provisioningState"] == real_body["properties"]["provisioningState"] == "Creating"
        assert body["properties"]["scoringUri"] is real_body["properties"]["scoringUri"] is None
        assert "AzureAsyncOperationUri" in body["properties"]["properties"]


def test_operation_status_has_the_recorded_shape_and_sequence(fake, http):
    real = [e["ResponseBody"] for e in recording("online_endpoint_e2e") if "mfeOperationsStatus" in e["RequestUri"]]
    real_running = {b["status"] for b in real if b["endTime"].startswith("0001")}
    real_done = [b for b in real if not b["endTime"].startswith("0001")]
    fake.lro_polls = 3
    answer = http.arm("PUT", f"{fake.scope}/onlineEndpoints/tf-fake-00000002", endpoint_body())
    polls = http.poll_until_done(answer.headers["Azure-AsyncOperation"])
    assert [p["status"] for p in polls] == [*real_running] * 3 + ["Succeeded"] == ["Updating"] * 3 + ["Succeeded"]
    assert {tuple(sorted(p)) for p in polls} == {tuple(sorted(b)) for b in real}  # same keys as recorded
    assert [p["endTime"].startswith("0001") for p in polls] == [True, True, True, False]
    assert real_done and real_done[0]["status"] == "Succeeded"
    state = http.arm("GET", f"{fake.scope}/onlineEndpoints/tf-fake-00000002").json()["properties"]
    final = recorded("online_deployment_create", "GET", r"/onlineEndpoints/[^/?]+\?")["ResponseBody"]["properties"]
    assert state["provisioningState"] == final["provisioningState"] == "Succeeded"
    assert state["scoringUri"] == f"https://tf-fake-00000002.{LOCATION}.inference.ml.azure.com/score"
    assert re.fullmatch(r"https://[a-z0-9-]+\.[a-z0-9]+\.inference\.ml\.azure\.com/score", final["scoringUri"])
    assert set(final) <= set(state)


def test_operation_polls_carry_no_retry_after_as_recorded(fake, http):
    assert not [e for e in recording("online_deployment_create") + recording("online_endpoint_e2e")
                if "mfeOperationsStatus" in e["RequestUri"] and "Retry-After" in e["ResponseHeaders"]]
    answer = http.arm("PUT", f"{fake.scope}/onlineEndpoints/tf-fake-00000003", endpoint_body())
    assert "Retry-After" not in http.get(answer.headers["Azure-AsyncOperation"]).headers


def test_an_endpoint_update_is_201_with_an_operation_as_the_recorded_traffic_change(fake, http):
    real = [e for e in recording("online_deployment_create")
            if e["RequestMethod"] == "PUT" and re.search(r"/onlineEndpoints/[^/?]+\?", e["RequestUri"])][-1]
    assert real["RequestBody"]["properties"]["traffic"]  # the recorded update: traffic to the deployment
    name = live_endpoint(fake, http)
    answer = http.arm("PUT", f"{fake.scope}/onlineEndpoints/{name}", endpoint_body({"demo": 0}))
    assert answer.status_code == real["StatusCode"] == 201
    assert {"Azure-AsyncOperation", "Location"} <= set(answer.headers) & set(real["ResponseHeaders"])
    assert answer.json()["properties"]["provisioningState"] == "Updating"  # a GET meanwhile says Updating


def test_deployment_creation_answers_as_recorded(fake, http):
    real = recorded("online_deployment_create", "PUT", r"/deployments/", 201)
    listed = recorded("online_deployment_create", "GET", r"/deployments\?")["ResponseBody"]["value"][0]
    ep = f"{fake.scope}/onlineEndpoints/tf-fake-00000004"
    http.arm("PUT", ep, endpoint_body())
    answer = http.arm("PUT", f"{ep}/deployments/demo", deployment_body(fake))
    assert answer.status_code == real["StatusCode"] == 201
    assert op_path(answer.headers["Azure-AsyncOperation"]) == op_path(real["ResponseHeaders"]["Azure-AsyncOperation"])
    assert answer.headers["Location"].split("?")[0].endswith(f"{ep}/deployments/demo")
    assert answer.json()["properties"]["provisioningState"] == real["ResponseBody"]["properties"]["provisioningState"]
    fake.finish_operations()
    mine = http.arm("GET", f"{ep}/deployments").json()["value"][0]
    read_by_sdk = {"provisioningState", "instanceType", "model", "scaleSettings", "requestSettings", "livenessProbe",
                   "readinessProbe", "endpointComputeType", "egressPublicNetworkAccess"}
    assert read_by_sdk <= set(listed["properties"]) and read_by_sdk <= set(mine["properties"])
    assert set(listed) <= set(mine) and set(listed["sku"]) <= set(mine["sku"])
    assert mine["properties"]["provisioningState"] == listed["properties"]["provisioningState"] == "Succeeded"


def test_endpoint_deletion_answers_as_recorded(fake, http):
    real = recorded("online_deployment_create", "DELETE", r"/onlineEndpoints/")
    name = live_endpoint(fake, http)
    answer = http.arm("DELETE", f"{fake.scope}/onlineEndpoints/{name}")
    assert answer.status_code == real["StatusCode"] == 202
    assert op_path(answer.headers["Azure-AsyncOperation"]) == op_path(real["ResponseHeaders"]["Azure-AsyncOperation"])
    assert op_path(answer.headers["Location"]) == op_path(real["ResponseHeaders"]["Location"])  # mfeOperationResults
    assert "/mfeOperationResults/" in answer.headers["Location"]
    assert answer.content in (b"", b"null")
    assert fake.endpoints[name]["properties"]["provisioningState"] == "Deleting"
    assert fake.deployments[(name, "demo")]["properties"]["provisioningState"] == "Deleting"
    assert http.get(answer.headers["Location"]).status_code == 202  # the operation result: not yet
    polls = http.poll_until_done(answer.headers["Azure-AsyncOperation"])
    assert polls[-1]["status"] == "Succeeded" and name not in fake.endpoints and not fake.deployments
    assert http.get(answer.headers["Location"]).status_code == 204


def test_keys_and_a_scoring_answer_as_recorded(fake, http):
    keys = recorded("online_deployment_create", "POST", r"/listKeys")
    score = recorded("online_deployment_create", "POST", r"inference\.ml\.azure\.com/score")
    name = live_endpoint(fake, http)
    mine = http.arm("POST", f"{fake.scope}/onlineEndpoints/{name}/listKeys")
    assert mine.status_code == keys["StatusCode"] and set(mine.json()) == set(keys["ResponseBody"])
    answer = http.score(name, SEED_BODY)
    assert answer.status_code == score["StatusCode"] == 200
    assert "azureml-model-deployment" in score["ResponseHeaders"] and answer.headers["azureml-model-deployment"] == "demo"


def test_a_model_version_is_created_as_recorded(fake, ml):
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model
    real = recorded("model_get_latest_label", "PUT", r"/models/")
    ml.models.create_or_update(Model(path="azureml://jobs/ft-x/outputs/mlflow_model_folder", type=AssetTypes.MLFLOW_MODEL,
                                     name="m", version="7", tags={"a": "b"}))
    put = [c for c in fake.calls if c[0] == "PUT" and c[1].endswith("/models/m/versions/7")]
    assert put
    answer = Http(fake).arm("PUT", f"{fake.scope}/models/m/versions/8", {"properties": put[0][2]["properties"]})
    assert answer.status_code == real["StatusCode"] == 201
    read_by_sdk = {"modelType", "modelUri", "isArchived", "tags", "properties", "flavors", "provisioningState"}
    assert read_by_sdk <= set(real["ResponseBody"]["properties"]) and read_by_sdk <= set(answer.json()["properties"])
    assert ml.models.get("m", version="7").tags == {"a": "b"}


# --- long-running operations through the SDK -------------------------------------------------------

def test_operations_take_the_polls_a_test_sets_without_sleeping(fake, ml):
    from azure.ai.ml.entities import ManagedOnlineEndpoint
    fake.lro_polls = 4
    started = time.monotonic()
    done = ml.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name="tf-fake-00000010", auth_mode="key")).result()
    assert done.provisioning_state == "Succeeded" and done.scoring_uri
    polls = [p for m, p, _ in fake.calls if m == "GET" and "/mfeOperationsStatus/" in p]
    assert len(polls) == 5  # 4 answered "running", the 5th Succeeded
    assert len(fake.slept) == 4 and all(s > 0 for s in fake.slept)  # azure-core asked to sleep between polls
    assert time.monotonic() - started < 20  # ... and nothing did


def test_the_transport_records_sleeps_and_returns_at_once(fake):
    transport = fake.transport()
    started = time.monotonic()
    transport.sleep(3600)
    assert fake.slept == [3600] and time.monotonic() - started < 1


def test_a_caller_that_stops_polling_leaves_the_resource_creating_until_time_passes(fake, ml):
    from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint
    ml.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name="tf-fake-00000011", auth_mode="key"))
    assert ml.online_endpoints.get("tf-fake-00000011").provisioning_state == "Creating"
    fake.finish_operations()
    assert ml.online_endpoints.get("tf-fake-00000011").provisioning_state == "Succeeded"
    ml.online_deployments.begin_create_or_update(ManagedOnlineDeployment(
        name="demo", endpoint_name="tf-fake-00000011", model="azureml:m:1", instance_type="Standard_NC24ads_A100_v4",
        instance_count=1))
    for _ in range(3):  # reads do not advance an operation: only polls of its URL, or time
        assert ml.online_deployments.get(name="demo", endpoint_name="tf-fake-00000011").provisioning_state == "Creating"
    assert [d.provisioning_state for d in ml.online_deployments.list(endpoint_name="tf-fake-00000011")] == ["Creating"]
    fake.finish_operations()
    assert ml.online_deployments.get(name="demo", endpoint_name="tf-fake-00000011").provisioning_state == "Succeeded"


def test_a_deployment_set_to_fail_is_accepted_then_fails_and_stays_failed_until_deleted(fake, ml):
    from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint
    from azure.core.exceptions import HttpResponseError
    ml.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name="tf-fake-00000012", auth_mode="key")).result()
    deployment = ManagedOnlineDeployment(name="demo", endpoint_name="tf-fake-00000012", model="azureml:m:1",
                                         instance_type="Standard_NC24ads_A100_v4", instance_count=1)
    fake.fail_deployments = 1
    poller = ml.online_deployments.begin_create_or_update(deployment)  # accepted: 201
    with pytest.raises(HttpResponseError, match="ResourceNotReady: User container has crashed or terminated"):
        poller.result()
    assert ml.online_deployments.get(name="demo", endpoint_name="tf-fake-00000012").provisioning_state == "Failed"
    failed = [o for o in fake.operations.values() if o.kind == "deployments"]
    assert [o.status for o in failed] == ["Failed"]
    ml.online_deployments.begin_delete(name="demo", endpoint_name="tf-fake-00000012").result()  # the repair
    assert ("tf-fake-00000012", "demo") not in fake.deployments
    assert ml.online_deployments.begin_create_or_update(deployment).result().provisioning_state == "Succeeded"
    assert fake.fail_deployments == 0


def test_the_old_knob_still_refuses_a_deployment_up_front(fake, ml):
    from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint
    from azure.core.exceptions import HttpResponseError
    ml.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name="tf-fake-00000013", auth_mode="key")).result()
    fake.failing_deployments = 1
    with pytest.raises(HttpResponseError) as refused:
        ml.online_deployments.begin_create_or_update(ManagedOnlineDeployment(
            name="demo", endpoint_name="tf-fake-00000013", model="azureml:m:1", instance_type="Standard_NC24ads_A100_v4",
            instance_count=1))
    assert refused.value.status_code == 400 and not fake.deployments


def test_a_deployment_with_live_traffic_cannot_be_deleted(fake, http, ml):
    from azure.core.exceptions import HttpResponseError
    name = live_endpoint(fake, http)
    with pytest.raises(HttpResponseError) as refused:
        ml.online_deployments.begin_delete(name="demo", endpoint_name=name).result()
    assert refused.value.status_code == 400 and (name, "demo") in fake.deployments


def test_deleting_an_endpoint_through_the_sdk_waits_for_its_operation(fake, http, ml):
    name = live_endpoint(fake, http)
    fake.lro_polls = 2
    ml.online_endpoints.begin_delete(name=name).result()
    assert name not in fake.endpoints and name not in fake.region.names and len(fake.slept) == 2


def test_sticky_and_throttled_deletes_still_work(fake, http, ml):
    from azure.core.exceptions import HttpResponseError
    name = live_endpoint(fake, http)
    fake.sticky_deletes = True
    ml.online_endpoints.begin_delete(name=name).result()
    assert fake.endpoints[name]["properties"]["provisioningState"] == "Succeeded"  # the service lied
    fake.throttled_deletes = 1
    answer = http.arm("DELETE", f"{fake.scope}/onlineEndpoints/{name}")
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "7"
    with pytest.raises(HttpResponseError):
        fake.throttled_deletes = 50
        client(fake, retry_total=0).online_endpoints.begin_delete(name=name)


def test_a_job_can_be_cancelled(fake, http, ml):
    http.arm("PUT", f"{fake.scope}/jobs/ft-fake-0000aaaa", {"properties": {"jobType": "Pipeline", "tags": {}}})
    answer = http.arm("POST", f"{fake.scope}/jobs/ft-fake-0000aaaa/cancel")
    assert answer.status_code == 202 and "/mfeOperationResults/" in answer.headers["Location"]
    assert fake.jobs["ft-fake-0000aaaa"]["properties"]["status"] == "CancelRequested"
    fake.finish_operations()
    assert fake.jobs["ft-fake-0000aaaa"]["properties"]["status"] == "Canceled"
    http.arm("PUT", f"{fake.scope}/jobs/ft-fake-0000bbbb", {"properties": {"jobType": "Pipeline", "tags": {}}})
    ml.jobs.begin_cancel("ft-fake-0000bbbb").result()
    assert fake.jobs["ft-fake-0000bbbb"]["properties"]["status"] == "Canceled"


# --- permissions by scope --------------------------------------------------------------------------

def test_the_app_identity_holds_its_roles_on_the_workspace_only(fake, ml):
    from azure.core.exceptions import HttpResponseError
    assert fake.grants == [fake.scope]
    assert ml.workspaces.get(WORKSPACE).name == WORKSPACE
    assert ml.compute.get("gpu-cluster").size
    with pytest.raises(HttpResponseError) as refused:
        list(ml.compute.list_sizes())
    err = refused.value
    assert err.status_code == 403 and err.error.code == "AuthorizationFailed"
    oid = FakeCredential.OID
    assert err.error.message == (
        f"The client '{oid}' with object id '{oid}' does not have authorization to perform action "
        f"'{PROVIDER}/locations/vmSizes/read' over scope '/subscriptions/{SUBSCRIPTION}/providers/{PROVIDER}/"
        f"locations/{LOCATION}/vmSizes' or the scope is invalid. If access was recently granted, please refresh "
        f"your credentials.")
    fake.grant(f"/subscriptions/{SUBSCRIPTION}")
    assert {s.name for s in ml.compute.list_sizes()} >= {"Standard_NC24ads_A100_v4"}


def test_another_workspace_or_resource_group_is_refused(fake, http):
    other = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-other/providers/{PROVIDER}/workspaces/{WORKSPACE}"
    answer = http.arm("PUT", f"{other}/onlineEndpoints/tf-fake-00000020", endpoint_body())
    assert answer.status_code == 403
    assert f"'{PROVIDER}/workspaces/onlineEndpoints/write' over scope '{other}/onlineEndpoints/tf-fake-00000020'" \
        in answer.json()["error"]["message"]
    keys = http.arm("POST", f"{other}/onlineEndpoints/x/listKeys")
    assert f"'{PROVIDER}/workspaces/onlineEndpoints/listKeys/action'" in keys.json()["error"]["message"]
    assert http.arm("GET", f"{fake.scope}-two").status_code == 403  # a prefix of the name is not the scope


def test_the_public_registry_stays_readable(fake):
    registry = client(fake, registry_name="azureml")
    assert registry.models.get("Phi-4", label="latest").version == "8"
    assert registry.components.get("chat_completion_pipeline", label="latest").version == "0.0.82"


# --- endpoint names are unique per region ----------------------------------------------------------

def test_a_name_another_workspace_of_the_region_holds_is_refused(fake):
    from azure.ai.ml.entities import ManagedOnlineEndpoint
    from azure.core.exceptions import HttpResponseError
    region = FakeRegion()
    dev = FakeAzureML(REFERENCE / "azureml", region=region)
    prod = FakeAzureML(REFERENCE / "azureml", workspace="ws-other", region=region)
    assert dev.workspace_id != prod.workspace_id and prod.scope.endswith("/workspaces/ws-other")
    client(dev).online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name="tf-shared-1", auth_mode="key")).result()
    assert region.names == {"tf-shared-1": dev.scope}
    with pytest.raises(HttpResponseError) as taken:
        client(prod).online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name="tf-shared-1", auth_mode="key"))
    assert taken.value.status_code == 400 and taken.value.error.code == "UserError"
    assert "Endpoint name needs to be unique within a region" in taken.value.error.message
    assert not prod.endpoints
    client(dev).online_endpoints.begin_delete(name="tf-shared-1").result()  # released once deleted
    client(prod).online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name="tf-shared-1", auth_mode="key")).result()
    assert region.names == {"tf-shared-1": prod.scope}
    other_region = FakeAzureML(REFERENCE / "azureml", workspace="ws-west", region=FakeRegion("westus"))
    client(other_region).online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name="tf-shared-1", auth_mode="key")).result()


def test_a_scoring_host_reaches_the_workspace_that_owns_the_name():
    region = FakeRegion()
    dev = FakeAzureML(REFERENCE / "azureml", region=region)
    prod = FakeAzureML(REFERENCE / "azureml", workspace="ws-other", region=region)
    name = live_endpoint(prod, Http(prod), "tf-prod-1")
    answer = Http(dev).session.post(f"https://{name}.{LOCATION}.inference.ml.azure.com/score", json=SEED_BODY,
                                    headers={"Authorization": f"Bearer {prod.keys[name]}"})
    assert answer.status_code == 200 and [p for m, p, _ in prod.calls if p == "/score"]


# --- the registry never answers an archived version for label=latest ---------------------------------

def test_an_all_archived_model_has_no_latest_but_its_versions_can_be_read(fake):
    from azure.ai.ml.exceptions import ValidationException
    registry = client(fake, registry_name="azureml")
    for name in ("Phi-3-mini-4k-instruct", "Phi-3.5-mini-instruct"):
        with pytest.raises(ValidationException, match="does not exist in registry azureml"):
            registry.models.get(name, label="latest")
    pinned = registry.models._get("Phi-3-mini-4k-instruct", "15")
    assert pinned.properties["isArchived"] is True
    assert registry.models.get("Phi-3-mini-4k-instruct", version="15").version == "15"
    listed = [c for c in fake.calls if c[1].endswith("/models/Phi-3-mini-4k-instruct/versions")]
    assert listed  # the SDK asked the list (orderBy createdtime desc, top 1), not a pinned version


def test_the_list_view_type_decides_whether_archived_versions_are_listed(fake):
    http = Http(fake)
    from tests.azure_fake import REGISTRY_HOST, REGISTRY_SCOPE
    base = f"{REGISTRY_HOST}{REGISTRY_SCOPE}/models/Phi-3-mini-4k-instruct/versions"
    assert http.get(base).json()["value"] == []
    assert [v["name"] for v in http.get(base + "?listViewType=All").json()["value"]] == ["15"]
    assert [v["name"] for v in http.get(base + "?listViewType=ArchivedOnly").json()["value"]] == ["15"]
    assert [v["name"] for v in http.get(base.replace("Phi-3-mini-4k-instruct", "Phi-4")).json()["value"]] == ["8"]


# --- scoring like a managed online endpoint ----------------------------------------------------------

def invoke(ml, endpoint: str, body, tmp_path, deployment: str | None = "demo"):
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body))
    return ml.online_endpoints.invoke(endpoint_name=endpoint, request_file=str(request), deployment_name=deployment)


def test_the_seed_body_is_answered(fake, http, ml, tmp_path):
    name = live_endpoint(fake, http)
    assert json.loads(invoke(ml, name, SEED_BODY, tmp_path)) == {"output": fake.reply}
    assert json.loads(invoke(ml, name, SEED_BODY, tmp_path, deployment=None)) == {"output": fake.reply}


def test_a_wrong_or_missing_key_is_401_in_plain_text(fake, http, ml, tmp_path):
    from azure.ai.ml.exceptions import MlException
    name = live_endpoint(fake, http)
    wrong, missing = http.score(name, SEED_BODY, key="stale"), http.score(name, SEED_BODY, key=None)
    assert (wrong.status_code, wrong.text) == (401, "key_auth_access_denied")
    assert (missing.status_code, missing.text) == (401, "key_auth_bad_header_forbidden")
    assert http.score(name, SEED_BODY, key=fake.keys[name][::-1]).status_code == 200  # the secondary key works
    fake.keys[name] = "rotated"  # the SDK fetched the key before; the endpoint now refuses it
    ml.online_endpoints._get_online_credentials = lambda name, auth_mode=None: type(
        "Keys", (), {"primary_key": "stale"})()
    with pytest.raises(MlException, match="key_auth_access_denied"):  # not JSON: the SDK cannot map it to 401
        invoke(ml, name, SEED_BODY, tmp_path)


def test_a_slow_answer_is_408_upstream_request_timeout(fake, http, ml, tmp_path):
    from azure.ai.ml.exceptions import MlException
    name = live_endpoint(fake, http)
    fake.slow_answers = 2
    raw = http.score(name, SEED_BODY)
    assert raw.status_code == 408 and raw.text.startswith("upstream request timeout\nPlease check this guide")
    with pytest.raises(MlException, match="upstream request timeout"):  # a text body: MlException, once (POST: no retry)
        invoke(ml, name, SEED_BODY, tmp_path)
    assert fake.slow_answers == 0 and json.loads(invoke(ml, name, SEED_BODY, tmp_path))["output"]


def test_a_container_error_is_424_with_a_body_that_is_not_json(fake, http, ml, tmp_path):
    from azure.ai.ml.exceptions import MlException
    name = live_endpoint(fake, http)
    fake.container_errors = 2
    raw = http.score(name, SEED_BODY)
    assert raw.status_code == 424 and raw.headers["ms-azureml-model-error-statuscode"] == "500"
    with pytest.raises(ValueError):
        json.loads(raw.text)
    with pytest.raises(MlException, match="An unexpected error occurred in scoring script"):
        invoke(ml, name, SEED_BODY, tmp_path)
    assert fake.container_errors == 0


@pytest.mark.parametrize("body", [
    {"input_data": {"input_string": SEED_BODY["input_data"]["input_string"][0], "parameters": {}}, "params": {}},  # flat
    {"input_data": {"input_string": [], "parameters": {}}, "params": {}},
    {"input_data": {"input_string": [[{"role": "user"}]], "parameters": {}}, "params": {}},
    {"input_string": SEED_BODY["input_data"]["input_string"]},
    ["not", "an", "object"],
])
def test_only_the_seed_body_shape_is_accepted(fake, http, body):
    name = live_endpoint(fake, http)
    answer = http.score(name, body)
    assert answer.status_code == 424 and "An unexpected error occurred in scoring script" in answer.text
    assert http.score(name, data=b"{not json", headers={"Content-Type": "application/json"}).status_code == 424


def test_routing_by_header_and_by_traffic(fake, http, ml, tmp_path):
    from azure.ai.ml.exceptions import ValidationException
    name = live_endpoint(fake, http)
    assert http.score(name, SEED_BODY, headers={"azureml-model-deployment": "green"}).status_code == 404
    with pytest.raises(ValidationException):  # the SDK checks the deployment name before it posts
        invoke(ml, name, SEED_BODY, tmp_path, deployment="green")
    http.arm("PUT", f"{fake.scope}/onlineEndpoints/{name}/deployments/green", deployment_body(fake))  # Creating
    creating = http.score(name, SEED_BODY, headers={"azureml-model-deployment": "green"})
    assert creating.status_code == 503 and creating.headers["azureml-model-deployment"] == "green"
    assert http.score(name, SEED_BODY).headers["azureml-model-deployment"] == "demo"  # traffic: demo 100
    http.arm("PUT", f"{fake.scope}/onlineEndpoints/{name}", endpoint_body({"demo": 0}))
    fake.finish_operations()
    assert http.score(name, SEED_BODY).status_code == 404  # no deployment with positive weight


def test_a_failed_deployment_cannot_answer(fake, http):
    ep = f"{fake.scope}/onlineEndpoints/tf-fake-00000030"
    http.arm("PUT", ep, endpoint_body())
    fake.fail_deployments = 1
    http.arm("PUT", f"{ep}/deployments/demo", deployment_body(fake))
    fake.finish_operations()
    assert fake.deployments[("tf-fake-00000030", "demo")]["properties"]["provisioningState"] == "Failed"
    answer = http.score("tf-fake-00000030", SEED_BODY, headers={"azureml-model-deployment": "demo"})
    assert answer.status_code == 503


# --- model versions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("version, status", [("1", 201), ("2147483647", 201), ("0", 400), ("2147483648", 400),
                                             ("4294967295", 400), ("1.0", 400), ("01", 400), ("abc", 400)])
def test_model_versions_are_positive_32_bit_integers(fake, http, version, status):
    body = {"properties": {"modelType": "mlflow_model", "modelUri": "azureml://jobs/j/outputs/o", "tags": {}}}
    answer = http.arm("PUT", f"{fake.scope}/models/m/versions/{version}", body)
    assert answer.status_code == status
    if status == 400:
        assert answer.json()["error"]["code"] == "UserError" and ("m", version) not in fake.models


def test_the_sdk_gets_the_refusal_of_a_version_beyond_32_bits(fake, ml):
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model
    from azure.core.exceptions import HttpResponseError
    with pytest.raises(HttpResponseError) as refused:
        ml.models.create_or_update(Model(path="azureml://jobs/j/outputs/o", type=AssetTypes.MLFLOW_MODEL, name="m",
                                         version=str(2**32 - 1)))
    assert refused.value.status_code == 400


def test_defaults_and_instance_fields(fake):
    assert (fake.workspace, fake.resource_group, fake.subscription, fake.location) == \
        (WORKSPACE, RESOURCE_GROUP, SUBSCRIPTION, LOCATION)
    assert fake.lro_polls == 2 and fake.fail_deployments == 0 and fake.slow_answers == fake.container_errors == 0
    assert fake.region.workspaces[fake.scope] is fake
