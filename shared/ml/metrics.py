"""A fine-tune's metrics on Azure ML, read from the workspace's MLflow REST API, folded into the gate's evidence.

What the job logs. The registry's `chat_completion_pipeline` fine-tune step logs the Hugging Face Trainer's
metrics (`loss`, the running training loss; `eval_loss`; `train_loss`, the run's average, at the end; ...) to
the pipeline run, whose MLflow run id is the job's name. They can appear minutes after the completion event
(Azure/azure-sdk-for-python#39198): a history still empty is "not reported yet", and the gate retries.
Not verified against a live workspace: that thread's answer also says a pipeline's metrics belong to the child
(step) run that logs them. If the root run's history stays empty for finished jobs, the gate fails them with
`metrics-missing` after TUNEFLOW_GATE_METRICS_WAIT, and the fix is here: read the fine-tune step's run instead.

No base-model evaluation. The pipeline's model-evaluation steps are commented out in every registry version,
so nothing scores the base model on the test split. tuneflow therefore submits with several evaluations per
epoch (`evaluation_strategy: steps`, `evaluation_steps_interval: 0.25`, see shared/pipeline.py; the request or
TUNEFLOW_FINETUNE_PARAMS may set others) and reads the eval_loss history:
- `base_eval_loss`: the FIRST evaluation (lowest step). It scores the model after the first slice of training,
  not the base model: a baseline already improved, so the gate's improvement is a lower bound. Present only when
  the history holds evaluations at 2 or more distinct steps; with one (e.g. `evaluation_strategy: epoch` and a
  single epoch) there is no baseline and the key is left out (the gate then says it was never reported);
- `eval_loss`: the LOWEST evaluation, as the pipeline outputs the best checkpoint by `metric_for_best_model`
  (`loss`). A history holding a non-finite evaluation (NaN, ±Infinity) diverged: `eval_loss` is then that
  value, so the gate's not-finite rule refuses it (the Trainer's best-checkpoint comparison skips NaN, so the
  kept checkpoint may predate the divergence, but a run that diverged is not judged by its luckiest step);
- `train_loss`: the curve `[[step, value], ...]` of `loss` (what the Trainer logs every `logging_steps`), or of
  `train_loss` when no `loss` was logged; `eval_curve`: the eval_loss curve. Sorted by step, then timestamp.

The REST API. `GET https://<region>.api.azureml.ms/mlflow/v1.0<workspace scope>/api/2.0/mlflow/metrics/
get-history?run_id=<job>&metric_key=<key>&max_results=25000[&page_token=...]`: the workspace's
`mlFlowTrackingUri` (an ARM property, `azureml://...`) with the scheme made https (Azure/azureml-examples,
sdk/python/using-mlflow/using-rest-api). Answer `{"metrics": [{"key", "value", "timestamp", "step"}],
"next_page_token"}`, pages followed until no token comes (`max_results` is what MLflow's own client sends,
GET_METRIC_HISTORY_MAX_RESULTS). A metric never logged answers 200 with no `metrics` key (MLflow's protobuf
JSON drops empty lists); an unknown run 404 `{"error_code": "RESOURCE_DOES_NOT_EXIST"}` (open-source MLflow's
SQL store answers 200 `{}` instead; both read as "nothing yet"). Non-finite values come as the strings "NaN",
"Infinity", "-Infinity" (protobuf JSON, checked with mlflow 3.17's message_to_json) or as bare tokens; both
are read, and ±1.7976931348623157e308 (how MLflow's SQL store keeps ±inf) counts as infinite.

Token: Entra ID for the ARM audience (`https://management.azure.com/.default`), as the Azure ML docs do for
MLFLOW_TRACKING_TOKEN (`az account get-access-token`), from the workspace's own credential, through azure-core
(a RetryPolicy for 408/429/5xx and connection errors, a few attempts, Retry-After honoured).

Errors: 401/403 raise NotConfigured naming the role the app identity needs on the workspace (AzureML Data
Scientist, which infra/app/rbac.bicep grants); any other failure after the retries an MLError, one line.

azure-core is imported when a reader is built, never when this module is.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterable, Mapping
from urllib.parse import urlparse

from shared.ml.base import MLError, NotConfigured

log = logging.getLogger("tuneflow.azureml.metrics")

ARM_SCOPE = "https://management.azure.com/.default"
HISTORY_PATH = "/api/2.0/mlflow/metrics/get-history"
PAGE_SIZE = 25_000  # MLflow's own client: mlflow.store.tracking.GET_METRIC_HISTORY_MAX_RESULTS
MAX_PAGES = 200  # a service that keeps handing out tokens is not followed forever
EVAL_KEY = "eval_loss"
TRAIN_KEYS = ("loss", "train_loss")  # the Trainer's running loss first, its end-of-run average if that is all
ROLE = "AzureML Data Scientist"
RETRIES = 3  # after the first attempt
TIMEOUT_S = 60  # all attempts of one request together
_NON_FINITE = {"nan": math.nan, "infinity": math.inf, "+infinity": math.inf, "-infinity": -math.inf,
               "inf": math.inf, "+inf": math.inf, "-inf": -math.inf}


# -- folding ------------------------------------------------------------------------------------

def value_of(raw) -> float | None:
    """A metric value as MLflow's JSON carries it: a number, or "NaN"/"Infinity"/"-Infinity" (or numeric
    text); None for anything else. MLflow's SQL stores keep ±inf as ±max float: read back as ±inf."""
    if isinstance(raw, bool) or raw is None:
        return None
    if isinstance(raw, str):
        text = raw.strip()
        if text.lower() in _NON_FINITE:
            return _NON_FINITE[text.lower()]
        try:
            raw = float(text)
        except ValueError:
            return None
    if not isinstance(raw, (int, float)):
        return None
    try:
        value = float(raw)
    except OverflowError:  # an integer beyond any float
        return math.inf if raw > 0 else -math.inf
    if math.isfinite(value) and abs(value) >= sys.float_info.max:
        return math.copysign(math.inf, value)
    return value


