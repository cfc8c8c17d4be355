"""Value ranges of the config fields, checked when a config is loaded.

Types are checked field by field in :mod:`copl_ray.config`; this adds the ranges a type
cannot say (a fraction of the steps, a positive dimension, top-k within the number of
experts), so that ``reward.top_k=9`` with 8 experts fails at load time with the field's
path, not as a tensor-shape traceback an hour into a cluster job.

A bound is ``(low, high, interval)`` with ``interval`` one of ``"[]", "[)", "(]", "()"``
(``None`` = unbounded on that side).
"""

from __future__ import annotations

import math
from typing import Any

_POS_INT = (1, None, "[]")  # >= 1
_NONNEG = (0, None, "[]")  # >= 0
_POS = (0, None, "()")  # > 0
_FRACTION = (0, 1, "[)")  # share of steps / of rows
_OPEN_FRACTION = (0, 1, "()")
_PROB = (0, 1, "[]")

BOUNDS: dict[str, tuple[float | None, float | None, str]] = {
    # data
    "data.n_groups": _NONNEG,  # 0 = groups unknown (UKP, own data)
    "data.n_users": _POS_INT,
    "data.n_unseen_users": _NONNEG,
    "data.labels_per_user": _POS_INT,
    "data.test_pairs_seen": _NONNEG,
    "data.test_pairs_unseen": _NONNEG,
    "data.heldout_prompt_frac": _OPEN_FRACTION,
    "data.max_tokens": _POS_INT,
    "data.ukp_min_labels": _POS_INT,
    "data.user_test_frac": _OPEN_FRACTION,
    "data.own_min_labels": _POS_INT,
    "data.controversial_min_share": (0, 0.5, "(]"),  # a minority is at most half
    "data.max_text_chars": _POS_INT,
    "data.min_user_labels": _POS_INT,
    "data.personalllm_alpha": _POS,
    "data.synthetic.n_prompts": _POS_INT,
    "data.synthetic.responses_per_prompt": (2, None, "[]"),
    "data.synthetic.label_noise": _PROB,
    "data.synthetic.max_rating": _POS_INT,
    "data.synthetic.latent_attributes": _POS_INT,
    "data.synthetic.response_words": _POS_INT,
    # gnn
    "gnn.dim": _POS_INT,
    "gnn.layers": _POS_INT,
    "gnn.leaky_slope": _NONNEG,
    "gnn.edge_dropout": _FRACTION,
    "gnn.l2": _NONNEG,
    "gnn.l2_reference_batch": _NONNEG,
    "gnn.epochs": _POS_INT,
    "gnn.lr": _POS,
    "gnn.weight_decay": _NONNEG,
    "gnn.weight_lr_scale": _POS,
    "gnn.spectral_k": _POS_INT,
    "gnn.spectral_scale": _POS,
    "gnn.warmup_ratio": _FRACTION,
    "gnn.batch_size": _POS_INT,
    "gnn.eval_every": _POS_INT,
    "gnn.ckpt_every": _POS_INT,
    "gnn.cpus_per_worker": _POS,
    "gnn.max_failures": _NONNEG,
    "gnn.truth_pairs_per_user": _NONNEG,
    "gnn.loss_chunk": _POS_INT,
    # adapt
    "adapt.hops": _POS_INT,
    "adapt.kappa": _POS,
    "adapt.user_opt_steps": _NONNEG,
    "adapt.user_opt_lr": _POS,
    # reward
    "reward.tokenizer_vocab": (32, None, "[]"),
    "reward.max_length": (2, None, "[]"),
    "reward.num_experts": _POS_INT,
    "reward.rank": _POS_INT,
    "reward.alpha": _POS,
    "reward.dropout": _FRACTION,
    "reward.gate_hidden": _POS_INT,
    "reward.top_k": _POS_INT,
    "reward.temperature": _POS,
    "reward.gate_noise": _NONNEG,
    "reward.load_balance_coef": _NONNEG,
    "reward.gate_dense_warmup": _FRACTION,
    "reward.baseline_rank": _POS_INT,
    "reward.adapted_layers": _POS_INT,  # None = all layers
    "reward.cache_max_mb": _NONNEG,
    # train
    "train.num_workers": _POS_INT,
    "train.cpus_per_worker": _POS,
    "train.zero_stage": (0, 3, "[]"),
    "train.lr": _POS,
    "train.weight_decay": _NONNEG,
    "train.warmup_ratio": _FRACTION,
    "train.batch_size": _POS_INT,
    "train.epochs": _POS_INT,
    "train.eval_every": _POS_INT,
    "train.ckpt_every": _POS_INT,
    "train.grad_accum": _POS_INT,
    "train.max_grad_norm": _NONNEG,
    "train.log_every": _POS_INT,
    "train.keep_checkpoints": _POS_INT,
    "train.max_failures": _NONNEG,
    "train.val_fraction": _FRACTION,
    "train.time_budget_min": _POS,  # None = no budget
    # eval
    "eval.batch_size": _POS_INT,
    # serve
    "serve.port": (1, 65535, "[]"),
    "serve.min_replicas": _NONNEG,
    "serve.max_replicas": _POS_INT,
    "serve.target_ongoing_requests": _POS_INT,
    "serve.num_cpus": _NONNEG,
    "serve.num_gpus": _NONNEG,
    "serve.max_responses": _POS_INT,
    "serve.max_chars": _POS_INT,
    "serve.max_annotations": _POS_INT,
    "serve.batch_max_size": _POS_INT,
    "serve.batch_wait_timeout_s": _NONNEG,
    # run
    "run.num_cpus": _POS_INT,
}


