"""copl_ray/reward/pooling.py: position ids, first/last token index, each pooling mode on
hidden states whose value is the position (so the answer is read off the mask), ``auto``."""

from __future__ import annotations

import json

import pytest
import torch

from copl_ray.config import load_config
from copl_ray.reward.backbone import backbone_path, tiny_gemma_config
from copl_ray.reward.pooling import (
    first_token_index,
    last_token_index,
    pool,
    position_ids_of,
    resolve_pooling,
)

RIGHT = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
LEFT = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])


def test_position_ids_count_from_the_first_real_token():
    # p_t = (Σ_{s≤t} m_s) − 1, clamped at 0 for leading pads
    assert position_ids_of(RIGHT).tolist() == [[0, 1, 2, 2], [0, 1, 1, 1]]
    assert position_ids_of(LEFT).tolist() == [[0, 0, 1, 2], [0, 0, 0, 1]]
    # a text keeps its positions however far its row is padded
    short = torch.tensor([[1, 1, 1]])
    assert position_ids_of(short)[0].tolist() == position_ids_of(LEFT)[0, 1:].tolist()


def test_first_and_last_token_index_left_and_right_padding():
    assert last_token_index(RIGHT).tolist() == [2, 1]
    assert last_token_index(LEFT).tolist() == [3, 3]
    assert first_token_index(RIGHT).tolist() == [0, 0]
    assert first_token_index(LEFT).tolist() == [1, 2]
    middle = torch.tensor([[0, 1, 1, 0]])  # a boolean mask works as well
    assert first_token_index(middle.bool()).tolist() == [1]
    assert last_token_index(middle.bool()).tolist() == [2]


def test_all_pad_row_is_an_error_naming_the_rows():
    empty = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 0, 0]])
    for fn in (first_token_index, last_token_index):
        with pytest.raises(ValueError, match=r"^attention_mask: rows \[0, 2\] have no token$"):
            fn(empty)
    # the prefix of a no_mole row is not text: a row of prefix only has no token for mean
    with pytest.raises(ValueError, match=r"rows \[0\] have no token"):
        pool(torch.zeros(1, 3, 2), torch.tensor([[1, 0, 0]]), "mean", n_prefix=1)


def test_pool_each_mode_left_and_right_padding():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)  # value = position
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert pool(hidden, right, "last")[:, 0].tolist() == [2, 5]
    assert pool(hidden, left, "last")[:, 0].tolist() == [3, 7]
    assert pool(hidden, right, "first")[:, 0].tolist() == [0, 4]
    assert pool(hidden, left, "first")[:, 0].tolist() == [1, 6]
    assert pool(hidden, right, "mean")[:, 0].tolist() == [1.0, 4.5]
    # a prefix (the no_mole user token) is not text: first/mean skip it, last never reaches it
    assert pool(hidden, right, "first", n_prefix=1)[:, 0].tolist() == [1, 5]
    assert pool(hidden, right, "mean", n_prefix=1)[:, 0].tolist() == [1.5, 5.0]
    assert pool(hidden, right, "last", n_prefix=1)[:, 0].tolist() == [2, 5]
    with pytest.raises(ValueError, match="rows \\[1\\] have no token"):
        pool(hidden, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]), "mean")
    with pytest.raises(ValueError, match="pooling: expected one of"):
        pool(hidden, right, "max")


def test_mean_pool_is_the_masked_mean_per_feature():
    hidden = torch.tensor([[[1.0, 10.0], [3.0, 30.0], [100.0, 1000.0]]])
    out = pool(hidden, torch.tensor([[1, 1, 0]]), "mean")
    assert out.tolist() == [[2.0, 20.0]]  # the pad row (100, 1000) does not count


def test_auto_pooling_per_architecture():
    """Decoders read the last token (tiny-gemma: today's behaviour), BERT-style encoders
    [CLS], a sentence-transformers folder the pooling it was trained with (mean)."""
    from transformers import BertConfig

    gemma = tiny_gemma_config(load_config("tiny").reward)
    assert resolve_pooling("auto", gemma) == "last"
    assert resolve_pooling("auto", BertConfig()) == "first"
    folder = backbone_path("minilm")
    assert resolve_pooling("auto", BertConfig.from_pretrained(folder), folder) == "mean"
    assert resolve_pooling("first", gemma) == "first"  # an explicit choice wins


def test_auto_reads_the_sentence_transformers_flag(tmp_path):
    """A folder's ``1_Pooling/config.json`` wins over the architecture; no flag set: the
    architecture decides."""
    from transformers import BertConfig

    (tmp_path / "1_Pooling").mkdir()
    cfg = tmp_path / "1_Pooling" / "config.json"
    cfg.write_text(json.dumps({"pooling_mode_lasttoken": True, "pooling_mode_mean_tokens": False}))
    assert resolve_pooling("auto", BertConfig(), str(tmp_path)) == "last"
    cfg.write_text(json.dumps({"pooling_mode_mean_tokens": False}))
    assert resolve_pooling("auto", BertConfig(), str(tmp_path)) == "first"
