"""Data preparation throughput and peak memory: tuneflow vs the seed's `datasets` way vs the floor.

Each approach runs as a whole process (imports included) on the same synthetic ultrachat-shaped
parquet; wall time is the median of --repeats runs (interleaved), peak RSS the largest seen (os.wait4).
The synthetic parquet has 1,000-row row groups, as `datasets` writes the hub's files.

  tuneflow   `tuneflow prepare FILE --out DIR`: validation, dedupe, split, three JSONL outputs
  datasets   the seed: Dataset.from_parquet -> keep the first N % (here 100) -> to_json
  floor      polars scan_parquet -> sink_ndjson, no validation at all; run twice, with polars'
             defaults and with the one setting tuneflow changes (POLARS_ASYNC_THREAD_COUNT=1), and
             the faster of the two is the floor the ratio uses

Memory flatness: tuneflow's peak RSS at 1x and 4x the input (--rows / 4 and --rows).

Usage: python bench/prepare_throughput.py [--rows 200000] [--repeats 5]   (writes bench/results/prepare.json)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED_WAY = ("import sys; from datasets import Dataset; d = Dataset.from_parquet(sys.argv[1]); "
            "d = d.select(range(int(len(d) * 100 / 100))); d.to_json(sys.argv[2])")
FLOOR = "import sys, polars as pl; pl.scan_parquet(sys.argv[1]).sink_ndjson(sys.argv[2])"


def run(cmd: list[str], env: dict, fresh: list[Path]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one whole process; `fresh` outputs are removed first (untimed)."""
    for path in fresh:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:4]} failed: {proc.stderr.read().decode()[-500:]}")
    return wall, usage.ru_maxrss / 1024


@dataclass
class Approach:
    label: str
    cmd: list[str]
    rows: int
    out: Path  # removed before each run
    outputs: tuple[str, ...]  # files whose size is the output (relative to out when it is a folder)
    env: dict = field(default_factory=dict)
    walls: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)

    def output_mb(self) -> float:
        paths = [self.out / o for o in self.outputs] if self.outputs else [self.out]
        return sum(p.stat().st_size for p in paths) / 1e6

    def summary(self) -> dict:
        wall, mb = statistics.median(self.walls), self.output_mb()
        print(f"{self.label:<22} {wall:7.2f} s {self.rows / wall:10,.0f} rows/s {mb / wall:7.1f} MB/s "
              f"{max(self.rss):7.0f} MB peak", flush=True)
        return {"approach": self.label, "median_s": round(wall, 2), "rows_per_s": round(self.rows / wall),
                "mb_per_s": round(mb / wall, 1), "peak_rss_mb": round(max(self.rss)),
                "median_rss_mb": round(statistics.median(self.rss)), "output_mb": round(mb, 1),
                "runs_s": [round(w, 2) for w in self.walls]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from local import sampledata
    with tempfile.TemporaryDirectory(prefix="tuneflow-bench-") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "HF_HOME": str(tmp / "hf"), "HF_DATASETS_CACHE": str(tmp / "hf" / "datasets"),
               "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        inputs = {}
        for n in (args.rows // 4, args.rows):
            t = time.perf_counter()
            inputs[n] = sampledata.write(tmp / f"train_sft_{n}.parquet", n, seed=42)
            print(f"generated {n:,} rows ({inputs[n].stat().st_size / 1e6:.0f} MB parquet) in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
        big = inputs[args.rows]
        out = tmp / "out"
        splits = ("train.jsonl", "test.jsonl")
        approaches = [
            Approach("tuneflow", [sys.executable, "-m", "local.cli", "prepare", str(big), "--out", str(out)],
                     args.rows, out, splits),
            Approach("datasets", [sys.executable, "-c", SEED_WAY, str(big), str(tmp / "seed.jsonl")],
                     args.rows, tmp / "seed.jsonl", ()),
            Approach("floor", [sys.executable, "-c", FLOOR, str(big), str(tmp / "floor.jsonl")],
                     args.rows, tmp / "floor.jsonl", ()),
            Approach("floor 1 async thread", [sys.executable, "-c", FLOOR, str(big), str(tmp / "floor1.jsonl")],
                     args.rows, tmp / "floor1.jsonl", (), env={"POLARS_ASYNC_THREAD_COUNT": "1"}),
            Approach("tuneflow 1x", [sys.executable, "-m", "local.cli", "prepare", str(inputs[args.rows // 4]),
                                     "--out", str(tmp / "small")], args.rows // 4, tmp / "small", splits),
        ]
        for i in range(args.repeats):  # interleaved: a slow moment of the machine hits every approach alike
            for a in approaches:
                wall, rss = run(a.cmd, {**env, **a.env}, [a.out])
                a.walls.append(wall)
                a.rss.append(rss)
            print(f"round {i + 1}/{args.repeats}: " + ", ".join(f"{a.label} {a.walls[-1]:.2f} s" for a in approaches),
                  flush=True)
        ours, seed, floor_default, floor_one, small = (a.summary() for a in approaches)
        results = [ours, seed, floor_default, floor_one, small]
        floor = min(floor_default, floor_one, key=lambda r: r["median_s"])
    summary = {"rows": args.rows, "results": results, "memory_flatness": {
        "rows_1x": args.rows // 4, "peak_rss_mb_1x": small["peak_rss_mb"], "rows_4x": args.rows,
        "peak_rss_mb_4x": ours["peak_rss_mb"]},
        "ratios": {"throughput_vs_datasets": round(ours["rows_per_s"] / seed["rows_per_s"], 2),
                   "memory_vs_datasets": round(ours["peak_rss_mb"] / seed["peak_rss_mb"], 2),
                   "time_vs_floor": round(ours["median_s"] / floor["median_s"], 2)}}
    print(json.dumps(summary["ratios"]), json.dumps(summary["memory_flatness"]))
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "prepare.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
