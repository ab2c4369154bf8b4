"""What would break on first contact with Azure (issue 11), each reproduced against the strict fake
(tests/azure_fake.py: long-running operations over several polls, permissions by scope, endpoint
names unique per region, archived registry models hidden from `label=latest`, scoring errors as
managed endpoints send them), then the whole flow through the Azure backend.

azure-ai-ml, azure-core and their polling run for real; only Azure's HTTP endpoints are the fake.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone

import pytest

from shared import naming
from shared.compute import ComputeUnusable
from shared.contracts import TAG_BASE_MODEL
from shared.ml.base import MLError, ModelRef, NameTaken, NotConfigured, NotReady, ServiceTimeout
from shared.reaper import ReaperPolicy, plan
from shared.scoring import request_body
from tests.serving import serve
from tests.test_ml_contract import AzureDriver

NOW = datetime(2026, 11, 26, tzinfo=timezone.utc)
CONVERSATION = [{"role": "user", "content": "Explain photosynthesis."}]


def driver(polls: int = 3, **config) -> AzureDriver:
    d = AzureDriver()
    d.fake.lro_polls = polls
    d.backend.config = dataclasses.replace(d.backend.config, **config)
    d.backend._sleep = lambda s: d.fake.finish_operations()  # time passes while deploy waits
    return d


def deployed(d: AzureDriver, endpoint: str = "tf-azure-00000001", model: ModelRef = ModelRef("m", "1")):
    return serve(d.backend, endpoint, model, {"managed-by": "tuneflow", "expires-at": "2026-11-26T03:00:00Z"})


# 1. No subscription-scope call at run time ---------------------------------------------------------

def test_submit_makes_no_subscription_scope_call_the_app_identity_is_refused():
    d = driver()
    d.backend.submit(d.spec("ft-azure-0000aaaa"))
    inputs = d.fake.bodies("PUT", "/jobs/ft-azure-0000aaaa")[0]["properties"]["jobs"]["chat_completion_pipeline"]["inputs"]
    assert inputs["number_of_gpu_to_use_finetuning"]["value"] == "1"  # Standard_NC24ads_A100_v4: one A100
    assert not [p for _m, p, _b in d.fake.calls if p.endswith("/vmSizes")]
    from azure.core.exceptions import HttpResponseError
    with pytest.raises(HttpResponseError) as refused:  # what the seed's list_sizes() gets with the app's roles
        list(d.backend.ws.compute.list_sizes())
    assert refused.value.status_code == 403


@pytest.mark.parametrize("compute, size, gpus", [("serverless", "Standard_NC96ads_A100_v4", "4"),
                                                 ("gpu-cluster", None, "1")])
def test_gpu_counts_come_from_the_size_table(compute, size, gpus):
    d = driver(compute=compute, finetune_sku=size or "")
    d.backend.submit(d.spec("ft-azure-0000bbbb"))
    inputs = d.fake.bodies("PUT", "/jobs/ft-azure-0000bbbb")[0]["properties"]["jobs"]["chat_completion_pipeline"]["inputs"]
    assert inputs["number_of_gpu_to_use_finetuning"]["value"] == gpus


def test_a_size_the_table_lacks_names_the_setting_that_gives_its_gpus():
    from shared.compute import check_finetune, gpu_counts
    from shared.modelspec import ModelFacts
    no_list = ModelFacts.from_metadata("custom", "1")
    with pytest.raises(ComputeUnusable, match="TUNEFLOW_AML_FINETUNE_GPUS"):
        check_finetune(no_list, "new-gpus", "Standard_NX99_future", "Succeeded", gpu_counts())
    assert check_finetune(no_list, "new-gpus", "Standard_NX99_future", "Succeeded",
                          gpu_counts(2, "Standard_NX99_future")).gpus == 2


def test_the_operator_can_state_the_gpu_count():
    d = driver(finetune_gpus=2)
    d.backend.submit(d.spec("ft-azure-0000cccc"))
    inputs = d.fake.bodies("PUT", "/jobs/ft-azure-0000cccc")[0]["properties"]["jobs"]["chat_completion_pipeline"]["inputs"]
    assert inputs["number_of_gpu_to_use_finetuning"]["value"] == "2"


# 2. A deployment still being created keeps its endpoint -------------------------------------------

def _leave_deployment_creating(d: AzureDriver, endpoint: str) -> None:
    """An endpoint whose deployment an earlier attempt started and stopped watching (a crash, a
    timeout): Azure goes on creating it, for 20+ minutes with a large model."""
    from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint
    ws = d.backend.ws
    ws.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(
        name=endpoint, auth_mode="key", tags={"managed-by": "tuneflow", "expires-at": "2026-11-26T03:00:00Z"})).result()
    ws.online_deployments.begin_create_or_update(ManagedOnlineDeployment(  # never polled
        name="v-1", endpoint_name=endpoint, model="azureml:m:1", instance_type="Standard_NC24ads_A100_v4",
        instance_count=1))


def test_a_deployment_still_creating_is_listed_and_keeps_its_endpoint_past_the_grace():
    d = driver()
    _leave_deployment_creating(d, "tf-azure-00000002")
    [endpoint] = d.backend.list_endpoints()
    assert [(x.name, x.provisioning_state, x.traffic) for x in endpoint.deployments] == [("v-1", "Creating", 0)]
    decisions, _ = plan([endpoint], NOW + timedelta(days=2), ReaperPolicy(grace=timedelta(minutes=30)))
    assert (decisions[0].action, decisions[0].rule) == ("keep", "in-transition")


# 3. Redelivery repairs: traffic only to a Succeeded deployment ---------------------------------------

def test_a_failed_deployment_stays_failed_gets_no_traffic_and_is_created_again_once_deleted():
    d = driver()
    d.fake.fail_deployments = 1
    with pytest.raises(MLError, match="Liveness probe failed"):
        deployed(d)
    assert d.fake.deployments[("tf-azure-00000001", "v-1")]["properties"]["provisioningState"] == "Failed"
    assert not (d.fake.endpoints["tf-azure-00000001"]["properties"].get("traffic") or {}).get("v-1")  # no traffic
    with pytest.raises(MLError, match="not Succeeded"):  # never silently reused: the deploy stage deletes it
        d.backend.create_deployment("tf-azure-00000001", "v-1", ModelRef("m", "1"), {})
    with pytest.raises(MLError):  # ARM refuses traffic to a deployment that is not Succeeded
        d.backend.set_traffic("tf-azure-00000001", {"v-1": 100}, {})
    d.backend.delete_deployment("tf-azure-00000001", "v-1")
    done = deployed(d)
    assert [(x.name, x.provisioning_state, x.traffic) for x in done.deployments] == [("v-1", "Succeeded", 100)]
    assert [m for m, p, _b in d.fake.calls if p.endswith("/deployments/v-1") and m != "GET"] == ["PUT", "DELETE", "PUT"]


def test_a_deployment_left_creating_is_waited_for_then_given_the_traffic():
    d = driver()
    _leave_deployment_creating(d, "tf-azure-00000001")
    before = len(d.fake.calls)
    done = deployed(d)  # the backend polls; the fake finishes the operation as time passes
    assert [(x.provisioning_state, x.traffic) for x in done.deployments] == [("Succeeded", 100)]
    writes = [(m, p) for m, p, _b in d.fake.calls[before:] if m in ("PUT", "DELETE")]
    assert writes == [("PUT", writes[0][1])] and writes[0][1].endswith("/onlineEndpoints/tf-azure-00000001")


def test_no_traffic_is_routed_while_the_deployment_is_not_succeeded():
    d = driver()
    _leave_deployment_creating(d, "tf-azure-00000001")
    d.backend._wait_s, d.backend._sleep = 0, (lambda s: None)  # still Creating when deploy gives up waiting
    with pytest.raises(NotReady, match="still Creating"):
        deployed(d)
    assert not d.fake.endpoints["tf-azure-00000001"]["properties"].get("traffic")
    assert all(not b["properties"].get("traffic") for b in d.fake.bodies("PUT", "/onlineEndpoints/tf-azure-00000001"))


# 4. Exceptions the backend must translate -------------------------------------------------------

def test_an_archived_base_model_gets_the_clear_error_not_the_sdks():
    from shared.modelspec import BaseModelUnusable
    d = driver(base_model="Phi-3-mini-4k-instruct")
    with pytest.raises(BaseModelUnusable, match="no active version.*TUNEFLOW_BASE_MODEL=Phi-4"):
        d.backend.submit(dataclasses.replace(d.spec("ft-azure-0000dddd"), base_model="Phi-3-mini-4k-instruct"))


def test_a_model_tuned_from_a_now_archived_base_model_still_deploys_on_its_sizes():
    d = driver(base_model="Phi-3-mini-4k-instruct")
    version = d.fake.registry_models["Phi-3-mini-4k-instruct"][-1]["version"]
    base = f"azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/{version}"
    done = deployed(d, model=ModelRef("m", "1", {TAG_BASE_MODEL: base}))
    assert done.deployments[0].provisioning_state == "Succeeded"


def test_a_slow_first_answer_is_a_timeout_worth_retrying():
    d = driver()
    deployed(d)
    d.fake.slow_answers = 1
    with pytest.raises(ServiceTimeout):
        d.backend.invoke("tf-azure-00000001", request_body(CONVERSATION))
    assert d.backend.invoke("tf-azure-00000001", request_body(CONVERSATION))["output"]


def test_a_container_error_with_a_plain_text_body_is_one_line():
    d = driver()
    deployed(d)
    d.fake.container_errors = 1
    with pytest.raises(MLError, match="scoring container failed") as failed:
        d.backend.invoke("tf-azure-00000001", request_body(CONVERSATION))
    assert not isinstance(failed.value, NotConfigured) and "\n" not in str(failed.value)


def test_a_key_the_endpoint_refuses_is_not_reported_as_a_sign_in_failure():
    d = driver()
    deployed(d)
    original = d.backend.ws.online_endpoints._get_online_credentials

    def stale_key(name, auth_mode=None):
        keys = original(name, auth_mode)
        keys.primary_key = "the-key-before-rotation"
        return keys

    d.backend.ws.online_endpoints._get_online_credentials = stale_key
    with pytest.raises(MLError, match="refused its key") as refused:
        d.backend.invoke("tf-azure-00000001", request_body(CONVERSATION))
    assert not isinstance(refused.value, NotConfigured)


# 5. Endpoint names unique per region -----------------------------------------------------------

def test_two_workspaces_in_one_region_deploy_the_same_model_version_side_by_side():
    from tests.azure_fake import FakeRegion
    region = FakeRegion()
    dev, prod = AzureDriver(region=region), AzureDriver(region=region, workspace="ws-tuneflow-prod")
    names = [naming.endpoint_name("ultrachat", d.backend.workspace_id) for d in (dev, prod)]
    assert names[0] != names[1]
    for d, name in zip((dev, prod), names):
        d.backend._sleep = lambda s: None
        deployed(d, name)
    with pytest.raises(NameTaken, match=f"endpoint name {names[0]} is already used in this Azure region"):
        deployed(prod, names[0])


# 6. Model versions Azure accepts ---------------------------------------------------------------

def test_derived_model_versions_are_accepted_by_azure_ml():
    d = driver()
    d.backend.submit(d.spec("ft-azure-0000eeee"))
    d.finish("ft-azure-0000eeee")
    for job in ("ft-azure-0000eeee", "ft-ultrachat-ffffffff", "ft-x-7fffffff"):
        d.backend.register_model("Phi-4-contract", naming.model_version(job), "ft-azure-0000eeee", {})
    with pytest.raises(MLError):
        d.backend.register_model("Phi-4-contract", str(2**32 - 1), "ft-azure-0000eeee", {})


# The whole flow through the Azure backend -------------------------------------------------------

@pytest.fixture
def azure_flow(storage_env, monkeypatch):
    """The app's handlers, in order, on real Azurite storage and the strict Azure ML fake."""
    monkeypatch.setenv("TUNEFLOW_ML_BACKEND", "azure")
    monkeypatch.setenv("TUNEFLOW_ENDPOINT_TTL", "2h")
    return driver(polls=3)


