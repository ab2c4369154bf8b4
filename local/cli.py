"""`tuneflow`: run the local stack, drop data, follow flows, chat with endpoints, reap.

Errors print one line first (what was wrong, where, what to do); `--verbose` adds the details.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import traceback
from pathlib import Path



class _LazyConsole:
    """A rich Console made on first use: rich takes ~80 ms to import, which commands that print
    JSON (`prepare`, `--json` listings) need not pay."""

    def __init__(self, **options):
        self._options, self._console = options, None

    def get(self):
        """The rich Console itself (for rich's own widgets)."""
        if self._console is None:
            from rich.console import Console
            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name):
        return getattr(self.get(), name)


def Table(*args, **kwargs):  # noqa: N802  (rich's class, imported when a table is printed)
    from rich.table import Table as RichTable
    return RichTable(*args, **kwargs)


console = _LazyConsole()
err_console = _LazyConsole(stderr=True)


class UsageError(Exception):
    pass


# -- commands -----------------------------------------------------------------------------------

def cmd_up(args) -> int:
    from local.stack import LocalStack
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with LocalStack(port=args.port, invocations_log=Path(args.invocations) if args.invocations else None) as stack:
        table = Table(title="tuneflow local stack")
        table.add_column("function")
        table.add_column("trigger")
        for spec in stack.host.functions.values():
            t = spec.trigger
            table.add_row(spec.name, f"{t['type']} {t.get('path') or t.get('queueName') or t.get('schedule') or ''}")
        console.print(table)
        console.print(f"host: {stack.host.base_url}   Event Grid: {stack.host.base_url}/runtime/webhooks/EventGrid"
                      f"?functionName=job_events   (Ctrl-C stops everything)")
        stop.wait()
    return 0


def cmd_drop(args) -> int:
    from shared import naming, storage
    from shared.contracts import DATASETS_CONTAINER
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path} is not a file: give the path of a .jsonl, .json or .parquet dataset")
    dataset = naming.check_dataset(args.dataset or naming.slug(path.stem, 40))
    blob = f"{dataset}/{path.name}"
    naming.dataset_blob(blob)  # refuse bad names before uploading anything
    with open(path, "rb") as f:
        storage.container(DATASETS_CONTAINER).upload_blob(blob, f, overwrite=True)
    console.print(f"dropped {path} as {DATASETS_CONTAINER}/{blob}; follow it with `tuneflow status`")
    return 0


def cmd_status(args) -> int:
    from shared import flows, storage
    from shared.contracts import FLOWS_CONTAINER
    flow_log = storage.container(FLOWS_CONTAINER)
    records = flows.read_all(flow_log)
    statuses = flows.summarize(records) + [flows.waiting_status(m) for m in flows.read_waiting(flow_log, records)]
    if args.flow:
        return _flow_detail(args.flow, statuses, args.json)
    if args.json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
        return 0
    table = Table(title="tuneflow flows")
    for col in ("dataset", "stage", "gate", "eval loss", "job", "model", "endpoint", "expires-at", "time left", "note"):
        table.add_column(col)
    for s in statuses:
        left = time_left(s.expires_at) if s.endpoint and s.stage != "reaped" else ""
        table.add_row(s.dataset, s.stage, s.gate, _losses(s), s.job, s.model, s.endpoint, s.expires_at, left, s.note())
    console.print(table)
    return 0


def _losses(s) -> str:
    """`base → fine-tuned` eval loss, as the gate compared them."""
    base, tuned = s.metric("base_eval_loss"), s.metric("eval_loss")
    if tuned is None:
        return ""
    return f"{base:.3g} → {tuned:.3g}" if base is not None else f"{tuned:.3g}"


