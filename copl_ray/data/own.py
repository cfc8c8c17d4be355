"""Your own preference data: one parquet / JSONL / CSV file -> the canonical tables.

Columns: ``user_id, prompt, chosen, rejected`` (the TRL / OpenRLHF convention: ``chosen``
and ``rejected`` are response texts) and optionally ``group`` (a user's known preference
group; must be constant per user) and ``split`` to fix a row's split: ``survey``/``val``/
``test`` or the Hugging Face / TRL names ``train`` (= survey), ``validation``/``valid``/
``dev`` (= val), case and surrounding spaces ignored; empty = automatic.

Errors (``DataError`` naming file, row, column): missing file, non-UTF-8 bytes, missing or
unexpected columns, a non-text value in a text column, an unknown ``split``, a user with
two groups. Counted drops: missing user id, null/empty text, a text longer than
``data.max_text_chars`` (``text_too_long``), chosen == rejected, duplicate annotations
(same user, prompt and pair; the first is kept), users with fewer than
``data.own_min_labels`` labels (and their labels), users left without a ``survey`` label
by a given ``split`` column (``user_without_adaptation_labels``: see
:func:`copl_ray.data.sampling.split_user_annotations`).

Splits: ``data.n_unseen_users`` users are held out as unseen (even over groups when
known); each user's labels are shuffled and ``data.user_test_frac`` of them (at least 1,
at most ``test_pairs_seen`` / ``test_pairs_unseen``) become ``test``; a seen user gives
one ``val`` label when ``val_pair``; the rest are ``survey`` (for unseen users: their
adaptation labels). A pair is ``controversial`` when its minority side holds at least
``data.controversial_min_share`` of its annotators (:func:`controversial_pairs`; null
with fewer than 2 annotators) and ``heldout`` when no user has it in survey/val.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from copl_ray.config import DataConfig, short_repr
from copl_ray.data.sampling import split_user_annotations
from copl_ray.data.tables import (
    DataSummary,
    PreferenceTables,
    keep_annotated,
)
from copl_ray.data.validate import (
    DataError,
    check_columns,
    check_string_column,
    duplicated_unordered,
    null_or_empty_mask,
    read_records,
    resolve_path,
    too_long_mask,
    where,
)

REQUIRED = ("user_id", "prompt", "chosen", "rejected")
OPTIONAL = ("group", "split")
# accepted spellings of the split column (lower-cased, stripped) -> the canonical split
SPLIT_SYNONYMS: dict[str, str] = {
    "survey": "survey",
    "train": "survey",
    "val": "val",
    "validation": "val",
    "valid": "val",
    "dev": "val",
    "test": "test",
}
MIN_CONTROVERSY_ANNOTATORS = 2


def normalise_split(values: pd.Series, label: str) -> pd.Series:
    """The ``split`` column in canonical names (null = automatic); unknown values: error."""
    text = values.map(lambda v: v.strip().lower() if isinstance(v, str) else v)
    text = text.where(~text.isin([""]), None)  # blank = automatic, like an empty CSV cell
    canon = text.map(SPLIT_SYNONYMS)
    bad = text.notna() & canon.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{where(label, i, 'split')}: {short_repr(values.iloc[i])} is not a split "
            f"({int(bad.sum())} such row(s)); accepted: {', '.join(SPLIT_SYNONYMS)} "
            "(train = survey; validation, valid, dev = val) or empty for automatic"
        )
    return canon.astype(object).where(canon.notna(), None)


def drop_unusable_judgments(
    df: pd.DataFrame, cfg: DataConfig, summary: DataSummary
) -> pd.DataFrame:
    """Rows of ``df[user_id, prompt, chosen, rejected]`` that can train, the rest counted.

    Counted drops, in this order (a row counts once): ``missing_user_id``, ``empty_text``
    (null or blank prompt/response), ``text_too_long`` (over ``data.max_text_chars``),
    ``identical_responses``, ``duplicate_annotation`` (same user, prompt and pair in either
    order; the first is kept); users left with no row: ``user_without_usable_annotation``.
    User ids become text. Shared by own data and the real-data builders (TL;DR, PRISM).
    """
    uid = df["user_id"].astype(object)
    no_user = null_or_empty_mask(uid)
    summary.drop("missing_user_id", int(no_user.sum()))
    empty = ~no_user & (
        null_or_empty_mask(df["prompt"])
        | null_or_empty_mask(df["chosen"])
        | null_or_empty_mask(df["rejected"])
    )
    summary.drop("empty_text", int(empty.sum()))
    long = (
        ~no_user & ~empty & too_long_mask(df, ("prompt", "chosen", "rejected"), cfg.max_text_chars)
    )
    summary.drop("text_too_long", int(long.sum()))
    same = ~no_user & ~empty & ~long & (df["chosen"] == df["rejected"])
    summary.drop("identical_responses", int(same.sum()))
    users_before = set(uid[~no_user].map(str))
    df = df[~(no_user | empty | long | same)].copy()
    df["user_id"] = df["user_id"].map(str)
    dup = duplicated_unordered(df, "chosen", "rejected", by=("user_id", "prompt"))
    summary.drop("duplicate_annotation", int(dup.sum()))
    df = df[~dup]
    lost = users_before - set(df["user_id"])
    summary.drop("user_without_usable_annotation", len(lost))
    return df


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
        raise DataError(
            f"{where(label, i, 'user_id')}: expected text or integer, got {short_repr(uid[i])}"
        )
    if "split" in df:
        df["split"] = normalise_split(df["split"], label)
    df["_row"] = np.arange(len(df))
    df = drop_unusable_judgments(df, cfg, summary)
    if df.empty:
        raise DataError(f"file {label!r}: no usable annotation (drops: {summary.drops})")
    return df.reset_index(drop=True), label


def controversial_definition(min_share: float) -> str:
    """The rule :func:`controversial_pairs` applies, in words (summary.json, report)."""
    return (
        f"annotators' minority side >= {min_share:g} of the pair's annotators "
        f"(data.controversial_min_share; null with < {MIN_CONTROVERSY_ANNOTATORS} annotators)"
    )


def controversial_pairs(
    pair_codes: np.ndarray, prefers_a: np.ndarray, n_pairs: int, min_share: float
) -> pd.Series:
    """Nullable bool per pair: its annotators genuinely split, not merely disagree.

    ``minority share = min(#prefer a, #prefer b) / #annotators``; controversial when it is
    ``>= min_share`` (null with fewer than 2 annotators). Why a share, not "anyone
    disagrees": with independent label noise ε (a user's label flipped with probability
    ε) a pair all users truly agree on has expected minority share ε, so with many
    annotators "anyone disagrees" makes *every* pair controversial (a 2,400-user file
    measured 100 %). A pair whose users truly split with minority share q has expected
    share ``q + ε(1 - 2q) >= q``. The default 0.25 is the midpoint between a noiseless
    consensus (0) and an even split (0.5): it keeps consensus pairs common for any noise
    up to ε ≈ 0.15 with a margin of at least 0.1 in expectation, and keeps every split with
    a true minority of >= 25 % controversial at any noise. With two annotators the share is
    0 or 0.5, i.e. the old rule; with few annotators the binomial spread of the share
    decides, as for any rule.
    """
    df = pd.DataFrame({"pair_id": pair_codes, "a": np.asarray(prefers_a, dtype=bool)})
    stats = df.groupby("pair_id")["a"]
    n_ann, n_a = stats.size(), stats.sum()
    contr = pd.Series(pd.NA, index=np.arange(n_pairs), dtype="boolean")
    known = n_ann[n_ann >= MIN_CONTROVERSY_ANNOTATORS].index
    minority = np.minimum(n_a[known], n_ann[known] - n_a[known]) / n_ann[known]
    contr[known] = (minority >= min_share - 1e-12).to_numpy()
    return contr


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
    # over every usable judgment in the input (also of users dropped below the label minimum)
    contr = controversial_pairs(
        pair_codes, chosen == a, len(pair_uniques), cfg.controversial_min_share
    )
    summary.controversial_definition = controversial_definition(cfg.controversial_min_share)
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
    responses, pairs, ann = keep_annotated(responses, pairs, ann)
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
