"""Ray Data pipeline: annotation parquet -> tokenised preference pairs, streamed to workers.

One row per annotation ``(user, chosen, rejected)``::

    read_parquet(annotations) -> random_shuffle(seed) -> map_batches(join + tokenize)

``map_batches`` joins the response texts (``format_text(prompt, text)``) and the user
lookup (``user_index``, ``group``) by a broadcast join: both lookups are small next to
the tokenised pairs (one entry per response / user) and travel once through the object
store. Tokens are right-padded to a fixed ``max_length`` so every row has the same shape
and ``iter_torch_batches`` yields 2-D tensors. The dataset is lazy: it is executed by the
Ray Train workers (``TorchTrainer(datasets=...)`` + ``ray.train.get_dataset_shard``),
never materialised on the driver.

Output columns: ``user_id:str, group:str ("" unknown), pair_id:int64, user_index:int64
(row into the user-embedding table), controversial:int8 (1/0, -1 unknown),
chosen_input_ids / chosen_attention_mask / rejected_input_ids / rejected_attention_mask:
int32 [max_length]``.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from copl_ray.data.tables import format_text
from copl_ray.reward.backbone import tokenize_texts

TOKEN_COLUMNS = (
    "chosen_input_ids",
    "chosen_attention_mask",
    "rejected_input_ids",
    "rejected_attention_mask",
)
# the one spelling of the per-row columns' types: numpy dtype of a filled block, Arrow
# type of an empty one (token columns: int32 [max_length], fixed-shape tensors)
SCALAR_COLUMNS: dict[str, tuple[type, str]] = {
    "user_id": (object, "string"),
    "group": (object, "string"),
    "pair_id": (np.int64, "int64"),
    "user_index": (np.int64, "int64"),
    "controversial": (np.int8, "int8"),
}


@dataclass
class UserTable:
    """Users a dataset may contain: ``user_index`` = position in ``user_ids``."""

    user_ids: list[str]
    groups: list[str]  # "" where unknown

    def index_of(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.user_ids)}


# ----------------------------------------------------------------- tokenisation
@functools.lru_cache(maxsize=4)
def _cached_tokenizer(tokenizer_dir: str):
    from copl_ray.reward.backbone import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    tok.padding_side = "right"  # fixed-shape rows; the model reads the last non-pad token
    return tok


class _Lookups:
    """Response texts and users, resolved from the object store once per Ray worker process."""

    _cache: dict[str, tuple[pd.Series, pd.Series, pd.DataFrame]] = {}

    @classmethod
    def get(cls, key: str, ref) -> tuple[pd.Series, pd.Series, pd.DataFrame]:
        if key not in cls._cache:
            import ray

            cls._cache.clear()  # one pipeline's lookups at a time per worker
            cls._cache[key] = ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref
        return cls._cache[key]


def join_and_tokenize(
    batch: pd.DataFrame,
    *,
    lookup_key: str,
    lookup_ref,
    tokenizer_dir: str,
    max_length: int,
    splits: tuple[str, ...],
    slice_fraction: float = 0.0,
    take_slice: bool = False,
) -> dict[str, np.ndarray]:
    """Annotations batch -> tokenised pairs (rows of other splits / users are dropped).

    ``slice_fraction > 0`` keeps only the deterministic slice (``take_slice``) or only the
    rest: a validation slice of the survey split when the data has no val split.
    """
    texts, controversial, users = _Lookups.get(lookup_key, lookup_ref)
    batch = batch[batch["split"].isin(splits)]
    if slice_fraction > 0:
        in_slice = holdout_mask(
            batch["user_id"].to_numpy(), batch["pair_id"].to_numpy(), slice_fraction
        )
        batch = batch[in_slice == take_slice]
    user_index = users["user_index"].reindex(batch["user_id"].to_numpy()).to_numpy()
    keep = ~pd.isna(user_index)
    batch = batch[keep]
    user_index = user_index[keep].astype(np.int64)
    chosen = texts.reindex(batch["chosen"].to_numpy()).to_numpy()
    rejected = texts.reindex(batch["rejected"].to_numpy()).to_numpy()
    ok = ~(pd.isna(chosen) | pd.isna(rejected))  # unknown response ids: counted by the driver
    batch, user_index, chosen, rejected = batch[ok], user_index[ok], chosen[ok], rejected[ok]
    if len(batch) == 0:
        return empty_pair_block(max_length)
    tok = _cached_tokenizer(tokenizer_dir)
    c_ids, c_mask = tokenize_texts(tok, list(chosen), max_length)
    r_ids, r_mask = tokenize_texts(tok, list(rejected), max_length)
    scalars = {
        "user_id": batch["user_id"].to_numpy(),
        "group": users["group"].reindex(batch["user_id"].to_numpy()).to_numpy(),
        "pair_id": batch["pair_id"].to_numpy(),
        "user_index": user_index,
        "controversial": controversial.reindex(batch["pair_id"].to_numpy()).to_numpy(),
    }
    tokens = dict(zip(TOKEN_COLUMNS, (c_ids, c_mask, r_ids, r_mask), strict=True))
    return {c: scalars[c].astype(dt) for c, (dt, _) in SCALAR_COLUMNS.items()} | tokens


def empty_pair_block(max_length: int):
    """A zero-row block with the pipeline's schema (token columns as fixed-shape tensors).

    A batch whose rows are all of other splits/users would otherwise reach Ray Data as
    ``[0, max_length]`` numpy arrays, which Ray converts to Arrow only when non-empty: it
    warns and stores that block's token columns as pickled Python objects.
    """
    import pyarrow as pa
    from ray.data.extensions.tensor_extension import ArrowTensorArray

    empty = np.zeros((0, max_length), dtype=np.int32)
    return pa.table(
        {
            **{c: pa.array([], getattr(pa, t)()) for c, (_, t) in SCALAR_COLUMNS.items()},
            **{c: ArrowTensorArray.from_numpy(empty) for c in TOKEN_COLUMNS},
        }
    )


# ----------------------------------------------------------------- driver side
def read_lookups(
    data_dir: str | Path, users: UserTable
) -> tuple[pd.Series, pd.Series, pd.DataFrame]:
    """Small broadcast tables: response_id -> model text, pair_id -> controversial, users."""
    data_dir = Path(data_dir)
    resp = pq.read_table(data_dir / "responses.parquet").to_pandas()
    texts = pd.Series(
        [format_text(p, t) for p, t in zip(resp["prompt"], resp["text"])],
        index=resp["response_id"].to_numpy(),
    )
    pairs = pq.read_table(data_dir / "pairs.parquet", columns=["pair_id", "controversial"])
    pairs = pairs.to_pandas()
    contr = pairs["controversial"].map({True: 1, False: 0}).fillna(-1).astype(np.int8)
    controversial = pd.Series(contr.to_numpy(), index=pairs["pair_id"].to_numpy())
    frame = pd.DataFrame(
        {"user_index": np.arange(len(users.user_ids)), "group": users.groups},
        index=users.user_ids,
    )
    return texts, controversial, frame


def count_pairs(
    data_dir: str | Path,
    users: Iterable[str],
    splits: tuple[str, ...],
    texts: pd.Series,
    slice_fraction: float = 0.0,
    take_slice: bool = False,
) -> dict[str, int]:
    """Rows the pipeline will yield and rows it drops (by reason), from id columns only."""
    ann = pq.read_table(
        Path(data_dir) / "annotations.parquet",
        columns=["user_id", "pair_id", "chosen", "rejected", "split"],
    ).to_pandas()
    ann = ann[ann["split"].isin(splits) & ann["user_id"].isin(set(users))]
    if slice_fraction > 0:
        in_slice = holdout_mask(
            ann["user_id"].to_numpy(), ann["pair_id"].to_numpy(), slice_fraction
        )
        ann = ann[in_slice == take_slice]
    known = ann["chosen"].isin(texts.index) & ann["rejected"].isin(texts.index)
    return {"rows": int(known.sum()), "dropped_unknown_response": int((~known).sum())}


def pair_dataset(
    data_dir: str | Path,
    *,
    users: UserTable,
    tokenizer_dir: str | Path,
    max_length: int,
    splits: tuple[str, ...] = ("survey",),
    only_users: Iterable[str] | None = None,
    slice_fraction: float = 0.0,
    take_slice: bool = False,
    seed: int | None = 0,
    shuffle: bool = True,
    lookups: tuple[pd.Series, pd.Series, pd.DataFrame] | None = None,
    batch_size: int = 256,
):
    """Lazy ``ray.data.Dataset`` of tokenised pairs of ``users`` in ``splits``.

    ``user_index`` is the user's row in ``users`` (the embedding table); ``only_users``
    restricts the rows to some of them (Oracle trains one group at a time) without changing
    indices. Caller must have initialised Ray. ``lookups`` (from :func:`read_lookups`) may
    be shared between datasets built from the same data folder.
    """
    import ray

    lookups = lookups if lookups is not None else read_lookups(data_dir, users)
    texts, controversial, frame = lookups
    if only_users is not None:
        frame = frame[frame.index.isin(set(only_users))]
    key = f"{zlib.crc32(','.join(frame.index).encode())}-{len(texts)}-{Path(data_dir)}"
    ref = ray.put((texts, controversial, frame))
    ds = ray.data.read_parquet(
        str(Path(data_dir) / "annotations.parquet"),
        columns=["user_id", "pair_id", "chosen", "rejected", "split"],
    )
    if shuffle:
        ds = ds.random_shuffle(seed=seed)
    ds = ds.map_batches(
        join_and_tokenize,
        batch_format="pandas",
        batch_size=batch_size,
        fn_kwargs={
            "lookup_key": key,
            "lookup_ref": ref,
            "tokenizer_dir": str(tokenizer_dir),
            "max_length": int(max_length),
            "splits": tuple(splits),
            "slice_fraction": float(slice_fraction),
            "take_slice": bool(take_slice),
        },
    )
    # The trainer prints its own progress; Ray Data's per-operator bars would flood the
    # worker logs once per epoch and per validation pass.
    ds.context.enable_progress_bars = False
    return ds


def holdout_mask(user_ids: np.ndarray, pair_ids: np.ndarray, fraction: float) -> np.ndarray:
    """Deterministic pseudo-random slice of rows (a validation slice when no val split)."""
    keys = [f"{u}:{p}" for u, p in zip(user_ids, pair_ids)]
    h = np.array([zlib.crc32(k.encode()) % 10_000 for k in keys])
    return h < int(fraction * 10_000)


def collate_pairs(batch: dict[str, np.ndarray]) -> dict:
    """numpy batch -> torch: token columns as int64 ``[B, L]``, ids as tensors, strings kept."""
    import torch

    out: dict = {}
    for k, v in batch.items():
        dtype = SCALAR_COLUMNS[k][0] if k in SCALAR_COLUMNS else None
        if k in TOKEN_COLUMNS:
            out[k] = torch.as_tensor(np.array(v), dtype=torch.long)  # copy: blocks are read-only
        elif dtype is not None and dtype is not object:  # ids int64, controversial int8
            out[k] = torch.from_numpy(np.array(v, dtype=dtype))
        else:
            out[k] = np.asarray(v)
    return out
