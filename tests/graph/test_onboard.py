"""Question selection for active onboarding (copl_ray/graph/onboard.py) on hand-made
artifacts whose answers we know: two camps of users that agree on some pairs and split
on others."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from copl_ray.config import AdaptConfig, OnboardingConfig
from copl_ray.graph.adapt import adapt_unseen_users
from copl_ray.graph.artifacts import GNNArtifacts
from copl_ray.graph.onboard import QuestionPool, QuestionSelector, stable_seed

torch.set_num_threads(1)

N_PER_CAMP = 20
# responses (ids 100 + i): four prompts, each with two responses. On prompts 0 and 1 the
# two responses differ along x (both camps prefer the first: "consensus"); on prompts 2
# and 3 along y (camp A prefers the first, camp B the second: "split").
RESPONSES = np.array([[1, 0], [-1, 0], [1, 0.1], [-1, 0.1], [0, 1], [0, -1], [0.1, 1], [0.1, -1]])
PAIRS = pd.DataFrame(
    {
        "pair_id": [10, 11, 12, 13],
        "response_a": [100, 102, 104, 106],
        "response_b": [101, 103, 105, 107],
        "heldout": [False, False, False, False],
    }
)
CONSENSUS, SPLIT = [0, 1], [2, 3]


def camps() -> GNNArtifacts:
    """Camp A users near (0.6, 0.8), camp B near (0.6, −0.8), unit length; every user chose
    what their camp prefers on each pair (positive edge to it, negative to the other)."""
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([0.6, 0.8]) + 0.05 * torch.randn(N_PER_CAMP, 2, generator=g)
    b = torch.tensor([0.6, -0.8]) + 0.05 * torch.randn(N_PER_CAMP, 2, generator=g)
    users = F.normalize(torch.cat([a, b]), dim=-1)
    pos, neg = [], []
    for u in range(2 * N_PER_CAMP):
        camp_b = u >= N_PER_CAMP
        for p in range(4):
            first, second = 2 * p, 2 * p + 1
            if p in SPLIT and camp_b:
                first, second = second, first
            pos.append((u, first))
            neg.append((u, second))
    return GNNArtifacts(
        user_ids=[f"v{u}" for u in range(2 * N_PER_CAMP)],
        user_embeddings=users,
        response_ids=np.arange(100, 108),
        response_embeddings=torch.tensor(RESPONSES, dtype=torch.float32) * 3,
        pos_edge_index=torch.tensor(pos).T,
        neg_edge_index=torch.tensor(neg).T,
        normalized=True,
    )


def selector(art=None, **kw) -> QuestionSelector:
    art = art or camps()
    return QuestionSelector(
        art, QuestionPool.from_pairs(art, PAIRS), AdaptConfig(), OnboardingConfig(**kw)
    )


NONE = np.zeros(0, dtype=np.int64)


@pytest.mark.parametrize("name", ["copl", "pref"])
def test_cold_start_asks_the_pairs_the_camps_split_on(name):
    sel = selector()
    first = sel.select(name, NONE, NONE, 2)
    assert sorted(first.tolist()) == SPLIT
    # consensus pairs tell CoPL nothing: the embedding cannot move
    opening = sel.opening(name)
    assert opening[SPLIT].min() > 10 * opening[CONSENSUS].max()


def test_one_split_answer_settles_the_camp_and_the_rest_moves_little():
    sel = selector()
    before = sel.opening("copl")
    # a camp-A user answers pair 12 as camp A does (response 104 over 105)
    after = sel.expected_change(np.array([4]), np.array([5]), np.arange(4))
    assert after[3] < 0.05 * before[3]  # the other split pair: the camp is known now
    users, log_w = sel.posterior(np.array([4]), np.array([5]))
    in_a = (users < N_PER_CAMP).numpy()
    assert torch.exp(log_w)[torch.from_numpy(in_a)].sum() > 0.999


def test_copl_score_is_the_expected_change_of_the_adapted_embedding():
    """The vectorised score against the definition, candidate by candidate."""
    sel, art = selector(), camps()
    a, b = np.array([0]), np.array([1])  # one consensus answer: every user still in
    got = sel.expected_change(a, b, np.arange(4))
    eu, er = art.user_embeddings, art.response_embeddings
    gamma = F.logsigmoid(eu @ (er[0] - er[1]))
    w = torch.softmax(gamma / 0.07, 0)
    now = F.normalize(w @ eu, dim=0)
    for c in range(4):
        s = eu @ (er[2 * c] - er[2 * c + 1])
        p = float((w * torch.sigmoid(s)).sum())
        w_up = w * torch.sigmoid(s) ** (1 / 0.07)
        w_down = w * torch.sigmoid(-s) ** (1 / 0.07)
        up = F.normalize((w_up / w_up.sum()) @ eu, dim=0)
        down = F.normalize((w_down / w_down.sum()) @ eu, dim=0)
        want = p * (up - now).pow(2).sum() + (1 - p) * (down - now).pow(2).sum()
        assert float(got[c]) == pytest.approx(float(want), rel=1e-4, abs=1e-7)


def test_pref_score_is_the_d_optimal_rule():
    sel, art = selector(pref_ridge=0.5), camps()
    a, b = np.array([4]), np.array([5])
    got = sel.d_optimal(a, b, np.arange(4))
    ids = art.response_ids
    lam = torch.from_numpy(
        adapt_unseen_users(
            art,
            pd.DataFrame({"user_id": ["n"], "chosen": [ids[4]], "rejected": [ids[5]]}),
            AdaptConfig(),
        ).iloc[0]["embedding"]
    )
    er = art.response_embeddings.double()
    lam = lam.double()
    v0 = er[4] - er[5]
    s0 = torch.sigmoid(v0 @ lam)
    fisher = 0.5 * torch.eye(2, dtype=torch.float64) + s0 * (1 - s0) * torch.outer(v0, v0)
    for c in range(4):
        v = er[2 * c] - er[2 * c + 1]
        s = torch.sigmoid(v @ lam)
        want = (s * (1 - s)) ** 2 * (v @ torch.linalg.inv(fisher) @ v)
        assert float(got[c]) == pytest.approx(float(want), rel=1e-4)


@pytest.mark.parametrize("name", ["copl", "pref", "random"])
def test_answered_pairs_are_never_asked_again_in_either_orientation(name):
    sel, ids = selector(), np.arange(100, 108)
    # answered pair 12 (as 104 > 105) and pair 13 reversed (107 > 106)
    asked = sel.select(name, ids[[4, 7]], ids[[5, 6]], 4)
    assert sorted(asked.tolist()) == CONSENSUS  # only two remain: k=4 returns both
    assert len(sel.select(name, ids[[0, 2, 4, 6]], ids[[1, 3, 5, 7]], 3)) == 0


def test_candidates_restrict_and_unknown_responses_are_ignored():
    sel = selector()
    asked = sel.select("copl", np.array([-5, 999]), np.array([-6, 998]), 3, candidates=[0, 3])
    assert asked.tolist() == [3, 0]  # the split pair first, nothing else offered


def test_random_is_seeded_and_covers_the_pool():
    sel = selector()
    draw = [sel.select("random", NONE, NONE, 4, seed=s).tolist() for s in range(20)]
    assert draw[0] == sel.select("random", NONE, NONE, 4, seed=0).tolist()
    assert all(sorted(d) == [0, 1, 2, 3] for d in draw)
    assert len({tuple(d) for d in draw}) > 5
    assert stable_seed("u1", 3) == stable_seed("u1", 3) != stable_seed("u1", 4)


def test_posterior_keeps_the_most_likely_users_and_matches_all_when_it_keeps_all():
    full, cut = selector(max_users=1000), selector(max_users=5)
    a, b = np.array([4]), np.array([5])
    users, _ = cut.posterior(a, b)
    assert len(users) == 5 and bool((users < N_PER_CAMP).all())  # camp A, the likely ones
    assert torch.allclose(
        full.expected_change(a, b, np.arange(4)),
        selector(max_users=2 * N_PER_CAMP).expected_change(a, b, np.arange(4)),
    )


def test_pool_keeps_survey_pairs_with_both_responses_in_the_graph():
    art = camps()
    pairs = pd.concat(
        [
            PAIRS,
            pd.DataFrame(
                {
                    "pair_id": [20, 21, 22],
                    "response_a": [100, 100, 555],
                    "response_b": [102, 104, 101],
                    "heldout": [True, False, False],
                }
            ),
        ]
    )
    pool = QuestionPool.from_pairs(art, pairs)
    assert pool.pair_ids.tolist() == [10, 11, 12, 13, 21]  # held out / unknown response: out
    assert pool.positions(np.array([21, 20, 12])).tolist() == [4, -1, 2]
    with pytest.raises(ValueError, match="nothing to ask"):
        QuestionSelector(
            art, QuestionPool.from_pairs(art, pairs.iloc[[4, 6]]), AdaptConfig(), OnboardingConfig()
        )
