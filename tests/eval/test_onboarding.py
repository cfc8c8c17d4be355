"""The onboarding simulation (copl_ray/eval/onboarding.py) on the two-camp graph of
tests/graph/test_onboard.py, whose answers we know."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from copl_ray.config import AdaptConfig
from copl_ray.eval.onboarding import answers_to_match, onboard, respondents
from copl_ray.graph.adapt import adapt_unseen_users
from tests.graph.test_onboard import N_PER_CAMP, PAIRS, SPLIT, camps, selector

# camp A prefers the first response of every pair (label +1); camp B the second on the
# split pairs
LABELS = PAIRS.assign(label_a=[1, 1, 1, 1], label_b=[1, 1, -1, -1], label_c=[1, 0, np.nan, -1])


def test_group_truth_answers_every_labelled_pool_pair_as_the_group_does():
    sel = selector()
    users = pd.DataFrame({"user_id": ["na", "nb", "nc"], "group": ["a", "b", "c"]})
    people, truth = respondents(sel, LABELS, users, pd.DataFrame(columns=["user_id"]))
    assert truth == "group"
    assert [p.candidates.tolist() for p in people] == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 3]]
    assert people[1].a_wins.tolist() == [True, True, False, False]
    assert people[2].a_wins.tolist() == [True, False]  # tie and missing label: never asked


def test_own_truth_offers_only_the_pairs_the_user_labelled_as_they_labelled_them():
    sel = selector()
    users = pd.DataFrame({"user_id": ["n1"], "group": [None]})
    survey = pd.DataFrame(
        {
            "user_id": ["n1", "n1", "n1"],
            "pair_id": [13, 10, 99],
            "chosen": [107, 100, 1],
            "rejected": [106, 101, 2],
        }
    )
    people, truth = respondents(sel, PAIRS, users, survey)
    assert truth == "own" and people[0].candidates.tolist() == [3, 0]  # pair 99: no node
    assert people[0].a_wins.tolist() == [False, True]


def test_copl_onboarding_finds_the_camp_with_one_answer_random_often_does_not():
    """Every respondent of camp B answers one question. CoPL's first question is a split
    pair, so each lands in camp B; random asks a consensus pair half the time, after which
    adaptation cannot tell the camps apart (the adapted user sits between them)."""
    sel, art = selector(), camps()
    users = pd.DataFrame({"user_id": [f"n{i}" for i in range(20)], "group": ["b"] * 20})
    people, _ = respondents(sel, LABELS, users, pd.DataFrame(columns=["user_id"]))

    def camp_b_share(name: str) -> float:
        answers, seconds = onboard(sel, name, people, 1, seed=0)
        assert len(answers) == 20 and len(seconds) == 20
        emb = adapt_unseen_users(art, answers, AdaptConfig())["embedding"]
        in_b = [
            float(torch.tensor(e) @ art.user_embeddings[N_PER_CAMP:].mean(0)) > 0.9 for e in emb
        ]
        return float(np.mean(in_b))

    assert camp_b_share("copl") == 1.0
    assert camp_b_share("random") < 0.9
    answers, _ = onboard(sel, "copl", people[:1], 4, seed=0)
    pos = [
        int(
            np.flatnonzero(
                (sel.pool.a == art.response_index([c])[0])
                | (sel.pool.b == art.response_index([c])[0])
            )[0]
        )
        for c in answers["chosen"]
    ]
    assert pos[0] in SPLIT and sorted(pos) == [0, 1, 2, 3]  # all four, none twice


def test_answers_to_match_is_the_first_count_reaching_the_target():
    counts = [1, 2, 4, 8, 16]
    assert answers_to_match(counts, [0.5, 0.7, 0.8, 0.9, 0.95], 0.8) == 4
    assert answers_to_match(counts, [0.5, 0.7, 0.8, 0.9, 0.95], 0.96) is None
    assert answers_to_match(counts, [0.9, 0.7, 0.8, 0.9, 0.95], 0.85) == 1
