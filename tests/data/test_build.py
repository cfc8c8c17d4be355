"""Property test of the full builder (synthetic source): the data invariants of issue §5."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from copl_ray.config import load_config
from copl_ray.data import build_tables


@settings(max_examples=25, deadline=None)
@given(
    n_groups=st.sampled_from([2, 4]),
    n_users=st.integers(2, 60),
    n_unseen=st.integers(0, 12),
    n=st.integers(1, 10),
    sampling=st.sampled_from(["all", "avg"]),
    tie_policy=st.sampled_from(["coin", "drop"]),
    test_pool=st.sampled_from(["all", "pool"]),
    seed=st.integers(0, 1000),
)
def test_builder_invariants(n_groups, n_users, n_unseen, n, sampling, tie_policy, test_pool, seed):
    cfg = load_config(
        "tiny",
        [
            f"data.n_groups={n_groups}",
            f"data.n_users={n_users}",
            f"data.n_unseen_users={n_unseen}",
            f"data.labels_per_user={n}",
            f"data.sampling={sampling}",
            f"data.tie_policy={tie_policy}",
            f"data.test_pool={test_pool}",
            f"data.seed={seed}",
            "data.synthetic.n_prompts=80",
            "data.test_pairs_seen=3",
            "data.test_pairs_unseen=5",
        ],
    )
    t = build_tables(cfg)
    ann, users, pairs = t.annotations, t.users, t.pairs
    a = ann.merge(pairs, on="pair_id", validate="many_to_one").merge(users, on="user_id")
    assert len(a) == len(ann)
    # annotations reference the pair's own responses, and responses of the pair's prompt
    assert (
        (a.chosen == a.response_a) & (a.rejected == a.response_b)
        | (a.chosen == a.response_b) & (a.rejected == a.response_a)
    ).all()
    prompt_of = t.responses.set_index("response_id")["prompt_id"]
    assert (prompt_of[pairs.response_a].to_numpy() == pairs.prompt_id.to_numpy()).all()
    # no user's test pair is in their survey set
    assert not ann.duplicated(["user_id", "pair_id"]).any()
    # held-out prompts never reach the survey set; test pairs only from held-out prompts
    held_prompts = set(pairs.loc[pairs.heldout, "prompt_id"])
    assert not set(a.loc[a.split != "test", "prompt_id"]) & held_prompts
    assert a.loc[a.split == "test", "heldout"].all()
    # test labels = the user's OWN group (official bug B1 fixed)
    own = np.array([r[f"label_{r['group']}"] for _, r in a.iterrows()])
    assert (np.where(own > 0, a.response_a, a.response_b) == a.chosen).all()
    # groups balanced
    for seen in (True, False):
        c = users[users.seen == seen].group.value_counts().reindex(t.groups, fill_value=0)
        assert c.max() - c.min() <= 1
    # ALL: exactly n per seen user (survey + val); AVG: within [1, 2n-1]
    seen_ids = users.loc[users.seen, "user_id"]
    per = ann[ann.split != "test"].groupby("user_id").size().reindex(seen_ids, fill_value=0)
    if sampling == "all":
        assert (per == n).all()
    else:
        assert per.between(1, 2 * n - 1).all()
    # unseen users: n adaptation labels, all in split survey
    un = ann[ann.user_id.isin(users.loc[~users.seen, "user_id"]) & (ann.split != "test")]
    assert (un.split == "survey").all() and (un.groupby("user_id").size() == n).all()
