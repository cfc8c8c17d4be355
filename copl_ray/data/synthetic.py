"""The embedded synthetic data: UF-P-shaped preference data whose truth is known.

Generative model
----------------
* **Groups = attributes.** ``n_groups`` of the attributes ``detail``, ``caution``,
  ``structure``, ``warmth`` (2 groups: the first two; 4 groups: all four).
* **Prompts.** ``n_prompts`` short questions, each on one of a few topics
  (fixed-length templates, so prompt length carries no signal).
* **Responses.** ``responses_per_prompt`` responses per prompt. Response ``i`` gets an
  integer rating ``r_{i,g} ~ U{1..max_rating}`` per attribute ``g``, independently.
  Its text is exactly ``response_words`` words: for every attribute, ``r_{i,g}`` marker
  words drawn from that attribute's own small vocabulary (e.g. *detail*: "specifically",
  "example", "steps", ...; *caution*: "perhaps", "risk", "careful", ...), the rest
  filler words (the prompt's topic words and common function words), in random order.
  With the length fixed, the *fraction* of a text's words that are markers of ``g`` is
  ``r_{i,g} / response_words``: a linear read-out of token frequencies (one attention
  head averaging over positions) recovers every rating from the text.
* **Pairs.** All ``C(k, 2)`` response pairs of a prompt. Group ``g`` prefers the response
  with the higher rating on attribute ``g``: ``label_g = sign(r_{a,g} - r_{b,g})``.
  Ties: ``data.tie_policy=drop`` (the tiny default) drops a pair tied on any attribute
  (counted as ``tie``); ``coin`` breaks each tie by a fair coin.
* **Latent attributes.** Every text expresses ``synthetic.latent_attributes`` (default 4)
  attributes; the user groups are the first ``n_groups`` of them, exactly as UF-P-2 takes
  helpfulness and honesty out of UltraFeedback's four ratings.
* **Pools.** ``controversial`` = the groups do not all agree. As in UF-P, the survey pool
  is the pairs of non-held-out prompts on which the *latent attributes* do not all agree
  (``data.ufp2_require_disagreement=true``: on which the groups disagree); the rest are
  dropped, counted as ``all_groups_agree``. With 2 groups the pool therefore also holds
  pairs both groups agree on, which is what lets a model learn each attribute rather than
  only their difference. ``data.heldout_prompt_frac`` of the prompts
  are held out; their pairs are the test candidates: with ``data.test_pool=all`` (default)
  both common and controversial pairs, so both halves of the report are measured;
  ``test_pool=pool`` applies the survey-pool filter.
* **Users.** Sampled by :mod:`copl_ray.data.sampling` (ALL/AVG, val pair, seen/unseen,
  test pairs labelled by the user's own group). A user of group ``g`` labels every pair
  by ``label_g``, flipped independently with probability ``label_noise``.

Accuracy ceiling: with ``label_noise = ε`` the Bayes-optimal accuracy of any model on
any split is ``1 - ε`` (the truth ``label_g`` is a deterministic function of the text and
the user's group); with ``ε = 0`` a perfect model scores 1.0.

Scale: responses are shared by many users (each survey pair is drawn by
``n_users * n / |pool|`` users on average), so the user-response graph is dense enough for
a GNN to learn with 8-16 labels per user. Everything is vectorised numpy.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from copl_ray.config import DataConfig
from copl_ray.data.sampling import heldout_prompts, sample_group_users, select_group_pairs
from copl_ray.data.tables import DataSummary, PreferenceTables
from copl_ray.data.validate import DataError

ATTRIBUTES: dict[str, list[str]] = {
    "detail": [
        "specifically",
        "precisely",
        "example",
        "details",
        "steps",
        "numbers",
        "measured",
        "thorough",
    ],
    "caution": ["perhaps", "might", "careful", "risk", "safety", "uncertain", "consult", "warning"],
    "structure": [
        "first",
        "second",
        "finally",
        "overview",
        "summary",
        "section",
        "outline",
        "bullet",
    ],
    "warmth": ["glad", "kindly", "happy", "friend", "welcome", "hope", "warmly", "cheers"],
}
TOPICS: dict[str, list[str]] = {
    "cooking": ["pasta", "oven", "spices", "recipe", "dough", "sauce"],
    "travel": ["train", "luggage", "hotel", "passport", "route", "ticket"],
    "gardening": ["tomatoes", "soil", "seeds", "compost", "roses", "watering"],
    "finance": ["budget", "savings", "loan", "taxes", "interest", "pension"],
    "fitness": ["running", "muscles", "stretching", "cardio", "weights", "sleep"],
    "computers": ["laptop", "backup", "password", "router", "printer", "update"],
    "pets": ["puppy", "kitten", "leash", "vet", "aquarium", "treats"],
    "music": ["guitar", "piano", "chords", "rhythm", "concert", "lessons"],
    "home": ["plumbing", "paint", "furniture", "heating", "windows", "cleaning"],
    "study": ["exams", "notes", "essay", "library", "grammar", "lectures"],
}
FUNCTION_WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "as",
    "this",
    "your",
    "can",
    "will",
    "be",
    "you",
    "or",
]
PROMPT_TEMPLATES = [
    "What should I know about {a} and {b} ?",
    "Can you explain {a} for my {b} ?",
    "How do {a} and {b} work together ?",
    "Give me advice on {a} with {b} .",
    "Why does {a} matter for {b} ?",
]


def synthetic_groups(n_groups: int) -> list[str]:
    names = list(ATTRIBUTES)
    if not 1 <= n_groups <= len(names):
        raise DataError(
            f"data.n_groups: synthetic data has 1..{len(names)} groups ({names}), got {n_groups}"
        )
    return names[:n_groups]


def _vocab(groups: list[str]) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """Word array and id ranges: marker ids per group, topic-word ids [topic, j], function ids."""
    words: list[str] = []
    marker_ids = []
    for g in groups:
        marker_ids.append(np.arange(len(words), len(words) + len(ATTRIBUTES[g])))
        words += ATTRIBUTES[g]
    topic_ids = np.zeros((len(TOPICS), 6), dtype=np.int64)
    for t, tw in enumerate(TOPICS.values()):
        topic_ids[t] = np.arange(len(words), len(words) + len(tw))
        words += tw
    func_ids = np.arange(len(words), len(words) + len(FUNCTION_WORDS))
    words += FUNCTION_WORDS
    return np.array(words, dtype=object), marker_ids, topic_ids, func_ids


def generate_responses(
    cfg: DataConfig, groups: list[str], rng: np.random.Generator
) -> tuple[pd.DataFrame, np.ndarray]:
    """Prompts + responses; returns (responses table, ratings [n_responses, n_groups])."""
    sc = cfg.synthetic
    n_p, n_r, n_g, m = sc.n_prompts, sc.responses_per_prompt, len(groups), sc.max_rating
    length = sc.response_words
    if n_p < 1 or n_r < 2:
        raise DataError(
            "data.synthetic.n_prompts must be >= 1 and data.synthetic.responses_per_prompt >= 2"
        )
    if m < 1 or n_g * m >= length:
        raise DataError(
            f"data.synthetic.response_words: must exceed n_groups*max_rating={n_g * m} "
            f"(room for filler), got {length}"
        )
    if not 0 <= sc.label_noise < 0.5:
        raise DataError(f"data.synthetic.label_noise: must be in [0, 0.5), got {sc.label_noise}")
    words, marker_ids, topic_ids, func_ids = _vocab(groups)  # groups here = latent attributes
    # prompts
    topic = rng.integers(0, len(TOPICS), size=n_p)
    tw = rng.permuted(np.tile(np.arange(6), (n_p, 1)), axis=1)[:, :2]
    tmpl = rng.integers(0, len(PROMPT_TEMPLATES), size=n_p)
    prompts = np.array(
        [
            PROMPT_TEMPLATES[tmpl[i]].format(
                a=words[topic_ids[topic[i], tw[i, 0]]], b=words[topic_ids[topic[i], tw[i, 1]]]
            )
            for i in range(n_p)
        ],
        dtype=object,
    )
    # responses: slot types (0..G-1 = marker of group g, G = filler), then word ids
    n_resp = n_p * n_r
    ratings = rng.integers(1, m + 1, size=(n_resp, n_g))
    cum = np.cumsum(ratings, axis=1)
    slot_type = (np.arange(length)[None, :, None] >= cum[:, None, :]).sum(-1)  # [N, L]
    ids = np.empty((n_resp, length), dtype=np.int64)
    for g in range(n_g):
        draw = marker_ids[g][rng.integers(0, len(marker_ids[g]), size=(n_resp, length))]
        ids = np.where(slot_type == g, draw, ids)
    resp_topic = np.repeat(topic, n_r)
    topic_draw = topic_ids[resp_topic[:, None], rng.integers(0, 6, size=(n_resp, length))]
    func_draw = func_ids[rng.integers(0, len(func_ids), size=(n_resp, length))]
    filler = np.where(rng.random((n_resp, length)) < 0.4, topic_draw, func_draw)
    ids = np.where(slot_type == n_g, filler, ids)
    ids = rng.permuted(ids, axis=1)  # random order within each response
    texts = [" ".join(row) + " ." for row in words[ids]]
    responses = pd.DataFrame(
        {
            "response_id": np.arange(n_resp, dtype=np.int64),
            "prompt_id": np.repeat(np.arange(n_p, dtype=np.int64), n_r),
            "prompt": np.repeat(prompts, n_r),
            "text": texts,
        }
    )
    return responses, ratings


def build_synthetic(cfg: DataConfig) -> PreferenceTables:
    rng = np.random.default_rng(cfg.seed)
    groups = synthetic_groups(cfg.n_groups)
    n_latent = max(cfg.synthetic.latent_attributes, len(groups))
    latents = synthetic_groups(min(n_latent, len(ATTRIBUTES)))  # groups are the first latents
    summary = DataSummary(source="synthetic", groups=groups)
    responses, latent_ratings = generate_responses(cfg, latents, rng)
    ratings = latent_ratings[:, : len(groups)]
    n_p, n_r = cfg.synthetic.n_prompts, cfg.synthetic.responses_per_prompt
    # all C(k,2) pairs per prompt
    ia, ib = np.array(list(combinations(range(n_r), 2))).T
    base = (np.arange(n_p) * n_r)[:, None]
    a = (base + ia[None, :]).ravel()
    b = (base + ib[None, :]).ravel()
    prompt_id = np.repeat(np.arange(n_p), len(ia))
    diff = np.sign(ratings[a] - ratings[b])  # [P, G]
    tie = diff == 0
    summary.notes.append(f"generated {len(a)} candidate pairs from {n_p} prompts")
    if cfg.tie_policy == "drop":
        keep = ~tie.any(axis=1)
        summary.drop("tie", int((~keep).sum()))
    else:
        diff = np.where(tie, rng.choice(np.array([-1, 1]), size=diff.shape), diff)
        keep = np.ones(len(a), dtype=bool)
        summary.notes.append(f"{int(tie.sum())} tied (pair, group) labels broken by a coin")
    controversial = (diff != diff[:, :1]).any(axis=1)  # the user groups disagree
    # Survey-pool filter, as UF-P builds it (docs/reference-code.md B6): the pair is controversial
    # across ALL latent attributes, so with 2 groups the pool still holds pairs on which
    # the two groups agree (the attributes stay identifiable one by one), unless
    # data.ufp2_require_disagreement keeps only the pairs the groups disagree on.
    latent_diff = np.sign(latent_ratings[a] - latent_ratings[b])
    latent_controversial = (latent_diff != latent_diff[:, :1]).any(axis=1) | controversial
    pool_filter = controversial if cfg.ufp2_require_disagreement else latent_controversial
    held_prompt = heldout_prompts(n_p, cfg.heldout_prompt_frac, rng)
    pairs, survey_mask, test_mask = select_group_pairs(
        groups,
        prompt_id,
        a,
        b,
        diff,
        controversial,
        pool_filter,
        held_prompt[prompt_id],
        cfg,
        summary,
        drop_reason="all_groups_agree",
        keep=keep,
    )
    annotations, users = sample_group_users(
        pairs,
        groups,
        survey_mask,
        test_mask,
        cfg,
        rng,
        summary,
        label_noise=cfg.synthetic.label_noise,
    )
    return PreferenceTables(responses, pairs, annotations, users, summary)
