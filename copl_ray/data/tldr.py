"""TL;DR summary comparisons with real worker ids: workers are the users.

Source: ``openai/summarize_from_feedback``, config ``comparisons`` (splits ``train``,
``validation``), the human comparisons of Stiennon et al., "Learning to summarize from
human feedback", NeurIPS 2020 (arXiv:2009.01325). The hub card names no licence; the
release's README (github.com/openai/summarize-from-feedback) gives CC BY 4.0 for its
TL;DR data, which builds on the Reddit corpus of Völske et al. (2017). Read by name through ``datasets`` or from local files
(copl_ray/data/hub.py: ``data.path`` a file, or a folder with ``comparisons/``).

Schema, one row per comparison (as the hub ships it):

* ``info``: ``{id, post, title, subreddit, site, article}`` (Reddit rows have ``post``;
  the CNN/DM rows of the validation split have ``article`` and a null ``post``);
* ``summaries``: a list of 2 ``{text, policy, note}``;
* ``choice``: int, 0 or 1, the index of the summary the worker preferred;
* ``worker``: str, the labeller's id; ``batch``: str; ``split``: str (``train``,
  ``valid1``, ``valid2``); ``extra``: ``{confidence}``.

Mapping: user = ``worker``; prompt = the paper's query ``SUBREDDIT: r/… TITLE: … POST: …
TL;DR:``; chosen / rejected = ``summaries[choice]`` / ``summaries[1 - choice]``. Every
split is used; CoPL's own split (copl_ray/data/own.py: unseen workers, each worker's
test labels) replaces the dataset's. Errors (one line naming file/split, row, column): a
missing column, ``summaries`` not a list of two ``{text}``, ``info`` not a mapping.
Counted drops: ``not_tldr_post`` (no ``post``: a CNN/DM article), ``invalid_choice``
(not 0/1), the shared judgment drops (:func:`copl_ray.data.own.drop_unusable_judgments`),
workers with fewer than ``data.min_user_labels`` labels. No known groups.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from copl_ray.config import DataConfig, short_repr
from copl_ray.data.hub import RowSource, dataset_rows, rows_with_columns, sources_label
from copl_ray.data.own import drop_unusable_judgments, tables_from_judgments
from copl_ray.data.tables import DataSummary, PreferenceTables
from copl_ray.data.validate import DataError, where

HUB_NAME = "openai/summarize_from_feedback"
CONFIG = "comparisons"
COLUMNS = ("info", "summaries", "choice", "worker")


def tldr_prompt(info: dict) -> str | None:
    """The paper's query format; None for a row without a Reddit post (CNN/DM)."""
    post = info.get("post")
    if not isinstance(post, str) or not post.strip():
        return None
    return (
        f"SUBREDDIT: r/{info.get('subreddit') or ''}\nTITLE: {info.get('title') or ''}\n"
        f"POST: {post.strip()}\n\nTL;DR:"
    )


def _summary_texts(value, label: str, row: int) -> tuple:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(s, dict) and "text" in s for s in value)
    ):
        raise DataError(
            f"{where(label, row, 'summaries')}: expected a list of 2 {{text, policy, note}}, "
            f"got {short_repr(value)}"
        )
    return value[0]["text"], value[1]["text"]


def comparison_frame(sources: list[RowSource], summary: DataSummary) -> pd.DataFrame:
    """One row per usable comparison: ``user_id, prompt, chosen, rejected``."""
    out: list[tuple] = []
    for label, i, r in rows_with_columns(sources, COLUMNS):
        info = r["info"]
        if not isinstance(info, dict):
            raise DataError(
                f"{where(label, i, 'info')}: expected a mapping, got {short_repr(info)}"
            )
        texts = _summary_texts(r["summaries"], label, i)
        prompt = tldr_prompt(info)
        if prompt is None:
            summary.drop("not_tldr_post")
            continue
        choice = r["choice"]
        if isinstance(choice, bool) or choice not in (0, 1):
            summary.drop("invalid_choice")
            continue
        out.append((r["worker"], prompt, texts[choice], texts[1 - choice]))
    return pd.DataFrame(out, columns=["user_id", "prompt", "chosen", "rejected"])


def build_tldr(cfg: DataConfig) -> PreferenceTables:
    summary = DataSummary(source="tldr")
    sources = dataset_rows(cfg.path, HUB_NAME, CONFIG)
    n_rows = sum(len(s.rows) for s in sources)
    df = comparison_frame(sources, summary)
    df = drop_unusable_judgments(df, cfg, summary).reset_index(drop=True)
    if df.empty:
        raise DataError(f"data.path: no usable TL;DR comparison (drops: {summary.drops})")
    summary.notes.append(
        f"{n_rows} comparisons read ({sources_label(sources)}), {len(df)} usable; "
        f"workers with < {cfg.min_user_labels} usable labels dropped (data.min_user_labels)"
    )
    rng = np.random.default_rng(cfg.seed)
    return tables_from_judgments(df, cfg, summary, cfg.min_user_labels, rng)
