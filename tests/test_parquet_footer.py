"""Row-group sizes from the parquet footer, checked against pyarrow's own reading of the same files."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import polars as pl
import pytest

from shared.parquet_footer import FooterError, row_groups


def pyarrow_sizes(path) -> list[tuple[int, int]]:
    meta = pq.read_metadata(path)
    return [(meta.row_group(i).num_rows, meta.row_group(i).total_byte_size) for i in range(meta.num_row_groups)]


TABLE = pa.table({"prompt": [f"p{i}" for i in range(2500)], "prompt_id": [f"{i:064x}" for i in range(2500)],
                  "flag": [i % 3 == 0 for i in range(2500)], "score": [i / 7 for i in range(2500)],
                  "tags": [{"k": str(i)} for i in range(2500)]})


@pytest.mark.parametrize("write", [
    lambda p: pq.write_table(TABLE, p, row_group_size=1000),  # as `datasets` writes the hub's files
    lambda p: pq.write_table(TABLE, p, row_group_size=1),  # 2,500 groups: long lists in the footer
    lambda p: pq.write_table(TABLE, p, row_group_size=777, write_statistics=False, use_dictionary=False),
    lambda p: pq.write_table(TABLE, p, compression="zstd", data_page_size=1024),
    lambda p: pq.write_table(TABLE.slice(0, 0), p),  # no rows
    lambda p: pl.from_arrow(TABLE).write_parquet(p),  # one big group
    lambda p: pl.from_arrow(TABLE).write_parquet(p, row_group_size=600, statistics="full"),
], ids=["datasets-like", "one-row-groups", "no-stats", "zstd-small-pages", "empty", "polars", "polars-stats"])
def test_sizes_match_pyarrow(tmp_path, write):
    path = tmp_path / "d.parquet"
    write(path)
    assert row_groups(path) == pyarrow_sizes(path)


HUGE_LIST = b"\x29\xf3\xff\xff\xff\xff\x0f"  # field 2, list of 2**32-1 bytes, then nothing


@pytest.mark.parametrize("damage, words", [
    (lambda b: b[:-1], "no parquet footer"),
    (lambda b: b[: len(b) // 2], "no parquet footer"),
    (lambda b: b"PAR1", "too short"),
    (lambda b: b[:-8] + (10**9).to_bytes(4, "little") + b"PAR1", "larger than the file"),
    (lambda b: b[:-8 - 64] + b"\xff" * 64 + (64).to_bytes(4, "little") + b"PAR1", "unknown thrift type|varint too long|ends early"),
    # a list that claims 4 billion elements: refused at the footer's end, not looped over
    (lambda b: b"PAR1" + HUGE_LIST + len(HUGE_LIST).to_bytes(4, "little") + b"PAR1", "ends early"),
])
def test_damaged_footers_raise_footer_error(tmp_path, damage, words):
    path = tmp_path / "d.parquet"
    pq.write_table(TABLE, path, row_group_size=1000)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(FooterError, match=words):
        row_groups(path)
