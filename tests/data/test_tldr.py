"""TL;DR comparisons builder: on parquet files in the hub's exact schema (no hub here)."""

from __future__ import annotations

import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from copl_ray.config import load_config
from copl_ray.data import DataError, build_tables

# openai/summarize_from_feedback, config "comparisons": the features of its loading script
INFO = pa.struct(
    [(k, pa.string()) for k in ("id", "post", "title", "subreddit", "site", "article")]
)
SUMMARY = pa.struct([("text", pa.string()), ("policy", pa.string()), ("note", pa.string())])
SCHEMA = pa.schema(
    [
        ("info", INFO),
        ("summaries", pa.list_(SUMMARY)),
        ("choice", pa.int32()),
        ("worker", pa.string()),
        ("batch", pa.string()),
        ("split", pa.string()),
        ("extra", pa.struct([("confidence", pa.int32())])),
    ]
)
WORKERS = [f"W{i}" for i in range(6)]
N_POSTS, N_SUMMARIES = 4, 4
PAIRS_PER_WORKER = N_POSTS * len(list(combinations(range(N_SUMMARIES), 2)))  # 24


def _info(p: int, post: str | None = "x") -> dict:
    return {
        "id": f"t3_{p}",
        "post": None if post is None else f"post {p}: my roommate keeps eating my food {post}",
        "title": f"title {p}",
        "subreddit": "relationships",
        "site": None,
        "article": None if post is not None else f"article {p}",
    }


def _row(info: dict, a: str, b: str, choice: int, worker: str | None, split="train") -> dict:
    return {
        "info": info,
        "summaries": [
            {"text": a, "policy": "sup2", "note": None},
            {"text": b, "policy": "ref", "note": None},
        ],
        "choice": choice,
        "worker": worker,
        "batch": "batch3",
        "split": split,
        "extra": {"confidence": 7},
    }


def tldr_rows() -> tuple[list[dict], list[dict]]:
    """(train rows, validation rows): 6 workers x 24 comparisons + one of each drop."""
    train = []
    for wi, w in enumerate(WORKERS):
        for p in range(N_POSTS):
            for i, j in combinations(range(N_SUMMARIES), 2):
                choice = (i + j + wi) % 2
                train.append(_row(_info(p), f"summary {p}.{i}", f"summary {p}.{j}", choice, w))
    train.append(_row(_info(0), "summary 0.0", "summary 0.1", 1, "rare"))  # below the minimum
    train.append(_row(_info(0), "summary 0.0", "summary 0.1", 0, "rare"))  # duplicate
    valid = [
        _row(_info(9, post=None), "a", "b", 0, "W0", "valid2"),  # CNN/DM: not a TL;DR post
        _row(_info(1), "summary 1.0", "summary 1.1", 2, "W0", "valid1"),  # invalid choice
        _row(_info(1), "same", "same", 0, "W1", "valid1"),  # identical summaries
        _row(_info(1), "summary 1.0", "summary 1.2", 0, None, "valid1"),  # no worker id
    ]
    return train, valid


def write_tldr(folder: Path, train=None, valid=None) -> Path:
    """The hub's parquet-export layout: comparisons/{train,validation}/0000.parquet."""
    t, v = tldr_rows()
    for split, rows in (("train", train or t), ("validation", valid or v)):
        d = folder / "comparisons" / split
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), d / "0000.parquet")
    return folder


def _cfg(path: Path, *ov: str):
    return load_config(
        "tldr", [f"data.path={path}", "data.min_user_labels=5", "data.n_unseen_users=2", *ov]
    )


def test_tldr_builds_workers_as_users(tmp_path: Path) -> None:
    t = build_tables(_cfg(write_tldr(tmp_path / "tldr")))
    s = t.summary
    assert s.source == "tldr"
    assert (s.n_users_seen, s.n_users_unseen) == (4, 2)
    assert set(t.users["user_id"]) == set(WORKERS)
    assert t.users["group"].isna().all() and t.groups == []  # real workers: no groups
    assert len(t.annotations) == len(WORKERS) * PAIRS_PER_WORKER
    assert len(t.pairs) == PAIRS_PER_WORKER and len(t.responses) == N_POSTS * N_SUMMARIES
    # 20% of 24 = 5 test labels a worker; one val label a seen worker
    assert s.n_annotations == {"survey": 4 * 18 + 2 * 19, "val": 4, "test": 6 * 5}
    assert s.drops == {
        "not_tldr_post": 1,
        "invalid_choice": 1,
        "identical_responses": 1,
        "missing_user_id": 1,
        "duplicate_annotation": 1,
        "user_below_min_labels": 1,
        "annotation_of_dropped_user": 1,
    }
    # the prompt is the paper's query and chosen follows `choice`
    r = t.responses.set_index("response_id")
    first = t.annotations[t.annotations["user_id"] == "W0"].iloc[0]
    assert r.loc[first["chosen"], "prompt"].startswith("SUBREDDIT: r/relationships\nTITLE:")
    assert r.loc[first["chosen"], "prompt"].endswith("\n\nTL;DR:")


def test_tldr_chosen_follows_choice(tmp_path: Path) -> None:
    """Worker ``w`` prefers summary ``j`` over ``i`` when ``i + j + w`` is odd (the fixture)."""
    t = build_tables(_cfg(write_tldr(tmp_path / "tldr")))
    text = t.responses.set_index("response_id")["text"]
    for row in t.annotations.itertuples():
        wi = int(row.user_id[1:])
        ch, rj = text[row.chosen], text[row.rejected]
        (p, i), (_, j) = (tuple(int(x) for x in s.split()[1].split(".")) for s in sorted([ch, rj]))
        winner = f"summary {p}.{j if (i + j + wi) % 2 else i}"
        assert ch == winner


def test_tldr_bad_summaries_names_row_and_column(tmp_path: Path) -> None:
    train, valid = tldr_rows()
    train[3]["summaries"] = train[3]["summaries"][:1]
    write_tldr(tmp_path / "tldr", train, valid)
    with pytest.raises(DataError, match=r"row 3, column 'summaries': expected a list of 2"):
        build_tables(_cfg(tmp_path / "tldr"))


def test_tldr_folder_without_comparisons_names_data_path(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"data.path: .* has no comparisons.parquet"):
        build_tables(_cfg(tmp_path / "empty"))


def test_tldr_hub_offline_is_one_line(tmp_path: Path) -> None:
    """data.path null reads the set by name; offline and uncached: one line, exit 2."""
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        COPL_ALLOW_HUB="",
    )
    p = subprocess.run(
        [sys.executable, "-m", "copl_ray.data", "build", "--config", "tldr"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data.path: not set, and dataset")
    assert "openai/summarize_from_feedback" in lines[0] and "COPL_ALLOW_HUB=1" in lines[0]
