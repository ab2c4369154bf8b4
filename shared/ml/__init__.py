"""Choose the ML backend from `TUNEFLOW_ML_BACKEND`. Implementations are imported on first use."""

from __future__ import annotations

from shared import settings
from shared.ml.base import (AlreadyExists, EndpointInfo, JobInfo, JobSpec, MLBackend, MLError, ModelRef,
                            NotConfigured, NotFound)

__all__ = ["AlreadyExists", "EndpointInfo", "JobInfo", "JobSpec", "MLBackend", "MLError", "ModelRef",
           "NotConfigured", "NotFound", "get_backend"]


def get_backend() -> MLBackend:
    kind = settings.get("TUNEFLOW_ML_BACKEND").lower()
    if kind == "local":
        from shared.ml.local import LocalWorkspace
        return LocalWorkspace(settings.state_dir())
    if kind == "azure":
        from shared.ml.azure import AzureWorkspace
        return AzureWorkspace()
    raise settings.SettingError(f"TUNEFLOW_ML_BACKEND={kind!r} is not a backend: use 'local' or 'azure'")
