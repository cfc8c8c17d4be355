"""UltraFeedback-P (UF-P) from the real sources (docs/method.md §5; docs/reference-code.md "Data").

Sources (``split="train"``), by HF name through ``datasets`` or from local files:

* ``openbmb/UltraFeedback`` -- rows ``instruction, completions[{response, annotations:
  {helpfulness|honesty|instruction_following|truthfulness: {Rating, ...}}, ...}], ...``;
* ``argilla/ultrafeedback-binarized-preferences-cleaned`` -- rows ``prompt, chosen,
  rejected`` (message lists ``[{content, role}]``), ``chosen-rating``, ... : one pair per
  prompt.

Local files: ``data.ufp_ratings`` / ``data.ufp_pairs`` may name a parquet/JSONL file, or
``data.path`` a folder holding ``UltraFeedback.{parquet,jsonl}`` and
``ultrafeedback-binarized-preferences-cleaned.{parquet,jsonl}`` (the last segment of each
HF name).

Construction: each binarized pair is joined to UltraFeedback by prompt (``instruction ==
prompt``) and exact response text, and gets the four ratings of both responses. Group
``g`` (one per attribute; UF-P-2 = helpfulness, honesty) labels the pair
``sign(rating_a,g - rating_b,g)``; ties: ``tie_policy=coin`` (official) or ``drop`` (drop a
pair tied on any used group). Counted drops: prompt/response not found in UltraFeedback,
``N/A`` ratings, empty text, identical responses, duplicate pairs, token length over
``data.max_tokens`` (either side, text ``format_text(prompt, response)``), pairs on which
all four attributes agree (the official pool; UF-P-2 with
``ufp2_require_disagreement`` also needs helpfulness != honesty). ``controversial`` =
the used groups disagree. ``heldout_prompt_frac`` of the prompts are held out; the
survey pool is the rest (paper: 25,993 pairs for UF-P-4).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from copl_ray.config import DataConfig
from copl_ray.data.sampling import heldout_prompts, sample_group_users, select_group_pairs
from copl_ray.data.tables import (
    DataSummary,
    PreferenceTables,
    drop_unreferenced_responses,
    format_text,
)
from copl_ray.data.validate import (
    DataError,
    duplicated_unordered,
    read_records,
    resolve_path,
    where,
)

ATTRIBUTES = ["helpfulness", "honesty", "instruction_following", "truthfulness"]
GROUPS = {2: ["helpfulness", "honesty"], 4: ATTRIBUTES}
PAPER_POOL = 25_993


# ----------------------------------------------------------------------------- loading
def _source(cfg: DataConfig, name: str, field: str) -> tuple[str, Iterable[dict]]:
    """(label for messages, iterable of row dicts) for a HF name or a local file."""
    if cfg.path:
        folder = resolve_path(cfg.path, "data.path")
        stem = name.rstrip("/").split("/")[-1]
        for ext in (".parquet", ".jsonl", ".json"):
            p = folder / f"{stem}{ext}" if folder.is_dir() else folder
            if p.is_file() and (folder.is_dir() or p.stem == stem):
                return str(p), read_records(p)
        raise DataError(
            f"data.path: no {stem}.parquet/.jsonl in {str(folder)!r} (needed for {field}={name!r})"
        )
    p = Path(name).expanduser()
    if p.is_file() or p.suffix in (".parquet", ".jsonl", ".json"):
        p = resolve_path(name, field)
        return str(p), read_records(p)
    import datasets

    # a hub name, or a local dataset folder (``data/train-*.parquet``): the same call
    try:
        ds = datasets.load_dataset(str(p) if p.is_dir() else name, split="train")
    except Exception as e:  # offline / missing cache / bad name: say which field to fix
        raise DataError(
            f"{field}: cannot load dataset {name!r} ({type(e).__name__}: {e}); set {field} "
            "or data.path to local parquet/jsonl files"
        ) from None
    return name, ds


def _messages_text(value, label: str, row: int, column: str) -> str | None:
    """Assistant text of a ``[{content, role}]`` message list (or a plain string)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(m, dict) for m in value):
        msgs = [m for m in value if m.get("role") == "assistant"] or list(value)
        return msgs[-1].get("content") if msgs else None
    raise DataError(
        f"{where(label, row, column)}: expected a list of {{content, role}} messages, "
        f"got {type(value).__name__}"
    )


def _rating(comp: dict, attr: str, label: str, row: int, j: int):
    ann = comp.get("annotations")
    col = f"completions[{j}].annotations.{attr}.Rating"
    if not isinstance(ann, dict) or attr not in ann:
        raise DataError(f"{where(label, row, col)}: missing")
    a = ann[attr]
    if isinstance(a, list):  # the raw GitHub release stores one-element lists
        a = a[0] if a else {}
    if not isinstance(a, dict) or "Rating" not in a:
        raise DataError(f"{where(label, row, col)}: missing")
    return a["Rating"]


