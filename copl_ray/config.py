"""Typed configuration tree for every copl-ray stage.

One tree ``Config(data, gnn, adapt, reward, train, eval, serve, run)`` of frozen-ish
dataclasses, loaded from a YAML preset shipped in ``copl_ray/presets/`` (or any YAML
path) and modified with ``a.b.c=value`` overrides (torchtune style)::

    cfg = load_config("tiny", ["gnn.epochs=50", "reward.num_experts=4"])

Every field carries its help text and, where a type cannot say it, its range in
``field(metadata={"help": ..., "bounds": ...})`` (peft's style, via :func:`setting`); the
rules that tie fields together (``reward.top_k <= reward.num_experts``, even
``adapt.hops``, ...) are in :func:`check_rules`. Unknown keys, wrong types, out-of-range
values and broken rules raise :class:`ConfigError` naming the full key path, e.g.
``gnn.epochs: expected int, got 'many'``, at load time: not as a tensor-shape traceback an
hour into a cluster job.
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

from copl_ray.variants import COPL, DEFAULT_MODELS

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


# --------------------------------------------------------------------- fields
# A range is ``(low, high, interval)`` with ``interval`` one of "[]", "[)", "(]", "()"
# (``None`` = unbounded on that side); a None value (an optional field) is never checked.
Bounds = tuple[float | None, float | None, str]
POS_INT: Bounds = (1, None, "[]")  # >= 1
NONNEG: Bounds = (0, None, "[]")  # >= 0
POSITIVE: Bounds = (0, None, "()")  # > 0
FRACTION: Bounds = (0, 1, "[)")  # share of steps / of rows
OPEN_FRACTION: Bounds = (0, 1, "()")
PROBABILITY: Bounds = (0, 1, "[]")
# value sets shared with copl_ray/mole/config.py (the MoLE adapter's own config)
DType = Literal["float32", "bfloat16", "float16"]
GateInput = Literal["raw", "standardized"]
# Active-onboarding question selectors, named here once (copl_ray/graph/onboard.py has
# their rules). Two share a name with the variant whose idea they carry, not the model.
Selector = Literal["copl", "pref", "random"]
SELECTORS: tuple[str, ...] = typing.get_args(Selector)
COPL_SELECTOR, PREF_SELECTOR, RANDOM_SELECTOR = SELECTORS


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    bounds: Bounds | None = None,
    *,
    factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with its help text and range next to it (peft's ``metadata``).

    :func:`check_fields` walks the ranges; ``--help``-style tools read the help.
    """
    metadata = {"help": help, **({"bounds": bounds} if bounds is not None else {})}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# --------------------------------------------------------------------------- tree
@dataclass
class SyntheticConfig:
    """Generative model of the embedded synthetic data (see copl_ray/data/synthetic.py)."""

    n_prompts: int = setting(400, "prompts of the synthetic data", POS_INT)
    responses_per_prompt: int = setting(4, "responses generated per prompt", (2, None, "[]"))
    label_noise: float = setting(
        0.0,
        "probability a user's label is flipped (sets the accuracy ceiling)",
        PROBABILITY,
    )
    max_rating: int = setting(5, "top of a response's per-attribute rating scale", POS_INT)
    latent_attributes: int = setting(
        4,
        "attributes expressed in text; groups = the first n_groups",
        POS_INT,
    )
    response_words: int = setting(30, "fixed words per response (> n_groups * max_rating)", POS_INT)


