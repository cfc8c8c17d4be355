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
    # docs/method.md §2/§3: d=512, L=4, 300 epochs, lr 1e-4; M=8, n=8, tau=1, lr 5e-5,
    # warm-up 0.03, batch 32/GPU (2b) and 16/GPU (7b); UF-P-2 n=8 over 2 groups, UF-P-4 n=16
    # over 4 groups.
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
        ("data.synthetic.label_noise=.nan", "data.synthetic.label_noise: expected a finite"),
        ("reward.top_k=5", "reward.top_k: 5 experts per route, but reward.num_experts is 4"),
        ("serve.min_replicas=3", "serve.min_replicas: 3 > serve.max_replicas 2"),
    ],
)
def test_out_of_range_value_names_the_field(override, message):
    """A value outside its range fails at load time with the field path (field bounds)."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("tiny", [override])


def test_every_preset_is_inside_the_bounds():
    """The shipped presets load (bounds included) and every bound names a real field."""
    from copl_ray.config import BOUNDS, check_value

    for name in list_presets():
        load_config(name)
    default = Config()
    for path in BOUNDS:
        node = default
        for key in path.split("."):
            assert hasattr(node, key), path
            node = getattr(node, key)
    # the ranges are read from the fields' metadata, nested sections included
    assert BOUNDS["train.zero_stage"] == (0, 3, "[]")
    assert BOUNDS["data.synthetic.responses_per_prompt"] == (2, None, "[]")
    assert "reward.backbone" not in BOUNDS  # a name, not a number: no range
    with pytest.raises(ConfigError, match=re.escape("serve.port: expected a value in [1, 65535]")):
        check_value("serve.port", 0)


def test_every_field_has_help_text():
    """Each leaf field says what it is next to its default (peft's field metadata)."""
    import dataclasses
    import typing

    def missing(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from missing(hints[f.name], f"{prefix}{f.name}.")
            elif not f.metadata.get("help"):
                yield f"{prefix}{f.name}"

    hints = typing.get_type_hints(Config)
    sections = [
        f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])
    ]
    assert len(sections) == 9
    assert [p for s in sections for p in missing(hints[s], f"{s}.")] == []


