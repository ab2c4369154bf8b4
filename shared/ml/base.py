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


@dataclass(frozen=True)
class EndpointInfo:
    name: str
    tags: dict[str, str]
    provisioning_state: str  # Creating | Updating | Succeeded | Failed | Deleting
    created_at: str = ""
    scoring_uri: str = ""
    deployments: tuple[DeploymentInfo, ...] = ()


class MLBackend(Protocol):
    workspace_id: str  # what makes endpoint names unique beyond one workspace (Azure: per region)

    def submit(self, spec: JobSpec) -> JobInfo: ...
    def get_job(self, name: str) -> JobInfo: ...
    def job_metrics(self, job: JobInfo) -> dict: ...  # eval_loss, base_eval_loss, train_loss (curve), ...; {} if none yet
    def register_model(self, name: str, version: str, job: str, tags: dict) -> ModelRef: ...
    def get_model(self, name: str, version: str) -> ModelRef: ...
    def deploy(self, endpoint: str, model: ModelRef, tags: dict) -> EndpointInfo: ...
    def get_endpoint(self, name: str) -> EndpointInfo: ...
    def invoke(self, endpoint: str, body: dict) -> object: ...
    def list_endpoints(self) -> list[EndpointInfo]: ...
    def delete_endpoint(self, name: str) -> None: ...
    def set_endpoint_tags(self, name: str, tags: dict) -> EndpointInfo: ...