def _flow_detail(flow_id: str, statuses, as_json: bool) -> int:
    """One flow: its stages, the gate's verdict and the train / eval loss curves as a chart."""
    from local.chart import plot
    found = [s for s in statuses if s.flow_id == flow_id or (len(flow_id) >= 8 and s.flow_id.startswith(flow_id))]
    if len(found) != 1:
        raise UsageError(f"{flow_id!r} names {'no' if not found else len(found)} flows: give a flow id from "
                         f"`tuneflow status` (its first 8 characters are enough)")
    s = found[0]
    if as_json:
        print(json.dumps(s.as_dict(), indent=2))
        return 0
    table = Table(title=f"flow {s.flow_id} ({s.dataset} {s.version[:12]})")
    table.add_column("stage")
    table.add_column("at")
    table.add_column("detail")
    for stage, at in sorted(s.stage_times.items(), key=lambda kv: kv[1]):
        detail = s.details.get(stage) if isinstance(s.details.get(stage), dict) else {}
        table.add_row(stage, at, str(detail.get("reason") or detail.get("error") or ""))
    console.print(table)
    metrics = (s.details.get("registered") or {}).get("metrics") or {}
    series = {"train loss": [tuple(p) for p in metrics.get("train_loss") or []],
              "eval loss": [tuple(p) for p in metrics.get("eval_curve") or []]}
    if any(series.values()):
        console.print(f"gate: {s.gate or 'undecided'}   eval loss {_losses(s) or '-'}")
        console.print("\n".join(plot(series)), markup=False, highlight=False)
    return 0


def cmd_chat(args) -> int:
    from shared.ml import get_backend
    from shared.scoring import reply_text, request_body
    answer = get_backend().invoke(args.endpoint, request_body([{"role": "user", "content": args.message}]))
    console.print(reply_text(answer))
    return 0


def cmd_sample_data(args) -> int:
    from local import sampledata
    if args.rows < 1:
        raise UsageError(f"--rows {args.rows}: give at least 1 row")
    path = sampledata.write(Path(args.out), args.rows, seed=args.seed)
    console.print(f"wrote {args.rows} ultrachat-shaped rows to {path}")
    return 0


