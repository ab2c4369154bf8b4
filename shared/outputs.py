"""The prepared files (train, test, rejected) as preparation writes them.

The rows are written by one streaming polars query with a sink per output file (see `sink`):
polars reads, validates and serializes in its own threads and hands each output's JSON Lines to
a `DigestingFile` a few MB at a time, which hashes and writes them as they come (both release the
GIL). Each file's sha256, size and row count are kept as it is written, so the manifest needs no
second read.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from shared.rows import polars_schema

OUTPUT_FILES = ("train.jsonl", "test.jsonl", "rejected.jsonl")
LINE_BUFFER_BYTES = 1 << 20


class DigestingFile:
    """A binary output file that keeps its sha256, size and row count as it is written.

    File-like enough to be a polars sink (`write`, `flush`); rows written by a sink are counted
    by the caller (`add_rows`), rows written here are counted here."""

    def __init__(self, path: Path):
        self._f = open(path, "wb")
        self._sha, self.bytes, self.rows = hashlib.sha256(), 0, 0
        self._lines = bytearray()

    def write(self, data: bytes) -> int:
        """polars' sinks call this with `bytes` of a few MB, from their own threads."""
        self._flush_lines()
        self._consume(data)
        return len(data)

    def flush(self) -> None:
        self._flush_lines()

    def write_line(self, line: bytes) -> None:
        """One row from Python code (JSON rejections): gathered, so that writes stay MB-sized."""
        self._lines += line
        self.rows += 1
        if len(self._lines) >= LINE_BUFFER_BYTES:
            self._flush_lines()

    def write_frame(self, frame) -> None:
        if frame.height:
            frame.write_ndjson(self)
            self.rows += frame.height

    def add_rows(self, n: int) -> None:
        self.rows += n

    def _flush_lines(self) -> None:
        if self._lines:
            data, self._lines = bytes(self._lines), bytearray()
            self._consume(data)

    def _consume(self, data: bytes) -> None:
        self._sha.update(data)
        self._f.write(data)
        self.bytes += len(data)

    def finish(self) -> dict:
        self._flush_lines()
        self._f.close()
        return {"bytes": self.bytes, "sha256": self._sha.hexdigest(), "rows": self.rows}

    def close(self) -> None:
        self._f.close()


class PreparedOutputs:
    """train.jsonl, test.jsonl and rejected.jsonl in `out_dir`.

    `sink` writes classified rows: the output columns plus `part` (train, test, rejected,
    duplicate), `reason`, `split`, `src` and `pos`. Duplicates (good rows whose prompt_id may occur
    more than once in the dataset) wait in `duplicates_path` until `finish()` keeps the first of each."""

    def __init__(self, out_dir: Path, duplicates_path: Path):
        self.files = {name: DigestingFile(out_dir / name) for name in OUTPUT_FILES}
        self.rejected = self.files["rejected.jsonl"]
        self.reasons: Counter[str] = Counter()
        self._duplicates_path = duplicates_path  # a scratch file: polars writes it, nothing hashes it

    def __enter__(self) -> "PreparedOutputs":
        return self

    def __exit__(self, *exc) -> None:
        for f in self.files.values():
            f.close()

    def sink(self, rows, where) -> None:
        """Run the one streaming query that writes every classified row where it belongs.

        `rows` is a LazyFrame; `where` an expression giving a row's source location (built only
        for the rejected and duplicate rows). Order is kept: each file lists its rows in input order."""
        import polars as pl
        output = list(polars_schema())
        part = pl.col("part")
        sinks = [rows.filter(part == split).select(output).sink_ndjson(self.files[f"{split}.jsonl"], lazy=True)
                 for split in ("train", "test")]
        sinks.append(rows.filter(part == "rejected").select(where.alias("where"), "reason")
                     .sink_ndjson(self.rejected, lazy=True))
        sinks.append(rows.filter(part == "duplicate").select(*output, where.alias("where"), "split", "src", "pos")
                     .sink_ndjson(self._duplicates_path, lazy=True))
        counts = pl.collect_all([*sinks, rows.group_by("part", "reason").len()], engine="streaming")[-1]
        for part_name, reason, n in counts.iter_rows():
            if part_name == "rejected":
                self.reasons[reason] += n
                self.rejected.add_rows(n)
            elif part_name in ("train", "test"):
                self.files[f"{part_name}.jsonl"].add_rows(n)

    def finish(self) -> dict:
        """Resolve duplicates, flush everything; {file name: {bytes, sha256, rows}}."""
        self._resolve_duplicates()
        return {name: f.finish() for name, f in self.files.items()}

    def _resolve_duplicates(self) -> None:
        """Keep the first good row of each duplicated prompt_id (in input order); reject the others.
        Holds only the duplicated rows in memory."""
        import polars as pl
        if not self._duplicates_path.exists() or self._duplicates_path.stat().st_size == 0:
            return  # no live input ran the query, or no good row had a repeated id
        schema = {**polars_schema(), "where": pl.String, "split": pl.String, "src": pl.UInt32, "pos": pl.Int64}
        rows = pl.read_ndjson(self._duplicates_path, schema=schema).sort("src", "pos")
        first = pl.col("prompt_id").is_first_distinct()
        kept = rows.filter(first)
        for split in ("train", "test"):
            self.files[f"{split}.jsonl"].write_frame(kept.filter(pl.col("split") == split).select(*polars_schema()))
        dropped = rows.filter(~first)
        self.rejected.write_frame(dropped.select("where", pl.lit("duplicate-prompt-id").alias("reason")))
        self.reasons["duplicate-prompt-id"] += dropped.height


def file_digest(path: Path) -> dict:
    """Bytes and sha256 of a file, in one read (inputs, and outputs written elsewhere)."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": h.hexdigest()}
