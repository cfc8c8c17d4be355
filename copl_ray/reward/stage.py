"""Reward stage: train every model of ``cfg.reward.models`` with Ray Train + DeepSpeed.

``run_reward_stage(cfg, run)`` (driver side; Ray must be initialised) writes
``run.reward(name)/`` = ``PersonalRewardModel.save`` output + ``tokenizer/`` +
``metrics.json`` for each model:

============  =========================================================================
copl          MoLE gated by the frozen GNN user embedding (copl_ray/graph/users.py)
uniform       one LoRA (rank ``baseline_rank``), no user input: one BTL model for everyone
oracle        one ``uniform`` per true group, trained on that group's users only; saved
              as ``run.reward("oracle")/<group>/`` (needs known groups)
no_gnn        MoLE gated by a free learnable user-embedding table (indexed by user_index)
no_mole       GNN embedding projected to one extra input token + one LoRA (baseline_rank)
============  =========================================================================

Training set: survey pairs of seen users (+ their val pair when
``reward.train_on_val_pairs``, the official code's choice, docs/reference-code.md B7). Validation
during training: the val split, or a ``train.val_fraction`` slice of the survey split
held out of training when the data has no val split.

Each model is one ``TorchTrainer`` run named ``<model>-<config hash>`` under
``run.root/reward/_ray``; rerunning the stage after an interruption resumes every model
from its latest checkpoint (Ray Train V2 restores the run's checkpoint list by name).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from copl_ray.artifacts import RunDir
from copl_ray.config import Config, ConfigError
from copl_ray.data.tables import format_text
from copl_ray.graph.users import UserEmbeddings, path_in
from copl_ray.recovery import await_restart_if_peer_lost, new_attempts_file
from copl_ray.reward.ds_config import warmup_steps
from copl_ray.reward.shards import UserTable, count_pairs, pair_dataset, read_lookups
from copl_ray.variants import PREF, Variant
from copl_ray.variants import variant as variant_of

TOKENIZER_STAMP = "copl_tokenizer_source.json"


class RewardTrainingError(RuntimeError):
    """A reward model's Ray Train run failed (the message names the model)."""


# ------------------------------------------------------------------ inputs
def prepare_tokenizer(cfg: Config, run: RunDir) -> Path:
    """``run.root/tokenizer``: trained on the data's texts for tiny-gemma, else the backbone's.

    Reused when its stamp (backbone, vocab size, data summary) matches.
    """
    from copl_ray.reward.backbone import load_tokenizer, train_tokenizer

    out = run.root / "tokenizer"
    summary = (
        (run.data / "summary.json").read_text() if (run.data / "summary.json").exists() else ""
    )
    stamp = {
        "backbone": cfg.reward.backbone,
        "vocab": cfg.reward.tokenizer_vocab,
        "data": hashlib.sha256(summary.encode()).hexdigest()[:16],
    }
    stamp_file = out / TOKENIZER_STAMP
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        return out
    if out.exists():
        shutil.rmtree(out)
    if cfg.reward.backbone == "tiny-gemma":
        resp = pq.read_table(run.data / "responses.parquet").to_pandas()
        # The vocabulary only (no labels) is learnt from every response text.
        texts = [format_text(p, t) for p, t in zip(resp["prompt"], resp["text"])]
        train_tokenizer(texts, cfg.reward.tokenizer_vocab, out)
    else:
        load_tokenizer(cfg.reward.backbone).save_pretrained(str(out))
    stamp_file.write_text(json.dumps(stamp))
    return out


def load_user_table(cfg: Config, run: RunDir, need_embeddings: bool):
    """Seen users in embedding-table order, with groups and (optionally) their embeddings
    (``[U, d]`` float32, the GNN stage's trained rows: copl_ray/graph/users.py)."""
    users = pq.read_table(run.data / "users.parquet").to_pandas()
    group_of = dict(zip(users["user_id"], users["group"].fillna("")))
    if path_in(run.gnn).exists():
        seen = UserEmbeddings.read(run.gnn).seen()
        ids, table = seen.ids, seen.matrix
    elif need_embeddings:
        raise FileNotFoundError(
            f"{path_in(run.gnn)}: missing; reward.models {cfg.reward.models} include a model "
            "gated by GNN user embeddings (run the gnn stage first)"
        )
    else:
        ids = users.loc[users["seen"], "user_id"].astype(str).tolist()
        table = None
    return UserTable(ids, [group_of.get(u) or "" for u in ids]), table


