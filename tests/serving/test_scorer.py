"""copl_ray/serving/scorer.py: ``check_run_dir`` names the first missing file in one line,
the tokenizer folder is the model's before the run's, ``response_index`` keeps the smallest
id of a duplicated (prompt, text), and ``encode`` gives the ``[n, max_length]`` rows the
shared tokeniser call gives (a small run directory: tiny model, BPE tokenizer, users)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from copl_ray.artifacts import RunDir
from copl_ray.config import load_config
from copl_ray.data.tables import format_text
from copl_ray.graph.users import TRAINED, UserEmbedding, UserEmbeddings, path_in
from copl_ray.reward import PersonalRewardModel, train_tokenizer
from copl_ray.reward.backbone import tokenize_texts
from copl_ray.serving.scorer import (
    RewardScorer,
    RunDirIncomplete,
    check_run_dir,
    find_tokenizer_dir,
    response_index,
)
from copl_ray.variants import COPL

MAX_LENGTH = 16
USER_DIM = 4
TEXTS = [
    format_text("is tea good?", "Tea is fine in moderation for most adults."),
    format_text("is tea good?", "No idea."),
    format_text("boil an egg", "Simmer it for nine minutes, then cool it in water."),
]


def missing(run_dir: Path) -> str:
    with pytest.raises(RunDirIncomplete) as e:
        check_run_dir(run_dir)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_check_run_dir_names_each_missing_file_in_order(tmp_path):
    run = RunDir(tmp_path)
    reward_cfg = run.reward(COPL) / "reward_config.json"
    assert missing(tmp_path).startswith(f"{reward_cfg}: missing (reward model 'copl')")
    reward_cfg.parent.mkdir(parents=True)
    reward_cfg.write_text("{}")
    assert missing(tmp_path).startswith(f"{path_in(run.gnn)}: missing (user embeddings")
    run.gnn.mkdir()
    path_in(run.gnn).write_bytes(b"")
    assert missing(tmp_path).startswith(f"{run.gnn / 'graph.json'}: missing")
    (run.gnn / "graph.json").write_text("{}")
    assert missing(tmp_path).startswith(f"{run.data / 'responses.parquet'}: missing")
    run.data.mkdir()
    (run.data / "responses.parquet").write_bytes(b"")
    check_run_dir(tmp_path)  # every file present: no error


def test_find_tokenizer_dir_prefers_the_models_own(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(RunDirIncomplete, match=r"reward/copl/tokenizer \(or .*/tokenizer\)"):
        find_tokenizer_dir(run, COPL)
    (run.root / "tokenizer").mkdir()
    assert find_tokenizer_dir(run, COPL) == run.root / "tokenizer"
    (run.reward(COPL) / "tokenizer").mkdir(parents=True)
    assert find_tokenizer_dir(run, COPL) == run.reward(COPL) / "tokenizer"


def test_response_index_keeps_the_smallest_id_of_duplicates():
    responses = pd.DataFrame(
        {
            "response_id": [7, 3, 5, 9],
            "prompt": ["p", "p", "p", "q"],
            "text": ["x", "x", "y", "x"],
        }
    )
    assert response_index(responses) == {("p", "x"): 3, ("p", "y"): 5, ("q", "x"): 9}


@pytest.fixture(scope="module")
def scorer(tmp_path_factory) -> RewardScorer:
    """Run dir with the tiny COPL model (max_length 16), its BPE tokenizer and 2 users."""
    run = RunDir(tmp_path_factory.mktemp("run"))
    tok = train_tokenizer(TEXTS * 4, 120, run.root / "tokenizer")
    cfg = dataclasses.replace(load_config("tiny").reward, max_length=MAX_LENGTH, dropout=0.0)
    PersonalRewardModel.build(cfg, COPL, USER_DIM, tokenizer=tok).save(run.reward(COPL))
    run.gnn.mkdir(parents=True)
    g = np.random.default_rng(0)
    UserEmbeddings.from_records(
        UserEmbedding(u, g.normal(size=USER_DIM), seen=True, kind=TRAINED) for u in ("a", "b")
    ).write(run.gnn)
    return RewardScorer(run.root, COPL)


def test_encode_is_the_shared_tokeniser_call(scorer):
    responses = ["No idea.", "Simmer it for nine minutes, then cool it in water. " * 4]
    ids, mask = scorer.encode("is tea good?", responses)
    assert ids.shape == mask.shape == (2, MAX_LENGTH) and ids.dtype == np.int32
    texts = [format_text("is tea good?", r) for r in responses]
    want_ids, want_mask = tokenize_texts(scorer.tokenizer, texts, MAX_LENGTH)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(mask, want_mask)
    # right padding: the short row is its own tokens then pads; the long one is truncated
    own = scorer.tokenizer(texts[0])["input_ids"]
    assert mask[0].tolist() == [1] * len(own) + [0] * (MAX_LENGTH - len(own))
    assert ids[0, : len(own)].tolist() == own
    assert mask[1].tolist() == [1] * MAX_LENGTH


def test_requests_batched_across_users_score_as_alone(scorer):
    e = scorer.users.matrix
    a = scorer.encode("is tea good?", ["No idea.", "Tea is fine."])
    b = scorer.encode("boil an egg", ["Simmer it."])
    both = scorer.score_requests([(e[0], a), (e[1], b)])
    assert [len(s) for s in both] == [2, 1]
    np.testing.assert_allclose(both[0], scorer.score_rows(a, np.stack([e[0]] * 2)), atol=1e-5)
    np.testing.assert_allclose(both[1], scorer.score_rows(b, e[1:2]), atol=1e-5)