def _int(raw, default: int = 0) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        try:
            return int(float(raw))
        except (TypeError, ValueError, OverflowError):
            return default


def points(history: Iterable[Mapping] | None) -> list[tuple[int, float]]:
    """(step, value) of a get-history `metrics` list, by step then timestamp; entries without a usable value
    dropped, an entry without `step` read as step 0."""
    rows = []
    for i, entry in enumerate(history or ()):
        if not isinstance(entry, Mapping):
            continue
        value = value_of(entry.get("value"))
        if value is None:
            continue
        rows.append((_int(entry.get("step")), _int(entry.get("timestamp")), i, value))
    rows.sort()
    return [(step, value) for step, _ts, _i, value in rows]


def _curve(pts: list[tuple[int, float]]) -> list[list]:
    return [[step, value] for step, value in pts]


def fold(histories: Mapping[str, Iterable[Mapping] | None]) -> dict:
    """The gate's evidence from metric histories by key (get-history `metrics` lists): see the module doc."""
    out: dict = {}
    evals = points(histories.get(EVAL_KEY))
    if evals:
        values = [v for _s, v in evals]
        diverged = [v for v in values if not math.isfinite(v)]
        out["eval_loss"] = diverged[0] if diverged else min(values)
        if len({s for s, _v in evals}) >= 2:
            out["base_eval_loss"] = evals[0][1]
        out["eval_curve"] = _curve(evals)
    for key in TRAIN_KEYS:
        train = points(histories.get(key))
        if train:
            out["train_loss"] = _curve(train)
            break
    return out


# -- the REST client ----------------------------------------------------------------------------

def tracking_base(uri: str) -> str:
    """`azureml://<region>.api.azureml.ms/mlflow/v1.0/subscriptions/...` -> the https base of the REST API."""
    parsed = urlparse((uri or "").strip())
    if parsed.scheme not in ("azureml", "https") or not parsed.netloc or "/mlflow/" not in parsed.path:
        raise MLError(f"the workspace's MLflow tracking URI {uri!r} is not azureml://<region>.api.azureml.ms/"
                      f"mlflow/...: cannot read the job's metrics")
    return f"https://{parsed.netloc}{parsed.path.rstrip('/')}"


def _refused(status: int, workspace: str, job: str) -> NotConfigured:
    return NotConfigured(f"reading the metrics of job {job}: the workspace's MLflow answered {status}: give the "
                         f"Function App's managed identity the {ROLE} role on workspace {workspace} (infra/app/"
                         f"rbac.bicep grants it), locally `az login` as a user who holds it")


