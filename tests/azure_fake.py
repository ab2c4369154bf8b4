"""An in-memory Azure ML at the HTTP edge: ARM (jobs, models, online endpoints and deployments,
computes, VM sizes, workspace), the azureml registry (discovery, models, components) and the
endpoints' scoring URIs.

azure-ai-ml runs for real on top of it: its generated clients, azure-core's pipeline and
`RequestsTransport` are all used; only the socket is replaced, by a `requests` adapter that
answers the way the services do (resource JSON in ARM's envelope, `{"error": {...}}` with the
HTTP status, paged lists, ARM long-running operations that finish at once). Registry assets come
from ../shared/reference/azureml/ specs, with tags as the REST API returns them (strings).
"""

from __future__ import annotations

import io
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import requests
import yaml
from requests.adapters import BaseAdapter

ARM = "https://management.azure.com"
SUBSCRIPTION = "00000000-0000-0000-0000-00000000abcd"
RESOURCE_GROUP = "rg-tuneflow"
WORKSPACE = "ws-tuneflow"
LOCATION = "eastus"
REGISTRY_HOST = f"https://cert-{LOCATION}.experiments.azureml.net"
REGISTRY_SCOPE = "/mferp/managementfrontend/subscriptions/reg-sub/resourceGroups/reg-rg/providers/" \
                 "Microsoft.MachineLearningServices/registries/azureml"
WS_SCOPE = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
            f"Microsoft.MachineLearningServices/workspaces/{WORKSPACE}")
SYSTEM_DATA = {"createdAt": "2026-11-26T00:00:00Z", "createdBy": "tuneflow", "createdByType": "Application",
               "lastModifiedAt": "2026-11-26T00:00:00Z"}
# The GPU sizes of the region, as `compute.list_sizes()` reports them.
VM_SIZES = {"Standard_NC24ads_A100_v4": 1, "Standard_NC48ads_A100_v4": 2, "Standard_NC96ads_A100_v4": 4,
            "Standard_ND96asr_v4": 8, "Standard_NC6s_v3": 1, "Standard_DS3_v2": 0}


