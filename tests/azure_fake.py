"""An in-memory Azure ML at the HTTP edge, as strict as the service: ARM (jobs, models, online
endpoints and deployments, computes, VM sizes, workspace), the azureml registry (discovery, models,
components) and the endpoints' scoring URIs.

azure-ai-ml runs for real on top of it: its generated clients, azure-core's pipeline, retries and
LRO polling, and `RequestsTransport` are all used; only the socket is replaced, by a `requests`
adapter that answers the way the services do. What "the way the services do" means was taken from
real recorded traffic (tests/reference/recordings/, see tests/reference/README.md) and, where no
recording covers it, from the Azure docs and public issue threads named next to each answer.

Behaviour a test can rely on (and set):
- ARM long-running operations. PUT of an online endpoint or deployment answers 201 with
  `Azure-AsyncOperation` (an `mfeOperationsStatus` URL) and `Location` (the resource); DELETE answers
  202 with `Azure-AsyncOperation` and `Location` (an `mfeOperationResults` URL). Meanwhile the
  resource's `provisioningState` is Creating / Updating / Deleting. Each poll of an operation URL
  advances that operation by one: it answers "in progress" for `lro_polls` polls, then Succeeded or
  Failed. Nobody polling = nothing happens, until `finish_operations()` (time passing).
  `fail_deployments = N`: the next N deployment creations are accepted, then their operation fails
  and the deployment stays, in state Failed. `failing_deployments = N` (older): refused up front, 400.
- Permissions by scope: `grants` (ARM scope prefixes; default: this workspace, as
  infra/app/rbac.bicep gives the app identity) and `grant(scope)`. Any other ARM call answers 403
  AuthorizationFailed (so `compute.list_sizes()`, a subscription-scope call, is refused by default).
- Endpoint names are unique per region: `FakeRegion`, shared by several FakeAzureML (one per
  workspace), owns the names and routes scoring hosts `{name}.{location}.inference.ml.azure.com`.
- The registry lists only active (not archived) versions unless asked `listViewType=All`, so
  `models.get(name, label="latest")` of an all-archived model raises the SDK's ValidationException.
- Scoring like a managed endpoint: key auth (401), `azureml-model-deployment` or traffic routing,
  only Succeeded deployments answer, `slow_answers = N` (408), `busy_answers = N` (429), `container_errors = N` (424, plain
  text), `fail_scoring_after = (deployment, n)` (that deployment answers n requests, then 424),
  `score_headers` (what each scoring request carried, key left out), and only the seed's request body `{"input_data": {"input_string": [conversation], ...}}`.
- Model versions must be integers 1..2147483647.
- Polling never sleeps: `transport()` records azure-core's sleeps in `slept` and returns at once.
- The workspace's MLflow tracking (`https://<location>.api.azureml.ms/mlflow/v1.0<workspace scope>/api/2.0/
  mlflow/metrics/get-history`): a bearer token for the ARM audience (401 otherwise), a grant on the
  workspace (403 with an empty body otherwise, as azure-sdk-for-python#31429 quotes), 404
  RESOURCE_DOES_NOT_EXIST for a run (job) that does not exist, 200 without `metrics` for a metric never
  logged, pages of at most `mlflow_page_size` with `next_page_token`. Per job a history: a job finished
  Completed gets DEFAULT_HISTORY (eval_loss 2.0 -> 1.6 -> 1.3, a falling loss curve) unless a test set its
  own with `set_metrics(job, eval_loss=[(step, value), ...], loss=..., late_reads=N)` (the first N reads of
  the run answer as if nothing were logged yet, as Azure ML logs metrics minutes late) or `no_metrics(job)`.
  Non-finite values go out as MLflow's protobuf JSON writes them ("NaN", "Infinity"), or as bare tokens
  with `mlflow_bare_non_finite`. `mlflow_unavailable = N`: the next N reads answer 503. Every read is
  logged in `mlflow_requests` (host, path, query, token audience).

Registry assets come from ../shared/reference/azureml/ specs, with tags as the REST API returns them
(strings).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import secrets
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import requests
import yaml
from requests.adapters import BaseAdapter

ARM = "https://management.azure.com"
ARM_HOST = "management.azure.com"
SUBSCRIPTION = "00000000-0000-0000-0000-00000000abcd"
RESOURCE_GROUP = "rg-tuneflow"
WORKSPACE = "ws-tuneflow"
LOCATION = "eastus"
PROVIDER = "Microsoft.MachineLearningServices"
REGISTRY_HOST = f"https://cert-{LOCATION}.experiments.azureml.net"
REGISTRY_SCOPE = "/mferp/managementfrontend/subscriptions/reg-sub/resourceGroups/reg-rg/providers/" \
                 "Microsoft.MachineLearningServices/registries/azureml"
WS_SCOPE = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
            f"{PROVIDER}/workspaces/{WORKSPACE}")
SYSTEM_DATA = {"createdAt": "2026-11-26T00:00:00Z", "createdBy": "tuneflow", "createdByType": "Application",
               "lastModifiedAt": "2026-11-26T00:00:00Z"}
# The GPU sizes of the region, as `compute.list_sizes()` reports them (when the caller may ask).
VM_SIZES = {"Standard_NC24ads_A100_v4": 1, "Standard_NC48ads_A100_v4": 2, "Standard_NC96ads_A100_v4": 4,
            "Standard_ND96asr_v4": 8, "Standard_NC6s_v3": 1, "Standard_DS3_v2": 0}

# --- What the service sends, with where each was found ---------------------------------------------

# Operation status while running. The recordings (online_endpoint_e2e, online_deployment_create) show
# "Updating" on every in-progress poll of an mfeOperationsStatus URL, for creations and updates alike,
# then "Succeeded" with an endTime; azure-core treats any non-terminal status as in progress.
OPERATION_RUNNING = "Updating"
NEVER = "0001-01-01T00:00:00+00:00"  # endTime of a running operation, as recorded
ASYNC_TIMEOUT = "PT30M"  # x-ms-async-operation-timeout on every recorded PUT/DELETE
# A deployment whose creation fails: the operation ends Failed with this error. Wording from the
# failures reported in Azure/mlops-v2#120 ("ERROR: (None) ResourceNotReady: User container has crashed
# or terminated: Liveness probe failed: HTTP probe failed with statuscode: 502") and
# MicrosoftLearning/mslearn-azure-ml#100 (same text, then "Container events: ..."), both from
# `online_deployments.begin_create_or_update(...).result()`. "(None)" is azure-core printing an error
# whose code is null, so the code is null here too.
DEPLOYMENT_FAILED_ERROR = {
    "code": None,
    "message": "ResourceNotReady: User container has crashed or terminated: Liveness probe failed: HTTP probe "
               "failed with statuscode: 502\nContainer events:\nKind: Pod, Name: LivenessProbeFailed, Type: Warning, "
               "Message: Liveness probe failed: HTTP probe failed with statuscode: 502"}
# ARM's refusal for a caller without the role: status 403 and this body. Wording from ARM answers quoted
# in Azure/ARO-RP#66 and #31 ("StatusCode=403 ... Code=AuthorizationFailed") and
# microsoft/foundry-dev-tools#555.
AUTHORIZATION_FAILED = ("The client '{oid}' with object id '{oid}' does not have authorization to perform action "
                        "'{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, "
                        "please refresh your credentials.")
# A second workspace of the region creating an endpoint name already taken. Message as quoted from the
# service in Azure/azureml-examples#1930 and #1931 (online endpoints in the SDK notebooks):
# {"errors":{"":["There is already an endpoint with this name, Endpoint name needs to be unique within a
# region. Try some other name."]},"title":"One or more validation errors occurred."} -- an ASP.NET
# validation-problem body, which is always status 400; MFE wraps errors as {"error": {"code":
# "UserError", ...}} (the batch-endpoint variant in ansible-collections/azure#2231 reads "(UserError) The
# specified endpoint name '...' is not available. Endpoint names must be unique within the region.").
NAME_TAKEN = json.dumps({"errors": {"": ["There is already an endpoint with this name, Endpoint name needs to be "
                                         "unique within a region. Try some other name."]},
                         "title": "One or more validation errors occurred."})
# Managed online endpoints (Server: azureml-frontdoor, recorded) answer scoring errors as text, not
# JSON, and append a help line: huggingface/Microsoft-Azure examples/foundry/deploy-vibevoice-asr shows a
# managed endpoint's timeout as "upstream request timeout\nPlease check this guide ..."; a Foundry
# deployment's 400 captured live was a JSON object followed by the same help line. The docs'
# "HTTP status codes" table (how-to-troubleshoot-online-endpoints) gives 401 for a refused key, 404
# for no deployment with positive weight, 408 when the model takes longer than request_timeout_ms,
# and 424 ("Model Error") for any non-200 from the container, with headers
# ms-azureml-model-error-statuscode / ms-azureml-model-error-reason.
HELP_LINE = ("\nPlease check this guide to understand why this error code might have been returned \n"
             "https://docs.microsoft.com/en-us/azure/machine-learning/how-to-troubleshoot-online-endpoints"
             "#http-status-codes\n")
SCORE_TIMEOUT = "upstream request timeout" + HELP_LINE
TOO_MANY_PENDING = "Too many pending requests" + HELP_LINE  # 429: the deployment's queue is full
# What azureml-inference-server-http answers (500) when run() raises or the body is not what it
# expects (its own tests assert this body); the frontdoor turns it into 424 + the help line.
CONTAINER_ERROR = json.dumps({"message": "An unexpected error occurred in scoring script. Check the logs for more "
                                         "info."}) + HELP_LINE
# The frontdoor's 401 bodies: "key_auth_access_denied" for a wrong key (MicrosoftDocs/azure-docs#98265,
# curl against a managed endpoint), "key_auth_bad_header_forbidden" for a missing/malformed header.
KEY_DENIED, KEY_HEADER_BAD = "key_auth_access_denied", "key_auth_bad_header_forbidden"
NO_DEPLOYMENT = "The endpoint doesn't have any valid deployment with positive weight" + HELP_LINE
NOT_READY = "no healthy upstream" + HELP_LINE  # modeled: envoy's answer when no container is up
MAX_MODEL_VERSION = 2**31 - 1  # Azure ML model versions are positive 32-bit integers
ENDPOINT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]")  # 3-32, letter first (Azure docs)
# What a finished fine-tune has logged, unless a test says otherwise: the Trainer's eval_loss at three
# evaluations (the first is the gate's baseline on Azure) and its running training loss (`loss`).
DEFAULT_HISTORY = {"eval_loss": [(10, 2.0), (20, 1.6), (30, 1.3)],
                   "loss": [(5, 2.4), (10, 2.1), (15, 1.9), (20, 1.7), (25, 1.5), (30, 1.4)]}
MLFLOW_PAGE_SIZE = 1000  # modeled: the page cap of Azure ML's MLflow is not documented
ARM_AUDIENCES = ("https://management.azure.com", "https://management.azure.com/",
                 "https://management.core.windows.net", "https://management.core.windows.net/")


def _tag_string(value) -> str:
    """Registry tags are strings over REST; structured YAML tags arrive JSON-encoded."""
    return value if isinstance(value, str) else json.dumps(value)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.0000000+00:00", time.gmtime())


def _user_error(status: int, message: str, code: str = "UserError"):
    return status, {"error": {"code": code, "message": message, "details": [], "additionalInfo": []}}


@dataclass
class Operation:
    """One ARM long-running operation: what it changes, and how many polls it still answers 'running'."""
    id: str  # "oeidp:<workspace id>:<uuid>" (endpoints), "odidp:..." (deployments), "jobidp:..." (jobs)
    kind: str  # "endpoints" | "deployments" | "jobs"
    key: object  # endpoint name, (endpoint, deployment) or job name
    action: str  # "create" | "update" | "delete" | "cancel"
    polls_left: int
    error: dict | None = None  # set: the operation ends Failed with this error
    start: str = field(default_factory=_now)
    end: str = ""  # set when finished

    @property
    def status(self) -> str:
        if not self.end:
            return OPERATION_RUNNING
        return "Failed" if self.error else "Succeeded"


@dataclass(eq=False)
class FakeRegion:
    """An Azure region: online endpoint names are unique in it across all workspaces, and its scoring
    hosts `{name}.{location}.inference.ml.azure.com` reach the workspace that owns the name."""
    location: str = LOCATION
    names: dict = field(default_factory=dict)  # endpoint name -> owning workspace scope
    workspaces: dict = field(default_factory=dict, repr=False)  # workspace scope -> FakeAzureML

    def __post_init__(self):
        self.lock = threading.RLock()  # SDK pollers call from their own threads
        self.time_passed = threading.Condition()
        self.epoch = 0  # bumped whenever a workspace's finish_operations() lets time pass

    def owner(self, endpoint: str) -> "FakeAzureML | None":
        return self.workspaces.get(self.names.get(endpoint, ""))

    def operation(self, op_id: str):
        for fake in self.workspaces.values():
            if op_id in fake.operations:
                return fake, fake.operations[op_id]
        return None, None


@dataclass(eq=False)
class FakeAzureML:
    reference: Path
    calls: list = field(default_factory=list)  # (method, path, JSON body or None) of every request
    jobs: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)  # (name, version) -> resource
    endpoints: dict = field(default_factory=dict)
    deployments: dict = field(default_factory=dict)  # (endpoint, name) -> resource
    keys: dict = field(default_factory=dict)  # endpoint -> primary key
    computes: dict = field(default_factory=dict)
    registry_models: dict = field(default_factory=dict)  # name -> [spec dicts]
    registry_components: dict = field(default_factory=dict)  # name -> [spec dicts], oldest first
    reply: str = "Photosynthesis turns light into chemical energy."
    clock: object = lambda: "2026-11-26T00:00:00.0000000+00:00"  # what the service stamps as creation time
    created_at_in_properties: bool = True  # current azure-ai-ml: properties["createdAt"]; older: absent
    endpoint_system_data: bool = True  # ARM's systemData on endpoints (the SDK's creation_context)
    throttled_deletes: int = 0  # the next N endpoint DELETEs answer 429 with Retry-After
    sticky_deletes: bool = False  # endpoint deletion "succeeds" but the endpoint stays (a service that lies)
    failing_deployments: int = 0  # the next N deployment PUTs are refused up front (400), as when quota runs out
    # -- where it is ---------------------------------------------------------------------------
    workspace: str = WORKSPACE
    resource_group: str = RESOURCE_GROUP
    subscription: str = SUBSCRIPTION
    region: FakeRegion | None = field(default=None, repr=False)  # shared by a region's workspaces; default: its own
    # -- how strict ----------------------------------------------------------------------------
    lro_polls: int = 2  # polls an operation answers "running" before it ends
    fail_deployments: int = 0  # the next N deployment creations are accepted, then their operation fails
    grants: list | None = None  # ARM scope prefixes the caller holds a role on; default [self.scope]
    slow_answers: int = 0  # the next N scoring requests answer 408 (the model took too long)
    busy_answers: int = 0  # the next N scoring requests answer 429 (too many pending requests)
    container_errors: int = 0  # the next N scoring requests answer 424 with a plain-text body
    fail_scoring_after: tuple | None = None  # (deployment, n): it answers n requests, then 424 to each one after
    # -- what happened -------------------------------------------------------------------------
    slept: list = field(default_factory=list)  # seconds azure-core asked the transport to sleep
    operations: dict = field(default_factory=dict)  # operation id -> Operation
    # -- MLflow tracking -----------------------------------------------------------------------
    metric_histories: dict = field(default_factory=dict)  # job -> {key: [(step, value), ...]}
    metrics_late: dict = field(default_factory=dict)  # job -> reads still answered "nothing logged yet"
    mlflow_page_size: int = MLFLOW_PAGE_SIZE
    mlflow_bare_non_finite: bool = False  # NaN/Infinity as bare JSON tokens instead of MLflow's strings
    mlflow_unavailable: int = 0  # the next N get-history reads answer 503
    mlflow_requests: list = field(default_factory=list)  # (host, path, query, token audience) of each read
    score_headers: list = field(default_factory=list)  # the request headers of each scoring request

    def __post_init__(self):
        self.region = self.region if self.region is not None else FakeRegion()
        self.location = self.region.location
        self.scope = (f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}/providers/"
                      f"{PROVIDER}/workspaces/{self.workspace}")
        self.workspace_id = str(uuid.uuid5(uuid.NAMESPACE_URL, self.scope.lower()))
        self.grants = list(self.grants) if self.grants is not None else [self.scope]
        self.region.workspaces[self.scope] = self
        self._latest_op: dict = {}  # (kind, key) -> id of the last operation started on that resource
        self._stamps = 0
        self._routes = self._route_table()
        for path in sorted(self.reference.glob("*.spec.yaml")):
            spec = yaml.safe_load(path.read_text())
            if spec.get("type") == "pipeline":
                self.registry_components.setdefault(spec["name"], []).append(spec)
            elif "legacy" not in path.name:
                self.registry_models.setdefault(spec["name"], []).append(spec)
        for specs in self.registry_components.values():
            specs.sort(key=lambda s: tuple(int(p) for p in str(s["version"]).split(".")))
        for specs in self.registry_models.values():
            specs.sort(key=lambda s: int(s["version"]))
        self.add_compute("gpu-cluster", "STANDARD_NC24ADS_A100_V4")

    # -- controls for tests ------------------------------------------------------------------

    def add_compute(self, name: str, vm_size: str, state: str = "Succeeded") -> None:
        self.computes[name] = {"id": f"{self.scope}/computes/{name}", "name": name, "location": self.location,
                               "type": "Microsoft.MachineLearningServices/workspaces/computes",
                               "properties": {"computeType": "AmlCompute", "provisioningState": state,
                                              "computeLocation": self.location,
                                              "properties": {"vmSize": vm_size, "vmPriority": "Dedicated",
                                                             "scaleSettings": {"minNodeCount": 0, "maxNodeCount": 1}}}}

    def finish_job(self, name: str, status: str = "Completed") -> None:
        self.jobs[name]["properties"]["status"] = status
        if status == "Completed":  # the fine-tune logged its Trainer metrics (unless a test set others)
            self.metric_histories.setdefault(name, {k: list(v) for k, v in DEFAULT_HISTORY.items()})

    def set_metrics(self, job: str, late_reads: int = 0, **histories) -> None:
        """What run `job` logged: `eval_loss=[(step, value), ...]`, `loss=...`, any key; the first
        `late_reads` get-history reads of the run answer as if nothing were logged yet."""
        self.metric_histories[job] = {k: list(v) for k, v in histories.items()}
        self.metrics_late[job] = late_reads

    def no_metrics(self, job: str) -> None:
        """The run logged nothing at all (and never will)."""
        self.set_metrics(job)

    @property
    def mlflow_host(self) -> str:
        return f"{self.location}.api.azureml.ms"

    def grant(self, scope: str) -> None:
        """The caller gets a role on `scope` (and everything under it)."""
        self.grants.append(scope)

    def finish_operations(self) -> None:
        """Time passes: every pending operation ends (Succeeded, or Failed where set to fail), and the
        SDK pollers waiting for time to pass poll again."""
        with self.region.lock:
            for op in list(self.operations.values()):
                if not op.end:
                    op.polls_left = 0
                    self._complete(op)
        with self.region.time_passed:
            self.region.epoch += 1
            self.region.time_passed.notify_all()

    def bodies(self, method: str, path_suffix: str) -> list:
        """The JSON bodies sent with `method` to paths ending in `path_suffix`, in order."""
        return [data for m, p, data in self.calls if m == method and p.endswith(path_suffix)]

    def session(self) -> requests.Session:
        s = requests.Session()
        s.mount("https://", _Adapter(self))
        return s

    def transport(self):
        """azure-core's RequestsTransport on the fake. Its `sleep` (between LRO polls, before retries)
        records the delay in `slept` and never really sleeps.

        azure-core polls an operation in a background thread ("LROPoller(...)") from the moment
        `begin_*` returns. Between polls that thread waits for time to pass, and time passes only while
        a caller waits on a poller (`result()` / `wait()`) or when `finish_operations()` is called: so a
        caller that never waits leaves its resource Creating, as it would stay for minutes in Azure."""
        from azure.core.pipeline.transport import RequestsTransport
        fake = self

        class NoSleepTransport(RequestsTransport):
            def sleep(self, duration):
                fake.slept.append(duration)
                if threading.current_thread().name.startswith("LROPoller("):
                    fake._wait_for_time()

        return NoSleepTransport(session=self.session(), session_owner=False)

    def _wait_for_time(self) -> None:
        region = self.region
        with region.time_passed:
            epoch, pause = region.epoch, 0.05
            while region.epoch == epoch and not _a_caller_waits():
                region.time_passed.wait(pause)  # a real pause only while nobody waits: a poller left behind
                pause = min(2 * pause, 1.0)

    # -- routing -----------------------------------------------------------------------------

    def handle(self, method: str, url: str, headers, body: bytes | None):
        """(status, body, headers): body a dict/list (JSON), a str (text) or None."""
        with self.region.lock:
            return self._handle(method, url, headers, body)

    def _handle(self, method: str, url: str, headers, body: bytes | None):
        parsed = urlparse(url)
        path, host = parsed.path, parsed.netloc
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        data = _parse_body(body)
        if host.endswith(".inference.ml.azure.com"):  # a scoring URI: the workspace owning the name answers
            owner = self.region.owner(host.split(".")[0])
            if owner is not None and owner is not self:
                return owner.handle(method, url, headers, body)
        if host.endswith(".api.azureml.ms"):  # the region's MLflow host: the workspace in the path answers
            other = self._workspace_of(re.sub(r"^/mlflow/v[0-9.]+", "", path))
            if other is not None and other is not self:
                return other.handle(method, url, headers, body)
        self.calls.append((method, path, data))
        if host == ARM_HOST and not _is_operation_url(path):
            refused = self._authorize(method, path, headers)
            if refused:
                return refused
            other = self._workspace_of(path)
            if other is not None and other is not self:
                return other.handle(method, url, headers, body)
        for verb, pattern, fn in self._routes:
            m = pattern.fullmatch(path)
            if m and verb == method:
                return fn(data=data, headers=headers, host=host, query=query, path=path, **m.groupdict())
        return 404, {"error": {"code": "NoRoute", "message": f"fake Azure ML has no route for {method} {path}"}}

    def _route_table(self):
        ws, reg = re.escape(self.scope), re.escape(REGISTRY_SCOPE)
        sub = rf"/subscriptions/{re.escape(self.subscription)}/providers/{PROVIDER}/locations/(?P<location>[^/]+)"
        name, endpoint = r"(?P<name>[^/]+)", ws + r"/onlineEndpoints/(?P<endpoint>[^/]+)"
        routes = [
            # registry (public: anyone may read the azureml registry)
            ("GET", r"/registrymanagement/v1\.0/registries/(?P<name>[^/]+)/discovery", self._discovery),
            ("GET", reg + rf"/models/{name}/versions", self._registry_versions("model")),
            ("GET", reg + rf"/models/{name}/versions/(?P<version>[^/]+)", self._registry_version("model")),
            ("GET", reg + rf"/components/{name}/versions", self._registry_versions("component")),
            ("GET", reg + rf"/components/{name}/versions/(?P<version>[^/]+)", self._registry_version("component")),
            # subscription scope
            ("GET", sub + r"/vmSizes", self._vm_sizes),
            ("GET", sub + r"/mfeOperationsStatus/(?P<op_id>[^/]+)", self._operation_status),
            ("GET", sub + r"/mfeOperationResults/(?P<op_id>[^/]+)", self._operation_result),
            # workspace
            ("GET", ws, self._workspace),
            ("GET", ws + rf"/computes/{name}", self._get("computes")),
            ("GET", ws + r"/jobs", self._list_jobs),
            ("GET", ws + rf"/jobs/{name}", self._get("jobs")),
            ("PUT", ws + rf"/jobs/{name}", self._put_job),
            ("POST", ws + rf"/jobs/{name}/cancel", self._cancel_job),
            ("GET", ws + rf"/models/{name}/versions", self._list_model_versions),
            ("GET", ws + rf"/models/{name}/versions/(?P<version>[^/]+)", self._get_model),
            ("PUT", ws + rf"/models/{name}/versions/(?P<version>[^/]+)", self._put_model),
            ("GET", ws + r"/onlineEndpoints", self._list_endpoints),
            ("GET", ws + rf"/onlineEndpoints/{name}", self._get("endpoints")),
            ("PUT", ws + rf"/onlineEndpoints/{name}", self._put_endpoint),
            ("DELETE", ws + rf"/onlineEndpoints/{name}", self._delete_endpoint),
            ("POST", ws + rf"/onlineEndpoints/{name}/listKeys", self._list_keys),
            ("GET", endpoint + r"/deployments", self._list_deployments),
            ("GET", endpoint + rf"/deployments/{name}", self._get_deployment),
            ("PUT", endpoint + rf"/deployments/{name}", self._put_deployment),
            ("DELETE", endpoint + rf"/deployments/{name}", self._delete_deployment),
            # scoring
            ("POST", r"/score", self._score),
            # MLflow tracking (the workspace's mlFlowTrackingUri, https); azureml-mlflow with mlflow >= 2 says v2.0
            ("GET", r"/mlflow/v[12]\.0" + ws + r"/api/2\.0/mlflow/metrics/get-history", self._metric_history),
        ]
        return [(verb, re.compile(pattern), fn) for verb, pattern, fn in routes]

    def _workspace_of(self, path: str) -> "FakeAzureML | None":
        for scope, fake in self.region.workspaces.items():
            if _under(path, scope):
                return fake
        return None

    # -- permissions -------------------------------------------------------------------------

    def _authorize(self, method: str, path: str, headers):
        if any(_under(path, scope) for scope in self.grants):
            return None
        oid = _caller_oid(headers)
        message = AUTHORIZATION_FAILED.format(oid=oid, action=_arm_action(method, path), scope=path)
        return 403, {"error": {"code": "AuthorizationFailed", "message": message}}

    # -- long-running operations -------------------------------------------------------------

    def _start(self, kind: str, key, action: str, error: dict | None = None) -> Operation:
        prefix = {"endpoints": "oeidp", "deployments": "odidp", "jobs": "jobidp"}[kind]
        op = Operation(id=f"{prefix}:{self.workspace_id}:{uuid.uuid4()}", kind=kind, key=key, action=action,
                       polls_left=self.lro_polls, error=error)
        self.operations[op.id] = op
        self._latest_op[(kind, key)] = op.id
        return op

    def _operation_url(self, op: Operation, query: dict, results: bool = False) -> str:
        what = "mfeOperationResults" if results else "mfeOperationsStatus"
        api = query.get("api-version", "2022-02-01-preview")
        return (f"{ARM}/subscriptions/{self.subscription}/providers/{PROVIDER}/locations/{self.location}/"
                f"{what}/{op.id}?api-version={api}")

    def _accepted(self, status: int, resource, op: Operation, query: dict, location: str):
        """The answer to a PUT/DELETE that started `op`, with the headers ARM sends (as recorded)."""
        headers = {"Azure-AsyncOperation": self._operation_url(op, query), "Location": location,
                   "x-ms-async-operation-timeout": ASYNC_TIMEOUT}
        if isinstance(resource, dict):
            resource["properties"].setdefault("properties", {})["AzureAsyncOperationUri"] = \
                self._operation_url(op, query).split("&")[0]
        return status, resource, headers

    def _resource_url(self, path_suffix: str, query: dict) -> str:
        return f"{ARM}{self.scope}/{path_suffix}?api-version={query.get('api-version', '2022-02-01-preview')}"

    def _advance(self, op: Operation) -> None:
        if op.end:
            return
        if op.polls_left > 0:
            op.polls_left -= 1
        else:
            self._complete(op)

    def _complete(self, op: Operation) -> None:
        """The operation ends: apply what it did to its resource (if no later operation replaced it)."""
        op.end = _now()
        if self._latest_op.get((op.kind, op.key)) != op.id:
            return
        table = {"endpoints": self.endpoints, "deployments": self.deployments, "jobs": self.jobs}[op.kind]
        resource = table.get(op.key)
        if resource is None:
            return
        props = resource["properties"]
        if op.kind == "jobs":
            if props["status"] not in ("Completed", "Failed", "Canceled"):
                props["status"] = "Canceled"
        elif op.action == "delete" and not op.error:
            if op.kind == "endpoints" and self.sticky_deletes:
                props["provisioningState"] = "Succeeded"
                for key in [k for k in self.deployments if k[0] == op.key]:
                    self.deployments[key]["properties"]["provisioningState"] = "Succeeded"
            else:
                self._remove(op.kind, op.key)
        else:
            props["provisioningState"] = "Failed" if op.error else "Succeeded"
            if op.kind == "endpoints" and not op.error:
                props["scoringUri"] = f"https://{op.key}.{self.location}.inference.ml.azure.com/score"
                props["swaggerUri"] = f"https://{op.key}.{self.location}.inference.ml.azure.com/swagger.json"

    def _remove(self, kind: str, key) -> None:
        if kind == "deployments":
            del self.deployments[key]
            return
        del self.endpoints[key]
        self.keys.pop(key, None)
        if self.region.names.get(key) == self.scope:
            del self.region.names[key]
        for dkey in [k for k in self.deployments if k[0] == key]:
            del self.deployments[dkey]

    def _operation_status(self, op_id, **_):
        owner, op = self.region.operation(op_id)
        if op is None:
            return self._not_found("operation", op_id)
        owner._advance(op)
        body = {"id": f"/subscriptions/{owner.subscription}/providers/{PROVIDER}/locations/{owner.location}/"
                      f"mfeOperationsStatus/{op.id}",
                "name": op.id, "startTime": op.start, "endTime": op.end or NEVER, "percentComplete": 0.0,
                "status": op.status}
        if op.error and op.end:
            body["error"] = op.error  # ARM's operation status carries the error once Failed
        return 200, body

    def _operation_result(self, op_id, query, **_):
        """The Location of a DELETE (or a job cancel): 202 while running, then 204."""
        owner, op = self.region.operation(op_id)
        if op is None:
            return self._not_found("operation", op_id)
        owner._advance(op)
        if not op.end:
            return 202, None, {"Location": owner._operation_url(op, query, results=True)}
        if op.error:
            return 200, {"error": op.error}
        return 204, None

    # -- resources ---------------------------------------------------------------------------

    @staticmethod
    def _not_found(kind: str, name: str):
        return 404, {"error": {"code": "UserError", "message": f"{kind} {name} not found",
                               "details": [], "innerError": {"code": "NotFound"}}}

    def _get(self, table: str):
        def fn(name, **_):
            item = getattr(self, table).get(name)
            return (200, item) if item else self._not_found(table[:-1], name)
        return fn

    # registry
    def _discovery(self, name, **_):
        return 200, {"registryName": name, "primaryRegion": LOCATION, "regions": [LOCATION],
                     "primaryRegionResourceProviderUri": f"{REGISTRY_HOST}/", "subscriptionId": "reg-sub",
                     "resourceGroup": "reg-rg", "workspaceName": None}

    def _model_resource(self, spec: dict) -> dict:
        name, version = spec["name"], str(spec["version"])
        return {"id": f"azureml://registries/azureml/models/{name}/versions/{version}", "name": version,
                "type": "models", "systemData": SYSTEM_DATA,
                "properties": {"modelUri": f"azureml://registries/azureml/models/{name}/versions/{version}",
                               "modelType": "mlflow_model", "isArchived": bool(spec.get("isArchived", False)),
                               "tags": {k: _tag_string(v) for k, v in (spec.get("tags") or {}).items()},
                               "properties": {k: _tag_string(v) for k, v in (spec.get("properties") or {}).items()},
                               "systemMetadata": spec.get("system_metadata") or {}, "flavors": {}}}

    def _component_resource(self, spec: dict) -> dict:
        name, version = spec["name"], str(spec["version"])
        return {"id": f"azureml://registries/azureml/components/{name}/versions/{version}", "name": version,
                "type": "components", "systemData": SYSTEM_DATA,
                "properties": {"componentSpec": spec, "isAnonymous": False, "isArchived": False,
                               "description": spec.get("description"), "tags": {}, "properties": {}}}

    def _registry_assets(self, kind: str):
        """(versions by name, resource builder) of the registry's models or components."""
        if kind == "model":
            return self.registry_models, self._model_resource
        return self.registry_components, self._component_resource

    def _registry_versions(self, kind: str):
        def fn(name, query, **_):
            # `label="latest"` is this list with `$orderBy=createdtime desc&$top=1` and no listViewType
            # (azure-ai-ml 1.35 _utils/_asset_utils.py _get_latest -> _registry_utils.list_registry_assets);
            # the service's default view is ActiveOnly: archived versions are not listed.
            assets, resource = self._registry_assets(kind)
            if name not in assets:
                return self._not_found(kind, name)
            view = query.get("listViewType", "ActiveOnly")
            specs = [s for s in assets[name]
                     if view == "All" or bool(s.get("isArchived", False)) == (view == "ArchivedOnly")]
            if "desc" in query.get("$orderBy", "createdtime desc"):
                specs = specs[::-1]
            if "$top" in query:
                specs = specs[:int(query["$top"])]
            return 200, {"value": [resource(s) for s in specs]}
        return fn

    def _registry_version(self, kind: str):
        def fn(name, version, **_):  # a pinned version is readable, archived or not
            assets, resource = self._registry_assets(kind)
            for spec in assets.get(name, []):
                if str(spec["version"]) == version:
                    return 200, resource(spec)
            return self._not_found(kind, f"{name}:{version}")
        return fn

    # workspace and subscription
    def _workspace(self, **_):
        return 200, {"id": self.scope, "name": self.workspace, "location": self.location,
                     "type": "Microsoft.MachineLearningServices/workspaces", "kind": "Default",
                     "properties": {"friendlyName": self.workspace, "workspaceId": self.workspace_id,
                                    "provisioningState": "Succeeded",
                                    "discoveryUrl": f"https://{self.location}.api.azureml.ms/discovery",
                                    "mlFlowTrackingUri": f"azureml://{self.location}.api.azureml.ms/mlflow/v1.0"
                                                         f"{self.scope}"},
                     "identity": {"type": "SystemAssigned", "principalId": "p", "tenantId": "t"},
                     "systemData": SYSTEM_DATA}

    def _vm_sizes(self, location, **_):
        return 200, {"value": [{"name": n, "family": "standardNCADSA100v4Family", "vCPUs": 24, "gpus": g,
                                "osVhdSizeMB": 1047552, "maxResourceVolumeMB": 65536, "memoryGB": 220.0,
                                "lowPriorityCapable": True, "premiumIO": True,
                                "supportedComputeTypes": ["AmlCompute"]} for n, g in VM_SIZES.items()]}

    # jobs
    def _put_job(self, name, data, **_):
        if name in self.jobs:  # Azure: a job's definition cannot be changed once created
            return 400, {"error": {"code": "UserError", "message": f"Job {name} already exists; a job cannot be updated"}}
        props = dict(data["properties"], status="NotStarted")
        self.jobs[name] = {"id": f"{self.scope}/jobs/{name}", "name": name,
                           "type": "Microsoft.MachineLearningServices/workspaces/jobs",
                           "properties": props, "systemData": dict(SYSTEM_DATA, createdAt=self._stamp())}
        return 201, self.jobs[name]

    def _list_jobs(self, query, **_):
        """Jobs - List: `tag` keeps the jobs that have that tag key (any value); archived jobs are not listed."""
        key = query.get("tag")
        return 200, {"value": [j for j in self.jobs.values() if key is None or key in (j["properties"].get("tags") or {})]}

    def _stamp(self) -> str:
        """Creation times that advance a second per resource, as a real service's clock does between calls."""
        self._stamps += 1
        return (datetime(2026, 11, 26, tzinfo=timezone.utc) + timedelta(seconds=self._stamps)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _cancel_job(self, name, query, **_):
        """202 + Location (the generated client's begin_cancel polls it); the job ends Canceled."""
        job = self.jobs.get(name)
        if job is None:
            return self._not_found("job", name)
        if job["properties"]["status"] not in ("Completed", "Failed", "Canceled"):
            job["properties"]["status"] = "CancelRequested"
        op = self._start("jobs", name, "cancel")
        return 202, None, {"Location": self._operation_url(op, query, results=True)}

    # models
    def _list_model_versions(self, name, **_):
        return 200, {"value": [m for (n, _v), m in self.models.items() if n == name]}

    def _get_model(self, name, version, **_):
        item = self.models.get((name, version))
        return (200, item) if item else self._not_found("model", f"{name}:{version}")

    def _put_model(self, name, version, data, **_):
        if not re.fullmatch(r"[1-9][0-9]*", version) or int(version) > MAX_MODEL_VERSION:
            # The rule: versions of a registered model are positive integers (Azure/azureml-examples#2725)
            # stored as 32-bit; the wording of the refusal is modeled (no recording of it was found).
            return _user_error(400, f"Model version '{version}' is invalid: a model version must be a positive "
                                    f"integer no greater than {MAX_MODEL_VERSION}.")
        props = dict(data["properties"])
        props["flavors"] = props.get("flavors") or {"python_function": {"data": {"loader_module": "mlflow.transformers"}}}
        props.setdefault("provisioningState", "Succeeded")
        status = 200 if (name, version) in self.models else 201  # recorded: 201 for a new version
        self.models[(name, version)] = {"id": f"{self.scope}/models/{name}/versions/{version}", "name": version,
                                        "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
                                        "properties": props, "systemData": SYSTEM_DATA}
        return status, self.models[(name, version)]

    # online endpoints
    def _list_endpoints(self, **_):
        return 200, {"value": list(self.endpoints.values())}

    def _put_endpoint(self, name, data, query, **_):
        if not ENDPOINT_NAME.fullmatch(name):  # wording modeled
            return _user_error(400, f"Invalid endpoint name '{name}': 3 to 32 characters, a letter first, then "
                                    "letters, digits and hyphens, not ending with a hyphen.")
        owner = self.region.names.get(name)
        if owner is not None and owner != self.scope:
            return _user_error(400, NAME_TAKEN)
        previous = self.endpoints.get(name)
        props = dict(data.get("properties") or {})
        problem = self._traffic_problem(name, props.get("traffic") or {}, props.get("mirrorTraffic") or {})
        if problem:
            return _user_error(400, problem)
        kept = (previous or {}).get("properties", {})
        props["properties"] = dict(props.get("properties") or {})
        props["properties"]["azureml.onlineendpointid"] = f"{self.scope}/onlineEndpoints/{name}".lower()
        if self.created_at_in_properties:
            props["properties"]["createdAt"] = kept.get("properties", {}).get("createdAt") or self.clock()
        props.update(provisioningState="Updating" if previous else "Creating",
                     scoringUri=kept.get("scoringUri"), swaggerUri=kept.get("swaggerUri"),
                     traffic=props.get("traffic") or {}, mirrorTraffic=props.get("mirrorTraffic") or {},
                     publicNetworkAccess="Enabled")
        props.setdefault("description", None)
        props.setdefault("compute", None)
        self.endpoints[name] = {"id": f"{self.scope}/onlineEndpoints/{name}", "name": name, "location": self.location,
                                "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
                                "tags": data.get("tags") or {}, "kind": "Managed",
                                "identity": {"type": "SystemAssigned", "principalId": "p", "tenantId": "t"},
                                "properties": props}
        if self.endpoint_system_data:
            self.endpoints[name]["systemData"] = SYSTEM_DATA
        self.region.names[name] = self.scope
        self.keys.setdefault(name, secrets.token_hex(16))
        op = self._start("endpoints", name, "update" if previous else "create")
        # Recorded: 201 for a creation and for an update (the traffic PUT of online_deployment_create).
        return self._accepted(201, self.endpoints[name], op, query,
                              self._resource_url(f"onlineEndpoints/{name}", query))

    def _traffic_problem(self, name: str, traffic: dict, mirror: dict) -> str:
        """What the service refuses in an endpoint's traffic (wording modeled): shares that are not whole
        percents, deployments that do not exist or are not Succeeded, live shares not summing to 0 or 100,
        mirror traffic to more than one deployment, above 50 %, or to one that takes live traffic."""
        for kind, shares in (("traffic", traffic), ("mirrorTraffic", mirror)):
            for deployment, pct in shares.items():
                if not isinstance(pct, int) or isinstance(pct, bool) or not 0 <= pct <= 100:
                    return f"Invalid {kind} value {pct!r} for deployment {deployment}: an integer from 0 to 100."
                item = self.deployments.get((name, deployment))
                if item is None:
                    return f"Deployment {deployment} in {kind} does not exist on endpoint {name}."
                if pct and item["properties"]["provisioningState"] != "Succeeded":
                    return (f"Deployment {deployment} is in {item['properties']['provisioningState']} state; "
                            f"only a Succeeded deployment can take {kind}.")
        if sum(traffic.values()) not in (0, 100):
            return f"Traffic values need to sum to 0 or 100; they sum to {sum(traffic.values())}."
        mirrored = {d: p for d, p in mirror.items() if p}
        if len(mirrored) > 1 or sum(mirrored.values()) > 50:
            return "Mirror traffic can go to one deployment only, at most 50 percent."
        if any(traffic.get(d) for d in mirrored):
            return "A deployment cannot receive both live traffic and mirror traffic."
        return ""

    def _delete_endpoint(self, name, query, **_):
        if self.throttled_deletes:
            self.throttled_deletes -= 1
            return 429, {"error": {"code": "TooManyRequests", "message": "Rate limit exceeded"}}, {"Retry-After": "7"}
        if name not in self.endpoints:
            return 204, None  # ARM: deleting what is not there succeeds with 204
        self.endpoints[name]["properties"]["provisioningState"] = "Deleting"
        for key in [k for k in self.deployments if k[0] == name]:
            self.deployments[key]["properties"]["provisioningState"] = "Deleting"
        op = self._start("endpoints", name, "delete")
        return self._accepted(202, None, op, query, self._operation_url(op, query, results=True))

    def _list_keys(self, name, **_):
        if name not in self.endpoints:
            return self._not_found("endpoint", name)
        return 200, {"primaryKey": self.keys[name], "secondaryKey": self.keys[name][::-1]}

    # online deployments
    def _list_deployments(self, endpoint, **_):
        if endpoint not in self.endpoints:
            return self._not_found("endpoint", endpoint)
        return 200, {"value": [d for (e, _n), d in self.deployments.items() if e == endpoint]}

    def _get_deployment(self, endpoint, name, **_):
        item = self.deployments.get((endpoint, name))
        return (200, item) if item else self._not_found("deployment", f"{endpoint}/{name}")

    def _put_deployment(self, endpoint, name, data, query, **_):
        if self.failing_deployments:
            self.failing_deployments -= 1
            return 400, {"error": {"code": "OutOfQuota", "message": "Not enough quota available for the instance type"}}
        if endpoint not in self.endpoints:
            return self._not_found("endpoint", endpoint)
        previous = self.deployments.get((endpoint, name))
        error = None
        if previous is None and self.fail_deployments:
            self.fail_deployments -= 1
            error = DEPLOYMENT_FAILED_ERROR
        props = dict(data["properties"], provisioningState="Updating" if previous else "Creating")
        props["scaleSettings"] = props.get("scaleSettings") or {"scaleType": "Default"}
        props.setdefault("endpointComputeType", "Managed")
        props.setdefault("egressPublicNetworkAccess", "Enabled")
        sku = dict(data.get("sku") or {"name": "Default", "capacity": 1}, tier="Standard")
        self.deployments[(endpoint, name)] = {
            "id": f"{self.scope}/onlineEndpoints/{endpoint}/deployments/{name}", "name": name, "location": self.location,
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments",
            "tags": data.get("tags") or {}, "kind": "Managed", "sku": sku, "properties": props,
            "systemData": (previous or {}).get("systemData") or dict(SYSTEM_DATA, createdAt=self._stamp())}
        op = self._start("deployments", (endpoint, name), "update" if previous else "create", error)
        # Recorded: 201 for a creation; an update is answered 201 too (as the recorded endpoint update).
        return self._accepted(201, self.deployments[(endpoint, name)], op, query,
                              self._resource_url(f"onlineEndpoints/{endpoint}/deployments/{name}", query))

    def _delete_deployment(self, endpoint, name, query, **_):
        if (endpoint, name) not in self.deployments:
            return 204, None
        props = self.endpoints[endpoint]["properties"]
        if (props.get("traffic") or {}).get(name) or (props.get("mirrorTraffic") or {}).get(name):
            # A deployment that carries live traffic cannot be deleted (Azure docs, safe rollout);
            # the wording is modeled.
            return _user_error(400, f"Deployment {name} of endpoint {endpoint} has live traffic: set its traffic "
                                    "to 0 before deleting it.")
        self.deployments[(endpoint, name)]["properties"]["provisioningState"] = "Deleting"
        op = self._start("deployments", (endpoint, name), "delete")
        return self._accepted(202, None, op, query, self._operation_url(op, query, results=True))

    # scoring
    def _score(self, host, headers, data, **_):
        """A managed online endpoint's scoring URI, in the order its frontdoor and container check."""
        name = host.split(".")[0]
        self.score_headers.append({k.lower(): v for k, v in headers.items() if k.lower() != "authorization"})
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            return 404, f"No endpoint {name} in this region" + HELP_LINE
        auth = headers.get("Authorization") or ""
        if not auth.startswith("Bearer ") or not auth[len("Bearer "):].strip():
            return 401, KEY_HEADER_BAD
        if auth[len("Bearer "):] not in (self.keys[name], self.keys[name][::-1]):
            return 401, KEY_DENIED
        deployment = headers.get("azureml-model-deployment")
        if deployment is None:
            traffic = {d: w for d, w in (endpoint["properties"].get("traffic") or {}).items() if w > 0}
            if not traffic:
                return 404, NO_DEPLOYMENT
            deployment = max(traffic, key=traffic.get)
        target = self.deployments.get((name, deployment))
        if target is None:
            return 404, f"Deployment {deployment} not found for endpoint {name}" + HELP_LINE
        routed = {"azureml-model-deployment": deployment}
        if target["properties"]["provisioningState"] != "Succeeded":
            return 503, NOT_READY, routed
        if self.slow_answers:
            self.slow_answers -= 1
            return 408, SCORE_TIMEOUT, routed
        if self.busy_answers:  # more than 2 x max_concurrent_requests_per_instance x instances in flight
            self.busy_answers -= 1
            return 429, TOO_MANY_PENDING, routed
        failed = dict(routed, **{"ms-azureml-model-error-statuscode": "500",
                                 "ms-azureml-model-error-reason": "model_error"})
        if self.container_errors:
            self.container_errors -= 1
            return 424, CONTAINER_ERROR, failed
        if self.fail_scoring_after and self.fail_scoring_after[0] == deployment:
            if self.fail_scoring_after[1] <= 0:
                return 424, CONTAINER_ERROR, failed
            self.fail_scoring_after = (deployment, self.fail_scoring_after[1] - 1)
        if not _seed_shape(data):
            # The container reads input_data.input_string as a list of conversations and renders each
            # one through the chat template; a flat list of turns (dicts, not lists) makes run() raise,
            # the inference server answers 500 and the frontdoor turns that into 424 ("Model Error": any
            # non-200 from the container). So 424, not 400, whatever the container said.
            return 424, CONTAINER_ERROR, failed
        return 200, {"output": self.reply}, routed

    # MLflow tracking
    def _metric_history(self, host, headers, query, path, **_):
        """GET .../api/2.0/mlflow/metrics/get-history, in the order the service checks: host, token, role,
        parameters, run, then the history page."""
        if host != self.mlflow_host:
            return 404, {"error": {"code": "NoRoute", "message": f"fake Azure ML: no MLflow on {host}"}}
        audience = _token_audience(headers)
        self.mlflow_requests.append((host, path, dict(query), audience))
        if audience is None or audience not in ARM_AUDIENCES:
            # modeled: no recording of the refusal; a bearer token for another audience is refused like none
            return 401, {"error": {"code": "Unauthorized", "message": "Unauthorized: a bearer token for "
                                                                      "https://management.azure.com is required"}}
        if not any(_under(self.scope, scope) for scope in self.grants):
            return 403, ""  # azure-sdk-for-python#31429: "failed with error code 403 != 200. Response body: ''"
        if self.mlflow_unavailable:
            self.mlflow_unavailable -= 1
            return 503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "Service temporarily unavailable"}
        for required in ("run_id", "metric_key"):
            if not query.get(required) and not (required == "run_id" and query.get("run_uuid")):
                return 400, _mlflow_error("INVALID_PARAMETER_VALUE", f"Missing value for required parameter "
                                                                     f"'{required}'.")
        run, key = query.get("run_id") or query.get("run_uuid"), query["metric_key"]
        try:
            size = int(query.get("max_results", self.mlflow_page_size))
        except ValueError:
            return 400, _mlflow_error("INVALID_PARAMETER_VALUE", f"Invalid value {query['max_results']!r} for "
                                                                 f"parameter 'max_results' supplied.")
        if size <= 0:  # MLflow's handler refuses explicit non-positive page sizes
            return 400, _mlflow_error("INVALID_PARAMETER_VALUE", f"Invalid value {size} for parameter "
                                                                 f"'max_results' supplied. It must be a positive integer.")
        if run not in self.jobs:
            return 404, _mlflow_error("RESOURCE_DOES_NOT_EXIST", f"Run with id={run} not found")
        if self.metrics_late.get(run, 0) > 0:
            self.metrics_late[run] -= 1
            return 200, {}
        history = (self.metric_histories.get(run) or {}).get(key) or []
        try:
            offset = json.loads(base64.b64decode(query["page_token"]))["offset"] if query.get("page_token") else 0
        except (ValueError, KeyError, TypeError):
            return 400, _mlflow_error("INVALID_PARAMETER_VALUE", f"Invalid page token {query['page_token']!r}")
        size = min(size, self.mlflow_page_size)
        page = history[offset:offset + size]
        body = {}
        if page:  # protobuf JSON drops an empty repeated field: a metric never logged is `{}`
            base_ms = 1_796_000_000_000
            body["metrics"] = [{"key": key, "value": self._mlflow_value(value), "timestamp": base_ms + 1000 * step,
                                "step": step} for step, value in page]
        if offset + size < len(history):
            body["next_page_token"] = base64.b64encode(json.dumps({"offset": offset + size}).encode()).decode()
        return 200, body

    def _mlflow_value(self, value):
        value = float(value)
        if math.isfinite(value) or self.mlflow_bare_non_finite:
            return value  # json.dumps writes a non-finite float as the bare token NaN / Infinity
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")  # protobuf JSON


