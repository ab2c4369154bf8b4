"""What makes a chat row usable, written twice on purpose: once per row (for JSON inputs, read
line by line) and once as a vectorized polars expression (for parquet, and for the dataset-wide
checks). Both give the same reason names, in the same order of precedence:

  not-an-object, row-too-large, missing-prompt, missing-prompt_id, missing-messages,
  bad-prompt-or-id, messages-not-a-non-empty-list, message-without-role-or-content,
  unknown-role, empty-content, does-not-end-with-assistant, duplicate-prompt-id
"""

from __future__ import annotations

ROLES = ("system", "user", "assistant")
REQUIRED = ("prompt", "prompt_id", "messages")
# JSON punctuation around each message and the row's own keys: with the text fields it gives the
# size of a row as JSON, for inputs (parquet) that are not JSON text.
MESSAGE_OVERHEAD_BYTES = 32
ROW_OVERHEAD_BYTES = 48


def check_row(row: object, max_row_bytes: int, size: int) -> str | None:
    """The reason a parsed row is unusable, or None when it is good (duplicates are checked later)."""
    if not isinstance(row, dict):
        return "not-an-object"
    if size > max_row_bytes:
        return "row-too-large"
    for key in REQUIRED:
        if key not in row or row[key] is None:
            return f"missing-{key}"
    if not isinstance(row["prompt"], str) or not isinstance(row["prompt_id"], str) or not row["prompt_id"]:
        return "bad-prompt-or-id"
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages-not-a-non-empty-list"
    for m in messages:
        if not isinstance(m, dict) or m.get("role") is None or m.get("content") is None:
            return "message-without-role-or-content"
    if any(m["role"] not in ROLES for m in messages):
        return "unknown-role"
    if any(not isinstance(m["content"], str) or not m["content"].strip() for m in messages):
        return "empty-content"
    if messages[-1]["role"] != "assistant":
        return "does-not-end-with-assistant"
    return None


def clean_row(row: dict) -> dict:
    """Only the fields the fine-tune component reads, messages as the hub has them ({content, role})."""
    return {"prompt": row["prompt"], "prompt_id": row["prompt_id"],
            "messages": [{"content": m["content"], "role": m["role"]} for m in row["messages"]]}


def polars_schema() -> dict:
    """The three output columns as polars types (messages as the hub has them: {content, role})."""
    import polars as pl
    return {"prompt": pl.String, "prompt_id": pl.String,
            "messages": pl.List(pl.Struct({"content": pl.String, "role": pl.String}))}


def reason_expr(max_row_bytes: int):
    """A polars expression giving each row's rejection reason (null when good), duplicates included.

    Expects the columns prompt, prompt_id (strings) and messages (list of {content, role})."""
    import polars as pl
    m = pl.col("messages")
    role = pl.element().struct.field("role")
    content = pl.element().struct.field("content")
    text_bytes = (pl.col("prompt").str.len_bytes().fill_null(0) + pl.col("prompt_id").str.len_bytes().fill_null(0)
                  + m.list.eval(content.str.len_bytes().fill_null(0) + role.str.len_bytes().fill_null(0)
                                + MESSAGE_OVERHEAD_BYTES).list.sum().fill_null(0) + ROW_OVERHEAD_BYTES)
    all_true = lambda cond: m.list.eval(cond.fill_null(False)).list.all()  # noqa: E731
    return (
        pl.when(text_bytes > max_row_bytes).then(pl.lit("row-too-large"))
        .when(pl.col("prompt").is_null()).then(pl.lit("missing-prompt"))
        .when(pl.col("prompt_id").is_null()).then(pl.lit("missing-prompt_id"))
        .when(m.is_null()).then(pl.lit("missing-messages"))
        .when(pl.col("prompt_id") == "").then(pl.lit("bad-prompt-or-id"))
        .when(m.list.len() == 0).then(pl.lit("messages-not-a-non-empty-list"))
        .when(~all_true(role.is_not_null() & content.is_not_null())).then(pl.lit("message-without-role-or-content"))
        .when(~all_true(role.is_in(list(ROLES)))).then(pl.lit("unknown-role"))
        .when(~all_true(content.str.strip_chars().str.len_bytes() > 0)).then(pl.lit("empty-content"))
        .when(m.list.last().struct.field("role") != "assistant").then(pl.lit("does-not-end-with-assistant"))
    )  # no `otherwise`: a good row's reason is null, and the column is a string one (tests/test_rows.py)
