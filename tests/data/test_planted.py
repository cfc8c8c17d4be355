"""copl_ray/data/planted.py: the planted graph's invariants — counts and splits per user,
both responses of a pair from one prompt, each group labels a pair one way, and with two
groups every pool pair is controversial (the groups disagree on it); seeded."""

from __future__ import annotations

import pandas as pd

from copl_ray.data.planted import planted_annotations


def make(**kw) -> pd.DataFrame:
    args = dict(n_users=40, n_groups=2, labels=10, n_val=2, seed=3, n_prompts=3)
    args.update(kw)
    return planted_annotations(**args)


def test_counts_and_splits_per_user():
    ann = make()
    assert len(ann) == 40 * 12 and list(ann.columns) == [
        "user_id",
        "pair_id",
        "chosen",
        "rejected",
        "split",
    ]
    per_user = ann.groupby("user_id")["split"].agg(list)
    assert len(per_user) == 40
    assert all(s == ["survey"] * 10 + ["val"] * 2 for s in per_user)


def test_pairs_are_two_responses_of_one_prompt():
    ann = make()
    assert (ann["chosen"] // 4 == ann["rejected"] // 4).all()  # 4 responses per prompt
    assert (ann["chosen"] != ann["rejected"]).all()
    assert ann["chosen"].max() < 3 * 4
    # a pair id always names the same two responses
    sides = ann.assign(lo=ann[["chosen", "rejected"]].min(1), hi=ann[["chosen", "rejected"]].max(1))
    assert (sides.groupby("pair_id")[["lo", "hi"]].nunique() == 1).all().all()


def test_groups_label_consistently_and_disagree_on_every_pair():
    ann = make()
    ann["group"] = ann["user_id"].astype(int) % 2  # user i is in group i % n_groups
    chosen = ann.groupby(["pair_id", "group"])["chosen"].nunique()
    assert (chosen == 1).all()  # no noise: one answer per group and pair
    both = ann.groupby("pair_id").filter(lambda f: f["group"].nunique() == 2)
    assert len(both) > 0
    # two groups, controversial pool: the groups never agree on a pair
    assert (both.groupby("pair_id")["chosen"].nunique() == 2).all()


def test_seeded():
    pd.testing.assert_frame_equal(make(), make())
    assert not make().equals(make(seed=4))
