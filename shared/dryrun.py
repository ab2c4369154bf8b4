"""`tuneflow submit --dry-run`: the Azure backend's pipeline job, built offline from published specs.

The same preflight, compute check, parameter resolution and job builder as `AzureWorkspace.submit`;
where the workspace would be asked (the registry's model and component, the cluster's GPU count),
spec files and flags answer instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from shared import naming, pipeline, settings
from shared.compute import ComputeUnusable, check_finetune
from shared.contracts import MANAGED_BY_VALUE, TAG_DATASET_VERSION, TAG_FLOW_ID, TAG_MANAGED_BY
from shared.finetune import default_params
from shared.modelspec import ModelFacts, preflight
from shared.sdk_quiet import sdk_quiet
from shared.ttl import utcnow


class DryRunError(ValueError):
    """An input of the dry run is unusable; the message says which and what to give instead."""


@dataclass(frozen=True)
class DryRunInputs:
    train: str
    test: str
    model_spec: Path
    component_spec: Path
    compute_size: str | None = None
    gpus: int | None = None
    params: dict = field(default_factory=dict)


def _read_yaml(path: Path, what: str) -> dict:
    import yaml
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DryRunError(f"{what} {path} does not exist") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DryRunError(f"{what} {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DryRunError(f"{what} {path} is not a YAML mapping")
    return data


def _load_component(path: Path):
    spec = _read_yaml(path, "component spec")
    if spec.get("type") != "pipeline" or not isinstance(spec.get("inputs"), dict):
        raise DryRunError(f"component spec {path} is not a pipeline component (type: pipeline, with inputs): "
                          f"give chat_completion_pipeline's spec.yaml")
    from azure.ai.ml import load_component
    try:
        with sdk_quiet():
            return load_component(source=str(path))
    except Exception as exc:  # azure-ai-ml raises several validation types
        raise DryRunError(f"component spec {path} does not load ({str(exc).strip().splitlines()[0][:200]})") from None


def _data_input(value: str, flag: str) -> tuple[str, bytes]:
    """The path as the job gets it, and bytes that identify it (for the deterministic job name)."""
    if "://" in value:
        return value, value.encode()
    path = Path(value)
    if not path.is_file():
        raise DryRunError(f"{flag} {value} is not a file: give the prepared JSONL (or an azureml:// URI)")
    with open(path, "rb") as f:
        return str(path.resolve()), hashlib.file_digest(f, "sha256").digest()


def dry_run_job(inputs: DryRunInputs) -> tuple[dict, dict]:
    """(the job as azure-ai-ml serializes it, parameters dropped with the reason)."""
    facts = ModelFacts.from_spec(_read_yaml(inputs.model_spec, "model spec"), settings.get("TUNEFLOW_AML_REGISTRY"))
    if not facts.name or not facts.version:
        raise DryRunError(f"model spec {inputs.model_spec} has no name or version: give a registry model spec.yaml")
    preflight(facts, utcnow())
    component = _load_component(inputs.component_spec)
    gpus = 1 if inputs.gpus is None else inputs.gpus
    if gpus < 1:
        raise ComputeUnusable(f"--gpus {gpus}: fine-tuning needs at least one GPU per node")
    size = inputs.compute_size or (facts.finetune_skus[0] if facts.finetune_skus else "")
    compute_name = settings.get("TUNEFLOW_AML_COMPUTE")
    compute = check_finetune(facts, compute_name, size, "Succeeded", {size: gpus} if size else {}, "--compute-size")
    train, train_id = _data_input(inputs.train, "--train")
    test, test_id = _data_input(inputs.test, "--test")
    params = pipeline.resolve(pipeline.component_inputs(component), facts.specific_defaults, default_params(),
                              inputs.params)
    version = hashlib.sha256(train_id + b"\0" + test_id).hexdigest()[:16]
    dataset = naming.slug(Path(inputs.train).parent.name or "dataset", 40) if "://" not in inputs.train else "dataset"
    tags = {TAG_MANAGED_BY: MANAGED_BY_VALUE, TAG_FLOW_ID: naming.flow_id(dataset, version, inputs.params),
            TAG_DATASET_VERSION: version}
    job = pipeline.build_job(component, name=naming.job_name(dataset, version, inputs.params),
                             experiment=f"chat_completion_{facts.name}", model_id=facts.id, compute=compute,
                             train_uri=train, test_uri=test, params=params.values,
                             display=pipeline.display_name(facts.name, params.values, compute.gpus), tags=tags)
    return pipeline.job_dict(job), params.dropped
