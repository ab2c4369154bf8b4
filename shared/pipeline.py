"""The fine-tune pipeline job, as the seed builds it (steps 5-6), from data the caller gathered.

Parameters: the seed's defaults <- the model's `model_specific_defaults` <- tuneflow's evaluation
schedule <- app and per-request overrides. The evaluation schedule (four evaluations per epoch) is
what the quality gate's baseline on Azure is read from: the pipeline never evaluates the base model,
so the run's first eval_loss stands in for it (shared/ml/metrics.py); a request may still set its
own. Keys the component does not declare are dropped and reported (the registry's own
defaults include `learning_rate_min` / `_max`, which azure-ai-ml would refuse); enum inputs get the
strings the component expects (`2` -> "2", `True` -> "true"); numbers are checked. The job is a
real azure-ai-ml `PipelineJob` (the component called inside `@pipeline`), so what `submit --dry-run`
prints is what `jobs.create_or_update` would send.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.compute import SERVERLESS, FinetuneCompute

SEED_TRAINING = {"num_train_epochs": 3, "per_device_train_batch_size": 1, "per_device_eval_batch_size": 1,
                 "learning_rate": 5e-6, "lr_scheduler_type": "cosine"}
SEED_OPTIMIZATION = {"apply_lora": "true", "apply_deepspeed": "true", "deepspeed_stage": 2}
# Several evaluations per epoch, so the eval_loss history has a first point to serve as the gate's baseline.
GATE_EVALUATION = {"evaluation_strategy": "steps", "evaluation_steps_interval": 0.25}
COMPUTE_INPUTS = ("compute_model_import", "compute_preprocess", "compute_finetune", "compute_model_evaluation")
SERVERLESS_INPUTS = ("instance_type_finetune", "instance_type_model_evaluation")
# Inputs tuneflow sets itself: an override of these is dropped and reported, never passed.
RESERVED = ("mlflow_model_path", "train_file_path", "test_file_path", "validation_file_path",
            "number_of_gpu_to_use_finetuning", *COMPUTE_INPUTS, *SERVERLESS_INPUTS)
OUTPUT = "trained_model"  # the pipeline's output: the component's mlflow_model_folder


class BadParameter(ValueError):
    """A parameter value the component cannot take; the message names the key and the accepted values."""


@dataclass(frozen=True)
class ComponentInput:
    name: str
    type: str
    enum: tuple[str, ...] = ()


def component_inputs(component) -> dict[str, ComponentInput]:
    """The inputs an azure-ai-ml component declares (from `load_component` or `components.get`)."""
    out = {}
    for name, spec in component.inputs.items():
        enum = getattr(spec, "enum", None) or ()
        out[name] = ComponentInput(name, str(getattr(spec, "type", "string")), tuple(str(e) for e in enum))
    return out


def _coerce(spec: ComponentInput, value):
    if spec.enum or spec.type == "string":
        text = ("true" if value else "false") if isinstance(value, bool) else (
            str(int(value)) if isinstance(value, float) and value.is_integer() else str(value))
        if spec.enum:
            match = {e.lower(): e for e in spec.enum}.get(text.lower())
            if match is None:
                raise BadParameter(f"parameter {spec.name}={value!r} is not one of {', '.join(spec.enum)}")
            return match
        return text
    if spec.type == "integer":
        try:
            number = float(value)
            if not number.is_integer() or isinstance(value, bool):
                raise ValueError
            return int(number)
        except (TypeError, ValueError):
            raise BadParameter(f"parameter {spec.name}={value!r} is not a whole number") from None
    if spec.type == "number":
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise BadParameter(f"parameter {spec.name}={value!r} is not a number") from None
    if spec.type == "boolean":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise BadParameter(f"parameter {spec.name}={value!r} is not true or false")
    raise BadParameter(f"parameter {spec.name} is a {spec.type} input: tuneflow does not take it as a parameter")


@dataclass(frozen=True)
class Parameters:
    values: dict  # what the component node is called with
    dropped: dict = field(default_factory=dict)  # key -> why it was not passed


def resolve(inputs: dict[str, ComponentInput], model_defaults: dict, *overrides: dict) -> Parameters:
    merged = {**SEED_TRAINING, **SEED_OPTIMIZATION, **model_defaults, **GATE_EVALUATION}
    for layer in overrides:
        merged.update(layer)
    values, dropped = {}, {}
    for key, value in merged.items():
        if key in RESERVED:
            dropped[key] = "set by tuneflow"
        elif key not in inputs:
            dropped[key] = "not an input of the component"
        else:
            values[key] = _coerce(inputs[key], value)
    return Parameters(values, dropped)


def display_name(model_name: str, params: dict, gpus_per_node: int) -> str:
    """Exactly the seed's get_pipeline_display_name()."""
    batch_size = (int(params.get("per_device_train_batch_size", 1)) * int(params.get("gradient_accumulation_steps", 1))
                  * int(gpus_per_node) * int(params.get("num_nodes_finetune", 1)))
    scheduler = params.get("lr_scheduler_type", "linear")
    ds_string = f"ds{params.get('deepspeed_stage', '2')}" if params.get("apply_deepspeed", "false") == "true" else "nods"
    lora_string = "lora" if params.get("apply_lora", "false") == "true" else "nolora"
    save_limit = params.get("save_total_limit", -1)
    seq_len = params.get("max_seq_length", -1)
    return (model_name + "-" + "ultrachat" + "-" + f"bs{batch_size}" + "-" + f"{scheduler}" + "-" + ds_string
            + "-" + lora_string + f"-save_limit{save_limit}" + f"-seqlen{seq_len}")


def build_job(component, *, name: str, experiment: str, model_id: str, compute: FinetuneCompute, train_uri: str,
              test_uri: str, params: dict, display: str, tags: dict):
    """The azure-ai-ml PipelineJob the seed submits, with a deterministic name and our tags."""
    from azure.ai.ml import Input
    from azure.ai.ml.dsl import pipeline
    from azure.ai.ml.entities import UserIdentityConfiguration
    declared = set(component.inputs)
    placement = {key: compute.compute for key in COMPUTE_INPUTS if key in declared}
    if compute.compute == SERVERLESS:
        placement.update({key: compute.instance_type for key in SERVERLESS_INPUTS if key in declared})

    @pipeline(name=display)
    def create_pipeline():
        chat_completion_pipeline = component(  # the seed's node name
            mlflow_model_path=model_id, train_file_path=Input(type="uri_file", path=train_uri),
            test_file_path=Input(type="uri_file", path=test_uri),
            number_of_gpu_to_use_finetuning=compute.gpus, **placement, **params)
        return {OUTPUT: chat_completion_pipeline.outputs.mlflow_model_folder}

    job = create_pipeline()
    job.name = name
    job.display_name = display
    job.experiment_name = experiment
    job.tags = dict(tags)
    job.settings.force_rerun = True
    job.settings.continue_on_step_failure = False
    # The steps write the MLflow model to the workspace's storage, whose shared keys are off: they run
    # as the submitter (the app's identity, Storage Blob Data Contributor there: infra/app/rbac.bicep).
    # Serverless compute has no system-assigned identity to fall back on.
    job.identity = UserIdentityConfiguration()
    return job


def job_dict(job) -> dict:
    """The job as azure-ai-ml serializes it (what `submit --dry-run` prints)."""
    return job._to_dict()  # azure-ai-ml's own YAML/JSON form of the job
