"""DeepSpeed config built from the typed :class:`~copl_ray.config.TrainConfig`.

CPU and GPU differ only in values, not code paths (docs/stack-notes.md S5):

- CPU: gloo backend, fp32, ``torch_adam`` (no compiled optimizer op to build);
- GPU: NCCL, ``bf16`` when ``train.bf16``;
- ``train.offload``: optimizer state (ZeRO-2/3) and parameters (ZeRO-3) on CPU with
  DeepSpeedCPUAdam (JIT-compiled once per machine, ~40 s).

The schedule is not in the DeepSpeed config: :func:`copl_ray.schedule.cosine_with_warmup`
(linear warm-up over ``w`` = :func:`warmup_steps` steps, then cosine to 0; the formula the
GNN uses too) is passed to ``deepspeed.initialize(lr_scheduler=...)``.
"""

from __future__ import annotations

import math
from typing import Any

from copl_ray.config import TrainConfig, check_value


def warmup_steps(train: TrainConfig, total_steps: int) -> int:
    return max(1, math.ceil(train.warmup_ratio * total_steps)) if train.warmup_ratio > 0 else 0


def build_ds_config(
    train: TrainConfig, *, micro_batch: int, world_size: int, on_gpu: bool
) -> dict[str, Any]:
    """The DeepSpeed JSON config dict (``micro_batch`` pairs per worker per step)."""
    check_value("train.zero_stage", train.zero_stage)  # the loader's bound, for code-built configs
    offload = train.offload and train.zero_stage >= 2
    zero: dict[str, Any] = {
        "stage": train.zero_stage,
        "overlap_comm": on_gpu,
        "contiguous_gradients": True,
        "reduce_bucket_size": 5e7,
    }
    if train.zero_stage == 3:
        zero.update(
            {
                # Save path gathers with GatheredParameters; this also lets DeepSpeed write a
                # consolidated 16-bit state dict if someone calls save_16bit_model.
                "stage3_gather_16bit_weights_on_model_save": True,
                "stage3_param_persistence_threshold": 1e4,
                "stage3_prefetch_bucket_size": 5e7,
            }
        )
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
        if train.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": micro_batch * world_size * train.grad_accum,
        "gradient_clipping": train.max_grad_norm,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": train.lr,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": train.weight_decay,
                # torch AdamW needs no compiled op; CPU offload needs DeepSpeedCPUAdam.
                "torch_adam": not offload,
            },
        },
        "zero_optimization": zero,
        "bf16": {"enabled": bool(train.bf16)},
        "steps_per_print": 10**9,  # progress is ours (rank 0), not DeepSpeed's
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    return cfg
