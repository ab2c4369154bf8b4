"""Data preparation throughput and peak memory: tuneflow vs the seed's `datasets` way vs the floor.

Each approach runs as a whole process (imports included) on the same synthetic ultrachat-shaped
parquet; wall time is the median of --repeats runs, peak RSS the largest seen (os.wait4).

  tuneflow   `tuneflow prepare FILE --out DIR`: validation, dedupe, split, three JSONL outputs
  datasets   the seed: Dataset.from_parquet -> keep the first N % (here 100) -> to_json
  floor      polars scan_parquet -> sink_ndjson, no validation at all

Memory flatness: tuneflow's peak RSS at 1x and 4x the input (--rows / 4 and --rows).

Usage: python bench/prepare_throughput.py [--rows 200000] [--repeats 3]   (writes bench/results/prepare.json)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED_WAY = ("import sys; from datasets import Dataset; d = Dataset.from_parquet(sys.argv[1]); "
            "d = d.select(range(int(len(d) * 100 / 100))); d.to_json(sys.argv[2])")
FLOOR = "import sys, polars as pl; pl.scan_parquet(sys.argv[1]).sink_ndjson(sys.argv[2])"


def run(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one whole process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:4]} failed: {proc.stderr.read().decode()[-500:]}")
    return wall, usage.ru_maxrss / 1024


def measure(label: str, cmd: list[str], env: dict, repeats: int, rows: int, out_bytes) -> dict:
    walls, rss = [], []
    for _ in range(repeats):
        w, r = run(cmd, env)
        walls.append(w)
        rss.append(r)
    wall = statistics.median(walls)
    mb = out_bytes() / 1e6
    result = {"approach": label, "median_s": round(wall, 2), "rows_per_s": round(rows / wall),
              "mb_per_s": round(mb / wall, 1), "peak_rss_mb": round(max(rss)), "output_mb": round(mb, 1),
              "runs_s": [round(w, 2) for w in walls]}
    print(f"{label:<10} {wall:7.2f} s {rows / wall:10,.0f} rows/s {mb / wall:7.1f} MB/s {max(rss):7.0f} MB peak", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
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

        def ours_bytes():
            return sum((out / f).stat().st_size for f in ("train.jsonl", "test.jsonl"))

        results = [
            measure("tuneflow", [sys.executable, "-m", "local.cli", "prepare", str(big), "--out", str(out)],
                    env, args.repeats, args.rows, ours_bytes),
            measure("datasets", [sys.executable, "-c", SEED_WAY, str(big), str(tmp / "seed.jsonl")],
                    env, args.repeats, args.rows, lambda: (tmp / "seed.jsonl").stat().st_size),
            measure("floor", [sys.executable, "-c", FLOOR, str(big), str(tmp / "floor.jsonl")],
                    env, args.repeats, args.rows, lambda: (tmp / "floor.jsonl").stat().st_size),
        ]
        small = measure("tuneflow 1x", [sys.executable, "-m", "local.cli", "prepare", str(inputs[args.rows // 4]),
                                        "--out", str(tmp / "small")], env, args.repeats, args.rows // 4,
                        lambda: sum((tmp / "small" / f).stat().st_size for f in ("train.jsonl", "test.jsonl")))
    ours, seed, floor = results
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
