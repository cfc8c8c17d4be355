"""Own-data loader: the happy path in three formats, and every bad-input case of §4."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from copl_ray.config import load_config
from copl_ray.data import DataError, build_tables


def own_rows(n_users: int = 24, per_user: int = 10, seed: int = 0) -> list[dict]:
    """Users of two groups; group x prefers the lower response index, y the higher."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        group = "x" if u % 2 else "y"
        seen = set()
        while len(seen) < per_user:
            p = int(rng.integers(0, 15))
            a, b = sorted(rng.choice(5, 2, replace=False).tolist())
            if (p, a, b) in seen:
                continue
            seen.add((p, a, b))
            lo, hi = f"answer {a} for prompt {p}", f"answer {b} for prompt {p}"
            chosen, rejected = (lo, hi) if group == "x" else (hi, lo)
            rows.append(
                {
                    "user_id": f"user{u}",
                    "prompt": f"prompt {p}?",
                    "chosen": chosen,
                    "rejected": rejected,
                    "group": group,
                }
            )
    return rows


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pd.DataFrame(rows).to_csv(path, index=False)
    return path


def cfg_for(path: Path, *ov: str):
    return load_config(
        "tiny", ["data.source=own", f"data.path={path}", "data.n_unseen_users=4", *ov]
    )


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_own_data_roundtrip(tmp_path: Path, suffix: str) -> None:
    rows = own_rows()
    t = build_tables(cfg_for(write(tmp_path / f"own{suffix}", rows)))
    assert t.summary.drops == {}
    assert len(t.annotations) == len(rows)
    assert (t.users["seen"] == False).sum() == 4  # noqa: E712
    # unseen users even over the two known groups
    assert t.users.loc[~t.users.seen, "group"].value_counts().tolist() == [2, 2]
    a = t.annotations.merge(t.pairs, on="pair_id").merge(t.users, on="user_id")
    assert ((a.chosen == a.response_a) | (a.chosen == a.response_b)).all()
    # each user's test pairs: round(0.2 * 10) = 2, never in their survey/val set
    assert (a[a.split == "test"].groupby("user_id").size() == 2).all()
    assert not t.annotations.duplicated(["user_id", "pair_id"]).any()
    # labels survive: the chosen text is the group's preferred one
    text = t.responses.set_index("response_id")["text"]
    idx = a.apply(
        lambda r: int(text[r.chosen].split()[1]) < int(text[r.rejected].split()[1]), axis=1
    )
    assert (idx == (a.group == "x")).all()
    t.write(tmp_path / "out")
    back = type(t).read(tmp_path / "out")
    assert back.pairs["controversial"].isna().sum() == t.pairs["controversial"].isna().sum()
    # known with >= 2 annotators; x and y always prefer opposite orders, so a pair's
    # minority side is its smaller group: controversial when that is >= 0.25 of its labels
    # (data.controversial_min_share's default)
    n_x = (a["group"] == "x").groupby(a["pair_id"]).agg(["sum", "size"])
    minority = np.minimum(n_x["sum"], n_x["size"] - n_x["sum"]) / n_x["size"]
    contr = t.pairs.set_index("pair_id")["controversial"].reindex(n_x.index)
    assert (contr.notna() == (n_x["size"] >= 2)).all()
    known = contr.notna()
    assert (contr[known].astype(bool) == (minority[known] >= 0.25)).all()
    assert known.any() and contr[known].astype(bool).any()


def test_own_split_column_respected(tmp_path: Path) -> None:
    rows = own_rows()
    for r in rows[:9] + rows[10:12]:  # user0: 9 of 10 test (all 10: dropped, see newcomer)
        r["split"] = "test"
    for r in rows[12:14]:
        r["split"] = "survey"
    t = build_tables(cfg_for(write(tmp_path / "own.jsonl", rows)))
    assert t.summary.drops == {}
    text = t.responses.set_index("response_id")["text"]
    ann = t.annotations.assign(
        c=text[t.annotations.chosen].to_numpy(), r=text[t.annotations.rejected].to_numpy()
    )
    got = ann.set_index(["user_id", "c", "r"])["split"]
    for r in rows[:9] + rows[10:14]:
        assert got[(r["user_id"], r["chosen"], r["rejected"])] == r["split"]
    # the one automatic row of user0 is its survey label
    assert got[(rows[9]["user_id"], rows[9]["chosen"], rows[9]["rejected"])] == "survey"


