"""The quality gate's rules, table-tested: first match wins, each verdict with its reason and figures."""

from __future__ import annotations

import math

import pytest

from shared import gate
from shared.gate import Evidence, judge

NAN, INF = math.nan, math.inf


def ev(eval_loss=1.0, base=2.0, min_improvement=0.02, **kw) -> Evidence:
    return Evidence(eval_loss=eval_loss, base_eval_loss=base, min_improvement=min_improvement, **kw)


@pytest.mark.parametrize("evidence, verdict, rule, reason", [
    (ev(switched_off_by="request"), "off", "switched-off",
     "gate switched off by the request: deployed without judging the metrics"),
    (ev(eval_loss=None, base=None, switched_off_by="setting"), "off", "switched-off",
     "gate switched off by the setting: deployed without judging the metrics"),
    (ev(eval_loss=None, waited_s=10, metrics_wait_s=1800), "retry", "metrics-late",
     "eval_loss not reported yet, 10 s after the job ended (waiting up to 1800 s)"),
    (ev(base=None, waited_s=10, metrics_wait_s=1800), "retry", "metrics-late",
     "base_eval_loss not reported yet, 10 s after the job ended (waiting up to 1800 s)"),
    (ev(eval_loss=None, waited_s=1800, metrics_wait_s=1800), "failed", "metrics-missing",
     "eval_loss never reported (1800 s after the job ended): the run logged no evaluation to judge it by"),
    (ev(base=None, waited_s=2000, metrics_wait_s=1800), "failed", "metrics-missing",
     "base_eval_loss never reported (2000 s after the job ended): the run logged no evaluation to judge it by"),
    (ev(eval_loss=NAN), "failed", "not-finite",
     "eval loss nan against baseline 2.0: not a finite positive figure (the run diverged)"),
    (ev(eval_loss=INF), "failed", "not-finite",
     "eval loss inf against baseline 2.0: not a finite positive figure (the run diverged)"),
    (ev(base=NAN), "failed", "not-finite",
     "eval loss 1.0 against baseline nan: not a finite positive figure (the run diverged)"),
    (ev(base=0.0), "failed", "not-finite",
     "eval loss 1.0 against baseline 0.0: not a finite positive figure (the run diverged)"),
    (ev(eval_loss=2.5), "failed", "no-improvement",
     "eval loss 2.0000 -> 2.5000 (-25.0 % better), needs at least 2.0 % (TUNEFLOW_GATE_MIN_IMPROVEMENT)"),
    (ev(eval_loss=1.97), "failed", "no-improvement",
     "eval loss 2.0000 -> 1.9700 (1.5 % better), needs at least 2.0 % (TUNEFLOW_GATE_MIN_IMPROVEMENT)"),
    (ev(eval_loss=1.96), "passed", "passed",
     "eval loss 2.0000 -> 1.9600 (2.0 % better, at least 2.0 % needed)"),
    (ev(eval_loss=2.0, min_improvement=0.0), "passed", "passed",
     "eval loss 2.0000 -> 2.0000 (0.0 % better, at least 0.0 % needed)"),
    (ev(eval_loss=1.2, serving_eval_loss=1.1, serving_model="m:7"), "failed", "worse-than-serving",
     "eval loss 1.2000 is worse than 1.1000 of m:7, which serves the same dataset version"),
    (ev(eval_loss=1.1, serving_eval_loss=1.1, serving_model="m:7"), "passed", "passed",
     "eval loss 2.0000 -> 1.1000 (45.0 % better, at least 2.0 % needed), not worse than m:7 (1.1000)"),
    # first match wins: a run worse than its baseline fails on that, whatever serves
    (ev(eval_loss=2.5, serving_eval_loss=1.0, serving_model="m:7"), "failed", "no-improvement",
     "eval loss 2.0000 -> 2.5000 (-25.0 % better), needs at least 2.0 % (TUNEFLOW_GATE_MIN_IMPROVEMENT)"),
])
def test_rules(evidence, verdict, rule, reason):
    v = judge(evidence)
    assert (v.verdict, v.rule, v.reason) == (verdict, rule, reason)
    assert v.deploys == (verdict in ("passed", "off"))


def test_the_verdict_carries_its_figures():
    v = judge(ev(eval_loss=1.5, base=2.0, serving_eval_loss=1.6, serving_model="m:3"))
    assert v.as_detail() == {"verdict": "passed", "rule": "passed", "reason": v.reason, "eval_loss": 1.5,
                             "base_eval_loss": 2.0, "min_improvement": 0.02, "improvement": 0.25,
                             "serving_eval_loss": 1.6, "serving_model": "m:3"}
    assert "improvement" not in judge(ev(eval_loss=NAN)).figures  # not a figure when a loss is not
    assert "serving_model" not in judge(ev()).figures


@pytest.mark.parametrize("eval_loss, base, improvement", [
    (0.3, 0.6, 0.5),  # losses below 1 are the usual case
    (1.0, 3.0, 0.666667),  # six decimals
    (2.5, 2.0, -0.25),
    (1.0, 0.0, None),  # no relative figure against a zero baseline
])
def test_the_improvement_figure(eval_loss, base, improvement):
    assert judge(ev(eval_loss=eval_loss, base=base)).figures.get("improvement") == improvement


