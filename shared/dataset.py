"""Dataset preparation: ultrachat-shaped files in, clean train/test JSONL out, in bounded memory.

Works on local files (the function spools blobs to temp files first), so the same code runs in
the Function, in `tuneflow prepare` and in the tests. Two streaming polars passes: the first reads
only prompt_id (to find duplicates across the whole dataset); the second reads every row group
once, validates and splits the rows with one vectorized expression and writes each output file
through its own sink (see `shared.outputs`). JSON inputs are first streamed row by row into
normalized JSON Lines (see `shared.sources`). Every rejected row is kept in `rejected.jsonl` with
its location and reason.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from shared import naming
from shared.contracts import DATASETS_CONTAINER
from shared.outputs import PreparedOutputs
from shared.parquet_footer import FooterError, row_groups
from shared.rows import polars_schema, reason_expr
from shared.sources import Source, SourceRefused, check_parquet, count_json_rows, kind_of, normalize_json, split_of
from shared.ttl import format_utc, utcnow

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


COLUMNS = ("prompt", "prompt_id", "messages")
# Duplicates are found by a 64-bit hash of prompt_id (a fraction of the memory of the strings); a
# collision only sends two rows through the exact duplicate check at the end, so the seed is arbitrary.
DUPLICATE_HASH_SEED = 2024


# polars' streaming engine, set for a small instance (2 cores): the parquet reader prefetches one
# row group and the engine runs one async thread, so reading cannot run far ahead of the JSON
# writers. Peak memory at 200,000 rows drops from about 560 to 170 MB at the same speed
# (bench/prepare_throughput.py). polars reads them when its first streaming query runs.
POLARS_SETTINGS = {"POLARS_ROW_GROUP_PREFETCH_SIZE": "1", "POLARS_ASYNC_THREAD_COUNT": "1"}


def _id_hash():
    """The 64-bit hash of prompt_id that both passes compare."""
    import polars as pl
    return pl.col("prompt_id").hash(DUPLICATE_HASH_SEED)


def _parquet_where(prefix: str):
    """A parquet row's location, `<name>#row<pos>`: the random sample's key and the rejected rows' `where`."""
    import polars as pl
    return pl.concat_str(pl.lit(prefix), pl.col("pos").cast(pl.String))


def _tune_polars() -> None:
    """Apply POLARS_SETTINGS before the first query; a value the operator set wins."""
    for name, value in POLARS_SETTINGS.items():
        os.environ.setdefault(name, value)


@dataclass
class _Input:
    """One source file as preparation reads it."""
    index: int
    src: Source
    split_by: str  # train, test, or hash (split by prompt_id)
    read: int  # rows taken from the file (after `first` sampling)
    # LazyFrame of the taken rows (None: no rows): prompt, prompt_id, messages, where (JSON: the
    # line or element; parquet: null, built from pos only for the rows that need it), src, pos
    rows: object | None
    where_prefix: str | None = None  # parquet: "<name>#row", followed by pos


def prepare(sources: list[Source], out_dir: Path, options: PrepareOptions) -> dict:
    """Validate, sample and split `sources` into `out_dir`; return the manifest's data part.

    Two streaming passes, so memory does not grow with the input: the first reads only prompt_id
    to find duplicates; the second reads, validates, splits and writes every row in one polars
    query with a sink per output file (see `shared.outputs`).
    Raises DatasetRefused when a file is unusable, nothing usable is left, or too many rows are rejected.
    """
    started = time.perf_counter()
    _tune_polars()
    splits, unused = _plan_splits(sources)
    used = sorted((s for s in sources if s.name in splits), key=lambda s: s.name)
    if not used:
        raise DatasetRefused("no file of the dataset holds train or test rows",
                             "drop .jsonl/.json/.parquet files; train_gen/test_gen files are not used")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / ".work"
    work.mkdir(exist_ok=True)
    with PreparedOutputs(out_dir, work / "duplicates.jsonl") as outputs:
        keep = _first_rows_per_source(used, splits, options)
        inputs = []
        for i, src in enumerate(used):
            try:
                if src.kind == "parquet":
                    inputs.append(_parquet_input(i, src, splits[src.name], keep.get(src.name), options))
                elif src.kind in ("jsonl", "jsonl.gz", "json"):
                    inputs.append(_json_input(i, src, splits[src.name], keep.get(src.name), options, work, outputs))
                else:
                    raise SourceRefused(f"{src.name} has an unsupported type", "use .parquet, .jsonl, .jsonl.gz or .json")
            except SourceRefused as exc:
                raise DatasetRefused(str(exc), exc.fix, where=src.name) from None
        live = [inp for inp in inputs if inp.rows is not None]
        if live:
            outputs.sink(_classified(live, _duplicated_ids(live), options), _where(live))
        files = outputs.finish()
    rows = {"read": sum(inp.read for inp in inputs), "train": files["train.jsonl"]["rows"],
            "test": files["test.jsonl"]["rows"], "rejected": sum(outputs.reasons.values()),
            "rejected_by_reason": dict(sorted(outputs.reasons.items()))}
    _refuse_if_unusable(", ".join(s.name for s in used), rows, options)
    shutil.rmtree(work)
    return {"rows": rows, "files": files, "unused_files": unused, "seconds": round(time.perf_counter() - started, 3)}