def parse_param(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--param {text!r} is not KEY=VALUE (e.g. --param learning_rate=0.0002)")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    if not isinstance(value, (str, int, float, bool)):
        value = raw
    return key, value


def cmd_submit(args) -> int:
    if args.dry_run:
        return _submit_dry_run(args)
    from shared import naming, storage
    from shared.contracts import FINETUNE_QUEUE, PREPARED_CONTAINER
    from shared.messages import FinetuneRequest
    if not args.prepared:
        raise UsageError("give prepared/<dataset>/<version>, or --dry-run with --train, --test, --model-spec and --component-spec")
    parts = args.prepared.strip("/").removeprefix(f"{PREPARED_CONTAINER}/").split("/")
    if len(parts) != 2:
        raise UsageError(f"{args.prepared!r} is not a prepared version: give prepared/<dataset>/<version>")
    dataset, version = naming.check_dataset(parts[0]), naming.check_version(parts[1])
    params = dict(parse_param(p) for p in args.param)
    manifest = f"{naming.prepared_prefix(dataset, version)}/manifest.json"
    if not storage.exists(storage.container(PREPARED_CONTAINER), manifest):
        raise UsageError(f"prepared/{manifest} does not exist: `tuneflow status` lists prepared versions")
    gate = "off" if args.no_gate else "on"
    attempt = _next_attempt(dataset, version, params, gate) if args.retry else 1
    request = FinetuneRequest(flow_id=naming.flow_id(dataset, version, params, attempt, gate), dataset=dataset,
                              version=version, params=params, attempt=attempt, gate=gate)
    storage.send_queue_message(FINETUNE_QUEUE, request.to_json())
    console.print(f"queued fine-tune of prepared/{dataset}/{version} as flow {request.flow_id}: "
                  f"job {naming.job_name(dataset, version, params, attempt, gate)}"
                  + (f" (attempt {attempt})" if args.retry else "") + (" with the quality gate off" if args.no_gate else ""))
    return 0


def _next_attempt(dataset: str, version: str, params: dict, gate: str = "on") -> int:
    """The attempt after the last one of this version and these parameters, which must have ended job-failed."""
    from shared import flows, naming, storage
    from shared.contracts import FLOWS_CONTAINER
    statuses = {s.flow_id: s for s in flows.summarize(flows.read_all(storage.container(FLOWS_CONTAINER)))}
    attempt = 1
    while naming.flow_id(dataset, version, params, attempt, gate) in statuses:
        attempt += 1
    if attempt == 1:
        raise UsageError(f"prepared/{dataset}/{version} has no fine-tune with these parameters yet: submit it without "
                         f"--retry")
    last = statuses[naming.flow_id(dataset, version, params, attempt - 1, gate)]
    if last.stage != "job-failed":
        raise UsageError(f"attempt {attempt - 1} (flow {last.flow_id}) is at stage {last.stage}, not job-failed: nothing "
                         f"to retry (`tuneflow status`)")
    return attempt


def _submit_dry_run(args) -> int:
    """The pipeline job the Azure backend would submit, built offline from published specs; printed as JSON."""
    from shared.dryrun import DryRunInputs, dry_run_job
    missing = [flag for flag, value in (("--train", args.train), ("--test", args.test), ("--model-spec", args.model_spec),
                                        ("--component-spec", args.component_spec)) if not value]
    if missing:
        raise UsageError(f"--dry-run needs {', '.join(missing)}")
    inputs = DryRunInputs(train=args.train, test=args.test, model_spec=Path(args.model_spec),
                          component_spec=Path(args.component_spec), compute_size=args.compute_size, gpus=args.gpus,
                          params=dict(parse_param(p) for p in args.param))
    job, dropped = dry_run_job(inputs)
    for key, why in dropped.items():
        sys.stderr.write(f"note: parameter {key} is not passed to the component: {why}\n")
    print(json.dumps(job, indent=2, sort_keys=True, default=str))
    return 0


def cmd_explain_event(args) -> int:
    """What job_events would do with each event in FILE: one JSON object per line."""
    from shared.events import explain_all, read_events
    for explanation in explain_all(read_events(Path(args.file))):
        print(json.dumps(explanation, sort_keys=True))
    return 0


def cmd_reap(args) -> int:
    """The reaper's decision for every endpoint (live backend, or --inventory); acts without --dry-run."""
    from shared.reaper import ReaperPolicy, plan, reap
    now = _now(args.now)
    policy = ReaperPolicy.from_settings()
    if args.inventory:
        if not args.dry_run:
            raise UsageError("--inventory plans over a file: add --dry-run (deleting needs the live backend)")
        decisions, alert = plan(_read_inventory(Path(args.inventory)), now, policy)
    else:
        from shared import storage
        from shared.contracts import FLOWS_CONTAINER, REAPER_CONTAINER
        from shared.ml import get_backend
        live = not args.dry_run
        run = reap(get_backend(), now, policy, dry_run=args.dry_run,
                   flow_log=storage.container(FLOWS_CONTAINER) if live else None,
                   state=storage.container(REAPER_CONTAINER) if live else None)
        if run.skipped:
            raise UsageError(f"{run.skipped}: try again in a minute")
        decisions, alert = run.decisions, run.alert
    if args.json:
        print(json.dumps([d.as_dict() for d in decisions], indent=2))
    else:
        table = Table(title="reaper" + (" (dry run: nothing deleted)" if args.dry_run else ""))
        for col in ("kind", "target", "action", "rule", "reason"):
            table.add_column(col, overflow="fold")
        for d in decisions:
            table.add_row(d.kind, d.target, d.action, d.rule, d.reason)
        console.print(table)
    if alert:
        sys.stderr.write(f"alert: circuit breaker: {alert}; nothing was deleted or canceled\n")
    return 0


def _now(text: str | None):
    from shared.ttl import parse_expires_at, utcnow
    if not text:
        return utcnow()
    moment = parse_expires_at(text)
    if moment is None:
        raise UsageError(f"--now {text!r} is not ISO 8601 with an offset (e.g. 2026-11-26T12:00:00Z)")
    return moment


def _read_inventory(path: Path):
    """Endpoints as `tuneflow endpoints list --json` writes them, validated against the reaper's own
    dataclasses (one TypeAdapter: the error names the field path)."""
    from pydantic import TypeAdapter, ValidationError

    from shared.ml.base import EndpointInfo
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"--inventory {path} does not exist") from None
    try:
        return TypeAdapter(list[EndpointInfo]).validate_json(text)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        fix = "give the output of `tuneflow endpoints list --json`"
        if first["type"] == "json_invalid":
            raise UsageError(f"--inventory {path} is not JSON ({first['msg']}): {fix}") from None
        if not first["loc"]:
            raise UsageError(f"--inventory {path} must be a JSON list of endpoints: {fix}") from None
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise UsageError(f"--inventory {path}: {_field_path(first['loc'])}: {first['msg']}{more}: {fix}") from None


