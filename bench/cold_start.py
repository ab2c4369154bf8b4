"""Cold start of the Functions worker: importing function_app.py, as the worker does at start-up.

Each variant is a fresh interpreter (median of --repeats, interleaved) in a venv holding exactly the
Function App's packages (requirements.txt, created once as .venv-app): wall time and peak RSS, both
over a bare interpreter. The floor is what the worker library and the SDK-type blob binding cost
before any app code; the naive variants import at the top what the app imports inside the code that
needs it (azure-ai-ml, azure-servicebus, polars, pydantic; and, in the dev venv, the local stack).

Target: <= 300 ms and <= 80 MB over the bare interpreter.

Usage: python bench/cold_start.py [--repeats 9]   (writes bench/results/cold_start.json)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAIVE = ("import azure.ai.ml, azure.servicebus, polars, pydantic, yaml; import function_app")
LOCAL_NAIVE = "import mlflow, torch, transformers, datasets, pyarrow.parquet; " + NAIVE
# What any app with an SDK-type blob binding pays before its own code: the worker library and the
# binding extension (which imports azure.storage.blob).
FLOOR = "import azure.functions, azurefunctions.extensions.bindings.blob"
APP_VENV = ROOT / ".venv-app"


def app_python() -> str:
    """An interpreter with exactly the Function App's packages (requirements.txt), as Azure builds it:
    the dev venv also has mlflow's aiohttp, which azure-core then imports, and would overstate the cost."""
    python = APP_VENV / "bin" / "python"
    if not python.exists():
        print("creating .venv-app from requirements.txt (once)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(APP_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r",
                        str(ROOT / "requirements.txt")], check=True, stderr=subprocess.DEVNULL)
    return str(python)


def run(python: str, code: str) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.Popen([python, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{code[:60]} failed: {proc.stderr.read().decode()[-400:]}")
    return wall, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    python = app_python()
    variants = {"bare interpreter": (python, "pass"), "worker library alone (azure.functions)": (python, "import azure.functions"),
                "floor (azure.functions + blob binding)": (python, FLOOR),
                "function_app.py": (python, "import function_app"),
                "naive (Azure libraries at the top)": (python, NAIVE),
                "naive + local stack at the top (dev venv)": (sys.executable, LOCAL_NAIVE)}
    samples = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved, so a slow moment hits every variant
        for name, (interpreter, code) in variants.items():
            samples[name].append(run(interpreter, code))
    bare_s = statistics.median(w for w, _ in samples["bare interpreter"])
    bare_mb = statistics.median(m for _, m in samples["bare interpreter"])
    results = {}
    for name, runs in samples.items():
        wall, mb = statistics.median(w for w, _ in runs), statistics.median(m for _, m in runs)
        results[name] = {"median_s": round(wall, 3), "over_bare_ms": round((wall - bare_s) * 1000),
                         "peak_rss_mb": round(mb, 1), "over_bare_mb": round(mb - bare_mb, 1)}
        print(f"{name:<44} {wall * 1000:7.0f} ms ({(wall - bare_s) * 1000:6.0f} ms over bare) "
              f"{mb:6.0f} MB ({mb - bare_mb:5.0f} MB over bare)", flush=True)
    app = results["function_app.py"]
    results["target"] = {"over_bare_ms_max": 300, "over_bare_mb_max": 80,
                         "met": app["over_bare_ms"] <= 300 and app["over_bare_mb"] <= 80}
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "cold_start.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