def version_of(sources: list[Source], options: PrepareOptions) -> str:
    return naming.dataset_version([(kind_of(s.name) or "", split_of(s.name), s.sha256) for s in sources],
                                  options.identity())


def prepare_to_dir(dataset: str, sources: list[Source], options: PrepareOptions, out_dir: Path,
                   started: float | None = None) -> dict:
    """Prepare `sources` into `out_dir` (train, test, rejected, then manifest.json); return the manifest.

    The one code path of the function and of `tuneflow prepare`. On refusal, `error.json` is written
    into `out_dir` and DatasetRefused is raised."""
    started = started or time.perf_counter()
    version = version_of(sources, options)
    described = [{"blob": f"{DATASETS_CONTAINER}/{dataset}/{s.name}", "etag": s.etag.strip('"'), "bytes": s.bytes,
                  "sha256": s.sha256, "split": split_of(s.name)} for s in sources]
    try:
        result = prepare(sources, out_dir, options)
    except DatasetRefused as refused:
        refused.report["sources"] = described
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in ("train.jsonl", "test.jsonl"):  # nothing that looks like usable output is left
            (out_dir / name).unlink(missing_ok=True)
        (out_dir / "error.json").write_text(json.dumps({**refused.report, "created_at": format_utc(utcnow())}, indent=2))
        raise
    prepare_s = result.pop("seconds")
    manifest = {"dataset": dataset, "version": version, "flow_id": naming.flow_id(dataset, version, {}),
                "sources": described, "options": options.identity(), **result, "created_at": format_utc(utcnow()),
                "timings": {"prepare_s": prepare_s, "total_s": round(time.perf_counter() - started, 3)}}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


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


def _random_sample(lf, where, options: PrepareOptions):
    """`sample=random`: a seeded selection by each row's location (`where`), the same in both passes."""
    if options.sample == "random" and options.split_pc < 100:
        return lf.filter(unit_below(where, options.seed + 1, options.split_pc / 100))
    return lf


# What one preparation adds to its process at its peak, fitted to bench/prepare_concurrency.py on 2 cores:
# polars' working set plus about 1.6x the largest parquet row group (decoded whole), or 1.5x the JSON read.
PEAK_BASE_MB = 60
PEAK_PER_ROW_GROUP_MB = 1.6
PEAK_PER_JSON_MB = 1.5


def peak_memory_mb(sources: list[Source]) -> int:
    """A preparation's expected peak memory over its process's baseline, from its inputs (parquet: the
    footers' largest row group; JSON: the bytes), for the process-wide preparation budget."""
    largest_group, json_bytes = 0, 0
    for src in sources:
        if src.kind == "parquet":
            try:
                largest_group = max([largest_group] + [g.bytes for g in row_groups(src.path)])
            except FooterError:
                continue  # refused once prepared: it costs nothing
        else:
            json_bytes += src.bytes
    return int(PEAK_BASE_MB + PEAK_PER_ROW_GROUP_MB * largest_group / 1e6 + PEAK_PER_JSON_MB * json_bytes / 1e6)


def _check_row_groups(src: Source) -> None:
    """polars decodes a whole row group at once, so memory follows the largest one: refuse, with the
    fix, a file that would not fit rather than let the instance run out of memory on every retry."""
    from shared import settings
    try:
        groups = row_groups(src.path)
    except FooterError as exc:
        raise SourceRefused(f"{src.name} has an unreadable parquet footer ({exc})",
                            "re-export the file (or upload it again: it may be truncated)") from None
    limit_mb = settings.get_int("TUNEFLOW_MAX_ROW_GROUP_MB", 1)
    biggest = max(groups, key=lambda g: g.bytes, default=None)
    if biggest and biggest.bytes > limit_mb * 1_000_000:
        raise SourceRefused(
            f"{src.name} has a row group of {biggest.rows:,} rows ({biggest.bytes / 1e6:,.0f} MB uncompressed, "
            f"limit {limit_mb} MB), and a row group is decoded whole",
            "re-export it with smaller row groups (pyarrow or pandas: row_group_size=10_000), or raise "
            "TUNEFLOW_MAX_ROW_GROUP_MB on an instance with more memory (peak is about 4x the largest row group)")


