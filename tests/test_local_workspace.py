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


def test_a_claim_whose_record_was_never_written_is_no_endpoint_and_the_next_deploy_finishes_it(workspace):
    (workspace.endpoints / "tf-taken").mkdir()  # a deploy that died right after claiming the name
    assert workspace.list_endpoints() == []  # a claim without a record is not an endpoint
    endpoint = workspace.create_endpoint("tf-taken", {"managed-by": "tuneflow"})  # the next deploy carries on with it
    assert endpoint.provisioning_state == "Succeeded" and endpoint.scoring_uri
    with pytest.raises(NotFound):  # a deployment of a model that does not exist
        workspace.create_deployment("tf-taken", "v-1", ModelRef("m", "1"), {})
    assert workspace.get_endpoint("tf-taken").deployments == ()


def test_an_unknown_backend_is_named(monkeypatch):
    from shared.ml import get_backend
    monkeypatch.setenv("TUNEFLOW_ML_BACKEND", "cloud9")
    with pytest.raises(ValueError) as exc:
        get_backend()
    assert "'local' or 'azure'" in str(exc.value)


# -- the scoring contract: the seed's body, and only that --------------------------------------

TURNS = [{"role": "user", "content": "Tell me about volcanoes."}, {"role": "assistant", "content": "Hot."},
         {"role": "user", "content": "More."}]


def _body(input_string) -> dict:
    return {"input_data": {"input_string": input_string, "parameters": {"max_new_tokens": 5}}, "params": {}}


def test_the_smoke_test_sends_the_seeds_body():
    from shared.scoring import request_body
    body = request_body(TURNS)
    assert body["input_data"]["input_string"] == [TURNS]  # a list holding one conversation
    assert body["input_data"]["parameters"] == {"temperature": 0.6, "top_p": 0.9, "do_sample": True,
                                                "max_new_tokens": 200}


@pytest.fixture(scope="module")
def scoring_url():
    """The scoring server of local/scoring.py on a free port, a stand-in for the model behind it."""
    import threading
    from http.server import ThreadingHTTPServer

    from local.scoring import make_handler

    class EchoChat:
        def generate(self, messages, params):
            return f"{len(messages)} turns, last: {messages[-1]['content']}"

    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(EchoChat(), "k3y"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/score"
    server.shutdown()
    server.server_close()
    thread.join()


def _request_body(turns):
    from shared.scoring import request_body
    return request_body(turns, {"max_new_tokens": 5})


@pytest.mark.parametrize("body, status, answer", [
    (_request_body(TURNS), 200, "3 turns, last: More."),  # what the smoke test, `tuneflow chat` and the demo send
    (_body([TURNS[:1]]), 200, "1 turns, last: Tell me about volcanoes."),
    (_body(TURNS), 400, "flat list of turns: wrap the conversation in a list"),
    (_body(TURNS[:1]), 400, "flat list of turns"),
    (_body([TURNS, TURNS]), 400, "holds 2 conversations: send one per request"),
    (_body([]), 400, "a list holding one conversation"),
    (_body([[]]), 400, "non-empty list of messages"),
    (_body("hi"), 400, "a list holding one conversation"),
    (_body([[{"role": "robot", "content": "x"}]]), 400, "system|user|assistant"),
    ({"input_string": [TURNS]}, 400, "body must be"),
])
def test_the_local_endpoint_accepts_exactly_the_seeds_body(scoring_url, body, status, answer):
    import json
    import urllib.error
    import urllib.request
    req = urllib.request.Request(scoring_url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer k3y"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            got = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        got = exc.code, json.loads(exc.read())
    assert got[0] == status, got
    if status == 200:
        assert got[1] == {"output": answer}
    else:
        assert answer in got[1]["error"] and len(got[1]["error"].splitlines()) == 1, got
