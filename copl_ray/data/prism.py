"""PRISM: real participants' ratings of several LLMs' answers to their own opening prompt.

Source: ``HannahRoseKirk/prism-alignment`` (Kirk et al., "The PRISM Alignment Dataset",
NeurIPS 2024 Datasets & Benchmarks, arXiv:2404.16019; DOI 10.57967/hf/2113; the card's
licence: CC, see the card for the exact terms), configs ``conversations`` and ``survey``
(split ``train``). Read by name through ``datasets`` or from local files
(copl_ray/data/hub.py: ``data.path`` = ``conversations.jsonl`` alone, or a folder with
``conversations.jsonl`` and optionally ``survey.jsonl``, as the hub ships them).

Schema used (other columns are ignored):

* ``conversations``: ``conversation_id``, ``user_id``, ``opening_prompt`` (str),
  ``conversation_history``: a list of utterances ``{turn: int, role: "user"|"model",
  content: str, model_provider, model_name, score: int 1-100, if_chosen: bool,
  within_turn_id}``. In turn 0 the participant rates up to four models' answers to the
  opening prompt.
* ``survey`` (optional): one row per participant, ``user_id`` (+ demographics, unused).

Mapping: user = ``user_id``; prompt = ``opening_prompt`` (turn 0's user utterance when
absent); every two turn-0 model answers with different scores make a pair, chosen = the
higher score. Later turns (one model's re-samples in a growing context) are not used.
Errors (one line naming file, row, column): a missing ``user_id`` /
``conversation_history`` column, a history that is not a list of utterance mappings, an
utterance without ``turn`` / ``role``. Counted drops: ``unscored_response`` (a turn-0
answer without a numeric score), ``tie`` (two answers with the same score),
``user_not_in_survey`` (a conversation whose participant the survey lacks, when the
survey is read), the shared judgment drops
(:func:`copl_ray.data.own.drop_unusable_judgments`), participants with fewer than
``data.min_user_labels`` pairs. No known groups. Each participant writes their own
prompts, so few pairs are shared between participants (the summary notes how many).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from copl_ray.config import DataConfig, short_repr
from copl_ray.data.hub import RowSource, dataset_rows, rows_with_columns, sources_label
from copl_ray.data.own import drop_unusable_judgments, tables_from_judgments
from copl_ray.data.tables import DataSummary, PreferenceTables
from copl_ray.data.validate import DataError, where

HUB_NAME = "HannahRoseKirk/prism-alignment"
COLUMNS = ("user_id", "conversation_history")


def _opening(history, label: str, row: int) -> tuple[str | None, list[tuple[float, str]]]:
    """(turn-0 user text, [(score, text)] of turn-0 model answers) of one conversation."""
    if not isinstance(history, (list, tuple)):
        raise DataError(
            f"{where(label, row, 'conversation_history')}: expected a list of utterances, "
            f"got {short_repr(history)}"
        )
    user_text, answers = None, []
    for j, u in enumerate(history):
        col = f"conversation_history[{j}]"
        if not isinstance(u, dict):
            raise DataError(f"{where(label, row, col)}: expected a mapping, got {short_repr(u)}")
        for key in ("turn", "role"):
            if key not in u:
                raise DataError(f"{where(label, row, f'{col}.{key}')}: missing")
        if u["turn"] != 0:
            continue
        if u["role"] == "user":
            user_text = u.get("content")
        elif u["role"] == "model":
            answers.append((u.get("score"), u.get("content")))
    return user_text, answers


def _is_score(v) -> bool:
    return (
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and v == v
    )


def conversation_pairs(
    sources: list[RowSource], survey_users: set[str] | None, summary: DataSummary
) -> pd.DataFrame:
    """One row per pair of differently scored opening answers: user, prompt, chosen, rejected."""
    out: list[tuple] = []
    for label, i, r in rows_with_columns(sources, COLUMNS):
        user_text, answers = _opening(r["conversation_history"], label, i)
        uid = r["user_id"]
        if survey_users is not None and uid is not None and str(uid) not in survey_users:
            summary.drop("user_not_in_survey")
            continue
        scored = [(s, t) for s, t in answers if _is_score(s)]
        summary.drop("unscored_response", len(answers) - len(scored))
        prompt = r.get("opening_prompt") or user_text
        for (s1, t1), (s2, t2) in combinations(scored, 2):
            if s1 == s2:
                summary.drop("tie")
                continue
            win, lose = (t1, t2) if s1 > s2 else (t2, t1)
            out.append((uid, prompt, win, lose))
    return pd.DataFrame(out, columns=["user_id", "prompt", "chosen", "rejected"])


def _survey_users(cfg: DataConfig) -> set[str] | None:
    survey = dataset_rows(cfg.path, HUB_NAME, "survey", main=False, required=False)
    if not survey:
        return None
    users = set()
    for src in survey:
        for i, r in enumerate(src.rows):
            if "user_id" not in r:
                raise DataError(f"{where(src.label, i)}: missing column(s) ['user_id']")
            users.add(str(r["user_id"]))
    return users


def shared_pairs_note(tables: PreferenceTables) -> str:
    """How many pairs more than one participant judged: the GNN links users only there."""
    per_pair = tables.annotations.groupby("pair_id")["user_id"].nunique()
    return (
        f"{int((per_pair >= 2).sum())} of {len(per_pair)} pairs are judged by >= 2 "
        "participants (each writes their own prompts; the graph links users only through "
        "shared responses)"
    )


def build_prism(cfg: DataConfig) -> PreferenceTables:
    summary = DataSummary(source="prism")
    sources = dataset_rows(cfg.path, HUB_NAME, "conversations")
    survey_users = _survey_users(cfg)
    df = conversation_pairs(sources, survey_users, summary)
    df = drop_unusable_judgments(df, cfg, summary).reset_index(drop=True)
    if df.empty:
        raise DataError(f"data.path: no usable PRISM pair (drops: {summary.drops})")
    n_conv = sum(len(s.rows) for s in sources)
    summary.notes.append(
        f"{n_conv} conversations read ({sources_label(sources)}), {len(df)} usable opening-turn "
        f"pairs; participants with < {cfg.min_user_labels} pairs dropped (data.min_user_labels)"
        + ("" if survey_users is None else f"; survey: {len(survey_users)} participants")
    )
    rng = np.random.default_rng(cfg.seed)
    tables = tables_from_judgments(df, cfg, summary, cfg.min_user_labels, rng)
    summary.notes.append(shared_pairs_note(tables))
    return tables
