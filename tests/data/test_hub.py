"""copl_ray/data/hub.py: where a builder's rows come from under a local ``data.path`` (a
file, a folder with ``<config>.*`` at its top, a ``<config>/`` tree, a config-less folder),
required vs optional configs, and the row/column check — on fixture files, no network."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from copl_ray.data.hub import RowSource, dataset_rows, rows_with_columns, sources_label
from copl_ray.data.validate import DataError


def parquet(path: Path, rows: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_single_file_is_the_main_config_only(tmp_path):
    f = jsonl(tmp_path / "c.jsonl", [{"id": 1}])
    [src] = dataset_rows(str(f), "org/set", "comparisons")
    assert (src.label, src.rows) == (str(f), [{"id": 1}])
    assert dataset_rows(str(f), "org/set", "survey", main=False, required=False) == []


def test_folder_top_level_files_then_config_tree_sorted(tmp_path):
    """PRISM's ``C.jsonl`` at the top and the parquet export's ``C/<split>/0000.parquet``."""
    top = jsonl(tmp_path / "conversations.jsonl", [{"id": 0}])
    train = parquet(tmp_path / "conversations" / "train" / "0000.parquet", {"id": [2]})
    valid = jsonl(tmp_path / "conversations" / "validation" / "0000.jsonl", [{"id": 3}])
    (tmp_path / "conversations" / "notes.txt").write_text("not data")
    jsonl(tmp_path / "survey.jsonl", [{"id": 9}])  # another config: not read
    srcs = dataset_rows(str(tmp_path), "org/set", "conversations")
    assert [s.label for s in srcs] == [str(top), str(train), str(valid)]
    assert [r["id"] for s in srcs for r in s.rows] == [0, 2, 3]


def test_config_less_folder_reads_every_data_file(tmp_path):
    """PersonalLLM: ``data/train-00000-of-00001.parquet`` and ``data/test-...``."""
    parquet(tmp_path / "data" / "train-0.parquet", {"x": [1, 2]})
    parquet(tmp_path / "data" / "test-0.parquet", {"x": [3]})
    srcs = dataset_rows(str(tmp_path), "org/personal", None)
    assert [Path(s.label).name for s in srcs] == ["test-0.parquet", "train-0.parquet"]
    assert sum(len(s.rows) for s in srcs) == 3


def test_missing_config_required_or_optional(tmp_path):
    jsonl(tmp_path / "other.jsonl", [{"id": 1}])
    with pytest.raises(DataError) as e:
        dataset_rows(str(tmp_path), "org/set", "survey")
    assert str(e.value) == (
        f"data.path: '{tmp_path}' has no survey.parquet/.jsonl or a survey/ folder of data "
        "files (the org/set dataset's schema)"
    )
    assert dataset_rows(str(tmp_path), "org/set", "survey", required=False) == []
    with pytest.raises(DataError, match=r"^data.path: .* does not exist"):
        dataset_rows(str(tmp_path / "absent"), "org/set", "survey")


def test_rows_with_columns_names_file_and_row():
    srcs = [RowSource("a.jsonl", [{"p": 1, "q": 2}]), RowSource("b.jsonl", [{"p": 3, "q": 4}, {}])]
    got = rows_with_columns(srcs, ("p", "q"))
    assert next(got) == ("a.jsonl", 0, {"p": 1, "q": 2})
    assert next(got) == ("b.jsonl", 0, {"p": 3, "q": 4})
    with pytest.raises(DataError) as e:
        next(got)
    assert str(e.value) == "file 'b.jsonl', row 1: missing column(s) ['p', 'q']"


def test_sources_label_cuts_long_lists():
    srcs = [RowSource(f"f{i}", []) for i in range(5)]
    assert sources_label(srcs[:2]) == "f0, f1"
    assert sources_label(srcs) == "f0, f1, f2 and 2 more"