def _interval_text(low, high, interval: str) -> str:
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    return f"{interval[0]}{lo}, {hi}{interval[1]}"


def _inside(value: float, low, high, interval: str) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    if low is not None and (value < low or (interval[0] == "(" and value == low)):
        return False
    return not (high is not None and (value > high or (interval[1] == ")" and value == high)))


def _get(cfg: Any, path: str) -> Any:
    node = cfg
    for key in path.split("."):
        node = getattr(node, key)
    return node


def check_value(path: str, value: Any) -> None:
    """Raise ConfigError if ``value`` lies outside ``BOUNDS[path]`` — also for a config
    section built in code rather than loaded (``build_ds_config(TrainConfig(...))``)."""
    from copl_ray.config import ConfigError

    if value is None:  # optional fields (run.num_cpus=None: the machine decides)
        return
    low, high, interval = BOUNDS[path]
    if not _inside(value, low, high, interval):
        raise ConfigError(
            f"{path}: expected a value in {_interval_text(low, high, interval)}, got {value}"
        )


def check_bounds(cfg: Any) -> None:
    """Raise ConfigError naming the first field outside its range (see :data:`BOUNDS`)."""
    from copl_ray.config import ConfigError

    for path in BOUNDS:
        check_value(path, _get(cfg, path))
    # cross-field constraints
    if cfg.reward.top_k > cfg.reward.num_experts:
        raise ConfigError(
            f"reward.top_k: {cfg.reward.top_k} experts per route, but "
            f"reward.num_experts is {cfg.reward.num_experts}"
        )
    if cfg.gnn.init == "spectral" and cfg.gnn.spectral_k > cfg.gnn.dim:
        raise ConfigError(
            f"gnn.spectral_k: {cfg.gnn.spectral_k} spectral coordinates, but gnn.dim is "
            f"{cfg.gnn.dim}"
        )
    if cfg.serve.min_replicas > cfg.serve.max_replicas:
        raise ConfigError(
            f"serve.min_replicas: {cfg.serve.min_replicas} > serve.max_replicas "
            f"{cfg.serve.max_replicas}"
        )
    check_rules(cfg)


def check_rules(cfg: Any) -> None:
    """Rules a range cannot say: lists that must not be empty, even hops, sentinels.

    Each one used to pass the load and fail (or be silently reinterpreted) after an
    expensive stage: ``adapt.hops=3`` after the GNN trained, ``eval.label_counts=[-1]``
    read as "all but one label", ``train.max_steps=0`` as "no limit".
    """
    from copl_ray.config import ConfigError

    if cfg.adapt.hops % 2:
        raise ConfigError(
            f"adapt.hops: must be even (user -> response -> user), got {cfg.adapt.hops}"
        )
    if cfg.train.max_steps == 0 or cfg.train.max_steps < -1:
        raise ConfigError(
            f"train.max_steps: expected -1 (the epochs decide) or >= 1, got "
            f"{cfg.train.max_steps}; use train.epochs to train the full schedule"
        )
    for path in ("adapt.variants", "reward.models", "reward.target_modules", "eval.label_counts"):
        values = _get(cfg, path)
        if not values:
            raise ConfigError(f"{path}: must not be empty")
        dupes = sorted({str(v) for v in values if values.count(v) > 1})
        if dupes:
            raise ConfigError(f"{path}: duplicate entries {dupes}")
    for i, n in enumerate(cfg.eval.label_counts):
        if n < 1:
            raise ConfigError(f"eval.label_counts[{i}]: expected >= 1 adaptation labels, got {n}")
    if not cfg.run.dir.strip():
        raise ConfigError("run.dir: must not be empty")
