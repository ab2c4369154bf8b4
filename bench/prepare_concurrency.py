"""Peak memory of K data preparations at once in one process, as the blob trigger runs them in Azure.

The real host runs blob-triggered invocations (Event Grid source) concurrently, up to
`extensions.blobs.maxDegreeOfParallelism` (default 8 x cores), and the Python worker runs a sync
function such as `data_arrival` on its thread pool (default min(32, cores + 4) threads), so K
preparations share one process's memory. This benchmark measures that process.

For each K (1, 2, 4, ... up to --max-k, default 8 x this machine's cores) a fresh child process
runs K `shared.arrival.handle_dataset_blob` calls at once in K threads, each on its own dataset
blob in Azurite (started and stopped here, as tests/conftest.py does), exactly the function's
path: spool, validate, dedupe, split, upload the outputs. The child reports its peak RSS
(getrusage), its RSS after imports (`baseline`: polars, the storage SDK) and after the run
(what the allocators keep), and the wall time. One child per K: each peak is its own.

Every dataset is the same synthetic ultrachat-shaped parquet (local/sampledata.py, 1,000-row
row groups as the hub's files), uploaded under K dataset names. --row-group-rows writes bigger
row groups, to measure the worst files TUNEFLOW_MAX_ROW_GROUP_MB lets through (a row group is
decoded whole): e.g. --rows 115000 --row-group-rows 115000 is one group of about 250 MB.
The closing line extrapolates how many fit an instance from the measured growth per preparation.

Usage: python bench/prepare_concurrency.py [--rows 50000] [--max-k 16] [--row-group-rows 1000]
                                           [--out bench/results/prepare_concurrency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FILE = "data.parquet"  # no split name: one file is a whole dataset (a split alone would wait for dataset.json)
INSTANCE_MB = 2048  # infra/app/functions.bicep: instanceMemoryMB


def current_rss_mb() -> float:
    """This process's resident memory now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(datasets: list[str]) -> dict:
    """Run one preparation per dataset, all at once in threads; return the process's numbers."""
    import polars  # noqa: F401  (imported by the first preparation anyway: part of the baseline)
    from shared import storage
    from shared.arrival import handle_dataset_blob
    from shared.contracts import DATASETS_CONTAINER
    import shared.messages  # noqa: F401
    container = storage.container(DATASETS_CONTAINER)
    baseline = current_rss_mb()
    start = threading.Barrier(len(datasets))
    seconds: list[float] = []
    errors: list[str] = []

    def prepare(dataset: str) -> bool:
        client = container.get_blob_client(f"{dataset}/{FILE}")
        start.wait()
        t = time.perf_counter()
        try:
            request = handle_dataset_blob(client)
        except Exception as exc:  # reported, so one failure does not hide the other K - 1 numbers
            errors.append(f"{dataset}: {type(exc).__name__}: {exc}")
            request = None
        seconds.append(time.perf_counter() - t)
        return request is not None

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(datasets), thread_name_prefix="invocation") as pool:
        ok = sum(pool.map(prepare, datasets))
    wall = time.perf_counter() - t0
    return {"k": len(datasets), "ok": ok, "wall_s": round(wall, 2), "max_invocation_s": round(max(seconds), 2),
            "baseline_rss_mb": round(baseline), "peak_rss_mb": round(peak_rss_mb()),
            "after_rss_mb": round(current_rss_mb()), "errors": errors[:3]}


def ks_up_to(max_k: int) -> list[int]:
    ks, k = [], 1
    while k < max_k:
        ks.append(k)
        k *= 2
    return ks + [max_k]


def write_input(path: Path, rows: int, row_group_rows: int) -> Path:
    from local import sampledata
    sampledata.write(path, rows, seed=42)
    if row_group_rows != sampledata.PARQUET_ROW_GROUP_ROWS:
        import pyarrow.parquet as pq
        table = pq.read_table(path)
        pq.write_table(table, path, row_group_size=row_group_rows)
    return path


def upload(conn: str, names: list[str], source: Path) -> None:
    from azure.storage.blob import BlobServiceClient
    from shared.contracts import DATASETS_CONTAINER
    container = BlobServiceClient.from_connection_string(conn).get_container_client(DATASETS_CONTAINER)
    if not container.exists():
        container.create_container()
    for name in names:
        with open(source, "rb") as f:
            container.upload_blob(f"{name}/{FILE}", f, overwrite=True)


