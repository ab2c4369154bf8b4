"""Reaper planning time over a large inventory (the rules and the circuit breaker, no I/O).

10,000 endpoints (by default) with a realistic mix: managed and unmanaged, expired and not,
offsets in several time zones, do-not-delete, transitional states, failed or missing deployments,
garbage and missing expiry tags, tag-key case variants. Reports the median of --repeats runs
and the per-endpoint cost; also `plan` with the breaker tripped (many expired).

Usage: python bench/reaper_plan.py [--endpoints 10000] [--repeats 7]   (writes bench/results/reaper.json)
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.ml.base import DeploymentInfo, EndpointInfo  # noqa: E402
from shared.reaper import ReaperPolicy, plan  # noqa: E402

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
ZONES = [timezone.utc, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))]


def inventory(n: int, expired_share: float, seed: int = 1) -> list[EndpointInfo]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        tags = {rng.choice(["managed-by", "Managed-By"]): "tuneflow"} if rng.random() < 0.9 else {"owner": "team-x"}
        r = rng.random()
        if r < 0.05:
            tags["expires-at"] = rng.choice(["soon", "", "2026-11-26T11:00:00", "1764072000"])
        elif r < 0.08:
            pass  # no expiry at all
        else:
            delta = timedelta(minutes=rng.randint(1, 600)) * (-1 if rng.random() < expired_share else 1)
            tags[rng.choice(["expires-at", "Expires-At"])] = (NOW + delta).astimezone(rng.choice(ZONES)).isoformat()
        if rng.random() < 0.02:
            tags["do-not-delete"] = "true"
        state = rng.choices(["Succeeded", "Creating", "Updating", "Deleting", "Failed"], [90, 3, 2, 2, 3])[0]
        deployments = () if rng.random() < 0.03 else (
            DeploymentInfo("demo", "Standard_NC24ads_A100_v4", 1, rng.choice(["Succeeded"] * 19 + ["Failed"])),)
        created = (NOW - timedelta(hours=rng.randint(1, 48))).isoformat() if rng.random() < 0.95 else ""
        out.append(EndpointInfo(f"tf-bench-{i:05d}", tags, state, created, "", deployments))
    return out


def measure(endpoints, policy, repeats: int) -> tuple[float, dict]:
    times, counts = [], {}
    for _ in range(repeats):
        t = time.perf_counter()
        decisions, alert = plan(endpoints, NOW, policy)
        times.append(time.perf_counter() - t)
    for d in decisions:
        counts[d.rule] = counts.get(d.rule, 0) + 1
    return statistics.median(times), {"rules": dict(sorted(counts.items())), "alert": bool(alert)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    results = {}
    for label, share, policy in (("normal (breaker quiet)", 0.02, ReaperPolicy(max_deletes=10_000, max_delete_share=1.0)),
                                 ("flood (breaker trips)", 0.6, ReaperPolicy())):
        endpoints = inventory(args.endpoints, share)
        median, info = measure(endpoints, policy, args.repeats)
        results[label] = {"endpoints": args.endpoints, "median_s": round(median, 4),
                          "per_endpoint_us": round(median / args.endpoints * 1e6, 1), **info}
        print(f"{label:<24} {args.endpoints:,} endpoints: {median * 1000:7.1f} ms median "
              f"({median / args.endpoints * 1e6:.1f} µs each); alert={info['alert']}", flush=True)
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "reaper.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