def _a_caller_waits() -> bool:
    """Whether some thread (the test's, or a worker of the code under test) is blocked in an azure-core
    LROPoller's result() or wait()."""
    me = threading.get_ident()
    for ident, frame in sys._current_frames().items():
        while ident != me and frame is not None:
            code = frame.f_code
            if code.co_name in ("result", "wait") and code.co_filename.endswith(os.path.join("polling", "_poller.py")):
                return True
            frame = frame.f_back
    return False


def _seed_shape(data) -> bool:
    """{"input_data": {"input_string": [conversation], "parameters": {...}}, "params": {}} with one
    conversation: a non-empty list of {"role": str, "content": str}."""
    if not isinstance(data, dict) or not isinstance(data.get("input_data"), dict):
        return False
    inner = data["input_data"]
    conversations = inner.get("input_string")
    if not isinstance(conversations, list) or len(conversations) != 1:
        return False
    [conversation] = conversations
    if not isinstance(conversation, list) or not conversation:
        return False
    turns_ok = all(isinstance(t, dict) and isinstance(t.get("role"), str) and isinstance(t.get("content"), str)
                   for t in conversation)
    return turns_ok and isinstance(inner.get("parameters", {}), dict) and isinstance(data.get("params", {}), dict)


def _mlflow_error(code: str, message: str) -> dict:
    """MLflow's REST error body (mlflow.exceptions.MlflowException.serialize_as_json)."""
    return {"error_code": code, "message": message}


