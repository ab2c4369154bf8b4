"""Dataset preparation: ultrachat-shaped rows in, clean train/test JSONL out.

Works on local files only (the function spools the blob to a temp file first), so the same code
runs in the Function, in `tuneflow prepare` and in tests. Rows are checked one by one; each
rejected row is kept in `rejected.jsonl` with its location and reason, never silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

ROLES = ("system", "user", "assistant")
OUTPUT_FILES = ("train.jsonl", "test.jsonl", "rejected.jsonl")


@dataclass(frozen=True)
class PrepareOptions:
    test_fraction: float = 0.1
    seed: int = 0
    max_row_bytes: int = 262_144
    max_rejected_share: float = 0.05

    @classmethod
    def from_settings(cls) -> "PrepareOptions":
        from shared import settings
        return cls(
            test_fraction=settings.get_float("TUNEFLOW_TEST_FRACTION", 0.0, 0.9),
            max_row_bytes=settings.get_int("TUNEFLOW_MAX_ROW_BYTES", 1024),
            max_rejected_share=settings.get_float("TUNEFLOW_MAX_REJECTED_SHARE", 0.0, 1.0),
        )

    def as_dict(self) -> dict:
        return asdict(self)


class DatasetRefused(Exception):
    """The dataset as a whole is unusable. `report` is what goes into `error.json`."""

    def __init__(self, what: str, fix: str, where: str = "", rows: dict | None = None):
        super().__init__(what)
        self.report = {"error": what, "where": where, "fix": fix, "rows": rows or {}}

    def one_line(self) -> str:
        where = f" ({self.report['where']})" if self.report["where"] else ""
        return f"{self.report['error']}{where}: {self.report['fix']}"


def check_row(row: object, max_row_bytes: int, size: int) -> str | None:
    """The reason a row is unusable, or None when it is good."""
    if not isinstance(row, dict):
        return "not-an-object"
    if size > max_row_bytes:
        return "row-too-large"
    for key in ("prompt", "prompt_id", "messages"):
        if key not in row:
            return f"missing-{key}"
    if not isinstance(row["prompt"], str) or not isinstance(row["prompt_id"], str) or not row["prompt_id"]:
        return "bad-prompt-or-id"
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages-not-a-non-empty-list"
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return "message-without-role-or-content"
        if m["role"] not in ROLES:
            return "unknown-role"
        if not isinstance(m["content"], str) or not m["content"].strip():
            return "empty-content"
    if messages[-1]["role"] != "assistant":
        return "does-not-end-with-assistant"
    return None


def clean_row(row: dict) -> dict:
    """Only the fields the fine-tune component reads; extra columns are dropped."""
    return {
        "prompt": row["prompt"],
        "prompt_id": row["prompt_id"],
        "messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]],
    }


def is_test_row(prompt_id: str, seed: int, test_fraction: float) -> bool:
    """Deterministic split: the same prompt_id always lands in the same split."""
    h = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < test_fraction


def iter_rows(path: Path, filename: str) -> Iterator[tuple[str, object, int]]:
    """Yield (location, parsed row or a `_Bad` reason, size in bytes) for each row of a file."""
    lower = filename.lower()
    if lower.endswith(".jsonl"):
        yield from _iter_jsonl(path, filename)
    elif lower.endswith(".json"):
        yield from _iter_json_array(path, filename)
    elif lower.endswith(".parquet"):
        yield from _iter_parquet(path, filename)
    else:  # naming.dataset_blob already refuses these; kept for direct callers
        raise DatasetRefused(f"unsupported file type {filename!r}", "use .jsonl, .json or .parquet")


class _Bad(str):
    """A row that could not even be parsed; the string is the reason."""


def _iter_jsonl(path: Path, filename: str):
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            where = f"{filename}:{lineno}"
            try:
                yield where, json.loads(raw), len(raw)
            except UnicodeDecodeError:
                yield where, _Bad("invalid-utf8"), len(raw)
            except (ValueError, RecursionError):
                yield where, _Bad("invalid-json"), len(raw)


def _iter_json_array(path: Path, filename: str):
    try:
        data = json.loads(path.read_bytes().removeprefix(b"\xef\xbb\xbf"))
    except (ValueError, RecursionError) as exc:
        raise DatasetRefused(f"{filename} is not valid JSON ({exc.__class__.__name__})",
                             "a .json file must be one JSON array of rows; use .jsonl for one row per line",
                             where=filename) from None
    if not isinstance(data, list):
        raise DatasetRefused(f"{filename} is JSON but not an array of rows",
                             "a .json file must be one JSON array of rows", where=filename)
    for i, row in enumerate(data):
        yield f"{filename}[{i}]", row, len(json.dumps(row))


def _iter_parquet(path: Path, filename: str):
    try:
        import pyarrow.parquet as pq  # heavy: only when a parquet file arrives
    except ImportError:
        raise DatasetRefused("parquet support is not installed here",
                             "install pyarrow or drop the data as .jsonl", where=filename) from None
    try:
        pf = pq.ParquetFile(path)
        offset = 0
        for batch in pf.iter_batches(batch_size=2048):
            for i, row in enumerate(batch.to_pylist()):
                yield f"{filename}#row{offset + i}", row, len(json.dumps(row, default=str))
            offset += batch.num_rows
    except DatasetRefused:
        raise
    except Exception as exc:  # pyarrow raises several types for corrupt or truncated files
        raise DatasetRefused(f"{filename} is not a readable parquet file ({exc})",
                             "re-export the file, or drop it as .jsonl", where=filename) from None


def prepare(src: Path, filename: str, out_dir: Path, options: PrepareOptions) -> dict:
    """Validate and split one file into `out_dir`; return the manifest's data part.

    Raises DatasetRefused when nothing usable is left or too many rows are rejected.
    """
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    reasons: Counter[str] = Counter()
    counts = Counter()
    seen: set[str] = set()
    with open(out_dir / "train.jsonl", "w", encoding="utf-8") as train, \
            open(out_dir / "test.jsonl", "w", encoding="utf-8") as test, \
            open(out_dir / "rejected.jsonl", "w", encoding="utf-8") as rejected:
        for where, row, size in iter_rows(src, filename):
            counts["read"] += 1
            reason = row if isinstance(row, _Bad) else check_row(row, options.max_row_bytes, size)
            if reason is None and row["prompt_id"] in seen:
                reason = "duplicate-prompt-id"
            if reason is not None:
                reasons[str(reason)] += 1
                rejected.write(json.dumps({"where": where, "reason": str(reason)}) + "\n")
                continue
            seen.add(row["prompt_id"])
            is_test = is_test_row(row["prompt_id"], options.seed, options.test_fraction)
            (test if is_test else train).write(json.dumps(clean_row(row), ensure_ascii=False) + "\n")
            counts["test" if is_test else "train"] += 1
    rows = {"read": counts["read"], "train": counts["train"], "test": counts["test"],
            "rejected": sum(reasons.values()), "rejected_by_reason": dict(reasons)}
    _refuse_if_unusable(filename, rows, options)
    files = {}
    for name in OUTPUT_FILES:
        data = (out_dir / name).read_bytes()
        files[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return {"rows": rows, "files": files, "seconds": round(time.perf_counter() - started, 3)}


def _refuse_if_unusable(filename: str, rows: dict, options: PrepareOptions) -> None:
    top = ", ".join(f"{k}: {v}" for k, v in Counter(rows["rejected_by_reason"]).most_common(3))
    if rows["read"] == 0:
        raise DatasetRefused(f"{filename} holds no rows", "drop a file with at least one conversation",
                             where=filename, rows=rows)
    share = rows["rejected"] / rows["read"]
    if share > options.max_rejected_share:
        raise DatasetRefused(
            f"{rows['rejected']} of {rows['read']} rows rejected ({share:.0%}, limit "
            f"{options.max_rejected_share:.0%}; {top})",
            "fix the rows listed in rejected.jsonl (each has its location and reason) and drop the file "
            "again, or raise TUNEFLOW_MAX_REJECTED_SHARE", where=filename, rows=rows)
    if rows["train"] == 0 or rows["test"] == 0:
        raise DatasetRefused(
            f"{rows['train'] + rows['test']} valid rows give {rows['train']} train and {rows['test']} "
            f"test rows", "drop more rows, or change TUNEFLOW_TEST_FRACTION so both splits have rows",
            where=filename, rows=rows)
