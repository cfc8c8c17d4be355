"""Shared fixtures of the reward tests.

Model tests: a module declares ``TEXTS`` (the strings it scores) and ``USER_DIM``; ``tok``
trains a tokenizer on those texts and ``make_model`` builds tiny-preset models for that
user dimension (pytest's ``request.module`` lets one fixture serve every module).
Training tests: ``small_data_run`` writes a small synthetic data set and its tokenizer into
a run directory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from copl_ray.artifacts import RunDir
from copl_ray.config import Config, RewardConfig, load_config
from copl_ray.data.build import build_tables
from copl_ray.reward import PersonalRewardModel, train_tokenizer
from copl_ray.reward.stage import prepare_tokenizer

# a data set the reward pipeline handles in seconds: 40 seen users, 60 prompts, short texts
SMALL_DATA = [
    "data.n_users=40",
    "data.n_unseen_users=4",
    "data.synthetic.n_prompts=60",
    "reward.max_length=64",
]
N_USERS = 5  # rows of the no_gnn user table of ``make_model``'s models


def tiny_reward_cfg(**overrides) -> RewardConfig:
    """The tiny preset's reward section, dropout off (so eval and train scores compare)."""
    return dataclasses.replace(load_config("tiny").reward, dropout=0.0, **overrides)


@pytest.fixture(scope="session")
def reward_cfg() -> Callable[..., RewardConfig]:
    return tiny_reward_cfg


@pytest.fixture(scope="module")
def tok(request, tmp_path_factory):
    """A BPE tokenizer (vocabulary 120) trained on the requesting module's ``TEXTS``."""
    return train_tokenizer(request.module.TEXTS * 4, 120, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def make_model(request, tok) -> Callable[..., PersonalRewardModel]:
    """Factory ``make_model(variant, **reward_overrides)`` -> model in eval mode.

    Built on ``tok`` for the module's ``USER_DIM`` and :data:`N_USERS` users, with every
    LoRA ``B`` drawn from N(0, 0.05²) (seeded): ``B = 0`` at init would make every user
    score alike and hide routing or export mistakes.
    """
    user_dim = request.module.USER_DIM

    def make(variant: str, **overrides) -> PersonalRewardModel:
        model = PersonalRewardModel.build(
            tiny_reward_cfg(**overrides), variant, user_dim, n_users=N_USERS, tokenizer=tok
        )
        with torch.no_grad():
            for _, layer in model.mole.mole_layers():
                layer.lora_B.normal_(std=0.05, generator=torch.Generator().manual_seed(7))
        return model.eval()

    return make


@pytest.fixture(scope="session")
def small_data_run() -> Callable[..., tuple[Config, RunDir, Path]]:
    """Factory ``small_data_run(root, *overrides) -> (cfg, run, tokenizer_dir)``.

    ``cfg`` is the tiny preset with :data:`SMALL_DATA`, ``overrides`` and ``run.dir=root``;
    the data tables are written to ``run.data`` and the tokenizer trained on them.
    """

    def prepare(root: Path, *overrides: str) -> tuple[Config, RunDir, Path]:
        cfg = load_config("tiny", [*SMALL_DATA, *overrides, f"run.dir={root}"])
        run = RunDir(root)
        build_tables(cfg).write(run.data)
        return cfg, run, prepare_tokenizer(cfg, run)

    return prepare