def _drop_and_prepare(name: str):
    from local import sampledata
    from shared import storage
    from shared.arrival import handle_dataset_blob
    rows = "".join(json.dumps(r) + "\n" for r in sampledata.rows(60, seed=4)).encode()
    blob = storage.container("datasets").get_blob_client(f"{name}/train.jsonl")
    blob.upload_blob(rows, overwrite=True)
    return handle_dataset_blob(blob)


def _completion_event(job) -> dict:
    """RunCompleted as Azure ML publishes it (the stored reference), for this job."""
    from tests.conftest import reference_events
    event = reference_events("ml-pipeline-run-completed.eventgrid.json")[0]
    event["data"]["runId"] = job.name
    event["data"]["runTags"] = dict(job.tags)
    return event


def _run_flow(d: AzureDriver, dataset: str, deliveries_before_success: int = 0):
    from shared import flows, storage
    from shared.deployment import handle_deploy
    from shared.events import decide, normalize
    from shared.finetune import handle_request
    from shared.registration import handle_decision
    prepared, flow_log = storage.container("prepared"), storage.container("flows")
    request = _drop_and_prepare(dataset)
    job = handle_request(request, d.backend, prepared, flow_log)
    d.fake.finish_job(job.name)
    deploy = handle_decision(decide(normalize(_completion_event(d.backend.get_job(job.name)))), d.backend, flow_log)
    for _ in range(deliveries_before_success):  # Service Bus redelivers after the function raised
        with pytest.raises(MLError):
            handle_deploy(deploy, d.backend, prepared, flow_log, sleep=lambda s: None)
    endpoint = handle_deploy(deploy, d.backend, prepared, flow_log, sleep=lambda s: None)
    stages = {r["stage"] for r in flows.read_all(flow_log) if r["flow_id"] == request.flow_id}
    return request, deploy, endpoint, stages


