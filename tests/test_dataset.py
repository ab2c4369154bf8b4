"""Dataset preparation on local files: row checks, splits, refusals."""

import json

import pytest

from local import sampledata
from shared.dataset import DatasetRefused, PrepareOptions, check_row, is_test_row, prepare

GOOD = {"prompt": "p", "prompt_id": "id1", "messages": [{"role": "user", "content": "hi"},
                                                         {"role": "assistant", "content": "hello"}]}
OPTS = PrepareOptions(test_fraction=0.2, max_rejected_share=0.05)


@pytest.mark.parametrize("row, reason", [
    (GOOD, None),
    ({**GOOD, "extra": 1}, None),
    ({**GOOD, "messages": [{"role": "system", "content": "s"}, *GOOD["messages"]]}, None),
    ([1, 2], "not-an-object"),
    ({k: v for k, v in GOOD.items() if k != "prompt"}, "missing-prompt"),
    ({k: v for k, v in GOOD.items() if k != "prompt_id"}, "missing-prompt_id"),
    ({k: v for k, v in GOOD.items() if k != "messages"}, "missing-messages"),
    ({**GOOD, "prompt_id": ""}, "bad-prompt-or-id"),
    ({**GOOD, "messages": []}, "messages-not-a-non-empty-list"),
    ({**GOOD, "messages": "user: hi"}, "messages-not-a-non-empty-list"),
    ({**GOOD, "messages": [{"role": "user"}]}, "message-without-role-or-content"),
    ({**GOOD, "messages": [{"role": "bot", "content": "x"}]}, "unknown-role"),
    ({**GOOD, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}, "empty-content"),
    ({**GOOD, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 3}]}, "empty-content"),
    ({**GOOD, "messages": [{"role": "user", "content": "hi"}]}, "does-not-end-with-assistant"),
])
def test_check_row(row, reason):
    assert check_row(row, 10_000, 100) == reason


def test_check_row_size_limit():
    assert check_row(GOOD, 100, 101) == "row-too-large"


def test_prepare_splits_deterministically_and_keeps_only_component_fields(tmp_path):
    src = sampledata.write(tmp_path / "d.jsonl", 300, seed=3)
    m1 = prepare(src, "d.jsonl", tmp_path / "a", OPTS)
    m2 = prepare(src, "d.jsonl", tmp_path / "b", OPTS)
    assert m1["files"] == m2["files"]
    assert m1["rows"]["train"] + m1["rows"]["test"] == 300 and m1["rows"]["rejected"] == 0
    assert 30 <= m1["rows"]["test"] <= 90
    row = json.loads((tmp_path / "a" / "train.jsonl").read_text().splitlines()[0])
    assert set(row) == {"prompt", "prompt_id", "messages"}
    for line in (tmp_path / "a" / "test.jsonl").read_text().splitlines():
        assert is_test_row(json.loads(line)["prompt_id"], OPTS.seed, OPTS.test_fraction)


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_other_formats_give_the_same_split(tmp_path, suffix):
    jsonl = prepare(sampledata.write(tmp_path / "d.jsonl", 120), "d.jsonl", tmp_path / "a", OPTS)
    other = prepare(sampledata.write(tmp_path / f"d{suffix}", 120), f"d{suffix}", tmp_path / "b", OPTS)
    assert other["files"]["train.jsonl"] == jsonl["files"]["train.jsonl"]


def test_bom_crlf_and_blank_lines_are_tolerated(tmp_path):
    rows = list(sampledata.rows(40))
    data = "\ufeff" + "\r\n".join(json.dumps(r) for r in rows) + "\r\n\r\n"
    (tmp_path / "d.jsonl").write_bytes(data.encode())
    m = prepare(tmp_path / "d.jsonl", "d.jsonl", tmp_path / "o", OPTS)
    assert m["rows"]["read"] == 40 and m["rows"]["rejected"] == 0


def test_bad_rows_are_listed_with_location_and_reason(tmp_path):
    rows = [json.dumps(r) for r in sampledata.rows(100)]
    rows[10] = "{not json"
    rows[20] = json.dumps(GOOD) + "\xff"
    lines = "\n".join(rows).encode().replace("\xc3\xbf".encode("latin-1"), b"\xff")
    (tmp_path / "d.jsonl").write_bytes(lines)
    m = prepare(tmp_path / "d.jsonl", "d.jsonl", tmp_path / "o", PrepareOptions(test_fraction=0.2, max_rejected_share=0.05))
    rejected = [json.loads(l) for l in (tmp_path / "o" / "rejected.jsonl").read_text().splitlines()]
    assert {"where": "d.jsonl:11", "reason": "invalid-json"} in rejected
    assert m["rows"]["rejected"] == 2


def test_duplicate_prompt_ids_are_dropped(tmp_path):
    rows = list(sampledata.rows(50))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows + rows[:2]))
    m = prepare(tmp_path / "d.jsonl", "d.jsonl", tmp_path / "o", OPTS)
    assert m["rows"]["rejected_by_reason"] == {"duplicate-prompt-id": 2}


@pytest.mark.parametrize("name, content, words", [
    ("empty.jsonl", b"", "no rows"),
    ("bad.jsonl", b"a\nb\nc\n", "3 of 3 rows rejected"),
    ("arr.json", b'{"prompt": 1}', "not an array"),
    ("arr.json", b"[1, 2", "not valid JSON"),
    ("deep.json", b"[" * 100000, "not valid JSON"),
    ("x.parquet", b"PAR1 truncated", "not a readable parquet"),
    ("one.jsonl", json.dumps(GOOD).encode(), "1 train and 0 test"),
])
def test_unusable_datasets_are_refused_with_a_fix(tmp_path, name, content, words):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DatasetRefused) as exc:
        prepare(tmp_path / name, name, tmp_path / "o", PrepareOptions(test_fraction=0.1))
    assert words in str(exc.value)
    assert exc.value.report["fix"]
    assert (tmp_path / name).read_bytes() == content  # the original is untouched
