"""Data stage: build the four canonical tables from the configured source and write them.

``build_tables(cfg)`` dispatches on ``cfg.data.source`` (synthetic | ufp | own | ukp | tldr |
prism | personalllm) and fills the common summary statistics; ``run_data_stage(cfg, run)``
writes ``run.data``.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from copl_ray.artifacts import RunDir
from copl_ray.config import Config, ConfigError
from copl_ray.data.tables import PreferenceTables
from copl_ray.data.validate import DataError


def finalize_summary(tables: PreferenceTables) -> PreferenceTables:
    """Fill the counts of ``tables.summary`` from the tables themselves."""
    s = tables.summary
    users, ann, pairs = tables.users, tables.annotations, tables.pairs
    s.n_users_seen = int(users["seen"].sum())
    s.n_users_unseen = int((~users["seen"].astype(bool)).sum())
    s.n_responses = len(tables.responses)
    s.n_pairs = len(pairs)
    s.n_annotations = {sp: int((ann["split"] == sp).sum()) for sp in ("survey", "val", "test")}
    seen_ids = users.loc[users["seen"].astype(bool), "user_id"]
    per_user = (  # groupby + reindex: fast on millions of string ids (isin is not)
        ann[ann["split"] != "test"].groupby("user_id").size().reindex(seen_ids, fill_value=0)
    )
    if len(per_user):
        s.labels_per_user = {
            "min": float(per_user.min()),
            "median": float(per_user.median()),
            "max": float(per_user.max()),
            "mean": round(float(per_user.mean()), 3),
        }
    contr = pairs["controversial"]
    known = contr.notna()
    s.controversial_share = (
        round(float(contr[known].astype(bool).mean()), 4) if known.any() else None
    )
    if tables.groups and not s.groups:
        s.groups = tables.groups
    if s.controversial_definition is None and known.any():  # synthetic, UF-P: by group labels
        s.controversial_definition = "the preference groups' labels disagree"
    return tables


def _normalise_dtypes(t: PreferenceTables) -> PreferenceTables:
    for c in ("pair_id", "prompt_id", "response_a", "response_b"):
        t.pairs[c] = t.pairs[c].astype(np.int64)
    t.pairs["heldout"] = t.pairs["heldout"].astype(bool)
    if t.pairs["controversial"].isna().any():
        t.pairs["controversial"] = t.pairs["controversial"].astype("boolean")
    else:
        t.pairs["controversial"] = t.pairs["controversial"].astype(bool)
    t.users["group"] = t.users["group"].astype(object)
    t.users = t.users.reset_index(drop=True)
    t.annotations = t.annotations.reset_index(drop=True)
    return t


# public real-data sets read by name or local path (copl_ray/data/hub.py): source -> builder
REAL_BUILDERS = {
    "tldr": ("copl_ray.data.tldr", "build_tldr"),
    "prism": ("copl_ray.data.prism", "build_prism"),
    "personalllm": ("copl_ray.data.personalllm", "build_personalllm"),
}


def build_tables(cfg: Config) -> PreferenceTables:
    """Build ``PreferenceTables`` for ``cfg.data.source``; raises ``DataError`` on bad input."""
    src = cfg.data.source
    if src == "synthetic":
        from copl_ray.data.synthetic import build_synthetic

        tables = build_synthetic(cfg.data)
    elif src == "ufp":
        from copl_ray.data.ufp import build_ufp

        tables = build_ufp(cfg.data)
    elif src == "own":
        from copl_ray.data.own import build_own

        tables = build_own(cfg.data)
    elif src == "ukp":
        from copl_ray.data.ukp import build_ukp

        tables = build_ukp(cfg.data)
    elif src in REAL_BUILDERS:
        import importlib

        module, fn = REAL_BUILDERS[src]
        tables = getattr(importlib.import_module(module), fn)(cfg.data)
    else:  # config validation makes this unreachable
        raise ConfigError(f"data.source: unknown source {src!r}")
    return check_trainable(finalize_summary(_normalise_dtypes(tables)))


MIN_SEEN_USERS = 2


def check_trainable(tables: PreferenceTables) -> PreferenceTables:
    """Fail the data stage (one line) when the tables cannot train the GNN.

    The GNN learns users from each other: with fewer than 2 seen users it would run and
    then fail later (t-SNE, clustering, adaptation); say it here, before any training.
    """
    s = tables.summary
    if s.n_users_seen < MIN_SEEN_USERS:
        drops = ", ".join(f"{k}={v}" for k, v in sorted(s.drops.items())) or "none"
        raise DataError(
            f"data: {s.n_users_seen} seen user(s) after drops and {s.n_users_unseen} held out "
            f"as unseen; training needs >= {MIN_SEEN_USERS} seen users (drops: {drops}; "
            "data.n_unseen_users sets how many are held out)"
        )
    return tables


def run_data_stage(cfg: Config, run: RunDir) -> dict:
    """Build the tables and write them into ``run.data``; returns the summary as a dict."""
    t0 = time.time()
    tables = build_tables(cfg)
    tables.write(run.data)
    out = tables.summary.to_dict()
    out["seconds"] = round(time.time() - t0, 3)
    return out


def table_stats(tables: PreferenceTables) -> pd.DataFrame:
    """Per-user label counts by split (handy for inspection and tests)."""
    return tables.annotations.pivot_table(
        index="user_id", columns="split", values="pair_id", aggfunc="count", fill_value=0
    )
