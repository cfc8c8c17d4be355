"""Ray Data pipeline of the reward stage: join, tokenisation, filters, fixed shapes."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from copl_ray.data.tables import format_text
from copl_ray.reward.backbone import load_tokenizer, tokenize_texts
from copl_ray.reward.shards import collate_pairs, count_pairs, pair_dataset, read_lookups
from copl_ray.reward.stage import load_user_table


@pytest.fixture(scope="module")
def small_run(small_data_run, tmp_path_factory):
    """(run, tokenizer_dir, seen users, lookups) of the conftest's small data set."""
    cfg, run, tok_dir = small_data_run(tmp_path_factory.mktemp("rd"))
    users, _ = load_user_table(cfg, run, need_embeddings=False)
    return run, tok_dir, users, read_lookups(run.data, users)


def _rows(ds) -> list[dict]:
    out = []
    for b in ds.iter_batches(batch_size=64, batch_format="numpy"):
        n = len(b["user_id"])
        out += [{k: v[i] for k, v in b.items()} for i in range(n)]
    return out


def test_pairs_are_joined_tokenised_and_fixed_length(ray_session, small_run):
    run, tok_dir, users, lookups = small_run
    ds = pair_dataset(
        run.data, users=users, tokenizer_dir=tok_dir, max_length=64, lookups=lookups, seed=1
    )
    rows = _rows(ds)
    ann = pq.read_table(run.data / "annotations.parquet").to_pandas()
    survey_seen = ann[(ann["split"] == "survey") & ann["user_id"].isin(users.user_ids)]
    # every seen survey annotation exactly once, nothing else (test/val/unseen filtered out)
    assert len(rows) == len(survey_seen)
    assert count_pairs(run.data, users.user_ids, ("survey",), lookups[0])["rows"] == len(rows)
    assert {(r["user_id"], int(r["pair_id"])) for r in rows} == set(
        zip(survey_seen["user_id"], survey_seen["pair_id"])
    )
    # the join: row tokens == tokenising format_text(prompt, text) of that very response
    resp = pq.read_table(run.data / "responses.parquet").to_pandas().set_index("response_id")
    tok = load_tokenizer(tok_dir)
    tok.padding_side = "right"
    by_key = survey_seen.set_index(["user_id", "pair_id"])
    for r in rows[:20]:
        a = by_key.loc[(r["user_id"], int(r["pair_id"]))]
        for side in ("chosen", "rejected"):
            text = format_text(resp.at[a[side], "prompt"], resp.at[a[side], "text"])
            ids, mask = tokenize_texts(tok, [text], 64)
            np.testing.assert_array_equal(r[f"{side}_input_ids"], ids[0])
            np.testing.assert_array_equal(r[f"{side}_attention_mask"], mask[0])
            assert mask[0][0] == 1 and mask[0][-1] == 0  # right padding, nothing truncated
        assert users.user_ids[int(r["user_index"])] == r["user_id"]
        assert r["group"] == users.groups[int(r["user_index"])]
    # iter_torch_batches yields 2-D tensors
    batch = next(iter(ds.iter_torch_batches(batch_size=8, collate_fn=collate_pairs)))
    assert tuple(batch["chosen_input_ids"].shape) == (8, 64)
    assert batch["rejected_attention_mask"].dtype.is_floating_point is False


def test_user_filter_and_validation_slice_are_disjoint(ray_session, small_run):
    run, tok_dir, users, lookups = small_run
    group = sorted(set(users.groups))[0]
    members = [u for u, g in zip(users.user_ids, users.groups) if g == group]
    common = dict(users=users, tokenizer_dir=tok_dir, max_length=64, lookups=lookups)
    train = _rows(pair_dataset(run.data, only_users=members, slice_fraction=0.2, **common))
    val = _rows(
        pair_dataset(run.data, only_users=members, slice_fraction=0.2, take_slice=True, **common)
    )
    assert {r["group"] for r in train + val} == {group}
    keys_t = {(r["user_id"], int(r["pair_id"])) for r in train}
    keys_v = {(r["user_id"], int(r["pair_id"])) for r in val}
    assert not keys_t & keys_v and len(keys_v) > 0
    total = count_pairs(run.data, members, ("survey",), lookups[0])["rows"]
    assert len(keys_t) + len(keys_v) == total
    # user_index keeps pointing into the FULL table (Oracle shares the embedding table)
    assert all(users.user_ids[int(r["user_index"])] == r["user_id"] for r in train)


def test_empty_batches_keep_tensor_columns(ray_session, small_run):
    """A batch whose rows are all filtered out must not turn token columns into pickles.

    Ray builds a block from a UDF's numpy dict with ``BlockAccessor.batch_to_block``; a
    ``[0, L]`` array there falls back to pickled Python objects (with a warning) because
    Ray only makes tensor columns of non-empty arrays. The pipeline emits such batches as
    typed zero-row tensor blocks instead; non-empty batches keep the same column types.
    """
    import pandas as pd
    from ray.data.block import BlockAccessor
    from ray.data.extensions.tensor_extension import ArrowTensorType, ArrowTensorTypeV2

    from copl_ray.reward.shards import TOKEN_COLUMNS, join_and_tokenize

    run, tok_dir, users, lookups = small_run
    ann = pq.read_table(run.data / "annotations.parquet").to_pandas()
    ann = ann[["user_id", "pair_id", "chosen", "rejected", "split"]]
    survey = ann[(ann["split"] == "survey") & ann["user_id"].isin(users.user_ids)].head(4)
    kwargs = dict(
        lookup_key="empty-test", lookup_ref=lookups, tokenizer_dir=str(tok_dir), max_length=32
    )
    empty = BlockAccessor.batch_to_block(
        join_and_tokenize(survey, splits=("val",), **kwargs)  # every row of another split
    )
    full = BlockAccessor.batch_to_block(join_and_tokenize(survey, splits=("survey",), **kwargs))
    assert empty.num_rows == 0 and full.num_rows == len(survey) == 4
    for col in TOKEN_COLUMNS:
        assert isinstance(empty.schema.field(col).type, (ArrowTensorType, ArrowTensorTypeV2))
        assert empty.schema.field(col).type == full.schema.field(col).type, col
    for col in ("user_id", "group", "pair_id", "user_index", "controversial"):
        assert pd.api.types.is_dtype_equal(
            empty.schema.field(col).type.to_pandas_dtype(),
            full.schema.field(col).type.to_pandas_dtype(),
        ), col
