"""Shared user sampling: unit tests and a hypothesis property test of the invariants."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from copl_ray.config import DataConfig
from copl_ray.data.sampling import distinct_draws, even_split, sample_group_users
from copl_ray.data.tables import DataSummary
from copl_ray.data.validate import DataError


def _pool(rng: np.random.Generator, n_pairs: int, groups: list[str], held_frac: float):
    prompt = np.arange(n_pairs) // 3
    held_prompts = rng.random(prompt.max() + 1) < held_frac
    pairs = pd.DataFrame(
        {
            "pair_id": np.arange(n_pairs) + 1000,
            "prompt_id": prompt,
            "response_a": 2 * np.arange(n_pairs),
            "response_b": 2 * np.arange(n_pairs) + 1,
            "controversial": True,
            "heldout": held_prompts[prompt],
        }
    )
    for g in groups:
        pairs[f"label_{g}"] = rng.choice(np.array([-1, 1], dtype=np.int8), size=n_pairs)
    return pairs


@pytest.mark.parametrize("pool,counts", [(10, [10, 3, 0]), (1000, [5] * 50), (7, [4, 4])])
def test_distinct_draws(pool: int, counts: list[int]) -> None:
    rows, pos = distinct_draws(np.random.default_rng(0), pool, np.array(counts))
    for u, c in enumerate(counts):
        p = pos[rows == u]
        assert len(p) == c and len(set(p.tolist())) == c and (p < pool).all()


def test_even_split() -> None:
    assert even_split(10, 4).tolist() == [3, 3, 2, 2] and even_split(8, 2).sum() == 8


def test_pool_too_small_names_field() -> None:
    rng = np.random.default_rng(0)
    pairs = _pool(rng, 12, ["x", "y"], 0.0)
    cfg = DataConfig(n_users=4, labels_per_user=8, sampling="avg")
    with pytest.raises(DataError, match="data.labels_per_user"):
        sample_group_users(
            pairs,
            ["x", "y"],
            ~pairs.heldout.to_numpy(),
            pairs.heldout.to_numpy(),
            cfg,
            rng,
            DataSummary("t"),
        )


def test_test_pairs_capped_and_counted() -> None:
    rng = np.random.default_rng(1)
    pairs = _pool(rng, 60, ["x", "y"], 0.0)
    pairs.loc[:5, "heldout"] = True  # 6 held-out pairs
    s = DataSummary("t")
    cfg = DataConfig(n_users=4, n_unseen_users=2, labels_per_user=4, test_pairs_seen=10)
    ann, _ = sample_group_users(
        pairs, ["x", "y"], ~pairs.heldout.to_numpy(), pairs.heldout.to_numpy(), cfg, rng, s
    )
    assert (ann[ann.split == "test"].groupby("user_id").size() == 6).all()
    assert s.drops["test_pairs_seen_capped"] == 4 * 4 and s.notes


@settings(max_examples=25, deadline=None)
@given(
    n_groups=st.integers(1, 4),
    n_users=st.integers(1, 40),
    n_unseen=st.integers(0, 9),
    n=st.integers(1, 8),
    sampling=st.sampled_from(["all", "avg"]),
    val_pair=st.booleans(),
    n_test=st.integers(0, 6),
    seed=st.integers(0, 10_000),
)
def test_sampling_invariants(n_groups, n_users, n_unseen, n, sampling, val_pair, n_test, seed):
    groups = ["g0", "g1", "g2", "g3"][:n_groups]
    rng = np.random.default_rng(seed)
    pairs = _pool(rng, 120, groups, 0.25)
    pairs.loc[0, "heldout"] = True
    pairs.loc[119, "heldout"] = False
    cfg = DataConfig(
        n_users=n_users,
        n_unseen_users=n_unseen,
        labels_per_user=n,
        sampling=sampling,
        val_pair=val_pair,
        test_pairs_seen=n_test,
        test_pairs_unseen=n_test,
    )
    survey_mask = ~pairs.heldout.to_numpy()
    ann, users = sample_group_users(
        pairs, groups, survey_mask, pairs.heldout.to_numpy(), cfg, rng, DataSummary("t")
    )
    a = ann.merge(pairs, on="pair_id", validate="many_to_one").merge(users, on="user_id")
    # annotations reference the pair's own responses, oriented by the user's own group
    assert (a.chosen != a.rejected).all()
    assert (a.chosen.eq(a.response_a) | a.chosen.eq(a.response_b)).all()
    assert (a.rejected.eq(a.response_a) | a.rejected.eq(a.response_b)).all()
    lab = np.array([r[f"label_{r['group']}"] for _, r in a.iterrows()])
    assert (np.where(lab > 0, a.response_a, a.response_b) == a.chosen).all()
    # held-out prompts never in survey/val; test only from held-out prompts
    assert not a.loc[a.split != "test", "heldout"].any()
    assert a.loc[a.split == "test", "heldout"].all()
    # no user's test pair is in their survey set; no duplicate (user, pair)
    assert not ann.duplicated(["user_id", "pair_id"]).any()
    # groups balanced (seen and unseen)
    for seen in (True, False):
        sizes = users[users.seen == seen].group.value_counts().reindex(groups, fill_value=0)
        assert sizes.max() - sizes.min() <= 1
    assert (users.seen.sum(), (~users.seen).sum()) == (n_users, n_unseen)
    # label counts
    seen_ids = users.loc[users.seen, "user_id"]
    sv = ann[ann.split.isin(["survey", "val"])].groupby("user_id").size()
    sv = sv.reindex(seen_ids, fill_value=0)
    val = ann[ann.split == "val"].groupby("user_id").size().reindex(seen_ids, fill_value=0)
    if sampling == "all":
        assert (sv == n).all()
        assert (val == (1 if val_pair else 0)).all()
    else:
        assert sv.between(1, 2 * n - 1).all()
        assert (val == ((sv >= n) & val_pair).astype(int)).all()
    test = ann[ann.split == "test"].groupby("user_id").size()
    assert (test.reindex(users.user_id, fill_value=0) == n_test).all()
    unseen_sv = ann[ann.user_id.isin(users.loc[~users.seen, "user_id"]) & (ann.split != "test")]
    assert (unseen_sv.split == "survey").all()
    assert (unseen_sv.groupby("user_id").size() == n).all() or n_unseen == 0
