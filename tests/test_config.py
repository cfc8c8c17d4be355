"""Config tree: presets load, overrides apply, bad keys/types fail with the full key path."""

from __future__ import annotations

import pytest
import yaml

from copl_ray.config import Config, ConfigError, list_presets, load_config, save_config


@pytest.mark.parametrize(
    "preset", ["tiny", "ufp2-gemma-2b", "ufp4-gemma-2b", "ufp4-gemma-7b", "ukp"]
)
def test_every_shipped_preset_loads(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, Config)
    assert cfg.name == preset


def test_presets_listed():
    assert {"tiny", "ufp2-gemma-2b", "ufp4-gemma-2b", "ufp4-gemma-7b", "ukp"} <= set(list_presets())


def test_paper_hyperparameters_in_gemma_presets():
    # METHOD.md §2/§3: d=512, L=4, 300 epochs, lr 1e-4; M=8, n=8, tau=1, lr 5e-5, warm-up 0.03,
    # batch 32/GPU (2b) and 16/GPU (7b); UF-P-2 n=8 over 2 groups, UF-P-4 n=16 over 4 groups.
    c2, c4, c7 = (load_config(p) for p in ("ufp2-gemma-2b", "ufp4-gemma-2b", "ufp4-gemma-7b"))
    for c in (c2, c4, c7):
        assert (c.gnn.dim, c.gnn.layers, c.gnn.epochs, c.gnn.lr) == (512, 4, 300, 1e-4)
        assert (c.reward.num_experts, c.reward.rank, c.reward.temperature) == (8, 8, 1.0)
        assert (c.train.lr, c.train.warmup_ratio) == (5e-5, 0.03)
        assert c.data.n_users == 10000 and c.data.n_unseen_users == 100
    assert (c2.data.n_groups, c2.data.labels_per_user, c2.train.batch_size) == (2, 8, 32)
    assert (c4.data.n_groups, c4.data.labels_per_user, c4.train.batch_size) == (4, 16, 32)
    assert (c7.reward.backbone, c7.train.batch_size, c7.train.zero_stage) == (
        "google/gemma-7b-it",
        16,
        3,
    )


def test_overrides_apply_with_yaml_types():
    cfg = load_config(
        "tiny", ["gnn.epochs=7", "reward.target_modules=[q_proj,k_proj]", "data.path=null"]
    )
    assert cfg.gnn.epochs == 7
    assert cfg.reward.target_modules == ["q_proj", "k_proj"]
    assert cfg.data.path is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("gnn.epochs=many", "gnn.epochs: expected int"),
        ("gnn.epoch=3", "gnn.epoch: unknown key"),
        ("data.synthetic.label_noise=abc", "data.synthetic.label_noise: expected float"),
        ("gnn.message=other", "gnn.message: expected one of"),
        ("reward.models=copl", "reward.models: expected a list"),
        ("nosuchsection.x=1", "nosuchsection: unknown key"),
        ("gnn.epochs", "expected key.path=value"),
    ],
)
def test_bad_override_names_full_key_path(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config("tiny", [override])


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="no such file or preset.*tiny"):
        load_config("does-not-exist")


def test_yaml_file_and_roundtrip(tmp_path):
    cfg = load_config("tiny", ["gnn.dim=32"])
    path = tmp_path / "resolved.yaml"
    save_config(cfg, path)
    again = load_config(str(path))
    assert again.to_dict() == cfg.to_dict()
    assert yaml.safe_load(path.read_text())["gnn"]["dim"] == 32


def test_bad_yaml_file_names_the_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("gnn:\n  layers: two\n")
    with pytest.raises(ConfigError, match="gnn.layers: expected int"):
        load_config(str(p))


def test_section_hash_tracks_only_named_sections():
    a, b = load_config("tiny"), load_config("tiny", ["reward.rank=2"])
    assert a.section_hash("data", "gnn") == b.section_hash("data", "gnn")
    assert a.section_hash("reward") != b.section_hash("reward")
