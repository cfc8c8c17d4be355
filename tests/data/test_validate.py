"""copl_ray/data/validate.py: every error is one line naming file / row / column (or the
config field); the masks and the duplicate rule on hand-made frames; each file format."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from copl_ray.data.validate import (
    DataError,
    check_columns,
    check_string_column,
    check_utf8,
    duplicated_unordered,
    null_or_empty_mask,
    read_records,
    resolve_path,
    too_long_mask,
    where,
)


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_where_names_the_parts_given():
    assert where("f.jsonl", 3, "chosen") == "file 'f.jsonl', row 3, column 'chosen'"
    assert where(row=0) == "row 0"
    assert where() == ""


def test_resolve_path_names_the_field(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        resolve_path(None, "data.path")
    assert one_line(e) == "data.path: not set (required for this data source)"
    with pytest.raises(DataError) as e:
        resolve_path("nope.jsonl", "data.own")
    assert (
        one_line(e) == f"data.own: 'nope.jsonl' does not exist (resolved to {tmp_path}/nope.jsonl)"
    )
    assert resolve_path("later.jsonl", must_exist=False) == tmp_path / "later.jsonl"


def test_check_columns_missing_and_unexpected():
    df = pd.DataFrame(columns=["prompt", "chosen", "rejectd"])
    with pytest.raises(DataError) as e:
        check_columns(df, "x.csv", ["prompt", "chosen", "rejected"])
    assert one_line(e).startswith("file 'x.csv': missing column(s) ['rejected']")
    with pytest.raises(DataError) as e:
        check_columns(df, "x.csv", ["prompt", "chosen"], optional=["rejected"])
    assert one_line(e).startswith("file 'x.csv': unexpected column(s) ['rejectd']")
    check_columns(df, "x.csv", ["prompt"], optional=["chosen", "rejectd"])


def test_check_string_column_names_the_first_bad_row():
    df = pd.DataFrame({"text": ["a", None, 7, float("nan"), [1]]})
    with pytest.raises(DataError) as e:
        check_string_column(df, "d.jsonl", "text")
    assert one_line(e) == (
        "file 'd.jsonl', row 2, column 'text': expected text, got int 7 (2 such row(s))"
    )


def test_masks_and_unordered_duplicates():
    df = pd.DataFrame({"a": ["xx", "xxxx", None, " "], "b": ["x", "x", "xxxxx", "y"]})
    assert too_long_mask(df, ["a", "b"], 3).tolist() == [False, True, True, False]
    assert null_or_empty_mask(df["a"]).tolist() == [False, False, True, True]
    pairs = pd.DataFrame(
        {"user_id": ["u", "u", "v", "u"], "chosen": [1, 2, 2, 1], "rejected": [2, 1, 1, 3]}
    )
    # row 1 repeats row 0 with the sides swapped; row 2 is another user
    assert duplicated_unordered(pairs, "chosen", "rejected", ("user_id",)).tolist() == [
        False,
        True,
        False,
        False,
    ]
    assert duplicated_unordered(pairs, "chosen", "rejected").tolist() == [False, True, True, False]


def test_check_utf8_names_line_and_byte(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')  # 9 + 7 bytes before the bad one
    with pytest.raises(DataError) as e:
        check_utf8(p)
    assert one_line(e).startswith(f"file '{p}', line 2: not valid UTF-8 (byte 16: b'\\xff')")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_records_each_format(tmp_path):
    rows = [{"prompt": "p", "n": 1}, {"prompt": "q", "n": 2}]
    jsonl = write(tmp_path / "r.jsonl", "\ufeff" + "\n".join(map(json.dumps, rows)) + "\n\n")
    assert read_records(jsonl) == rows  # a byte-order mark and blank lines are fine
    assert read_records(write(tmp_path / "r.json", json.dumps(rows))) == rows
    pd.DataFrame(rows).to_parquet(tmp_path / "r.parquet")
    assert read_records(tmp_path / "r.parquet") == rows
    csv = write(tmp_path / "r.csv", "prompt,n\np,1\n,2\n")
    assert read_records(csv) == [{"prompt": "p", "n": "1"}, {"prompt": None, "n": "2"}]


def test_read_records_errors_name_the_place(tmp_path):
    cases = [
        (tmp_path / "none.jsonl", "does not exist"),
        (tmp_path, "not a file"),
        (write(tmp_path / "b.jsonl", '{"a": 1}\n{oops\n'), "line 2: invalid JSON"),
        (write(tmp_path / "c.jsonl", '{"a": 1}\n[1, 2]\n'), "row 1: expected a JSON object"),
        (write(tmp_path / "d.json", "[{"), "invalid JSON"),
        (write(tmp_path / "e.txt", "x"), "unsupported format '.txt'"),
        (write(tmp_path / "f.parquet", "not parquet"), "cannot read parquet"),
    ]
    for path, part in cases:
        with pytest.raises(DataError) as e:
            read_records(path)
        msg = one_line(e)
        assert msg.startswith(f"file '{path}'") and part in msg, msg
