"""The Azure ML backend (azure-ai-ml). Not built yet: every call says so, nothing pretends to work."""

from __future__ import annotations

from shared.ml.base import NotConfigured

_MESSAGE = ("the Azure ML backend is not available in this version of tuneflow: "
            "set TUNEFLOW_ML_BACKEND=local to use the local workspace")


class AzureWorkspace:
    def __getattr__(self, name: str):
        raise NotConfigured(_MESSAGE)
