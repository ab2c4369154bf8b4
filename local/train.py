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


def _param(params: dict, defaults: dict, key: str, cast):
    return cast(params.get(key, defaults[key]))


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


def encode(tokenizer, conversations: list[list[dict]], max_len: int) -> list[tuple[list[int], list[int]]]:
    """Each conversation as (token ids, labels): labels are the ids of the assistant's tokens (its replies and
    their end-of-turn markers) and -100 elsewhere, so training and evaluation count assistant tokens only.
    The spans come from rendering the chat template turn by turn; a template that does not render
    prefix-stable leaves that turn unlabelled rather than mislabelled."""
    out = []
    for messages in conversations:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        spans = []
        for i, m in enumerate(messages):
            if m.get("role") != "assistant":
                continue
            prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
            upto = tokenizer.apply_chat_template(messages[:i + 1], tokenize=False)
            if text.startswith(upto) and upto.startswith(prompt):
                spans.append((len(prompt), len(upto)))
        enc = tokenizer(text, truncation=True, max_length=max_len, return_offsets_mapping=True)
        ids = enc["input_ids"]
        labels = [t if any(a <= start < b for a, b in spans) and end > start else -100
                  for t, (start, end) in zip(ids, enc["offset_mapping"])]
        if sum(1 for x in labels[1:] if x != -100):  # something to predict after the first token
            out.append((ids, labels))
    return out


def batches(seqs: list[tuple[list[int], list[int]]], size: int, pad_id: int):
    import torch
    for i in range(0, len(seqs), size):
        chunk = seqs[i:i + size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, (s, lab) in enumerate(chunk):
            ids[j, :len(s)] = torch.tensor(s)
            labels[j, :len(s)] = torch.tensor(lab)
            mask[j, :len(s)] = 1
        yield ids, mask, labels


def evaluate(model, seqs, size, pad_id) -> tuple[float, int]:
    """Mean loss per assistant token over `seqs` (summed over tokens, not averaged per batch), and the count."""
    import torch
    import torch.nn.functional as F
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for ids, mask, labels in batches(seqs, size, pad_id):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            target = labels[:, 1:]
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                                     ignore_index=-100, reduction="sum").item()
            n += int((target != -100).sum())
    model.train()
    return total / max(n, 1), n


def train_steps(model, optim, train, batch: int, pad: int, epochs: int, max_steps: int, on_step=None):
    """Up to `max_steps` optimizer steps over `epochs` passes; returns the loss curve ([step, loss] pairs),
    the tokens trained on (padding excluded) and the seconds it took."""
    curve, tokens, started = [], 0, time.perf_counter()
    for _epoch in range(epochs):
        for ids, mask, labels in batches(train, batch, pad):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optim.step()
            optim.zero_grad()
            tokens += int(mask.sum())
            curve.append([len(curve) + 1, round(loss.item(), 5)])
            if on_step is not None:
                on_step(len(curve), loss.item())
            if len(curve) >= max_steps:
                return curve, tokens, time.perf_counter() - started
    return curve, tokens, time.perf_counter() - started


def base_checkpoint(job: dict) -> tuple[Path, float]:
    from local.basemodels import ensure
    base_dir = Path(job["base_model_dir"])
    if not (base_dir / "config.json").exists() and os.environ.get("TUNEFLOW_BASE_MODEL_DIR"):
        raise FileNotFoundError(f"TUNEFLOW_BASE_MODEL_DIR={base_dir} has no config.json: point it at a checkpoint folder")
    return ensure(job["spec"]["base_model"], base_dir)