def _parquet_input(index: int, src: Source, split_by: str, first: int | None, options: PrepareOptions) -> _Input:
    import polars as pl
    n, schema = check_parquet(src)
    _check_row_groups(src)
    take = n if first is None else first
    lf = pl.scan_parquet(src.path).select(COLUMNS).head(take)
    if schema["messages"] != polars_schema()["messages"]:  # other field order or extra fields
        lf = lf.with_columns(pl.col("messages").list.eval(pl.struct(content=pl.element().struct.field("content"),
                                                                    role=pl.element().struct.field("role"))))
    lf = lf.with_row_index("pos").with_columns(pl.col("pos").cast(pl.Int64))
    prefix = f"{src.name}#row"
    lf = _random_sample(lf, _parquet_where(prefix), options)
    lf = lf.select(*COLUMNS, pl.lit(None, dtype=pl.String).alias("where"), pl.lit(index, dtype=pl.UInt32).alias("src"),
                   "pos")
    return _Input(index, src, split_by, take, lf if take else None, prefix)


def _json_schema():
    import polars as pl
    return {**polars_schema(), "where": pl.String}


def _json_input(index: int, src: Source, split_by: str, first: int | None, options: PrepareOptions,
                work: Path, outputs: PreparedOutputs) -> _Input:
    """JSON rows are checked one by one while normalizing (see shared.sources), then read back by the query."""
    import polars as pl
    norm = work / f"normalized-{index}.jsonl"
    with open(norm, "wb") as out:
        counts = normalize_json(src, out, outputs.rejected, options.max_row_bytes, first)
    outputs.reasons.update(counts["rejected_by_reason"])
    lf = None
    if counts["kept"]:
        lf = _random_sample(pl.scan_ndjson(norm, schema=_json_schema()), pl.col("where"), options)
        lf = lf.with_row_index("pos").select(*COLUMNS, "where", pl.lit(index, dtype=pl.UInt32).alias("src"),
                                             pl.col("pos").cast(pl.Int64))
    return _Input(index, src, split_by, counts["read"], lf)


def _where(inputs: list[_Input]):
    """A row's source location: JSON rows carry theirs; a parquet row's is its file and row number.
    (A when-chain, not `replace_strict`: that one is not streamed and would make polars hold the input.)"""
    import polars as pl
    located = None
    for inp in (i for i in inputs if i.where_prefix):
        located = (pl.when(pl.col("src") == inp.index) if located is None
                   else located.when(pl.col("src") == inp.index)).then(_parquet_where(inp.where_prefix))
    return pl.col("where") if located is None else pl.coalesce(pl.col("where"), located)


def _duplicated_ids(inputs: list[_Input]):
    """Hashes of the prompt_ids taken more than once across the whole dataset (first pass: this column only)."""
    import polars as pl
    hashes = pl.concat([inp.rows.select(_id_hash().alias("h")) for inp in inputs])
    return hashes.group_by("h").agg(pl.len()).filter(pl.col("len") > 1).collect(engine="streaming")["h"]


def _classified(inputs: list[_Input], duplicated, options: PrepareOptions):
    """All taken rows, in input order, with their reason (null when good), split, and part: train,
    test, rejected, or duplicate (a good row whose prompt_id may occur more than once: resolved at the end)."""
    import polars as pl
    to_test = unit_below(pl.col("prompt_id"), options.seed, options.test_fraction)
    by_hash = pl.when(to_test).then(pl.lit("test")).otherwise(pl.lit("train"))
    rows = pl.concat([inp.rows.with_columns((by_hash if inp.split_by == "hash" else pl.lit(inp.split_by)).alias("split"))
                      for inp in inputs])
    is_duplicated = _id_hash().is_in(duplicated.implode()) if len(duplicated) else pl.lit(False)
    part = (pl.when(pl.col("reason").is_not_null()).then(pl.lit("rejected"))
            .when(is_duplicated).then(pl.lit("duplicate")).otherwise(pl.col("split")))
    return (rows.with_columns(reason_expr(options.max_row_bytes).alias("reason"))
            .with_columns(part.alias("part")))


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