def _token_audience(headers) -> str | None:
    """The `aud` of the bearer token, None without one (or when it is not a JWT)."""
    auth = (headers or {}).get("Authorization") or ""
    if not auth.startswith("Bearer "):
        return None
    try:
        import jwt
        return str(jwt.decode(auth[len("Bearer "):], options={"verify_signature": False}).get("aud") or "")
    except Exception:  # noqa: BLE001 - not a JWT: no audience
        return None


def _parse_body(body: bytes | None):
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


def _under(path: str, scope: str) -> bool:
    path, scope = path.lower().rstrip("/"), scope.lower().rstrip("/")
    return path == scope or path.startswith(scope + "/")


def _is_operation_url(path: str) -> bool:
    """ARM's operation URLs are signed (t/c/s/h in the recorded query) and polled by whoever started
    the operation, whatever their role at subscription scope."""
    return "/mfeOperationsStatus/" in path or "/mfeOperationResults/" in path


def _arm_action(method: str, path: str) -> str:
    """'Microsoft.MachineLearningServices/workspaces/onlineEndpoints/write' for a PUT of an endpoint."""
    parts = path.strip("/").split("/")
    try:
        i = [p.lower() for p in parts].index("providers")
    except ValueError:
        return f"Microsoft.Resources/subscriptions/{'read' if method == 'GET' else 'write'}"
    rest = parts[i + 1:]
    types = [rest[0]] + rest[1::2]  # namespace, then every other segment is a type (the others are names)
    verb = {"GET": "read", "PUT": "write", "PATCH": "write", "DELETE": "delete"}.get(method, "action")
    return "/".join(types + [verb])  # POST .../listKeys -> .../listKeys/action


