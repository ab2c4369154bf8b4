"""The Azure ML path checked against the published specs: every model spec (all three metadata
shapes), both component versions, built into real azure-ai-ml pipeline jobs."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from shared import pipeline
from shared.compute import ComputeUnusable, check_finetune, check_inference
from shared.modelspec import BaseModelUnusable, ModelFacts, as_dict, as_list, preflight
from tests.conftest import REFERENCE, reference_spec

NOW = datetime(2026, 11, 26, tzinfo=timezone.utc)
MODEL_SPECS = ["phi-4.spec.yaml", "phi-3-mini-4k-instruct.spec.yaml", "phi-3-mini-4k-instruct.legacy-tags.spec.yaml",
               "phi-3.5-mini-instruct.spec.yaml"]
COMPONENT_SPECS = ["chat_completion_pipeline.spec.yaml", "chat_completion_pipeline.0.0.57.spec.yaml"]
A100 = "Standard_NC24ads_A100_v4"


def test_every_reference_spec_is_covered():
    files = {p.name for p in (REFERENCE / "azureml").glob("*.spec.yaml")}
    assert files == set(MODEL_SPECS) | set(COMPONENT_SPECS)


@pytest.mark.parametrize("text, expected", [
    (["a", "b"], ["a", "b"]), ("['a', 'b']", ["a", "b"]), ('["a", "b"]', ["a", "b"]), ("a, b", ["a", "b"]),
    ("[ a,\n b ]", ["a", "b"]), ("", []), (None, []), ("single", ["single"]),
])
def test_as_list_reads_every_shape_tags_come_in(text, expected):
    assert as_list(text) == expected


@pytest.mark.parametrize("text", [{"a": 1}, '{"a": 1}', "{'a': 1}"])
def test_as_dict_reads_yaml_json_and_python_literals(text):
    assert as_dict(text) == {"a": 1}


# name, archived, retired, first fine-tune SKU, an inference SKU, deepspeed stage in its defaults
FACTS = [
    ("phi-4.spec.yaml", "Phi-4", False, None, A100, "Standard_NC40ads_H100_v5", 3),
    ("phi-3-mini-4k-instruct.spec.yaml", "Phi-3-mini-4k-instruct", True, "2025-08-30", A100, "Standard_NC6s_v3", 2),
    ("phi-3-mini-4k-instruct.legacy-tags.spec.yaml", "Phi-3-mini-4k-instruct", True, "2025-08-30", A100,
     "Standard_NC6s_v3", 2),
    ("phi-3.5-mini-instruct.spec.yaml", "Phi-3.5-mini-instruct", True, "2025-08-30", A100, None, None),
]


@pytest.mark.parametrize("file, name, archived, retired, finetune, inference, stage", FACTS)
def test_model_facts_from_every_metadata_shape(file, name, archived, retired, finetune, inference, stage):
    facts = ModelFacts.from_spec(reference_spec(file))
    assert (facts.name, facts.archived) == (name, archived)
    assert (facts.finetune_retirement.date().isoformat() if facts.finetune_retirement else None) == retired
    assert facts.allows_finetune_on(finetune) and facts.allows_finetune_on(finetune.upper())  # case-insensitive
    assert not facts.allows_finetune_on("Standard_NC6")
    if inference:
        assert facts.allows_inference_on(inference.lower())
    if stage is not None:
        assert int(facts.specific_defaults["deepspeed_stage"]) == stage


def test_rest_shaped_tags_give_the_same_facts_as_yaml_tags():
    """Over REST every tag is a string: the registry's JSON-encoded lists and dicts read the same."""
    import json
    spec = reference_spec("phi-3-mini-4k-instruct.legacy-tags.spec.yaml")
    as_yaml = ModelFacts.from_spec(spec)
    rest_tags = {k: v if isinstance(v, str) else json.dumps(v) for k, v in spec["tags"].items()}
    as_rest = ModelFacts.from_metadata(spec["name"], spec["version"], tags=rest_tags, properties=spec["properties"])
    assert (as_rest.finetune_skus, as_rest.inference_skus, as_rest.specific_defaults, as_rest.finetune_retirement) == \
        (as_yaml.finetune_skus, as_yaml.inference_skus, as_yaml.specific_defaults, as_yaml.finetune_retirement)


@pytest.mark.parametrize("file", MODEL_SPECS[1:])
def test_archived_or_retired_models_are_refused_naming_an_active_one(file):
    with pytest.raises(BaseModelUnusable) as exc:
        preflight(ModelFacts.from_spec(reference_spec(file)), NOW)
    assert "TUNEFLOW_BASE_MODEL=Phi-4" in str(exc.value) and "\n" not in str(exc.value)


def test_the_active_model_passes_and_a_model_for_other_tasks_is_refused():
    preflight(ModelFacts.from_spec(reference_spec("phi-4.spec.yaml")), NOW)
    other = ModelFacts.from_metadata("m", "1", system_metadata={"tasks": {"fineTuningTasks": ["text-classification"]}})
    with pytest.raises(BaseModelUnusable, match="not chat-completion"):
        preflight(other, NOW)


