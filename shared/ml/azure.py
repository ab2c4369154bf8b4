"""The Azure ML backend: the seed notebook's calls, unattended (azure-ai-ml, azure-identity).

- Identity only: `DefaultAzureCredential` (the Function App's managed identity in Azure; `az login`
  on a workstation); no interactive fallback, no keys.
- Two clients, as the seed: the workspace, and the registry (`azureml`) for the base model and
  the `chat_completion_pipeline` component (latest, or pinned by TUNEFLOW_AML_COMPONENT_VERSION).
- Nothing blocks on a job (`jobs.stream` is the notebook's; the app waits for Event Grid).
- Check-before-create everywhere: a job, model version or endpoint that exists raises
  AlreadyExists, exactly as the local backend does, so a redelivered message finds the work done.
- Azure errors become one line naming what to change (NotFound, NotConfigured, MLError).
- A job's metrics (the quality gate's evidence) come from the workspace's MLflow REST API, not the mlflow
  package: shared/ml/metrics.py says what is read and how it is folded (first / lowest eval_loss).

azure-ai-ml is imported on first use, never at function start-up (about 0.9 s and 100 MB).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from shared import settings
from shared.compute import SERVERLESS, FinetuneCompute, check_finetune, check_inference, gpu_counts
from shared.contracts import TAG_BASE_MODEL
from shared.ml.base import (AlreadyExists, DeploymentInfo, EndpointInfo, HasTraffic, JobInfo, JobSpec, MLError,
                            ModelRef, NameTaken, NotConfigured, NotFound, NotReady, ServiceTimeout, Throttled,
                            Unavailable)
from shared.modelspec import ACTIVE_ALTERNATIVE, BaseModelUnusable, ModelFacts, preflight
from shared import pipeline
from shared.sdk_quiet import sdk_quiet

log = logging.getLogger("tuneflow.azureml")

DEFAULT_BASE_MODEL = ACTIVE_ALTERNATIVE
COMPONENT = "chat_completion_pipeline"
# The seed's deployment settings: the model server needs minutes to load the weights.
LIVENESS_INITIAL_DELAY_S = 600
REQUEST_TIMEOUT_MS = 90_000
TRANSITIONAL = ("Creating", "Updating", "Deleting")
FAILED = ("Failed", "Canceled")
# How long deploy waits for a deployment an earlier attempt left `Creating` (then the message is retried).
WAIT_S = 30 * 60
POLL_S = 15.0


@dataclass(frozen=True)
class AzureConfig:
    subscription_id: str
    resource_group: str
    workspace: str
    registry: str
    base_model: str
    component_version: str  # "" = latest
    compute: str  # a cluster name, or "serverless"
    finetune_sku: str  # serverless instance type; "" = the model's first recommended size
    inference_sku: str  # "" = the model's first recommended inference size
    inference_override: bool
    datastore: str
    finetune_gpus: int = 0  # GPUs of the fine-tune size when compute.GPU_COUNTS lacks it

    @classmethod
    def from_settings(cls) -> "AzureConfig":
        missing = [n for n in ("TUNEFLOW_AZURE_SUBSCRIPTION_ID", "TUNEFLOW_AZURE_RESOURCE_GROUP", "TUNEFLOW_AML_WORKSPACE")
                   if not settings.get(n)]
        if missing:
            raise NotConfigured(f"the Azure ML backend needs {', '.join(missing)}: set them to the workspace "
                                f"the app fine-tunes in (infra outputs them)")
        return cls(subscription_id=settings.get("TUNEFLOW_AZURE_SUBSCRIPTION_ID"),
                   resource_group=settings.get("TUNEFLOW_AZURE_RESOURCE_GROUP"),
                   workspace=settings.get("TUNEFLOW_AML_WORKSPACE"), registry=settings.get("TUNEFLOW_AML_REGISTRY"),
                   base_model=settings.get("TUNEFLOW_BASE_MODEL") or DEFAULT_BASE_MODEL,
                   component_version=settings.get("TUNEFLOW_AML_COMPONENT_VERSION"),
                   compute=settings.get("TUNEFLOW_AML_COMPUTE"), finetune_sku=settings.get("TUNEFLOW_AML_FINETUNE_SKU"),
                   inference_sku=settings.get("TUNEFLOW_INFERENCE_SKU"),
                   inference_override=settings.get_bool("TUNEFLOW_INFERENCE_SKU_OVERRIDE"),
                   datastore=settings.get("TUNEFLOW_AML_DATASTORE"),
                   finetune_gpus=settings.get_int("TUNEFLOW_AML_FINETUNE_GPUS", 0))


@contextlib.contextmanager
def azure_errors(what: str):
    """Azure SDK exceptions as the interface's: one line, saying what to change (and none of the SDK's
    experimental-class chatter printed meanwhile)."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
    try:
        with sdk_quiet():
            yield
    except ResourceNotFoundError as exc:
        raise NotFound(f"{what}: not found ({_first_line(exc)})") from None
    except ClientAuthenticationError as exc:
        raise NotConfigured(f"{what}: Azure sign-in failed ({_first_line(exc)}); in Azure give the Function App's "
                            f"managed identity access to the workspace, locally run `az login`") from None
    except HttpResponseError as exc:
        if exc.status_code == 404:
            raise NotFound(f"{what}: not found ({_first_line(exc)})") from None
        if exc.status_code == 429:
            headers = getattr(exc.response, "headers", None) or {}
            try:
                retry_after = float(headers.get("Retry-After", 0))
            except ValueError:
                retry_after = 0.0
            raise Throttled(f"{what}: throttled by Azure ({_first_line(exc)})", retry_after) from None
        raise MLError(f"{what}: Azure ML answered {exc.status_code} ({_first_line(exc)})") from None


