"""UKPConvArg1 (Habernal & Gurevych, ACL 2016): real MTurk workers' pairwise judgments.

Folder ``data.path`` (see its README.md; the data is never copied into the repo) holds
``topics.jsonl``, ``arguments.jsonl`` and ``judgments.jsonl.gz``. Mapping:

* user = ``worker_id``; prompt ``q`` = topic title + description + stance;
  responses = argument texts; ``a1`` -> chosen = ``arg_a``, ``a2`` -> chosen = ``arg_b``;
* ``equal`` judgments are ties: dropped and counted (``tie``); judgments naming an unknown
  argument or topic are counted drops; a worker judging the same pair twice keeps the
  first (``duplicate_annotation``);
* workers with fewer than ``data.ukp_min_labels`` non-tie judgments are dropped (counted);
* ``data.n_unseen_users`` workers are held out as unseen; per-user test pairs are held
  out of each worker's own judgments (``data.user_test_frac``, capped by
  ``test_pairs_seen`` / ``test_pairs_unseen``), see :mod:`copl_ray.data.own`;
* no preference groups (``users.group`` null, no ``label_`` columns);
  ``controversial``: the minority of the pair's non-tie judgments holds at least
  ``data.controversial_min_share`` of them (null with < 2 judgments; see
  :func:`copl_ray.data.own.controversial_pairs`).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd

from copl_ray.config import DataConfig
from copl_ray.data.own import tables_from_judgments
from copl_ray.data.tables import DataSummary, PreferenceTables
from copl_ray.data.validate import DataError, duplicated_unordered, resolve_path, where

FILES = ("topics.jsonl", "arguments.jsonl", "judgments.jsonl.gz")
COLUMNS = {
    "topics.jsonl": ("topic_key", "title", "description"),
    "arguments.jsonl": ("arg_id", "topic_key", "stance", "text"),
    "judgments.jsonl.gz": ("topic_key", "arg_a", "arg_b", "worker_id", "label"),
}


def _read_jsonl(path: Path) -> pd.DataFrame:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{where(path, i)}: invalid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"file {str(path)!r}: not valid UTF-8 ({e})") from None
    except (OSError, EOFError) as e:
        raise DataError(f"file {str(path)!r}: cannot read: {e}") from None
    df = pd.DataFrame.from_records(rows)
    missing = [c for c in COLUMNS[path.name] if c not in df.columns]
    if missing:
        raise DataError(f"file {str(path)!r}: missing column(s) {missing}")
    return df


def topic_prompt(title: str, description: str | None, stance: str) -> str:
    desc = (description or "").strip()
    return (
        f"{title.strip()}\n{desc}\nStance: {stance.strip()}"
        if desc
        else (f"{title.strip()}\nStance: {stance.strip()}")
    )


def build_ukp(cfg: DataConfig) -> PreferenceTables:
    folder = resolve_path(cfg.path, "data.path")
    for name in FILES:
        if not (folder / name).is_file():
            raise DataError(
                f"data.path: {str(folder)!r} has no {name} (expected the UKPConvArg1 folder "
                f"with {', '.join(FILES)})"
            )
    summary = DataSummary(source="ukp")
    topics = _read_jsonl(folder / "topics.jsonl").set_index("topic_key")
    args = _read_jsonl(folder / "arguments.jsonl").set_index("arg_id")
    judg = _read_jsonl(folder / "judgments.jsonl.gz")
    n_all = len(judg)
    is_tie = judg["label"] == "equal"
    summary.drop("tie", int(is_tie.sum()))
    bad_label = ~judg["label"].isin(["a1", "a2", "equal"])
    summary.drop("unknown_label", int(bad_label.sum()))
    judg = judg[~is_tie & ~bad_label]
    known = judg["arg_a"].isin(args.index) & judg["arg_b"].isin(args.index)
    known &= judg["topic_key"].isin(topics.index)
    summary.drop("unknown_argument_or_topic", int((~known).sum()))
    judg = judg[known]
    no_worker = judg["worker_id"].isna() | (judg["worker_id"].astype(str).str.strip() == "")
    summary.drop("missing_user_id", int(no_worker.sum()))
    judg = judg[~no_worker]
    text = args["text"].astype(object)
    ta, tb = text[judg["arg_a"]].to_numpy(), text[judg["arg_b"]].to_numpy()
    first_a = (judg["label"] == "a1").to_numpy()
    stance = args["stance"][judg["arg_a"]].to_numpy()
    top = topics.loc[judg["topic_key"]]
    prompts = [
        topic_prompt(t, d, s)
        for t, d, s in zip(top["title"].to_numpy(), top["description"].to_numpy(), stance)
    ]
    df = pd.DataFrame(
        {
            "user_id": judg["worker_id"].astype(str).to_numpy(),
            "prompt": prompts,
            "chosen": np.where(first_a, ta, tb),
            "rejected": np.where(first_a, tb, ta),
        }
    )
    empty = df["chosen"].isna() | df["rejected"].isna()
    empty |= df["chosen"].astype(str).str.strip().eq("") | df["rejected"].astype(
        str
    ).str.strip().eq("")
    summary.drop("empty_text", int(empty.sum()))
    df = df[~empty]
    same = df["chosen"] == df["rejected"]
    summary.drop("identical_responses", int(same.sum()))
    df = df[~same]
    dup = duplicated_unordered(df, "chosen", "rejected", by=("user_id", "prompt"))
    summary.drop("duplicate_annotation", int(dup.sum()))
    df = df[~dup].reset_index(drop=True)
    summary.notes.append(
        f"{n_all} judgments, {len(df)} usable non-tie; workers with < {cfg.ukp_min_labels} "
        "non-tie judgments dropped (data.ukp_min_labels)"
    )
    rng = np.random.default_rng(cfg.seed)
    return tables_from_judgments(df, cfg, summary, cfg.ukp_min_labels, rng)