@dataclass
class DataConfig:
    source: Literal["synthetic", "ufp", "own", "ukp", "tldr", "prism", "personalllm"] = setting(
        "synthetic",
        "where the preference data comes from",
    )
    path: str | None = setting(
        None,
        "own file / ukp folder / local UF-P, TL;DR, PRISM, PersonalLLM files (None = HF hub by "
        "name)",
    )
    n_groups: int = setting(2, "UF-P-2 / UF-P-4 (synthetic: 2 or 4 attribute groups)", NONNEG)
    n_users: int = setting(200, "seen users, evenly over groups", POS_INT)
    n_unseen_users: int = setting(20, "unseen users, evenly over groups", NONNEG)
    labels_per_user: int = setting(8, "n: ALL gives exactly n, AVG uniform in [1, 2n-1]", POS_INT)
    sampling: Literal["all", "avg"] = setting(
        "all",
        "labels per user: all = exactly labels_per_user, avg = uniform in [1, 2n-1]",
    )
    val_pair: bool = setting(True, "hold one of a user's n labels out as GNN validation pair")
    test_pairs_seen: int = setting(10, "test pairs per seen user", NONNEG)
    test_pairs_unseen: int = setting(50, "test pairs per unseen user", NONNEG)
    heldout_prompt_frac: float = setting(
        0.1,
        "share of prompts held out of training (test pairs come from them)",
        OPEN_FRACTION,
    )
    tie_policy: Literal["coin", "drop"] = setting(
        "coin",
        "tied ratings: coin = random label, drop = no pair",
    )
    ufp2_require_disagreement: bool = setting(
        False,
        "UF-P-2: keep only helpfulness != honesty pairs",
    )
    max_tokens: int = setting(1024, "token-length filter (UF-P)", POS_INT)
    length_tokenizer: str | None = setting(
        None,
        "tokenizer for the length filter (None = whitespace)",
    )
    ukp_min_labels: int = setting(
        10,
        "UKP: workers with fewer non-tie judgments are dropped (counted)",
        POS_INT,
    )
    test_pool: Literal["all", "pool"] = setting(
        "all",
        "test candidates: all held-out pairs / pool filter",
    )
    ufp_ratings: str = setting("openbmb/UltraFeedback", "HF name or local parquet/jsonl file")
    ufp_pairs: str = setting(
        "argilla/ultrafeedback-binarized-preferences-cleaned",
        "HF name or file",
    )
    user_test_frac: float = setting(
        0.2,
        "own data / UKP: share of each user's labels held out as test",
        OPEN_FRACTION,
    )
    own_min_labels: int = setting(
        3,
        "own data: users with fewer labels are dropped (counted)",
        POS_INT,
    )
    controversial_min_share: float = setting(
        0.25,
        "own data / UKP: a pair is controversial when its minority side holds at least this "
        "share of its annotators (>= 2 of them); copl_ray/data/own.py derives the default",
        (0, 0.5, "(]"),
    )
    max_text_chars: int = setting(
        20000,
        "own data / UKP: rows with a prompt or response longer than this are dropped (counted "
        "text_too_long); ~5k tokens, far beyond any reward.max_length the presets train on",
        POS_INT,
    )
    min_user_labels: int = setting(
        10,
        "TL;DR / PRISM: workers / participants with fewer usable labels are dropped (counted)",
        POS_INT,
    )
    personalllm_alpha: float = setting(
        0.1,
        "PersonalLLM: Dirichlet concentration of a simulated user's reward-model weights; small"
        " = one dominant reward model per user (LoRe's PersonalLLM population uses 0.1)",
        POSITIVE,
    )
    personalllm_reward_models: list[str] | None = setting(
        None,
        "PersonalLLM: the reward models users mix (null = all ten score columns of the dataset)",
    )
    seed: int = setting(0, "seed of the data split and of the synthetic generator")
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class GNNConfig:
    dim: int = setting(512, "embedding width d of users and responses", POS_INT)
    layers: int = setting(4, "message-passing layers L", POS_INT)
    message: Literal["paper", "reference"] = setting(
        "paper",
        "message function: the paper's equations or the official code's",
    )
    leaky_slope: float = setting(0.2, "LeakyReLU negative slope of the messages", NONNEG)
    edge_dropout: float = setting(0.1, "share of edges dropped per training step", FRACTION)
    l2: float = setting(1e-6, "L2 strength λ on the embeddings a step touches", NONNEG)
    l2_reference_batch: int = setting(
        0,
        "0: λ·Σ over each step's pairs (official form: its strength grows with the batch); N > "
        "0: λ·(N/B)·Σ_B, the per-pair strength of an N-pair batch in every schedule",
        NONNEG,
    )
    epochs: int = setting(300, "training epochs", POS_INT)
    lr: float = setting(1e-4, "AdamW learning rate of the embedding tables", POSITIVE)
    weight_lr_scale: float = setting(
        1.0,
        "lr of the layers' d×d weights = lr × this (the embedding tables keep lr). Full-graph "
        "steps at scale generalise with slow tables and fast weights (e.g. lr 1e-4 × 100: "
        'benchmarks/RESULTS.md "GNN time-to-accuracy"); an Adam step moves a weight\'s output ∝ d, so the best '
        "scale falls with the width (d=64: 300 beat 100; d=512: 100 beat 30)",
        POSITIVE,
    )
    init: Literal["random", "spectral"] = setting(
        "random",
        'initial embeddings: "random" (Xavier: the paper and the official code) or "spectral": '
        "the first spectral_k coordinates of both tables start at the top singular vectors of "
        "the degree-normalised signed user x response matrix, each with RMS spectral_scale "
        "(copl_ray/graph/spectral.py); the rest stay random and everything trains. Skips the "
        '~50-step plateau a full-graph run spends before the groups separate (benchmarks/RESULTS.md "GNN '
        'time-to-accuracy")',
    )
    spectral_k: int = setting(
        8,
        "init=spectral: coordinates started at the top singular vectors",
        POS_INT,
    )
    spectral_scale: float = setting(
        0.05,
        "init=spectral: RMS of each spectral coordinate",
        POSITIVE,
    )
    weight_decay: float = setting(0.01, "AdamW weight decay", NONNEG)
    warmup_ratio: float = setting(0.1, "share of steps with a linear lr warm-up", FRACTION)
    schedule: Literal["minibatch", "full"] = setting("minibatch", "full = all annotations per step")
    batch_size: int = setting(1024, "pairs per step when schedule=minibatch", POS_INT)
    normalize_embeddings: bool = setting(True, "L2-normalise exported user embeddings")
    use_gpu: bool = setting(False, "train the GNN on a GPU worker")
    eval_every: int = setting(1, "epochs", POS_INT)
    seed: int = setting(0, "seed of the GNN init, dropout and batches")
    tsne: bool = setting(True, "draw the t-SNE figure of the user embeddings")
    ckpt_every: int = setting(
        10,
        "epochs between Ray Train checkpoints (and always the last)",
        POS_INT,
    )
    cpus_per_worker: float = setting(
        1.0,
        "Ray Train worker CPU request (keep <= 1 on 2-CPU machines)",
        POSITIVE,
    )
    max_failures: int = setting(
        2,
        "worker failures Ray Train recovers from its last checkpoint",
        NONNEG,
    )
    truth_pairs_per_user: int = setting(
        50,
        "known groups: held-out survey-pool pairs scored per user",
        NONNEG,
    )
    loss_chunk: int = setting(
        65536,
        "pairs per loss chunk (bounds memory of full-graph steps)",
        POS_INT,
    )


