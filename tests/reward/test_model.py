"""PersonalRewardModel on a tiny random Gemma: pooling, routing, save/load, errors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from copl_ray.reward import (
    PersonalRewardModel,
    btl_loss,
    build_backbone,
    last_token_index,
    train_tokenizer,
)
from copl_ray.variants import ARCHITECTURES

TEXTS = [
    "Human: how to paint a wall ?\n\nAssistant: specifically use a roller , perhaps two coats",
    "Human: how to paint a wall ?\n\nAssistant: careful , risk of fumes",
    "Human: fix a pipe\n\nAssistant: steps : turn off water , example wrench",
    "Human: fix a pipe\n\nAssistant: call someone",
    "Human: clean windows\n\nAssistant: precisely numbers of steps , careful with ladders",
    "Human: clean windows\n\nAssistant: warning : perhaps wait for a dry day to clean",
]
USER_DIM = 8


# ``tok``, ``make_model``, ``reward_cfg``: tests/reward/conftest.py (built on TEXTS, USER_DIM)


def encode(tok, texts, side):
    tok.padding_side = side
    enc = tok(texts, padding=True, return_tensors="pt")
    tok.padding_side = "right"
    return enc["input_ids"], enc["attention_mask"]


def users(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, USER_DIM, generator=g), torch.tensor([0, 4, 2][:n])


def user_input(model, n=3):
    """``(e, idx)`` for ``model(ids, mask, e, idx)``: GNN embeddings and table rows, or for
    VPL (``user_input == "context"``) each user's context of 2 labelled pairs' features."""
    e, idx = users(n)
    if model.user_input == "context":
        hidden = model.backbone.config.get_text_config().hidden_size
        g = torch.Generator().manual_seed(1)
        feats = torch.randn(n, 2, 2 * hidden, generator=g)
        e = torch.cat([feats, torch.ones(n, 2, 1)], -1)
    return e, idx


@pytest.mark.parametrize("variant", ARCHITECTURES)
def test_left_and_right_padding_give_the_same_scores(make_model, tok, variant):
    model = make_model(variant)
    e, idx = user_input(model)
    texts = TEXTS[:3] + TEXTS[3:]  # 6 rows = 2 × 3 users
    right = model(*encode(tok, texts, "right"), e, idx)
    left = model(*encode(tok, texts, "left"), e, idx)
    assert right.dtype == torch.float32 and right.shape == (6,)
    # same tokens, same positions (ids from the mask): equal up to fp32 reduction order
    torch.testing.assert_close(left, right, rtol=1e-5, atol=1e-5)
    # and the padded score equals the score of the sequence alone (no padding at all)
    ids, mask = encode(tok, [texts[4]], "right")
    alone = model(ids, mask, e[1:2], idx[1:2])
    torch.testing.assert_close(alone[0], right[4], rtol=1e-5, atol=1e-5)


def test_last_token_index_both_sides():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]
    with pytest.raises(ValueError, match="rows \\[1\\] have no token"):
        last_token_index(torch.tensor([[1, 0], [0, 0]]))


@pytest.mark.parametrize("variant", ["copl", "no_gnn", "no_mole"])
def test_users_change_scores_and_pairs_share_one_route(make_model, tok, variant):
    model = make_model(variant, gate_noise=3.0)
    e, idx = users(3)
    ids, mask = encode(tok, TEXTS, "right")
    s = model(ids, mask, e, idx)
    other = model(ids, mask, e.flip(0), idx.flip(0))
    assert not torch.allclose(s, other), "the user input has no effect"
    # 2B rows with B users == the same users explicitly duplicated, even with noise on
    model.train()
    torch.manual_seed(0)
    a = model(ids, mask, e, idx)
    torch.manual_seed(0)
    b = model(ids, mask, torch.cat([e, e]), torch.cat([idx, idx]))
    dup_same = torch.allclose(a, b)
    model.eval()
    if variant == "copl":  # gate once on 3 users: rows j and j+3 see one noise draw
        g = model.mole.last_gate
        assert g.weights.shape == (1, 6, 4) and not dup_same  # 6 draws ≠ 3 draws
    else:
        assert dup_same or variant == "no_gnn"


def test_uniform_ignores_users_and_only_adapters_train(make_model, tok):
    model = make_model("uniform")
    ids, mask = encode(tok, TEXTS, "right")
    e, _ = users(3)
    torch.testing.assert_close(model(ids, mask, e), model(ids, mask))
    model.train()
    s = model(ids, mask)
    btl_loss(s[:3], s[3:]).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("score") for n in trainable)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    assert model.score.weight.grad.abs().sum() > 0
    lay = next(layer for _, layer in model.mole.mole_layers())
    assert lay.lora_A.shape[0] == model.reward_cfg.baseline_rank


def test_copl_gradients_reach_gate_and_experts_not_backbone(make_model, tok):
    model = make_model("copl", gate_per_module=True)
    ids, mask = encode(tok, TEXTS, "right")
    e, _ = users(3)
    model.train()
    s = model(ids, mask, e)
    (btl_loss(s[:3], s[3:]) + model.aux_loss).backward()
    assert model.mole.gate.w1.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.backbone.named_parameters() if "lora_" not in n)
    w = model.gate_weights(e)
    n_mod = len(model.mole.module_names)
    assert w.shape == (n_mod, 3, 4) and ((w > 0).sum(-1) == 1).all()
    assert model.expert_usage().shape == (n_mod, 4)


def test_btl_loss():
    c, r = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    expect = -(torch.log(torch.sigmoid(torch.tensor(2.0))) + torch.log(torch.tensor(0.5))) / 2
    torch.testing.assert_close(btl_loss(c, r), expect)


@pytest.mark.parametrize("variant", ARCHITECTURES)
def test_save_load_reproduces_scores_exactly(make_model, tok, variant, tmp_path):
    model = make_model(variant, gate_per_module=variant == "no_gnn")
    e, idx = user_input(model)
    ids, mask = encode(tok, TEXTS, "right")
    before = model(ids, mask, e, idx)
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    assert (tmp_path / "m" / "reward_config.json").exists()
    loaded = PersonalRewardModel.load(tmp_path / "m")
    assert loaded.variant == variant and loaded.tokenizer is not None
    assert torch.equal(loaded(ids, mask, e, idx), before)
    assert AutoTokenizer.from_pretrained(tmp_path / "m" / "tokenizer").pad_token_id == 0


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a copl-ray reward model folder"):
        PersonalRewardModel.load(tmp_path)


def test_bad_inputs_raise_clear_errors(make_model, reward_cfg, tok):
    model = make_model("copl")
    ids, mask = encode(tok, TEXTS, "right")
    with pytest.raises(ValueError, match="needs user_emb"):
        model(ids, mask)
    with pytest.raises(ValueError, match="expected shape \\[B, 8\\]"):
        model(ids, mask, torch.randn(3, 5))
    with pytest.raises(ValueError, match="not a multiple"):
        model(ids, mask, torch.randn(4, USER_DIM))
    no_gnn = make_model("no_gnn")
    with pytest.raises(ValueError, match="user_index: values must be in \\[0, 5\\)"):
        no_gnn(ids, mask, user_index=torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match="variant: expected one of"):
        PersonalRewardModel.build(reward_cfg(), "not_a_variant", USER_DIM)
    with pytest.raises(ValueError, match="reward.target_modules"):
        PersonalRewardModel.build(reward_cfg(target_modules=["c_attn"]), "copl", USER_DIM)


def test_backbone_seeded_config_and_kwargs(reward_cfg, tok, monkeypatch):
    a = build_backbone(reward_cfg(), tok)
    b = build_backbone(reward_cfg(), tok)
    c = build_backbone(reward_cfg(seed=1), tok)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.embed_tokens.weight, c.embed_tokens.weight)
    assert a.config.vocab_size == len(tok) and a.config.pad_token_id == tok.pad_token_id
    big = build_backbone(
        reward_cfg(backbone_kwargs={"num_hidden_layers": 3, "hidden_size": 32}), tok
    )
    assert len(big.layers) == 3 and big.config.hidden_size == 32
    with pytest.raises(ValueError, match="reward.backbone_kwargs: unknown GemmaConfig"):
        build_backbone(reward_cfg(backbone_kwargs={"n_layer": 3}), tok)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="reward.backbone: cannot load"):
        build_backbone(reward_cfg(backbone="no-such-org/no-such-model"), tok)
    bf16 = build_backbone(reward_cfg(backbone_dtype="bfloat16"), tok)
    assert bf16.embed_tokens.weight.dtype == torch.bfloat16


def test_bf16_backbone_keeps_fp32_adapters_and_scores(make_model, tok):
    model = make_model("copl", backbone_dtype="bfloat16")
    ids, mask = encode(tok, TEXTS, "right")
    s = model(ids, mask, users(3)[0])
    assert s.dtype == torch.float32 and torch.isfinite(s).all()
    lay = next(layer for _, layer in model.mole.mole_layers())
    assert lay.lora_A.dtype == torch.float32 and lay.base_layer.weight.dtype == torch.bfloat16


def test_tokenizer_round_trip(tok, tmp_path):
    reloaded = AutoTokenizer.from_pretrained(tok.name_or_path)
    assert reloaded(TEXTS)["input_ids"] == tok(TEXTS)["input_ids"]
    assert reloaded.pad_token == "<pad>" and reloaded.pad_token_id == 0
    with pytest.raises(ValueError, match="reward.tokenizer_vocab"):
        train_tokenizer(TEXTS, 3, tmp_path)


def count_grad_hooks(model: torch.nn.Module) -> dict[str, int]:
    """``{name: n}``, live: how often each trainable parameter's gradient was accumulated."""
    hooks = {n: 0 for n, p in model.named_parameters() if p.requires_grad}

    def hook(name: str):
        return lambda _: hooks.__setitem__(name, hooks[name] + 1)

    for n, p in model.named_parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(hook(n))
    return hooks