def _field_path(loc: tuple) -> str:
    """pydantic's error location as a path: (2, 'tags', 'expires-at') -> endpoints[2].tags.expires-at"""
    return "endpoints" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def cmd_dead_letters(args) -> int:
    """What failed for good and why; requeue once the cause is fixed."""
    from shared import deadletters
    if args.action == "requeue":
        if not args.id:
            raise UsageError("give the message id: `tuneflow dead-letters list` shows them")
        if not deadletters.service_bus_namespace():  # local: Service Bus sends go to the stand-in
            from local.servicebus import ServiceBusStandIn
            from shared import bus
            from shared.settings import StorageConnection
            bus.use(ServiceBusStandIn(StorageConnection.from_env()).send)
        letter = deadletters.requeue(args.id)
        console.print(f"requeued {letter.id} to {letter.source}")
        return 0
    if args.action == "show":
        if not args.id:
            raise UsageError("give the message id: `tuneflow dead-letters list` shows them")
        print(json.dumps(deadletters.find(args.id).as_dict(), indent=2))
        return 0
    letters = deadletters.list_all()
    if args.json:
        print(json.dumps([x.as_dict() for x in letters], indent=2))
        return 0
    table = Table(title="dead letters")
    for col in ("queue", "id", "function", "deliveries", "failed at", "reason"):
        table.add_column(col)
    for x in letters:
        table.add_row(x.source, x.id, x.function, str(x.deliveries), x.failed_at, x.reason[:120])
    console.print(table)
    return 0


def cmd_endpoints_list(args) -> int:
    from shared.ml import get_backend
    endpoints = get_backend().list_endpoints()
    inventory = [{"name": e.name, "tags": e.tags, "provisioning_state": e.provisioning_state, "created_at": e.created_at,
                  "scoring_uri": e.scoring_uri,
                  "deployments": [{"name": d.name, "instance_type": d.instance_type, "instance_count": d.instance_count,
                                   "provisioning_state": d.provisioning_state, "traffic": d.traffic,
                                   "mirror_traffic": d.mirror_traffic, "created_at": d.created_at, "model": d.model,
                                   "tags": d.tags} for d in e.deployments]}
                 for e in endpoints]
    if args.json:
        print(json.dumps(inventory, indent=2))
        return 0
    from shared.reaper import tag
    from shared.contracts import TAG_EXPIRES_AT
    table = Table(title="endpoints")
    for col in ("name", "state", "deployments (traffic)", "expires-at", "time left"):
        table.add_column(col)
    for e in endpoints:
        expiry = tag(e.tags, TAG_EXPIRES_AT) or ""
        table.add_row(e.name, e.provisioning_state, "\n".join(_deployment_line(d) for d in e.deployments),
                      expiry, time_left(expiry))
    console.print(table)
    return 0


