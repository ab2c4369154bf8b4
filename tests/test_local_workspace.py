"""The ML interface's contract on the local backend: not found, already exists, failures reported."""

from __future__ import annotations

import pytest

from shared.ml.base import AlreadyExists, JobSpec, MLError, ModelRef, NotFound
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def spec(name="ft-contract-00000000", **over):
    base = dict(name=name, experiment="chat_completion_phi-3-tiny", display_name=name, base_model="phi-3-tiny",
                train_uri="prepared/none/0000000000000000/train.jsonl", test_uri="prepared/none/0000000000000000/test.jsonl",
                params={}, tags={"managed-by": "tuneflow", "flow-id": "1d5f5ba0-8598-5118-9f6d-5a45f4408403"})
    return JobSpec(**{**base, **over})


def test_lookups_of_missing_things_raise_not_found(workspace):
    for call in (lambda: workspace.get_job("nope"), lambda: workspace.get_endpoint("nope"),
                 lambda: workspace.delete_endpoint("nope"), lambda: workspace.get_model("nope", "1")):
        with pytest.raises(NotFound):
            call()
    assert workspace.list_endpoints() == []


def test_a_job_that_fails_reports_failed_with_the_reason_and_a_second_submit_is_refused(workspace):
    workspace.submit(spec())
    with pytest.raises(AlreadyExists):
        workspace.submit(spec())
    job = wait_for(lambda: (j := workspace.get_job("ft-contract-00000000")).status == "Failed" and j, 120,
                   "the job (whose data does not exist) to fail")
    assert "ResourceNotFound" in job.error or "BlobNotFound" in job.error or "not exist" in job.error
    with pytest.raises(MLError):
        workspace.register_model("m", "1", job.name, {})


def test_deploy_claims_the_name_once(workspace):
    (workspace.endpoints / "tf-taken").mkdir()
    with pytest.raises(AlreadyExists):
        workspace.deploy("tf-taken", ModelRef("m", "1", {"mlflow.version": "1"}), {})
    assert workspace.list_endpoints() == []  # a claim without a record is not an endpoint


def test_an_unknown_backend_is_named(monkeypatch):
    from shared.ml import get_backend
    monkeypatch.setenv("TUNEFLOW_ML_BACKEND", "cloud9")
    with pytest.raises(ValueError) as exc:
        get_backend()
    assert "'local' or 'azure'" in str(exc.value)