def test_the_seed_model_stays_selectable_and_is_refused_for_its_retirement_not_its_name():
    facts = ModelFacts.from_spec(reference_spec("phi-3-mini-4k-instruct.spec.yaml"))
    unarchived = ModelFacts(**{**facts.__dict__, "archived": False})
    preflight(unarchived, datetime(2025, 8, 1, tzinfo=timezone.utc))  # before retirement: accepted
    with pytest.raises(BaseModelUnusable, match="retired on 2025-08-30"):
        preflight(unarchived, NOW)


# -- compute ----------------------------------------------------------------------------------

def phi4() -> ModelFacts:
    return ModelFacts.from_spec(reference_spec("phi-4.spec.yaml"))


NO_LIST = ModelFacts.from_metadata("custom", "1")


@pytest.mark.parametrize("facts, compute, size, state, sizes, outcome", [
    (phi4, "gpu", "STANDARD_NC24ADS_A100_V4", "Succeeded", {A100: 1}, 1),  # case-insensitive, as the seed
    (phi4, "serverless", "Standard_NC48ads_A100_v4", "Succeeded", {"standard_nc48ads_a100_v4": 2}, 2),
    (phi4, "gpu", A100, "failed", {A100: 1}, "provisioning state Failed"),
    (phi4, "gpu", "Standard_NC6s_v3", "Succeeded", {"Standard_NC6s_v3": 1}, "cannot be fine-tuned on"),
    (phi4, "gpu", A100, "Succeeded", {}, "not a GPU size tuneflow knows"),
    (lambda: NO_LIST, "gpu", "Standard_NC24r", "Succeeded", {"Standard_NC24r": 4}, "does not support"),
    (lambda: NO_LIST, "gpu", "Standard_NC6s_v3", "Succeeded", {"Standard_NC6s_v3": 1}, 1),
    (phi4, "serverless", "", "Succeeded", {}, "TUNEFLOW_AML_FINETUNE_SKU"),
])
def test_finetune_compute_checks(facts, compute, size, state, sizes, outcome):
    if isinstance(outcome, int):
        assert check_finetune(facts(), compute, size, state, sizes).gpus == outcome
    else:
        with pytest.raises(ComputeUnusable, match=outcome):
            check_finetune(facts(), compute, size, state, sizes)


@pytest.mark.parametrize("file", sorted(p.name for p in (REFERENCE / "azureml").glob("*.spec.yaml")
                                         if "pipeline" not in p.name))
def test_every_fine_tune_size_a_model_allows_has_a_known_gpu_count(file):
    """GPU counts come from a table (list_sizes is a subscription-scope call the app may not make)."""
    from shared.compute import GPU_COUNTS
    facts = ModelFacts.from_spec(reference_spec(file))
    assert facts.finetune_skus and all(s.lower() in GPU_COUNTS for s in facts.finetune_skus), facts.finetune_skus


def test_inference_size_outside_the_allow_list_is_refused_unless_overridden():
    check_inference(phi4(), "standard_nc24ads_a100_v4", override=False)
    with pytest.raises(ComputeUnusable, match="TUNEFLOW_INFERENCE_SKU_OVERRIDE"):
        check_inference(phi4(), "Standard_NC6s_v3", override=False)
    check_inference(phi4(), "Standard_NC6s_v3", override=True)


# -- parameters and the job, for both component versions x every model spec --------------------

def seed_display_name(model_name, finetune_parameters, gpus_per_node):
    """The seed notebook's get_pipeline_display_name(), verbatim but for the closure variables."""
    batch_size = (
        int(finetune_parameters.get("per_device_train_batch_size", 1))
        * int(finetune_parameters.get("gradient_accumulation_steps", 1))
        * int(gpus_per_node)
        * int(finetune_parameters.get("num_nodes_finetune", 1))
    )
    scheduler = finetune_parameters.get("lr_scheduler_type", "linear")
    deepspeed = finetune_parameters.get("apply_deepspeed", "false")
    ds_stage = finetune_parameters.get("deepspeed_stage", "2")
    if deepspeed == "true":
        ds_string = f"ds{ds_stage}"
    else:
        ds_string = "nods"
    lora = finetune_parameters.get("apply_lora", "false")
    if lora == "true":
        lora_string = "lora"
    else:
        lora_string = "nolora"
    save_limit = finetune_parameters.get("save_total_limit", -1)
    seq_len = finetune_parameters.get("max_seq_length", -1)
    return (model_name + "-" + "ultrachat" + "-" + f"bs{batch_size}" + "-" + f"{scheduler}" + "-" + ds_string + "-"
            + lora_string + f"-save_limit{save_limit}" + f"-seqlen{seq_len}")