def _deployment_line(d) -> str:
    share = f"{d.traffic} %" + (f", mirror {d.mirror_traffic} %" if d.mirror_traffic else "")
    state = "" if d.provisioning_state == "Succeeded" else d.provisioning_state
    return " ".join(part for part in (d.name, share, d.model, f"({d.instance_type} x{d.instance_count})", state) if part)


def cmd_rollback(args) -> int:
    """Traffic back to the dataset's previous deployment (kept at 0 % for TUNEFLOW_ROLLBACK_WINDOW)."""
    from shared import storage
    from shared.contracts import FLOWS_CONTAINER
    from shared.deployment import rollback
    from shared.ml import get_backend
    from shared.rollout import NoRollback
    try:
        done = rollback(get_backend(), storage.container(FLOWS_CONTAINER), args.dataset)
    except NoRollback as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(done, indent=2))
    else:
        console.print(f"{done['endpoint']}: traffic moved from {done['from']} to {done['to']} (100 %)")
    return 0


def cmd_endpoints_extend(args) -> int:
    """Renew an endpoint's lease: expires-at = now + TTL (absolute, computed once), recorded in its flow."""
    from shared import flows, storage
    from shared.contracts import FLOWS_CONTAINER, TAG_EXPIRES_AT, TAG_FLOW_ID
    from shared.ml import get_backend
    from shared.reaper import tag
    from shared.ttl import expires_at, utcnow
    backend = get_backend()
    endpoint = backend.get_endpoint(args.name)
    new_expiry = expires_at(utcnow(), args.ttl)
    tags = {k: v for k, v in endpoint.tags.items() if k.lower() != TAG_EXPIRES_AT}
    backend.set_endpoint_tags(args.name, {**tags, TAG_EXPIRES_AT: new_expiry})
    flow_id = tag(endpoint.tags, TAG_FLOW_ID)
    if flow_id:
        flows.record(storage.container(FLOWS_CONTAINER), flow_id, "extended", endpoint=args.name,
                     expires_at=new_expiry, detail={"ttl": args.ttl, "previous": tag(endpoint.tags, TAG_EXPIRES_AT)})
    console.print(f"{args.name} now expires at {new_expiry} ({time_left(new_expiry)} left)")
    return 0