@pytest.mark.parametrize("variant", ARCHITECTURES)
@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_same_gradients(make_model, tok, reentrant, variant):
    """Recompute in backward must see the same route (and noise) as the forward, and every
    trainable parameter must get its gradient in ONE backward graph task (one
    post-accumulate hook): DeepSpeed ZeRO-2/3 reduce a gradient once per hook, so a gate
    or user table re-run in every recomputed block failed ("Gradient computed twice",
    ZeRO-3's params_in_bucket assertion). The load-balance term adds a gate path outside
    the blocks; per-module gates give every block its own gate row."""
    grads = []
    for ckpt in (False, True):
        model = make_model(variant, gate_noise=1.0, load_balance_coef=0.1, gate_per_module=True)
        if ckpt:
            model.gradient_checkpointing_enable(use_reentrant=reentrant)
        model.train()
        hooks = count_grad_hooks(model)
        ids, mask = encode(tok, TEXTS, "right")
        e, idx = user_input(model)
        torch.manual_seed(0)
        s = model(ids, mask, e, idx)
        loss = btl_loss(s[:3], s[3:])
        if model.aux_loss.requires_grad:
            loss = loss + model.aux_loss
        loss.backward()
        assert hooks == dict.fromkeys(hooks, 1), {n: c for n, c in hooks.items() if c != 1}
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        assert not model.backbone.embed_tokens.weight.requires_grad  # not B8
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert grads[0][n].abs().sum() > 0, f"{n}: no gradient"
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-6, msg=n)