@pytest.fixture(scope="module", params=COMPONENT_SPECS)
def component(request):
    from azure.ai.ml import load_component
    return load_component(source=str(REFERENCE / "azureml" / request.param))


@pytest.mark.parametrize("model_file", MODEL_SPECS)
def test_parameters_fit_the_component_and_the_job_serializes(component, model_file, tmp_path):
    facts = ModelFacts.from_spec(reference_spec(model_file))
    inputs = pipeline.component_inputs(component)
    params = pipeline.resolve(inputs, facts.specific_defaults, {"num_train_epochs": "2", "not_an_input": 1,
                                                                "train_file_path": "x"})
    assert set(params.values) <= set(inputs)
    assert params.dropped["not_an_input"] == "not an input of the component"
    assert params.dropped["train_file_path"] == "set by tuneflow"
    if "learning_rate_min" in facts.specific_defaults:  # the registry's defaults hold keys the component lacks
        assert "learning_rate_min" in params.dropped and "learning_rate_max" in params.dropped
    for key, value in params.values.items():
        if inputs[key].enum:
            assert value in inputs[key].enum, (key, value)
    assert params.values["num_train_epochs"] == 2 and params.values["apply_lora"] == "true"
    assert params.values["deepspeed_stage"] in ("2", "3") and params.values.get("precision", "16") == "16"

    compute = check_finetune(facts, "serverless", facts.finetune_skus[0], "Succeeded", {facts.finetune_skus[0]: 1})
    seed_params = {**pipeline.SEED_TRAINING, **pipeline.SEED_OPTIMIZATION, **facts.specific_defaults,
                   "num_train_epochs": 2}
    display = pipeline.display_name(facts.name, params.values, compute.gpus)
    assert display == seed_display_name(facts.name, seed_params, compute.gpus)
    job = pipeline.build_job(component, name="ft-ds-0123abcd", experiment=f"chat_completion_{facts.name}",
                             model_id=facts.id, compute=compute, train_uri="azureml://datastores/d/paths/t.jsonl",
                             test_uri="azureml://datastores/d/paths/s.jsonl", params=params.values, display=display,
                             tags={"managed-by": "tuneflow", "flow-id": "f"})
    d = pipeline.job_dict(job)
    node = d["jobs"]["chat_completion_pipeline"]
    assert d["display_name"] == display and d["name"] == "ft-ds-0123abcd"
    assert d["settings"] == {"force_rerun": True, "continue_on_step_failure": False}
    assert d["outputs"]["trained_model"]["type"] == "mlflow_model"
    assert node["outputs"]["mlflow_model_folder"] == "${{parent.outputs.trained_model}}"
    assert node["inputs"]["mlflow_model_path"] == {"type": "mlflow_model", "path": facts.id}
    assert node["inputs"]["train_file_path"]["path"].endswith("t.jsonl")
    assert node["inputs"]["number_of_gpu_to_use_finetuning"] == 1
    assert {node["inputs"][k] for k in pipeline.COMPUTE_INPUTS} == {"serverless"}
    assert node["inputs"]["instance_type_finetune"] == facts.finetune_skus[0]
    assert component.version in str(node["component"]["version"])


def test_a_cluster_job_names_the_cluster_for_all_four_steps(component):
    facts = phi4()
    compute = check_finetune(facts, "gpu-a100", A100, "Succeeded", {A100: 2})
    params = pipeline.resolve(pipeline.component_inputs(component), facts.specific_defaults)
    job = pipeline.build_job(component, name="ft-x-1", experiment="e", model_id=facts.id, compute=compute,
                             train_uri="azureml://a", test_uri="azureml://b", params=params.values,
                             display="d", tags={})
    node = pipeline.job_dict(job)["jobs"]["chat_completion_pipeline"]["inputs"]
    assert {node[k] for k in pipeline.COMPUTE_INPUTS} == {"gpu-a100"} and "instance_type_finetune" not in node
    assert node["number_of_gpu_to_use_finetuning"] == 2


@pytest.mark.parametrize("override, words", [
    ({"precision": 64}, "precision=64 is not one of 32, 16"),
    ({"num_train_epochs": "two"}, "num_train_epochs='two' is not a whole number"),
    ({"learning_rate": "fast"}, "learning_rate='fast' is not a number"),
    ({"lr_scheduler_type": "sideways"}, "is not one of linear"),
])
def test_bad_parameter_values_name_the_key_and_the_accepted_values(component, override, words):
    from shared.pipeline import BadParameter
    with pytest.raises(BadParameter, match=words):
        pipeline.resolve(pipeline.component_inputs(component), {}, override)


def test_enum_values_are_coerced_to_the_strings_the_component_expects(component):
    params = pipeline.resolve(pipeline.component_inputs(component), {},
                              {"apply_lora": False, "deepspeed_stage": 3, "precision": 32.0, "apply_ort": "TRUE"}).values
    assert (params["apply_lora"], params["deepspeed_stage"], params["precision"], params["apply_ort"]) == \
        ("false", "3", "32", "true")
