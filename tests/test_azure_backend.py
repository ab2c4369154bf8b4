"""What the Azure backend sends to Azure ML, checked at the HTTP edge (tests/azure_fake.py): the
pipeline job as the seed submits it, the registered model, the key-protected endpoint and its
deployment, and the one-line errors that say what to change."""

from __future__ import annotations

import dataclasses

import pytest

from shared.compute import ComputeUnusable
from shared.ml.base import AlreadyExists, ModelRef, NotConfigured, NotFound
from shared.modelspec import BaseModelUnusable
from tests.test_ml_contract import AzureDriver
from tests.serving import serve

REGISTRY_COMPONENT = "azureml://registries/azureml/components/chat_completion_pipeline/versions/{}"


def driver(**config) -> AzureDriver:
    d = AzureDriver()
    d.backend.config = dataclasses.replace(d.backend.config, **config)
    return d


def submitted(d: AzureDriver, name: str = "ft-azure-0000aaaa", **spec) -> dict:
    d.backend.submit(dataclasses.replace(d.spec(name), **spec))
    return d.fake.bodies("PUT", f"/jobs/{name}")[0]["properties"]


def test_the_pipeline_job_is_the_seeds_with_a_deterministic_name_and_our_tags():
    d = driver()
    job = submitted(d)
    node = job["jobs"]["chat_completion_pipeline"]
    assert job["jobType"] == "Pipeline" and job["experimentName"] == "chat_completion_Phi-4"
    assert job["displayName"] == "Phi-4-ultrachat-bs1-cosine-ds3-lora-save_limit1-seqlen-1"
    assert job["settings"]["force_rerun"] is True and job["settings"]["continue_on_step_failure"] is False
    assert job["tags"]["managed-by"] == "tuneflow" and job["tags"]["flow-id"]
    assert job["outputs"]["trained_model"]["jobOutputType"] == "mlflow_model"
    assert node["outputs"]["mlflow_model_folder"]["value"] == "${{parent.outputs.trained_model}}"
    assert node["componentId"] == REGISTRY_COMPONENT.format("0.0.82")  # latest
    inputs = node["inputs"]
    assert inputs["mlflow_model_path"] == {"uri": "azureml://registries/azureml/models/Phi-4/versions/8",
                                           "job_input_type": "mlflow_model"}
    assert inputs["train_file_path"]["uri"] == \
        "azureml://datastores/tuneflow_prepared/paths/contract/0123456789abcdef/train.jsonl"
    assert inputs["compute_finetune"]["value"] == "serverless"
    assert inputs["instance_type_finetune"]["value"] == "Standard_NC24ads_A100_v4"  # Phi-4's first allowed size
    assert inputs["deepspeed_stage"]["value"] == "3" and inputs["precision"]["value"] == "16"  # model defaults, as strings
    assert inputs["num_train_epochs"]["value"] == "1"  # the request's override wins


def test_a_pinned_component_version_is_used():
    d = driver(component_version="0.0.57")
    node = submitted(d)["jobs"]["chat_completion_pipeline"]
    assert node["componentId"] == REGISTRY_COMPONENT.format("0.0.57")


def test_a_missing_component_version_names_the_setting():
    with pytest.raises(NotFound, match="TUNEFLOW_AML_COMPONENT_VERSION"):
        submitted(driver(component_version="9.9.9"))


def test_a_cluster_is_checked_and_named_for_every_step():
    d = driver(compute="gpu-cluster")
    inputs = submitted(d)["jobs"]["chat_completion_pipeline"]["inputs"]
    assert {inputs[k]["value"] for k in ("compute_model_import", "compute_preprocess", "compute_finetune",
                                         "compute_model_evaluation")} == {"gpu-cluster"}
    assert inputs["number_of_gpu_to_use_finetuning"]["value"] == "1"  # from the region's size list

    d.fake.add_compute("broken", "Standard_NC24ads_A100_v4", state="Failed")
    with pytest.raises(ComputeUnusable, match="provisioning state Failed"):
        submitted(_with_compute(d, "broken"), "ft-azure-0000bbbb")
    d.fake.add_compute("old-gpus", "Standard_NC6s_v3")
    with pytest.raises(ComputeUnusable, match="Phi-4 cannot be fine-tuned on"):
        submitted(_with_compute(d, "old-gpus"), "ft-azure-0000cccc")
    with pytest.raises(NotFound, match="TUNEFLOW_AML_COMPUTE"):
        submitted(_with_compute(d, "no-such-cluster"), "ft-azure-0000dddd")
    assert [n for n in d.fake.jobs] == ["ft-azure-0000aaaa"]  # refused jobs were never created


def _with_compute(d: AzureDriver, compute: str) -> AzureDriver:
    d.backend.config = dataclasses.replace(d.backend.config, compute=compute)
    return d


@pytest.mark.parametrize("model", ["Phi-3-mini-4k-instruct", "Phi-3.5-mini-instruct"])
def test_the_seeds_retired_models_are_refused_naming_an_active_one(model):
    d = driver(base_model=model)
    with pytest.raises(BaseModelUnusable, match="TUNEFLOW_BASE_MODEL=Phi-4"):
        submitted(d, base_model=model)
    assert d.fake.jobs == {}


def test_a_model_the_registry_does_not_list_is_refused_naming_an_active_one():
    with pytest.raises(BaseModelUnusable, match="no active version in registry azureml.*TUNEFLOW_BASE_MODEL=Phi-4"):
        submitted(driver(base_model="Phi-2"), base_model="Phi-2")