def test_gradient_checkpointing_no_gnn_table_gets_gradients(make_model, tok):
    model = make_model("no_gnn")
    model.gradient_checkpointing_enable(use_reentrant=True)
    model.train()
    ids, mask = encode(tok, TEXTS, "right")
    s = model(ids, mask, user_index=torch.tensor([0, 2, 4]))
    btl_loss(s[:3], s[3:]).backward()
    g = model.user_table.weight.grad
    assert g[[0, 2, 4]].abs().sum() > 0 and g[[1, 3]].abs().sum() == 0


def test_hf_reentrant_checkpointing_called_directly_works(make_model, tok):
    """The trainer may call HF's gradient_checkpointing_enable itself: the route adapts."""
    model = make_model("copl", gate_noise=1.0, gate_per_module=True)
    model.backbone.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": True}
    )
    model.backbone.enable_input_require_grads()
    model.train()
    ids, mask = encode(tok, TEXTS, "right")
    s = model(ids, mask, users(3)[0])
    btl_loss(s[:3], s[3:]).backward()
    assert model.mole.gate.w1.grad.abs().sum() > 0


@pytest.mark.parametrize("variant", ["copl", "no_gnn"])
def test_mixed_user_batch_equals_each_user_alone(make_model, tok, variant):
    """Per-sample routing on the tiny Gemma: one batch of several users = each row alone."""
    model = make_model(variant, gate_per_module=True, temperature=0.1)
    e, idx = users(3)
    ids, mask = encode(tok, TEXTS, "right")
    batch = model(ids, mask, e, idx)  # rows j and j + 3 belong to user j
    for j in range(6):
        u = j % 3
        alone = model(ids[j : j + 1], mask[j : j + 1], e[u : u + 1], idx[u : u + 1])
        torch.testing.assert_close(alone[0], batch[j], rtol=1e-5, atol=1e-5)
    top = model.gate_weights(e, idx).argmax(-1)  # [modules, users]
    assert (top != top[:, :1]).any(), "all users share every expert: the test proves nothing"
