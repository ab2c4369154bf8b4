"""One model version behind an endpoint, the way the deploy stage leaves it (for tests of what comes after)."""

from __future__ import annotations

from shared.ml.base import AlreadyExists, EndpointInfo, MLBackend, ModelRef


def serve(backend: MLBackend, endpoint: str, model: ModelRef, tags: dict, deployment: str = "v-1",
          deployment_tags: dict | None = None) -> EndpointInfo:
    """Endpoint (kept if there), a Succeeded deployment at 0 %, then 100 % of the traffic to it."""
    try:
        backend.create_endpoint(endpoint, tags)
    except AlreadyExists:
        pass
    backend.create_deployment(endpoint, deployment, model, deployment_tags or {})
    return backend.set_traffic(endpoint, {deployment: 100}, {})