@dataclass
class AdaptConfig:
    hops: int = setting(
        2,
        "graph hops from an unseen user to the seen users it borrows from (even)",
        POS_INT,
    )
    include_negative: bool = setting(False, "also users who rejected what the new user rejected")
    gamma: Literal["sum", "mean"] = setting(
        "sum",
        "how the neighbours' weights combine: sum or mean over shared responses",
    )
    kappa: float = setting(0.07, "softmax temperature κ of the neighbour weights", POSITIVE)
    user_opt_steps: int = setting(
        50,
        "user_opt: gradient steps on the new user's embedding",
        NONNEG,
    )
    user_opt_lr: float = setting(1e-2, "user_opt: learning rate of those steps", POSITIVE)
    variants: list[str] = setting(
        help="adaptation variants computed for unseen users",
        factory=lambda: ["weighted", "naive", "user_opt"],
    )
    renormalize: bool = setting(
        True,
        "re-L2-normalise adapted embeddings when exports are normalised",
    )


@dataclass
class RewardConfig:
    backbone: str = setting(
        "tiny-gemma",
        '"tiny-gemma" (built from config), "minilm" (installed package), or an HF name/path',
    )
    backbone_kwargs: dict[str, Any] = setting(help="GemmaConfig overrides", factory=dict)
    tokenizer_vocab: int = setting(
        1000,
        "locally trained tokenizer for tiny-gemma",
        (32, None, "[]"),
    )
    max_length: int = setting(
        128,
        "tokens per prompt + response (longer texts are cut)",
        (2, None, "[]"),
    )
    pooling: Literal["auto", "last", "first", "mean"] = setting(
        "auto",
        "text vector the score head reads: auto = the backbone's own (copl_ray/reward/pooling.py)",
    )
    frozen_pooling: Literal["same", "last", "first", "mean"] = setting(
        "mean",
        "text vector of the frozen-feature baselines (LoRe, VPL): same = reward.pooling. "
        "Without a backbone update a decoder's last token summarises the text only if the "
        "backbone was trained to (LoRe read a reward model's); the mean of the states does",
    )
    target_modules: list[str] = setting(
        help="linear layers that get MoLE/LoRA adapters (name suffixes)",
        factory=lambda: ["q_proj", "v_proj"],
    )
    num_experts: int = setting(8, "MoLE experts M per wrapped layer", POS_INT)
    rank: int = setting(8, "LoRA rank r of the shared adapter and of every expert", POS_INT)
    alpha: float = setting(16.0, "LoRA scaling α (the update is scaled by α/r)", POSITIVE)
    dropout: float = setting(0.1, "dropout on the adapter input", FRACTION)
    gate_hidden: int = setting(256, "hidden width of the 2-layer gate MLP", POS_INT)
    top_k: int = setting(1, "experts a user is routed to", POS_INT)
    temperature: float = setting(1.0, "softmax temperature τ of the gate", POSITIVE)
    gate_noise: float = setting(
        0.1,
        "std of the gate's logit noise while training (0 = off)",
        NONNEG,
    )
    gate_per_module: bool = setting(False, "official code: one gate per wrapped module")
    gate_squared: bool = setting(False, "official bug B3 (expert scaled by p^2), kept as a switch")
    load_balance_coef: float = setting(
        0.0,
        "weight of the Switch load-balancing loss (0 = off)",
        NONNEG,
    )
    gate_dense_warmup: float = setting(
        0.0,
        "fraction of training steps routed densely (all experts, softmax weights, no noise) "
        "before top-k: lets the gate learn from an init whose routes cut across user groups. 0 "
        "= the paper (top-k from the first step).",
        FRACTION,
    )
    gate_input: GateInput = setting(
        "raw",
        'what the copl gate reads: the GNN embedding as exported ("raw", the paper), or '
        '"standardized": centred on the mean seen user and scaled to unit RMS, frozen at '
        "training start (copl_ray/mole/layer.py MoLEGate.standardize_inputs)",
    )
    baseline_rank: int = setting(
        64, "LoRA rank of the user-free, no_mole and baseline models", POS_INT
    )
    user_lr_scale: float = setting(
        1.0,
        "learning-rate multiple of the free per-user rows (baselines, no_gnn): each row sees "
        "only its own user's few pairs per epoch, so it needs larger steps than the shared "
        "weights (PAL trains its user weights at 50x its projectors' rate)",
        POSITIVE,
    )
    vpl_context: int = setting(
        8, "labelled pairs of a user VPL's encoder reads (its context)", POS_INT
    )
    vpl_beta: float = setting(
        1e-3, "weight of VPL's KL term once annealed (copl_ray/reward/baselines.py)", NONNEG
    )
    vpl_anneal: float = setting(
        0.5, "share of the steps over which VPL's KL weight ramps from 0 to vpl_beta", FRACTION
    )
    num_prototypes: int = setting(
        10,
        "K of PAL / PReF / LoRe and P of I2E-proxy (copl_ray/reward/baselines.py); the "
        "baselines' papers use 10 proxies",
        POS_INT,
    )
    models: list[str] = setting(
        help="reward models (variants) the run trains",
        factory=lambda: list(DEFAULT_MODELS),
    )
    train_on_val_pairs: bool = setting(
        False,
        "official code trains on the GNN validation pair (B7)",
    )
    adapted_layers: int | None = setting(
        None,
        "MoLE/LoRA only in the top k transformer layers, the frozen layers below computed once "
        "per text and cached (copl_ray/reward/frozen_cache.py); null = all layers, no cache",
        POS_INT,
    )
    cache_max_mb: float = setting(
        512.0,
        "per process; when full, texts not cached are recomputed",
        NONNEG,
    )
    backbone_dtype: DType = setting(
        "float32",
        "frozen backbone",
    )
    adapter_dtype: DType = setting(
        "float32",
        "MoLE/LoRA, gate, head",
    )
    seed: int = setting(0, "seeded init of tiny-gemma weights, adapters, gates and head")


