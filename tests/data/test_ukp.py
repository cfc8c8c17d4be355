"""UKPConvArg1 loader: on a mini folder in the exact schema, and on the real data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from copl_ray.config import load_config
from copl_ray.data import DataError, build_tables


def make_ukp_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    topics = [
        {
            "topic_key": "t1_yes",
            "title": "Is tea better?",
            "description": "Tea or coffee.",
            "url": "http://x",
        }
    ]
    args = [
        {
            "arg_id": f"a{i}",
            "topic_key": "t1_yes",
            "stance": "Yes",
            "text": f"argument {i}",
            "author": "x",
            "vote_up": 0,
            "vote_down": 0,
        }
        for i in range(6)
    ]
    judg = []
    workers = [f"W{i}" for i in range(6)]
    for wi, w in enumerate(workers):
        for i in range(6):
            for j in range(i + 1, 6):
                label = "a1" if (i + j + wi) % 3 else "a2"
                if (i, j) == (0, 5):
                    label = "equal"  # a tie: dropped, counted
                judg.append(
                    {
                        "pair_id": f"a{i}_a{j}",
                        "topic_key": "t1_yes",
                        "arg_a": f"a{i}",
                        "arg_b": f"a{j}",
                        "worker_id": w,
                        "label": label,
                        "reason": "r",
                        "turk_competence": 0.5,
                        "worker_stance": None,
                        "submit_time": "2016-01-31 16:59:52.0 UTC",
                    }
                )
    judg += [dict(judg[0], worker_id="rare")]  # below the label minimum
    judg += [dict(judg[1], arg_b="missing")]  # unknown argument
    (folder / "topics.jsonl").write_text("".join(json.dumps(t) + "\n" for t in topics))
    (folder / "arguments.jsonl").write_text("".join(json.dumps(a) + "\n" for a in args))
    with gzip.open(folder / "judgments.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(j) + "\n" for j in judg))


def _cfg(path: Path, *ov: str):
    return load_config(
        "ukp", [f"data.path={path}", "data.ukp_min_labels=5", "data.n_unseen_users=2", *ov]
    )


def test_ukp_mini(tmp_path: Path) -> None:
    make_ukp_folder(tmp_path / "ukp")
    t = build_tables(_cfg(tmp_path / "ukp"))
    d = t.summary.drops
    assert d["tie"] == 6 and d["user_below_min_labels"] == 1
    assert d["unknown_argument_or_topic"] == 1
    assert t.users["group"].isna().all() and not t.groups
    assert (~t.users.seen).sum() == 2 and t.users.seen.sum() == 4
    assert t.responses["prompt"].iloc[0] == "Is tea better?\nTea or coffee.\nStance: Yes"
    assert len(t.annotations) == 6 * 14
    assert not t.annotations.duplicated(["user_id", "pair_id"]).any()
    # each worker: round(0.2 * 14) = 3 test pairs
    assert (t.annotations[t.annotations.split == "test"].groupby("user_id").size() == 3).all()
    t.write(tmp_path / "out")
    back = type(t).read(tmp_path / "out")
    assert back.users["group"].isna().all() and len(back.annotations) == len(t.annotations)
    # with 6 workers per pair, controversy is known for every pair
    assert t.pairs["controversial"].notna().all() and t.pairs["controversial"].any()


def test_ukp_missing_folder_names_field(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.path"):
        build_tables(_cfg(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"data\.path.*topics\.jsonl"):
        build_tables(_cfg(tmp_path / "empty"))


def test_ukp_real(ukp_path: Path) -> None:
    cfg = load_config("ukp", [f"data.path={ukp_path}"])
    t = build_tables(cfg)
    s = t.summary
    # README: 84,445 judgments of which 19,105 are ties; 444 workers have >= 20 non-tie
    assert s.drops["tie"] == 84_445 - 65_340
    raw = pd.read_json(ukp_path / "judgments.jsonl.gz", lines=True)
    non_tie = raw[raw["label"] != "equal"].groupby("worker_id").size()
    kept = set(non_tie.index[non_tie >= cfg.data.ukp_min_labels])
    assert len(kept) == 444 and set(t.users["user_id"]) == kept
    assert s.n_users_seen + s.n_users_unseen == 444
    assert s.n_users_unseen == cfg.data.n_unseen_users
    assert s.labels_per_user["min"] >= cfg.data.ukp_min_labels - cfg.data.test_pairs_seen
    # the share is the pairs table's: controversial among pairs with >= 2 annotators
    known = t.pairs["controversial"].dropna().astype(bool)
    assert s.controversial_share == round(float(known.mean()), 4)
