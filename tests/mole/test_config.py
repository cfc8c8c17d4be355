"""copl_ray/mole/config.py: ``MoLEConfig.validate`` — each rule fails in one line naming
the field (with the config section as prefix); a valid config passes and keeps its values."""

from __future__ import annotations

import pytest

from copl_ray.config import ConfigError, load_config
from copl_ray.mole import MoLEConfig

GATED = dict(num_experts=2, user_dim=4)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(target_modules=[1]), "reward.target_modules: expected a non-empty list of names"),
        (dict(target_modules=[]), "reward.target_modules: must not be empty"),
        (dict(adapter_dtype="int8"), "reward.adapter_dtype: expected one of"),
        (dict(gate_input="z"), "reward.gate_input: expected 'raw' or 'standardized', got 'z'"),
        (dict(rank=0), "reward.rank: expected a value in [1, inf], got 0"),
        (dict(dropout=1.5), "reward.dropout: expected a value in [0, 1), got 1.5"),
        (dict(num_experts=-1), "reward.num_experts: expected a value in [0, inf], got -1"),
        (dict(num_experts=2), "reward.user_dim: must be >= 1 when num_experts > 0, got None"),
        (dict(GATED, user_dim=0), "reward.user_dim: must be >= 1 when num_experts > 0, got 0"),
        (dict(GATED, top_k=3), "reward.top_k: 3 experts per route, but reward.num_experts is 2"),
        (dict(GATED, temperature=0), "reward.temperature: expected a value in (0, inf), got 0"),
        (dict(GATED, prefix="mole.", rank=0), "mole.rank: expected a value in [1, inf], got 0"),
    ],
)
def test_each_rule_is_one_line_naming_the_field(fields, message):
    with pytest.raises(ConfigError) as e:
        MoLEConfig(**fields)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_plain_lora_skips_the_gate_fields():
    """``num_experts=0``: no gate, so top_k / temperature / user_dim are not checked."""
    cfg = MoLEConfig(num_experts=0, top_k=99, temperature=-1.0)
    assert cfg.user_dim is None and cfg.top_k == 99


def test_valid_config_passes_and_scaling_is_alpha_over_rank():
    cfg = MoLEConfig(**GATED, rank=4, alpha=6.0, top_k=2)
    assert (cfg.num_experts, cfg.user_dim, cfg.top_k) == (2, 4, 2)
    assert cfg.scaling == 1.5
    cfg.validate()  # idempotent on a valid config


def test_from_reward_config_copies_the_section_and_overrides_win():
    reward = load_config("tiny").reward
    cfg = MoLEConfig.from_reward_config(reward, user_dim=16, top_k=1, rank=2)
    assert cfg.user_dim == 16 and cfg.rank == 2
    assert cfg.num_experts == reward.num_experts and cfg.alpha == reward.alpha
    assert cfg.target_modules == list(reward.target_modules)
    assert cfg.gate_input == reward.gate_input
    with pytest.raises(ConfigError, match=r"^reward\.rank: "):
        MoLEConfig.from_reward_config(reward, user_dim=16, rank=0)
