"""`make demo`: one dataset travels the whole way on a fresh local stack, shown live.

Fresh state folder and free ports, so it never touches a stack the user already runs; the host's
log goes to `<state>/host.log` so the screen shows progress, not a wall of logs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from local.stack import PROJECT_ROOT, LocalStack

DEMO_DATASET = "ultrachat-demo"
DEMO_ROWS = 600
DEMO_SETTINGS = {
    "TUNEFLOW_STATE_DIR": str(PROJECT_ROOT / ".tuneflow" / "demo"),
    "TUNEFLOW_ENDPOINT_TTL": "90s",  # the smoke test, the chat and the base model's answer take a minute on 2 cores
    "TUNEFLOW_REAPER_SCHEDULE": "*/5 * * * * *",
    "TUNEFLOW_FINETUNE_PARAMS": json.dumps({"max_steps": 20}),
    "TUNEFLOW_ML_BACKEND": "local",
}
STAGES = [("prepared", "validated and split into JSONL"), ("submitted", "fine-tune job submitted"),
          ("registered", "job finished, model registered"),
          ("gate-passed", "quality gate: eval loss measurably below the base model's"),
          ("deployed", "dataset's endpoint (key auth) and the model's deployment created, at 0 %"),
          ("smoke-tested", "the deployment answered the smoke test, sent straight to it"),
          ("rolled-out", "the deployment carries 100 % of the endpoint's traffic"),
          ("chat", "held-out conversation answered"),
          ("reaped", "endpoint deleted when its TTL ran out")]
FAILED = ("refused", "job-failed", "gate-failed", "deploy-failed", "rollout-failed")
TIMEOUT_S = 600


def _flows():
    from shared import flows, storage
    from shared.contracts import FLOWS_CONTAINER
    rows = flows.summarize(flows.read_all(storage.container(FLOWS_CONTAINER)))
    return next((r for r in rows if r.dataset == DEMO_DATASET), None)


def _parse(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


def _view(started: float, times: dict[str, float], status, note: str) -> Table:
    table = Table(title=f"tuneflow demo — {time.time() - started:5.0f} s", min_width=90)
    table.add_column("stage")
    table.add_column("what happened")
    table.add_column("at (s)", justify="right")
    for stage, what in STAGES:
        mark = "[green]✓[/]" if stage in times else "[yellow]…[/]"
        table.add_row(f"{mark} {stage}", what, f"{times[stage] - started:.1f}" if stage in times else "")
    if status is not None:
        table.caption = f"job {status.job or '-'}  model {status.model or '-'}  endpoint {status.endpoint or '-'}  {note}"
    return table


def run_demo(console: Console, keep: bool = False) -> int:
    os.environ.update(DEMO_SETTINGS)
    state = Path(DEMO_SETTINGS["TUNEFLOW_STATE_DIR"])
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    handler = logging.FileHandler(state / "host.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)

    from local import sampledata
    from shared.ml import base_model_name, get_backend
    from shared.scoring import held_out_prompt, reply_text, request_body

    data = sampledata.write(state / "ultrachat_sample.jsonl", DEMO_ROWS, seed=2026)
    console.print(f"[bold]tuneflow demo[/]: {DEMO_ROWS} synthetic ultrachat rows -> fine-tune {base_model_name()} -> "
                  f"quality gate -> endpoint -> chat -> reap")
    console.print(f"state: {state}  (host log: {state / 'host.log'})")
    started = time.time()
    times: dict[str, float] = {}
    reply, prompt, base_reply = "", "", ""
    with LocalStack(free_ports=True, invocations_log=state / "invocations.jsonl") as stack:
        from shared import storage
        from shared.contracts import DATASETS_CONTAINER, PREPARED_CONTAINER
        with open(data, "rb") as f:
            storage.container(DATASETS_CONTAINER).upload_blob(f"{DEMO_DATASET}/{data.name}", f, overwrite=True)
        status, note = None, ""
        with Live(_view(started, times, status, note), console=console, refresh_per_second=4) as live:
            deadline = time.monotonic() + TIMEOUT_S
            while "reaped" not in times and time.monotonic() < deadline:
                status = _flows()
                if status is not None:
                    for stage, at in status.stage_times.items():
                        if stage in dict(STAGES):
                            times.setdefault(stage, _parse(at))
                    if status.stage in FAILED:
                        note = f"[red]{status.stage}: {status.details.get(status.stage)}[/]"
                        live.update(_view(started, times, status, note))
                        break
                    if "rolled-out" in times and "chat" not in times:
                        row = _last_test_row(storage.container(PREPARED_CONTAINER), status.dataset, status.version)
                        messages = held_out_prompt(row)
                        prompt = messages[-1]["content"]
                        reply = reply_text(get_backend().invoke(status.endpoint, request_body(messages)))
                        times["chat"] = time.time()
                        note = "asking the base model the same question"
                        live.update(_view(started, times, status, note))
                        base_reply = _base_answer(stack, status, messages)
                        note = f"expires-at {status.expires_at}: waiting for the reaper"
                live.update(_view(started, times, status, note))
                time.sleep(0.25)  # screen refresh cadence, not synchronisation
        console.print(f"[bold]held-out prompt:[/] {prompt[:300]}")
        console.print(f"[bold]base model:[/] {base_reply[:600] or '(none)'}")
        console.print(f"[bold]fine-tuned endpoint:[/] {reply[:600] or '(none)'}")
        _summary(console, started, times, stack, status)
    if not keep:
        shutil.rmtree(state / "azurite", ignore_errors=True)
    ok = all(stage in times for stage, _ in STAGES)
    console.print("[bold green]demo complete[/]" if ok else "[bold red]demo did not complete[/] (see host.log)")
    return 0 if ok else 1


def _last_test_row(prepared, dataset: str, version: str) -> dict:
    from shared import naming
    text = prepared.download_blob(f"{naming.prepared_prefix(dataset, version)}/test.jsonl").readall()
    return json.loads(text.strip().splitlines()[-1])


def _summary(console: Console, started: float, times: dict[str, float], stack, status) -> None:
    table = Table(title="stage times")
    table.add_column("stage")
    table.add_column("took (s)", justify="right")
    table.add_column("since drop (s)", justify="right")
    previous = started
    for stage, _ in STAGES:
        if stage not in times:
            table.add_row(stage, "-", "-")
            continue
        table.add_row(stage, f"{times[stage] - previous:.1f}", f"{times[stage] - started:.1f}")
        previous = times[stage]
    console.print(table)
    if status is not None and status.job and stack.workspace is not None:
        m = stack.workspace.get_job(status.job).metrics
        if m:
            curve = m["train_loss"]
            console.print(f"training: {m['steps']} steps in {m['train_seconds']} s ({m['tokens_per_s']} tokens/s, "
                          f"peak {m['peak_rss_mb']} MB); train loss {curve[0][1]:.3f} -> {curve[-1][1]:.3f}")
            console.print(f"eval loss per assistant token on {m['eval_rows']} held-out rows: base {m['base_eval_loss']:.3f} "
                          f"(perplexity {m['base_eval_perplexity']:.1f}) -> fine-tuned {m['eval_loss']:.3f} "
                          f"(perplexity {m['eval_perplexity']:.1f})")
        verdict = status.details.get("gate-passed") or status.details.get("gate-failed") or {}
        if verdict:
            console.print(f"quality gate: [bold]{status.gate}[/] ({verdict.get('rule')}): {verdict.get('reason')}")


def _base_answer(stack, status, messages) -> str:
    """The base model's answer to the same question, generated exactly as an endpoint generates."""
    from local.scoring import ChatModel
    from shared.ml.procs import read_json
    from shared.scoring import request_body, read_request
    job = read_json(stack.workspace.jobs / status.job / "job.json")
    _, params = read_request(request_body(messages))
    return ChatModel.from_checkpoint(job["base_model_dir"]).generate(messages, params)
