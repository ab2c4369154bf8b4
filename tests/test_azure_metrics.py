"""The quality gate's evidence on Azure: a job's MLflow metric history, read over the workspace's MLflow REST API
(shared/ml/metrics.py) and folded into eval_loss (the lowest), base_eval_loss (the first) and the curves.

The folding is tested on tables; the reader through the strict fake (tests/azure_fake.py: ARM-audience token,
workspace grants, MLflow's error shape, pages) with azure-core's pipeline for real; then job_events' handler
(shared.registration.handle_decision) on the Azure backend and real Azurite flow records.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timezone

import pytest

from shared.ml import metrics
from shared.ml.base import JobInfo, MLError, NotConfigured
from tests.serving import serve
from tests.test_ml_contract import TAGS, AzureDriver

NAN, INF = math.nan, math.inf
JOB = "ft-azure-0000aaaa"


def entries(*pts, key="eval_loss"):
    """get-history `metrics` entries from (step, value) pairs, as the REST API sends them."""
    return [{"key": key, "value": v, "timestamp": 1_796_000_000_000 + 1000 * s, "step": s} for s, v in pts]


def same(a, b) -> bool:
    """Equal, NaN equal to NaN (the gate reads NaN as 'diverged', so it must come through as NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


# -- folding: tables ----------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    (1.5, 1.5), (2, 2.0), ("1.25", 1.25), ("NaN", NAN), ("nan", NAN), ("Infinity", INF), ("-Infinity", -INF),
    (NAN, NAN), (INF, INF), (1.7976931348623157e308, INF), (-1.7976931348623157e308, -INF),  # SQL stores' ±inf
    pytest.param(10**400, INF, id="huge-int"), (None, None), (True, None), ("abc", None), ({}, None), ([1], None),
])
def test_a_value_as_mlflow_json_carries_it(raw, expected):
    assert same(metrics.value_of(raw), expected)


@pytest.mark.parametrize("histories, expected", [
    pytest.param({"eval_loss": entries((10, 2.0), (20, 1.6), (30, 1.3))},
                 {"eval_loss": 1.3, "base_eval_loss": 2.0, "eval_curve": [[10, 2.0], [20, 1.6], [30, 1.3]]},
                 id="first-is-baseline-lowest-is-eval"),
    pytest.param({"eval_loss": entries((10, 2.0), (20, 1.2), (30, 1.5))},
                 {"eval_loss": 1.2, "base_eval_loss": 2.0, "eval_curve": [[10, 2.0], [20, 1.2], [30, 1.5]]},
                 id="lowest-not-last-the-best-checkpoint"),
    pytest.param({"eval_loss": entries((30, 1.3), (10, 2.0), (20, 1.6))},
                 {"eval_loss": 1.3, "base_eval_loss": 2.0, "eval_curve": [[10, 2.0], [20, 1.6], [30, 1.3]]},
                 id="first-by-step-not-by-order"),
    pytest.param({"eval_loss": entries((40, 1.1))}, {"eval_loss": 1.1, "eval_curve": [[40, 1.1]]},
                 id="one-evaluation-no-baseline"),
    pytest.param({"eval_loss": entries((40, 1.4), (40, 1.1))}, {"eval_loss": 1.1, "eval_curve": [[40, 1.4], [40, 1.1]]},
                 id="two-evaluations-at-one-step-no-baseline"),
    pytest.param({"eval_loss": []}, {}, id="no-history"),
    pytest.param({}, {}, id="nothing-read"),
    pytest.param({"eval_loss": entries((10, 2.0), (20, "NaN"), (30, 1.0))},
                 {"eval_loss": NAN, "base_eval_loss": 2.0, "eval_curve": [[10, 2.0], [20, NAN], [30, 1.0]]},
                 id="a-nan-evaluation-poisons-eval-loss"),
    pytest.param({"eval_loss": entries((10, "NaN"), (20, 1.0))},
                 {"eval_loss": NAN, "base_eval_loss": NAN, "eval_curve": [[10, NAN], [20, 1.0]]},
                 id="nan-baseline"),
    pytest.param({"eval_loss": entries((10, 2.0), (20, "Infinity"))},
                 {"eval_loss": INF, "base_eval_loss": 2.0, "eval_curve": [[10, 2.0], [20, INF]]}, id="infinity"),
    pytest.param({"eval_loss": entries((10, "2.5"), (20, "1.5"))},
                 {"eval_loss": 1.5, "base_eval_loss": 2.5, "eval_curve": [[10, 2.5], [20, 1.5]]}, id="numeric-strings"),
    pytest.param({"eval_loss": entries((10, None), (20, "abc"), (30, True), (40, 1.2), (50, 1.0))},
                 {"eval_loss": 1.0, "base_eval_loss": 1.2, "eval_curve": [[40, 1.2], [50, 1.0]]},
                 id="unreadable-values-dropped"),
    pytest.param({"eval_loss": [{"key": "eval_loss", "value": 2.0, "timestamp": 1}, {"value": 1.0, "step": "7"}]},
                 {"eval_loss": 1.0, "base_eval_loss": 2.0, "eval_curve": [[0, 2.0], [7, 1.0]]},
                 id="no-step-is-step-0-and-steps-may-be-text"),
    pytest.param({"eval_loss": entries((10, 2.0), (20, 1.5)), "loss": entries((5, 2.4), (10, 2.2), key="loss"),
                  "train_loss": entries((20, 2.0), key="train_loss")},
                 {"eval_loss": 1.5, "base_eval_loss": 2.0, "eval_curve": [[10, 2.0], [20, 1.5]],
                  "train_loss": [[5, 2.4], [10, 2.2]]}, id="train-curve-from-loss"),
    pytest.param({"train_loss": entries((20, 2.0), key="train_loss")}, {"train_loss": [[20, 2.0]]},
                 id="train-curve-from-train-loss-when-no-loss"),
])
def test_folding_the_histories(histories, expected):
    assert same(metrics.fold(histories), expected), metrics.fold(histories)


