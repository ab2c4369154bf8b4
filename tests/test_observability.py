"""Every log record of an invocation carries that invocation's flow id, or "-", never another's.

As in the Python worker: the app is imported (function_app.py installs its logging), the functions
run in a ThreadPoolExecutor that does not copy contextvars, two at a time, and records come from
`tuneflow.*` loggers and are caught by a handler on the root logger.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

log = logging.getLogger("tuneflow.x")
POOL = 2  # threads of the worker's sync pool, here; every invocation meets another one mid-way


class Caught(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def root_records():
    from shared.observability import bind_flow
    handler = Caught()
    logging.getLogger().addHandler(handler)
    yield handler.records
    logging.getLogger().removeHandler(handler)
    bind_flow("")  # nothing bound here stays bound for the next test on this thread


def _flow() -> str:
    return str(uuid.uuid4())


def _invocations(n: int) -> list[tuple[str, dict, str]]:
    """(function, trigger arguments, the flow id it binds or "") for `n` invocations of all five functions."""
    import azure.functions as func
    from azure.functions.timer import TimerRequest
    from tests.test_job_events_concurrency import completion
    out = []
    for i in range(n):
        flow, kind = _flow(), ("job_events", "submit", "reaper", "deploy", "data_arrival")[i % 5]
        body = {"flow_id": flow, "dataset": "logs", "version": "0123456789abcdef"}
        if kind == "job_events":
            out.append((kind, {"event": completion(name=f"ft-logs-{i:08d}", flow=flow)}, flow))
        elif kind == "submit":
            out.append((kind, {"msg": func.QueueMessage(body=json.dumps(body))}, flow))
        elif kind == "deploy":
            body.update(job=f"ft-logs-{i:08d}", model_name="m", model_version="1")
            out.append((kind, {"msg": func.ServiceBusMessage(body=json.dumps(body))}, flow))
        elif kind == "reaper":  # binds no flow: its records must not carry the one before it on this thread
            out.append((kind, {"timer": TimerRequest(past_due=False)}, ""))
        else:
            out.append((kind, {"client": None, "request": None}, ""))  # its work (stubbed) returns no message
    return out


def test_each_record_carries_its_own_invocations_flow_id_under_concurrency(root_records, monkeypatch):
    import function_app  # noqa: F401  the worker imports the app first: its logging set-up applies
    from functions import data_arrival, deploy, job_events, reaper, submit
    from tests.test_job_events_concurrency import user_function
    modules = {"job_events": job_events, "submit": submit, "deploy": deploy, "reaper": reaper,
               "data_arrival": data_arrival}
    met, current = threading.Barrier(POOL), threading.local()

    def work(*args, **kwargs):  # what each function hands its work to: it logs, meets the other invocation, logs
        log.warning("invocation %d starts", current.index)
        met.wait(timeout=30)
        log.warning("invocation %d ends", current.index)

    for name in ("handle_decision", "get_backend"):
        monkeypatch.setattr(job_events, name, work if name == "handle_decision" else lambda: None)
    monkeypatch.setattr(submit, "handle_request", work)
    monkeypatch.setattr(deploy, "handle_deploy", work)
    monkeypatch.setattr(reaper, "reap", work)
    monkeypatch.setattr(data_arrival, "handle_dataset_blob", work)
    for module in (submit, deploy, reaper):
        monkeypatch.setattr(module, "get_backend", lambda: None)
    monkeypatch.setattr("shared.storage.container", lambda *a, **k: None)
    functions = {name: user_function(module, name) for name, module in modules.items()}
    invocations = _invocations(40)  # even: the barrier pairs them

    def invoke(index: int) -> None:  # the worker's thread: no contextvars copied in
        name, arguments, _ = invocations[index]
        current.index = index
        functions[name](**arguments)

    with ThreadPoolExecutor(max_workers=POOL) as pool:
        for future in [pool.submit(invoke, i) for i in range(len(invocations))]:
            future.result(timeout=60)

    ours = [r for r in root_records if r.name == log.name]
    assert len(ours) == 2 * len(invocations)
    wrong = [(r.getMessage(), getattr(r, "flow_id", None), invocations[r.args[0]][2] or "-") for r in ours
             if getattr(r, "flow_id", None) != (invocations[r.args[0]][2] or "-")]
    assert wrong == [], f"{len(wrong)} records with another invocation's flow id (or none), e.g. {wrong[:3]}"


@pytest.mark.parametrize("logger", ["tuneflow.job_events", "azure.core", ""])
def test_records_of_every_logger_carry_the_bound_flow_id(root_records, logger):
    from shared.observability import bind_flow, install_flow_ids, new_invocation
    install_flow_ids()
    flow = _flow()
    bind_flow(flow)
    logging.getLogger(logger).warning("bound")
    new_invocation()
    logging.getLogger(logger).warning("new invocation")
    assert [(r.getMessage(), r.flow_id) for r in root_records] == [("bound", flow), ("new invocation", "-")]


def test_installing_twice_keeps_one_factory_and_the_one_before_it(root_records):
    from shared.observability import bind_flow, install_flow_ids
    before = logging.getLogRecordFactory()
    seen = []

    def earlier(*args, **kwargs):  # another library's factory, installed first
        seen.append(args[0])
        return before(*args, **kwargs)

    logging.setLogRecordFactory(earlier)
    try:
        install_flow_ids()
        installed = logging.getLogRecordFactory()
        install_flow_ids()
        assert logging.getLogRecordFactory() is installed
        bind_flow("f")
        record = logging.getLogger("tuneflow.y").makeRecord("tuneflow.y", logging.INFO, __file__, 1, "m", (), None)
        assert record.flow_id == "f" and seen == ["tuneflow.y"]
    finally:
        logging.setLogRecordFactory(before)