# ------------------------------------------------------------ issue 17: fail at load
@pytest.mark.parametrize(
    "override, message",
    [
        ("adapt.hops=3", "adapt.hops: must be even"),
        ("adapt.variants=[]", "adapt.variants: must not be empty"),
        ("reward.models=[]", "reward.models: must not be empty"),
        ("reward.models=[copl, uniform, copl]", "reward.models: duplicate entries ['copl']"),
        ("reward.target_modules=[]", "reward.target_modules: must not be empty"),
        ("eval.label_counts=[0]", "eval.label_counts[0]: expected >= 1"),
        ("eval.label_counts=[1, -1]", "eval.label_counts[1]: expected >= 1"),
        ("onboarding.answer_counts=[0, 4]", "onboarding.answer_counts[0]: expected >= 1"),
        ("onboarding.selectors=[copl, greedy]", "onboarding.selectors: unknown ['greedy']"),
        ("onboarding.selectors=[copl, copl]", "onboarding.selectors: duplicate entries"),
        ("onboarding.shortlist=0", "onboarding.shortlist: expected a value in [1, inf]"),
        ("serve.question_selector=bald", "serve.question_selector"),
        ("train.max_steps=0", "train.max_steps: expected -1 (the epochs decide) or >= 1, got 0"),
        ("train.max_steps=-2", "train.max_steps: expected -1"),
        ("gnn.lr=.inf", "gnn.lr: expected a finite number, got inf"),
        ("gnn.lr=-.inf", "gnn.lr: expected a finite number, got -inf"),
        ("gnn.lr=.nan", "gnn.lr: expected a finite number, got nan"),
        ("reward.alpha=1e999", "reward.alpha: expected a finite number, got inf"),
        ("serve.batch_wait_timeout_s=.inf", "serve.batch_wait_timeout_s: expected a finite"),
        ("=3", "override '=3': empty key"),
        ("gnn..lr=3", "override 'gnn..lr=3': empty key"),
        ("run.dir=''", "run.dir: must not be empty"),
    ],
)
def test_misuse_fails_at_load_with_the_field(override, message):
    """Issue 17 §3/§5.1-5.3: each used to pass the load (and fail after a stage, or be
    silently reinterpreted: max_steps=0 trained the full schedule, label_counts=[-1] read
    all but one label, .inf trained 100 epochs of NaN)."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("tiny", [override])


def test_error_quotes_a_huge_value_shortly():
    """A wrong 1 MB value makes a short error line, not a 2 MB one (config.short_repr)."""
    from copl_ray.config import short_repr

    with pytest.raises(ConfigError) as e:
        load_config("tiny", ["gnn.epochs=" + "x" * 1_000_000])
    assert len(str(e.value)) < 200 and "1,000,002 chars" in str(e.value)
    assert short_repr("abc") == "'abc'" and len(short_repr(list(range(10**5)))) < 120


def test_preset_extending_itself_names_the_chain(tmp_path):
    me = tmp_path / "me.yaml"
    me.write_text(f"extends: {me}\ngnn:\n  dim: 8\n")
    with pytest.raises(ConfigError, match=r"extends: cycle .*me\.yaml -> .*me\.yaml"):
        load_config(str(me))
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"extends: {b}\n")
    b.write_text(f"extends: {a}\n")
    with pytest.raises(ConfigError, match=r"cycle .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(str(a))


def test_non_utf8_yaml_names_the_file(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text"):
        load_config(str(p))


def test_user_yaml_extending_a_preset_still_works(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("extends: tiny\ngnn:\n  dim: 16\n")
    cfg = load_config(str(p), ["train.epochs=2"])
    assert cfg.gnn.dim == 16 and cfg.gnn.layers == 2  # tiny's layers
    # what the user named (own YAML, --set) is recorded; what tiny supplied is not
    from copl_ray.config import was_set

    assert was_set(cfg, "gnn.dim") and was_set(cfg, "train.epochs")
    assert not was_set(cfg, "reward.models") and not was_set(cfg, "gnn.layers")
    assert "explicit" not in cfg.to_dict() and "explicit" not in cfg.to_yaml()
    assert not load_config("tiny").explicit
    assert was_set(load_config("tiny", ["reward.models=[copl]"]), "reward.models")
    assert was_set(load_config("tiny", ["reward={models: [copl]}"]), "reward.models")


# ------------------------------------------------------------- issue 17 §1: paths
def test_every_path_is_absolute_when_loaded_from_another_cwd(tmp_path, monkeypatch):
    """Ray workers do not run in the driver's cwd: no relative path may leave the load."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ratings.parquet").write_bytes(b"")
    (tmp_path / "my-backbone").mkdir()
    cfg = load_config(
        "tiny",
        [
            "data.path=prefs.csv",
            "serve.users_dir=users",
            "data.ufp_ratings=ratings.parquet",
            "data.length_tokenizer=my-backbone",
            "reward.backbone=my-backbone",
        ],
    )
    assert cfg.run.dir == str(tmp_path / "runs" / "tiny")
    assert cfg.data.path == str(tmp_path / "prefs.csv")  # a path, even before it exists
    assert cfg.serve.users_dir == str(tmp_path / "users")
    assert cfg.data.ufp_ratings == str(tmp_path / "ratings.parquet")
    assert cfg.data.length_tokenizer == cfg.reward.backbone == str(tmp_path / "my-backbone")
    # hub names (no such local file) and URIs stay as they are
    assert cfg.data.ufp_pairs == "argilla/ultrafeedback-binarized-preferences-cleaned"
    assert load_config("ufp4-gemma-7b").reward.backbone == "google/gemma-7b-it"
    assert load_config("tiny", ["run.dir=s3://bucket/run"]).run.dir == "s3://bucket/run"
    # the saved config.yaml holds them absolute, and reloads to the same config elsewhere
    save_config(cfg, tmp_path / "config.yaml")
    monkeypatch.chdir("/")
    again = load_config(str(tmp_path / "config.yaml"))
    assert again.to_dict() == cfg.to_dict()
    for name in list_presets():
        assert load_config(name).run.dir.startswith("/"), name


def test_absolute_run_dir_keeps_stage_reuse_across_cwds(tmp_path, monkeypatch):
    """run.dir is in no stage's hashed sections: the same run from another cwd reuses."""
    from copl_ray.artifacts import STAGE_SECTIONS

    monkeypatch.chdir(tmp_path)
    a = load_config("tiny", [f"run.dir={tmp_path / 'r'}"])
    monkeypatch.chdir("/")
    b = load_config("tiny", [f"run.dir={tmp_path / 'r'}"])
    c = load_config("tiny", ["run.dir=elsewhere"])
    for sections in STAGE_SECTIONS.values():
        assert "run" not in sections
        assert a.section_hash(*sections) == b.section_hash(*sections) == c.section_hash(*sections)
