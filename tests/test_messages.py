import pytest
from pydantic import ValidationError

from shared.messages import DeployRequest, FinetuneRequest

FLOW = "1d5f5ba0-8598-5118-9f6d-5a45f4408403"


def test_round_trip():
    r = FinetuneRequest(flow_id=FLOW, dataset="d", version="0123456789abcdef", params={"learning_rate": 0.001})
    assert FinetuneRequest.parse(r.to_json()) == r
    assert '"schema_version":1' in r.to_json()


@pytest.mark.parametrize("body", [
    "not json", "{}", '{"flow_id": "x", "dataset": "d", "version": "0123456789abcdef"}',
    f'{{"flow_id": "{FLOW}", "dataset": "../etc", "version": "0123456789abcdef"}}',
    f'{{"flow_id": "{FLOW}", "dataset": "d", "version": "XYZ"}}',
    f'{{"flow_id": "{FLOW}", "dataset": "d", "version": "0123456789abcdef", "schema_version": 2}}',
    f'{{"flow_id": "{FLOW}", "dataset": "d", "version": "0123456789abcdef", "surprise": 1}}',
    f'{{"flow_id": "{FLOW}", "dataset": "d", "version": "0123456789abcdef", "params": {{"a b": 1}}}}',
])
def test_invalid_finetune_requests(body):
    with pytest.raises(ValidationError):
        FinetuneRequest.parse(body)


def test_deploy_request_message_id_is_model_version():
    r = DeployRequest(flow_id=FLOW, dataset="d", version="0123456789abcdef", job="ft-d-1",
                      model_name="phi-3-tiny-d", model_version="42")
    assert r.message_id == "phi-3-tiny-d:42"
    with pytest.raises(ValidationError):
        DeployRequest.parse(r.to_json().replace('"42"', '"4 2"'))