@pytest.mark.parametrize("uri, base", [
    ("azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/r/providers/"
     "Microsoft.MachineLearningServices/workspaces/w",
     "https://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/r/providers/"
     "Microsoft.MachineLearningServices/workspaces/w"),
    ("azureml://westeurope.api.azureml.ms/mlflow/v2.0/subscriptions/s/resourceGroups/r/providers/"
     "Microsoft.MachineLearningServices/workspaces/w?",  # azureml-mlflow's form, with its trailing "?"
     "https://westeurope.api.azureml.ms/mlflow/v2.0/subscriptions/s/resourceGroups/r/providers/"
     "Microsoft.MachineLearningServices/workspaces/w"),
])
def test_the_tracking_uri_becomes_the_https_base(uri, base):
    assert metrics.tracking_base(uri) == base


@pytest.mark.parametrize("uri", ["", "sqlite:///mlflow.db", "https://example.com/no-mlflow-here"])
def test_a_tracking_uri_that_is_not_azure_mls_is_one_line(uri):
    with pytest.raises(MLError, match="not azureml://") as refused:
        metrics.tracking_base(uri)
    assert "\n" not in str(refused.value)


def test_importing_the_reader_loads_no_azure_sdk():
    import subprocess
    import sys
    code = "import sys, shared.ml.metrics; print(any(m.startswith(('azure.core', 'azure.ai.ml')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the reader, through the fake --------------------------------------------------------------

@pytest.fixture
def d() -> AzureDriver:
    d = AzureDriver()
    d.backend.submit(d.spec(JOB))
    return d


def read(d: AzureDriver, job: str = JOB) -> dict:
    return d.backend.job_metrics(d.backend.get_job(job) if job in d.fake.jobs else JobInfo(job, "Completed"))


def test_a_finished_job_reports_the_fakes_default_improving_history(d):
    d.finish(JOB)
    assert read(d) == {"eval_loss": 1.3, "base_eval_loss": 2.0, "eval_curve": [[10, 2.0], [20, 1.6], [30, 1.3]],
                       "train_loss": [[5, 2.4], [10, 2.1], [15, 1.9], [20, 1.7], [25, 1.5], [30, 1.4]]}


def test_the_request_goes_to_the_regions_mlflow_host_with_an_arm_token(d):
    from tests.azure_fake import LOCATION
    d.finish(JOB)
    read(d)
    path = f"/mlflow/v1.0{d.fake.scope}/api/2.0/mlflow/metrics/get-history"
    assert [(h, p, q["run_id"], q["metric_key"], aud) for h, p, q, aud in d.fake.mlflow_requests] == [
        (f"{LOCATION}.api.azureml.ms", path, JOB, "eval_loss", "https://management.azure.com"),
        (f"{LOCATION}.api.azureml.ms", path, JOB, "loss", "https://management.azure.com")]  # loss found: no train_loss
    assert all(q["max_results"] == str(metrics.PAGE_SIZE) and "page_token" not in q for _h, _p, q, _a in
               d.fake.mlflow_requests)


