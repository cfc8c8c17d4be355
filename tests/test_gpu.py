"""GPU checks, run by hand on a CUDA machine: ``python -m pytest -m gpu tests/test_gpu.py -q``.

Every test is marked ``gpu``: pyproject's ``addopts = -m 'not gpu'`` deselects them, so CI
(no GPU) never runs them, and each one skips — never fails — where CUDA (or, for the
DeepSpeed test, ``deepspeed``) is missing. The code paths are the CPU ones; only config
values differ (``reward.backbone_dtype=bfloat16``, ``gnn.use_gpu=true``,
``train.use_gpu/bf16=true``).

Toy preference set (reward tests): two groups of users with OPPOSITE preferences on the
same 8 pairs. A scorer that ignores the user sees every pair once in each order, so its
mean BTL loss is at least ``log 2 ≈ 0.693`` (``½(−log σ(d) − log σ(−d)) ≥ log 2``, equality
at ``d = 0``); a loss well under that (< 0.5) proves the user route through the MoLE works.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import socket

import pytest
import torch

from copl_ray.config import load_config
from copl_ray.reward import PersonalRewardModel, btl_loss, train_tokenizer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = torch.device("cuda")
USER_DIM = 16
FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"]
LIKED = [f"i like the {f} very much" for f in FRUITS]
DISLIKED = [f"the {f} is bad and dull" for f in FRUITS]
USERS_PER_GROUP = 4
LOG2 = math.log(2.0)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer((LIKED + DISLIKED) * 4, 120, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def toy_batch(tok):
    """``(ids, mask, user_emb)`` on CUDA: 2 groups × 4 users × 8 pairs = 64 pairs, as
    ``[chosen_1..B, rejected_1..B]`` rows; group 0 prefers LIKED, group 1 DISLIKED."""
    g = torch.Generator().manual_seed(0)
    direction = torch.nn.functional.normalize(torch.randn(USER_DIM, generator=g), dim=0)
    chosen, rejected, users = [], [], []
    for group, sign in ((0, 1.0), (1, -1.0)):
        for _ in range(USERS_PER_GROUP):
            emb = sign * direction + 0.05 * torch.randn(USER_DIM, generator=g)
            for a, b in zip(LIKED, DISLIKED, strict=True):
                chosen.append(a if group == 0 else b)
                rejected.append(b if group == 0 else a)
                users.append(emb)
    enc = tok(chosen + rejected, padding=True, return_tensors="pt")
    return enc["input_ids"].to(CUDA), enc["attention_mask"].to(CUDA), torch.stack(users).to(CUDA)


def bf16_reward_cfg(**overrides):
    """The tiny preset's reward section with a bf16 backbone (the GPU presets' dtype)."""
    return dataclasses.replace(load_config("tiny").reward, backbone_dtype="bfloat16", **overrides)


def pair_loss(model, ids, mask, users, user_emb=None) -> torch.Tensor:
    scores = model(ids, mask, user_emb=users if user_emb is None else user_emb)
    b = users.shape[0]
    return btl_loss(scores[:b], scores[b:])


# --------------------------------------------------------------------- (a) reward model
def test_bf16_reward_model_trains_saves_and_reloads_on_cuda(tok, toy_batch, tmp_path):
    ids, mask, users = toy_batch
    model = PersonalRewardModel.build(bf16_reward_cfg(), "copl", USER_DIM, tokenizer=tok).to(CUDA)
    frozen = [p for p in model.backbone.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)  # adapters stay fp32

    # gate: logits/softmax in fp32 even for a bf16 user embedding under bf16 autocast
    with torch.autocast("cuda", dtype=torch.bfloat16):
        gate = model.mole.compute_gate(users.to(torch.bfloat16), noise=False)
    assert gate.logits.dtype == gate.probs.dtype == torch.float32
    torch.testing.assert_close(gate.probs.sum(-1), torch.ones_like(gate.probs.sum(-1)))

    model.eval()
    with torch.no_grad():
        before = float(pair_loss(model, ids, mask, users))
        scores = model(ids, mask, user_emb=users)
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()

    model.train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad(set_to_none=True)
        loss = pair_loss(model, ids, mask, users)
        assert torch.isfinite(loss)
        loss.backward()
        grads = [p.grad for p in model.trainable_parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        opt.step()
    assert all(p.grad is None for p in frozen)

    model.eval()
    with torch.no_grad():
        after = float(pair_loss(model, ids, mask, users))
        scores = model(ids, mask, user_emb=users)
    assert torch.isfinite(scores).all()
    # user-blind floor is log 2 (module docstring): under it = the route carries the user
    assert after < before and after < 0.5 < LOG2, (before, after)

    model.save(tmp_path / "model")
    loaded = PersonalRewardModel.load(tmp_path / "model", device=CUDA).eval()
    assert next(loaded.backbone.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        again = loaded(ids, mask, user_emb=users)
    # same weights, same kernels, same GPU: bit-identical
    assert torch.equal(again, scores)


# --------------------------------------------------------------------- (b) GNN
def test_gnn_full_schedule_on_cuda_matches_cpu_accuracy(tmp_path):
    """Same tiny planted graph (2 groups × 8 labels, noise-free, so the ceiling is 100%),
    trained on CPU and on CUDA: both reach the paper's Table 5 level for this shape (≥84%,
    as tests/graph/test_accuracy.py) and land within 3 points of each other (the two
    differ only by float reduction order and the dropout RNG stream)."""
    from copl_ray.data.build import build_tables
    from copl_ray.graph.export import train_gnn_local

    shape = ["data.n_groups=2", "data.labels_per_user=8", "gnn.tsne=false", "gnn.eval_every=10"]
    result = {}
    for name, use_gpu in (("cpu", "false"), ("cuda", "true")):
        cfg = load_config("tiny", [*shape, f"gnn.use_gpu={use_gpu}"])
        result[name] = train_gnn_local(cfg, build_tables(cfg), tmp_path / name)
    for name, m in result.items():
        assert m["truth_accuracy"] >= 0.84, (name, m["truth_accuracy"])
        assert m["heldout_accuracy"] >= 0.84, (name, m["heldout_accuracy"])
    gap = abs(result["cpu"]["truth_accuracy"] - result["cuda"]["truth_accuracy"])
    assert gap <= 0.03, {k: v["truth_accuracy"] for k, v in result.items()}


# --------------------------------------------------------------------- (c) DeepSpeed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed")
def test_deepspeed_zero2_bf16_single_gpu_keeps_reward_head(tok, toy_batch, tmp_path, monkeypatch):
    """One-rank NCCL group, ZeRO-2 bf16 engine built by copl_ray.reward.ds_config from the
    typed config (as the Ray worker does), a few steps on the toy set, then the product's
    save path: the exported model holds the trained reward head."""
    for key, value in dict(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        LOCAL_WORLD_SIZE="1",
    ).items():
        monkeypatch.setenv(key, value)
    import deepspeed
    import torch.distributed as dist
    from safetensors.torch import load_file

    from copl_ray.reward.ds_config import build_ds_config
    from copl_ray.reward.train import save_model
    from copl_ray.schedule import cosine_with_warmup

    ids, mask, users = toy_batch
    cfg = load_config(
        "tiny", ["train.use_gpu=true", "train.bf16=true", "train.zero_stage=2", "train.lr=0.003"]
    )
    tc = cfg.train
    steps = 20
    ds_config = build_ds_config(tc, micro_batch=users.shape[0], world_size=1, on_gpu=True)
    deepspeed.init_distributed(dist_backend="nccl")
    try:
        torch.cuda.set_device(0)
        model = PersonalRewardModel.build(cfg.reward, "copl", USER_DIM, tokenizer=tok)
        head_init = model.score.weight.detach().float().clone()
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=model.trainable_parameters(),
            config=ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
                opt, cosine_with_warmup(steps, 1)
            ),
        )
        assert engine.zero_optimization_stage() == 2 and engine.bfloat16_enabled()
        assert model.score.weight.dtype == torch.bfloat16  # the engine casts the module
        losses = []
        for _ in range(steps):
            loss = pair_loss(engine, ids, mask, users, user_emb=users.to(torch.bfloat16))
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
        assert all(math.isfinite(x) for x in losses)
        assert min(losses[-5:]) < losses[0], losses

        engine.save_checkpoint(str(tmp_path / "ckpt"), tag="t", exclude_frozen_parameters=True)
        assert (tmp_path / "ckpt" / "t").is_dir()
        save_model(engine, model, tmp_path / "model", zero_stage=2, rank=0)
        state = load_file(str(tmp_path / "model" / "model.safetensors"))
        head = [k for k in state if k.endswith("score.weight")]
        assert head, sorted(state)[:20]
        saved = state[head[0]].float().cpu()
        torch.testing.assert_close(saved, model.score.weight.detach().float().cpu())
        assert not torch.equal(saved, head_init.cpu())  # trained, not the init
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