def test_rules_are_data_in_the_documented_order():
    assert [r.name for r in gate.RULES] == ["switched-off", "metrics-late", "metrics-missing", "not-finite",
                                            "no-improvement", "worse-than-serving", "passed"]
    assert gate.RULES[-1].applies(ev(eval_loss=None, base=None))  # the last one always applies


@pytest.mark.parametrize("value, read", [(1.5, 1.5), (2, 2.0), ("0.25", 0.25), ("NaN", NAN),
                                         (None, None), ("x", None), (True, None), ([1], None)])
def test_metric_values_as_the_gate_reads_them(value, read):
    got = gate.as_float(value)
    assert (got is None and read is None) or (math.isnan(read) and math.isnan(got)) or got == read


# -- the gate in job_events, on the local workspace (real MLflow registry, Azurite flow records) --------------

def _handle(workspace, *job_and_flow):
    from shared import storage
    from shared.events import decide, from_trigger
    from shared.registration import handle_decision
    from tests.test_job_events_concurrency import completion
    return handle_decision(decide(from_trigger(completion(*job_and_flow))), workspace, storage.container("flows"))


def _status():
    from shared import flows, storage
    [status] = flows.summarize(flows.read_all(storage.container("flows")))
    return status


@pytest.mark.integration
def test_a_run_that_got_worse_is_registered_with_its_figures_and_not_deployed(workspace, tmp_path, monkeypatch):
    from tests.test_job_events_concurrency import finished_job
    monkeypatch.setenv("TUNEFLOW_ML_BACKEND", "local")
    finished_job(workspace, tmp_path, metrics={"eval_loss": 2.5, "base_eval_loss": 2.0})
    assert _handle(workspace) is None
    status = _status()
    assert (status.stage, status.gate, status.metric("eval_loss"), status.metric("base_eval_loss")) == \
        ("gate-failed", "failed", 2.5, 2.0)
    assert status.note().startswith("eval loss 2.0000 -> 2.5000 (-25.0 % better)")
    model = workspace.get_model(*status.model.split(":"))
    assert (model.tags["eval-loss"], model.tags["base-eval-loss"]) == ("2.5", "2")

    # The verdict stands: a redelivery after the gate was switched off everywhere still sends nothing.
    monkeypatch.setenv("TUNEFLOW_GATE", "off")
    assert _handle(workspace) is None
    assert _status().gate == "failed"


@pytest.mark.integration
@pytest.mark.parametrize("by", ["request", "setting"])
def test_a_gate_switched_off_deploys_unjudged_and_says_who_switched_it(by, workspace, tmp_path, monkeypatch):
    from tests.test_job_events_concurrency import finished_job
    monkeypatch.setenv("TUNEFLOW_ML_BACKEND", "local")
    if by == "setting":
        monkeypatch.setenv("TUNEFLOW_GATE", "off")
    finished_job(workspace, tmp_path, metrics={}, extra_tags={"gate": "off"} if by == "request" else {})
    request = _handle(workspace)
    assert request is not None
    status = _status()
    assert (status.stage, status.gate) == ("gate-passed", "off")
    assert status.details["gate-passed"]["reason"] == f"gate switched off by the {by}: deployed without judging the metrics"


@pytest.mark.integration
def test_metrics_never_reported_fail_the_flow_after_the_wait(workspace, tmp_path, monkeypatch):
    """The reference event is from the past: its job ended longer ago than TUNEFLOW_GATE_METRICS_WAIT."""
    from tests.test_job_events_concurrency import finished_job
    monkeypatch.setenv("TUNEFLOW_ML_BACKEND", "local")
    finished_job(workspace, tmp_path, metrics={"base_eval_loss": 2.0})
    assert _handle(workspace) is None
    status = _status()
    assert status.details["gate-failed"]["rule"] == "metrics-missing"
    monkeypatch.setenv("TUNEFLOW_GATE_METRICS_WAIT", "3650d")  # within the wait: raise, write nothing, be redelivered
    from shared.registration import MetricsNotReady
    again, flow = "ft-race-0000bbbb", "c0ffee01-0000-4000-8000-0000000000bb"
    (tmp_path / "again").mkdir()
    finished_job(workspace, tmp_path / "again", name=again, flow=flow, metrics={"base_eval_loss": 2.0})
    with pytest.raises(MetricsNotReady, match="eval_loss not reported yet"):
        _handle(workspace, again, flow)
    from shared import flows, storage
    assert [r for r in flows.read_all(storage.container("flows")) if r["flow_id"] == flow] == []


@pytest.mark.integration
def test_a_gate_setting_that_is_neither_on_nor_off_is_refused_with_the_accepted_forms(workspace, tmp_path, monkeypatch):
    from shared.settings import SettingError
    from tests.test_job_events_concurrency import finished_job
    monkeypatch.setenv("TUNEFLOW_ML_BACKEND", "local")
    monkeypatch.setenv("TUNEFLOW_GATE", "of")
    finished_job(workspace, tmp_path)
    with pytest.raises(SettingError, match="TUNEFLOW_GATE='of': use `on`"):
        _handle(workspace)
