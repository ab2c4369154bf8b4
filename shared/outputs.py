"""The prepared files (train, test, rejected) as preparation writes them: in a pipeline, so that
reading and validating the next chunk, turning this one into JSON, and hashing and writing the
bytes all overlap (each step releases the GIL: polars, hashlib, file writes).

  main thread      read chunk k+1, validate and split it             (shared.dataset)
  "serialize"      chunk k -> JSON Lines bytes, by part              PreparedOutputs.write
  "sink"           bytes -> sha256 and file, in order                DigestingFile

Each file's sha256, size and row count are kept as it is written, so the manifest needs no
second read. Memory stays bounded: one chunk waits while one is serialized, and at most
SINK_DEPTH buffers (a few MB each) wait to be hashed and written.
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from shared.rows import polars_schema

OUTPUT_FILES = ("train.jsonl", "test.jsonl", "rejected.jsonl")
SINK_DEPTH = 4
LINE_BUFFER_BYTES = 1 << 20


class _Sink:
    """One thread that runs buffered writes in the order they were given, with a bounded backlog."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tuneflow-sink")
        self._backlog: deque[Future] = deque()

    def submit(self, fn, *args) -> None:
        while len(self._backlog) >= SINK_DEPTH:
            self._backlog.popleft().result()
        self._backlog.append(self._pool.submit(fn, *args))

    def drain(self) -> None:
        while self._backlog:
            self._backlog.popleft().result()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._pool.shutdown()


class DigestingFile:
    """A binary output file that keeps its sha256, size and row count; bytes go through the sink."""

    def __init__(self, path: Path, sink: _Sink):
        self._f = open(path, "wb")
        self._sink = sink
        self._sha, self._bytes, self._rows = hashlib.sha256(), 0, 0
        self._lines = bytearray()

    def write(self, data: bytes) -> int:
        """File-like write: polars' write_ndjson calls it with `bytes` of a few MB (immutable: safe to queue)."""
        self._flush_lines()
        self._bytes += len(data)
        self._sink.submit(self._consume, data)
        return len(data)

    def write_line(self, line: bytes) -> None:
        """One row from Python code (JSON rejections): gathered, so the sink gets MB-sized buffers."""
        self._lines += line
        self._rows += 1
        if len(self._lines) >= LINE_BUFFER_BYTES:
            self._flush_lines()

    def write_frame(self, frame) -> None:
        if frame.height:
            frame.write_ndjson(self)
            self._rows += frame.height

    def _flush_lines(self) -> None:
        if self._lines:
            data, self._lines = bytes(self._lines), bytearray()
            self._bytes += len(data)
            self._sink.submit(self._consume, data)

    def _consume(self, data: bytes) -> None:
        self._sha.update(data)
        self._f.write(data)

    def finish(self) -> dict:
        """Flush and close; the file's digest (call after the sink has drained)."""
        self._flush_lines()
        self._sink.drain()
        self._f.close()
        return {"bytes": self._bytes, "sha256": self._sha.hexdigest(), "rows": self._rows}

    def close(self) -> None:
        self._f.close()


class PreparedOutputs:
    """train.jsonl, test.jsonl and rejected.jsonl in `out_dir`, written from classified chunks.

    A chunk has the output columns plus `part` (train, test, rejected, duplicate), `reason`,
    `where`, `split` and `row`. Duplicates (good rows whose prompt_id occurs more than once in the
    dataset) wait in `duplicates_path` until `finish()` keeps the first of each."""

    def __init__(self, out_dir: Path, duplicates_path: Path):
        self._sink = _Sink()
        self.files = {name: DigestingFile(out_dir / name, self._sink) for name in OUTPUT_FILES}
        self.rejected = self.files["rejected.jsonl"]
        self.reasons: Counter[str] = Counter()
        self._duplicates_path = duplicates_path
        self._duplicates = open(duplicates_path, "wb")
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tuneflow-serialize")
        self._pending: Future | None = None

    def __enter__(self) -> "PreparedOutputs":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._wait()
        finally:
            self._pool.shutdown()
            self._sink.close()
            self._duplicates.close()
            for f in self.files.values():
                f.close()

    def write(self, chunk, source_index: int) -> None:
        """Queue a classified chunk; waits for the one before, so at most two are in memory."""
        self._wait()
        self._pending = self._pool.submit(self._serialize, chunk, source_index)

    def finish(self) -> dict:
        """Resolve duplicates, flush everything; {file name: {bytes, sha256, rows}}."""
        self._wait()
        self._resolve_duplicates()
        return {name: f.finish() for name, f in self.files.items()}

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _serialize(self, chunk, source_index: int) -> None:
        import polars as pl
        for (part,), rows in chunk.partition_by("part", as_dict=True).items():
            if part == "rejected":
                self.rejected.write_frame(rows.select("where", "reason"))
                self.reasons.update(dict(rows["reason"].value_counts().iter_rows()))
            elif part == "duplicate":
                rows.select(*polars_schema(), "where", "split", "row",
                            pl.lit(source_index, dtype=pl.Int64).alias("source")).write_ndjson(self._duplicates)
            else:
                self.files[f"{part}.jsonl"].write_frame(rows.select(*polars_schema()))

    def _resolve_duplicates(self) -> None:
        """Keep the first good row of each duplicated prompt_id (in file order); reject the others.
        Holds only the duplicated rows in memory."""
        import polars as pl
        self._duplicates.close()
        if self._duplicates_path.stat().st_size == 0:
            return
        schema = {**polars_schema(), "where": pl.String, "split": pl.String, "row": pl.Int64, "source": pl.Int64}
        rows = pl.read_ndjson(self._duplicates_path, schema=schema).sort("source", "row")
        first = pl.col("prompt_id").is_first_distinct()
        kept = rows.filter(first)
        for split in ("train", "test"):
            self.files[f"{split}.jsonl"].write_frame(kept.filter(pl.col("split") == split).select(*polars_schema()))
        dropped = rows.filter(~first)
        self.rejected.write_frame(dropped.select("where", pl.lit("duplicate-prompt-id").alias("reason")))
        self.reasons["duplicate-prompt-id"] += dropped.height


def file_digest(path: Path) -> dict:
    """Bytes, sha256 and line count of a file, in one read (inputs, and outputs written elsewhere)."""
    h, size, lines = hashlib.sha256(), 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
    return {"bytes": size, "sha256": h.hexdigest(), "rows": lines}
