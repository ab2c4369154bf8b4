"""Ten datasets dropped at once on the concurrent local host: exactly one flow each, end to end."""

from __future__ import annotations

import threading

import pytest

from tests.conftest import invocations, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
DATASETS = 10
DONE = ("rolled-out", "rollout-failed", "superseded", "job-failed", "deploy-failed", "refused", "gate-failed")


def test_ten_datasets_dropped_at_once_become_exactly_one_flow_each(host, workspace, tmp_path, monkeypatch):
    from local import sampledata
    from shared import flows, storage
    from shared.contracts import FLOWS_CONTAINER
    monkeypatch.setenv("TUNEFLOW_ENDPOINT_TTL", "1h")
    names = [f"many-{i:02d}" for i in range(DATASETS)]
    files = {n: sampledata.write(tmp_path / f"{n}.jsonl", 60, seed=i) for i, n in enumerate(names)}
    datasets = storage.container("datasets")
    start = threading.Barrier(DATASETS)

    def drop(name: str) -> None:
        start.wait()
        with open(files[name], "rb") as f:
            datasets.upload_blob(f"{name}/train.jsonl", f)
    threads = [threading.Thread(target=drop, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    def finished():
        rows = [f for f in flows.summarize(flows.read_all(storage.container(FLOWS_CONTAINER))) if f.dataset in names]
        return rows if len(rows) >= DATASETS and all(r.stage in DONE for r in rows) else None
    rows = wait_for(finished, 900, "every flow to finish")

    assert sorted(r.dataset for r in rows) == names, "one flow per dataset, no more"
    assert {r.stage for r in rows} == {"rolled-out"}, {r.dataset: (r.stage, r.details) for r in rows}
    assert len({r.job for r in rows}) == DATASETS and len({r.model for r in rows}) == DATASETS
    assert sorted(d.name for d in workspace.jobs.iterdir()) == sorted(r.job for r in rows)
    assert sorted(e.name for e in workspace.list_endpoints()) == sorted(r.endpoint for r in rows)
    assert len(invocations(host, "deploy", "Succeeded")) == DATASETS
    assert most_at_once(invocations(host, "data_arrival")) > 1, "the preparations ran one after the other"


def most_at_once(records: list[dict]) -> int:
    """The largest number of these invocations that were running at the same moment."""
    from datetime import datetime, timedelta
    edges = []
    for r in records:
        start = datetime.fromisoformat(r["started_at"])
        edges += [(start, 1), (start + timedelta(milliseconds=r["duration_ms"]), -1)]
    running = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        running += step
        peak = max(peak, running)
    return peak
