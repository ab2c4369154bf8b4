"""Preparations at once share one memory budget per worker (shared/arrival.py): each reserves its
expected peak (shared/dataset.py peak_memory_mb) and waits while the budget is spent."""

from __future__ import annotations

import threading

from local import sampledata
from shared.arrival import MemoryBudget
from shared.dataset import PEAK_BASE_MB, peak_memory_mb
from shared.sources import Source
from tests.conftest import wait_for


def test_small_reservations_share_the_budget_and_a_large_one_waits_for_room():
    budget = MemoryBudget(1000)
    release = threading.Event()
    running: list[str] = []

    def prepare(name: str, mb: int) -> None:
        with budget.reserve(mb):
            running.append(name)
            release.wait(30)
    small = [threading.Thread(target=prepare, args=(f"s{i}", 100)) for i in range(5)]
    for t in small:
        t.start()
    wait_for(lambda: len(running) == 5, 10, "five small preparations at once")
    big = threading.Thread(target=prepare, args=("big", 700))
    big.start()
    assert not big.join(0.5) and "big" not in running and budget.used_mb == 500  # 500 + 700 > 1000: it waits
    release.set()
    for t in small + [big]:
        t.join(30)
    assert running[-1] == "big" and budget.used_mb == 0 and budget.peak_mb <= 1000


def test_one_larger_than_the_whole_budget_runs_alone():
    budget = MemoryBudget(100)
    with budget.reserve(500):
        assert budget.used_mb == 500
    assert budget.used_mb == 0


def test_the_estimate_follows_the_largest_row_group_and_the_json_read(tmp_path):
    rows = list(sampledata.rows(3000, seed=1))
    small_groups = sampledata.write_rows(tmp_path / "groups.parquet", rows)  # 1,000-row groups
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "one.parquet", row_group_size=len(rows))
    jsonl = sampledata.write_rows(tmp_path / "d.jsonl", rows)
    estimate = {name: peak_memory_mb([Source(name, tmp_path / name, bytes=(tmp_path / name).stat().st_size)])
                for name in ("groups.parquet", "one.parquet", "d.jsonl")}
    assert PEAK_BASE_MB < estimate["groups.parquet"] < estimate["one.parquet"]
    assert estimate["d.jsonl"] > PEAK_BASE_MB + jsonl.stat().st_size / 1e6  # more than the bytes read
    assert small_groups.exists()
