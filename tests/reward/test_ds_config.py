"""DeepSpeed config from the typed config, the LR schedule, and the presets' train sections."""

from __future__ import annotations

import math

import pytest

from copl_ray.config import ConfigError, TrainConfig, load_config
from copl_ray.reward.ds_config import build_ds_config, warmup_steps
from copl_ray.schedule import cosine_with_warmup


def test_zero2_cpu_config_uses_torch_adam_and_no_offload():
    tc = TrainConfig(zero_stage=2, lr=1e-3, weight_decay=0.01, batch_size=8)
    ds = build_ds_config(tc, micro_batch=8, world_size=2, on_gpu=False)
    assert ds["train_micro_batch_size_per_gpu"] == 8
    assert ds["train_batch_size"] == 16
    assert ds["zero_optimization"]["stage"] == 2
    assert "offload_optimizer" not in ds["zero_optimization"]
    opt = ds["optimizer"]
    assert opt["type"] == "AdamW" and opt["params"]["torch_adam"] is True
    assert opt["params"]["lr"] == 1e-3 and opt["params"]["weight_decay"] == 0.01
    assert ds["bf16"]["enabled"] is False


def test_zero3_offload_bf16_config():
    tc = TrainConfig(zero_stage=3, offload=True, bf16=True, grad_accum=2)
    ds = build_ds_config(tc, micro_batch=16, world_size=8, on_gpu=True)
    z = ds["zero_optimization"]
    assert z["stage"] == 3
    assert z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    assert z["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["optimizer"]["params"]["torch_adam"] is False  # DeepSpeedCPUAdam when offloading
    assert ds["bf16"]["enabled"] is True
    assert ds["train_batch_size"] == 16 * 8 * 2


def test_bad_zero_stage_names_the_field():
    # the same bound and message as at config load time (copl_ray.config field bounds)
    with pytest.raises(
        ConfigError, match=r"^train\.zero_stage: expected a value in \[0, 3\], got 4$"
    ):
        build_ds_config(TrainConfig(zero_stage=4), micro_batch=1, world_size=1, on_gpu=False)


def test_cosine_schedule_with_warmup():
    total = 100
    n_warm = warmup_steps(TrainConfig(warmup_ratio=0.03), total)
    assert n_warm == 3
    f = cosine_with_warmup(total, n_warm)
    assert [round(f(t), 6) for t in range(3)] == [round(1 / 3, 6), round(2 / 3, 6), 1.0]
    assert f(3) == pytest.approx(1.0)
    mid = n_warm + (total - n_warm) / 2
    assert f(int(mid)) == pytest.approx(0.5 * (1 + math.cos(math.pi * (int(mid) - 3) / 97)))
    assert f(total) == pytest.approx(0.0, abs=1e-12)
    assert all(f(t) >= f(t + 1) for t in range(n_warm, total))


@pytest.mark.parametrize(
    ("preset", "batch", "zero"),
    [("ufp2-gemma-2b", 32, 2), ("ufp4-gemma-2b", 32, 2), ("ufp4-gemma-7b", 16, 3)],
)
def test_gemma_presets_follow_method(preset, batch, zero):
    """docs/method.md §3: M=8, n=8, τ=1, lr 5e-5, cosine warm-up 0.03, 32 pairs/GPU (2b),
    16 (7b)."""
    cfg = load_config(preset)
    r, t = cfg.reward, cfg.train
    assert (r.num_experts, r.rank, r.temperature, r.top_k, r.gate_hidden) == (8, 8, 1.0, 1, 256)
    assert r.baseline_rank == 64
    assert t.lr == 5e-5 and t.warmup_ratio == 0.03 and t.weight_decay == 0.001
    assert t.batch_size == batch and t.zero_stage == zero
    assert t.use_gpu and t.bf16 and t.grad_accum == 1