def _reap_after_expiry(d: AzureDriver, endpoint):
    from shared import storage
    from shared.reaper import reap
    from shared.ttl import parse_expires_at
    later = parse_expires_at(endpoint.tags["expires-at"]) + timedelta(minutes=1)
    return reap(d.backend, later, ReaperPolicy(), flow_log=storage.container("flows"),
                state=storage.container("reaper"), sleep=lambda s: d.fake.finish_operations())


def test_the_whole_flow_through_the_azure_backend_with_operations_that_take_several_polls(azure_flow):
    d = azure_flow
    request, deploy, endpoint, stages = _run_flow(d, "azure-e2e")
    assert {"prepared", "submitted", "registered", "deployed", "smoke-tested"} <= stages
    assert 1 <= int(deploy.model_version) <= 2**31 - 1
    assert endpoint.name == naming.endpoint_name(deploy.dataset, d.backend.workspace_id)
    assert [(x.provisioning_state, x.traffic) for x in endpoint.deployments] == [("Succeeded", 100)]
    assert d.fake.slept, "long-running operations answered at once: the fake is not polling like ARM"
    score = [b for m, p, b in d.fake.calls if m == "POST" and p == "/score"]
    assert score and isinstance(score[-1]["input_data"]["input_string"][0], list)  # the seed's [conversation]
    run = _reap_after_expiry(d, endpoint)
    assert [(x.endpoint, x.rule) for x in run.decisions] == [(endpoint.name, "expired")]
    assert d.fake.endpoints == {}