@dataclass
class TrainConfig:
    num_workers: int = setting(2, "Ray Train workers (data-parallel ranks)", POS_INT)
    use_gpu: bool = setting(False, "one GPU per worker")
    cpus_per_worker: float = setting(
        0.5,
        "1.0 deadlocks Ray Data + Train on 2 CPUs (docs/stack-notes.md S6)",
        POSITIVE,
    )
    zero_stage: int = setting(2, "DeepSpeed ZeRO stage", (0, 3, "[]"))
    offload: bool = setting(False, "ZeRO offload of optimizer states to CPU")
    bf16: bool = setting(False, "bfloat16 mixed precision")
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass")
    lr: float = setting(5e-5, "AdamW learning rate", POSITIVE)
    weight_decay: float = setting(0.001, "AdamW weight decay", NONNEG)
    warmup_ratio: float = setting(0.03, "share of steps with a linear lr warm-up", FRACTION)
    batch_size: int = setting(32, "pairs per worker per step", POS_INT)
    epochs: int = setting(1, "passes over the training pairs", POS_INT)
    max_steps: int = setting(-1, "-1 = epochs decide")
    time_budget_min: float | None = setting(
        None,
        "training budget of a run in minutes (GNN + every reward model), None = no budget: when"
        " the run plan's measured ETA exceeds it, each reward model's steps are capped "
        "(copl_ray/plan.py; the cap is recorded in run_dir/plan.json)",
        POSITIVE,
    )
    eval_every: int = setting(100, "steps", POS_INT)
    ckpt_every: int = setting(500, "steps", POS_INT)
    seed: int = setting(0, "seed of the data order and dropout")
    grad_accum: int = setting(1, "micro-batches per optimizer step", POS_INT)
    max_grad_norm: float = setting(1.0, "gradient clipping", NONNEG)
    log_every: int = setting(
        10,
        "steps between progress lines / ray.train.report on rank 0",
        POS_INT,
    )
    keep_checkpoints: int = setting(2, "Ray Train checkpoints kept per model", POS_INT)
    max_failures: int = setting(
        2,
        "worker failures Ray Train recovers from its last checkpoint",
        NONNEG,
    )
    val_fraction: float = setting(
        0.05,
        'survey slice held out for validation when no "val" split',
        FRACTION,
    )
    cache_shards: bool = setting(
        False,
        "keep each worker's streamed shard for later epochs (small data)",
    )