def test_the_model_is_registered_from_the_jobs_output_as_mlflow():
    d = driver()
    submitted(d)
    d.finish("ft-azure-0000aaaa")
    d.backend.register_model("Phi-4-contract", "123", "ft-azure-0000aaaa", {"flow-id": "f", "source-job": "ft-azure-0000aaaa"})
    body = d.fake.bodies("PUT", "/models/Phi-4-contract/versions/123")[0]["properties"]
    assert body["modelUri"] == "azureml://jobs/ft-azure-0000aaaa/outputs/trained_model"
    assert body["modelType"] == "mlflow_model" and body["tags"]["source-job"] == "ft-azure-0000aaaa"


def test_serving_creates_a_key_endpoint_with_its_tags_first_then_the_deployment_then_traffic():
    d = driver()
    serve(d.backend, "tf-azure-00000001", ModelRef("Phi-4-contract", "123"), {"expires-at": "2026-11-26T03:00:00Z"},
          deployment="v-123")
    puts = [(p.rsplit("/", 2)[-2:], body) for m, p, body in d.fake.calls if m == "PUT"]
    assert [p for p, _ in puts] == [["onlineEndpoints", "tf-azure-00000001"], ["deployments", "v-123"],
                                    ["onlineEndpoints", "tf-azure-00000001"]]
    first, deployment, last = (body for _, body in puts)
    assert first["properties"]["authMode"] == "Key" and first["tags"]["expires-at"] == "2026-11-26T03:00:00Z"
    assert deployment["properties"]["instanceType"] == "Standard_NC24ads_A100_v4"
    assert deployment["properties"]["livenessProbe"]["initialDelay"] == "PT10M"  # 600 s, as the seed
    assert deployment["properties"]["requestSettings"]["requestTimeout"] == "PT1M30S"  # 90,000 ms
    assert deployment["properties"]["model"].endswith("/models/Phi-4-contract/versions/123")
    assert deployment["sku"]["capacity"] == 1
    assert last["properties"]["traffic"] == {"v-123": 100}


def test_a_deployment_refused_half_way_leaves_the_endpoint_with_its_first_expiry_and_is_created_next_time():
    from shared.ml.base import MLError
    d = driver()
    d.backend.create_endpoint("tf-azure-00000003", {"expires-at": "2026-11-26T03:00:00Z"})
    d.fake.failing_deployments = 1
    with pytest.raises(MLError, match="TUNEFLOW_INFERENCE_SKU"):
        d.backend.create_deployment("tf-azure-00000003", "v-1", ModelRef("m", "1"), {})
    half = d.backend.get_endpoint("tf-azure-00000003")
    assert half.deployments == () and half.tags["expires-at"] == "2026-11-26T03:00:00Z"  # the reaper can see it
    with pytest.raises(AlreadyExists):  # a redelivery keeps the endpoint, and so its expiry
        d.backend.create_endpoint("tf-azure-00000003", {"expires-at": "2026-11-26T09:00:00Z"})
    done = d.backend.create_deployment("tf-azure-00000003", "v-1", ModelRef("m", "1"), {})
    assert done.provisioning_state == "Succeeded" and done.traffic == 0  # created at 0 %: it moves no traffic
    assert d.backend.get_endpoint("tf-azure-00000003").tags["expires-at"] == "2026-11-26T03:00:00Z"


def test_an_inference_size_outside_the_allow_list_is_refused_unless_overridden():
    d = driver(inference_sku="Standard_NC6s_v3")
    d.backend.create_endpoint("tf-azure-00000002", {})
    with pytest.raises(ComputeUnusable, match="TUNEFLOW_INFERENCE_SKU"):
        d.backend.create_deployment("tf-azure-00000002", "v-1", ModelRef("m", "1"), {})
    assert d.fake.deployments == {}  # nothing half-created
    d = driver(inference_sku="Standard_NC6s_v3", inference_override=True)
    serve(d.backend, "tf-azure-00000002", ModelRef("m", "1"), {})
    assert d.fake.deployments[("tf-azure-00000002", "v-1")]["properties"]["instanceType"] == "Standard_NC6s_v3"


def test_sign_in_failures_say_what_to_do():
    from azure.core.exceptions import ClientAuthenticationError

    class NoIdentity:
        def get_token(self, *a, **k):
            raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")

        get_token_info = get_token

    d = driver()
    d.backend._credential = NoIdentity()
    with pytest.raises(NotConfigured, match="managed identity.*az login"):
        d.backend.get_job("ft-azure-0000aaaa")


def test_missing_workspace_settings_are_named(monkeypatch):
    from shared.ml import get_backend
    monkeypatch.setenv("TUNEFLOW_ML_BACKEND", "azure")
    for name in ("TUNEFLOW_AZURE_SUBSCRIPTION_ID", "TUNEFLOW_AZURE_RESOURCE_GROUP", "TUNEFLOW_AML_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(NotConfigured) as exc:
        get_backend()
    assert all(n in str(exc.value) for n in ("TUNEFLOW_AZURE_SUBSCRIPTION_ID", "TUNEFLOW_AML_WORKSPACE"))


def test_importing_the_backend_does_not_import_azure_ai_ml():
    import subprocess
    import sys
    code = "import sys, shared.ml.azure, shared.pipeline, shared.modelspec, shared.compute; " \
           "print('azure.ai.ml' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
