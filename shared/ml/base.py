"""The ML backend interface. `local` (MLflow + subprocesses) and `azure` (azure-ai-ml) implement it.

Create-style calls raise `AlreadyExists` for a name already taken and lookups raise `NotFound`;
the domain does check-before-create with these, so a repeated delivery is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

TERMINAL_JOB_STATES = ("Completed", "Failed", "Canceled")


class MLError(RuntimeError):
    pass


class NotFound(MLError):
    pass


class AlreadyExists(MLError):
    pass


class NotConfigured(MLError):
    pass


class ServiceTimeout(MLError):
    """The service (an endpoint still loading its model) did not answer in time: worth retrying."""


class Unavailable(ServiceTimeout):
    """The endpoint answers 502/503/504, or not at all: its container is (re)starting. Worth retrying."""


class NameTaken(MLError):
    """A name Azure makes unique beyond this workspace (online endpoints: per region) is held elsewhere.
    Retrying cannot help: the flow records it and stops."""


class HasTraffic(MLError):
    """A deployment that carries live or mirror traffic cannot be deleted (Azure refuses it, 400)."""


class NotReady(MLError):
    """A resource is still being created or updated by an earlier attempt: retry later, change nothing."""


class Throttled(MLError):
    """The service asked us to slow down; `retry_after` is its hint in seconds (0: none given)."""

    def __init__(self, message: str, retry_after: float = 0.0):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class JobSpec:
    name: str
    experiment: str
    display_name: str
    base_model: str
    train_uri: str  # prepared/<dataset>/<version>/train.jsonl
    test_uri: str
    params: dict
    tags: dict


@dataclass(frozen=True)
class JobInfo:
    name: str
    status: str  # NotStarted | Running | Completed | Failed | Canceled (Azure ML's names)
    tags: dict = field(default_factory=dict)
    output_uri: str = ""  # the trained MLflow model (Azure: azureml://jobs/<job>/outputs/trained_model)
    error: str = ""
    metrics: dict = field(default_factory=dict)
    created_at: str = ""  # ISO 8601 with an offset, "" when unknown
    compute: str = ""  # the instance type (or cluster) it runs on, for the cost of a runaway job


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    tags: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DeploymentInfo:
    name: str
    instance_type: str
    instance_count: int
    provisioning_state: str  # Creating | Updating | Succeeded | Failed | Deleting
    traffic: int = 0  # percent of the endpoint's live traffic
    mirror_traffic: int = 0  # percent of the live traffic copied to it (answers discarded)
    created_at: str = ""
    tags: dict = field(default_factory=dict)  # flow-id, model, dataset-prepared-at: set when it is created
    model: str = ""  # name:version


@dataclass(frozen=True)
class EndpointInfo:
    name: str
    tags: dict[str, str]
    provisioning_state: str  # Creating | Updating | Succeeded | Failed | Deleting
    created_at: str = ""
    scoring_uri: str = ""
    deployments: tuple[DeploymentInfo, ...] = ()

    def deployment(self, name: str) -> DeploymentInfo | None:
        return next((d for d in self.deployments if d.name == name), None)

    @property
    def traffic(self) -> dict[str, int]:
        """Live traffic by deployment (only those with a share)."""
        return {d.name: d.traffic for d in self.deployments if d.traffic}

    @property
    def mirror_traffic(self) -> dict[str, int]:
        return {d.name: d.mirror_traffic for d in self.deployments if d.mirror_traffic}


class MLBackend(Protocol):
    workspace_id: str  # what makes endpoint names unique beyond one workspace (Azure: per region)

    def submit(self, spec: JobSpec) -> JobInfo: ...
    def get_job(self, name: str) -> JobInfo: ...
    def job_metrics(self, job: JobInfo) -> dict: ...  # eval_loss, base_eval_loss, train_loss (curve), ...; {} if none yet
    def register_model(self, name: str, version: str, job: str, tags: dict) -> ModelRef: ...
    def get_model(self, name: str, version: str) -> ModelRef: ...
    def list_jobs(self, tags: dict) -> list[JobInfo]: ...  # jobs carrying all these tags, any state
    def cancel_job(self, name: str) -> None: ...  # NotFound; a job already ended is left as it is
    # Online endpoints: one stable address and key, several deployments behind it.
    def create_endpoint(self, name: str, tags: dict) -> EndpointInfo: ...  # AlreadyExists; NameTaken (per region)
    def create_deployment(self, endpoint: str, deployment: str, model: ModelRef, tags: dict) -> DeploymentInfo: ...
    # ^ created at 0 % traffic and waited for until Succeeded; one already there is waited for and returned;
    #   MLError when it ends Failed (it stays, Failed, as in Azure), NotReady when it is still Creating.
    def delete_deployment(self, endpoint: str, deployment: str) -> None: ...  # NotFound; HasTraffic
    def set_traffic(self, endpoint: str, traffic: dict, mirror: dict, tags: dict | None = None) -> EndpointInfo: ...
    # ^ live shares summing to 0 or 100, at most one mirror of at most 50 %, to Succeeded deployments only;
    #   `tags` (all of them) in the same update. A long-running operation, waited for.
    def get_endpoint(self, name: str) -> EndpointInfo: ...
    def invoke(self, endpoint: str, body: dict, deployment: str | None = None) -> object: ...
    # ^ through the live split, or straight to `deployment` (the `azureml-model-deployment` header)
    def deployment_errors(self, endpoint: str, deployment: str) -> int | None: ...
    # ^ server errors the deployment answered so far (a counter); None where the backend cannot tell
    def list_endpoints(self) -> list[EndpointInfo]: ...
    def delete_endpoint(self, name: str) -> None: ...
    def set_endpoint_tags(self, name: str, tags: dict) -> EndpointInfo: ...


def check_traffic(endpoint: str, deployments: dict[str, str], traffic: dict, mirror: dict) -> None:
    """Azure's rules for an endpoint's traffic (`deployments`: name -> provisioning state), as one line each:
    the local workspace enforces them, and tests/azure_fake.py answers them as ARM does."""
    for kind, shares in (("traffic", traffic), ("mirror traffic", mirror)):
        for name, pct in shares.items():
            if name not in deployments:
                raise MLError(f"endpoint {endpoint}: {kind} for deployment {name}, which does not exist")
            if not isinstance(pct, int) or isinstance(pct, bool) or not 0 <= pct <= 100:
                raise MLError(f"endpoint {endpoint}: {kind} of {name} is {pct!r}, not a whole percent 0-100")
            if pct and deployments[name] != "Succeeded":
                raise MLError(f"endpoint {endpoint}: {kind} for deployment {name}, which is {deployments[name]}, "
                              f"not Succeeded")
    total = sum(traffic.values())
    if total not in (0, 100):
        raise MLError(f"endpoint {endpoint}: live traffic sums to {total}, not 0 or 100")
    mirrored = {n: p for n, p in mirror.items() if p}
    if len(mirrored) > 1 or sum(mirrored.values()) > 50:
        raise MLError(f"endpoint {endpoint}: mirror traffic {mirrored} must go to one deployment, at most 50 %")
    both = [n for n in mirrored if traffic.get(n)]
    if both:
        raise MLError(f"endpoint {endpoint}: deployment {both[0]} cannot take both live and mirror traffic")
