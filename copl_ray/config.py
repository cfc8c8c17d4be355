"""Typed configuration tree for every copl-ray stage.

One tree ``Config(data, gnn, adapt, reward, train, eval, serve, run)`` of frozen-ish
dataclasses, loaded from a YAML preset shipped in ``copl_ray/presets/`` (or any YAML
path) and modified with ``a.b.c=value`` overrides (torchtune style)::

    cfg = load_config("tiny", ["gnn.epochs=50", "reward.num_experts=4"])

Unknown keys, wrong types and out-of-range values (copl_ray/config_bounds.py) raise
:class:`ConfigError` naming the full key path, e.g. ``gnn.epochs: expected int, got 'many'``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin

import yaml

PRESET_DIR = Path(__file__).parent / "presets"
_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


class ConfigError(ValueError):
    """A config value or key is invalid; the message starts with the full key path."""


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters: what an error message may quote.

    A wrong 1 MB value must not become a 2 MB error line; the cut says how long it was.
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: max(limit - 3, 1)]}... ({len(text):,} chars)"


# --------------------------------------------------------------------------- tree
@dataclass
class SyntheticConfig:
    """Generative model of the embedded synthetic data (see copl_ray/data/synthetic.py)."""

    n_prompts: int = 400
    responses_per_prompt: int = 4
    label_noise: float = 0.0  # probability a user's label is flipped (sets the accuracy ceiling)
    max_rating: int = 5
    latent_attributes: int = 4  # attributes expressed in text; groups = the first n_groups
    response_words: int = 30  # fixed words per response (> n_groups * max_rating)


@dataclass
class DataConfig:
    source: Literal["synthetic", "ufp", "own", "ukp", "tldr", "prism", "personalllm"] = "synthetic"
    # own file / ukp folder / local UF-P, TL;DR, PRISM, PersonalLLM files (None = HF hub by name)
    path: str | None = None
    n_groups: int = 2  # UF-P-2 / UF-P-4 (synthetic: 2 or 4 attribute groups)
    n_users: int = 200  # seen users, evenly over groups
    n_unseen_users: int = 20  # unseen users, evenly over groups
    labels_per_user: int = 8  # n: ALL gives exactly n, AVG uniform in [1, 2n-1]
    sampling: Literal["all", "avg"] = "all"
    val_pair: bool = True  # hold one of a user's n labels out as GNN validation pair
    test_pairs_seen: int = 10
    test_pairs_unseen: int = 50
    heldout_prompt_frac: float = 0.1
    tie_policy: Literal["coin", "drop"] = "coin"
    ufp2_require_disagreement: bool = False  # UF-P-2: keep only helpfulness != honesty pairs
    max_tokens: int = 1024  # token-length filter (UF-P)
    length_tokenizer: str | None = None  # tokenizer for the length filter (None = whitespace)
    ukp_min_labels: int = 10  # UKP: workers with fewer non-tie judgments are dropped (counted)
    test_pool: Literal["all", "pool"] = "all"  # test candidates: all held-out pairs / pool filter
    ufp_ratings: str = "openbmb/UltraFeedback"  # HF name or local parquet/jsonl file
    ufp_pairs: str = "argilla/ultrafeedback-binarized-preferences-cleaned"  # HF name or file
    user_test_frac: float = 0.2  # own data / UKP: share of each user's labels held out as test
    own_min_labels: int = 3  # own data: users with fewer labels are dropped (counted)
    # own data / UKP: a pair is controversial when its minority side holds at least this
    # share of its annotators (>= 2 of them); copl_ray/data/own.py derives the default
    controversial_min_share: float = 0.25
    # own data / UKP: rows with a prompt or response longer than this are dropped (counted
    # text_too_long); ~5k tokens, far beyond any reward.max_length the presets train on
    max_text_chars: int = 20000
    # TL;DR / PRISM: workers / participants with fewer usable labels are dropped (counted)
    min_user_labels: int = 10
    # PersonalLLM: Dirichlet concentration of a simulated user's reward-model weights; small
    # = one dominant reward model per user (LoRe's PersonalLLM population uses 0.1)
    personalllm_alpha: float = 0.1
    # PersonalLLM: the reward models users mix (null = all ten score columns of the dataset)
    personalllm_reward_models: list[str] | None = None
    seed: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class GNNConfig:
    dim: int = 512
    layers: int = 4
    message: Literal["paper", "reference"] = "paper"
    leaky_slope: float = 0.2
    edge_dropout: float = 0.1
    l2: float = 1e-6
    # 0: λ·Σ over each step's pairs (official form: its strength grows with the batch);
    # N > 0: λ·(N/B)·Σ_B, the per-pair strength of an N-pair batch in every schedule
    l2_reference_batch: int = 0
    epochs: int = 300
    lr: float = 1e-4
    # lr of the layers' d×d weights = lr × this (the embedding tables keep lr). Full-graph
    # steps at scale generalise with slow tables and fast weights (e.g. lr 1e-4 × 100:
    # README "GNN time-to-accuracy"); an Adam step moves a weight's output ∝ d, so the
    # best scale falls with the width (d=64: 300 beat 100; d=512: 100 beat 30)
    weight_lr_scale: float = 1.0
    # initial embeddings: "random" (Xavier: the paper and the official code) or "spectral":
    # the first spectral_k coordinates of both tables start at the top singular vectors of
    # the degree-normalised signed user x response matrix, each with RMS spectral_scale
    # (copl_ray/graph/spectral.py); the rest stay random and everything trains. Skips the
    # ~50-step plateau a full-graph run spends before the groups separate (README "GNN
    # time-to-accuracy")
    init: Literal["random", "spectral"] = "random"
    spectral_k: int = 8
    spectral_scale: float = 0.05
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    schedule: Literal["minibatch", "full"] = "minibatch"  # full = all annotations per step
    batch_size: int = 1024  # pairs per step when schedule=minibatch
    normalize_embeddings: bool = True  # L2-normalise exported user embeddings
    use_gpu: bool = False
    eval_every: int = 1  # epochs
    seed: int = 0
    tsne: bool = True
    ckpt_every: int = 10  # epochs between Ray Train checkpoints (and always the last)
    cpus_per_worker: float = 1.0  # Ray Train worker CPU request (keep <= 1 on 2-CPU machines)
    max_failures: int = 2  # worker failures Ray Train recovers from its last checkpoint
    truth_pairs_per_user: int = 50  # known groups: held-out survey-pool pairs scored per user
    loss_chunk: int = 65536  # pairs per loss chunk (bounds memory of full-graph steps)


@dataclass
class AdaptConfig:
    hops: int = 2
    include_negative: bool = False  # also users who rejected what the new user rejected
    gamma: Literal["sum", "mean"] = "sum"
    kappa: float = 0.07
    user_opt_steps: int = 50
    user_opt_lr: float = 1e-2
    variants: list[str] = field(default_factory=lambda: ["weighted", "naive", "user_opt"])
    renormalize: bool = True  # re-L2-normalise adapted embeddings when exports are normalised


@dataclass
class RewardConfig:
    # "tiny-gemma" (built from config), "minilm" (installed package), or an HF name/path
    backbone: str = "tiny-gemma"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # GemmaConfig overrides
    tokenizer_vocab: int = 1000  # locally trained tokenizer for tiny-gemma
    max_length: int = 128
    # text vector the score head reads: auto = the backbone's own (copl_ray/reward/pooling.py)
    pooling: Literal["auto", "last", "first", "mean"] = "auto"
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    num_experts: int = 8
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    gate_hidden: int = 256
    top_k: int = 1
    temperature: float = 1.0
    gate_noise: float = 0.1
    gate_per_module: bool = False  # official code: one gate per wrapped module
    gate_squared: bool = False  # official bug B3 (expert scaled by p^2), kept as a switch
    load_balance_coef: float = 0.0
    # fraction of training steps routed densely (all experts, softmax weights, no noise)
    # before top-k: lets the gate learn from an init whose routes cut across user groups.
    # 0 = the paper (top-k from the first step).
    gate_dense_warmup: float = 0.0
    # what the copl gate reads: the GNN embedding as exported ("raw", the paper), or
    # "standardized": centred on the mean seen user and scaled to unit RMS, frozen at
    # training start (copl_ray/mole/layer.py MoLEGate.standardize_inputs)
    gate_input: Literal["raw", "standardized"] = "raw"
    baseline_rank: int = 64
    models: list[str] = field(default_factory=lambda: ["copl", "uniform", "oracle"])
    train_on_val_pairs: bool = False  # official code trains on the GNN validation pair (B7)
    # MoLE/LoRA only in the top k transformer layers, the frozen layers below computed once
    # per text and cached (copl_ray/reward/frozen_cache.py); null = all layers, no cache
    adapted_layers: int | None = None
    cache_max_mb: float = 512.0  # per process; when full, texts not cached are recomputed
    backbone_dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # frozen backbone
    adapter_dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # MoLE/LoRA, gate, head
    seed: int = 0  # seeded init of tiny-gemma weights, adapters, gates and head


@dataclass
class TrainConfig:
    num_workers: int = 2
    use_gpu: bool = False
    # 1.0 deadlocks Ray Data + Train on 2 CPUs (docs/stack-notes.md S6)
    cpus_per_worker: float = 0.5
    zero_stage: int = 2
    offload: bool = False
    bf16: bool = False
    gradient_checkpointing: bool = False
    lr: float = 5e-5
    weight_decay: float = 0.001
    warmup_ratio: float = 0.03
    batch_size: int = 32  # pairs per worker per step
    epochs: int = 1
    max_steps: int = -1  # -1 = epochs decide
    # training budget of a run in minutes (GNN + every reward model), None = no budget:
    # when the run plan's measured ETA exceeds it, each reward model's steps are capped
    # (copl_ray/plan.py; the cap is recorded in run_dir/plan.json)
    time_budget_min: float | None = None
    eval_every: int = 100  # steps
    ckpt_every: int = 500  # steps
    seed: int = 0
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 1.0  # gradient clipping
    log_every: int = 10  # steps between progress lines / ray.train.report on rank 0
    keep_checkpoints: int = 2  # Ray Train checkpoints kept per model
    max_failures: int = 2  # worker failures Ray Train recovers from its last checkpoint
    val_fraction: float = 0.05  # survey slice held out for validation when no "val" split
    cache_shards: bool = False  # keep each worker's streamed shard for later epochs (small data)


@dataclass
class EvalConfig:
    label_counts: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # Fig. 2
    batch_size: int = 64


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: int = 8
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    max_responses: int = 16
    max_chars: int = 8000
    max_annotations: int = 64
    auth_token_env: str = "COPL_SERVE_TOKEN"
    batch_max_size: int = 32
    batch_wait_timeout_s: float = 0.001
    model: str = "copl"  # reward model of the run served (run_dir/reward/<model>)
    adapt_variant: Literal["weighted", "naive"] = "weighted"  # optimisation-free only
    users_dir: str | None = None  # adapted-user store (None = run_dir/serve/users)


@dataclass
class RunConfig:
    dir: str = "runs/tiny"
    stages: list[str] = field(default_factory=lambda: ["data", "gnn", "reward", "eval", "report"])
    ray_address: str | None = None  # None = start a local Ray
    num_cpus: int | None = None  # logical CPUs for a local Ray (None = machine)
    seed: int = 0
    # Metrics to watch while training (copl_ray/tracking.py). TensorBoard event files of
    # every stage under <dir>/tensorboard/ (`tensorboard --logdir <dir>`).
    tensorboard: bool = True
    # MLflow: a tracking URI turns it on (http://host:5000, file:/abs/mlruns; a plain path
    # is a local file store, which MLflow >= 3 reads only with MLFLOW_ALLOW_FILE_STORE=true,
    # e.g. for `mlflow ui`). Needs the tracking extra: pip install "copl-ray[tracking]".
    mlflow_tracking_uri: str | None = None
    # Weights & Biases: a project name turns it on. The key comes from WANDB_API_KEY (or
    # `wandb login`) and is never logged; WANDB_MODE=offline keeps runs in <dir>/wandb.
    wandb_project: str | None = None
    tracking_name: str | None = None  # MLflow experiment / W&B group (None = run dir's name)


@dataclass
class Config:
    # Dotted key paths the user set (``--set`` overrides, their own YAML file: not the
    # keys a shipped preset supplies), filled by load_config; not a field, so it stays out
    # of to_dict(), the saved config.yaml and every section hash. See :func:`was_set`.
    explicit: ClassVar[frozenset[str]] = frozenset()

    name: str = "tiny"
    data: DataConfig = field(default_factory=DataConfig)
    gnn: GNNConfig = field(default_factory=GNNConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def section_hash(self, *sections: str) -> str:
        """Stable hash of the named sections: a stage's artifact is reused when it matches."""
        d = self.to_dict()
        blob = json.dumps({s: d[s] for s in sections}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ conversion
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check/convert ``value`` to annotation ``tp``; raise ConfigError naming ``path``."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {short_repr(value)}")
        return _build(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:  # X | None: X's own message (e.g. "expected a finite number")
            raise ConfigError(errors[0])
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {short_repr(value)}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = list(get_args(tp))
            raise ConfigError(f"{path}: expected one of {choices}, got {short_repr(value)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {short_repr(value)}")
        (item,) = get_args(tp)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {short_repr(value)}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected bool, got {short_repr(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected int, got {short_repr(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
            number = float(value)  # YAML 1.1 reads "1e-2" (no dot) as a string
        else:
            raise ConfigError(f"{path}: expected float, got {short_repr(value)}")
        if not math.isfinite(number):  # .inf / .nan: every float field, whatever its bounds
            raise ConfigError(f"{path}: expected a finite number, got {number}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected str, got {short_repr(value)}")
    raise ConfigError(f"{path}: unsupported type {tp!r}")


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in known:
            raise ConfigError(f"{path}: unknown key (known: {', '.join(sorted(known))})")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {short_repr(item)}: expected key.path=value")
    key, raw = item.split("=", 1)
    keys = key.strip().split(".")
    if not all(k.strip() for k in keys):
        raise ConfigError(f"override {short_repr(item)}: empty key (expected key.path=value)")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot parse value {short_repr(raw)}: {e}") from None
    return [k.strip() for k in keys], value


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML file merged over the preset it ``extends`` (``chain``: the files above it)."""
    data = _read_yaml_file(path)
    parent = data.pop("extends", None)  # a preset may extend another preset
    if parent is not None:
        parent_path = _preset_path(str(parent))
        seen = (*chain, path)
        if any(parent_path.resolve() == p.resolve() for p in seen):
            names = " -> ".join(str(p) for p in (*seen, parent_path))
            raise ConfigError(f"{path}: extends: cycle {names}")
        return _merge(_read_yaml(parent_path, seen), data)
    return data


def _read_yaml_file(path: Path) -> dict[str, Any]:
    """One YAML file as a mapping; unreadable / non-UTF-8 / invalid YAML → ConfigError."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _key_paths(tree: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of the leaves of a nested mapping (``{"a": {"b": 1}}`` → {"a.b"})."""
    out: set[str] = set()
    for k, v in tree.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        out |= _key_paths(v, path) if isinstance(v, dict) and v else {path}
    return out


def was_set(cfg: Config, path: str) -> bool:
    """True when the user named ``path`` (itself, a key inside it or a whole section above
    it) in ``--set`` or their own YAML; False when the value comes from a shipped preset
    or the defaults."""
    parts = path.split(".")
    above = {".".join(parts[: i + 1]) for i in range(len(parts))}
    return bool(above & cfg.explicit) or any(k.startswith(path + ".") for k in cfg.explicit)


def _preset_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.exists():
        return preset
    raise ConfigError(
        f"config {name_or_path!r}: no such file or preset (presets: {', '.join(list_presets())})"
    )


def load_config(name_or_path: str = "tiny", overrides: list[str] | None = None) -> Config:
    """Load a preset name or YAML path, apply ``a.b=c`` overrides, validate everything.

    Every path the config names becomes absolute here (:func:`resolve_paths`), and the
    keys the user set are recorded in ``cfg.explicit`` (:func:`was_set`).
    """
    path = _preset_path(name_or_path)
    raw = _read_yaml(path)
    explicit: set[str] = set()
    if path.resolve().parent != PRESET_DIR.resolve():  # the user's own file
        own = _read_yaml_file(path)
        own.pop("extends", None)
        explicit |= _key_paths(own)
    raw.setdefault("name", Path(name_or_path).stem)
    for item in overrides or []:
        keys, value = _parse_override(item)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{'.'.join(keys)}: {k} is not a section")
        node[keys[-1]] = value
        explicit |= _key_paths({".".join(keys): value})
    cfg = resolve_paths(_checked(_build(Config, raw)))
    cfg.explicit = frozenset(explicit)
    return cfg


def config_from_dict(values: dict[str, Any]) -> Config:
    return resolve_paths(_checked(_build(Config, values)))


def absolute_path(path: str) -> str:
    """``path`` made absolute against the current working directory (``~`` expanded); a URI
    (``s3://...``) is returned as is. The one rule every config path follows: Ray workers
    do not run in the driver's working directory, so no relative path may reach them."""
    from copl_ray.fsutil import is_uri

    if is_uri(path):
        return path
    return os.path.abspath(os.path.expanduser(path))


def _local_or_name(value: str | None) -> str | None:
    """An existing local file/folder → absolute path; a hub name (or None) stays."""
    if not value:
        return value
    p = os.path.expanduser(value)
    return absolute_path(value) if os.path.exists(p) else value


def resolve_paths(cfg: Config) -> Config:
    """Make every path the config names absolute (or keep it a URI / hub name), in place.

    run.dir, data.path and serve.users_dir are paths; data.length_tokenizer,
    data.ufp_ratings, data.ufp_pairs and reward.backbone may be hub names, so they
    become absolute only when they name an existing local file or folder. Idempotent.
    """
    cfg.run.dir = absolute_path(cfg.run.dir)
    if cfg.data.path:
        cfg.data.path = absolute_path(cfg.data.path)
    if cfg.serve.users_dir:
        cfg.serve.users_dir = absolute_path(cfg.serve.users_dir)
    for attr in ("length_tokenizer", "ufp_ratings", "ufp_pairs"):
        setattr(cfg.data, attr, _local_or_name(getattr(cfg.data, attr)))
    if cfg.reward.backbone != "tiny-gemma":
        cfg.reward.backbone = _local_or_name(cfg.reward.backbone)
    return cfg


def _checked(cfg: Config) -> Config:
    """Value ranges and cross-field constraints (copl_ray/config_bounds.py)."""
    from copl_ray.config_bounds import check_bounds

    check_bounds(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(cfg.to_yaml())


def seed_paths(cfg: Config | None = None) -> list[str]:
    """Dotted paths of every ``seed`` field (data.seed, gnn.seed, ...): what one seed of a
    ``--seeds`` run sets, so a new stage's seed is covered without listing it twice."""
    paths: list[str] = []

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif k == "seed":
                paths.append(f"{prefix}{k}")

    walk((cfg or Config()).to_dict(), "")
    return paths
