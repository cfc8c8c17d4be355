"""Simulated active onboarding of the unseen users (the eval stage's ``onboarding`` record).

Each unseen user is onboarded from nothing, one question at a time, by every selector of
``onboarding.selectors`` (copl_ray/graph/onboard.py), answering with their held-out truth:

* **group truth** — where ``pairs.parquet`` carries ``label_<group>`` for the user's group
  (synthetic data), the user answers any pool pair as their group prefers it; the
  candidates are the whole pool (pairs of survey prompts whose responses are graph nodes);
* **own labels** — otherwise (real annotators), the candidates are the pairs the user
  labelled in their survey, answered as they answered them.

At most ``onboarding.eval_users`` unseen users take part (a seeded sample: the simulation
costs one scoring pass of their test pairs per answer count and curve). After ``n``
answers (every ``n`` of ``onboarding.answer_counts``) each user is adapted
from their answers (weighted, optimisation-free, as the unseen users of the run) and the
CoPL reward model scores their test pairs: ``accuracy[n]`` is the share of those pairs
ordered as the user ordered them. A user with fewer candidates than ``n`` answers all of
them. The random control is drawn ``onboarding.random_repeats`` times and averaged.

``answers_to_match_random16[s]``: the fewest answers in ``answer_counts`` at which
selector ``s`` reaches random's accuracy at ``reference_answers`` answers (16, or the
largest count when 16 is not in the list); null if it never does.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from copl_ray.config import RANDOM_SELECTOR, Config
from copl_ray.console import log
from copl_ray.data.tables import label_column
from copl_ray.eval.scoring import Scorer, adapted_correct, first_labels

if TYPE_CHECKING:
    from copl_ray.artifacts import RunDir
    from copl_ray.graph.artifacts import GNNArtifacts
    from copl_ray.graph.onboard import QuestionSelector
    from copl_ray.reward.model import PersonalRewardModel

REFERENCE_ANSWERS = 16


class Respondent:
    """One unseen user's candidate pool positions and their answer to each."""

    def __init__(self, user_id: str, candidates: np.ndarray, a_wins: np.ndarray):
        self.user_id, self.candidates, self.a_wins = user_id, candidates, a_wins
        self._answer = dict(zip(candidates.tolist(), a_wins.tolist()))

    def answer(self, pool_a: np.ndarray, pool_b: np.ndarray, pos: int) -> tuple[int, int]:
        """``(chosen, rejected)`` node indices of the answer to pool position ``pos``."""
        return (pool_a[pos], pool_b[pos]) if self._answer[pos] else (pool_b[pos], pool_a[pos])


def respondents(
    selector: QuestionSelector, pairs: pd.DataFrame, users: pd.DataFrame, survey: pd.DataFrame
) -> tuple[list[Respondent], str]:
    """The unseen users who can be onboarded, and which truth they answer with."""
    pool = selector.pool
    out, kinds = [], set()
    by_pair = pairs.set_index("pair_id")
    by_user = dict(tuple(survey.groupby("user_id"))) if len(survey) else {}
    for user_id, group in zip(users["user_id"], users["group"].fillna("")):
        column = label_column(group) if group else None
        if column in by_pair.columns:
            label = by_pair[column].reindex(pool.pair_ids).to_numpy(dtype=float)
            ok = np.isfinite(label) & (label != 0)
            cand = np.flatnonzero(ok)
            out.append(Respondent(user_id, cand, label[ok] > 0))
            kinds.add("group")
            continue
        own = by_user.get(user_id, survey.iloc[:0])
        pos = pool.positions(own["pair_id"].to_numpy())
        ok = pos >= 0
        if ok.any():
            a_node = pool.a[pos[ok]]
            chosen = selector.art.response_index(own["chosen"].to_numpy()[ok])
            out.append(Respondent(user_id, pos[ok], chosen == a_node))
            kinds.add("own")
    return out, "+".join(sorted(kinds)) or "none"


def onboard(
    selector: QuestionSelector, name: str, people: list[Respondent], n: int, seed: int
) -> tuple[pd.DataFrame, list[float]]:
    """Every respondent answers up to ``n`` questions chosen one at a time by selector
    ``name``: their answers (user_id, chosen, rejected response ids, step) and the
    seconds of each selection."""
    pool, ids = selector.pool, selector.art.response_ids
    rows, seconds = [], []
    for i, person in enumerate(people):
        chosen: list[int] = []
        rejected: list[int] = []
        for step in range(min(n, len(person.candidates))):
            t0 = time.perf_counter()
            pos = selector.select(
                name, ids[chosen], ids[rejected], 1, person.candidates, seed=seed + i
            )
            seconds.append(time.perf_counter() - t0)
            c, r = person.answer(pool.a, pool.b, int(pos[0]))
            chosen.append(c)
            rejected.append(r)
            rows.append((person.user_id, int(ids[c]), int(ids[r]), step))
    return pd.DataFrame(rows, columns=["user_id", "chosen", "rejected", "step"]), seconds


