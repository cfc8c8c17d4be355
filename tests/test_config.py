"""Config tree: presets load, overrides apply, bad keys/types fail with the full key path."""

from __future__ import annotations

import re

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
    # YAML 1.1 reads exponents without a dot as strings; float fields accept them
    cfg = load_config("tiny", ["gnn.lr=1e-2", "train.lr=5E-5", "reward.alpha=16"])
    assert (cfg.gnn.lr, cfg.train.lr, cfg.reward.alpha) == (0.01, 5e-5, 16.0)


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


@pytest.mark.parametrize(
    "override, message",
    [
        ("reward.gate_dense_warmup=1.0", "reward.gate_dense_warmup: expected a value in [0, 1)"),
        ("reward.gate_dense_warmup=-0.1", "reward.gate_dense_warmup: expected a value in [0, 1)"),
        ("gnn.dim=0", "gnn.dim: expected a value in [1, inf]"),
        ("train.lr=0", "train.lr: expected a value in (0, inf)"),
        ("train.zero_stage=4", "train.zero_stage: expected a value in [0, 3]"),
        ("gnn.edge_dropout=1", "gnn.edge_dropout: expected a value in [0, 1)"),
        ("data.synthetic.label_noise=.nan", "data.synthetic.label_noise: expected a value"),
        ("reward.top_k=5", "reward.top_k: 5 experts per route, but reward.num_experts is 4"),
        ("serve.min_replicas=3", "serve.min_replicas: 3 > serve.max_replicas 2"),
    ],
)
def test_out_of_range_value_names_the_field(override, message):
    """A value outside its range fails at load time with the field path (config_bounds)."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("tiny", [override])


def test_every_preset_is_inside_the_bounds():
    """The shipped presets load (bounds included) and every bound names a real field."""
    from copl_ray.config_bounds import BOUNDS

    for name in list_presets():
        load_config(name)
    default = Config()
    for path in BOUNDS:
        node = default
        for key in path.split("."):
            assert hasattr(node, key), path
            node = getattr(node, key)
