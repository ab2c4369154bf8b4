"""Dataset preparation: ultrachat-shaped files in, clean train/test JSONL out, in bounded memory.

Works on local files (the function spools blobs to temp files first), so the same code runs in
the Function, in `tuneflow prepare` and in the tests. Validation, splitting and writing are one
vectorized polars query per dataset, streamed to the output files; JSON inputs are first streamed
row by row into normalized JSON Lines (see `shared.sources`). Every rejected row is kept in
`rejected.jsonl` with its location and reason.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from shared.rows import reason_expr
from shared.sources import Source, SourceRefused, check_parquet, count_json_rows, normalize_json

OUTPUT_FILES = ("train.jsonl", "test.jsonl", "rejected.jsonl")
SAMPLES = ("first", "random")


class DatasetRefused(Exception):
    """The dataset as a whole is unusable. `report` is what goes into `error.json`."""

    def __init__(self, what: str, fix: str, where: str = "", rows: dict | None = None):
        super().__init__(what)
        self.report = {"error": what, "where": where, "fix": fix, "rows": rows or {}}

    def one_line(self) -> str:
        where = f" ({self.report['where']})" if self.report["where"] else ""
        return f"{self.report['error']}{where}: {self.report['fix']}"


@dataclass(frozen=True)
class PrepareOptions:
    test_fraction: float = 0.1
    seed: int = 0
    split_pc: float = 100.0  # keep this percentage of each split (the seed's dataset_split_pc)
    sample: str = "first"  # first: the first N % in file order, as the seed; random: a seeded sample
    max_row_bytes: int = 262_144
    max_rejected_share: float = 0.05

    def __post_init__(self):
        checks = [(0.0 <= self.test_fraction < 1.0, "test_fraction must be at least 0 and below 1"),
                  (0.0 < self.split_pc <= 100.0, "split_pc must be above 0 and at most 100"),
                  (self.sample in SAMPLES, f"sample must be one of {', '.join(SAMPLES)}"),
                  (self.max_row_bytes >= 1024, "max_row_bytes must be at least 1024"),
                  (0.0 <= self.max_rejected_share <= 1.0, "max_rejected_share must be between 0 and 1")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message} (got {asdict(self)})")

    @classmethod
    def from_settings(cls, overrides: dict | None = None) -> "PrepareOptions":
        """Settings, then the per-dataset overrides (dataset.json `options`)."""
        from shared import settings
        base = cls(test_fraction=settings.get_float("TUNEFLOW_TEST_FRACTION", 0.0, 0.99),
                   split_pc=settings.get_float("TUNEFLOW_SPLIT_PC", 0.001, 100.0),
                   sample=settings.get("TUNEFLOW_SAMPLE"),
                   seed=settings.get_int("TUNEFLOW_SPLIT_SEED", 0),
                   max_row_bytes=settings.get_int("TUNEFLOW_MAX_ROW_BYTES", 1024),
                   max_rejected_share=settings.get_float("TUNEFLOW_MAX_REJECTED_SHARE", 0.0, 1.0))
        return base.with_overrides(overrides or {})

    def with_overrides(self, overrides: dict) -> "PrepareOptions":
        unknown = set(overrides) - set(asdict(self))
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)}: use {sorted(asdict(self))}")
        types = {k: type(v) for k, v in asdict(self).items()}
        try:
            return replace(self, **{k: types[k](v) for k, v in overrides.items()})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad option value in {overrides}: {exc}") from None

    def as_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> dict:
        """The options as they decide a prepared version: with the engine, whose hash splits the rows."""
        return {**asdict(self), "engine": engine()}


def engine() -> str:
    """The split and sampling hashes are polars' (fast, vectorized, stable within one polars version),
    so the engine version is part of the options that make a prepared version."""
    import polars as pl
    return f"polars-{pl.__version__}"


def unit_below(expr, seed: int, fraction: float):
    """Rows whose stable hash of `expr` falls below `fraction` (a deterministic, seeded selection)."""
    return expr.hash(seed=seed) < min(int(fraction * 2**64), 2**64 - 1)


def _plan_splits(sources: list[Source]) -> tuple[dict[str, str], list[str]]:
    """Split of each used source (train / test / hash) and the names of unused ones (train_gen, test_gen)."""
    splits = {s.name: s.split for s in sources}
    unused = sorted(n for n, sp in splits.items() if sp == "unused")
    named = {sp for sp in splits.values() if sp in ("train", "test")}
    if named == {"test"} and "hash" not in splits.values():
        raise DatasetRefused("the dataset has test files but no training rows",
                             "add train_sft (or unnamed) files beside the test_sft ones")
    if named == {"train"}:  # no test split given: carve it from the training rows
        splits = {n: ("hash" if sp == "train" else sp) for n, sp in splits.items()}
    return {n: sp for n, sp in splits.items() if sp != "unused"}, unused


def prepare(sources: list[Source], out_dir: Path, options: PrepareOptions) -> dict:
    """Validate, sample and split `sources` into `out_dir`; return the manifest's data part.

    Raises DatasetRefused when a file is unusable, nothing usable is left, or too many rows are rejected.
    """
    import polars as pl
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / ".work"
    work.mkdir(exist_ok=True)
    splits, unused = _plan_splits(sources)
    used = sorted((s for s in sources if s.name in splits), key=lambda s: s.name)
    if not used:
        raise DatasetRefused("no file of the dataset holds train or test rows",
                             "drop .jsonl/.json/.parquet files; train_gen/test_gen files are not used")
    frames, read_counts = [], Counter()
    schema = {"prompt": pl.String, "prompt_id": pl.String,
              "messages": pl.List(pl.Struct({"content": pl.String, "role": pl.String})), "where": pl.String}
    py_rejected = open(work / "rejected-rows.jsonl", "w", encoding="utf-8")
    try:
        keep = _first_rows_per_source(used, splits, options)
        for i, src in enumerate(used):
            try:
                if src.kind == "parquet":
                    lf, n = _parquet_frame(src, keep.get(src.name), options)
                elif src.kind in ("jsonl", "jsonl.gz", "json"):
                    norm = work / f"normalized-{i}.jsonl"
                    with open(norm, "w", encoding="utf-8") as out:
                        counts = normalize_json(src, out, py_rejected, options.max_row_bytes, keep.get(src.name))
                    n = counts["read"]
                    lf = pl.scan_ndjson(norm, schema=schema) if counts["kept"] else None
                    if lf is not None and options.sample == "random" and options.split_pc < 100:
                        lf = lf.filter(unit_below(pl.col("where"), options.seed + 1, options.split_pc / 100))
                else:
                    raise SourceRefused(f"{src.name} has an unsupported type", "use .parquet, .jsonl, .jsonl.gz or .json")
            except SourceRefused as exc:
                raise DatasetRefused(str(exc), exc.fix, where=src.name) from None
            read_counts["read"] += n
            if lf is not None:
                frames.append(lf.with_columns(pl.lit(splits[src.name]).alias("split_by")))
    finally:
        py_rejected.close()
    rows = _run_query(frames, work, out_dir, options, read_counts["read"])
    files = {name: file_digest(out_dir / name) for name in OUTPUT_FILES}
    rows = {"read": rows["read"], "train": files["train.jsonl"]["rows"], "test": files["test.jsonl"]["rows"],
            "rejected": rows["rejected"], "rejected_by_reason": rows["rejected_by_reason"]}
    _refuse_if_unusable(", ".join(s.name for s in used), rows, options)
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    return {"rows": rows, "files": files, "unused_files": unused, "seconds": round(time.perf_counter() - started, 3)}


def _first_rows_per_source(used: list[Source], splits: dict[str, str], options: PrepareOptions) -> dict[str, int]:
    """For `sample=first`: how many leading rows of each file to read (N % of each split, in file order)."""
    if options.sample != "first" or options.split_pc >= 100:
        return {}
    totals, sizes = Counter(), {}
    for src in used:
        try:
            sizes[src.name] = check_parquet(src)[0] if src.kind == "parquet" else count_json_rows(src, options.max_row_bytes)
        except SourceRefused as exc:
            raise DatasetRefused(str(exc), exc.fix, where=src.name) from None
        group = splits[src.name] if splits[src.name] != "hash" else f"hash:{src.name}"
        totals[group] += sizes[src.name]
    keep, left = {}, {g: math.ceil(t * options.split_pc / 100) for g, t in totals.items()}
    for src in used:
        group = splits[src.name] if splits[src.name] != "hash" else f"hash:{src.name}"
        keep[src.name] = min(sizes[src.name], left[group])
        left[group] -= keep[src.name]
    return keep


def _parquet_frame(src: Source, first: int | None, options: PrepareOptions):
    import polars as pl
    n, schema = check_parquet(src)
    lf = pl.scan_parquet(src.path).select("prompt", "prompt_id", "messages")
    canonical = pl.List(pl.Struct({"content": pl.String, "role": pl.String}))
    if schema["messages"] != canonical:  # other field order or extra fields
        lf = lf.with_columns(pl.col("messages").list.eval(pl.struct(content=pl.element().struct.field("content"),
                                                                    role=pl.element().struct.field("role"))))
    lf = lf.with_row_index("row").with_columns(pl.format("{}#row{}", pl.lit(src.name), pl.col("row")).alias("where"))
    if first is not None:
        lf, n = lf.head(first), first
    elif options.sample == "random" and options.split_pc < 100:
        lf = lf.filter(unit_below(pl.col("where"), options.seed + 1, options.split_pc / 100))
    return lf.drop("row"), n


def _run_query(frames, work: Path, out_dir: Path, options: PrepareOptions, read: int) -> dict:
    """One streaming query: reasons, duplicates, split; three sinks written together."""
    import polars as pl
    vec_rejected = work / "rejected-vectorized.jsonl"
    if frames:
        lf = pl.concat(frames, how="vertical")
        lf = lf.with_columns(reason_expr(options.max_row_bytes).alias("reason"))
        good = pl.col("reason").is_null()
        # Duplicates among good rows only: rejected rows get a key no prompt_id can have.
        key = pl.when(good).then(pl.col("prompt_id")).otherwise(pl.concat_str([pl.lit("\0"), pl.col("where")]))
        lf = lf.with_columns(pl.when(good & ~key.is_first_distinct())
                             .then(pl.lit("duplicate-prompt-id")).otherwise(pl.col("reason")).alias("reason"))
        to_test = unit_below(pl.col("prompt_id"), options.seed, options.test_fraction)
        lf = lf.with_columns(pl.when(pl.col("split_by") == "hash")
                             .then(pl.when(to_test).then(pl.lit("test")).otherwise(pl.lit("train")))
                             .otherwise(pl.col("split_by")).alias("split"))
        cols = ["prompt", "prompt_id", "messages"]
        ok = pl.col("reason").is_null()
        pl.collect_all([
            lf.filter(ok & (pl.col("split") == "train")).select(cols).sink_ndjson(out_dir / "train.jsonl", lazy=True),
            lf.filter(ok & (pl.col("split") == "test")).select(cols).sink_ndjson(out_dir / "test.jsonl", lazy=True),
            lf.filter(~ok).select("where", "reason").sink_ndjson(vec_rejected, lazy=True),
        ])
    else:
        for name in ("train.jsonl", "test.jsonl"):
            (out_dir / name).write_bytes(b"")
        vec_rejected.write_bytes(b"")
    reasons: Counter[str] = Counter()
    with open(out_dir / "rejected.jsonl", "wb") as out:
        for part in (work / "rejected-rows.jsonl", vec_rejected):
            with open(part, "rb") as f:
                for line in f:
                    reasons[json.loads(line)["reason"]] += 1
                    out.write(line)
    return {"read": read, "rejected": sum(reasons.values()), "rejected_by_reason": dict(sorted(reasons.items()))}


def file_digest(path: Path) -> dict:
    """Bytes, sha256 and line count of an output file, in one read."""
    h, size, lines = hashlib.sha256(), 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
    return {"bytes": size, "sha256": h.hexdigest(), "rows": lines}


def _refuse_if_unusable(where: str, rows: dict, options: PrepareOptions) -> None:
    top = ", ".join(f"{k}: {v}" for k, v in Counter(rows["rejected_by_reason"]).most_common(3))
    if rows["read"] == 0:
        raise DatasetRefused("the dataset holds no rows", "drop a file with at least one conversation",
                             where=where, rows=rows)
    share = rows["rejected"] / rows["read"]
    if share > options.max_rejected_share:
        raise DatasetRefused(
            f"{rows['rejected']} of {rows['read']} rows rejected ({share:.0%}, limit "
            f"{options.max_rejected_share:.0%}; {top})",
            "fix the rows listed in rejected.jsonl (each has its location and reason) and drop the file "
            "again, or raise TUNEFLOW_MAX_REJECTED_SHARE", where=where, rows=rows)
    if rows["train"] == 0 or rows["test"] == 0:
        raise DatasetRefused(
            f"{rows['train'] + rows['test']} valid rows give {rows['train']} train and {rows['test']} "
            f"test rows", "drop more rows, or change TUNEFLOW_TEST_FRACTION so both splits have rows",
            where=where, rows=rows)