def _tag_string(value) -> str:
    """Registry tags are strings over REST; structured YAML tags arrive JSON-encoded."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclass
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
    throttled_deletes: int = 0  # the next N DELETEs answer 429 with Retry-After
    sticky_deletes: bool = False  # DELETE answers 200 but the endpoint stays (a service that lies)
    failing_deployments: int = 0  # the next N deployment PUTs are refused, as when the quota runs out

    def __post_init__(self):
        for path in sorted(self.reference.glob("*.spec.yaml")):
            spec = yaml.safe_load(path.read_text())
            if spec.get("type") == "pipeline":
                self.registry_components.setdefault(spec["name"], []).append(spec)
            elif "legacy" not in path.name:
                self.registry_models.setdefault(spec["name"], []).append(spec)
        for specs in self.registry_components.values():
            specs.sort(key=lambda s: tuple(int(p) for p in str(s["version"]).split(".")))
        self.add_compute("gpu-cluster", "STANDARD_NC24ADS_A100_V4")

    # -- controls for tests ------------------------------------------------------------------

    def add_compute(self, name: str, vm_size: str, state: str = "Succeeded") -> None:
        self.computes[name] = {"id": f"{WS_SCOPE}/computes/{name}", "name": name, "location": LOCATION,
                               "type": "Microsoft.MachineLearningServices/workspaces/computes",
                               "properties": {"computeType": "AmlCompute", "provisioningState": state,
                                              "computeLocation": LOCATION,
                                              "properties": {"vmSize": vm_size, "vmPriority": "Dedicated",
                                                             "scaleSettings": {"minNodeCount": 0, "maxNodeCount": 1}}}}

    def finish_job(self, name: str, status: str = "Completed") -> None:
        self.jobs[name]["properties"]["status"] = status

    def bodies(self, method: str, path_suffix: str) -> list:
        """The JSON bodies sent with `method` to paths ending in `path_suffix`, in order."""
        return [data for m, p, data in self.calls if m == method and p.endswith(path_suffix)]

    def session(self) -> requests.Session:
        s = requests.Session()
        s.mount("https://", _Adapter(self))
        return s

    def transport(self):
        from azure.core.pipeline.transport import RequestsTransport
        return RequestsTransport(session=self.session(), session_owner=False)

    # -- routing -----------------------------------------------------------------------------

    def handle(self, method: str, url: str, headers, body: bytes | None):
        parsed = urlparse(url)
        path = parsed.path
        data = json.loads(body) if body else None
        self.calls.append((method, path, data))
        for verb, pattern, fn in self._routes():
            m = re.fullmatch(pattern, path)
            if m and verb == method:
                return fn(data=data, headers=headers, host=parsed.netloc, **m.groupdict())
        return 404, {"error": {"code": "NoRoute", "message": f"fake Azure ML has no route for {method} {path}"}}

    def _routes(self):
        ws, reg = re.escape(WS_SCOPE), re.escape(REGISTRY_SCOPE)
        return [
            ("GET", r"/registrymanagement/v1\.0/registries/(?P<name>[^/]+)/discovery", self._discovery),
            ("GET", reg + r"/models/(?P<name>[^/]+)/versions", self._registry_latest("model")),
            ("GET", reg + r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", self._registry_version("model")),
            ("GET", reg + r"/components/(?P<name>[^/]+)/versions", self._registry_latest("component")),
            ("GET", reg + r"/components/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", self._registry_version("component")),
            ("GET", ws, self._workspace),
            ("GET", ws + r"/computes/(?P<name>[^/]+)", self._get("computes")),
            ("GET", rf"/subscriptions/{SUBSCRIPTION}/providers/Microsoft\.MachineLearningServices/locations/"
                    rf"(?P<location>[^/]+)/vmSizes", self._vm_sizes),
            ("GET", ws + r"/jobs/(?P<name>[^/]+)", self._get("jobs")),
            ("PUT", ws + r"/jobs/(?P<name>[^/]+)", self._put_job),
            ("GET", ws + r"/models/(?P<name>[^/]+)/versions", self._list_model_versions),
            ("GET", ws + r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", self._get_model),
            ("PUT", ws + r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", self._put_model),
            ("GET", ws + r"/onlineEndpoints", self._list_endpoints),
            ("GET", ws + r"/onlineEndpoints/(?P<name>[^/]+)", self._get("endpoints")),
            ("PUT", ws + r"/onlineEndpoints/(?P<name>[^/]+)", self._put_endpoint),
            ("DELETE", ws + r"/onlineEndpoints/(?P<name>[^/]+)", self._delete_endpoint),
            ("POST", ws + r"/onlineEndpoints/(?P<name>[^/]+)/listKeys", self._list_keys),
            ("GET", ws + r"/onlineEndpoints/(?P<endpoint>[^/]+)/deployments", self._list_deployments),
            ("GET", ws + r"/onlineEndpoints/(?P<endpoint>[^/]+)/deployments/(?P<name>[^/]+)", self._get_deployment),
            ("PUT", ws + r"/onlineEndpoints/(?P<endpoint>[^/]+)/deployments/(?P<name>[^/]+)", self._put_deployment),
            ("POST", r"/score", self._score),
        ]

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

    def _registry_latest(self, kind: str):
        def fn(name, **_):  # the SDK asks for `$orderBy=createdtime desc&$top=1`
            assets, resource = self._registry_assets(kind)
            specs = assets.get(name)
            return (200, {"value": [resource(specs[-1])]}) if specs else self._not_found(kind, name)
        return fn

    def _registry_version(self, kind: str):
        def fn(name, version, **_):
            assets, resource = self._registry_assets(kind)
            for spec in assets.get(name, []):
                if str(spec["version"]) == version:
                    return 200, resource(spec)
            return self._not_found(kind, f"{name}:{version}")
        return fn

    # workspace
    def _workspace(self, **_):
        return 200, {"id": WS_SCOPE, "name": WORKSPACE, "location": LOCATION,
                     "type": "Microsoft.MachineLearningServices/workspaces", "kind": "Default",
                     "properties": {"friendlyName": WORKSPACE, "workspaceId": "11111111-2222-3333-4444-555555555555",
                                    "discoveryUrl": f"https://{LOCATION}.api.azureml.ms/discovery",
                                    "mlFlowTrackingUri": f"azureml://{LOCATION}.api.azureml.ms/mlflow/v1.0{WS_SCOPE}"},
                     "systemData": SYSTEM_DATA}

    def _vm_sizes(self, location, **_):
        return 200, {"value": [{"name": n, "family": "standardNCADSA100v4Family", "vCPUs": 24, "gpus": g,
                                "osVhdSizeMB": 1047552, "maxResourceVolumeMB": 65536, "memoryGB": 220.0,
                                "lowPriorityCapable": True, "premiumIO": True,
                                "supportedComputeTypes": ["AmlCompute"]} for n, g in VM_SIZES.items()]}

    # jobs and models
    def _put_job(self, name, data, **_):
        if name in self.jobs:  # Azure: a job's definition cannot be changed once created
            return 400, {"error": {"code": "UserError", "message": f"Job {name} already exists; a job cannot be updated"}}
        props = dict(data["properties"], status="NotStarted")
        self.jobs[name] = {"id": f"{WS_SCOPE}/jobs/{name}", "name": name, "type": "Microsoft.MachineLearningServices/workspaces/jobs",
                           "properties": props, "systemData": SYSTEM_DATA}
        return 201, self.jobs[name]

    def _list_model_versions(self, name, **_):
        return 200, {"value": [m for (n, _v), m in self.models.items() if n == name]}

    def _get_model(self, name, version, **_):
        item = self.models.get((name, version))
        return (200, item) if item else self._not_found("model", f"{name}:{version}")

    def _put_model(self, name, version, data, **_):
        props = dict(data["properties"])
        props["flavors"] = props.get("flavors") or {"python_function": {"data": {"loader_module": "mlflow.transformers"}}}
        self.models[(name, version)] = {"id": f"{WS_SCOPE}/models/{name}/versions/{version}", "name": version,
                                        "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
                                        "properties": props, "systemData": SYSTEM_DATA}
        return 200, self.models[(name, version)]

    # endpoints
    def _list_endpoints(self, **_):
        return 200, {"value": list(self.endpoints.values())}

    def _put_endpoint(self, name, data, **_):
        props = dict(data.get("properties") or {})
        previous = (self.endpoints.get(name) or {}).get("properties", {}).get("properties", {})
        props["properties"] = dict(props.get("properties") or {})
        if self.created_at_in_properties:
            props["properties"]["createdAt"] = previous.get("createdAt") or self.clock()
        props.update(provisioningState="Succeeded",
                     scoringUri=f"https://{name}.{LOCATION}.inference.ml.azure.com/score",
                     swaggerUri=f"https://{name}.{LOCATION}.inference.ml.azure.com/swagger.json")
        self.endpoints[name] = {"id": f"{WS_SCOPE}/onlineEndpoints/{name}", "name": name, "location": LOCATION,
                                "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
                                "tags": data.get("tags") or {}, "kind": "Managed",
                                "identity": {"type": "SystemAssigned", "principalId": "p", "tenantId": "t"},
                                "properties": props}
        if self.endpoint_system_data:
            self.endpoints[name]["systemData"] = SYSTEM_DATA
        self.keys.setdefault(name, secrets.token_hex(16))
        return 200, self.endpoints[name]

    def _delete_endpoint(self, name, **_):
        if self.throttled_deletes:
            self.throttled_deletes -= 1
            return 429, {"error": {"code": "TooManyRequests", "message": "Rate limit exceeded"}}
        if self.sticky_deletes and name in self.endpoints:
            return 200, None
        if name not in self.endpoints:
            return 204, None  # ARM: deleting what is not there succeeds with 204
        del self.endpoints[name]
        self.keys.pop(name, None)
        for key in [k for k in self.deployments if k[0] == name]:
            del self.deployments[key]
        return 200, None

    def _list_keys(self, name, **_):
        if name not in self.endpoints:
            return self._not_found("endpoint", name)
        return 200, {"primaryKey": self.keys[name], "secondaryKey": self.keys[name][::-1]}

    def _list_deployments(self, endpoint, **_):
        if endpoint not in self.endpoints:
            return self._not_found("endpoint", endpoint)
        return 200, {"value": [d for (e, _n), d in self.deployments.items() if e == endpoint]}

    def _get_deployment(self, endpoint, name, **_):
        item = self.deployments.get((endpoint, name))
        return (200, item) if item else self._not_found("deployment", f"{endpoint}/{name}")

    def _put_deployment(self, endpoint, name, data, **_):
        if self.failing_deployments:
            self.failing_deployments -= 1
            return 400, {"error": {"code": "OutOfQuota", "message": "Not enough quota available for the instance type"}}
        if endpoint not in self.endpoints:
            return self._not_found("endpoint", endpoint)
        props = dict(data["properties"], provisioningState="Succeeded")
        props["scaleSettings"] = props.get("scaleSettings") or {"scaleType": "Default"}
        self.deployments[(endpoint, name)] = {
            "id": f"{WS_SCOPE}/onlineEndpoints/{endpoint}/deployments/{name}", "name": name, "location": LOCATION,
            "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments",
            "tags": data.get("tags") or {}, "kind": "Managed", "sku": data.get("sku") or {"name": "Default", "capacity": 1},
            "properties": props, "systemData": SYSTEM_DATA}
        return 200, self.deployments[(endpoint, name)]

    def _score(self, host, headers, data, **_):
        name = host.split(".")[0]
        if name not in self.endpoints or not self.deployments:
            return 404, {"error": {"code": "NotFound", "message": f"no endpoint {name}"}}
        if headers.get("Authorization") != f"Bearer {self.keys[name]}":
            return 401, {"message": "key auth failed"}
        messages = ((data or {}).get("input_data") or {}).get("input_string")
        if not messages:
            return 400, {"message": "input_data.input_string is required"}
        return 200, {"output": self.reply}


class FakeCredential:
    """A token credential as Entra ID would answer: a JWT per scope, its `aud` the scope's resource
    (azure-ai-ml checks the audience and reads the caller's ids when it submits a pipeline job).
    Unsigned in spirit: nothing but the fake ever sees them."""

    def _token(self, scopes) -> str:
        import jwt
        resource = scopes[0].removesuffix("/.default") if scopes else "https://management.azure.com"
        claims = {"aud": resource, "oid": "22222222-0000-0000-0000-000000000001", "upn": "tuneflow@example.com",
                  "tid": "33333333-0000-0000-0000-0000000000aa", "exp": int(time.time()) + 3600}
        return jwt.encode(claims, "fake-azure-ml-test-signing-key-32b", algorithm="HS256")

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken
        return AccessToken(self._token(scopes), int(time.time()) + 3600)

    def get_token_info(self, *scopes, options=None):
        from azure.core.credentials import AccessTokenInfo
        return AccessTokenInfo(self._token(scopes), int(time.time()) + 3600)


class _Adapter(BaseAdapter):
    def __init__(self, fake: FakeAzureML):
        super().__init__()
        self.fake = fake

    def send(self, request, **kwargs):
        body = request.body.encode() if isinstance(request.body, str) else request.body
        status, payload = self.fake.handle(request.method, request.url, request.headers, body)
        response = requests.Response()
        data = b"" if payload is None else json.dumps(payload).encode()
        response.status_code, response._content, response._content_consumed = status, data, True
        response.raw = io.BytesIO(data)
        response.headers["content-type"] = "application/json; charset=utf-8"
        response.headers["x-ms-request-id"] = secrets.token_hex(8)
        if status == 429:
            response.headers["Retry-After"] = "7"
        response.url, response.request, response.encoding = request.url, request, "utf-8"
        response.reason = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
                           404: "Not Found"}.get(status, "")
        return response

    def close(self):
        pass