def registered(name: str) -> Variant:
    """The registry's variant ``name``; an unknown one fails as a ``reward.models`` error."""
    try:
        return variant_of(name)
    except ValueError as e:
        raise ConfigError(f"reward.models: {e}") from None


def model_jobs(
    cfg: Config, users: UserTable
) -> list[tuple[str, str, Path | None, list[str] | None]]:
    """``(job name, architecture, sub-folder, only_users)`` for every model to train: one
    job per model, or one per known group for a per-group variant (the oracle)."""
    jobs: list[tuple[str, str, Path | None, list[str] | None]] = []
    for name in cfg.reward.models:
        v = registered(name)
        if not v.per_group:
            jobs.append((name, v.architecture, None, None))
            continue
        groups = sorted({g for g in users.groups if g})
        if not groups:
            raise ConfigError(
                f"reward.models: {name!r} needs known user groups; this data has none"
            )
        for g in groups:
            members = [u for u, ug in zip(users.user_ids, users.groups) if ug == g]
            jobs.append((f"{name}-{g}", v.architecture, Path(g), members))
    return jobs


# ------------------------------------------------------------------ one model
def training_schedule(
    cfg: Config, run: RunDir, job: str, member_ids: list[str], texts
) -> dict[str, Any]:
    """Training pairs, micro batch and steps of one model, before any run-plan budget.

    ``texts`` is the response-text lookup of :func:`read_lookups`. The one place the
    steps are counted: the reward stage trains by it and the run plan (copl_ray/plan.py)
    announces and budgets it.
    """
    tc = cfg.train
    world = tc.num_workers
    has_val_split = (
        bool(count_pairs(run.data, member_ids, ("val",), texts)["rows"])
        and not cfg.reward.train_on_val_pairs
    )
    train_splits = ("survey", "val") if cfg.reward.train_on_val_pairs else ("survey",)
    val_slice = 0.0 if has_val_split else tc.val_fraction
    counts = count_pairs(run.data, member_ids, train_splits, texts, val_slice, False)
    rows = counts["rows"]
    if rows < world:
        raise ConfigError(
            f"train.num_workers: reward model {job!r} has {rows} training pairs for {world} workers"
        )
    micro = min(tc.batch_size, rows // world)
    steps_per_epoch = max(1, rows // (world * micro * tc.grad_accum))
    return {
        "counts": counts,
        "has_val_split": has_val_split,
        "train_splits": train_splits,
        "val_slice": val_slice,
        "rows": rows,
        "micro": micro,
        "steps_per_epoch": steps_per_epoch,
        "total": tc.max_steps if tc.max_steps > 0 else steps_per_epoch * tc.epochs,
    }


def _pair_datasets(cfg: Config, run: RunDir, sched: dict[str, Any], **common) -> dict[str, Any]:
    """The training shard pipeline and, when there is one, the validation pipeline: the val
    split, else the ``train.val_fraction`` slice of the survey split held out of training."""
    val_slice = sched["val_slice"]
    datasets = {
        "train": pair_dataset(
            run.data,
            splits=sched["train_splits"],
            slice_fraction=val_slice,
            take_slice=False,
            seed=cfg.train.seed,
            **common,
        )
    }
    if sched["has_val_split"]:
        datasets["val"] = pair_dataset(run.data, splits=("val",), shuffle=False, **common)
    elif val_slice > 0:
        datasets["val"] = pair_dataset(
            run.data,
            splits=("survey",),
            slice_fraction=val_slice,
            take_slice=True,
            shuffle=False,
            **common,
        )
    return datasets


def _loop_config(
    cfg: Config,
    job: str,
    architecture: str,
    sched: dict[str, Any],
    total: int,
    n_users: int,
    user_embeddings: np.ndarray | None,
    **extra: Any,
) -> dict[str, Any]:
    """What every worker's :class:`copl_ray.reward.train.RewardRecipe` reads."""
    tc, micro = cfg.train, sched["micro"]
    return {
        "cfg": cfg.to_dict(),
        "name": job,
        "variant": architecture,
        # no_gnn learns its own table; without GNN embeddings it takes the GNN width.
        "user_dim": int(user_embeddings.shape[1]) if user_embeddings is not None else cfg.gnn.dim,
        "n_users": n_users,
        "user_embeddings": user_embeddings if variant_of(architecture).uses_graph else None,
        "micro_batch": micro,
        "steps_per_epoch": sched["steps_per_epoch"],
        "total_steps": total,
        "warmup_steps": warmup_steps(tc, total),
        "shuffle_buffer": max(4 * micro, 512),
        "torch_threads": max(1, int(tc.cpus_per_worker)),
        **extra,
    }


def _trainer(
    cfg: Config,
    run: RunDir,
    job: str,
    loop_config: dict[str, Any],
    datasets: dict[str, Any],
    callbacks: list,
):
    """The model's ``TorchTrainer``, named ``<job>-<config hash>`` so a rerun resumes it."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from copl_ray import tracking
    from copl_ray.env import setup_env

    tc = cfg.train
    storage = (run.root / "reward" / "_ray").resolve()
    run_name = f"{job}-{cfg.section_hash('data', 'gnn', 'reward', 'train')}"
    last_step = loop_config["total_steps"]
    return TorchTrainer(
        train_loop_per_worker=_train_loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=tc.num_workers,
            use_gpu=tc.use_gpu,
            resources_per_worker={"CPU": tc.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(storage),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=tc.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=tc.max_failures),
            worker_runtime_env={"env_vars": setup_env()},
            callbacks=[
                *callbacks,
                *tracking.callbacks(cfg, run.root, "reward", job, last_step=last_step),
            ],
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # no per-report INFO
        ),
        datasets=datasets,
    )


def _fit(trainer, job: str, attempts: Path):
    """``trainer.fit()``; a failure names the model (Ray wraps worker errors; cause kept)."""
    try:
        result = trainer.fit()
    except Exception as e:
        raise RewardTrainingError(f"reward model {job!r} training failed: {e}") from e
    finally:
        attempts.unlink(missing_ok=True)
    if result.checkpoint is None:
        raise RewardTrainingError(f"reward model {job!r}: the run reported no checkpoint")
    return result


def _keep_final_model(result, out_dir: Path, tokenizer_dir: Path) -> dict[str, Any]:
    """Copy the last checkpoint's ``model/`` (+ the tokenizer) to ``out_dir``; its trainer
    state (step, loss and validation curves)."""
    with result.checkpoint.as_directory() as d:
        d = Path(d)
        state = json.loads((d / "trainer_state.json").read_text())
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.copytree(d / "model", out_dir)
    if not (out_dir / "tokenizer").exists():
        shutil.copytree(tokenizer_dir, out_dir / "tokenizer")
    return state


def _model_metrics(
    cfg: Config, job: str, architecture: str, sched: dict, total: int, n_members: int, fit: dict
) -> dict[str, Any]:
    """``metrics.json`` of one model; ``fit``: trainer ``state``, ``last`` report, ``t0``."""
    state, last = fit["state"], fit["last"]
    val_slice, val_curve = sched["val_slice"], state.get("val_curve", [])
    return {
        "model": job,
        "variant": architecture,
        "train_pairs": sched["rows"],
        "dropped_unknown_response": sched["counts"]["dropped_unknown_response"],
        "users": n_members,
        "micro_batch": sched["micro"],
        "world_size": cfg.train.num_workers,
        "steps": state["step"],
        "total_steps": total,
        "steps_per_epoch": sched["steps_per_epoch"],
        "zero_stage": cfg.train.zero_stage,
        "val_source": "val"
        if sched["has_val_split"]
        else (f"survey slice {val_slice}" if val_slice else None),
        "val_accuracy": val_curve[-1]["val_acc"] if val_curve else None,
        "val_curve": val_curve,
        "loss_curve": state.get("history", []),
        "tokens_per_s": last.get("tokens_per_s"),
        "resumed_from_step": last.get("resumed_from_step"),
        "seconds": round(time.time() - fit["t0"], 2),
    }


def train_reward_model(
    cfg: Config,
    run: RunDir,
    *,
    job: str,
    variant: str,
    out_dir: Path,
    users: UserTable,
    user_embeddings: np.ndarray | None,
    tokenizer_dir: Path,
    lookups,
    only_users: list[str] | None = None,
    interrupt_at_step: int | None = None,
    callbacks: list | None = None,
    frozen_states: Path | None = None,
) -> dict[str, Any]:
    """Fit one model with a ``TorchTrainer``; copy the final model into ``out_dir``.

    ``variant`` is the architecture built (:data:`copl_ray.variants.ARCHITECTURES`).
    ``callbacks``: Ray Train ``UserCallback``s added to the run (``copl_ray.tune`` passes one
    that forwards every validation report to Tune, so ASHA can stop the trial early).
    """
    from copl_ray.budget import planned_steps

    tc = cfg.train
    member_ids = only_users if only_users is not None else [u for u in users.user_ids if u]
    sched = training_schedule(cfg, run, job, member_ids, lookups[0])
    # the run plan's training budget (run_dir/plan.json), when it capped this model
    total = planned_steps(cfg, run, job) or sched["total"]
    common = dict(users=users, tokenizer_dir=tokenizer_dir, only_users=only_users)
    datasets = _pair_datasets(
        cfg, run, sched, max_length=cfg.reward.max_length, lookups=lookups, **common
    )
    storage = (run.root / "reward" / "_ray").resolve()
    storage.mkdir(parents=True, exist_ok=True)
    attempts = new_attempts_file(storage)  # counts worker-group (re)starts of this fit
    loop_config = _loop_config(
        cfg,
        job,
        variant,
        sched,
        total,
        len(users.user_ids),
        user_embeddings,
        user_init=initial_user_rows(cfg, run, variant, users),
        context=context_tokens(cfg, run, variant, users, tokenizer_dir, lookups[0]),
        tokenizer_dir=str(tokenizer_dir),
        has_val="val" in datasets,
        interrupt_at_step=interrupt_at_step,
        frozen_states=str(frozen_states) if frozen_states else None,
        attempts_file=str(attempts),
    )
    trainer = _trainer(cfg, run, job, loop_config, datasets, callbacks or [])
    t0 = time.time()
    print(
        f"[reward] {job}: variant={variant} pairs={sched['rows']} workers={tc.num_workers} "
        f"micro_batch={sched['micro']} steps={total} zero_stage={tc.zero_stage}",
        flush=True,
    )
    result = _fit(trainer, job, attempts)
    state = _keep_final_model(result, out_dir, tokenizer_dir)
    if registered(variant).user_input == "table":
        (out_dir / "user_ids.json").write_text(json.dumps(users.user_ids))
    fit = {"state": state, "last": result.metrics or {}, "t0": t0}
    metrics = _model_metrics(cfg, job, variant, sched, total, len(member_ids), fit)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def survey_labels(run: RunDir) -> pd.DataFrame:
    """``user_id, pair_id, chosen, rejected`` of the survey split (what users labelled)."""
    cols = ["user_id", "pair_id", "chosen", "rejected", "split"]
    ann = pq.read_table(run.data / "annotations.parquet", columns=cols).to_pandas()
    return ann[ann["split"] == "survey"].drop(columns="split")


def initial_user_rows(cfg: Config, run: RunDir, variant: str, users: UserTable) -> Any:
    """PReF's start for its user weights: the SVD of the seen users' survey labels
    (copl_ray/reward/baselines.py); None for every other variant (their own init)."""
    if variant != PREF:
        return None
    from copl_ray.reward.baselines import svd_user_factors

    k = cfg.reward.num_prototypes
    return svd_user_factors(survey_labels(run), users.user_ids, k, cfg.train.seed)


def context_tokens(
    cfg: Config, run: RunDir, variant: str, users: UserTable, tokenizer_dir: Path, texts
) -> dict[str, np.ndarray] | None:
    """VPL's context source: each seen user's first ``reward.vpl_context`` survey pairs as
    rows into the tokenised responses they use (the worker turns them into frozen features,
    copl_ray/reward/train.py); None for every variant that reads no context."""
    if registered(variant).user_input != "context":
        return None
    from copl_ray.reward.backbone import load_tokenizer, tokenize_texts

    ann = survey_labels(run)
    ann = ann[ann["chosen"].isin(texts.index) & ann["rejected"].isin(texts.index)]
    user = pd.Index(users.user_ids).get_indexer(ann["user_id"].astype(str))
    ann = ann.assign(user=user)[user >= 0]
    ann = ann.groupby("user", sort=False).head(cfg.reward.vpl_context)
    resp = pd.Index(np.unique(np.concatenate([ann["chosen"], ann["rejected"]])))
    tok = load_tokenizer(tokenizer_dir)
    tok.padding_side = "right"
    ids, mask = tokenize_texts(tok, texts.loc[resp].tolist(), cfg.reward.max_length)
    return {
        "ids": ids,
        "mask": mask,
        "chosen": resp.get_indexer(ann["chosen"]),
        "rejected": resp.get_indexer(ann["rejected"]),
        "user": ann["user"].to_numpy(),
    }


def _train_loop(config: dict[str, Any]) -> None:
    # Imported lazily so that the driver never imports deepspeed (docs/stack-notes.md S1).
    from copl_ray.raylog import quiet_train_worker
    from copl_ray.reward.train import train_loop_per_worker

    quiet_train_worker()  # no per-report INFO line from Ray Train (copl_ray/raylog.py)
    try:
        train_loop_per_worker(config)
    except RuntimeError as e:
        await_restart_if_peer_lost(e)  # returns only when a peer was not lost
        raise


def frozen_states_file(
    cfg: Config, run: RunDir, tokenizer_dir: Path, texts: list[str]
) -> Path | None:
    """With ``reward.adapted_layers``: the frozen lower layers' states of every response
    text, computed once for all models and workers of the stage (copl_ray/reward/
    frozen_cache.py ``precompute_states``); reused while the data and reward config hold."""
    if cfg.reward.adapted_layers is None:
        return None
    from copl_ray.reward.backbone import build_backbone, load_tokenizer, tokenize_texts
    from copl_ray.reward.frozen_cache import FrozenLowerLayers, cache_bytes, precompute_states

    path = run.root / "reward" / f"frozen_states-{cfg.section_hash('data', 'reward')}.safetensors"
    if path.exists():
        return path
    t0 = time.time()
    tokenizer = load_tokenizer(tokenizer_dir)
    backbone = build_backbone(cfg.reward, tokenizer)
    frozen = FrozenLowerLayers(backbone, cfg.reward.adapted_layers, cache_bytes(cfg.reward))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    n = precompute_states(
        frozen, lambda t: tokenize_texts(tokenizer, t, cfg.reward.max_length), texts, partial
    )
    partial.replace(path)  # a killed stage never leaves a half file under the final name
    print(
        f"[reward] frozen lower layers: {n:,} of {len(texts):,} texts computed once "
        f"({time.time() - t0:.0f}s), shared by every model",
        flush=True,
    )
    return path


# ------------------------------------------------------------------ stage
def run_reward_stage(cfg: Config, run: RunDir) -> dict[str, Any]:
    """Train every model of ``cfg.reward.models``; return ``{model: metrics}``."""
    t0 = time.time()
    need_gnn = any(registered(m).uses_graph for m in cfg.reward.models)
    users, table = load_user_table(cfg, run, need_gnn)
    tokenizer_dir = prepare_tokenizer(cfg, run)
    lookups = read_lookups(run.data, users)
    states = frozen_states_file(cfg, run, tokenizer_dir, list(lookups[0]))
    out: dict[str, Any] = {"models": {}}
    for job, variant, sub, only in model_jobs(cfg, users):
        model_name = job.split("-", 1)[0] if sub is not None else job
        out_dir = run.reward(model_name) / sub if sub is not None else run.reward(model_name)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        m = train_reward_model(
            cfg,
            run,
            job=job,
            variant=variant,
            out_dir=out_dir,
            users=users,
            user_embeddings=table,
            tokenizer_dir=tokenizer_dir,
            lookups=lookups,
            only_users=only,
            frozen_states=states,
        )
        out["models"][job] = {k: m[k] for k in ("val_accuracy", "steps", "seconds", "train_pairs")}
    for name in cfg.reward.models:
        if registered(name).per_group:  # the groups eval routes users by
            groups = sorted({g for g in users.groups if g})
            (run.reward(name) / "groups.json").write_text(json.dumps(groups))
            # the model's training time: its groups' fits together
            seconds = sum(out["models"][f"{name}-{g}"]["seconds"] for g in groups)
            (run.reward(name) / "metrics.json").write_text(json.dumps({"seconds": seconds}))
    out["seconds"] = round(time.time() - t0, 2)
    return out
