"""A local fine-tune job: `python -m local.train JOB_DIR` (started by the local ML workspace).

It does what the registry's chat_completion_pipeline does, at toy scale on CPU: read the prepared
train/test JSONL from storage, apply the chat template, LoRA fine-tune the base model, log train
and eval loss to MLflow, save an MLflow model as the job's output — then report like Azure ML:
`result.json` in the job folder and the `RunCompleted` (or `RunStatusChanged` Failed) event
posted to the host's Event Grid route (`local/platform.py`, which also publishes it should this
process die first).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

from shared.ml import procs
from shared.ml.procs import read_json, write_json_atomic
from shared.ttl import format_utc, utcnow

log = logging.getLogger("tuneflow.train")
# Defaults sized for a CPU demo; any of them can be overridden by request parameters.
LOCAL_DEFAULTS = {"num_train_epochs": 1, "max_steps": 40, "per_device_train_batch_size": 8, "learning_rate": 3e-3,
                  "lora_r": 8, "lora_alpha": 16, "max_seq_length": 256, "eval_rows": 64}


def _param(params: dict, key: str, cast):
    return cast(params.get(key, LOCAL_DEFAULTS[key]))


DOWNLOAD_DEADLINE_S = 300.0


def download(uri: str, dest: Path, deadline_s: float = DOWNLOAD_DEADLINE_S) -> Path:
    """Stream `container/blob` from the storage account into `dest`; while storage cannot be reached (or
    answers 5xx) try again with back-off until `deadline_s`, as a job's data mount rides out an outage."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
    from shared.storage import blob_service
    container, blob = uri.split("/", 1)
    delay, deadline = 1.0, time.monotonic() + deadline_s
    while True:
        try:
            with open(dest, "wb") as f:
                blob_service().get_blob_client(container, blob).download_blob().readinto(f)
            return dest
        except (ServiceRequestError, ServiceResponseError, HttpResponseError) as exc:
            status = getattr(exc, "status_code", None)
            if (status is not None and status < 500) or time.monotonic() + delay > deadline:
                raise
            print(f"reading {uri}: {type(exc).__name__}: {str(exc).splitlines()[0]}; trying again in {delay:.0f} s",
                  flush=True)
            time.sleep(delay)  # back-off between attempts to reach storage
            delay = min(delay * 2, 30.0)


