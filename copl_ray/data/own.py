"""Your own preference data: one parquet / JSONL / CSV file -> the canonical tables.

Columns: ``user_id, prompt, chosen, rejected`` (the TRL / OpenRLHF convention: ``chosen``
and ``rejected`` are response texts) and optionally ``group`` (a user's known preference
group; must be constant per user) and ``split`` (``survey``/``val``/``test`` to fix a
row's split; empty = automatic).

Errors (``DataError`` naming file, row, column): missing file, non-UTF-8 bytes, missing or
unexpected columns, a non-text value in a text column, an unknown ``split``, a user with
two groups. Counted drops: missing user id, null/empty text, chosen == rejected,
duplicate annotations (same user, prompt and pair; the first is kept), users with fewer
than ``data.own_min_labels`` labels (and their labels).

Splits: ``data.n_unseen_users`` users are held out as unseen (even over groups when
known); each user's labels are shuffled and ``data.user_test_frac`` of them (at least 1,
at most ``test_pairs_seen`` / ``test_pairs_unseen``) become ``test``; a seen user gives
one ``val`` label when ``data.val_pair``; the rest are ``survey`` (for unseen users: their
adaptation labels). A pair is ``controversial`` when its annotators disagree (null when
only one user labelled it) and ``heldout`` when no user has it in survey/val.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from copl_ray.config import DataConfig
from copl_ray.data.sampling import split_user_annotations
from copl_ray.data.tables import (
    SPLITS,
    DataSummary,
    PreferenceTables,
    drop_unreferenced_responses,
)
from copl_ray.data.validate import (
    DataError,
    check_columns,
    check_string_column,
    duplicated_unordered,
    null_or_empty_mask,
    read_records,
    resolve_path,
    where,
)

REQUIRED = ("user_id", "prompt", "chosen", "rejected")
OPTIONAL = ("group", "split")


def load_own_frame(cfg: DataConfig, summary: DataSummary) -> tuple[pd.DataFrame, str]:
    path = resolve_path(cfg.path, "data.path")
    rows = read_records(path)
    label = str(path)
    if not rows:
        raise DataError(f"file {label!r}: no rows")
    df = pd.DataFrame.from_records(rows)
    check_columns(df, label, REQUIRED, OPTIONAL)
    for col in ("prompt", "chosen", "rejected", *[c for c in OPTIONAL if c in df]):
        check_string_column(df, label, col)
    # user ids: text or integers (normalised to text); anything else is an error
    uid = df["user_id"].astype(object)
    ok = uid.map(lambda v: v is None or v != v or isinstance(v, (str, int, np.integer)))
    ok &= ~uid.map(lambda v: isinstance(v, bool))
    if not ok.all():
        i = int(np.flatnonzero(~ok.to_numpy())[0])
        raise DataError(f"{where(label, i, 'user_id')}: expected text or integer, got {uid[i]!r}")
    if "split" in df:
        bad = df["split"].notna() & ~df["split"].isin(SPLITS)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{where(label, i, 'split')}: {df['split'][i]!r} is not one of {list(SPLITS)} "
                f"({int(bad.sum())} such row(s))"
            )
    df["_row"] = np.arange(len(df))
    # row-level problems: counted drops
    no_user = null_or_empty_mask(uid)
    summary.drop("missing_user_id", int(no_user.sum()))
    empty = ~no_user & (
        null_or_empty_mask(df["prompt"])
        | null_or_empty_mask(df["chosen"])
        | null_or_empty_mask(df["rejected"])
    )
    summary.drop("empty_text", int(empty.sum()))
    same = ~no_user & ~empty & (df["chosen"] == df["rejected"])
    summary.drop("identical_responses", int(same.sum()))
    users_before = set(uid[~no_user].map(str))
    df = df[~(no_user | empty | same)].copy()
    df["user_id"] = df["user_id"].map(str)
    dup = duplicated_unordered(df, "chosen", "rejected", by=("user_id", "prompt"))
    summary.drop("duplicate_annotation", int(dup.sum()))
    df = df[~dup]
    lost = users_before - set(df["user_id"])
    summary.drop("user_without_usable_annotation", len(lost))
    if df.empty:
        raise DataError(f"file {label!r}: no usable annotation (drops: {summary.drops})")
    return df.reset_index(drop=True), label


def tables_from_judgments(
    df: pd.DataFrame,
    cfg: DataConfig,
    summary: DataSummary,
    min_labels: int,
    rng: np.random.Generator,
    preset_split: pd.Series | None = None,
    user_group: pd.Series | None = None,
) -> PreferenceTables:
    """``df[user_id, prompt, chosen, rejected]`` (texts) -> tables; shared by own data and UKP."""
    prompt_codes, _ = pd.factorize(df["prompt"])
    texts = pd.DataFrame(
        {
            "prompt_id": np.r_[prompt_codes, prompt_codes],
            "prompt": np.r_[df["prompt"].to_numpy(object), df["prompt"].to_numpy(object)],
            "text": np.r_[df["chosen"].to_numpy(object), df["rejected"].to_numpy(object)],
        }
    )
    codes, _ = pd.factorize(pd.MultiIndex.from_frame(texts[["prompt_id", "text"]]))
    responses = texts.drop_duplicates(["prompt_id", "text"]).reset_index(drop=True)
    responses.insert(0, "response_id", np.arange(len(responses), dtype=np.int64))
    n = len(df)
    chosen, rejected = codes[:n].astype(np.int64), codes[n:].astype(np.int64)
    a, b = np.minimum(chosen, rejected), np.maximum(chosen, rejected)
    pair_codes, pair_uniques = pd.factorize(pd.MultiIndex.from_arrays([a, b]))
    ann = pd.DataFrame(
        {
            "user_id": df["user_id"].to_numpy(object),
            "pair_id": pair_codes.astype(np.int64),
            "chosen": chosen,
            "rejected": rejected,
        }
    )
    # controversial: annotators disagree, over every usable judgment in the input (also of
    # users dropped below the label minimum); known only with >= 2 annotators
    prefers_a = chosen == a
    stats = pd.DataFrame({"pair_id": pair_codes, "a": prefers_a}).groupby("pair_id")["a"]
    n_ann, n_a = stats.size(), stats.sum()
    contr = pd.Series(pd.NA, index=np.arange(len(pair_uniques)), dtype="boolean")
    known = n_ann[n_ann >= 2].index
    contr[known] = ((n_a[known] > 0) & (n_a[known] < n_ann[known])).to_numpy()
    ann, users = split_user_annotations(
        ann, cfg, rng, summary, cfg.user_test_frac, min_labels, preset_split, user_group
    )
    pa_, pb_ = (np.array(x, dtype=np.int64) for x in zip(*pair_uniques.tolist()))
    pairs = pd.DataFrame(
        {
            "pair_id": np.arange(len(pair_uniques), dtype=np.int64),
            "prompt_id": responses["prompt_id"].to_numpy()[pa_].astype(np.int64),
            "response_a": pa_,
            "response_b": pb_,
        }
    )
    pairs["controversial"] = contr.to_numpy()
    trained = set(ann.loc[ann["split"] != "test", "pair_id"])
    pairs["heldout"] = ~pairs["pair_id"].isin(trained)
    # keep only pairs/responses still referenced (users below the minimum were dropped)
    used_pairs = np.unique(ann["pair_id"])
    pairs = pairs[pairs["pair_id"].isin(used_pairs)].reset_index(drop=True)
    pid_map = pd.Series(np.arange(len(pairs), dtype=np.int64), index=pairs["pair_id"])
    ann["pair_id"] = pid_map[ann["pair_id"]].to_numpy()
    pairs["pair_id"] = np.arange(len(pairs), dtype=np.int64)
    responses, pairs, rmap = drop_unreferenced_responses(responses, pairs)
    for c in ("chosen", "rejected"):
        ann[c] = rmap[ann[c]]
    summary.n_pool_pairs = int((~pairs["heldout"]).sum())
    return PreferenceTables(responses, pairs, ann, users, summary)


def build_own(cfg: DataConfig) -> PreferenceTables:
    summary = DataSummary(source="own")
    df, label = load_own_frame(cfg, summary)
    rng = np.random.default_rng(cfg.seed)
    user_group = None
    if "group" in df and df["group"].notna().any():
        per_user = df.groupby("user_id")["group"].nunique(dropna=False)
        if (per_user > 1).any():
            u = per_user.index[per_user > 1][0]
            rows = df.loc[df["user_id"] == u, ["_row", "group"]].drop_duplicates("group")
            raise DataError(
                f"{where(label, int(rows['_row'].iloc[1]), 'group')}: user {u!r} has several "
                f"groups {rows['group'].tolist()} (a user belongs to one group)"
            )
        user_group = df.groupby("user_id")["group"].first()
        summary.groups = sorted(user_group.dropna().unique().tolist())
    preset = df["split"] if "split" in df else None
    return tables_from_judgments(df, cfg, summary, cfg.own_min_labels, rng, preset, user_group)
