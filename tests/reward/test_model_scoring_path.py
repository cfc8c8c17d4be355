"""One scoring path: eval's ``Scorer`` and serving's ``RewardScorer`` both score token rows
through ``PersonalRewardModel.score_rows``, so the same pairs in the same batches give the
same numbers, bit for bit: both tokenise with ``tokenize_texts`` (eval once per response,
serving per request) and the model cuts the all-pad tail per batch.

Truth built in: a small synthetic run directory with a saved, non-trivial CoPL model
(LoRA ``B`` drawn at random, so users score differently) and a user-embedding table.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import torch

from copl_ray.eval.scoring import EvalData, Scorer
from copl_ray.graph.users import UserEmbedding, UserEmbeddings
from copl_ray.reward import PersonalRewardModel
from copl_ray.reward.backbone import load_tokenizer
from copl_ray.serving.scorer import RewardScorer
from copl_ray.variants import COPL

USER_DIM = 8


def _copl_run(small_data_run, root):
    cfg, run, tok_dir = small_data_run(root, f"gnn.dim={USER_DIM}")
    tok = load_tokenizer(tok_dir)
    model = PersonalRewardModel.build(cfg.reward, COPL, USER_DIM, tokenizer=tok)
    with torch.no_grad():
        for _, layer in model.mole.mole_layers():
            layer.lora_B.normal_(std=0.05, generator=torch.Generator().manual_seed(7))
    model.save(run.reward(COPL))
    ids = pq.read_table(run.data / "users.parquet").to_pandas()["user_id"].astype(str)
    g = np.random.default_rng(0)
    run.gnn.mkdir(parents=True)
    UserEmbeddings.from_records(
        UserEmbedding(u, g.normal(size=USER_DIM), seen=True, kind="trained") for u in ids
    ).write(run.gnn)
    return cfg, run


def test_eval_and_serving_give_identical_scores(small_data_run, tmp_path):
    cfg, run = _copl_run(small_data_run, tmp_path)
    serving = RewardScorer(run.root, COPL)
    tok = load_tokenizer(run.root / "tokenizer")
    tok.padding_side = "right"
    data = EvalData(run, tok, cfg.reward.max_length)
    pairs = data.seen.head(40)
    assert len(pairs) == 40 and pairs["user_id"].nunique() > 1
    emb = serving.users.matrix_for(pairs["user_id"].tolist())
    batch = 8
    model = PersonalRewardModel.load(run.reward(COPL))
    chosen, rejected = Scorer(data, batch, "cpu").pair_scores(model, pairs, user_emb=emb)

    text = pq.read_table(run.data / "responses.parquet").to_pandas().set_index("response_id")
    served_c, served_r = [], []
    for i in range(0, len(pairs), batch):  # the same batches: [chosen; rejected] rows
        part = pairs.iloc[i : i + batch]
        encoded = [
            serving.encode(text.at[r, "prompt"], [text.at[r, "text"]])
            for r in [*part["chosen"], *part["rejected"]]
        ]
        rows = tuple(np.concatenate([e[k] for e in encoded]) for k in (0, 1))
        s = serving.score_rows(rows, np.concatenate([emb[i : i + batch]] * 2))
        served_c.append(s[: len(part)])
        served_r.append(s[len(part) :])
    np.testing.assert_array_equal(np.concatenate(served_c), chosen)
    np.testing.assert_array_equal(np.concatenate(served_r), rejected)
    # the users reach the model: two users' scores of the same response differ
    first = pairs["chosen_row"].iloc[0]
    other = emb[(pairs["user_id"] != pairs["user_id"].iloc[0]).to_numpy()][:1]
    with torch.no_grad():
        a = model.score_rows(data.ids[[first]], data.mask[[first]], emb[:1])
        b = model.score_rows(data.ids[[first]], data.mask[[first]], other)
    assert abs(float(a - b)) > 1e-4
    # and serving's tokenisation is eval's: the same ids and mask
    ids, mask = serving.encode(
        text.at[pairs["chosen"].iloc[0], "prompt"], [text.at[pairs["chosen"].iloc[0], "text"]]
    )
    np.testing.assert_array_equal(ids[0], data.ids[first])
    np.testing.assert_array_equal(mask[0], data.mask[first])