def clean(conn: str) -> None:
    """Drop every blob the run left (inputs and prepared outputs), so Azurite's disk stays small."""
    from azure.storage.blob import BlobServiceClient
    service = BlobServiceClient.from_connection_string(conn)
    for c in service.list_containers():
        container = service.get_container_client(c.name)
        for blob in container.list_blobs():
            container.delete_blob(blob.name)


def run_k(k: int, conn: str, source: Path, tmp: Path) -> dict:
    names = [f"k{k}-{i:02d}" for i in range(k)]
    upload(conn, names, source)
    env = {**os.environ, "AzureWebJobsStorage": conn, "TUNEFLOW_STATE_DIR": str(tmp / "state"),
           "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp)}
    proc = subprocess.run([sys.executable, __file__, "--child", *names], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    clean(conn)
    if proc.returncode != 0:
        raise SystemExit(f"K={k} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def recommend(results: list[dict], instance_mb: int, headroom_mb: int) -> dict:
    """The largest K whose projected peak fits the instance minus headroom, from the measured growth per preparation."""
    single = results[0]["peak_rss_mb"]
    per_prep = max((r["peak_rss_mb"] - single) / (r["k"] - 1) for r in results if r["k"] > 1) if len(results) > 1 \
        else single - results[0]["baseline_rss_mb"]
    fits = max(1, int((instance_mb - headroom_mb - single) // per_prep) + 1) if per_prep > 0 else None
    return {"instance_mb": instance_mb, "headroom_mb": headroom_mb, "peak_k1_mb": single,
            "growth_per_extra_preparation_mb": round(per_prep), "max_k_that_fits": fits}


def print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"{summary['rows']:,} rows per dataset ({summary['input_mb']} MB parquet, "
                        f"{summary['row_group_rows']:,}-row groups), {summary['cores']} cores")
    for col in ("K at once", "ok", "wall s", "slowest s", "baseline MB", "peak RSS MB", "peak - baseline per K",
                "after MB"):
        table.add_column(col, justify="right")
    for r in summary["results"]:
        per_k = (r["peak_rss_mb"] - r["baseline_rss_mb"]) / r["k"]
        table.add_row(str(r["k"]), f"{r['ok']}/{r['k']}", f"{r['wall_s']:.1f}", f"{r['max_invocation_s']:.1f}",
                      str(r["baseline_rss_mb"]), str(r["peak_rss_mb"]), f"{per_k:.0f}", str(r["after_rss_mb"]))
    Console().print(table)
    rec = summary["recommendation"]
    Console().print(f"growth per extra preparation: {rec['growth_per_extra_preparation_mb']} MB; on a "
                    f"{rec['instance_mb']} MB instance with {rec['headroom_mb']} MB kept free, at most "
                    f"{rec['max_k_that_fits']} at once")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000, help="rows per dataset")
    parser.add_argument("--max-k", type=int, default=8 * (os.cpu_count() or 1),
                        help="largest number of preparations at once (default: 8 x cores, the host's default)")
    parser.add_argument("--row-group-rows", type=int, default=1_000)
    parser.add_argument("--headroom-mb", type=int, default=512,
                        help="memory kept free for the host, the other functions and the platform")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prepare_concurrency.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    from local import azurite
    with tempfile.TemporaryDirectory(prefix="tuneflow-bench-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        source = write_input(tmp / FILE, args.rows, args.row_group_rows)
        input_mb = round(source.stat().st_size / 1e6, 1)
        print(f"generated {args.rows:,} rows ({input_mb} MB parquet) in {time.perf_counter() - t:.0f} s", flush=True)
        with azurite.start(tmp / "azurite") as server:
            results = []
            for k in ks_up_to(args.max_k):
                results.append(run_k(k, server.connection_string, source, tmp))
                r = results[-1]
                print(f"K={k}: {r['ok']}/{k} ok, {r['wall_s']} s, peak {r['peak_rss_mb']} MB "
                      f"(baseline {r['baseline_rss_mb']} MB)", flush=True)
    summary = {"rows": args.rows, "input_mb": input_mb, "row_group_rows": args.row_group_rows,
               "cores": os.cpu_count(), "python": sys.version.split()[0], "results": results,
               "recommendation": recommend(results, INSTANCE_MB, args.headroom_mb)}
    print_table(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    return 0 if all(r["ok"] == r["k"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
