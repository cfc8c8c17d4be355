"""copl_ray/reward/baselines.py and fit_users.py on data whose truth is known: the
baselines' user models, PReF's SVD start, VPL's contexts and latent usage, and the
few-label fit of an unseen user's row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from copl_ray.reward import PersonalRewardModel
from copl_ray.reward.baselines import active_units, context_tensor, svd_user_factors
from copl_ray.reward.fit_users import fit_user_rows
from copl_ray.variants import BASELINES, I2E, LORE, PAL, PREF, REGISTRY, VPL

TEXTS = [
    f"answer {i} {'short' if i % 2 else 'a much longer reply'} {i * 7 % 13}" for i in range(80)
]
USER_DIM = 8
N_USERS = 6


def _tokens(tok, texts):
    from copl_ray.reward.backbone import tokenize_texts

    ids, mask = tokenize_texts(tok, texts, 32)
    return ids.astype(np.int64), mask.astype(np.int64)


def _build(reward_cfg, tok, name: str) -> PersonalRewardModel:
    arch = REGISTRY[name].architecture
    rc = reward_cfg(num_prototypes=4)
    return PersonalRewardModel.build(rc, arch, USER_DIM, n_users=N_USERS, tokenizer=tok).eval()


@pytest.mark.parametrize("name", [n for n in BASELINES if n != VPL])
def test_table_baselines_score_a_given_row_as_their_own_and_round_trip(
    name, reward_cfg, tok, tmp_path
):
    """A row passed as ``user_row`` scores exactly as the table row it copies, the user
    changes the score, and save/load (safetensors) gives the same scores."""
    model = _build(reward_cfg, tok, name)
    with torch.no_grad():  # users apart, and LoRA B off zero so tokens matter
        model.user_table.weight.normal_(0, 1.0)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    ids, mask = _tokens(tok, TEXTS[:6])
    index = torch.tensor([0, 1, 2])
    by_index = model.score_rows(ids, mask, user_index=index)
    row = model.user_table.weight[index].detach()
    assert torch.allclose(model.score_rows(ids, mask, user_row=row), by_index)
    other = model.score_rows(ids, mask, user_index=torch.tensor([3, 4, 5]))
    assert not torch.allclose(other, by_index)
    loaded = PersonalRewardModel.load(model.save(tmp_path / name))
    assert torch.allclose(loaded.score_rows(ids, mask, user_index=index), by_index, atol=1e-5)


def test_frozen_baselines_train_only_their_head_and_users(reward_cfg, tok):
    """LoRe and VPL read frozen backbone features: no LoRA parameter trains."""
    for name in (LORE, VPL):
        model = _build(reward_cfg, tok, name)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and not any("lora_" in n for n in trainable), trainable
    pal = _build(reward_cfg, tok, PAL)
    assert any("lora_" in n for n, p in pal.named_parameters() if p.requires_grad)


def test_svd_start_separates_two_planted_groups():
    """Two groups that answer every pair oppositely: the first SVD factor has one sign
    per group, and a user with no label gets the zero row."""
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(10)]
    rows = []
    for i, u in enumerate(users[:8]):
        for p in rng.choice(20, size=8, replace=False):
            a, b = f"r{p:02d}a", f"r{p:02d}b"
            chosen, rejected = (a, b) if (i % 2 == 0) == (p % 3 != 0) else (b, a)
            rows.append({"user_id": u, "pair_id": int(p), "chosen": chosen, "rejected": rejected})
    f = svd_user_factors(pd.DataFrame(rows), users, k=3, seed=0)
    assert f.shape == (10, 3)
    first = np.sign(f[:8, 0])
    assert len(set(first[0::2])) == 1 and len(set(first[1::2])) == 1 and first[0] != first[1]
    assert np.abs(f[8:, 0]).max() < 0.05  # unlabelled users: noise only


def test_context_tensor_keeps_each_users_first_c_pairs_in_order():
    feats = torch.arange(12, dtype=torch.float32).reshape(6, 2)  # response r -> [2r, 2r+1]
    ctx = context_tensor(
        feats,
        np.array([0, 2, 4, 1]),
        np.array([1, 3, 5, 0]),
        np.array([0, 0, 0, 2]),
        n_users=3,
        c=2,
    )
    assert ctx.shape == (3, 2, 5)
    assert ctx[0, :, -1].tolist() == [1.0, 1.0]  # the third label of user 0 is cut
    assert ctx[0, 1, :4].tolist() == [4.0, 5.0, 6.0, 7.0]  # chosen r2 then rejected r3
    assert ctx[1].abs().sum() == 0  # no labels: all zeros, invalid
    assert ctx[2, 0, :4].tolist() == [2.0, 3.0, 0.0, 1.0]


def test_active_units_count_collapsed_and_used_latents():
    rng = np.random.default_rng(0)
    assert active_units(np.zeros((50, 8)))["share"] == 0.0
    used = rng.normal(size=(50, 8)) * np.array([1, 1, 1, 1, 0, 0, 0, 0])
    au = active_units(used)
    assert au["active"] == 4 and au["units"] == 8 and au["n_users"] == 50


def test_vpl_encodes_a_user_from_labels_deterministically_in_eval(reward_cfg, tok):
    model = _build(reward_cfg, tok, VPL)
    ids, mask = _tokens(tok, TEXTS[:8])
    feats = model.response_features(ids, mask)
    ctx = context_tensor(feats, np.array([0, 2]), np.array([1, 3]), np.array([0, 1]), 2, 4)
    a = model.score_rows(ids[:4], mask[:4], user_emb=ctx)
    assert torch.equal(a, model.score_rows(ids[:4], mask[:4], user_emb=ctx))
    model.train()
    model.set_progress(1.0)
    model.score_rows(ids[:4], mask[:4], user_emb=ctx)
    assert float(model.aux_loss.detach()) > 0 and model.kl_weight == pytest.approx(
        model.reward_cfg.vpl_beta
    )


@pytest.mark.parametrize("name", [PREF, LORE, PAL, I2E])
def test_fit_recovers_a_planted_user_from_its_labels(name, reward_cfg, tok):
    """Truth: labels drawn by the model itself with a planted row ``w*`` per user (two
    users, opposite rows). Fitting from the mean row on 20 labels must order the 20
    held-out pairs as ``w*`` does: >= 85 % per user (a pair ``w*`` scores as a near-tie
    may go either way; chance is 50 %)."""
    model = _build(reward_cfg, tok, name)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
        model.user_table.weight.zero_()
    width = model.user_table.embedding_dim
    planted = torch.zeros(2, width)
    planted[0, 0], planted[1, 0] = 3.0, -3.0
    planted[0, 1], planted[1, 1] = -3.0, 3.0
    ids, mask = _tokens(tok, TEXTS)
    a_rows, b_rows = np.arange(0, 80, 2), np.arange(1, 80, 2)
    truth = []
    with torch.no_grad():
        for u in range(2):
            w = planted[u : u + 1].expand(len(a_rows), -1)
            sa = model.score_rows(ids[a_rows], mask[a_rows], user_row=w)
            sb = model.score_rows(ids[b_rows], mask[b_rows], user_row=w)
            truth.append((sa > sb).numpy())
    train, held = np.arange(20), np.arange(20, 40)
    chosen, rejected, label_user = [], [], []
    for u in range(2):
        for i in train:
            c, r = (a_rows[i], b_rows[i]) if truth[u][i] else (b_rows[i], a_rows[i])
            chosen.append(c), rejected.append(r), label_user.append(u)
    chosen, rejected = np.array(chosen), np.array(rejected)
    rows = fit_user_rows(
        model,
        ids[chosen],
        mask[chosen],
        ids[rejected],
        mask[rejected],
        np.array(label_user),
        2,
        steps=150,
        lr=0.1,
        l2=0.0,
    )
    assert all(p.requires_grad for n, p in model.named_parameters() if "user_table" in n)
    agree = []
    with torch.no_grad():
        for u in range(2):
            w = torch.as_tensor(rows[u : u + 1]).expand(len(held), -1)
            sa = model.score_rows(ids[a_rows[held]], mask[a_rows[held]], user_row=w)
            sb = model.score_rows(ids[b_rows[held]], mask[b_rows[held]], user_row=w)
            agree.append(((sa > sb).numpy() == truth[u][held]).mean())
    assert min(agree) >= 0.85, agree