def test_the_tracking_uri_is_looked_up_once_per_workspace_client(d):
    d.finish(JOB)
    before = len(d.fake.calls)
    read(d)
    read(d)
    workspace_gets = [p for m, p, _b in d.fake.calls[before:] if m == "GET" and p == d.fake.scope]
    assert len(workspace_gets) == 1 and len(d.fake.mlflow_requests) == 4


def test_metrics_logged_late_are_missing_at_first_then_read(d):
    d.fake.set_metrics(JOB, late_reads=1, eval_loss=[(10, 2.0), (20, 1.5)], loss=[(10, 2.2), (20, 1.8)])
    d.finish(JOB)  # the test's history stands: finish_job only fills in a job that has none
    first = read(d)
    assert "eval_loss" not in first and "base_eval_loss" not in first  # not reported yet: the gate retries
    assert read(d) == {"eval_loss": 1.5, "base_eval_loss": 2.0, "eval_curve": [[10, 2.0], [20, 1.5]],
                       "train_loss": [[10, 2.2], [20, 1.8]]}


def test_a_run_that_logged_nothing_or_does_not_exist_reports_nothing(d):
    d.fake.no_metrics(JOB)
    d.finish(JOB)
    assert read(d) == {}
    assert read(d, "ft-azure-nosuchjob") == {}  # 404 RESOURCE_DOES_NOT_EXIST: nothing more is asked
    assert [q["run_id"] for _h, _p, q, _a in d.fake.mlflow_requests].count("ft-azure-nosuchjob") == 1


def test_a_job_still_running_has_no_evaluation_yet(d):
    assert read(d) == {}


@pytest.mark.parametrize("bare", [False, True], ids=["nan-as-string", "nan-as-bare-token"])
def test_non_finite_values_come_through_as_non_finite(d, bare):
    d.fake.mlflow_bare_non_finite = bare
    d.fake.set_metrics(JOB, eval_loss=[(10, 2.0), (20, NAN), (30, 1.0)], loss=[(10, INF)])
    d.finish(JOB)
    got = read(d)
    assert math.isnan(got["eval_loss"]) and got["base_eval_loss"] == 2.0 and got["train_loss"] == [[10, INF]]


def test_a_long_history_is_read_over_every_page(d):
    d.fake.mlflow_page_size = 3
    history = [(10 * i, 3.0 - 0.1 * i) for i in range(1, 9)]
    d.fake.set_metrics(JOB, eval_loss=history, loss=[(5, 2.9)])
    d.finish(JOB)
    got = read(d)
    assert got["eval_curve"] == [[s, v] for s, v in history] and got["base_eval_loss"] == history[0][1]
    assert got["eval_loss"] == history[-1][1]
    pages = [q for _h, _p, q, _a in d.fake.mlflow_requests if q["metric_key"] == "eval_loss"]
    assert len(pages) == 3 and "page_token" not in pages[0] and all("page_token" in q for q in pages[1:])


def test_without_a_role_on_the_workspace_the_refusal_names_the_role(d):
    d.finish(JOB)
    read(d)  # the tracking URI is known by now: the MLflow host itself refuses
    d.fake.grants = []
    with pytest.raises(NotConfigured, match="AzureML Data Scientist role on workspace ws-tuneflow") as refused:
        d.backend.job_metrics(JobInfo(JOB, "Completed"))
    assert "403" in str(refused.value) and "\n" not in str(refused.value)


def test_without_any_grant_the_workspace_lookup_names_the_role_too():
    d = AzureDriver()
    d.fake.grants = []
    with pytest.raises(NotConfigured, match="AzureML Data Scientist") as refused:
        d.backend.job_metrics(JobInfo(JOB, "Completed"))
    assert "\n" not in str(refused.value)


def test_a_token_for_another_audience_is_refused_and_named():
    from tests.azure_fake import FakeCredential

    class StudioToken(FakeCredential):  # a token for Azure ML's data plane, not ARM
        def _token(self, scopes):
            return super()._token(["https://ml.azure.com/.default"])

    d = AzureDriver()
    d.backend.submit(d.spec(JOB))
    d.finish(JOB)
    base = d.backend._metrics_reader().base  # the workspace lookup on ARM, with the right token
    d.backend._mlflow = metrics.MLflowReader(base, StudioToken(), d.fake.transport(), workspace=d.fake.workspace)
    with pytest.raises(NotConfigured, match="401"):
        d.backend.job_metrics(JobInfo(JOB, "Completed"))
    assert d.fake.mlflow_requests[-1][3] == "https://ml.azure.com"


