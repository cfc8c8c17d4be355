"""Ray Train + DeepSpeed training of a real PersonalRewardModel on 2 CPU workers:
checkpoint with the full model (reward head included), interruption + resume, under
ZeRO-2 and ZeRO-3 (ZeRO-3 once failed in the first backward: the MoLE gate returned a
dataclass, so DeepSpeed never re-gathered its partitioned parameters for backward), and
ZeRO-3 + reentrant gradient checkpointing of the gated variants (they once failed in the
first backward with DeepSpeed's ``params_in_bucket`` ds_id assertion: the gate and the
no_gnn user table were re-run inside every recomputed block, so each got one gradient
hook per block and ZeRO reduced them twice; see copl_ray/mole/layer.py RouteContext)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from copl_ray.reward.backbone import load_tokenizer
from copl_ray.reward.model import PersonalRewardModel
from copl_ray.reward.shards import read_lookups
from copl_ray.reward.stage import (
    RewardTrainingError,
    load_user_table,
    train_reward_model,
)

# on top of the conftest's SMALL_DATA: 5 steps of the no_gnn model, checkpoints every 2
SMALL_TRAIN = [
    "gnn.dim=16",
    "reward.models=[no_gnn]",
    "train.gradient_checkpointing=false",
    "train.batch_size=8",
    "train.max_steps=5",
    "train.ckpt_every=2",
    "train.eval_every=2",
    "train.log_every=1",
    "train.lr=0.01",
]


# ZeRO-3 runs with gradient checkpointing (as the ufp4-gemma-7b preset does): the no_gnn
# user table and the gate then sit outside the recomputed blocks.
@pytest.mark.parametrize("zero_stage,checkpointing", [(2, False), (3, True)])
def test_interrupt_resume_keeps_reward_head(
    ray_session, small_data_run, tmp_path, zero_stage, checkpointing
):
    cfg, run, tok_dir = small_data_run(
        tmp_path,
        *SMALL_TRAIN,
        f"train.zero_stage={zero_stage}",
        f"train.gradient_checkpointing={str(checkpointing).lower()}",
        "train.max_failures=0",  # the crash ends the fit (no in-fit restart): the rerun resumes
    )
    assert cfg.train.gradient_checkpointing is checkpointing
    users, table = load_user_table(cfg, run, need_embeddings=False)
    assert table is None
    kwargs = dict(
        job="no_gnn",
        variant="no_gnn",
        out_dir=run.reward("no_gnn"),
        users=users,
        user_embeddings=None,
        tokenizer_dir=tok_dir,
        lookups=read_lookups(run.data, users),
    )
    # 1) crash right after step 3: the last checkpoint is the one of step 2
    with pytest.raises(RewardTrainingError, match="no_gnn.*injected interruption at step 3"):
        train_reward_model(cfg, run, interrupt_at_step=3, **kwargs)
    assert not (run.reward("no_gnn") / "model.safetensors").exists()
    # 2) rerun: Ray Train hands the step-2 checkpoint back, DeepSpeed restores its shards
    metrics = train_reward_model(cfg, run, **kwargs)
    assert metrics["resumed_from_step"] == 2
    assert metrics["steps"] == metrics["total_steps"] == 5
    assert [p["step"] for p in metrics["loss_curve"]] == [1, 2, 3, 4, 5]  # history carried over
    assert metrics["val_accuracy"] is not None
    assert json.loads((run.reward("no_gnn") / "metrics.json").read_text())["steps"] == 5

    # 3) the saved model is complete: head, gate, user table, adapters all full-size
    out = run.reward("no_gnn")
    state = load_file(str(out / "model.safetensors"))
    fresh = PersonalRewardModel.build(
        cfg.reward,
        "no_gnn",
        user_dim=cfg.gnn.dim,
        n_users=len(users.user_ids),
        tokenizer=load_tokenizer(tok_dir),
    )
    ref = fresh.state_dict()
    for name, tensor in state.items():
        assert tensor.shape == ref[name].shape, name  # ungathered ZeRO-3 params would be [0]
    assert state["score.weight"].shape == (1, fresh.score.weight.shape[1])
    assert not torch.equal(state["score.weight"], ref["score.weight"])  # trained, not init
    lora_b = [k for k in state if k.endswith("lora_B")]
    assert lora_b and any(state[k].abs().sum() > 0 for k in lora_b)  # B starts at 0
    # reload scores like the saved weights say (a forward on the reloaded model is finite)
    model = PersonalRewardModel.load(out).eval()
    tok = load_tokenizer(out / "tokenizer")
    enc = tok(["Human: hi\n\nAssistant: perhaps careful"], return_tensors="pt")
    with torch.no_grad():
        s = model(enc["input_ids"], enc["attention_mask"], user_index=torch.tensor([0]))
    assert torch.isfinite(s).all()


def test_zero3_gradient_checkpointing_trains_copl(ray_session, small_data_run, tmp_path):
    """CoPL (MoLE gated by GNN embeddings) under ZeRO-3 + reentrant checkpointing trains,
    and the saved model holds the trained head, gate and experts at full size."""
    cfg, run, tok_dir = small_data_run(
        tmp_path,
        *SMALL_TRAIN,
        "reward.models=[copl]",
        "train.zero_stage=3",
        "train.gradient_checkpointing=true",
        "train.max_steps=4",
        "train.ckpt_every=4",
        "train.eval_every=4",
    )
    users, _ = load_user_table(cfg, run, need_embeddings=False)
    # stand-in GNN embeddings that separate the two groups (the gate has a signal to route)
    group = torch.tensor([float(g == users.groups[0]) for g in users.groups])[:, None]
    table = (2 * group - 1) * torch.ones(1, cfg.gnn.dim) + 0.1 * torch.randn(
        len(users.user_ids), cfg.gnn.dim, generator=torch.Generator().manual_seed(0)
    )
    metrics = train_reward_model(
        cfg,
        run,
        job="copl",
        variant="copl",
        out_dir=run.reward("copl"),
        users=users,
        user_embeddings=table.numpy(),
        tokenizer_dir=tok_dir,
        lookups=read_lookups(run.data, users),
    )
    assert metrics["steps"] == 4 and metrics["zero_stage"] == 3
    losses = [p["loss"] for p in metrics["loss_curve"]]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)

    state = load_file(str(run.reward("copl") / "model.safetensors"))
    fresh = PersonalRewardModel.build(
        cfg.reward, "copl", user_dim=cfg.gnn.dim, tokenizer=load_tokenizer(tok_dir)
    )
    init = fresh.state_dict()  # the seeded init every worker started from
    for name, tensor in state.items():
        assert tensor.shape == init[name].shape, name  # ungathered ZeRO-3 params are [0]
    gate = [k for k in state if k.startswith("mole.gate.")]
    lora_a = [k for k in state if k.endswith("lora_A")]
    lora_b = [k for k in state if k.endswith("lora_B")]
    assert gate and lora_a and lora_b
    # trained, not init: the head, every gate tensor and every adapter matrix moved
    for name in ["score.weight", *gate, *lora_a]:
        assert not torch.equal(state[name], init[name]), f"{name} never trained"
    r = cfg.reward.rank
    for name in lora_b:  # B starts at 0: the shared block and the expert blocks learnt
        assert state[name][:, :r].abs().sum() > 0, name
        assert state[name][:, r:].abs().sum() > 0, name


@pytest.mark.parametrize("variant", ["vpl", "pref"])
def test_zero3_trains_the_baselines_with_their_own_inputs(
    ray_session, small_data_run, tmp_path, variant
):
    """VPL under ZeRO-3 (each worker builds its users' contexts from its own partitioned
    model, parameters gathered) and PReF (its user weights start from the SVD, in their
    own learning-rate group): both train, and the saved model holds trained heads at full
    size with the backbone's LoRA untouched where the method freezes it (VPL)."""
    cfg, run, tok_dir = small_data_run(
        tmp_path,
        *SMALL_TRAIN,
        f"reward.models=[{variant}]",
        "train.zero_stage=3",
        "train.max_steps=3",
        "train.ckpt_every=3",
        "train.eval_every=3",
        "reward.num_prototypes=3",
        "reward.user_lr_scale=5",
    )
    users, _ = load_user_table(cfg, run, need_embeddings=False)
    metrics = train_reward_model(
        cfg,
        run,
        job=variant,
        variant=variant,
        out_dir=run.reward(variant),
        users=users,
        user_embeddings=None,
        tokenizer_dir=tok_dir,
        lookups=read_lookups(run.data, users),
    )
    assert metrics["steps"] == 3
    assert all(math.isfinite(p["loss"]) for p in metrics["loss_curve"])
    state = load_file(str(run.reward(variant) / "model.safetensors"))
    fresh = PersonalRewardModel.build(
        cfg.reward, variant, cfg.gnn.dim, len(users.user_ids), tokenizer=load_tokenizer(tok_dir)
    )
    init = fresh.state_dict()
    for name, tensor in state.items():
        assert tensor.shape == init[name].shape, name
    heads = [k for k in state if k.startswith("head.")]
    assert heads and all(not torch.equal(state[k], init[k]) for k in heads if "weight" in k)
    if variant == "vpl":  # frozen backbone: B stays 0
        assert all(state[k].abs().sum() == 0 for k in state if k.endswith("lora_B"))
    else:  # the SVD start, then trained
        assert not torch.equal(state["user_table.weight"], init["user_table.weight"])