def _message(text: str) -> str:
    """The one line worth quoting from an error body (MLflow's `message`, ARM's `error.message`, or the text)."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, Mapping):
        inner = body.get("error") if isinstance(body.get("error"), Mapping) else body
        text = str(inner.get("message") or inner.get("error_code") or inner.get("code") or text)
    line = text.strip().splitlines()[0] if text.strip() else "no body"
    return line[:200]


class MLflowReader:
    """get-history through azure-core: bearer token (ARM audience) and retries, on the workspace's transport."""

    def __init__(self, tracking_uri: str, credential, transport=None, workspace: str = ""):
        from azure.core import PipelineClient
        from azure.core.pipeline.policies import (BearerTokenCredentialPolicy, HeadersPolicy, RetryPolicy,
                                                  UserAgentPolicy)
        self.base = tracking_base(tracking_uri)
        self.workspace = workspace or self.base.rsplit("/", 1)[-1]
        policies = [HeadersPolicy({"Accept": "application/json"}), UserAgentPolicy(sdk_moniker="tuneflow-metrics"),
                    RetryPolicy(retry_total=RETRIES, retry_backoff_factor=0.8, retry_backoff_max=20,
                                timeout=TIMEOUT_S),
                    BearerTokenCredentialPolicy(credential, ARM_SCOPE)]
        kwargs = {"transport": transport} if transport is not None else {}
        self._client = PipelineClient(base_url=self.base, policies=policies, **kwargs)

    def history(self, job: str, key: str) -> list[dict] | None:
        """Every logged value of `key` in run `job`, all pages; [] when never logged, None when no such run."""
        metrics: list[dict] = []
        token, seen = None, set()
        for _page in range(MAX_PAGES):
            params = {"run_id": job, "metric_key": key, "max_results": str(PAGE_SIZE)}
            if token:
                params["page_token"] = token
            status, text = self._get(params, job)
            if status == 404:  # MLflow's RESOURCE_DOES_NOT_EXIST: the run is not (yet) known to tracking
                log.info("metrics of job %s: the workspace's MLflow has no such run (%s)", job, _message(text))
                return None
            if status in (401, 403):
                raise _refused(status, self.workspace, job)
            if status != 200:
                raise MLError(f"reading metric {key} of job {job} from the workspace's MLflow: answered {status} "
                              f"({_message(text)})")
            try:
                body = json.loads(text) if text.strip() else {}  # bare NaN / Infinity tokens parse too
            except ValueError:
                raise MLError(f"reading metric {key} of job {job}: the workspace's MLflow answered 200 with a "
                              f"body that is not JSON ({_message(text)})") from None
            if not isinstance(body, Mapping):
                raise MLError(f"reading metric {key} of job {job}: the workspace's MLflow answered 200 with "
                              f"{type(body).__name__}, not an object")
            metrics.extend(m for m in body.get("metrics") or () if isinstance(m, Mapping))
            token = body.get("next_page_token") or None
            if not token or token in seen:
                return metrics
            seen.add(token)
        log.warning("metric %s of job %s: still more pages after %d; using what was read", key, job, MAX_PAGES)
        return metrics

    def _get(self, params: dict, job: str) -> tuple[int, str]:
        from azure.core.exceptions import AzureError, ClientAuthenticationError
        from azure.core.rest import HttpRequest
        request = HttpRequest("GET", self.base + HISTORY_PATH, params=params)
        try:
            response = self._client.send_request(request, connection_timeout=10, read_timeout=30)
        except ClientAuthenticationError as exc:
            raise NotConfigured(f"reading the metrics of job {job}: Azure sign-in failed ({_message(str(exc))}); "
                                f"in Azure give the Function App's managed identity the {ROLE} role on the "
                                f"workspace, locally run `az login`") from None
        except AzureError as exc:  # connection refused, timeouts, ... after the retries
            raise MLError(f"reading the metrics of job {job} from the workspace's MLflow ({self.base.split('/')[2]})"
                          f": {type(exc).__name__}: {_message(str(exc))}") from None
        return response.status_code, response.text()


def read(reader: MLflowReader, job: str) -> dict:
    """The gate's evidence for `job` ({} or partial while nothing is reported)."""
    evals = reader.history(job, EVAL_KEY)
    if evals is None:
        return {}
    histories: dict = {EVAL_KEY: evals}
    for key in TRAIN_KEYS:
        found = reader.history(job, key) or []
        if found:
            histories[key] = found
            break
    return fold(histories)