def test_a_service_unavailable_for_a_moment_is_retried(d):
    d.finish(JOB)
    d.fake.mlflow_unavailable = 2
    assert read(d)["eval_loss"] == 1.3
    assert d.fake.mlflow_unavailable == 0 and d.fake.slept  # azure-core backed off (the fake never really sleeps)


def test_a_service_that_stays_unavailable_is_one_line_and_not_a_configuration_error(d):
    d.finish(JOB)
    d.fake.mlflow_unavailable = 100
    with pytest.raises(MLError, match="answered 503") as failed:
        read(d)
    assert not isinstance(failed.value, NotConfigured) and "\n" not in str(failed.value)
    assert d.fake.mlflow_unavailable == 100 - (metrics.RETRIES + 1)  # a few attempts, then it gives up


def test_each_workspace_of_a_region_reads_its_own_runs():
    from tests.azure_fake import FakeRegion
    region = FakeRegion()
    dev, prod = AzureDriver(region=region), AzureDriver(region=region, workspace="ws-tuneflow-prod")
    for drv, history in ((dev, [(10, 2.0), (20, 1.0)]), (prod, [(10, 3.0), (20, 2.5)])):
        drv.backend.submit(drv.spec(JOB))
        drv.fake.set_metrics(JOB, eval_loss=history)
        drv.finish(JOB)
    assert read(dev)["eval_loss"] == 1.0 and read(prod)["eval_loss"] == 2.5
    assert prod.fake.mlflow_requests and all("ws-tuneflow-prod/" in p for _h, p, _q, _a in prod.fake.mlflow_requests)


# -- job_events through the Azure backend ------------------------------------------------------

@pytest.fixture
def gate_flow(storage_env, monkeypatch):
    monkeypatch.setenv("TUNEFLOW_ML_BACKEND", "azure")
    monkeypatch.delenv("TUNEFLOW_GATE", raising=False)
    monkeypatch.delenv("TUNEFLOW_GATE_METRICS_WAIT", raising=False)  # 30m
    monkeypatch.delenv("TUNEFLOW_GATE_MIN_IMPROVEMENT", raising=False)  # 2 %
    return AzureDriver()


def _submitted(d: AzureDriver, name: str, dataset: str):
    import uuid
    tags = {**TAGS, "flow-id": str(uuid.uuid5(uuid.NAMESPACE_URL, name)), "dataset": dataset,
            "dataset-version": "0123456789abcdef"}
    d.backend.submit(dataclasses.replace(d.spec(name), tags=tags))
    return tags


def _completion(d: AzureDriver, name: str):
    """The RunCompleted event Azure ML publishes for the job, as of now."""
    from shared.events import decide, normalize
    from tests.conftest import reference_events
    event = reference_events("ml-pipeline-run-completed.eventgrid.json")[0]
    job = d.backend.get_job(name)
    event["data"]["runId"], event["data"]["runTags"] = job.name, dict(job.tags)
    event["eventTime"] = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    return decide(normalize(event))


def _stages(flow_log, flow_id: str) -> list[str]:
    from shared import flows
    return sorted(r["stage"] for r in flows.read_all(flow_log) if r["flow_id"] == flow_id)


def test_job_events_waits_for_late_metrics_then_the_gate_passes(gate_flow):
    from shared import storage
    from shared.registration import MetricsNotReady, handle_decision
    d, flow_log = gate_flow, storage.container("flows")
    tags = _submitted(d, "ft-gate-0000aaaa", "gate-pass")
    d.fake.set_metrics("ft-gate-0000aaaa", late_reads=3, eval_loss=[(10, 2.0), (20, 1.6), (30, 1.3)],
                       loss=[(10, 2.1), (30, 1.4)])
    d.finish("ft-gate-0000aaaa")
    decision = _completion(d, "ft-gate-0000aaaa")
    with pytest.raises(MetricsNotReady, match="eval_loss not reported yet"):
        handle_decision(decision, d.backend, flow_log)
    assert _stages(flow_log, tags["flow-id"]) == [] and d.fake.models == {}  # nothing written: redelivery starts over

    deploy = handle_decision(decision, d.backend, flow_log)  # Event Grid delivers again; the metrics are there
    assert deploy is not None and deploy.job == "ft-gate-0000aaaa" and deploy.flow_id == tags["flow-id"]
    assert _stages(flow_log, tags["flow-id"]) == ["gate-passed", "registered"]
    [(_key, model)] = d.fake.models.items()
    assert model["properties"]["tags"]["eval-loss"] == "1.3" and model["properties"]["tags"]["base-eval-loss"] == "2"
    from shared import flows
    [gate] = [r for r in flows.read_all(flow_log) if r["stage"] == "gate-passed"]
    assert gate["detail"]["rule"] == "passed" and gate["detail"]["improvement"] == pytest.approx(0.35)