def _text(value) -> str:
    """An SDK enum or string as Azure names it ("Completed", "Succeeded")."""
    return str(getattr(value, "value", value) or "")


def _first_line(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return str(message).strip().splitlines()[0][:200] if str(message).strip() else type(exc).__name__


class AzureWorkspace:
    """MLBackend on an Azure ML workspace. `transport` is for tests (azure-core transport doubles)."""

    def __init__(self, config: AzureConfig | None = None, credential=None, transport=None,
                 now: Callable[[], datetime] | None = None, sleep: Callable[[float], None] = time.sleep,
                 wait_s: float = WAIT_S):
        self.config = config or AzureConfig.from_settings()
        self._credential, self._transport = credential, transport
        self._now = now or (lambda: datetime.now(timezone.utc))
        self._sleep, self._wait_s = sleep, wait_s
        self._ws_client = self._registry_client = None
        self._mlflow = None  # the MLflow reader, with the workspace's tracking URI: looked up once

    @property
    def workspace_id(self) -> str:
        c = self.config
        return f"{c.subscription_id}/{c.resource_group}/{c.workspace}".lower()

    # -- clients -----------------------------------------------------------------------------

    def _kwargs(self) -> dict:
        return {"transport": self._transport} if self._transport is not None else {}

    def _cred(self):
        if self._credential is None:
            from azure.identity import DefaultAzureCredential
            # Managed identity in Azure (AZURE_CLIENT_ID picks a user-assigned one), `az login` locally;
            # never a browser: nobody is there to click.
            self._credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
        return self._credential

    @property
    def ws(self):
        if self._ws_client is None:
            from azure.ai.ml import MLClient
            c = self.config
            self._ws_client = MLClient(self._cred(), c.subscription_id, c.resource_group, c.workspace,
                                       enable_telemetry=False, show_progress=False, **self._kwargs())
        return self._ws_client

    @property
    def registry(self):
        if self._registry_client is None:
            from azure.ai.ml import MLClient
            with azure_errors(f"registry {self.config.registry}"):
                self._registry_client = MLClient(self._cred(), registry_name=self.config.registry,
                                                 enable_telemetry=False, show_progress=False, **self._kwargs())
        return self._registry_client

    # -- preflight ---------------------------------------------------------------------------

    def base_model(self, name: str | None = None) -> ModelFacts:
        """The registry's latest version of the base model, refused if it can no longer be fine-tuned."""
        facts = self._latest_model_facts(name or self.config.base_model)
        preflight(facts, self._now())
        return facts

    def _latest_model_facts(self, name: str) -> ModelFacts:
        """The registry's latest active version. With every version archived, azure-ai-ml raises its own
        ValidationException for `label="latest"` (no ResourceNotFoundError): both mean "not usable"."""
        from azure.ai.ml.exceptions import ValidationException
        try:
            with azure_errors(f"base model {name} in registry {self.config.registry}"):
                model = self.registry.models.get(name, label="latest")
        except (NotFound, ValidationException):
            raise BaseModelUnusable(f"base model {name} has no active version in registry {self.config.registry} "
                                    f"(archived models are not listed): set TUNEFLOW_BASE_MODEL={ACTIVE_ALTERNATIVE} "
                                    f"or another active chat-completion model") from None
        return ModelFacts.from_entity(model, **self._registry_extras(name, str(model.version)))

    def _model_facts(self, model_id: str) -> ModelFacts:
        """Facts of one pinned registry version (`azureml://registries/<r>/models/<name>/versions/<v>`), archived
        or not: deploying a model already trained must not depend on its base model still being fine-tunable."""
        parts = model_id.split("/")
        name, version = parts[-3], parts[-1]
        with azure_errors(f"base model {name}:{version} in registry {self.config.registry}"):
            model = self.registry.models.get(name, version=version)
        return ModelFacts.from_entity(model, **self._registry_extras(name, version))

    def _registry_extras(self, name: str, version: str) -> dict:
        """`isArchived` and the system metadata (allow-lists, retirement dates) of a registry model.

        azure-ai-ml's `Model` drops both; its own REST object for the same version keeps every key
        the service sent, so read them there (camelCase, or snake_case as the SDK writes them)."""
        with azure_errors(f"base model {name}:{version} in registry {self.config.registry}"):
            rest = self.registry.models._get(name, version)  # the SDK's REST call; the entity hides these keys
        props = rest.properties if isinstance(rest.properties, Mapping) else {}
        meta = props.get("systemMetadata") or props.get("system_metadata") or {}
        return {"system_metadata": dict(meta), "archived": bool(props.get("isArchived", False))}

    def component(self):
        c = self.config
        label = {"version": c.component_version} if c.component_version else {"label": "latest"}
        with azure_errors(f"component {COMPONENT} {c.component_version or 'latest'} in registry {c.registry} "
                          f"(TUNEFLOW_AML_COMPONENT_VERSION)"):
            return self.registry.components.get(COMPONENT, **label)

    def finetune_compute(self, facts: ModelFacts) -> FinetuneCompute:
        """The seed's compute checks. GPU counts come from a table, not `compute.list_sizes()`: that is a
        subscription-scope call the app's workspace-only role is refused (see shared/compute.py)."""
        c = self.config
        if c.compute == SERVERLESS:
            sku = c.finetune_sku or (facts.finetune_skus[0] if facts.finetune_skus else "")
            return check_finetune(facts, SERVERLESS, sku, "Succeeded", gpu_counts(c.finetune_gpus, sku))
        with azure_errors(f"compute cluster {c.compute} (TUNEFLOW_AML_COMPUTE)"):
            cluster = self.ws.compute.get(c.compute)
        size = str(getattr(cluster, "size", "") or "")
        return check_finetune(facts, c.compute, size, _text(cluster.provisioning_state),
                              gpu_counts(c.finetune_gpus, size), "TUNEFLOW_AML_COMPUTE")

    def datastore_uri(self, prepared_uri: str) -> str:
        """`prepared/<dataset>/<version>/train.jsonl` on the datastore that points at the `prepared` container."""
        path = prepared_uri.split("/", 1)[1]
        return f"azureml://datastores/{self.config.datastore}/paths/{path}"

    def pipeline_job(self, spec: JobSpec):
        """(job, Parameters) for `spec`: the whole preflight, no submission."""
        facts = self.base_model(spec.base_model or None)
        component = self.component()
        compute = self.finetune_compute(facts)
        params = pipeline.resolve(pipeline.component_inputs(component), facts.specific_defaults, spec.params)
        display = pipeline.display_name(facts.name, params.values, compute.gpus)
        with sdk_quiet():
            job = pipeline.build_job(component, name=spec.name, experiment=spec.experiment, model_id=facts.id,
                                     compute=compute, train_uri=self.datastore_uri(spec.train_uri),
                                     test_uri=self.datastore_uri(spec.test_uri), params=params.values,
                                     display=display, tags={**spec.tags, TAG_BASE_MODEL: facts.id})
        return job, params

    # -- jobs --------------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> JobInfo:
        try:
            self.get_job(spec.name)
            raise AlreadyExists(f"job {spec.name} already exists")
        except NotFound:
            pass
        job, params = self.pipeline_job(spec)
        for key, why in params.dropped.items():
            log.warning("parameter %s not passed to %s: %s", key, COMPONENT, why)
        with azure_errors(f"submitting job {spec.name}"):
            created = self.ws.jobs.create_or_update(job, experiment_name=spec.experiment)
        return self._job_info(created)

    def get_job(self, name: str) -> JobInfo:
        with azure_errors(f"job {name}"):
            return self._job_info(self.ws.jobs.get(name))

    @staticmethod
    def _job_info(job) -> JobInfo:
        error = ""
        if job.status in ("Failed", "Canceled"):
            error = f"job {job.name} {job.status.lower()}: see its logs in Azure ML studio ({job.studio_url or 'no url'})"
        created = getattr(getattr(job, "creation_context", None), "created_at", None) or ""
        if hasattr(created, "isoformat"):
            created = (created if created.tzinfo else created.replace(tzinfo=timezone.utc)).isoformat()
        return JobInfo(name=job.name, status=_text(job.status), tags=dict(job.tags or {}),
                       output_uri=f"azureml://jobs/{job.name}/outputs/{pipeline.OUTPUT}", error=error,
                       created_at=str(created), compute=_job_compute(job))

    def list_jobs(self, tags: dict) -> list[JobInfo]:
        """Jobs carrying all `tags`: the service filters by the first tag's key (`?tag=`), values are matched here."""
        first = next(iter(tags), None)
        with azure_errors("listing jobs"):
            found = [self._job_info(j) for j in self.ws.jobs.list(**({"tag": first} if first else {})) if j is not None]
        return [j for j in found if all(j.tags.get(k) == v for k, v in tags.items())]

    def cancel_job(self, name: str) -> None:
        job = self.get_job(name)  # NotFound
        if job.status in ("Completed", "Failed", "Canceled"):
            return
        with azure_errors(f"canceling job {name}"):
            self.ws.jobs.begin_cancel(name).result()

    def job_metrics(self, job: JobInfo) -> dict:
        """eval_loss (the lowest), base_eval_loss (the first, given 2+ evaluations), train_loss and eval_curve
        ([[step, value], ...]) from the run's MLflow history; {} or partial while not reported (see metrics.py)."""
        from shared.ml import metrics
        return metrics.read(self._metrics_reader(), job.name)

    def _metrics_reader(self):
        if self._mlflow is None:
            from shared.ml import metrics
            c = self.config
            with azure_errors(f"workspace {c.workspace} (its MLflow tracking URI)"), self._refused_as_role(c.workspace):
                ws = self.ws.workspaces.get(c.workspace)
            uri = getattr(ws, "mlflow_tracking_uri", None) or (
                f"azureml://{ws.location}.api.azureml.ms/mlflow/v1.0/subscriptions/{c.subscription_id}/resourceGroups/"
                f"{c.resource_group}/providers/Microsoft.MachineLearningServices/workspaces/{c.workspace}")
            self._mlflow = metrics.MLflowReader(uri, self._cred(), self._transport, workspace=c.workspace)
        return self._mlflow

    @contextlib.contextmanager
    def _refused_as_role(self, workspace: str):
        """A 403 on the workspace: the app identity lacks its role there, which no retry changes."""
        from azure.core.exceptions import HttpResponseError
        from shared.ml.metrics import ROLE
        try:
            yield
        except HttpResponseError as exc:
            if exc.status_code == 403:
                raise NotConfigured(f"workspace {workspace}: refused ({_first_line(exc)}): give the Function App's "
                                    f"managed identity the {ROLE} role on it (infra/app/rbac.bicep)") from None
            raise

    # -- models ------------------------------------------------------------------------------

    def register_model(self, name: str, version: str, job: str, tags: dict) -> ModelRef:
        info = self.get_job(job)
        if info.status != "Completed":
            raise MLError(f"job {job} is {info.status}, not Completed: nothing to register")
        try:
            self.get_model(name, version)
            raise AlreadyExists(f"model {name} version {version} already exists")
        except NotFound:
            pass
        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import Model
        model = Model(path=f"azureml://jobs/{job}/outputs/{pipeline.OUTPUT}", type=AssetTypes.MLFLOW_MODEL, name=name,
                      version=version, tags=tags,
                      description=f"{self.config.base_model} fine tuned model for ultrachat 200k chat-completion")
        with azure_errors(f"registering model {name}:{version}"):
            created = self.ws.models.create_or_update(model)
        return ModelRef(name=created.name, version=str(created.version), tags=dict(created.tags or {}))

    def get_model(self, name: str, version: str) -> ModelRef:
        with azure_errors(f"model {name}:{version}"):
            model = self.ws.models.get(name, version=version)
        return ModelRef(name=model.name, version=str(model.version), tags=dict(model.tags or {}))

    # -- endpoints ---------------------------------------------------------------------------

    def inference_sku(self, model: ModelRef | None = None) -> str:
        """TUNEFLOW_INFERENCE_SKU, or the first size the base model recommends, checked against its allow-list.

        The facts come from the very registry version the model was fine-tuned from (its `base-model`
        tag), read without the fine-tune preflight: an archived or retired base model must not stop the
        deployment of models already trained from it."""
        base_id = (model.tags if model else {}).get(TAG_BASE_MODEL, "")
        try:
            facts = self._model_facts(base_id) if base_id else self._latest_model_facts(self.config.base_model)
        except (BaseModelUnusable, NotFound) as exc:
            if self.config.inference_sku:  # the operator named the size: no allow-list left to check it against
                log.warning("deploying on %s unchecked: %s", self.config.inference_sku, exc)
                return self.config.inference_sku
            raise NotConfigured(f"{exc}; to deploy anyway, set TUNEFLOW_INFERENCE_SKU") from None
        sku = self.config.inference_sku or (facts.inference_skus[0] if facts.inference_skus else "")
        if not sku:
            raise NotConfigured(f"{facts.name} names no inference size: set TUNEFLOW_INFERENCE_SKU")
        check_inference(facts, sku, self.config.inference_override)
        return sku

    def create_endpoint(self, name: str, tags: dict) -> EndpointInfo:
        """A key-auth endpoint with its tags (so the reaper sees it at once), waited for until Succeeded. One an
        earlier attempt left Creating is waited for and returned; one that is there already raises AlreadyExists."""
        from azure.ai.ml.entities import ManagedOnlineEndpoint
        online = self._online_endpoint(name)
        if online is not None and _text(online.provisioning_state) not in TRANSITIONAL:
            raise AlreadyExists(f"endpoint {name} already exists")
        if online is None:
            online = ManagedOnlineEndpoint(name=name, auth_mode="key", tags=dict(tags),
                                           description=f"dataset {tags.get('dataset', '?')}: one deployment per model "
                                                       f"version, rolled out by tuneflow")
            with azure_errors(f"creating endpoint {name}"), self._endpoint_name_errors(name):
                self.ws.online_endpoints.begin_create_or_update(online).result()
        online = self._wait(f"endpoint {name}", lambda: self._endpoint_entity(name))
        if _text(online.provisioning_state) != "Succeeded":
            raise MLError(f"endpoint {name} is {_text(online.provisioning_state)}: it is deleted and created "
                          f"again on the next delivery")
        return self.get_endpoint(name)

    def create_deployment(self, endpoint: str, deployment: str, model: ModelRef, tags: dict) -> DeploymentInfo:
        """The model version as a deployment at 0 % (creating a deployment never moves traffic), left Succeeded:
        one in progress (an earlier attempt) is waited for; a Failed one is refused (the caller deletes it)."""
        from azure.ai.ml.entities import ManagedOnlineDeployment, OnlineRequestSettings, ProbeSettings
        state = self._deployment_state(endpoint, deployment)
        if state in TRANSITIONAL:
            log.info("deployment %s of %s is %s (an earlier attempt): waiting", deployment, endpoint, state)
            state = _text(self._wait(f"deployment {deployment} of {endpoint}",
                                     lambda: self._deployment_entity(endpoint, deployment)).provisioning_state)
        if state is None:
            sku = self.inference_sku(model)
            spec = ManagedOnlineDeployment(
                name=deployment, endpoint_name=endpoint, model=f"azureml:{model.name}:{model.version}",
                instance_type=sku, instance_count=1, tags=dict(tags),
                liveness_probe=ProbeSettings(initial_delay=LIVENESS_INITIAL_DELAY_S),
                request_settings=OnlineRequestSettings(request_timeout_ms=REQUEST_TIMEOUT_MS))
            with azure_errors(f"deploying {model.name}:{model.version} to {endpoint} on {sku} (TUNEFLOW_INFERENCE_SKU)"):
                self.ws.online_deployments.begin_create_or_update(spec).result()
            state = self._deployment_state(endpoint, deployment)
        if state != "Succeeded":
            raise MLError(f"deployment {deployment} of {endpoint} is {state}, not Succeeded: it gets no traffic; "
                          f"the next delivery deletes it and deploys again")
        return self.get_endpoint(endpoint).deployment(deployment)

    def delete_deployment(self, endpoint: str, deployment: str) -> None:
        online = self._endpoint_entity(endpoint)
        self._deployment_entity(endpoint, deployment)  # NotFound
        if (online.traffic or {}).get(deployment) or (online.mirror_traffic or {}).get(deployment):
            raise HasTraffic(f"deployment {deployment} of endpoint {endpoint} has live or mirror traffic: set it to 0 "
                             f"before deleting it")
        with azure_errors(f"deleting deployment {deployment} of {endpoint}"):
            self.ws.online_deployments.begin_delete(name=deployment, endpoint_name=endpoint).result()

    def set_traffic(self, endpoint: str, traffic: dict, mirror: dict, tags: dict | None = None) -> EndpointInfo:
        """One endpoint update (a long-running operation, waited for) with the whole traffic map: deployments
        not named get 0, a mirror no longer wanted is set to 0 (as the safe-rollout guide clears it)."""
        online = self._endpoint_entity(endpoint)
        online.traffic = {**{k: 0 for k in (online.traffic or {})}, **{k: int(v) for k, v in traffic.items()}}
        online.mirror_traffic = {**{k: 0 for k in (online.mirror_traffic or {})}, **{k: int(v) for k, v in mirror.items()}}
        if tags is not None:
            online.tags = dict(tags)
        with azure_errors(f"routing traffic of {endpoint} ({traffic}, mirror {mirror})"):
            self.ws.online_endpoints.begin_create_or_update(online).result()
        self._wait(f"endpoint {endpoint}", lambda: self._endpoint_entity(endpoint))
        return self.get_endpoint(endpoint)

    def deployment_errors(self, endpoint: str, deployment: str) -> int | None:
        """Not read on Azure (its error counts are Azure Monitor metrics, minutes late): the rollout's checks
        rely on the probes it sends straight to the deployment."""
        return None

    def _wait(self, what: str, get):
        """Poll `get()` until its provisioning state is no longer transitional; NotReady past the deadline."""
        waited = 0.0
        while True:
            entity = get()
            state = _text(entity.provisioning_state)
            if state not in TRANSITIONAL:
                return entity
            if waited >= self._wait_s:
                raise NotReady(f"{what} is still {state} after {int(waited)} s: retry later")
            self._sleep(POLL_S)
            waited += POLL_S

    @contextlib.contextmanager
    def _endpoint_name_errors(self, endpoint: str):
        """Online endpoint names are unique per Azure region, across every workspace: another workspace's
        endpoint of the same name is refused, and no retry can change that."""
        from azure.core.exceptions import HttpResponseError
        try:
            yield
        except HttpResponseError as exc:
            if _name_taken(exc):
                raise NameTaken(f"endpoint name {endpoint} is already used in this Azure region by another workspace "
                                f"({_first_line(exc)}): delete that endpoint, or deploy from another region") from None
            raise

    def _endpoint_entity(self, name: str):
        """azure-ai-ml's endpoint; NotFound when there is none."""
        with azure_errors(f"endpoint {name}"):
            return self.ws.online_endpoints.get(name)

    def _online_endpoint(self, name: str):
        try:
            return self._endpoint_entity(name)
        except NotFound:
            return None

    def _deployment_entity(self, endpoint: str, deployment: str):
        with azure_errors(f"deployment {deployment} of {endpoint}"):
            return self.ws.online_deployments.get(name=deployment, endpoint_name=endpoint)

    def _deployment_state(self, endpoint: str, deployment: str) -> str | None:
        """The deployment's provisioning state, None when there is none."""
        try:
            return _text(self._deployment_entity(endpoint, deployment).provisioning_state)
        except NotFound:
            return None

    def get_endpoint(self, name: str) -> EndpointInfo:
        return self._endpoint_info(self._endpoint_entity(name))

    def list_endpoints(self) -> list[EndpointInfo]:
        with azure_errors("listing endpoints"):
            return [self._endpoint_info(e) for e in self.ws.online_endpoints.list()]

    def set_endpoint_tags(self, name: str, tags: dict) -> EndpointInfo:
        online = self._endpoint_entity(name)
        online.tags = dict(tags)
        with azure_errors(f"tagging endpoint {name}"):
            self.ws.online_endpoints.begin_create_or_update(online).result()
        return self.get_endpoint(name)

    def _endpoint_info(self, endpoint) -> EndpointInfo:
        """Creation time from `properties["createdAt"]` (current azure-ai-ml), else the system data, else
        unknown; every deployment (with or without traffic: one still `Creating` keeps its endpoint from
        looking empty) with its size, state and share of the live traffic."""
        created_at = (endpoint.properties or {}).get("createdAt") or ""
        context = getattr(endpoint, "creation_context", None)
        if not created_at and context is not None and getattr(context, "created_at", None):
            created_at = context.created_at
        if hasattr(created_at, "isoformat"):
            created_at = created_at.isoformat()
        traffic, mirror = endpoint.traffic or {}, endpoint.mirror_traffic or {}
        with azure_errors(f"deployments of endpoint {endpoint.name}"):
            deployments = tuple(
                DeploymentInfo(name=d.name, instance_type=str(d.instance_type or ""), instance_count=int(d.instance_count or 0),
                               provisioning_state=_text(d.provisioning_state), traffic=int(traffic.get(d.name) or 0),
                               mirror_traffic=int(mirror.get(d.name) or 0), created_at=_created_at(d),
                               tags=dict(d.tags or {}), model=_model_ref(d.model))
                for d in self.ws.online_deployments.list(endpoint_name=endpoint.name))
        return EndpointInfo(name=endpoint.name, tags=dict(endpoint.tags or {}),
                            provisioning_state=_text(endpoint.provisioning_state), created_at=str(created_at),
                            scoring_uri=endpoint.scoring_uri or "", deployments=deployments)

    def invoke(self, endpoint: str, body: dict, deployment: str | None = None) -> object:
        """POST to the endpoint's scoring URI with its key (from `get_keys`), through the live split or straight
        to `deployment` (the `azureml-model-deployment` header); the callers retry what is worth retrying.

        Not the SDK's `online_endpoints.invoke`: azure-ai-ml (1.35) writes that header into a class-level
        dict (`EndpointInvokeFields.DEFAULT_HEADER`) and never removes it, so every later call in the process,
        with no deployment named, would go to the last one named (a smoke test's), or fail once it is deleted.

        Its answers at the scoring URI are not ARM's: 401 is the endpoint refusing its key (not a sign-in
        failure), 408 a model still loading, 429 a deployment with too many requests in flight (mirrored or live
        traffic beside a probe), 502-504 a container (re)starting: all worth a retry. 424 is the container's
        own error (its status in `ms-azureml-model-error-statuscode`)."""
        from azure.core import PipelineClient
        from azure.core.exceptions import (ServiceRequestError, ServiceRequestTimeoutError, ServiceResponseError,
                                           ServiceResponseTimeoutError)
        from azure.core.rest import HttpRequest
        what = f"invoking endpoint {endpoint}" + (f", deployment {deployment}" if deployment else "")
        with azure_errors(what):
            uri = self._endpoint_entity(endpoint).scoring_uri
            key = self.ws.online_endpoints.get_keys(name=endpoint).primary_key
        if not uri:
            raise MLError(f"{what}: it has no scoring URI yet (still being created?)")
        headers = {"Content-Type": "application/json", "Accept": "application/json", "Authorization": f"Bearer {key}"}
        if deployment:
            headers["azureml-model-deployment"] = deployment
        with PipelineClient(base_url=uri, policies=[], **self._kwargs()) as client:
            try:
                response = client.send_request(HttpRequest("POST", uri, json=body, headers=headers),
                                               read_timeout=REQUEST_TIMEOUT_MS / 1000 + 30)
            except (ServiceRequestTimeoutError, ServiceResponseTimeoutError) as exc:
                raise ServiceTimeout(f"{what}: no answer in time ({_first_line(exc)}); the model may still be "
                                     f"loading") from None
            except (ServiceRequestError, ServiceResponseError) as exc:
                raise Unavailable(f"{what}: the scoring URI did not answer ({_first_line(exc)})") from None
            status, text = response.status_code, response.text()
        first = (text.strip().splitlines() or [""])[0][:300]
        if status == 200:
            try:
                return json.loads(text)
            except ValueError:
                return text
        if status == 408:
            raise ServiceTimeout(f"{what}: no answer in time (408 {first}); the model may still be loading")
        if status in (502, 503, 504):
            raise Unavailable(f"{what}: {status} {first}: its container is (re)starting")
        if status == 429:  # more requests in flight than 2 x max_concurrent_requests_per_instance x instances
            raise Unavailable(f"{what}: 429 {first}: the deployment has too many pending requests")
        if status in (401, 403):
            raise MLError(f"{what}: the endpoint refused its key ({status} {first}): it may have been regenerated "
                          f"meanwhile; retry")
        raise MLError(f"{what}: the scoring container failed ({status}): {first}")

    def delete_endpoint(self, name: str) -> None:
        self._endpoint_entity(name)  # NotFound, as the local backend (without listing its deployments)
        with azure_errors(f"deleting endpoint {name}"):
            self.ws.online_endpoints.begin_delete(name=name).result()


def _job_compute(job) -> str:
    """What the fine-tune step runs on, for the cost of a runaway job: serverless, its instance type (the step's
    `instance_type_finetune` input); else its compute cluster; "" when the job does not say."""
    for step in (getattr(job, "jobs", None) or {}).values():
        inputs = getattr(step, "inputs", None) or {}
        compute, size = _input_value(inputs.get("compute_finetune")), _input_value(inputs.get("instance_type_finetune"))
        if compute or size:
            return size if compute in ("", "serverless") and size else compute
    settings_ = getattr(job, "settings", None)
    return str(getattr(settings_, "default_compute", None) or getattr(job, "compute", None) or "")


def _input_value(value) -> str:
    """A pipeline step input as azure-ai-ml gives it back: a plain value, or an object with `.value`/`._data`."""
    for attr in ("value", "_data"):
        inner = getattr(value, attr, None)
        if inner is not None and not callable(inner):
            return str(inner)
    return "" if value is None else str(value)


def _created_at(entity) -> str:
    """A resource's creation time from its system data, ISO 8601 in UTC, "" when not given."""
    context = getattr(entity, "creation_context", None)
    created = getattr(context, "created_at", None) if context is not None else None
    if hasattr(created, "isoformat"):
        return (created if created.tzinfo else created.replace(tzinfo=timezone.utc)).isoformat()
    return str(created or "")


def _model_ref(model) -> str:
    """`name:version` of a deployment's model (its ARM id, or `azureml:name:version`)."""
    text = str(getattr(model, "id", None) or model or "")
    parts = text.rstrip("/").split("/")
    if "models" in parts and "versions" in parts:
        i = parts.index("models")
        return f"{parts[i + 1]}:{parts[-1]}"
    return text.removeprefix("azureml:")


def _at_arm(exc) -> bool:
    """Whether an SDK error came from Azure Resource Manager (not from an endpoint's scoring URI)."""
    request = getattr(getattr(exc, "response", None), "request", None)
    return "management.azure.com" in str(getattr(request, "url", "") or "management.azure.com")


def _name_taken(exc) -> bool:
    """Azure's answer to an online endpoint name another workspace of the region holds: 400 UserError
    "There is already an endpoint with this name, Endpoint name needs to be unique within a region."""
    code = str(getattr(getattr(exc, "error", None), "code", "") or "")
    text = f"{code} {exc}".lower()
    return exc.status_code in (400, 409) and any(
        phrase in text for phrase in ("unique within a region", "already an endpoint with this name"))
