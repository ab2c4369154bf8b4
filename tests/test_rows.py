"""The row rules (shared/rows.py) as tables: every reason, its precedence, the size limit at its boundary,
what a kept row keeps; and the vectorized half giving the same reason as the per-row half for every row.

The vectorized expression is built here and evaluated in a fresh interpreter: polars' thread pool does
not survive a fork, and `make mutation` (mutmut) forks one child per mutant from a process that ran
these tests, so a polars query run in this process would leave every later child hanging.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shared import rows
from shared.rows import check_row, clean_row

USER, ASSISTANT = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}
GOOD = {"prompt": "p", "prompt_id": "id1", "messages": [USER, ASSISTANT]}

# One fault each, in the order of precedence; the vectorized half must give the same reasons.
BAD_ROWS = [
    ({**GOOD, "prompt": None}, "missing-prompt"),
    ({**GOOD, "prompt_id": None}, "missing-prompt_id"),
    ({**GOOD, "prompt_id": ""}, "bad-prompt-or-id"),
    ({**GOOD, "messages": []}, "messages-not-a-non-empty-list"),
    ({**GOOD, "messages": [{"role": "user", "content": None}]}, "message-without-role-or-content"),
    ({**GOOD, "messages": [{"role": None, "content": "x"}, ASSISTANT]}, "message-without-role-or-content"),
    ({**GOOD, "messages": [{"role": "bot", "content": "x"}]}, "unknown-role"),
    ({**GOOD, "messages": [USER, {"role": "assistant", "content": "  "}]}, "empty-content"),
    ({**GOOD, "messages": [{"role": "user", "content": ""}, ASSISTANT]}, "empty-content"),
    ({**GOOD, "messages": [USER]}, "does-not-end-with-assistant"),
    ({**GOOD, "messages": [ASSISTANT, USER]}, "does-not-end-with-assistant"),
]


@pytest.mark.parametrize("row, reason", [
    (GOOD, None), ({**GOOD, "extra": 1}, None),
    ({**GOOD, "messages": [{"role": "system", "content": "s"}, USER, ASSISTANT]}, None),
    ({**GOOD, "messages": [ASSISTANT]}, None),
    ({**GOOD, "prompt": ""}, None),  # an empty prompt is a string: the messages carry the conversation
    ([1, 2], "not-an-object"), ("row", "not-an-object"), (None, "not-an-object"),
    ({k: v for k, v in GOOD.items() if k != "prompt"}, "missing-prompt"),
    ({k: v for k, v in GOOD.items() if k != "prompt_id"}, "missing-prompt_id"),
    ({k: v for k, v in GOOD.items() if k != "messages"}, "missing-messages"),
    ({**GOOD, "messages": None}, "missing-messages"),
    ({**GOOD, "prompt": 3}, "bad-prompt-or-id"), ({**GOOD, "prompt_id": 7}, "bad-prompt-or-id"),
    ({**GOOD, "messages": "user: hi"}, "messages-not-a-non-empty-list"),
    ({**GOOD, "messages": {"role": "user"}}, "messages-not-a-non-empty-list"),
    ({**GOOD, "messages": ["hi", ASSISTANT]}, "message-without-role-or-content"),
    ({**GOOD, "messages": [{"content": "hi"}, ASSISTANT]}, "message-without-role-or-content"),
    ({**GOOD, "messages": [{"role": "user"}, ASSISTANT]}, "message-without-role-or-content"),
    ({**GOOD, "messages": [USER, {"role": "assistant", "content": 3}]}, "empty-content"),
    *BAD_ROWS,
])
def test_check_row(row, reason):
    assert check_row(row, 10_000, 100) == reason


@pytest.mark.parametrize("row, reason", [
    # two faults: the one earlier in the precedence order is the reason
    ({"prompt_id": "x", "messages": []}, "missing-prompt"),
    ({"prompt": "p", "messages": []}, "missing-prompt_id"),
    ({**GOOD, "prompt_id": "", "messages": []}, "bad-prompt-or-id"),
    ({**GOOD, "messages": [{"role": "bot"}, ASSISTANT]}, "message-without-role-or-content"),
    ({**GOOD, "messages": [{"role": "bot", "content": " "}]}, "unknown-role"),
    ({**GOOD, "messages": [{"role": "user", "content": " "}]}, "empty-content"),
])
def test_the_first_reason_in_precedence_order_wins(row, reason):
    assert check_row(row, 10_000, 100) == reason


@pytest.mark.parametrize("size, limit, reason", [
    (100, 100, None), (101, 100, "row-too-large"), (0, 0, None),
])
def test_the_size_limit_is_inclusive(size, limit, reason):
    assert check_row(GOOD, limit, size) == reason
    assert check_row({**GOOD, "prompt": None}, limit, size) == (reason or "missing-prompt")  # size comes first
    assert check_row([1], limit, size) == "not-an-object"  # before size: a non-object has no row size


def test_a_kept_row_keeps_only_what_the_fine_tune_reads():
    row = {**GOOD, "extra": 1, "messages": [{"role": "system", "content": "s", "name": "n"}, USER, ASSISTANT]}
    assert clean_row(row) == {"prompt": "p", "prompt_id": "id1", "messages": [
        {"content": "s", "role": "system"}, {"content": "hi", "role": "user"}, {"content": "hello", "role": "assistant"}]}
    assert list(clean_row(row)) == ["prompt", "prompt_id", "messages"]
    assert [list(m) for m in clean_row(row)["messages"]] == [["content", "role"]] * 3  # as the hub has them


def text_bytes(value) -> int:
    return len(value.encode()) if isinstance(value, str) else 0  # a null counts 0 bytes


def json_size(row: dict) -> int:
    """A row's size as the vectorized rule counts it (text bytes plus the JSON punctuation allowance)."""
    return (text_bytes(row["prompt"]) + text_bytes(row["prompt_id"]) + rows.ROW_OVERHEAD_BYTES
            + sum(text_bytes(m["content"]) + text_bytes(m["role"]) + rows.MESSAGE_OVERHEAD_BYTES
                  for m in row["messages"] or ()))