def index_ratings(rows: Iterable[dict], label: str) -> dict[str, list[dict[str, tuple]]]:
    """instruction -> [ {response text -> (4 raw ratings)} per UltraFeedback row ]."""
    index: dict[str, list[dict[str, tuple]]] = {}
    for i, r in enumerate(rows):
        for col in ("instruction", "completions"):
            if col not in r:
                raise DataError(f"{where(label, i, col)}: missing column")
        comps = r["completions"] or []
        if not isinstance(comps, (list, tuple)):
            raise DataError(f"{where(label, i, 'completions')}: expected a list")
        resp: dict[str, tuple] = {}
        for j, c in enumerate(comps):
            if not isinstance(c, dict) or "response" not in c:
                raise DataError(f"{where(label, i, f'completions[{j}].response')}: missing")
            if c["response"] is None:
                continue
            resp.setdefault(c["response"], tuple(_rating(c, a, label, i, j) for a in ATTRIBUTES))
        index.setdefault(r["instruction"], []).append(resp)
    return index


def _parse_rating(v) -> int | None:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None  # "N/A" and friends


def join_pairs(
    rows: Iterable[dict], label: str, index: dict, summary: DataSummary
) -> Iterator[tuple[str, str, str, tuple[int, ...], tuple[int, ...]]]:
    """Yield (prompt, chosen, rejected, ratings_chosen, ratings_rejected); drops counted."""
    for i, r in enumerate(rows):
        for col in ("prompt", "chosen", "rejected"):
            if col not in r:
                raise DataError(f"{where(label, i, col)}: missing column")
        prompt = r["prompt"]
        a = _messages_text(r["chosen"], label, i, "chosen")
        b = _messages_text(r["rejected"], label, i, "rejected")
        if not all(isinstance(x, str) and x.strip() for x in (prompt, a, b)):
            summary.drop("empty_text")
            continue
        if a == b:
            summary.drop("identical_responses")
            continue
        cands = index.get(prompt)
        if not cands:
            summary.drop("prompt_not_in_ultrafeedback")
            continue
        hit = next((c for c in cands if a in c and b in c), None)
        if hit is None:
            summary.drop("response_not_in_ultrafeedback")
            continue
        ra = tuple(_parse_rating(v) for v in hit[a])
        rb = tuple(_parse_rating(v) for v in hit[b])
        if None in ra or None in rb:
            summary.drop("rating_na")
            continue
        yield prompt, a, b, ra, rb


def token_lengths(texts: list[str], tokenizer_name: str | None) -> np.ndarray:
    """Token counts (no special tokens); whitespace words when no tokenizer is configured."""
    if tokenizer_name is None:
        return np.array([len(t.split()) for t in texts], dtype=np.int64)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer_name)
    except Exception as e:
        raise DataError(
            f"data.length_tokenizer: cannot load {tokenizer_name!r} ({type(e).__name__}: {e})"
        ) from None
    out = []
    for s in range(0, len(texts), 2048):
        enc = tok(texts[s : s + 2048], add_special_tokens=False)["input_ids"]
        out += [len(x) for x in enc]
    return np.array(out, dtype=np.int64)


# ----------------------------------------------------------------------------- build
def _joined_pairs(cfg: DataConfig, summary: DataSummary) -> pd.DataFrame:
    """The binarized pairs joined to their UltraFeedback ratings, duplicates dropped.

    Columns ``prompt, a, b, ra, rb`` (``ra``/``rb``: the four ratings of each side); a
    pair of the same two responses of one prompt, in either order, counts once.
    """
    r_label, r_rows = _source(cfg, cfg.ufp_ratings, "data.ufp_ratings")
    index = index_ratings(r_rows, r_label)
    p_label, p_rows = _source(cfg, cfg.ufp_pairs, "data.ufp_pairs")
    joined = list(join_pairs(p_rows, p_label, index, summary))
    del index
    if not joined:
        raise DataError(
            f"{p_label}: no pair could be joined to {r_label} (see drops {summary.drops})"
        )
    df = pd.DataFrame(joined, columns=["prompt", "a", "b", "ra", "rb"])
    dup = duplicated_unordered(df, "a", "b", by=("prompt",))
    summary.drop("duplicate_pair", int(dup.sum()))
    return df[~dup].reset_index(drop=True)