# ------------------------------------------------------------------ §4 bad input
def test_missing_file_names_field(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.path.*nope\.csv"):
        build_tables(cfg_for(tmp_path / "nope.csv"))


def test_missing_column(tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "rejected"} for r in own_rows()]
    with pytest.raises(DataError, match=r"own\.csv.*missing column.*rejected"):
        build_tables(cfg_for(write(tmp_path / "own.csv", rows)))


def test_extra_column(tmp_path: Path) -> None:
    rows = [dict(r, score=1.0) for r in own_rows()]
    with pytest.raises(DataError, match=r"unexpected column.*score"):
        build_tables(cfg_for(write(tmp_path / "own.parquet", rows)))


def test_wrong_column_type(tmp_path: Path) -> None:
    rows = own_rows()
    rows[7]["chosen"] = ["not", "text"]
    with pytest.raises(DataError, match=r"own\.jsonl.*row 7.*column 'chosen'.*expected text"):
        build_tables(cfg_for(write(tmp_path / "own.jsonl", rows)))
    rows = own_rows()
    rows[3]["user_id"] = 1.5
    with pytest.raises(DataError, match=r"row 3.*column 'user_id'"):
        build_tables(cfg_for(write(tmp_path / "own2.jsonl", rows)))


def test_integer_user_ids_are_normalised(tmp_path: Path) -> None:
    rows = own_rows()
    for r in rows:
        r["user_id"] = int(r["user_id"][4:])
    t = build_tables(cfg_for(write(tmp_path / "own.parquet", rows)))
    assert t.annotations["user_id"].map(type).eq(str).all()


def test_non_utf8_bytes(tmp_path: Path) -> None:
    p = write(tmp_path / "own.csv", own_rows())
    data = p.read_bytes().split(b"\n")
    data[4] = data[4] + b"\xff\xfe"
    p.write_bytes(b"\n".join(data))
    with pytest.raises(DataError, match=r"own\.csv.*line 5.*UTF-8"):
        build_tables(cfg_for(p))


def test_bad_split_value(tmp_path: Path) -> None:
    rows = own_rows()
    rows[2]["split"] = "training"
    with pytest.raises(
        DataError, match=r"row 2.*column 'split'.*'training'.*accepted: survey, train"
    ):
        build_tables(cfg_for(write(tmp_path / "own.jsonl", rows)))


def test_user_with_two_groups(tmp_path: Path) -> None:
    rows = own_rows()
    rows[1]["group"] = "z"
    with pytest.raises(DataError, match=r"column 'group'.*user0"):
        build_tables(cfg_for(write(tmp_path / "own.jsonl", rows)))


def test_row_problems_are_counted_drops(tmp_path: Path) -> None:
    rows = own_rows()
    rows[0]["chosen"] = ""  # empty text
    rows[1]["rejected"] = None  # null text
    rows[2]["rejected"] = rows[2]["chosen"]  # chosen == rejected
    rows.append(dict(rows[5]))  # duplicate annotation
    rows.append({**rows[6], "chosen": rows[6]["rejected"], "rejected": rows[6]["chosen"]})
    lonely = {
        "user_id": "lonely",
        "prompt": "p",
        "chosen": "same",
        "rejected": "same",
        "group": "x",
    }  # a user with no usable annotation
    rows.append(lonely)
    rows.append({**rows[8], "user_id": None})  # missing user id
    rows += [dict(r, user_id="few") for r in own_rows(1, 2, seed=5)]  # below own_min_labels=3
    t = build_tables(cfg_for(write(tmp_path / "own.jsonl", rows)))
    d = t.summary.drops
    assert d["empty_text"] == 2 and d["identical_responses"] == 2
    assert d["duplicate_annotation"] == 2 and d["missing_user_id"] == 1
    assert d["user_without_usable_annotation"] == 1
    assert d["user_below_min_labels"] == 1 and d["annotation_of_dropped_user"] == 2
    assert "lonely" not in set(t.users.user_id) and "few" not in set(t.users.user_id)
    assert "drops:" in t.summary.format() and "empty_text=2" in t.summary.format()


def test_cli_prints_data_error_without_traceback(data_cli, tmp_path: Path) -> None:
    rows = [{k: v for k, v in r.items() if k != "prompt"} for r in own_rows()]
    p = write(tmp_path / "own.csv", rows)
    r = data_cli(
        "--set", "data.source=own", "--set", f"data.path={p}", "--out", str(tmp_path / "out")
    )
    assert r.returncode == 2
    assert "missing column" in r.stderr and "prompt" in r.stderr and "Traceback" not in r.stderr