def _caller_oid(headers) -> str:
    auth = (headers or {}).get("Authorization") or ""
    try:
        import jwt
        return jwt.decode(auth.split(" ", 1)[1], options={"verify_signature": False}).get("oid") or "unknown"
    except Exception:  # noqa: BLE001 - no token or not a JWT: ARM would say 401; the caller is "unknown"
        return "unknown"


class FakeCredential:
    """A token credential as Entra ID would answer: a JWT per scope, its `aud` the scope's resource
    (azure-ai-ml checks the audience and reads the caller's ids when it submits a pipeline job).
    Unsigned in spirit: nothing but the fake ever sees them."""

    OID = "22222222-0000-0000-0000-000000000001"

    def _token(self, scopes) -> str:
        import jwt
        resource = scopes[0].removesuffix("/.default") if scopes else "https://management.azure.com"
        claims = {"aud": resource, "oid": self.OID, "upn": "tuneflow@example.com",
                  "tid": "33333333-0000-0000-0000-0000000000aa", "exp": int(time.time()) + 3600}
        return jwt.encode(claims, "fake-azure-ml-test-signing-key-32b", algorithm="HS256")

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken
        return AccessToken(self._token(scopes), int(time.time()) + 3600)

    def get_token_info(self, *scopes, options=None):
        from azure.core.credentials import AccessTokenInfo
        return AccessTokenInfo(self._token(scopes), int(time.time()) + 3600)


_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden", 404: "Not Found", 408: "Request Timeout", 409: "Conflict", 424: "Failed Dependency",
            429: "Too Many Requests", 503: "Service Unavailable"}


class _Adapter(BaseAdapter):
    def __init__(self, fake: FakeAzureML):
        super().__init__()
        self.fake = fake

    def send(self, request, **kwargs):
        body = request.body.encode() if isinstance(request.body, str) else request.body
        status, payload, *extra = self.fake.handle(request.method, request.url, request.headers, body)
        response = requests.Response()
        if isinstance(payload, str):
            data, content_type = payload.encode(), "text/plain; charset=utf-8"
        else:
            data, content_type = (b"" if payload is None else json.dumps(payload).encode()), "application/json; charset=utf-8"
        response.status_code, response._content, response._content_consumed = status, data, True
        response.raw = io.BytesIO(data)
        response.headers["content-type"] = content_type
        response.headers["x-ms-request-id"] = secrets.token_hex(8)
        for name, value in (extra[0] if extra else {}).items():
            response.headers[name] = value
        response.url, response.request, response.encoding = request.url, request, "utf-8"
        response.reason = _REASONS.get(status, "")
        return response

    def close(self):
        pass
