"""The tldr / prism / personalllm presets load, and their data stage builds from a local
fixture in the hub's schema through ``--set data.path=...`` (the CLI a user runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from copl_ray.config import load_config
from tests.data.test_personalllm import write_personalllm
from tests.data.test_prism import write_prism
from tests.data.test_tldr import write_tldr

WRITERS = {"tldr": write_tldr, "prism": write_prism, "personalllm": write_personalllm}


@pytest.mark.parametrize("preset", sorted(WRITERS))
def test_real_data_preset_builds_from_local_path(preset: str, tmp_path: Path, data_cli) -> None:
    cfg = load_config(preset)
    assert cfg.data.source == preset and cfg.data.path is None  # null = the hub by name
    folder = WRITERS[preset](tmp_path / preset)
    out = tmp_path / "out"
    p = data_cli("--config", preset, "--set", f"data.path={folder}", "--out", str(out))
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"] == preset and summary["n_users_seen"] >= 2
    assert (summary["groups"] != []) == (preset == "personalllm")  # only simulated users
    if preset == "personalllm":
        assert (out / "user_weights.parquet").is_file()


def test_preflight_knows_which_real_sources_have_groups() -> None:
    """Oracle follows the data: PersonalLLM's users have groups (their dominant reward
    model); TL;DR workers and PRISM participants have none, so a named oracle is an error."""
    from copl_ray.config import ConfigError
    from copl_ray.preflight import data_has_groups, models_follow_data

    assert data_has_groups(load_config("personalllm"))[0] is True
    cfg = load_config("personalllm")
    models_follow_data(cfg)
    assert "oracle" in cfg.reward.models
    for preset in ("tldr", "prism"):
        assert data_has_groups(load_config(preset))[0] is False
        cfg = load_config(preset, ["reward.models=[copl,oracle]"])
        with pytest.raises(ConfigError, match=r"reward.models: 'oracle' needs known user groups"):
            models_follow_data(cfg)
