"""copl_ray/data/tables.py: the model input string, the four tables' write/read round trip
with their schema, ``groups`` from the label columns, the summary, and the renumbering of
responses/pairs kept by the annotations (by hand)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from copl_ray.data.tables import (
    DataSummary,
    PreferenceTables,
    drop_unreferenced_responses,
    format_text,
    keep_annotated,
)


def test_format_text_is_the_ufp_convention():
    assert format_text("Is tea good?", "Yes.") == "Human: Is tea good?\n\nAssistant: Yes."


def tables() -> PreferenceTables:
    responses = pd.DataFrame(
        {
            "response_id": [0, 1, 2],
            "prompt_id": [0, 0, 1],
            "prompt": ["p", "p", "q"],
            "text": ["a", "b", "c"],
        }
    )
    pairs = pd.DataFrame(
        {
            "pair_id": [0],
            "prompt_id": [0],
            "response_a": [0],
            "response_b": [1],
            "controversial": [True],
            "heldout": [False],
            "label_x": np.array([1], np.int8),
            "label_y": np.array([-1], np.int8),
        }
    )
    ann = pd.DataFrame(
        {"user_id": ["u", "v"], "pair_id": [0, 0], "chosen": [0, 1], "rejected": [1, 0]}
    ).assign(split=["survey", "test"])
    users = pd.DataFrame({"user_id": ["u", "v"], "seen": [True, False], "group": ["x", None]})
    summary = DataSummary("unit", n_users_seen=1, n_users_unseen=1, groups=["x", "y"])
    summary.drop("too_long", 2)
    summary.drop("too_long")
    summary.drop("empty", 0)  # a zero count is not a drop
    extra = {"truth": pd.DataFrame({"user_id": ["u"], "w": [0.5]})}
    return PreferenceTables(responses, pairs, ann, users, summary, extra)


def test_write_read_round_trip(tmp_path):
    t = tables()
    t.write(tmp_path)
    back = PreferenceTables.read(tmp_path)
    pd.testing.assert_frame_equal(back.responses, t.responses)
    pd.testing.assert_frame_equal(back.pairs, t.pairs)
    pd.testing.assert_frame_equal(back.annotations, t.annotations)
    group = back.users["group"]
    assert group.iloc[0] == "x" and group.isna().tolist() == [False, True]
    assert back.users["seen"].tolist() == [True, False]
    assert back.summary == t.summary and back.summary.drops == {"too_long": 3}
    assert back.groups == ["x", "y"]
    assert back.responses["response_id"].dtype == np.int64
    assert json.loads((tmp_path / "summary.json").read_text())["source"] == "unit"
    assert pd.read_parquet(tmp_path / "truth.parquet")["w"].tolist() == [0.5]


def test_summary_format_lines():
    text = tables().summary.format().splitlines()
    assert text[0] == "source: unit"
    assert text[1] == "users: 1 seen, 1 unseen; groups: ['x', 'y']"
    assert text[-1] == "drops: too_long=3"


def test_drop_unreferenced_responses_renumbers_in_order():
    responses = pd.DataFrame({"response_id": [0, 1, 2, 3], "text": ["a", "b", "c", "d"]})
    pairs = pd.DataFrame({"response_a": [3], "response_b": [1]})
    r, p, remap = drop_unreferenced_responses(responses, pairs)
    assert r["text"].tolist() == ["b", "d"] and r["response_id"].tolist() == [0, 1]
    assert (p["response_a"].tolist(), p["response_b"].tolist()) == ([1], [0])
    assert remap.tolist() == [-1, 0, -1, 1]


def test_keep_annotated_maps_annotation_ids_along():
    responses = pd.DataFrame({"response_id": [0, 1, 2, 3], "text": ["a", "b", "c", "d"]})
    pairs = pd.DataFrame({"pair_id": [0, 1], "response_a": [0, 2], "response_b": [1, 3]})
    ann = pd.DataFrame({"pair_id": [1, 1], "chosen": [3, 2], "rejected": [2, 3]})
    r, p, a = keep_annotated(responses, pairs, ann)
    assert r["text"].tolist() == ["c", "d"]
    assert p.to_dict("list") == {"pair_id": [0], "response_a": [0], "response_b": [1]}
    assert a.to_dict("list") == {"pair_id": [0, 0], "chosen": [1, 0], "rejected": [0, 1]}
    assert ann["pair_id"].tolist() == [1, 1]  # the caller's frame is not changed