def answered_accuracy(
    scorer: Scorer,
    copl: PersonalRewardModel,
    art: GNNArtifacts,
    answers: pd.DataFrame,
    counts: list[int],
    cfg: Config,
) -> list[float]:
    """CoPL's accuracy on the respondents' test pairs after their first ``n`` answers,
    for every ``n`` of ``counts``."""
    where = "onboarding/n={}"
    return [
        float(
            adapted_correct(
                scorer, copl, art, first_labels(answers, n), cfg.adapt, where.format(n)
            )[1].mean()
        )
        for n in counts
    ]


def answers_to_match(counts: list[int], accuracy: list[float], target: float) -> int | None:
    """The fewest answers in ``counts`` whose accuracy reaches ``target`` (None: never)."""
    return next((n for n, a in zip(counts, accuracy) if a >= target - 1e-12), None)


def simulate_onboarding(
    scorer: Scorer, copl: PersonalRewardModel, art: GNNArtifacts, run: RunDir, cfg: Config
) -> dict[str, Any] | None:
    """The ``onboarding`` record of results.json (module docstring); None when no unseen
    user has test pairs and a candidate to answer, or no selector is configured."""
    from copl_ray.graph.onboard import QuestionPool, QuestionSelector

    oc = cfg.onboarding
    data = scorer.data
    if not oc.selectors or not len(data.unseen):
        return None
    t0 = time.time()
    pairs = pq.read_table(run.data / "pairs.parquet").to_pandas()
    pool = QuestionPool.from_pairs(art, pairs)
    if not len(pool):
        return None
    selector = QuestionSelector(art, pool, cfg.adapt, oc)
    users = data.users[data.users["user_id"].isin(set(data.unseen["user_id"]))]
    if oc.eval_users is not None and len(users) > oc.eval_users:
        users = users.sample(n=oc.eval_users, random_state=oc.seed).sort_index()
    people, truth = respondents(selector, pairs, users, data.survey)
    if not people:
        return None
    counts = sorted(oc.answer_counts)
    curves: dict[str, dict[str, Any]] = {}
    for name in oc.selectors:
        draws = oc.random_repeats if name == RANDOM_SELECTOR else 1
        acc, sel_s = np.zeros(len(counts)), []
        for d in range(draws):
            answers, seconds = onboard(selector, name, people, counts[-1], oc.seed + 7919 * d)
            acc += np.array(answered_accuracy(scorer, copl, art, answers, counts, cfg)) / draws
            sel_s += seconds
        curves[name] = {
            "answers": counts,
            "accuracy": [round(float(a), 6) for a in acc],
            "draws": draws,
            "selection_ms_p50": round(1000 * float(np.median(sel_s)), 3) if sel_s else None,
        }
        log(f"eval: onboarding {name}: " + ", ".join(f"{n}:{a:.3f}" for n, a in zip(counts, acc)))
    ids = {p.user_id for p in people}
    return {
        **onboarding_summary(curves, counts),
        "truth": truth,
        "n_users": len(ids),
        "n_pairs": int(data.unseen["user_id"].isin(ids).sum()),
        "n_pool": len(pool),
        "candidates_per_user": float(np.median([len(p.candidates) for p in people])),
        "seconds": round(time.time() - t0, 2),
    }


def onboarding_summary(curves: dict[str, dict[str, Any]], counts: list[int]) -> dict[str, Any]:
    """The curves with the answers each selector needs to match random's accuracy at
    :data:`REFERENCE_ANSWERS` answers (the largest count when 16 is not one of them)."""
    reference = REFERENCE_ANSWERS if REFERENCE_ANSWERS in counts else counts[-1]
    match: dict[str, int | None] = {}
    target = None
    if RANDOM_SELECTOR in curves:
        target = curves[RANDOM_SELECTOR]["accuracy"][counts.index(reference)]
        match = {s: answers_to_match(counts, c["accuracy"], target) for s, c in curves.items()}
    return {
        "selectors": curves,
        "answers_to_match_random16": match,
        "reference_answers": reference,
        "random_reference_accuracy": target,
    }
