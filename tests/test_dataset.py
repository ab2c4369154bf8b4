"""Dataset preparation on local files: formats, row checks, splits, sampling, refusals."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from local import sampledata
from shared.dataset import DatasetRefused, PrepareOptions, prepare
from shared.rows import check_row
from shared.sources import Source
from tests.test_rows import BAD_ROWS, GOOD

OPTS = PrepareOptions(test_fraction=0.2)


def run(tmp_path: Path, files: dict[str, bytes | Path], options: PrepareOptions = OPTS, out: str = "out") -> dict:
    sources = []
    for name, content in files.items():
        path = tmp_path / "in" / name.replace("/", "__")
        path.parent.mkdir(exist_ok=True)
        if isinstance(content, Path):
            shutil.copy(content, path)
        else:
            path.write_bytes(content)
        sources.append(Source(name, path))
    return prepare(sources, tmp_path / out, options)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def jsonl(rows) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


# -- the row rules on a parquet file (every rule in both halves: tests/test_rows.py) -----------

def test_vectorized_rules_give_the_same_reasons_as_the_row_rules(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = list(sampledata.rows(60))
    bad = [{**row, "prompt_id": f"bad-{i}"} if row["prompt_id"] == "id1" else row for i, (row, _) in enumerate(BAD_ROWS)]
    schema = pa.schema([("prompt", pa.string()), ("prompt_id", pa.string()),
                        ("messages", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())])))])
    pq.write_table(pa.Table.from_pylist(rows + bad, schema=schema), tmp_path / "d.parquet")
    m = run(tmp_path, {"d.parquet": tmp_path / "d.parquet"}, PrepareOptions(test_fraction=0.2, max_rejected_share=0.5))
    got = {r["where"]: r["reason"] for r in lines(tmp_path / "out" / "rejected.jsonl")}
    assert [got.get(f"d.parquet#row{60 + i}") for i in range(len(BAD_ROWS))] == [reason for _, reason in BAD_ROWS]
    assert m["rows"]["train"] + m["rows"]["test"] == 60


# -- formats ----------------------------------------------------------------------------------

def test_every_format_gives_the_same_output(tmp_path):
    sampledata.write(tmp_path / "d.jsonl", 150, seed=3)
    sampledata.write(tmp_path / "d.json", 150, seed=3)
    sampledata.write(tmp_path / "d.parquet", 150, seed=3)
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress((tmp_path / "d.jsonl").read_bytes()))
    digests = {}
    for name in ("d.jsonl", "d.json", "d.parquet", "d.jsonl.gz"):
        m = run(tmp_path, {name: tmp_path / name}, out=f"out-{name}")
        digests[name] = (m["files"]["train.jsonl"]["sha256"], m["files"]["test.jsonl"]["sha256"])
        assert m["rows"]["read"] == 150 and m["rows"]["rejected"] == 0
    assert len(set(digests.values())) == 1, digests
    row = lines(tmp_path / "out-d.parquet" / "train.jsonl")[0]
    assert set(row) == {"prompt", "prompt_id", "messages"} and set(row["messages"][0]) == {"content", "role"}


def test_split_is_deterministic_and_extra_columns_are_dropped(tmp_path):
    rows = [{**r, "score": 1.0, "source": "x"} for r in sampledata.rows(300, seed=4)]
    a = run(tmp_path, {"d.jsonl": jsonl(rows)}, out="a")
    b = run(tmp_path, {"renamed.jsonl": jsonl(rows)}, out="b")
    assert a["files"] == b["files"]
    assert 30 <= a["rows"]["test"] <= 90
    assert all(set(r) == {"prompt", "prompt_id", "messages"} for r in lines(tmp_path / "a" / "train.jsonl"))
    c = run(tmp_path, {"d.jsonl": jsonl(rows)}, PrepareOptions(test_fraction=0.2, seed=1), out="c")
    assert c["files"]["test.jsonl"] != a["files"]["test.jsonl"]


def test_split_names_are_honoured_as_the_seed_uses_them(tmp_path):
    rows = list(sampledata.rows(150, seed=1))
    train = sampledata.write_rows(tmp_path / "tr.parquet", rows[:100])
    test = sampledata.write_rows(tmp_path / "te.jsonl", rows[100:120])
    gen = sampledata.write_rows(tmp_path / "gen.jsonl", rows[120:])
    m = run(tmp_path, {"data/train_sft-00000-of-00001.parquet": train, "data/test_sft-00000-of-00001.jsonl": test,
                       "data/train_gen-00000-of-00001.jsonl": gen})
    assert (m["rows"]["train"], m["rows"]["test"]) == (100, 20)
    assert m["unused_files"] == ["data/train_gen-00000-of-00001.jsonl"]
    only_train = run(tmp_path, {"train_sft.parquet": train}, out="o2")
    assert only_train["rows"]["test"] > 0  # no test file: carved from train by prompt_id hash
    with pytest.raises(DatasetRefused, match="no training rows"):
        run(tmp_path, {"test_sft.jsonl": test}, out="o3")


def test_split_pc_first_and_random(tmp_path):
    rows = list(sampledata.rows(600, seed=5))
    data = sampledata.write_rows(tmp_path / "d.parquet", rows[:400])
    test = sampledata.write_rows(tmp_path / "t.parquet", rows[400:])
    first = run(tmp_path, {"train_sft.parquet": data, "test_sft.parquet": test}, PrepareOptions(split_pc=10), out="first")
    assert (first["rows"]["read"], first["rows"]["train"], first["rows"]["test"]) == (60, 40, 20)
    assert [r["prompt_id"] for r in lines(tmp_path / "first" / "train.jsonl")] == [r["prompt_id"] for r in rows[:40]]
    r1 = run(tmp_path, {"d.parquet": data}, PrepareOptions(split_pc=25, sample="random", seed=9), out="r1")
    r2 = run(tmp_path, {"d.parquet": data}, PrepareOptions(split_pc=25, sample="random", seed=9), out="r2")
    r3 = run(tmp_path, {"d.parquet": data}, PrepareOptions(split_pc=25, sample="random", seed=10), out="r3")
    kept = r1["rows"]["train"] + r1["rows"]["test"]
    assert 60 <= kept <= 140 and r1["files"] == r2["files"] and r1["files"] != r3["files"]


def test_duplicates_and_bad_rows_are_listed_with_location_and_reason(tmp_path):
    rows = [json.dumps(r) for r in sampledata.rows(100)] + [json.dumps(next(sampledata.rows(1)))]
    rows[10] = "{not json"
    data = ("\n".join(rows)).encode().replace(b'"prompt": "Summ', b'"prompt": "\xffSumm', 1)
    m = run(tmp_path, {"d.jsonl": data})
    rejected = lines(tmp_path / "out" / "rejected.jsonl")
    assert {"where": "d.jsonl:11", "reason": "invalid-json"} in rejected
    assert m["rows"]["rejected_by_reason"]["duplicate-prompt-id"] == 1
    assert sum(m["rows"]["rejected_by_reason"].values()) == m["rows"]["rejected"] <= 3


def test_bom_crlf_and_blank_lines_are_tolerated(tmp_path):
    data = ("\ufeff" + "\r\n".join(json.dumps(r) for r in sampledata.rows(40)) + "\r\n\r\n").encode()
    m = run(tmp_path, {"d.jsonl": data})
    assert m["rows"]["read"] == 40 and m["rows"]["rejected"] == 0


def test_one_enormous_line_is_rejected_without_stopping_the_rest(tmp_path):
    rows = [json.dumps(r) for r in sampledata.rows(100)]
    rows[5] = json.dumps({**GOOD, "prompt": "x" * 3_000_000})
    m = run(tmp_path, {"d.jsonl": "\n".join(rows).encode()}, PrepareOptions(test_fraction=0.2, max_row_bytes=100_000))
    assert m["rows"]["rejected_by_reason"] == {"row-too-large": 1} and m["rows"]["read"] == 100
    assert {"where": "d.jsonl:6", "reason": "row-too-large"} in lines(tmp_path / "out" / "rejected.jsonl")


# -- whole-dataset refusals -------------------------------------------------------------------

def _parquet(tmp_path, table_rows, schema) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(table_rows, schema=pa.schema(schema)), tmp_path / "x.parquet")
    return (tmp_path / "x.parquet").read_bytes()


def test_unusable_parquet_files_are_refused(tmp_path):
    import pyarrow as pa
    good = sampledata.write(tmp_path / "g.parquet", 50).read_bytes()
    cases = {
        "truncated": (good[: len(good) // 2], "not a readable parquet"),
        "corrupt": (b"PAR1" + b"\x00" * 200 + b"PAR1", "not a readable parquet"),
        "no messages": (_parquet(tmp_path, [{"prompt": "p", "prompt_id": "i"}],
                                 [("prompt", pa.string()), ("prompt_id", pa.string())]), "no column 'messages'"),
        "messages as string": (_parquet(tmp_path, [{"prompt": "p", "prompt_id": "i", "messages": "hi"}],
                                        [("prompt", pa.string()), ("prompt_id", pa.string()), ("messages", pa.string())]),
                               "'messages' is String"),
    }
    for label, (content, words) in cases.items():
        with pytest.raises(DatasetRefused) as exc:
            run(tmp_path, {"d.parquet": content}, out=f"o-{label.replace(' ', '-')}")
        assert words in str(exc.value), label
        assert exc.value.report["fix"] and exc.value.report["where"] == "d.parquet"


def test_a_row_group_too_big_to_decode_is_refused_with_the_fix(tmp_path, monkeypatch):
    import pyarrow.parquet as pq
    table = pq.read_table(sampledata.write(tmp_path / "d.parquet", 2000, seed=2))  # about 4 MB uncompressed
    one_group, small_groups = tmp_path / "one.parquet", tmp_path / "small.parquet"
    pq.write_table(table, one_group)  # pyarrow's default: all 2,000 rows in one group
    pq.write_table(table, small_groups, row_group_size=200)
    assert run(tmp_path, {"one.parquet": one_group})["rows"]["read"] == 2000  # the default limit holds it
    monkeypatch.setenv("TUNEFLOW_MAX_ROW_GROUP_MB", "1")
    assert run(tmp_path, {"small.parquet": small_groups}, out="small")["rows"]["read"] == 2000
    with pytest.raises(DatasetRefused) as exc:
        run(tmp_path, {"one.parquet": one_group}, out="refused")
    assert "row group of 2,000 rows" in str(exc.value) and "limit 1 MB" in str(exc.value)
    assert "row_group_size" in exc.value.report["fix"] and exc.value.report["where"] == "one.parquet"


@pytest.mark.parametrize("name, content, words", [
    ("empty.jsonl", b"", "no rows"),
    ("blank.jsonl", b"\n\n  \n", "no rows"),
    ("bad.jsonl", b"a\nb\nc\n", "3 of 3 rows rejected"),
    ("utf8.jsonl", b'{"prompt": "\xff\xfe"}\n' * 3, "3 of 3 rows rejected (100%, limit 5%; invalid-utf8: 3)"),
    ("array.jsonl", json.dumps([GOOD, GOOD]).encode(), "looks like a JSON array"),
    ("lines.json", jsonl([GOOD, GOOD]), "it looks like JSON Lines"),
    ("object.json", b'{"prompt": 1}', "not a JSON array"),
    ("broken.json", b"[" + json.dumps(GOOD).encode() + b", {", "not valid JSON at element 1"),
    ("deep.json", b"[" * 100000, "nests deeper than 64 levels"),
    ("deep.jsonl", jsonl([GOOD]) + b"\n" + b"[" * 100000 + b"\n" + b"{" * 50000, "2 of 3 rows rejected"),
    ("bad.jsonl.gz", b"\x1f\x8b\x08\x00garbage", "cannot be decompressed"),
    ("one.jsonl", json.dumps(GOOD).encode(), "1 train and 0 test"),
])
def test_unusable_json_files_are_refused_with_a_fix(tmp_path, name, content, words):
    with pytest.raises(DatasetRefused) as exc:
        run(tmp_path, {name: content}, PrepareOptions(test_fraction=0.1))
    assert words in str(exc.value)
    assert exc.value.report["fix"]
    assert (tmp_path / "in" / name).read_bytes() == content  # the original is untouched


@pytest.mark.parametrize("overrides, words", [
    ({"split_pc": 0}, "split_pc"), ({"split_pc": 101}, "split_pc"), ({"sample": "last"}, "sample"),
    ({"test_fraction": 1}, "test_fraction"), ({"colour": "red"}, "unknown option"), ({"seed": "x"}, "bad option value"),
])
def test_bad_options_are_refused(overrides, words):
    with pytest.raises(ValueError, match=words):
        PrepareOptions().with_overrides(overrides)


# -- against the obvious row-by-row way -----------------------------------------------------

def reference(files: list[tuple[str, list]]) -> tuple[list[str], dict[str, str]]:
    """Row by row, the obvious way: good prompt_ids (first occurrence wins) and rejected location -> reason."""
    seen, good, rejected = set(), [], {}
    for name, rows in files:
        for i, row in enumerate(rows):
            where = f"{name}#row{i}" if name.endswith(".parquet") else f"{name}:{i + 1}"
            reason = check_row(row, 10_000, 100)
            if reason is None and row["prompt_id"] in seen:
                reason = "duplicate-prompt-id"
            if reason:
                rejected[where] = reason
            else:
                seen.add(row["prompt_id"])
                good.append(row["prompt_id"])
    return good, rejected


def _mixed_dataset(tmp_path):
    """Row groups of 5 and of 40, and a JSON file: duplicates across row groups and files (one whose first
    copy is invalid), rejected rows in several row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = list(sampledata.rows(90, seed=11))
    a = rows[:40]
    a[3] = {**a[3], "messages": [{"role": "user", "content": "no answer"}]}
    a[17] = {**rows[2], "prompt": "again"}  # duplicate of row 2, a later row group
    a[30] = {**a[29]}  # duplicate in the next row
    a[33] = {**a[33], "messages": []}
    b = rows[40:80] + [rows[5], {**rows[3]}]  # rows[3] is invalid in a (a[3] was replaced): first good copy is here
    c = rows[80:] + [rows[45], {**rows[81], "prompt_id": ""}]
    schema = pa.schema([("prompt", pa.string()), ("prompt_id", pa.string()),
                        ("messages", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())])))])
    pq.write_table(pa.Table.from_pylist(a, schema=schema), tmp_path / "a.parquet", row_group_size=5)
    pq.write_table(pa.Table.from_pylist(b, schema=schema), tmp_path / "b.parquet", row_group_size=40)
    (tmp_path / "c.jsonl").write_bytes(jsonl(c))
    files = {name: tmp_path / name for name in ("a.parquet", "b.parquet", "c.jsonl")}
    return files, [("a.parquet", a), ("b.parquet", b), ("c.jsonl", c)]


