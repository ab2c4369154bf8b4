"""tuneflow dead-letters: list what failed and why, show one, requeue it without loss or duplication
(Azurite: the storage poison queues and the local Service Bus stand-in's dead-letter queue)."""

from __future__ import annotations

import base64
import json

from shared import storage
from tests.test_cli import tuneflow

REQUEST = json.dumps({"schema_version": 1, "flow_id": "1d5f5ba0-8598-5118-9f6d-5a45f4408403", "dataset": "ds",
                      "version": "0123456789abcdef", "params": {}})
DEPLOY = json.dumps({"schema_version": 1, "flow_id": "1d5f5ba0-8598-5118-9f6d-5a45f4408403", "dataset": "ds",
                     "version": "0123456789abcdef", "job": "ft-ds-01234567", "model_name": "m", "model_version": "1"})


def envelope(body: str, reason: str, function: str) -> str:
    """What the local host writes to a poison / dead-letter queue (see local/host.py)."""
    return json.dumps({"reason": reason, "function": function, "deliveries": 5, "failed_at": "2026-11-26T01:00:00Z",
                       "message": body})


def test_list_show_and_requeue(storage_env):
    poison = storage.queue("finetune-requests-poison")
    poison.send_message(base64.b64encode(envelope(REQUEST, "PreparedVersionMissing: prepared/ds/... does not exist",
                                                  "submit").encode()).decode())
    poison.send_message(storage.encode_queue_message(REQUEST))  # the real host: the bare body, reason in the logs
    storage.queue("deployments-deadletter").send_message(envelope(DEPLOY, "NotFound: model m:1", "deploy"))
    storage.queue("webjobs-blobtrigger-poison").send_message(base64.b64encode(
        envelope('{"container": "datasets", "blob": "ds/x.jsonl"}', "BlobChanged", "data_arrival").encode()).decode())

    res = tuneflow("dead-letters", "list", "--json")
    assert res.returncode == 0, res.stderr
    letters = json.loads(res.stdout)
    by_source = {}
    for x in letters:
        by_source.setdefault(x["source"], []).append(x)
    assert len(by_source["finetune-requests"]) == 2 and len(by_source["deployments"]) == 1
    wrapped = next(x for x in by_source["finetune-requests"] if x["function"] == "submit")
    assert wrapped["reason"].startswith("PreparedVersionMissing") and json.loads(wrapped["body"])["dataset"] == "ds"
    bare = next(x for x in by_source["finetune-requests"] if x["function"] == "")
    assert "logs" in bare["reason"] and bare["body"] == REQUEST

    shown = json.loads(tuneflow("dead-letters", "show", wrapped["id"]).stdout)
    assert shown == wrapped
    table = tuneflow("dead-letters", "list")
    assert table.returncode == 0 and "PreparedVersionMissing" in table.stdout

    # requeue: the original body goes back to its queue exactly once, then leaves the dead letters
    for letter in (wrapped, by_source["deployments"][0]):
        res = tuneflow("dead-letters", "requeue", letter["id"])
        assert res.returncode == 0 and f"requeued {letter['id']}" in res.stdout, res.stderr
    main = [base64.b64decode(m.content).decode() for m in storage.queue("finetune-requests").receive_messages(max_messages=32)]
    assert main == [REQUEST]
    assert [m.content for m in storage.queue("deployments").receive_messages(max_messages=32)] == [DEPLOY]
    left = {x["id"] for x in json.loads(tuneflow("dead-letters", "list", "--json").stdout)}
    assert wrapped["id"] not in left and bare["id"] in left
    again = tuneflow("dead-letters", "requeue", wrapped["id"])  # already requeued: nothing to duplicate
    assert again.returncode == 1 and "no dead letter" in again.stderr

    blob = by_source["datasets (blob trigger)"][0]
    res = tuneflow("dead-letters", "requeue", blob["id"])
    assert res.returncode == 1 and "drop the blob again" in res.stderr and len(res.stderr.strip().splitlines()) == 1