def time_left(expiry: str) -> str:
    from shared.ttl import parse_expires_at, utcnow
    moment = parse_expires_at(expiry)
    if moment is None:
        return "unknown" if expiry else ""
    seconds = int((moment - utcnow()).total_seconds())
    if seconds <= 0:
        return "expired"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def cmd_prepare(args) -> int:
    """Exactly the data_arrival function's preparation, on local files."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from shared.outputs import file_digest
    paths = [Path(p) for p in args.inputs]
    for p in paths:
        if not p.is_file():
            raise UsageError(f"{p} is not a file: give .parquet, .jsonl, .jsonl.gz or .json files")
    with ThreadPoolExecutor(1) as pool:  # the inputs are hashed (no GIL) while polars is imported
        digests = [pool.submit(file_digest, p) for p in paths]
        import polars  # noqa: F401  (preparation needs it: loaded here, beside the hashing)

        from shared import naming
        from shared.dataset import PrepareOptions, prepare_to_dir
        from shared.sources import Source
        root = Path(os.path.commonpath([p.resolve().parent for p in paths]))
        sources = [Source(str(p.resolve().relative_to(root)), p, sha256=d.result()["sha256"], bytes=d.result()["bytes"])
                   for p, d in zip(paths, digests)]
    overrides = {k: v for k, v in (("split_pc", args.split_pc), ("sample", args.sample),
                                   ("test_fraction", args.test_fraction), ("seed", args.seed)) if v is not None}
    options = PrepareOptions.from_settings(overrides)
    default_name = naming.slug(paths[0].name.split(".")[0] if len(paths) == 1 else root.name, 40)
    manifest = prepare_to_dir(naming.check_dataset(args.dataset or default_name), sources, options, Path(args.out))
    print(json.dumps(manifest, indent=2, sort_keys=True))
    return 0


def cmd_ingest(args) -> int:
    from local.ingest import ingest
    blobs = ingest(args.hf, args.dataset, args.split_pc, console.get())
    console.print(f"uploaded {len(blobs)} files to datasets/{blobs[-1].split('/')[0]}/; follow it with `tuneflow status`")
    return 0


def cmd_demo(args) -> int:
    from local.demo import run_demo
    return run_demo(console.get(), keep=args.keep)


# -- entry point --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneflow", description=__doc__.splitlines()[0])
    p.add_argument("--verbose", action="store_true", help="print error details (traceback)")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the local stack in the foreground (Azurite, host, workspace)")
    up.add_argument("--port", type=int, default=7071)
    up.add_argument("--invocations", help="append the host's invocation records (JSON Lines) to this file")
    up.set_defaults(fn=cmd_up)
    drop = sub.add_parser("drop", help="upload a dataset file into the datasets container")
    drop.add_argument("file")
    drop.add_argument("--dataset", help="dataset name (default: from the file name)")
    drop.set_defaults(fn=cmd_drop)
    status = sub.add_parser("status", help="one row per flow: dataset, stage, job, model, endpoint, expires-at")
    status.add_argument("flow", nargs="?", help="one flow's stages, gate verdict and loss curves (a flow id or its first 8 characters)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(fn=cmd_status)
    chat = sub.add_parser("chat", help="send one user message to an endpoint")
    chat.add_argument("endpoint")
    chat.add_argument("message")
    chat.set_defaults(fn=cmd_chat)
    sample = sub.add_parser("sample-data", help="write synthetic ultrachat_200k-shaped data")
    sample.add_argument("--rows", type=int, required=True)
    sample.add_argument("--out", required=True, help="file name ending in .jsonl, .json or .parquet")
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(fn=cmd_sample_data)
    submit = sub.add_parser("submit", help="queue a fine-tune of an already prepared version (or --dry-run: print "
                                           "the Azure ML pipeline job, offline)")
    submit.add_argument("prepared", nargs="?", help="prepared/<dataset>/<version>")
    submit.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--retry", action="store_true", help="fine-tune again after the last attempt with these "
                                                             "parameters ended job-failed (a new flow and job)")
    submit.add_argument("--no-gate", action="store_true", help="deploy whatever this fine-tune scores: the quality gate "
                                                               "is off for this flow (a flow and job of its own; recorded)")
    submit.add_argument("--dry-run", action="store_true", help="build the pipeline job from spec files and print it")
    submit.add_argument("--train", help="dry run: the train JSONL (a file or an azureml:// URI)")
    submit.add_argument("--test", help="dry run: the test JSONL (a file or an azureml:// URI)")
    submit.add_argument("--model-spec", help="dry run: the base model's registry spec.yaml")
    submit.add_argument("--component-spec", help="dry run: the chat_completion_pipeline spec.yaml")
    submit.add_argument("--compute-size", metavar="SKU", help="dry run: the fine-tune VM size (default: the model's first "
                                                              "recommended size, serverless)")
    submit.add_argument("--gpus", type=int, help="dry run: GPUs per node of --compute-size (default 1)")

    explain = sub.add_parser("explain-event", help="say what job_events would do with each event in a JSON file")
    explain.add_argument("file")
    explain.set_defaults(fn=cmd_explain_event)
    submit.set_defaults(fn=cmd_submit)
    reap = sub.add_parser("reap", help="delete managed endpoints whose expires-at has passed")
    reap.add_argument("--dry-run", action="store_true", help="only print the decisions")
    reap.add_argument("--inventory", metavar="FILE", help="with --dry-run: plan over this inventory "
                                                          "(`tuneflow endpoints list --json`) instead of the live backend")
    reap.add_argument("--now", metavar="ISO8601", help="decide as of this time (default: now)")
    reap.add_argument("--json", action="store_true")

    dead = sub.add_parser("dead-letters", help="messages the app gave up on: list, show, requeue")
    dead.add_argument("action", choices=["list", "show", "requeue"])
    dead.add_argument("id", nargs="?", help="the message id (show, requeue)")
    dead.add_argument("--json", action="store_true")
    dead.set_defaults(fn=cmd_dead_letters)

    endpoints = sub.add_parser("endpoints", help="the endpoints: list the inventory, extend a lease")
    endpoints_sub = endpoints.add_subparsers(dest="endpoints_command", required=True)
    ep_list = endpoints_sub.add_parser("list", help="every endpoint with its tags, state and deployments")
    ep_list.add_argument("--json", action="store_true", help="the inventory as JSON (what reap --inventory reads)")
    ep_list.set_defaults(fn=cmd_endpoints_list)
    ep_extend = endpoints_sub.add_parser("extend", help="renew an endpoint's lease: expires-at = now + TTL")
    ep_extend.add_argument("name")
    ep_extend.add_argument("--ttl", required=True, help="30m, 8h, 7d, 2w or ISO 8601 (PT8H)")
    ep_extend.set_defaults(fn=cmd_endpoints_extend)
    reap.set_defaults(fn=cmd_reap)
    back = sub.add_parser("rollback", help="give a dataset's endpoint traffic back to its previous deployment")
    back.add_argument("dataset")
    back.add_argument("--json", action="store_true")
    back.set_defaults(fn=cmd_rollback)
    prep = sub.add_parser("prepare", help="prepare local files exactly as data_arrival does; print the manifest")
    prep.add_argument("inputs", nargs="+", metavar="INPUT")
    prep.add_argument("--out", required=True, help="folder for train.jsonl, test.jsonl, rejected.jsonl, manifest.json")
    prep.add_argument("--dataset", help="dataset name for the manifest (default: the first file's stem)")
    prep.add_argument("--split-pc", type=float, help="keep N %% of each split (the seed's dataset_split_pc)")
    prep.add_argument("--sample", choices=["first", "random"], help="first N %% in file order, or a seeded random sample")
    prep.add_argument("--test-fraction", type=float, help="test share when no file names its split")
    prep.add_argument("--seed", type=int)
    prep.set_defaults(fn=cmd_prepare)
    ingest = sub.add_parser("ingest", help="pull a dataset with `datasets` (hub id or local folder) into datasets/")
    ingest.add_argument("--hf", required=True, metavar="DATASET", help="e.g. HuggingFaceH4/ultrachat_200k, or a local folder")
    ingest.add_argument("--dataset", help="name in the datasets container (default: from --hf)")
    ingest.add_argument("--split-pc", type=float, help="written into dataset.json options: keep N %% of each split")
    ingest.set_defaults(fn=cmd_ingest)
    demo = sub.add_parser("demo", help="run the whole flow once on a fresh local stack")
    demo.add_argument("--keep", action="store_true", help="keep the demo's state folder afterwards")
    demo.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from shared import storage
    from shared.settings import load_local_settings
    load_local_settings(Path(__file__).resolve().parents[1] / "local.settings.json")
    if args.command not in ("up", "demo"):  # a person is waiting: fail fast when storage is down
        storage.set_client_options(retry_total=0, connection_timeout=5)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line first, details on request
        sys.stderr.write(f"error: {_one_line(exc)}\n")  # one line, never wrapped
        if args.verbose:
            err_console.print(traceback.format_exc(), highlight=False)
        return 1


def _one_line(exc: Exception) -> str:
    if hasattr(exc, "one_line"):
        return exc.one_line()
    text = str(exc).strip().splitlines()
    if type(exc).__name__ == "ValidationError":  # pydantic: name the field
        errors = exc.errors()
        return f"invalid {'.'.join(map(str, errors[0]['loc']))}: {errors[0]['msg']}"
    if "ServiceRequestError" in type(exc).__name__ or "Connection refused" in str(exc):
        return f"cannot reach storage ({text[0] if text else exc}): is the local stack running? start it with `tuneflow up`"
    return text[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
