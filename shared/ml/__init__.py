"""Choose the ML backend from `TUNEFLOW_ML_BACKEND`. Implementations are imported on first use."""

from __future__ import annotations

from shared import settings
from shared.ml.base import (AlreadyExists, EndpointInfo, JobInfo, JobSpec, MLBackend, MLError, ModelRef,
                            NotConfigured, NotFound, Throttled)

__all__ = ["AlreadyExists", "EndpointInfo", "JobInfo", "JobSpec", "MLBackend", "MLError", "ModelRef",
           "NotConfigured", "NotFound", "Throttled", "backend_kind", "base_model_name", "get_backend"]


DEFAULT_BASE_MODELS = {"local": "smollm2-135m-instruct", "azure": "Phi-4"}  # Azure: active, chat-completion fine-tuning


def backend_kind() -> str:
    kind = settings.get("TUNEFLOW_ML_BACKEND").lower()
    if kind not in DEFAULT_BASE_MODELS:
        raise settings.SettingError(f"TUNEFLOW_ML_BACKEND={kind!r} is not a backend: use 'local' or 'azure'")
    return kind


def base_model_name() -> str:
    """TUNEFLOW_BASE_MODEL, or the backend's default."""
    return settings.get("TUNEFLOW_BASE_MODEL") or DEFAULT_BASE_MODELS[backend_kind()]


def get_backend() -> MLBackend:
    kind = backend_kind()
    if kind == "local":
        from shared.ml.local import LocalWorkspace
        return LocalWorkspace(settings.state_dir())
    if kind == "azure":
        from shared.ml.azure import AzureWorkspace
        return AzureWorkspace()
    raise AssertionError(kind)