_EVALUATE = """
import io, json, sys
import polars as pl
from shared.rows import polars_schema
expr, table = sys.stdin.buffer.read().split(b"\\n", 1)
frame = pl.DataFrame(json.loads(table), schema=polars_schema(), orient="row")
reasons = frame.lazy().select(pl.Expr.deserialize(io.BytesIO(bytes.fromhex(expr.decode())), format="binary")).collect()
print(json.dumps([reasons.to_series().to_list(), str(reasons.to_series().dtype)]))
"""


def vectorized(table: list[dict], max_row_bytes: int) -> tuple[list[str | None], str]:
    """rows.reason_expr, built in this process, applied to `table` in a fresh interpreter (see the module doc):
    the reasons and the column's type."""
    expr = rows.reason_expr(max_row_bytes).meta.serialize(format="binary").hex()
    data = json.dumps([[r.get("prompt"), r.get("prompt_id"), r.get("messages")] for r in table])
    done = subprocess.run([sys.executable, "-c", _EVALUATE], input=f"{expr}\n{data}".encode(), capture_output=True,
                          timeout=120, check=True)
    reasons, dtype = json.loads(done.stdout)
    return reasons, dtype


def vectorized_reasons(table: list[dict], max_row_bytes: int) -> list[str | None]:
    return vectorized(table, max_row_bytes)[0]


def test_the_output_columns_are_what_the_fine_tune_component_reads():
    import polars as pl  # dtypes only: no query runs in this process
    assert rows.polars_schema() == {"prompt": pl.String, "prompt_id": pl.String,
                                    "messages": pl.List(pl.Struct({"content": pl.String, "role": pl.String}))}


def test_the_vectorized_rules_give_the_same_reason_as_the_row_rules_for_every_row():
    table = [GOOD, {**GOOD, "prompt": ""}, {**GOOD, "messages": [ASSISTANT]},
             {**GOOD, "messages": [{"role": "system", "content": "s"}, USER, ASSISTANT]}]
    table += [row for row, _ in BAD_ROWS] + [{**GOOD, "messages": None}]
    assert vectorized_reasons(table, 10_000) == [check_row(r, 10_000, 0) for r in table]  # sizes: the next tests


def test_a_table_of_good_rows_has_a_string_reason_column_all_null():
    assert vectorized([GOOD, GOOD], 10_000) == ([None, None], "String")


@pytest.mark.parametrize("row, reason", [
    ({**GOOD, "prompt": None}, "missing-prompt"),
    ({**GOOD, "prompt_id": None}, "missing-prompt_id"),
    ({**GOOD, "messages": None}, "missing-messages"),
    ({**GOOD, "messages": [{"role": "user", "content": None}, ASSISTANT]}, "message-without-role-or-content"),
    ({**GOOD, "messages": [{"role": None, "content": "hi"}, ASSISTANT]}, "message-without-role-or-content"),
])
def test_a_null_field_counts_no_bytes_toward_the_size_limit(row, reason):
    """At a limit of exactly the row's size (its nulls counting nothing) the row is not too large: its reason
    is the missing field."""
    assert vectorized_reasons([row], json_size(row)) == [reason]


@pytest.mark.parametrize("extra, reason", [(0, None), (1, "row-too-large")])
def test_the_vectorized_size_limit_is_inclusive(extra, reason):
    big = {**GOOD, "messages": [USER, {"role": "assistant", "content": "é" * 40}]}  # bytes, not characters
    assert vectorized_reasons([big], json_size(big) - extra) == [reason]
    assert check_row(big, json_size(big) - extra, json_size(big)) == reason