def test_a_deployment_that_fails_once_is_repaired_by_redelivery(azure_flow):
    d = azure_flow
    d.fake.fail_deployments = 1
    _request, _deploy, endpoint, stages = _run_flow(d, "azure-e2e-repair", deliveries_before_success=1)
    assert {"deployed", "smoke-tested"} <= stages and "smoke-failed" not in stages
    assert [(x.provisioning_state, x.traffic) for x in endpoint.deployments] == [("Succeeded", 100)]
    run = _reap_after_expiry(d, endpoint)
    assert [x.rule for x in run.decisions] == ["expired"] and d.fake.endpoints == {}


def test_a_call_straight_to_one_deployment_does_not_stick_to_the_calls_after_it():
    """azure-ai-ml's own invoke keeps the last `azureml-model-deployment` header in a class-level dict: after
    a smoke test of v-2, every call in the process went to v-2, traffic or not (and failed once v-2 was gone)."""
    d = driver()
    deployed(d)
    d.backend.create_deployment("tf-azure-00000001", "v-2", ModelRef("m", "2"), {})
    d.backend.invoke("tf-azure-00000001", request_body(CONVERSATION), deployment="v-2")
    d.backend.invoke("tf-azure-00000001", request_body(CONVERSATION))
    sent = [h.get("azureml-model-deployment") for h in d.fake.score_headers]
    assert sent == ["v-2", None]
    d.backend.delete_deployment("tf-azure-00000001", "v-2")
    assert d.backend.invoke("tf-azure-00000001", request_body(CONVERSATION))["output"]  # the live split: v-1


def test_too_many_pending_requests_is_worth_retrying():
    """A managed deployment answers 429 once more than 2 x max_concurrent_requests_per_instance (1 by default)
    x instances are in flight: a smoke probe beside mirrored or live traffic must retry, not fail the rollout."""
    from shared.ml.base import Unavailable
    d = driver()
    deployed(d)
    d.fake.busy_answers = 1
    with pytest.raises(Unavailable, match="too many pending requests"):
        d.backend.invoke("tf-azure-00000001", request_body(CONVERSATION), deployment="v-1")
    assert d.backend.invoke("tf-azure-00000001", request_body(CONVERSATION), deployment="v-1")["output"]
