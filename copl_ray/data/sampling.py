"""User sampling shared by every group-labelled source (synthetic, UF-P, own data with groups).

Given a pool of pairs with one label per preference group (``label_<g>`` = +1 when the
group prefers ``response_a``) and a per-pair held-out-prompt flag:

* seen users are split evenly over the groups (contiguous blocks, as the official code);
* **ALL**: every seen user draws exactly ``n`` distinct survey-pool pairs; **AVG**:
  ``k ~ U{1, ..., 2n-1}`` pairs;
* with ``val_pair``, one of the user's labels goes to split ``val`` (ALL: always;
  AVG: when ``k >= n``, the official rule), the rest to ``survey`` -- so ALL gives
  ``n-1`` survey + 1 val = ``n``;
* seen users get ``test_pairs_seen`` test pairs, unseen users (``n_unseen_users``,
  evenly over groups) ``n`` survey labels (their adaptation labels) and
  ``test_pairs_unseen`` test pairs; test pairs come from HELD-OUT prompts and carry the
  user's OWN group label (fixes official bug B1), so they never overlap a survey set;
* an optional ``label_noise`` flips each of a user's labels independently (survey, val
  and test alike), which makes ``1 - label_noise`` the Bayes-optimal accuracy.

Everything is vectorised numpy and deterministic given the ``rng``.
:func:`split_user_annotations` is the counterpart for sources where users bring their
own labels (own data, UKPConvArg1).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from copl_ray.config import DataConfig
from copl_ray.data.tables import DataSummary, label_column
from copl_ray.data.validate import DataError

SPLIT_CODES = np.array(["survey", "val", "test"], dtype=object)


def even_split(n: int, n_bins: int) -> np.ndarray:
    """Sizes of ``n_bins`` near-equal bins summing to ``n`` (first bins get the remainder)."""
    base, rem = divmod(n, n_bins)
    return np.array([base + (i < rem) for i in range(n_bins)], dtype=np.int64)


def user_ids(prefix: str, n: int) -> np.ndarray:
    width = max(5, len(str(max(n - 1, 0))))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(n)], dtype=object)


def take_strings(values: np.ndarray, index: np.ndarray) -> pd.Series:
    """``values[index]`` as a pandas string Series, built in Arrow (fast for millions)."""
    import pyarrow as pa

    arr = pa.array(values, pa.string()).take(pa.array(np.asarray(index, dtype=np.int64)))
    return pd.Series(arr.to_pandas(), dtype="str") if len(index) else pd.Series([], dtype="str")


def distinct_draws(
    rng: np.random.Generator, pool_size: int, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each row ``u``, ``counts[u]`` distinct uniform positions in ``[0, pool_size)``.

    Returns flat ``(row, position)`` arrays, row-major, positions in random order within
    a row. Sparse draws use rejection of within-row duplicates (few collisions when
    ``counts << pool_size``); dense draws take the first ``K`` of a random permutation.
    """
    counts = np.asarray(counts, dtype=np.int64)
    n_rows = len(counts)
    k_max = int(counts.max()) if n_rows else 0
    if k_max == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if k_max > pool_size:
        raise ValueError(f"cannot draw {k_max} distinct items from a pool of {pool_size}")
    if 4 * k_max > pool_size:
        draws = np.empty((n_rows, k_max), dtype=np.int64)
        chunk = max(1, 2_000_000 // max(pool_size, 1))
        for s in range(0, n_rows, chunk):
            keys = rng.random((min(chunk, n_rows - s), pool_size))
            draws[s : s + chunk] = np.argsort(keys, axis=1)[:, :k_max]
    else:
        draws = rng.integers(0, pool_size, size=(n_rows, k_max))
        while True:
            order = np.argsort(draws, axis=1, kind="stable")
            srt = np.take_along_axis(draws, order, axis=1)
            dup_sorted = np.zeros_like(draws, dtype=bool)
            dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
            if not dup_sorted.any():
                break
            dup = np.zeros_like(dup_sorted)
            np.put_along_axis(dup, order, dup_sorted, axis=1)
            draws[dup] = rng.integers(0, pool_size, size=int(dup.sum()))
    keep = np.arange(k_max)[None, :] < counts[:, None]
    rows = np.broadcast_to(np.arange(n_rows)[:, None], draws.shape)[keep]
    return rows.astype(np.int64), draws[keep]


def _capped(counts: np.ndarray, pool: int, what: str, summary: DataSummary) -> np.ndarray:
    if len(counts) and counts.max() > pool:
        summary.notes.append(
            f"{what}: only {pool} candidate pairs, capped {int((counts > pool).sum())} user(s) "
            f"from {int(counts.max())} to {pool}"
        )
        summary.drop(f"{what}_capped", int(np.clip(counts - pool, 0, None).sum()))
        return np.minimum(counts, pool)
    return counts


def heldout_prompts(n_prompts: int, frac: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of held-out prompts: ``round(frac * n)`` of them (>= 1 when frac > 0)."""
    if not 0 <= frac < 1:
        raise DataError(f"data.heldout_prompt_frac: must be in [0, 1), got {frac}")
    n_out = int(round(frac * n_prompts))
    if frac > 0 and n_prompts > 1:
        n_out = min(max(n_out, 1), n_prompts - 1)
    mask = np.zeros(n_prompts, dtype=bool)
    mask[rng.permutation(n_prompts)[:n_out]] = True
    return mask


def select_group_pairs(
    groups: list[str],
    prompt_id: np.ndarray,
    response_a: np.ndarray,
    response_b: np.ndarray,
    labels: np.ndarray,
    controversial: np.ndarray,
    pool_ok: np.ndarray,
    heldout: np.ndarray,
    cfg: DataConfig,
    summary: DataSummary,
    drop_reason: str,
    keep: np.ndarray | bool = True,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The ``pairs`` table of group-labelled candidate pairs, with its survey and test masks.

    Over the candidate pairs (``labels[i, j]`` = ±1 label of ``groups[j]``; ``keep`` = the
    pair survived earlier filters), the survey pool and the test candidates are

    * ``survey = keep & ~heldout & pool_ok``,
    * ``test = keep & heldout & (pool_ok if data.test_pool == "pool" else True)``.

    Kept non-held-out pairs failing ``pool_ok`` are counted as ``drop_reason`` (with
    ``test_pool=pool`` the held-out ones as ``<drop_reason>_heldout``). The table keeps
    ``survey | test`` in candidate order, numbered ``pair_id = 0..P-1``, with one
    ``label_<g>`` int8 column per group. Sets ``summary.n_pool_pairs``; returns
    ``(pairs, survey_mask, test_mask)``, the masks over the rows of ``pairs`` (the inputs
    of :func:`sample_group_users`).
    """
    test_filter = pool_ok if cfg.test_pool == "pool" else True
    in_pool = keep & ~heldout & pool_ok
    in_test = keep & heldout & test_filter
    summary.drop(drop_reason, int((keep & ~heldout & ~pool_ok).sum()))
    if cfg.test_pool == "pool":
        summary.drop(f"{drop_reason}_heldout", int((keep & heldout & ~pool_ok).sum()))
    sel = in_pool | in_test
    pairs = pd.DataFrame(
        {
            "pair_id": np.arange(int(sel.sum()), dtype=np.int64),
            "prompt_id": prompt_id[sel].astype(np.int64),
            "response_a": response_a[sel].astype(np.int64),
            "response_b": response_b[sel].astype(np.int64),
            "controversial": controversial[sel],
            "heldout": heldout[sel],
        }
    )
    for j, g in enumerate(groups):
        pairs[label_column(g)] = labels[sel, j].astype(np.int8)
    summary.n_pool_pairs = int(in_pool.sum())
    return pairs, in_pool[sel], in_test[sel]


def _draw_seen_survey(
    pool_size: int, cfg: DataConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seen users' survey draws: ``(user, pool position, split code)``, row-major.

    ALL: ``k = n`` per user; AVG: ``k ~ U{1, ..., 2n-1}`` (drawn first). With ``val_pair``
    the last draw of each user is their val pair (ALL: everyone; AVG: when ``k >= n``).
    """
    n = cfg.labels_per_user
    if cfg.sampling == "all":
        k = np.full(cfg.n_users, n, dtype=np.int64)
    else:
        k = rng.integers(1, 2 * n, size=cfg.n_users)
    s_user, s_pos = distinct_draws(rng, pool_size, k)
    s_split = np.zeros(len(s_user), dtype=np.int64)
    if cfg.val_pair and len(s_user):
        last = np.r_[s_user[1:] != s_user[:-1], True]
        has_val = k[s_user] >= n
        s_split[last & has_val] = 1
    return s_user, s_pos, s_split


def draw_user_pairs(
    survey_mask: np.ndarray,
    test_mask: np.ndarray,
    cfg: DataConfig,
    rng: np.random.Generator,
    summary: DataSummary,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which pairs each simulated user labels, in which split (the rules of the module doc).

    Users ``0..n_users-1`` are seen, ``n_users..n_users+n_unseen_users-1`` unseen. Returns
    flat ``(user_index, pair_row, split_code)`` (split codes index :data:`SPLIT_CODES`);
    the caller labels each row (by the user's group, or by a simulated user's own reward
    as in copl_ray/data/personalllm.py). Raises :class:`DataError` naming the config field
    when the survey pool cannot give each user ``n`` (AVG: ``2n-1``) distinct pairs.
    """
    n = cfg.labels_per_user
    if n < 1:
        raise DataError(f"data.labels_per_user: must be >= 1, got {n}")
    survey_pool = np.flatnonzero(survey_mask)
    test_pool = np.flatnonzero(test_mask)
    k_need = n if cfg.sampling == "all" else 2 * n - 1
    if len(survey_pool) < k_need:
        raise DataError(
            f"data.labels_per_user: the survey pool has only {len(survey_pool)} pairs but "
            f"sampling={cfg.sampling!r} with n={n} needs {k_need} distinct pairs per user "
            "(use more prompts/data or fewer labels)"
        )

    # ---- seen users
    n_seen, n_unseen = cfg.n_users, cfg.n_unseen_users
    s_user, s_pos, s_split = _draw_seen_survey(len(survey_pool), cfg, rng)
    t_counts = _capped(
        np.full(n_seen, cfg.test_pairs_seen, np.int64), len(test_pool), "test_pairs_seen", summary
    )
    t_user, t_pos = distinct_draws(rng, len(test_pool), t_counts)

    # ---- unseen users: n adaptation (survey) labels + test pairs
    us_user, us_pos = distinct_draws(rng, len(survey_pool), np.full(n_unseen, n, np.int64))
    ut_counts = _capped(
        np.full(n_unseen, cfg.test_pairs_unseen, np.int64),
        len(test_pool),
        "test_pairs_unseen",
        summary,
    )
    ut_user, ut_pos = distinct_draws(rng, len(test_pool), ut_counts)

    user_idx = np.concatenate([s_user, t_user, n_seen + us_user, n_seen + ut_user])
    pair_row = np.concatenate(
        [survey_pool[s_pos], test_pool[t_pos], survey_pool[us_pos], test_pool[ut_pos]]
    )
    split = np.concatenate(
        [
            s_split,
            np.full(len(t_user), 2),
            np.zeros(len(us_user), np.int64),
            np.full(len(ut_user), 2),
        ]
    )
    return user_idx, pair_row, split


def labelled_annotations(
    pairs: pd.DataFrame,
    ids: np.ndarray,
    user_idx: np.ndarray,
    pair_row: np.ndarray,
    split: np.ndarray,
    lab: np.ndarray,
) -> pd.DataFrame:
    """The ``annotations`` table of :func:`draw_user_pairs`' rows labelled ``lab`` (+1:
    the user prefers ``response_a``), in a stable order: user, then survey, val, test."""
    a = pairs["response_a"].to_numpy(dtype=np.int64)[pair_row]
    b = pairs["response_b"].to_numpy(dtype=np.int64)[pair_row]
    order = np.lexsort((split, user_idx))
    return pd.DataFrame(
        {
            "user_id": take_strings(ids, user_idx[order]),
            "pair_id": pairs["pair_id"].to_numpy(dtype=np.int64)[pair_row[order]],
            "chosen": np.where(lab > 0, a, b)[order],
            "rejected": np.where(lab > 0, b, a)[order],
            "split": take_strings(SPLIT_CODES, split[order]),
        }
    )


def sample_group_users(
    pairs: pd.DataFrame,
    groups: list[str],
    survey_mask: np.ndarray,
    test_mask: np.ndarray,
    cfg: DataConfig,
    rng: np.random.Generator,
    summary: DataSummary,
    label_noise: float = 0.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sample seen + unseen users over ``groups``; returns ``(annotations, users)``.

    ``survey_mask`` marks the survey pool (never held-out prompts); ``test_mask`` the
    test candidates (held-out prompts only). Raises :class:`DataError` naming the config
    field when the survey pool cannot give each user ``n`` (AVG: ``2n-1``) distinct pairs.
    """
    survey_mask = np.asarray(survey_mask, dtype=bool)
    test_mask = np.asarray(test_mask, dtype=bool)
    heldout = pairs["heldout"].to_numpy(dtype=bool)
    if (survey_mask & heldout).any():
        raise AssertionError("survey pool contains held-out prompts")
    if (test_mask & ~heldout).any():
        raise AssertionError("test pool contains non-held-out prompts")
    n_groups = len(groups)
    if n_groups == 0:
        raise DataError("data.n_groups: group sampling needs at least one preference group")
    user_idx, pair_row, split = draw_user_pairs(survey_mask, test_mask, cfg, rng, summary)
    n_seen, n_unseen = cfg.n_users, cfg.n_unseen_users
    seen_group = np.repeat(np.arange(n_groups), even_split(n_seen, n_groups))
    unseen_group = np.repeat(np.arange(n_groups), even_split(n_unseen, n_groups))
    all_group = np.concatenate([seen_group, unseen_group])
    labels = np.stack([pairs[label_column(g)].to_numpy(dtype=np.int64) for g in groups], axis=1)
    lab = labels[pair_row, all_group[user_idx]]
    if label_noise > 0:
        flip = rng.random(len(lab)) < label_noise
        lab = np.where(flip, -lab, lab)
    ids = np.concatenate([user_ids("user", n_seen), user_ids("unseen", n_unseen)])
    annotations = labelled_annotations(pairs, ids, user_idx, pair_row, split, lab)
    group_names = np.array(groups, dtype=object)
    users = pd.DataFrame(
        {
            "user_id": ids,
            "seen": np.r_[np.ones(n_seen, bool), np.zeros(n_unseen, bool)],
            "group": group_names[all_group],
        }
    )
    return annotations, users


def _drop_users_without_survey(
    ann: pd.DataFrame, users_sorted: np.ndarray, unseen: set, summary: DataSummary
) -> tuple[pd.DataFrame, np.ndarray, set]:
    """Drop users with no ``survey`` label (counted ``user_without_adaptation_labels``).

    Only a given ``split`` column can cause it (the automatic split keeps one survey label
    per user), e.g. a user whose rows are all ``test``. Such a user is dropped rather than
    kept: unseen, the adaptation has no label to place them (the "personalised" score would
    be the population fallback, reported as adaptation accuracy); seen, the GNN and the
    reward models have nothing of theirs to train on. Either way their test labels would
    measure no personalisation, so counting them as a drop is the honest summary.
    """
    has_survey = set(ann.loc[ann["split"] == "survey", "user_id"])
    lost = [u for u in users_sorted if u not in has_survey]
    if not lost:
        return ann, users_sorted, unseen
    summary.drop("user_without_adaptation_labels", len(lost))
    gone = ann["user_id"].isin(set(lost))
    summary.drop("annotation_of_dropped_user", int(gone.sum()))
    keep_users = np.array([u for u in users_sorted if u in has_survey], dtype=object)
    return ann[~gone].reset_index(drop=True), keep_users, unseen - set(lost)


def _drop_small_users(
    ann: pd.DataFrame, preset_split: pd.Series | None, min_labels: int, summary: DataSummary
) -> tuple[pd.DataFrame, pd.Series | None, np.ndarray]:
    """Drop users with fewer than ``min_labels`` labels (counted); returns the kept rows,
    their given splits and the kept user ids, sorted. No user left is a one-line error."""
    counts = ann.groupby("user_id", sort=True).size()
    small = counts[counts < min_labels]
    if len(small):
        summary.drop("user_below_min_labels", len(small))
        summary.drop("annotation_of_dropped_user", int(small.sum()))
        keep = ~ann["user_id"].isin(small.index)
        ann = ann[keep].reset_index(drop=True)
        if preset_split is not None:
            preset_split = preset_split.reset_index(drop=True)[keep.to_numpy()].reset_index(
                drop=True
            )
        counts = counts[counts >= min_labels]
    if len(counts) == 0:
        raise DataError(
            f"no user has >= {min_labels} usable labels (see the config field that sets the "
            "minimum: data.ukp_min_labels / data.own_min_labels / data.min_user_labels)"
        )
    return ann, preset_split, np.array(counts.index, dtype=object)


def _pick_unseen(
    users_sorted: np.ndarray,
    cfg: DataConfig,
    rng: np.random.Generator,
    summary: DataSummary,
    user_group: pd.Series | None,
) -> set:
    """The held-out (unseen) users: ``min(n_unseen_users, n // 2)`` of them, so most users
    stay seen; drawn uniformly, or evenly over ``user_group``'s groups (each group keeps at
    least one seen member)."""
    n_unseen = min(cfg.n_unseen_users, len(users_sorted) // 2)
    if n_unseen < cfg.n_unseen_users:
        summary.notes.append(
            f"data.n_unseen_users={cfg.n_unseen_users} but only {len(users_sorted)} users; "
            f"held out {n_unseen}"
        )
    if user_group is None:
        return set(rng.choice(users_sorted, size=n_unseen, replace=False).tolist())
    grp = user_group.reindex(users_sorted)
    names = sorted(grp.dropna().unique())
    unseen: set = set()
    for name, k in zip(names, even_split(n_unseen, max(len(names), 1))):
        members = np.array(grp.index[grp == name], dtype=object)
        k = min(int(k), max(len(members) - 1, 0))
        unseen |= set(rng.choice(members, size=k, replace=False).tolist())
    return unseen


def _auto_split(
    ann: pd.DataFrame, given: np.ndarray, is_unseen: np.ndarray, cfg: DataConfig, test_frac: float
) -> np.ndarray:
    """Split codes of the (already shuffled) rows by their rank within the user.

    Only rows without a given split (``~given``) are ranked, so a user with any such row
    keeps a survey label whatever the given rows say. With ``m`` such rows, ranks
    ``< n_test = min(max(1, round(test_frac * m)), cap, m - 1)`` are ``test`` (``cap`` =
    ``test_pairs_seen`` / ``test_pairs_unseen``); rank ``n_test`` of a seen user is ``val``
    when ``val_pair`` and ``m - n_test >= 2``; the rest ``survey``.
    """
    auto_users = ann.loc[~given, "user_id"]
    rank = np.zeros(len(ann), dtype=np.int64)
    rank[~given] = auto_users.groupby(auto_users, sort=False).cumcount().to_numpy()
    m = ann["user_id"].map(auto_users.value_counts()).fillna(0).astype(np.int64).to_numpy()
    cap = np.where(is_unseen, cfg.test_pairs_unseen, cfg.test_pairs_seen)
    n_test = np.minimum(np.maximum(1, np.round(test_frac * m).astype(np.int64)), cap)
    n_test = np.minimum(n_test, m - 1)  # keep at least one non-test label per user
    split = np.where(rank < n_test, 2, 0)
    if cfg.val_pair:
        split = np.where((rank == n_test) & ~is_unseen & (m - n_test >= 2), 1, split)
    return split


def _users_frame(
    users_sorted: np.ndarray, unseen: set, user_group: pd.Series | None
) -> pd.DataFrame:
    """The ``users`` table: id, seen flag, group (null when the source has no groups)."""
    return pd.DataFrame(
        {
            "user_id": users_sorted,
            "seen": [u not in unseen for u in users_sorted],
            "group": (
                pd.Series([None] * len(users_sorted), dtype=object)
                if user_group is None
                else user_group.reindex(users_sorted).astype(object).to_numpy()
            ),
        }
    )


def split_user_annotations(
    ann: pd.DataFrame,
    cfg: DataConfig,
    rng: np.random.Generator,
    summary: DataSummary,
    test_frac: float,
    min_labels: int,
    preset_split: pd.Series | None = None,
    user_group: pd.Series | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split users who bring their own labels into seen/unseen and survey/val/test.

    ``ann`` has ``user_id, pair_id, chosen, rejected`` (one row per judgment). Users with
    fewer than ``min_labels`` labels are dropped (counted). ``n_unseen_users`` users are
    held out entirely (chosen at random). Each user's labels are shuffled; the first
    ``max(1, round(test_frac * m))`` become ``test`` (seen users: at most
    ``test_pairs_seen``; unseen: at most ``test_pairs_unseen``); of the rest a seen user
    gives one ``val`` label when ``val_pair``; everything else is ``survey``. Rows whose
    ``preset_split`` is given (own data's optional ``split`` column) keep that split; the
    automatic split then applies to the user's other rows only (``m`` counts those).
    ``user_group`` (user_id -> group) makes the unseen users even over groups and fills
    ``users.group``; without it ``users.group`` is null. A user whom the given splits
    leave without a ``survey`` label is dropped (counted, see
    :func:`_drop_users_without_survey`). Random draws, in order: the unseen users, then
    one permutation of the rows.
    """
    ann, preset_split, users_sorted = _drop_small_users(
        ann.reset_index(drop=True), preset_split, min_labels, summary
    )
    unseen = _pick_unseen(users_sorted, cfg, rng, summary, user_group)
    perm = rng.permutation(len(ann))  # shuffle rows; the split ranks within a user
    ann = ann.iloc[perm].reset_index(drop=True)
    if preset_split is not None:
        preset_split = preset_split.iloc[perm].reset_index(drop=True)
    given = (
        preset_split.notna().to_numpy() if preset_split is not None else np.zeros(len(ann), bool)
    )
    is_unseen = ann["user_id"].isin(unseen).to_numpy()
    split_names = SPLIT_CODES[_auto_split(ann, given, is_unseen, cfg, test_frac)]
    if preset_split is not None:
        split_names = np.where(given, preset_split.to_numpy(dtype=object), split_names)
    ann["split"] = split_names
    ann, users_sorted, unseen = _drop_users_without_survey(ann, users_sorted, unseen, summary)
    order = np.lexsort(
        (
            pd.Categorical(ann["split"], categories=list(SPLIT_CODES)).codes,
            ann["user_id"].to_numpy(dtype=str),
        )
    )
    ann = ann.iloc[order].reset_index(drop=True)
    users = _users_frame(users_sorted, unseen, user_group)
    return ann[["user_id", "pair_id", "chosen", "rejected", "split"]], users