@dataclass
class EvalConfig:
    label_counts: list[int] = setting(help="Fig. 2", factory=lambda: [1, 2, 4, 8])
    batch_size: int = setting(64, "pairs per scoring batch", POS_INT)
    fit_steps: int = setting(
        100, "Adam steps fitting an unseen user's row (baselines that fit)", POS_INT
    )
    fit_lr: float = setting(0.05, "learning rate of that fit", POSITIVE)
    fit_l2: float = setting(
        0.01, "pull of the fitted row towards the mean seen user's row (a prior)", NONNEG
    )


@dataclass
class OnboardingConfig:
    """Active onboarding (copl_ray/graph/onboard.py): which survey pairs to ask a new user,
    and the eval stage's simulation of it on the unseen users."""

    selectors: list[str] = setting(
        help="selectors the eval stage simulates (copl, pref, random)",
        factory=lambda: list(SELECTORS),
    )
    answer_counts: list[int] = setting(
        help="answers after which the simulated users are scored",
        factory=lambda: [1, 2, 4, 8, 16],
    )
    max_users: int = setting(
        256, "seen users kept in the posterior per selection (those of largest γ)", POS_INT
    )
    shortlist: int = setting(
        512, "candidates scored per selection: the pool's highest opening scores", POS_INT
    )
    pref_ridge: float = setting(1.0, "ρ of the pref selector's Σ = ρI + Fisher", POSITIVE)
    random_repeats: int = setting(
        3, "draws of the random control averaged (its curve is the bar to beat)", POS_INT
    )
    seed: int = setting(0, "seed of the random control's draws and of the user sample")
    eval_users: int | None = setting(
        200,
        "unseen users simulated (a seeded sample; null = every one): bounds eval time",
        POS_INT,
    )


