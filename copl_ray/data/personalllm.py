"""PersonalLLM: simulated users as Dirichlet mixtures of ten reward models (known truth).

Source: ``namkoong-lab/PersonalLLM`` (Zollo, Siah, Ye, Li, Namkoong, "PersonalLLM:
Tailoring LLMs to Individual Preferences", ICLR 2025, arXiv:2409.20296; DOI
10.57967/hf/2509; licence CC BY 4.0 per the card), splits ``train`` and ``test``
(parquet). Read by name through ``datasets`` or from local files (copl_ray/data/hub.py:
``data.path`` a parquet/jsonl file, or a folder such as the hub's ``data/``).

Schema used, one row per prompt (other columns are ignored): ``prompt`` (str),
``response_1`` .. ``response_8`` (str), and ``response_<i>_<rm>`` (float), the score of
response ``i`` by reward model ``rm`` in ``gemma_2b, gemma_7b, mistral_raft,
llama3_sfairx, oasst_deberta_v3, beaver_7b, oasst_pythia_7b, oasst_pythia_1b,
mistral_ray, mistral_weqweasdas`` (``data.personalllm_reward_models`` picks a subset).

Users (the paper's and LoRe's population): each of ``n_users`` seen and
``n_unseen_users`` unseen users draws weights ``w ~ Dirichlet(data.personalllm_alpha)``
over the reward models and prefers, of two responses to a prompt, the one with the
higher mixed score ``w · z``. ``z`` is each reward model's score standardised over all
usable responses (mean 0, sd 1): the models' raw scales differ by orders of magnitude,
so raw weights would not say how much a model counts. A user's group is their dominant
reward model (``argmax w``); ``pairs.label_<rm>`` is that model's own preference (``0``
on a tie). Candidate pairs are every two usable responses of a prompt;
``data.heldout_prompt_frac`` of the prompts are held out for test pairs; which pairs a
user labels follows :func:`copl_ray.data.sampling.draw_user_pairs` (the synthetic and
UF-P rules). ``controversial``: the minority of the whole simulated population holds at
least ``data.controversial_min_share`` of it on that pair (known truth, no annotator
count needed). Side tables (known truth): ``user_weights`` (user_id + one weight per
reward model) and ``response_scores`` (response_id + the standardised scores).

Errors (one line naming file, row, column): a missing column, a non-text prompt or
response, a non-numeric score. Counted drops: ``empty_text`` / ``text_too_long``
(responses; an empty prompt drops its row), ``missing_score`` (a response with a null
score), ``duplicate_prompt`` (a prompt text seen before), ``identical_responses`` (a
response repeating an earlier one's text for the same prompt), ``tie`` (a label with an exactly equal mixed score).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from copl_ray.config import DataConfig, short_repr
from copl_ray.data.hub import RowSource, dataset_rows, sources_label
from copl_ray.data.sampling import (
    draw_user_pairs,
    heldout_prompts,
    labelled_annotations,
    select_group_pairs,
    user_ids,
)
from copl_ray.data.tables import DataSummary, PreferenceTables, keep_annotated
from copl_ray.data.validate import DataError, where

HUB_NAME = "namkoong-lab/PersonalLLM"
N_RESPONSES = 8
REWARD_MODELS = (
    "gemma_2b",
    "gemma_7b",
    "mistral_raft",
    "llama3_sfairx",
    "oasst_deberta_v3",
    "beaver_7b",
    "oasst_pythia_7b",
    "oasst_pythia_1b",
    "mistral_ray",
    "mistral_weqweasdas",
)


def _score(v, label: str, row: int, col: str) -> float:
    if v is None:
        return np.nan
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise DataError(f"{where(label, row, col)}: expected a number, got {short_repr(v)}")
    return float(v)


def _text(v, label: str, row: int, col: str) -> str | None:
    if v is not None and not isinstance(v, str):
        raise DataError(f"{where(label, row, col)}: expected text, got {short_repr(v)}")
    return v


def read_prompts(
    sources: list[RowSource], models: list[str], cfg: DataConfig, summary: DataSummary
) -> tuple[list[str], list[list[str]], list[np.ndarray]]:
    """(prompts, [usable response texts], [scores: responses x models]) per kept prompt."""
    cols = [f"response_{i}" for i in range(1, N_RESPONSES + 1)]
    score_cols = [[f"{c}_{m}" for m in models] for c in cols]
    prompts, texts, scores, seen = [], [], [], set()
    for src in sources:
        for r_i, r in enumerate(src.rows):
            missing = [c for c in ["prompt", *cols, *sum(score_cols, [])] if c not in r]
            if missing:
                raise DataError(f"{where(src.label, r_i)}: missing column(s) {missing[:5]}")
            prompt = _text(r["prompt"], src.label, r_i, "prompt")
            if prompt is None or not prompt.strip():
                summary.drop("empty_text")
                continue
            if prompt in seen:
                summary.drop("duplicate_prompt")
                continue
            seen.add(prompt)
            kept_t, kept_s = [], []
            for c, sc in zip(cols, score_cols):
                t = _text(r[c], src.label, r_i, c)
                s = np.array([_score(r[k], src.label, r_i, k) for k in sc])
                if t is None or not t.strip():
                    summary.drop("empty_text")
                elif len(t) > cfg.max_text_chars:
                    summary.drop("text_too_long")
                elif np.isnan(s).any():
                    summary.drop("missing_score")
                elif t in kept_t:  # one response per text (the first one's scores)
                    summary.drop("identical_responses")
                else:
                    kept_t.append(t)
                    kept_s.append(s)
            prompts.append(prompt)
            texts.append(kept_t)
            scores.append(np.array(kept_s).reshape(len(kept_s), len(models)))
    return prompts, texts, scores


def candidate_pairs(
    prompts: list[str], texts: list[list[str]]
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """(responses table, prompt_id, response_a, response_b) of every two usable responses."""
    rows, pa_, pb_, pp_ = [], [], [], []
    for p_id, (prompt, ts) in enumerate(zip(prompts, texts)):
        base = len(rows)
        rows += [(p_id, prompt, t) for t in ts]
        for i, j in combinations(range(len(ts)), 2):
            pa_.append(base + i)
            pb_.append(base + j)
            pp_.append(p_id)
    responses = pd.DataFrame(rows, columns=["prompt_id", "prompt", "text"])
    responses.insert(0, "response_id", np.arange(len(responses), dtype=np.int64))
    return responses, np.array(pp_, np.int64), np.array(pa_, np.int64), np.array(pb_, np.int64)


def standardise(scores: np.ndarray) -> np.ndarray:
    """Each reward model's scores (columns) to mean 0, sd 1 (sd 0: centred only)."""
    sd = scores.std(axis=0)
    return (scores - scores.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def population_controversial(
    z: np.ndarray, weights: np.ndarray, a: np.ndarray, b: np.ndarray, min_share: float
) -> np.ndarray:
    """Per pair: the simulated population's minority side holds >= ``min_share`` of it."""
    prefers_a = ((z[a] - z[b]) @ weights.T) > 0  # pairs x users
    share = prefers_a.mean(axis=1)
    return np.minimum(share, 1 - share) >= min_share - 1e-12


def _models(cfg: DataConfig) -> list[str]:
    models = list(cfg.personalllm_reward_models or REWARD_MODELS)
    bad = [m for m in models if m not in REWARD_MODELS]
    if bad or not models:
        raise DataError(
            f"data.personalllm_reward_models: {short_repr(bad or models)} not among the "
            f"dataset's reward models ({', '.join(REWARD_MODELS)})"
        )
    return models


def simulated_annotations(
    pairs: pd.DataFrame,
    survey_mask: np.ndarray,
    test_mask: np.ndarray,
    z: np.ndarray,
    weights: np.ndarray,
    ids: np.ndarray,
    cfg: DataConfig,
    rng: np.random.Generator,
    summary: DataSummary,
) -> pd.DataFrame:
    """Each user's drawn pairs labelled by their mixed score ``w · (z_a - z_b)``."""
    user_idx, pair_row, split = draw_user_pairs(survey_mask, test_mask, cfg, rng, summary)
    a = pairs["response_a"].to_numpy()[pair_row]
    b = pairs["response_b"].to_numpy()[pair_row]
    mixed = np.einsum("nm,nm->n", weights[user_idx], z[a] - z[b])
    tie = mixed == 0
    summary.drop("tie", int(tie.sum()))
    user_idx, pair_row, split, mixed = (x[~tie] for x in (user_idx, pair_row, split, mixed))
    return labelled_annotations(pairs, ids, user_idx, pair_row, split, np.sign(mixed))


def _kept_with_scores(
    responses: pd.DataFrame,
    pairs: pd.DataFrame,
    ann: pd.DataFrame,
    z: np.ndarray,
    weights: np.ndarray,
    models: list[str],
    cfg: DataConfig,
    summary: DataSummary,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Keep the annotated responses/pairs, split off their standardised scores (the
    ``response_scores`` side table) and flag the kept pairs ``controversial`` by the
    simulated population (over the kept pairs only: the candidates x users matrix would
    not fit in memory). Returns ``(responses, pairs, annotations, response_scores)``."""
    score_cols = [f"z_{m}" for m in models]
    responses[score_cols] = z  # travel with the responses through the renumbering
    responses, pairs, ann = keep_annotated(responses, pairs, ann)
    response_scores = responses[["response_id", *score_cols]].rename(
        columns=dict(zip(score_cols, models))
    )
    pairs["controversial"] = population_controversial(
        response_scores[models].to_numpy(),
        weights,
        pairs["response_a"].to_numpy(),
        pairs["response_b"].to_numpy(),
        cfg.controversial_min_share,
    )
    summary.controversial_definition = (
        f"the simulated population's minority side >= {cfg.controversial_min_share:g} of its "
        "users (data.controversial_min_share; known truth: every user's mixed score)"
    )
    return responses.drop(columns=score_cols), pairs, ann, response_scores


def build_personalllm(cfg: DataConfig) -> PreferenceTables:
    summary = DataSummary(source="personalllm")
    models = _models(cfg)
    sources = dataset_rows(cfg.path, HUB_NAME, None)
    prompts, texts, scores = read_prompts(sources, models, cfg, summary)
    responses, p_id, a, b = candidate_pairs(prompts, texts)
    if len(a) == 0:
        raise DataError(f"data.path: no usable PersonalLLM response pair (drops: {summary.drops})")
    z = standardise(np.concatenate(scores, axis=0))
    rng = np.random.default_rng(cfg.seed)
    n_users = cfg.n_users + cfg.n_unseen_users
    weights = rng.dirichlet(np.full(len(models), cfg.personalllm_alpha), size=n_users)
    heldout = heldout_prompts(len(prompts), cfg.heldout_prompt_frac, rng)[p_id]
    labels = np.sign(z[a] - z[b]).astype(np.int8)
    pairs, survey_mask, test_mask = select_group_pairs(
        models,
        p_id,
        a,
        b,
        labels,
        np.zeros(len(a), bool),
        np.ones(len(a), bool),
        heldout,
        cfg,
        summary,
        "not_in_pool",
    )
    ids = np.concatenate([user_ids("user", cfg.n_users), user_ids("unseen", cfg.n_unseen_users)])
    ann = simulated_annotations(pairs, survey_mask, test_mask, z, weights, ids, cfg, rng, summary)
    users = pd.DataFrame(
        {
            "user_id": ids,
            "seen": np.arange(n_users) < cfg.n_users,
            "group": np.array(models, dtype=object)[weights.argmax(axis=1)],
        }
    )
    responses, pairs, ann, response_scores = _kept_with_scores(
        responses, pairs, ann, z, weights, models, cfg, summary
    )
    summary.groups = sorted(set(users["group"]))
    summary.notes.append(
        f"{len(prompts)} prompts read ({sources_label(sources)}); users mix "
        f"{len(models)} reward models with Dirichlet({cfg.personalllm_alpha:g}) weights "
        "(data.personalllm_alpha); group = the dominant reward model"
    )
    extras = {
        "user_weights": pd.DataFrame(weights, columns=models).assign(user_id=ids)[
            ["user_id", *models]
        ],
        "response_scores": response_scores,
    }
    return PreferenceTables(responses, pairs, ann, users, summary, extras)