def test_job_events_records_gate_failed_for_a_history_that_does_not_improve(gate_flow):
    from shared import flows, storage
    from shared.registration import handle_decision
    d, flow_log = gate_flow, storage.container("flows")
    tags = _submitted(d, "ft-gate-0000bbbb", "gate-flat")
    d.fake.set_metrics("ft-gate-0000bbbb", eval_loss=[(10, 2.0), (20, 2.05), (30, 1.99)], loss=[(10, 2.1)])
    d.finish("ft-gate-0000bbbb")
    assert handle_decision(_completion(d, "ft-gate-0000bbbb"), d.backend, flow_log) is None
    assert _stages(flow_log, tags["flow-id"]) == ["gate-failed", "registered"]
    [gate] = [r for r in flows.read_all(flow_log) if r["stage"] == "gate-failed"]
    assert gate["detail"]["rule"] == "no-improvement" and "2.0000 -> 1.9900" in gate["detail"]["reason"]
    assert handle_decision(_completion(d, "ft-gate-0000bbbb"), d.backend, flow_log) is None  # the verdict stands


def test_a_model_worse_than_the_one_serving_the_same_dataset_version_is_kept_away(gate_flow):
    """Like with like: a second fine-tune of the same prepared version (other parameters) scores above the model
    its endpoint already serves; the gate fails it and names that model. Deploy goes through the backend, as
    `deploy` does, so the endpoint and model tags are what Azure stores."""
    from shared import flows, storage
    from shared.contracts import MANAGED_BY_VALUE
    from shared.messages import DeployRequest
    from shared.registration import handle_decision
    d, flow_log = gate_flow, storage.container("flows")
    first = _submitted(d, "ft-gate-0000cccc", "gate-serve")
    d.fake.set_metrics("ft-gate-0000cccc", eval_loss=[(10, 2.0), (30, 1.1)], loss=[(10, 2.1)])
    d.finish("ft-gate-0000cccc")
    request = handle_decision(_completion(d, "ft-gate-0000cccc"), d.backend, flow_log)
    assert isinstance(request, DeployRequest)
    model = d.backend.get_model(request.model_name, request.model_version)
    served = f"{request.model_name}:{request.model_version}"
    serve(d.backend, "tf-gate-serve-0001", model, {  # the tags the deploy stage gives an endpoint and a deployment
        "managed-by": MANAGED_BY_VALUE, "flow-id": request.flow_id, "dataset": request.dataset,
        "expires-at": "2026-11-26T02:00:00Z"}, deployment=f"v-{request.model_version}",
        deployment_tags={"flow-id": request.flow_id, "model": served})
    [endpoint] = d.backend.list_endpoints()
    assert endpoint.tags["managed-by"] == MANAGED_BY_VALUE and endpoint.provisioning_state == "Succeeded"

    second = _submitted(d, "ft-gate-0000dddd", "gate-serve")  # same dataset and version, another job
    d.fake.set_metrics("ft-gate-0000dddd", eval_loss=[(10, 2.0), (30, 1.4)], loss=[(10, 2.1)])
    d.finish("ft-gate-0000dddd")
    assert handle_decision(_completion(d, "ft-gate-0000dddd"), d.backend, flow_log) is None
    [verdict] = [r for r in flows.read_all(flow_log) if r["flow_id"] == second["flow-id"] and r["stage"] == "gate-failed"]
    assert verdict["detail"]["rule"] == "worse-than-serving"
    assert verdict["detail"]["serving_model"] == served and verdict["detail"]["serving_eval_loss"] == 1.1
    assert first["flow-id"] != second["flow-id"]
