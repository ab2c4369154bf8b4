"""The chaos run's verdict (bench/chaoslib/verdict.py) can fail: each kind of violation it must catch,
on observations made up for the purpose, and a clean run that passes."""

from __future__ import annotations

import sys
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT))
from bench.chaoslib.observe import Seen  # noqa: E402
from bench.chaoslib.plan import DatasetPlan, Upload  # noqa: E402
from bench.chaoslib.verdict import Observed, Verdict, judge  # noqa: E402

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
STARTED = T0.timestamp()
STAGES = ("prepared", "submitted", "registered", "deployed", "smoke-tested", "rolled-out", "reaped")


def flow(fid: str, stages=STAGES, job: str = "ft-a-1", endpoint: str = "tf-a-1", details=None) -> dict:
    return {"flow_id": fid, "version": f"v{fid}", "job": job, "endpoint": endpoint, "details": details or {},
            "stages": {s: (T0 + timedelta(seconds=10 * i)).isoformat() for i, s in enumerate(stages)}}


def clean() -> tuple[list, Observed, Seen]:
    plans = [DatasetPlan("a", "single", [Upload("a/d.jsonl", b"", 0)]),
             DatasetPlan("r", "refused", [Upload("r/d.jsonl", b"", 0)], expect="refused"),
             DatasetPlan("w", "waits", [Upload("w/train_sft.jsonl", b"", 0)], expect="waiting", flows=0)]
    observed = Observed(flows={"a": [flow("1")], "r": [flow("9", stages=("refused",), job="", endpoint="")]},
                        waiting={"w"}, invalid_reports=[], prepared={"a": {"v1"}}, models={"a": Counter({"v1": 1})},
                        queues={"finetune-requests": 0, "deployments-deadletter": 0}, dead_letters=[],
                        endpoints_left=[], running_while_up=[], left_after_stop=[], ports_open=[])
    seen = Seen(endpoints={"tf-a-1": {"tags": {"dataset": "a", "flow-id": "1"}, "ports": {1}}},
                jobs={"ft-a-1": {"dataset": "a", "flow-id": "1"}},
                deployments={"tf-a-1/v-1": {"flow-id": "1"}})
    return plans, observed, seen


KILLS = [{"n": 1, "at": 5.0, "target": "host", "pid": 1, "detail": ""},
         {"n": 2, "at": 25.0, "target": "train", "pid": 2, "detail": "ft-a-1"}]


def run(plans, observed, seen, kills=KILLS, attempts: int = 3) -> Verdict:
    return judge(Verdict(seed=1, datasets=len(plans), kills=len(kills)), plans, observed, seen, kills, STARTED, attempts)


def test_a_clean_run_has_no_violation():
    v = run(*clean())
    assert v.violations == [] and (v.flows_expected, v.flows_exactly_once, v.refused_as_expected) == (1, 1, 2)


def _second_endpoint(o, s):
    s.endpoints["tf-a-2"] = {"tags": {"dataset": "a", "flow-id": "1"}, "ports": {2}}


def _second_job(o, s):
    s.jobs["ft-a-2"] = {"dataset": "a", "flow-id": "1"}


def _second_model(o, s):
    o.models["a"]["v1"] = 2


def _second_flow(o, s):
    """The same bytes prepared as a second version: a second flow, with all it brings."""
    o.flows["a"].append(dict(flow("2", job="ft-a-3", endpoint="tf-a-3"), version="v2"))
    o.prepared["a"].add("v2")
    o.models["a"]["v2"] = 1
    s.jobs["ft-a-3"] = {"dataset": "a", "flow-id": "2"}
    s.endpoints["tf-a-3"] = {"tags": {"dataset": "a", "flow-id": "2"}, "ports": {3}}
    s.deployments["tf-a-3/v-2"] = {"flow-id": "2"}


def _second_deployment(o, s):
    s.deployments["tf-a-1/v-9"] = {"flow-id": "1"}


def _never_deployed(o, s):
    s.deployments.clear()


def _no_flow(o, s):
    o.flows.pop("a")


def _stuck(o, s):
    o.flows["a"] = [flow("1", stages=STAGES[:3])]


def _smoke_failed(o, s):
    o.flows["a"] = [flow("1", stages=("prepared", "submitted", "registered", "deployed", "smoke-failed", "reaped"),
                         details={"smoke-failed": {"error": "424"}})]


def _poisoned(o, s):
    o.queues["deployments-deadletter"] = 1


def _left_in_queue(o, s):
    o.queues["finetune-requests"] = 2


def _endpoint_left(o, s):
    o.endpoints_left.append("tf-a-1")


def _process_left(o, s):
    o.left_after_stop.append({"pid": 7, "cmd": "python -m local.scoring"})


def _port_open(o, s):
    o.ports_open.append(1)


def _refused_deployed(o, s):
    s.jobs["ft-r-1"] = {"dataset": "r", "flow-id": "9"}


def _not_waiting(o, s):
    o.waiting.clear()


def _dead_letter(o, s):
    o.dead_letters.append("TUNEFLOW-JOB-EVENTS/2026/12/1/0/x.json")


@pytest.mark.parametrize("break_it, kind", [
    (_second_endpoint, "duplicates"), (_second_job, "duplicates"), (_second_model, "duplicates"),
    (_second_flow, "duplicates"), (_second_deployment, "duplicates"), (_never_deployed, "lost"), (_no_flow, "lost"), (_stuck, "stuck"), (_smoke_failed, "lost"),
    (_poisoned, "lost"), (_left_in_queue, "stuck"), (_endpoint_left, "orphans"), (_process_left, "orphans"),
    (_port_open, "orphans"), (_refused_deployed, "duplicates"), (_not_waiting, "lost"), (_dead_letter, "lost"),
])
def test_each_kind_of_violation_is_caught_and_names_the_kill_before_it(break_it, kind):
    plans, observed, seen = clean()
    break_it(observed, seen)
    v = run(plans, observed, seen)
    assert v.violations and {x["kind"] for x in v.violations} == {kind}, v.violations
    assert getattr(v, kind) == len(v.violations)
    # the kill before the dataset's last record (none before a record made at the start)
    assert all(x["after_kill"] in (*KILLS, None) for x in v.violations)