def load_conversations(path: Path) -> list[list[dict]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


def encode(tokenizer, conversations: list[list[dict]], max_len: int) -> list[list[int]]:
    out = []
    for messages in conversations:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(text, truncation=True, max_length=max_len)["input_ids"]
        if len(ids) > 1:
            out.append(ids)
    return out


def batches(seqs: list[list[int]], size: int, pad_id: int):
    import torch
    for i in range(0, len(seqs), size):
        chunk = seqs[i:i + size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, s in enumerate(chunk):
            ids[j, :len(s)] = torch.tensor(s)
            mask[j, :len(s)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        yield ids, mask, labels


def evaluate(model, seqs, size, pad_id) -> float:
    import torch
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for ids, mask, labels in batches(seqs, size, pad_id):
            total += model(input_ids=ids, attention_mask=mask, labels=labels).loss.item() * len(ids)
            n += len(ids)
    model.train()
    return total / max(n, 1)


def fine_tune(job: dict, job_dir: Path) -> dict:
    import mlflow
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from local.tinymodel import build

    spec, params = job["spec"], job["spec"]["params"]
    base_dir = Path(job["base_model_dir"])
    if not (base_dir / "config.json").exists():
        if os.environ.get("TUNEFLOW_BASE_MODEL_DIR"):
            raise FileNotFoundError(f"TUNEFLOW_BASE_MODEL_DIR={base_dir} has no config.json: point it at a checkpoint folder")
        build(base_dir)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    lora = LoraConfig(r=_param(params, "lora_r", int), lora_alpha=_param(params, "lora_alpha", int),
                      target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
                      modules_to_save=["lm_head"], lora_dropout=0.0, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)

    max_len = _param(params, "max_seq_length", int)
    train = encode(tokenizer, load_conversations(download(spec["train_uri"], job_dir / "train.jsonl")), max_len)
    test = encode(tokenizer, load_conversations(download(spec["test_uri"], job_dir / "test.jsonl")), max_len)
    test = test[:_param(params, "eval_rows", int)]
    batch = _param(params, "per_device_train_batch_size", int)
    epochs, max_steps = _param(params, "num_train_epochs", int), _param(params, "max_steps", int)
    pad = tokenizer.pad_token_id
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=_param(params, "learning_rate", float))

    mlflow.set_tracking_uri(job["tracking_uri"])
    use_experiment(mlflow, spec["experiment"], job_dir.parent.parent / "artifacts")
    end_lost_runs(mlflow, spec["experiment"], spec["name"])
    with mlflow.start_run(run_name=spec["name"], tags={**spec["tags"], "job": spec["name"]}) as run:
        mlflow.log_params({**LOCAL_DEFAULTS, **params, "train_rows": len(train), "test_rows": len(test)})
        eval_before = evaluate(model, test, batch, pad)
        mlflow.log_metric("eval_loss", eval_before, step=0)
        step, first_loss, last_loss = 0, None, None
        started = time.perf_counter()
        for _epoch in range(epochs):
            for ids, mask, labels in batches(train, batch, pad):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                optim.step()
                optim.zero_grad()
                step += 1
                first_loss = loss.item() if first_loss is None else first_loss
                last_loss = loss.item()
                mlflow.log_metric("train_loss", last_loss, step=step)
                print(f"step {step} train_loss {last_loss:.4f}", flush=True)
                if step >= max_steps:
                    break
            if step >= max_steps:
                break
        train_s = time.perf_counter() - started
        eval_after = evaluate(model, test, batch, pad)
        mlflow.log_metric("eval_loss", eval_after, step=step)
        merged = model.merge_and_unload()
        info = mlflow.transformers.log_model(
            transformers_model={"model": merged, "tokenizer": tokenizer}, name="trained_model",
            task="text-generation", pip_requirements=["torch==2.13.0", "transformers", "mlflow"])
        metrics = {"train_loss_first": first_loss, "train_loss_last": last_loss, "eval_loss_before": eval_before,
                   "eval_loss_after": eval_after, "steps": step, "train_seconds": round(train_s, 2),
                   "mlflow_run_id": run.info.run_id}
    return {"status": "Completed", "output_uri": info.model_uri, "metrics": metrics}


def use_experiment(mlflow, name: str, artifacts: Path) -> None:
    """Set the experiment, creating it with its artifacts in the workspace's state folder (MLflow's
    default, ./mlruns, would land in whatever folder the job started in)."""
    from mlflow.exceptions import MlflowException
    if mlflow.get_experiment_by_name(name) is None:
        try:
            mlflow.create_experiment(name, artifact_location=artifacts.resolve().as_uri())
        except MlflowException:
            pass  # a concurrent job created it first
    mlflow.set_experiment(name)


def end_lost_runs(mlflow, experiment_name: str, job: str) -> None:
    """Mark the MLflow runs of this job's earlier, lost attempts KILLED (they never ended themselves)."""
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name(experiment_name)
    for run in client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.job = '{job}' and attributes.status = 'RUNNING'"):
        client.set_terminated(run.info.run_id, "KILLED")


def main(argv: list[str]) -> int:
    job_dir = Path(argv[1])
    procs.announce(job_dir)  # first: whoever looks finds this process, even if its starter died
    job = read_json(job_dir / "job.json")
    try:
        result = fine_tune(job, job_dir)
    except Exception as exc:
        traceback.print_exc()
        result = {"status": "Failed", "error": f"{type(exc).__name__}: {exc}"}
    result["finished_at"] = format_utc(utcnow())
    write_json_atomic(job_dir / "result.json", result)
    for name in ("train.jsonl", "test.jsonl"):
        (job_dir / name).unlink(missing_ok=True)
    from local.platform import announce  # should this process die before it is done, the platform publishes it
    from shared.failpoints import reached
    reached("train.after-result")
    delivered = announce(job_dir)
    print(f"job {job['spec']['name']} {result['status']}; event delivered: {delivered}", flush=True)
    return 0 if result["status"] == "Completed" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