def _oriented_labels(
    df: pd.DataFrame,
    gidx: list[int],
    cfg: DataConfig,
    rng: np.random.Generator,
    summary: DataSummary,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair, per-attribute labels ``sign(rating_a - rating_b)`` and the kept-pair mask.

    A coin (one draw per (pair, attribute), taken from ``rng`` whatever the policy) breaks
    ties; with ``tie_policy=drop`` a pair tied on any used group is dropped instead (the
    unused attributes' ties stay coin-flipped: they only feed the pool flag). Pairs with
    either side over ``data.max_tokens`` tokens are dropped too.
    """
    diff = np.sign(np.array(df["ra"].tolist()) - np.array(df["rb"].tolist()))
    tie = diff == 0
    coin = rng.choice(np.array([-1, 1]), size=diff.shape)
    keep = np.ones(len(df), dtype=bool)
    if cfg.tie_policy == "drop":
        keep = ~tie[:, gidx].any(axis=1)
        summary.drop("tie", int((~keep).sum()))
    else:
        summary.notes.append(f"{int(tie[:, gidx].sum())} tied (pair, group) labels coin-flipped")
    diff = np.where(tie, coin, diff)
    texts_a = [format_text(p, a) for p, a in zip(df["prompt"], df["a"])]
    texts_b = [format_text(p, b) for p, b in zip(df["prompt"], df["b"])]
    lens = token_lengths(texts_a + texts_b, cfg.length_tokenizer)
    too_long = keep & ((lens[: len(df)] > cfg.max_tokens) | (lens[len(df) :] > cfg.max_tokens))
    summary.drop("too_long", int(too_long.sum()))
    return diff, keep & ~too_long


def _response_table(
    df: pd.DataFrame,
) -> tuple[pd.DataFrame, np.ndarray, int, np.ndarray, np.ndarray]:
    """The ``responses`` table (one row per distinct (prompt, text)) of the kept pairs.

    Returns ``(responses, prompt_codes, n_prompts, response_id_a, response_id_b)``; prompt
    codes and response ids number first appearances in pair order (a side before b side).
    """
    prompt_codes, prompt_uniques = pd.factorize(df["prompt"])
    resp = pd.DataFrame(
        {
            "prompt_id": np.r_[prompt_codes, prompt_codes],
            "prompt": np.r_[df["prompt"], df["prompt"]],
            "text": np.r_[df["a"], df["b"]],
        }
    )
    key = pd.MultiIndex.from_frame(resp[["prompt_id", "text"]])
    resp_codes, _ = pd.factorize(key)
    responses = resp.drop_duplicates(["prompt_id", "text"]).reset_index(drop=True)
    responses.insert(0, "response_id", np.arange(len(responses), dtype=np.int64))
    return (
        responses,
        prompt_codes,
        len(prompt_uniques),
        resp_codes[: len(df)],
        resp_codes[len(df) :],
    )


def build_ufp(cfg: DataConfig) -> PreferenceTables:
    """The UF-P tables (construction in the module doc). Random draws, in order: the tie
    coins, the held-out prompts, then the users (:func:`sample_group_users`)."""
    if cfg.n_groups not in GROUPS:
        raise DataError(f"data.n_groups: UF-P has 2 or 4 groups, got {cfg.n_groups}")
    groups = GROUPS[cfg.n_groups]
    gidx = [ATTRIBUTES.index(g) for g in groups]
    rng = np.random.default_rng(cfg.seed)
    summary = DataSummary(source=f"ufp{cfg.n_groups}", groups=list(groups))
    df = _joined_pairs(cfg, summary)
    diff, keep = _oriented_labels(df, gidx, cfg, rng, summary)
    df, diff = df[keep].reset_index(drop=True), diff[keep]
    if len(df) == 0:
        raise DataError(f"no UF-P pair left after filtering (drops: {summary.drops})")
    responses, prompt_codes, n_prompts, ra_id, rb_id = _response_table(df)
    labels = diff[:, gidx]
    controversial = (labels != labels[:, :1]).any(axis=1)
    pool_ok = (diff != diff[:, :1]).any(axis=1)  # the four attributes do not all agree
    if cfg.n_groups == 2 and cfg.ufp2_require_disagreement:
        pool_ok &= controversial
    held = heldout_prompts(n_prompts, cfg.heldout_prompt_frac, rng)[prompt_codes]
    pairs, survey_mask, test_mask = select_group_pairs(
        groups,
        prompt_codes,
        ra_id,
        rb_id,
        labels,
        controversial,
        pool_ok,
        held,
        cfg,
        summary,
        drop_reason="groups_agree",
    )
    responses, pairs, _ = drop_unreferenced_responses(responses, pairs)
    summary.notes.append(
        f"joined {len(df)} pairs over {n_prompts} prompts; survey pool "
        f"{summary.n_pool_pairs} (paper UF-P-4 survey set: {PAPER_POOL}); "
        f"held-out test candidates {int(test_mask.sum())}"
    )
    annotations, users = sample_group_users(
        pairs, groups, survey_mask, test_mask, cfg, rng, summary
    )
    return PreferenceTables(responses, pairs, annotations, users, summary)
