"""Input files: what kind each is, which split its name says, and how to read it in bounded memory.

- parquet: read by polars a row group (or a run of small ones) at a time, schema checked first:
  a wrong schema refuses the file.
- JSON Lines (`.jsonl`, `.jsonl.gz`) and JSON arrays (`.json`): streamed row by row (lines read
  with a length cap, arrays through ijson) into normalized JSON Lines of structurally good rows
  (`where` keeps each row's source location); every unusable row is rejected with its location.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from shared.rows import check_row, clean_row

SPLIT_NAMES = {"train_sft": "train", "test_sft": "test", "train_gen": "unused", "test_gen": "unused"}
_SPLIT_RE = re.compile(r"(?:^|[^a-z])(train_sft|test_sft|train_gen|test_gen)(?:[^a-z]|$)")
SHARD_RE = re.compile(r"-(\d{5})-of-(\d{5})\.[a-z.]+$")
KINDS = {".parquet": "parquet", ".jsonl": "jsonl", ".jsonl.gz": "jsonl.gz", ".json": "json"}


class SourceRefused(Exception):
    """The file as a whole is unusable: `what` and `fix` go into error.json."""

    def __init__(self, what: str, fix: str):
        super().__init__(what)
        self.fix = fix


def kind_of(name: str) -> str | None:
    lower = name.lower()
    for suffix in sorted(KINDS, key=len, reverse=True):
        if lower.endswith(suffix):
            return KINDS[suffix]
    return None


def split_of(name: str) -> str:
    """`train` / `test` / `unused` from a hub split name in the file name, else `hash` (split by prompt_id)."""
    m = _SPLIT_RE.search(Path(name).name.lower())
    return SPLIT_NAMES[m.group(1)] if m else "hash"


@dataclass
class Source:
    name: str  # the file's name relative to the dataset folder (e.g. data/train_sft-00000-of-00003.parquet)
    path: Path  # a local copy
    sha256: str = ""
    etag: str = ""
    bytes: int = 0

    @property
    def kind(self) -> str:
        return kind_of(self.name) or "unknown"

    @property
    def split(self) -> str:
        return split_of(self.name)


# -- parquet ----------------------------------------------------------------------------------

def check_parquet(src: Source):
    """Refuse a parquet file that cannot be read or lacks the ultrachat schema; return (row count, schema)."""
    import polars as pl
    try:
        schema = pl.read_parquet_schema(src.path)
        rows = pl.scan_parquet(src.path).select(pl.len()).collect().item()
    except Exception as exc:  # polars raises several types for truncated or corrupt files
        raise SourceRefused(f"{src.name} is not a readable parquet file ({str(exc).splitlines()[0][:160]})",
                            "re-export the file (or upload it again: it may be truncated), or drop it as .jsonl") from None
    expected = pl.List(pl.Struct({"content": pl.String, "role": pl.String}))
    problems = [f"no column {c!r}" for c in ("prompt", "prompt_id", "messages") if c not in schema]
    if not problems:
        for col in ("prompt", "prompt_id"):
            if schema[col] != pl.String:
                problems.append(f"{col!r} is {schema[col]}, not a string")
        msg = schema["messages"]
        if not (isinstance(msg, pl.List) and isinstance(msg.inner, pl.Struct)
                and {f.name for f in msg.inner.fields} >= {"content", "role"}):
            problems.append(f"'messages' is {msg}, not {expected}")
    if problems:
        raise SourceRefused(f"{src.name} does not have the ultrachat schema: {'; '.join(problems)}",
                            "give it prompt (string), prompt_id (string) and messages (list of {content, role})")
    return rows, schema


# -- JSON family ------------------------------------------------------------------------------

def _open(src: Source):
    return gzip.open(src.path, "rb") if src.kind == "jsonl.gz" else open(src.path, "rb")


def _lines(f, limit: int):
    """(line number, bytes or None when longer than `limit`): a huge line is skipped in chunks, never held."""
    lineno = 0
    while True:
        raw = f.readline(limit + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > limit and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(1 << 20)
            yield lineno, None
            continue
        yield lineno, raw


def normalize_json(src: Source, out, rejected, max_row_bytes: int, first_rows: int | None = None) -> dict:
    """Stream a JSON-family file into normalized JSONL (`out`, binary) and rejections
    (`rejected.write_line(bytes)`); return the rows read and kept, and the rejections by reason."""
    counts = {"read": 0, "kept": 0, "rejected_by_reason": Counter()}
    for where, row, size in _json_rows(src, max_row_bytes):
        if first_rows is not None and counts["read"] >= first_rows:
            break
        counts["read"] += 1
        reason = row if isinstance(row, _Bad) else check_row(row, max_row_bytes, size)
        if reason is not None:
            rejected.write_line(json.dumps({"where": where, "reason": str(reason)}).encode() + b"\n")
            counts["rejected_by_reason"][str(reason)] += 1
            continue
        out.write(json.dumps({**clean_row(row), "where": where}, ensure_ascii=False).encode() + b"\n")
        counts["kept"] += 1
    return counts


def count_json_rows(src: Source, max_row_bytes: int) -> int:
    return sum(1 for _ in _json_rows(src, max_row_bytes))


class _Bad(str):
    """A row that could not be parsed; the string is the reason."""


def _json_rows(src: Source, max_row_bytes: int):
    if src.kind == "json":
        yield from _json_array_rows(src)
        return
    with _open(src) as f:
        try:
            for lineno, raw in _lines(f, max_row_bytes):
                where = f"{src.name}:{lineno}"
                if raw is None:
                    yield where, _Bad("row-too-large"), max_row_bytes + 1
                    continue
                if lineno == 1:
                    raw = raw.removeprefix(b"\xef\xbb\xbf")
                    if raw.lstrip().startswith(b"["):
                        raise SourceRefused(f"{src.name} starts with '[': it looks like a JSON array, not JSON Lines",
                                            "rename it to .json, or write one row per line")
                if not raw.strip():
                    continue
                try:
                    yield where, json.loads(raw), len(raw.rstrip(b"\r\n"))
                except UnicodeDecodeError:
                    yield where, _Bad("invalid-utf8"), len(raw)
                except (ValueError, RecursionError):
                    yield where, _Bad("invalid-json"), len(raw)
        except (OSError, EOFError) as exc:  # gzip: corrupt or truncated stream
            raise SourceRefused(f"{src.name} cannot be decompressed ({exc})", "upload an intact .jsonl.gz file") from None


MAX_DEPTH = 64  # chat rows nest 3 deep; far deeper is an attack or a broken export


def _json_array_rows(src: Source):
    """The elements of a JSON array, one at a time (ijson events, built per element, depth-capped)."""
    import ijson  # C-backed streaming parser: arrays of any size in bounded memory
    from ijson.common import ObjectBuilder
    with open(src.path, "rb") as f:
        first = _first_char(f)
        if first is None:
            return
        if first != b"[":
            raise SourceRefused(
                f"{src.name} is not a JSON array" + (" (it looks like JSON Lines)" if first == b"{" else ""),
                "a .json file must be one array of rows; name JSON Lines files .jsonl")
        depth, builder, i = 0, None, -1
        try:
            for _prefix, event, value in ijson.parse(f, use_float=True):
                if event in ("start_map", "start_array"):
                    depth += 1
                    if depth > MAX_DEPTH:
                        raise SourceRefused(f"{src.name} nests deeper than {MAX_DEPTH} levels in element {i + 1}",
                                            "rows are {prompt, prompt_id, messages}: fix the export")
                    if depth == 1:
                        continue  # the outer array opens
                elif event in ("end_map", "end_array"):
                    depth -= 1
                    if depth == 0:
                        continue  # the outer array closes
                if builder is None:
                    builder, i = ObjectBuilder(), i + 1
                builder.event(event, value)
                if depth == 1:  # back at the array's level: the element is complete
                    row = builder.value
                    builder = None
                    yield f"{src.name}[{i}]", row, len(json.dumps(row, ensure_ascii=False).encode())
        except (ijson.JSONError, ijson.IncompleteJSONError, UnicodeDecodeError) as exc:
            raise SourceRefused(f"{src.name} is not valid JSON at element {max(i, 0)} ({str(exc).splitlines()[0][:120]})",
                                "fix the file so it is one valid JSON array, or convert it to .jsonl") from None


def _first_char(f) -> bytes | None:
    """Position `f` at its first non-blank byte (after a BOM) and return that byte."""
    f.seek(0)
    start = f.read(3)
    offset = 3 if start == b"\xef\xbb\xbf" else 0
    f.seek(offset)
    while True:
        c = f.read(1)
        if not c:
            return None
        if not c.isspace():
            f.seek(f.tell() - 1)
            return c
