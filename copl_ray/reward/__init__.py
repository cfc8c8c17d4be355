"""Personalized reward model (pure torch + transformers/peft; no Ray)."""

from copl_ray.reward.backbone import (
    TINY_GEMMA,
    build_backbone,
    load_tokenizer,
    tiny_gemma_config,
    train_tokenizer,
)
from copl_ray.reward.model import PersonalRewardModel, btl_loss, last_token_index

__all__ = [
    "TINY_GEMMA",
    "PersonalRewardModel",
    "btl_loss",
    "build_backbone",
    "last_token_index",
    "load_tokenizer",
    "tiny_gemma_config",
    "train_tokenizer",
]