@dataclass
class ServeConfig:
    host: str = setting("127.0.0.1", "address the HTTP proxy binds")
    port: int = setting(8000, "port of the HTTP proxy", (1, 65535, "[]"))
    min_replicas: int = setting(1, "fewest scorer replicas (autoscaling)", NONNEG)
    max_replicas: int = setting(2, "most scorer replicas (autoscaling)", POS_INT)
    target_ongoing_requests: int = setting(
        8,
        "requests per replica the autoscaler aims at",
        POS_INT,
    )
    num_cpus: float = setting(0.5, "CPUs per replica", NONNEG)
    num_gpus: float = setting(0.0, "GPUs per replica", NONNEG)
    max_responses: int = setting(16, "responses one request may score", POS_INT)
    max_chars: int = setting(8000, "characters per prompt or response", POS_INT)
    max_annotations: int = setting(64, "labels one onboarding request may carry", POS_INT)
    auth_token_env: str = setting(
        "COPL_SERVE_TOKEN",
        "environment variable holding the bearer token (unset = no auth)",
    )
    batch_max_size: int = setting(32, "requests batched into one forward pass", POS_INT)
    batch_wait_timeout_s: float = setting(0.001, "longest wait for a batch to fill", NONNEG)
    model: str = setting(COPL, "reward model of the run served (run_dir/reward/<model>)")
    adapt_variant: Literal["weighted", "naive"] = setting("weighted", "optimisation-free only")
    users_dir: str | None = setting(None, "adapted-user store (None = run_dir/serve/users)")
    question_selector: Selector = setting(
        COPL_SELECTOR, "selector of POST /v1/users/{id}/questions when the request names none"
    )
    max_questions: int = setting(16, "questions one request may ask for", POS_INT)


@dataclass
class RunConfig:
    dir: str = setting("runs/tiny", "run directory (local path or URI): every stage's artifacts")
    stages: list[str] = setting(
        help="stages this invocation runs (done ones with the same config are reused)",
        factory=lambda: ["data", "gnn", "reward", "eval", "report"],
    )
    ray_address: str | None = setting(None, "None = start a local Ray")
    num_cpus: int | None = setting(None, "logical CPUs for a local Ray (None = machine)", POS_INT)
    seed: int = setting(0, "seed of everything else in the run")
    tensorboard: bool = setting(
        True,
        "Metrics to watch while training (copl_ray/tracking.py). TensorBoard event files of "
        "every stage under <dir>/tensorboard/ (`tensorboard --logdir <dir>`).",
    )
    mlflow_tracking_uri: str | None = setting(
        None,
        "MLflow: a tracking URI turns it on (http://host:5000, file:/abs/mlruns; a plain path "
        "is a local file store, which MLflow >= 3 reads only with MLFLOW_ALLOW_FILE_STORE=true,"
        ' e.g. for `mlflow ui`). Needs the tracking extra: pip install "copl-ray[tracking]".',
    )
    wandb_project: str | None = setting(
        None,
        "Weights & Biases: a project name turns it on. The key comes from WANDB_API_KEY (or "
        "`wandb login`) and is never logged; WANDB_MODE=offline keeps runs in <dir>/wandb.",
    )
    tracking_name: str | None = setting(
        None,
        "MLflow experiment / W&B group (None = run dir's name)",
    )


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
    onboarding: OnboardingConfig = field(default_factory=OnboardingConfig)
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


# ------------------------------------------------------------------ validation
def _interval_text(bounds: Bounds) -> str:
    low, high, interval = bounds
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    return f"{interval[0]}{lo}, {hi}{interval[1]}"


def _inside(value: float, bounds: Bounds) -> bool:
    low, high, interval = bounds
    if isinstance(value, float) and math.isnan(value):
        return False
    if low is not None and (value < low or (interval[0] == "(" and value == low)):
        return False
    return not (high is not None and (value > high or (interval[1] == ")" and value == high)))


def check_range(path: str, value: Any, bounds: Bounds | None) -> None:
    """Raise ConfigError when ``value`` lies outside ``bounds`` (None value or bounds: ok)."""
    if value is None or bounds is None or _inside(value, bounds):
        return
    raise ConfigError(f"{path}: expected a value in {_interval_text(bounds)}, got {value}")


def field_bounds(cls: type, path: str) -> Bounds | None:
    """The range declared on the field at dotted ``path`` below dataclass ``cls``."""
    head, _, rest = path.partition(".")
    f = {f.name: f for f in dataclasses.fields(cls)}[head]
    if rest:
        return field_bounds(typing.get_type_hints(cls)[head], rest)
    return f.metadata.get("bounds")