def test_a_job_killed_in_every_attempt_may_fail_its_flow_if_it_says_why():
    plans, observed, seen = clean()
    failed = flow("1", stages=("prepared", "submitted", "job-failed"),
                  details={"job-failed": {"error": "the job's process was lost (killed) in each of its 1 attempt(s)"}})
    observed.flows["a"] = [failed]
    assert run(plans, observed, seen, attempts=1).violations == []  # killed once, one attempt: documented
    assert run(plans, observed, seen, attempts=3).violations  # three attempts, killed once: it should have completed


def test_a_violation_names_the_last_kill_before_the_datasets_last_record():
    plans, observed, seen = clean()
    _stuck(observed, seen)  # its last record at 20 s: after kill 1 (5 s), before kill 2 (25 s)
    (violation,) = run(plans, observed, seen).violations
    assert violation["after_kill"] == KILLS[0]


GATE_STAGES = ("prepared", "submitted", "registered", "gate-failed")


def gate_case():
    plans, observed, seen = clean()
    plans.append(DatasetPlan("g", "gatefail", [Upload("g/train_sft.jsonl", b"", 0)], expect="gate-failed"))
    observed.flows["g"] = [flow("5", stages=GATE_STAGES, job="ft-g-5", endpoint="")]
    observed.models["g"] = Counter({"v5": 1})
    seen.jobs["ft-g-5"] = {"dataset": "g", "flow-id": "5"}
    return plans, observed, seen


def test_a_dataset_whose_gate_must_fail_counts_once_when_it_did():
    v = run(*gate_case())
    assert v.violations == [] and (v.flows_expected, v.flows_exactly_once) == (2, 2)


@pytest.mark.parametrize("change, kind", [
    (lambda o, s: o.flows["g"].__setitem__(0, flow("5", stages=(*GATE_STAGES[:3], "gate-passed", "deployed"),
                                                    job="ft-g-5")), "duplicates"),  # the gate let it through
    (lambda o, s: s.endpoints.__setitem__("tf-g-5", {"tags": {"dataset": "g", "flow-id": "5"}, "ports": {5}}),
     "duplicates"),  # an endpoint appeared anyway
    (lambda o, s: o.flows["g"].__setitem__(0, flow("5", stages=GATE_STAGES[:3], job="ft-g-5")), "stuck"),
    (lambda o, s: o.flows.pop("g"), "lost"),
    (lambda o, s: s.jobs.__setitem__("ft-g-6", {"dataset": "g", "flow-id": "5"}), "duplicates"),
])
def test_a_gate_that_should_have_failed_and_did_not_is_a_violation(change, kind):
    plans, observed, seen = gate_case()
    change(observed, seen)
    v = run(plans, observed, seen)
    assert [x["kind"] for x in v.violations if x["dataset"] == "g"] == [kind]


def redrop_case():
    """A dataset dropped again with new content: two flows, two deployments on its one endpoint."""
    plans, observed, seen = clean()
    plans.append(DatasetPlan("d", "redrop", [Upload("d/x.jsonl", b"", 0), Upload("d/x.jsonl", b"", 30)], flows=2))
    observed.flows["d"] = [dict(flow("6", job="ft-d-6", endpoint="tf-d"), version="v6"),
                           dict(flow("7", job="ft-d-7", endpoint="tf-d"), version="v7")]
    observed.prepared["d"] = {"v6", "v7"}
    observed.models["d"] = Counter({"v6": 1, "v7": 1})
    seen.jobs.update({"ft-d-6": {"dataset": "d", "flow-id": "6"}, "ft-d-7": {"dataset": "d", "flow-id": "7"}})
    seen.endpoints["tf-d"] = {"tags": {"dataset": "d", "flow-id": "7"}, "ports": {9}}
    seen.deployments.update({"tf-d/v-6": {"flow-id": "6"}, "tf-d/v-7": {"flow-id": "7"}})
    return plans, observed, seen


def test_a_redropped_dataset_rolls_its_second_version_into_the_same_endpoint():
    plans, observed, seen = redrop_case()
    observed.flows["d"][1]["details"]["rolled-out"] = {"previous": "v-6"}
    v = run(plans, observed, seen)
    assert v.violations == [] and (v.flows_expected, v.flows_exactly_once) == (3, 3)
    assert v.rolled_out_over_a_previous == 1


def test_a_version_overtaken_by_a_later_drop_may_be_superseded_and_then_never_deployed():
    plans, observed, seen = redrop_case()
    observed.flows["d"][0] = dict(flow("6", stages=("prepared", "submitted", "registered", "superseded"),
                                       job="ft-d-6", endpoint=""), version="v6")
    seen.deployments.pop("tf-d/v-6")
    assert run(plans, observed, seen).violations == []
    seen.deployments["tf-d/v-6"] = {"flow-id": "6"}  # superseded, and deployed all the same
    assert [x["kind"] for x in run(plans, observed, seen).violations] == ["duplicates"]


def test_a_second_endpoint_for_a_redropped_dataset_is_a_duplicate():
    plans, observed, seen = redrop_case()
    seen.endpoints["tf-d-2"] = {"tags": {"dataset": "d", "flow-id": "7"}, "ports": {10}}
    assert "duplicates" in {x["kind"] for x in run(plans, observed, seen).violations if x["dataset"] == "d"}