def test_preparation_matches_the_row_by_row_reference(tmp_path):
    files, contents = _mixed_dataset(tmp_path)
    opts = PrepareOptions(test_fraction=0.3, max_rejected_share=0.2)
    m = run(tmp_path, files, opts)
    good, rejected = reference(contents)
    got = [r["prompt_id"] for split in ("train", "test") for r in lines(tmp_path / "out" / f"{split}.jsonl")]
    assert sorted(got) == sorted(good)
    assert {r["where"]: r["reason"] for r in lines(tmp_path / "out" / "rejected.jsonl")} == rejected
    assert m["rows"]["rejected_by_reason"]["duplicate-prompt-id"] == 4
    for name in ("train.jsonl", "test.jsonl", "rejected.jsonl"):
        assert m["files"][name]["rows"] == len(lines(tmp_path / "out" / name))
    again = run(tmp_path, files, opts, out="again")  # the same bytes every time: order is kept
    assert again["files"] == m["files"] and again["rows"] == m["rows"]


def test_a_prompt_id_hash_collision_only_costs_the_exact_check(tmp_path, monkeypatch):
    """Duplicates are found by a 64-bit hash; if every row collided, the result would still be exact."""
    import polars as pl
    from shared import dataset
    files, contents = _mixed_dataset(tmp_path)
    opts = PrepareOptions(test_fraction=0.3, max_rejected_share=0.2)
    m = run(tmp_path, files, opts)
    every_hash = lambda inputs: pl.concat([i.rows.select(dataset._id_hash().alias("h")) for i in inputs]).collect()["h"]  # noqa: E731
    monkeypatch.setattr(dataset, "_duplicated_ids", every_hash)
    collided = run(tmp_path, files, opts, out="collided")
    assert collided["rows"] == m["rows"]
    for name in ("train.jsonl", "test.jsonl", "rejected.jsonl"):
        assert sorted(map(json.dumps, lines(tmp_path / "collided" / name))) == sorted(map(json.dumps, lines(tmp_path / "out" / name)))