def check_value(path: str, value: Any) -> None:
    """The loader's range check of one field, for a config section built in code rather
    than loaded (``build_ds_config(TrainConfig(...))``)."""
    check_range(path, value, field_bounds(Config, path))


def check_fields(obj: Any, prefix: str = "", skip: frozenset[str] = frozenset()) -> None:
    """Raise ConfigError naming the first field (depth first, in declaration order) of the
    dataclass tree ``obj`` outside its declared range; ``skip``: field names not checked."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, f"{prefix}{f.name}.")
        elif f.name not in skip:
            check_range(f"{prefix}{f.name}", value, f.metadata.get("bounds"))


def _bounds_table(cls: type, prefix: str = "") -> dict[str, Bounds]:
    out: dict[str, Bounds] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out |= _bounds_table(hints[f.name], f"{prefix}{f.name}.")
        elif "bounds" in f.metadata:
            out[f"{prefix}{f.name}"] = f.metadata["bounds"]
    return out


# Every declared range by dotted path (``{"gnn.dim": (1, None, "[]"), ...}``).
BOUNDS: dict[str, Bounds] = _bounds_table(Config)


def check_top_k(top_k: int, num_experts: int, prefix: str = "reward.") -> None:
    """A route picks at most every expert (the config's and the MoLE adapter's rule)."""
    if top_k > num_experts:
        raise ConfigError(
            f"{prefix}top_k: {top_k} experts per route, but {prefix}num_experts is {num_experts}"
        )


def check_names(path: str, values: list) -> None:
    """A list of names/counts the run iterates over: not empty, no entry twice."""
    if not values:
        raise ConfigError(f"{path}: must not be empty")
    dupes = sorted({str(v) for v in values if values.count(v) > 1})
    if dupes:
        raise ConfigError(f"{path}: duplicate entries {dupes}")


def check_rules(cfg: Config) -> None:
    """Rules a range cannot say: fields bounded by other fields, non-empty lists, even
    hops, sentinels.

    Each one used to pass the load and fail (or be silently reinterpreted) after an
    expensive stage: ``adapt.hops=3`` after the GNN trained, ``eval.label_counts=[-1]``
    read as "all but one label", ``train.max_steps=0`` as "no limit".
    """
    check_top_k(cfg.reward.top_k, cfg.reward.num_experts)
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
    if cfg.adapt.hops % 2:
        raise ConfigError(
            f"adapt.hops: must be even (user -> response -> user), got {cfg.adapt.hops}"
        )
    if cfg.train.max_steps == 0 or cfg.train.max_steps < -1:
        raise ConfigError(
            f"train.max_steps: expected -1 (the epochs decide) or >= 1, got "
            f"{cfg.train.max_steps}; use train.epochs to train the full schedule"
        )
    check_names("adapt.variants", cfg.adapt.variants)
    check_names("reward.models", cfg.reward.models)
    check_names("reward.target_modules", cfg.reward.target_modules)
    check_names("eval.label_counts", cfg.eval.label_counts)
    for i, n in enumerate(cfg.eval.label_counts):
        if n < 1:
            raise ConfigError(f"eval.label_counts[{i}]: expected >= 1 adaptation labels, got {n}")
    check_names("onboarding.answer_counts", cfg.onboarding.answer_counts)
    for i, n in enumerate(cfg.onboarding.answer_counts):
        if n < 1:
            raise ConfigError(f"onboarding.answer_counts[{i}]: expected >= 1 answers, got {n}")
    if cfg.onboarding.selectors:
        check_names("onboarding.selectors", cfg.onboarding.selectors)
    unknown = [s for s in cfg.onboarding.selectors if s not in SELECTORS]
    if unknown:
        raise ConfigError(
            f"onboarding.selectors: unknown {unknown} (known: {', '.join(SELECTORS)})"
        )
    if not cfg.run.dir.strip():
        raise ConfigError("run.dir: must not be empty")


# ------------------------------------------------------------------ conversion
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce_union(value: Any, tp: Any, path: str) -> Any:
    """The first member type of union ``tp`` that accepts ``value`` (None for ``X | None``)."""
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


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check/convert ``value`` to annotation ``tp``; raise ConfigError naming ``path``."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {short_repr(value)}")
        return _build(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, path)
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
    """Value ranges (the fields' ``bounds``) and the rules between fields."""
    check_fields(cfg)
    check_rules(cfg)
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
