"""One contract for the ML interface, run against both backends: the local workspace (real MLflow,
real training subprocess, real scoring server) and the Azure backend (real azure-ai-ml over
azure-core's RequestsTransport, with Azure ML answered at the HTTP edge by tests/azure_fake.py).

Same behaviour for submit, get_job, register, deploy, invoke, list and delete, including
"already exists" and "not found". The only backend-specific step is how a job finishes: the local
one trains; the fake Azure ML is told the run completed, as Azure ML would report it.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from local import sampledata
from shared.ml.base import AlreadyExists, HasTraffic, JobSpec, MLError, NotFound
from shared.scoring import reply_text, request_body
from tests.conftest import REFERENCE, wait_for

TAGS = {"managed-by": "tuneflow", "flow-id": "1d5f5ba0-8598-5118-9f6d-5a45f4408403", "dataset": "contract"}
ENDPOINT_TAGS = {**TAGS, "expires-at": "2026-11-26T03:00:00Z"}


class LocalDriver:
    name = "local"

    def __init__(self, workspace, tmp_path):
        from shared import storage
        self.backend = workspace
        rows = list(sampledata.rows(40, seed=2))
        for split, part in (("train", rows[:32]), ("test", rows[32:])):
            data = "".join(json.dumps(r) + "\n" for r in part).encode()
            storage.container("prepared").upload_blob(f"contract/0123456789abcdef/{split}.jsonl", data, overwrite=True)

    def spec(self, name: str, with_data: bool = True) -> JobSpec:
        version = "0123456789abcdef" if with_data else "ffffffffffffffff"
        return JobSpec(name=name, experiment="chat_completion_phi-3-tiny", display_name=name, base_model="",
                       train_uri=f"prepared/contract/{version}/train.jsonl",
                       test_uri=f"prepared/contract/{version}/test.jsonl", params={}, tags=TAGS)

    def finish(self, job: str, status: str = "Completed") -> None:
        wait_for(lambda: self.backend.get_job(job).status == status, 240, f"job {job} to be {status}")


class AzureDriver:
    name = "azure"

    def __init__(self, region=None, workspace: str = ""):
        """`region` (a FakeRegion) is shared by the workspaces of one Azure region."""
        from shared.ml.azure import AzureConfig, AzureWorkspace
        from tests.azure_fake import RESOURCE_GROUP, SUBSCRIPTION, WORKSPACE, FakeAzureML, FakeCredential
        workspace = workspace or WORKSPACE
        self.fake = FakeAzureML(REFERENCE / "azureml", workspace=workspace, region=region)
        config = AzureConfig(SUBSCRIPTION, RESOURCE_GROUP, workspace, registry="azureml", base_model="Phi-4",
                             component_version="", compute="serverless", finetune_sku="", inference_sku="",
                             inference_override=False, datastore="tuneflow_prepared")
        self.backend = AzureWorkspace(config, credential=FakeCredential(), transport=self.fake.transport(),
                                      now=lambda: datetime(2026, 11, 26, tzinfo=timezone.utc),
                                      sleep=lambda s: self.fake.finish_operations())  # time passes while it waits

    def spec(self, name: str, with_data: bool = True) -> JobSpec:
        return JobSpec(name=name, experiment="chat_completion_Phi-4", display_name=name, base_model="Phi-4",
                       train_uri="prepared/contract/0123456789abcdef/train.jsonl",
                       test_uri="prepared/contract/0123456789abcdef/test.jsonl", params={"num_train_epochs": 1},
                       tags=TAGS)

    def finish(self, job: str, status: str = "Completed") -> None:
        self.fake.finish_job(job, status)


@pytest.fixture(params=["local", "azure"])
def driver(request, tmp_path):
    if request.param == "local":
        return LocalDriver(request.getfixturevalue("workspace"), tmp_path)
    return AzureDriver()


def test_lookups_of_missing_things_raise_not_found(driver):
    ml = driver.backend
    for call in (lambda: ml.get_job("ft-missing-00000000"), lambda: ml.get_model("missing-model", "1"),
                 lambda: ml.get_endpoint("tf-missing-00000000"), lambda: ml.delete_endpoint("tf-missing-00000000"),
                 lambda: ml.invoke("tf-missing-00000000", request_body([{"role": "user", "content": "hi"}]))):
        with pytest.raises(NotFound):
            call()
    assert ml.list_endpoints() == []


def test_submit_register_deploy_invoke_list_delete(driver):
    ml = driver.backend
    spec = driver.spec("ft-contract-11111111")
    job = ml.submit(spec)
    assert job.name == spec.name and job.status in ("NotStarted", "Queued", "Preparing", "Running", "Completed")
    with pytest.raises(AlreadyExists):
        ml.submit(spec)  # a redelivered request finds the job

    driver.finish(spec.name)
    done = ml.get_job(spec.name)
    assert done.status == "Completed" and done.tags["flow-id"] == TAGS["flow-id"] and done.output_uri

    model = ml.register_model("contract-model", "4242", spec.name, {**TAGS, "source-job": spec.name})
    assert (model.name, model.version) == ("contract-model", "4242")
    with pytest.raises(AlreadyExists):
        ml.register_model("contract-model", "4242", spec.name, TAGS)
    assert ml.get_model("contract-model", "4242").tags["source-job"] == spec.name

    created = ml.create_endpoint("tf-contract-2a2b2c2d", ENDPOINT_TAGS)
    assert created.provisioning_state == "Succeeded" and created.deployments == () and created.scoring_uri
    with pytest.raises(AlreadyExists):
        ml.create_endpoint("tf-contract-2a2b2c2d", ENDPOINT_TAGS)
    deployment = ml.create_deployment("tf-contract-2a2b2c2d", "v-4242", model, {"flow-id": TAGS["flow-id"]})
    assert (deployment.provisioning_state, deployment.traffic) == ("Succeeded", 0)  # created at 0 %
    assert deployment.tags["flow-id"] == TAGS["flow-id"] and deployment.model == "contract-model:4242"
    assert ml.create_deployment("tf-contract-2a2b2c2d", "v-4242", model, {}).name == "v-4242"  # a repeat is harmless
    with pytest.raises(MLError):  # live traffic must sum to 100
        ml.set_traffic("tf-contract-2a2b2c2d", {"v-4242": 50}, {})
    endpoint = ml.set_traffic("tf-contract-2a2b2c2d", {"v-4242": 100}, {},
                              {**ENDPOINT_TAGS, "traffic-changed-at": "2026-11-26T00:00:00Z"})
    assert endpoint.provisioning_state == "Succeeded" and endpoint.tags["expires-at"] == ENDPOINT_TAGS["expires-at"]
    assert endpoint.traffic == {"v-4242": 100} and endpoint.tags["traffic-changed-at"] == "2026-11-26T00:00:00Z"
    assert endpoint.scoring_uri == created.scoring_uri
    with pytest.raises(HasTraffic):
        ml.delete_deployment("tf-contract-2a2b2c2d", "v-4242")

    answer = ml.invoke("tf-contract-2a2b2c2d", request_body([{"role": "user", "content": "Explain photosynthesis."}]))
    # the seed's response shape; a 0.6 M-parameter local model may well answer with empty text
    assert isinstance(answer, dict) and isinstance(answer.get("output"), str) and isinstance(reply_text(answer), str)
    assert isinstance(ml.invoke("tf-contract-2a2b2c2d", request_body([{"role": "user", "content": "Hi"}]),
                                deployment="v-4242"), dict)  # straight to one deployment
    assert [e.name for e in ml.list_endpoints()] == ["tf-contract-2a2b2c2d"]

    ml.delete_endpoint("tf-contract-2a2b2c2d")
    with pytest.raises(NotFound):
        ml.get_endpoint("tf-contract-2a2b2c2d")
    with pytest.raises(NotFound):
        ml.delete_endpoint("tf-contract-2a2b2c2d")
    assert ml.list_endpoints() == []


def test_a_failed_job_reports_failed_and_cannot_be_registered(driver):
    ml = driver.backend
    spec = driver.spec("ft-contract-33333333", with_data=False)
    ml.submit(spec)
    driver.finish(spec.name, "Failed")
    job = ml.get_job(spec.name)
    assert job.status == "Failed" and job.error
    with pytest.raises(MLError):
        ml.register_model("contract-model", "1", spec.name, TAGS)
