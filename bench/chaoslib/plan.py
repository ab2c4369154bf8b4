"""The chaos run's datasets: a seeded mix of what users drop, each with what must come of it.

| kind | what is dropped | expected |
| --- | --- | --- |
| single | one .jsonl, .json or .parquet file | one flow, deployed and reaped |
| multi | train_sft.jsonl, test_sft.jsonl and dataset.json, in a random order | one flow |
| twice | the same file twice, under the same name (a new blob version, the same bytes) | one flow |
| again | the same bytes under a second name | one flow |
| redrop | one file, then new content under the same name | two flows |
| refused | a file whose rows are mostly unusable | one `refused` flow, no job |
| invalid | a blob whose name is not a dataset's | a report in `prepared/_invalid/`, no flow |
| waits | a `train_sft.jsonl` alone (a split without its dataset.json) | waiting, no flow |
| gatefail | train_sft.jsonl with gibberish replies, a normal test_sft.jsonl, dataset.json | one flow, registered, `gate-failed`: no endpoint |
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field

from local import sampledata

KINDS = ("single", "multi", "twice", "redrop", "refused", "single", "multi", "again", "invalid", "waits",
         "gatefail", "redrop")
FORMATS = (".jsonl", ".json", ".parquet")


@dataclass
class Upload:
    blob: str  # name inside the datasets container
    data: bytes
    at: float  # seconds after the drops begin


@dataclass
class DatasetPlan:
    name: str
    kind: str
    uploads: list[Upload] = field(default_factory=list)
    expect: str = "deployed"  # deployed | gate-failed | refused | invalid | waiting
    flows: int = 1  # distinct prepared versions, so flows, that must come of it

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "expect": self.expect, "flows": self.flows,
                "uploads": [{"blob": u.blob, "bytes": len(u.data), "at": round(u.at, 2)} for u in self.uploads]}


def _file(rows: list[dict], suffix: str) -> bytes:
    if suffix == ".jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    if suffix == ".json":
        return json.dumps(rows).encode()
    import pyarrow as pa
    import pyarrow.parquet as pq
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=sampledata.PARQUET_ROW_GROUP_ROWS)
    return buf.getvalue()


def build(seed: int, n: int, spread_s: float = 20.0) -> list[DatasetPlan]:
    """`n` datasets; their uploads start within `spread_s` of each other (all "at once")."""
    rng = random.Random(seed)
    plans = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        name = f"chaos-{seed}-{i:02d}-{kind}"
        rows = list(sampledata.rows(rng.randint(60, 110), seed=seed * 1000 + i))
        start = rng.uniform(0, spread_s)
        plan = DatasetPlan(name, kind)
        if kind in ("single", "twice", "again", "redrop"):
            suffix = rng.choice(FORMATS)
            data = _file(rows, suffix)
            plan.uploads.append(Upload(f"{name}/data{suffix}", data, start))
            if kind == "twice":
                plan.uploads.append(Upload(f"{name}/data{suffix}", data, start + rng.uniform(0, 15)))
            elif kind == "again":
                plan.uploads.append(Upload(f"{name}/copy{suffix}", data, start + rng.uniform(0, 15)))
            elif kind == "redrop":
                fresh = list(sampledata.rows(rng.randint(60, 110), seed=seed * 1000 + i + 500))
                plan.uploads.append(Upload(f"{name}/data{suffix}", _file(fresh, suffix), start + rng.uniform(10, 60)))
                plan.flows = 2
        elif kind in ("multi", "gatefail"):
            cut = int(len(rows) * 0.8)
            train = list(sampledata.gibberish(rows[:cut], seed=seed * 1000 + i)) if kind == "gatefail" else rows[:cut]
            files = {"train_sft.jsonl": _file(train, ".jsonl"), "test_sft.jsonl": _file(rows[cut:], ".jsonl"),
                     "dataset.json": json.dumps({"files": ["train_sft.jsonl", "test_sft.jsonl"]}).encode()}
            order = list(files)
            rng.shuffle(order)
            at = start
            for file in order:
                plan.uploads.append(Upload(f"{name}/{file}", files[file], at))
                at += rng.uniform(0, 4)
            if kind == "gatefail":
                plan.expect = "gate-failed"
        elif kind == "refused":
            bad = "".join("not json at all\n" for _ in range(len(rows) // 3)).encode()
            plan.uploads.append(Upload(f"{name}/data.jsonl", _file(rows, ".jsonl") + bad, start))
            plan.expect = "refused"
        elif kind == "invalid":
            plan.uploads.append(Upload(f"{name}/notes.txt", b"not a dataset", start))
            plan.expect, plan.flows = "invalid", 0
        elif kind == "waits":
            plan.uploads.append(Upload(f"{name}/train_sft.jsonl", _file(rows, ".jsonl"), start))
            plan.expect, plan.flows = "waiting", 0
        plans.append(plan)
    return plans