def fine_tune(job: dict, job_dir: Path) -> dict:
    import mlflow
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from local.basemodels import lora_for

    spec, params = job["spec"], job["spec"]["params"]
    base_dir, build_s = base_checkpoint(job)
    torch.manual_seed(0)
    started_load = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    load_s = time.perf_counter() - started_load
    lora = lora_for(model.config.model_type)
    defaults = lora.defaults
    model = get_peft_model(model, LoraConfig(
        r=_param(params, defaults, "lora_r", int), lora_alpha=_param(params, defaults, "lora_alpha", int),
        target_modules=list(lora.targets), modules_to_save=list(lora.modules_to_save) or None, lora_dropout=0.0,
        task_type="CAUSAL_LM"))

    max_len = _param(params, defaults, "max_seq_length", int)
    train = encode(tokenizer, load_conversations(download(spec["train_uri"], job_dir / "train.jsonl")), max_len)
    test = encode(tokenizer, load_conversations(download(spec["test_uri"], job_dir / "test.jsonl")), max_len)
    test = test[:_param(params, defaults, "eval_rows", int)]  # the same held-out rows for base and fine-tuned
    if not train or not test:
        raise ValueError(f"nothing to learn or to evaluate: {len(train)} train and {len(test)} test conversations "
                         f"with assistant tokens within max_seq_length={max_len}")
    batch = _param(params, defaults, "per_device_train_batch_size", int)
    epochs, max_steps = _param(params, defaults, "num_train_epochs", int), _param(params, defaults, "max_steps", int)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    lr = _param(params, defaults, "learning_rate", float)
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    mlflow.set_tracking_uri(job["tracking_uri"])
    use_experiment(mlflow, spec["experiment"], job_dir.parent.parent / "artifacts")
    end_lost_runs(mlflow, spec["experiment"], spec["name"])
    with mlflow.start_run(run_name=spec["name"], tags={**spec["tags"], "job": spec["name"]}) as run:
        mlflow.log_params({**defaults, **params, "train_rows": len(train), "test_rows": len(test),
                           "base_model": spec["base_model"]})
        base_loss, eval_tokens = evaluate(model, test, batch, pad)  # LoRA starts at zero: this is the base model
        mlflow.log_metrics({"base_eval_loss": base_loss, "eval_loss": base_loss}, step=0)
        print(f"base eval_loss {base_loss:.4f} on {len(test)} test rows ({eval_tokens} assistant tokens)", flush=True)
        def logged(step: int, loss: float) -> None:
            mlflow.log_metric("train_loss", loss, step=step)
            print(f"step {step} train_loss {loss:.4f}", flush=True)

        curve, tokens, train_s = train_steps(model, optim, train, batch, pad, epochs, max_steps, logged)
        step = len(curve)
        eval_loss, _ = evaluate(model, test, batch, pad)
        mlflow.log_metrics({"eval_loss": eval_loss, "eval_perplexity": _exp(eval_loss),
                            "base_eval_perplexity": _exp(base_loss)}, step=step)
        print(f"eval_loss {eval_loss:.4f} (base {base_loss:.4f})", flush=True)
        merged = model.merge_and_unload()
        info = mlflow.transformers.log_model(
            transformers_model={"model": merged, "tokenizer": tokenizer}, name="trained_model",
            task="text-generation", pip_requirements=["torch==2.13.0", "transformers", "mlflow"])
        metrics = {"eval_loss": eval_loss, "base_eval_loss": base_loss, "eval_perplexity": _exp(eval_loss),
                   "base_eval_perplexity": _exp(base_loss), "eval_rows": len(test), "eval_tokens": eval_tokens,
                   "train_loss": curve, "eval_curve": [[0, base_loss], [step, eval_loss]], "steps": step,
                   "train_seconds": round(train_s, 2), "train_tokens": tokens,
                   "tokens_per_s": round(tokens / train_s, 1) if train_s else None,
                   "peak_rss_mb": _peak_rss_mb(), "base_load_seconds": round(load_s, 2),
                   "base_build_seconds": round(build_s, 2), "mlflow_run_id": run.info.run_id}
    return {"status": "Completed", "output_uri": info.model_uri, "metrics": metrics}


def _exp(loss: float) -> float:
    import math
    return math.exp(loss) if loss < 700 else math.inf


def _peak_rss_mb() -> float:
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


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
