"""Synthetic chat data with exactly the ultrachat_200k schema, generated offline.

Row: `prompt` (str), `prompt_id` (64 hex chars, sha256 of the prompt, as the dataset has),
`messages` (list of `{content, role}`, user/assistant alternating, 2-8 turns, ending with the
assistant). Rows are a few KB each, with a long tail of much longer ones, like the real data.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Iterator

TOPICS = ["photosynthesis", "the French revolution", "neural networks", "sourdough bread", "black holes",
          "the stock market", "climate change", "jazz improvisation", "the immune system", "Roman roads",
          "volcanoes", "public transport", "honeybees", "quantum computing", "marathon training",
          "the printing press", "coral reefs", "cloud storage", "medieval castles", "solar panels"]
ASKS = ["Can you explain {t} in simple terms?", "What are the most important facts about {t}?",
        "Write a short essay about {t}.", "How does {t} affect everyday life?",
        "Give me three surprising things about {t}.", "Summarize the history of {t}."]
FOLLOW_UPS = ["Can you give an example?", "Why is that important?", "How would you explain that to a child?",
              "What are the main criticisms?", "Can you make it shorter?", "What should I read next?"]
OPENERS = ["Certainly.", "Sure, here is an overview.", "Good question.", "Here is a clear explanation."]
SENTENCES = ["{T} has shaped how people think about the world for a long time.",
             "The key idea behind {t} is that small causes can add up to large effects.",
             "Researchers who study {t} often point to careful measurement as the first step.",
             "Many people first meet {t} at school, but it matters far beyond the classroom.",
             "A common mistake is to treat {t} as simple, when it depends on many factors.",
             "In practice, {t} is best understood through concrete examples and comparison.",
             "Experts disagree on some details of {t}, yet they agree on the broad picture.",
             "Learning about {t} step by step makes the harder parts much easier to follow."]


def _paragraph(rng: random.Random, topic: str, sentences: int) -> str:
    out = [rng.choice(SENTENCES).format(t=topic, T=topic[0].upper() + topic[1:]) for _ in range(sentences)]
    return " ".join(out)


def row(rng: random.Random, index: int) -> dict:
    topic = rng.choice(TOPICS)
    prompt = rng.choice(ASKS).format(t=topic) + f" (#{index})"
    turns = rng.choice([1, 1, 2, 2, 3, 4])  # user/assistant pairs: 2-8 messages
    long_tail = rng.random() < 0.03
    messages = []
    for turn in range(turns):
        ask = prompt if turn == 0 else rng.choice(FOLLOW_UPS)
        messages.append({"content": ask, "role": "user"})
        n = rng.randint(20, 60) if long_tail else rng.randint(4, 14)
        messages.append({"content": rng.choice(OPENERS) + " " + _paragraph(rng, topic, n), "role": "assistant"})
    return {"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(), "messages": messages}


def rows(n: int, seed: int = 0) -> Iterator[dict]:
    rng = random.Random(seed)
    for i in range(n):
        yield row(rng, i)


def gibberish(items, seed: int = 0) -> Iterator[dict]:
    """The same rows with every assistant reply replaced by random letters: data that teaches a model
    nothing useful for normal replies (the quality gate's failing case)."""
    rng = random.Random(seed)
    for r in items:
        messages = [m if m["role"] != "assistant" else
                    {"content": " ".join("".join(rng.choice("qxzjvkwyfbgpmhdcultsnroiea") for _ in range(rng.randint(2, 9)))
                                         for _ in range(rng.randint(20, 60))), "role": "assistant"}
                    for m in r["messages"]]
        yield {**r, "messages": messages}


PARQUET_ROW_GROUP_ROWS = 1_000  # `datasets`' default writer batch size (get_writer_batch_size)


def write(path: Path, n: int, seed: int = 0) -> Path:
    """Write `n` rows as .jsonl, .json (array) or .parquet, chosen by the file's suffix."""
    return write_rows(path, rows(n, seed))


def write_rows(path: Path, items) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, "w", encoding="utf-8") as f:
            for r in items:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    elif suffix == ".json":
        path.write_text(json.dumps(list(items), ensure_ascii=False))
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        schema = pa.schema([("prompt", pa.string()), ("prompt_id", pa.string()),
                            ("messages", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())])))])
        writer = None
        batch = []
        for r in items:  # row groups of 1,000 rows, as `datasets` writes the hub's parquet files
            batch.append(r)
            if len(batch) == PARQUET_ROW_GROUP_ROWS:
                writer = _write_batch(pa, pq, path, schema, batch, writer)
                batch = []
        if batch or writer is None:
            writer = _write_batch(pa, pq, path, schema, batch, writer)
        writer.close()
    else:
        raise ValueError(f"cannot write {path.name}: use a .jsonl, .json or .parquet file name")
    return path


def _write_batch(pa, pq, path, schema, batch, writer):
    writer = writer or pq.ParquetWriter(path, schema)
    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    return writer
