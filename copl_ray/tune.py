"""Ray Tune sweeps over the reward stage (experts, LoRA rank, gate temperature, lr).

One GNN artifact serves every trial: the driver runs (or reuses) the data and GNN stages
once, loads the user table, embeddings, tokenizer and lookups once, and hands them to the
trials through the object store (``tune.with_parameters``). A trial only trains one reward
model (``space.model``, default ``copl``) with its sampled config and reports validation
accuracy as it trains; ASHA stops the weak trials early.

Train V2 cannot be wrapped by a ``Tuner`` (docs/stack-notes.md S7), so each trial is a *function*
trainable that builds and fits a ``TorchTrainer`` (``copl_ray.reward.stage.
train_reward_model``) whose ``RunConfig`` carries a ``TuneReportCallback`` forwarding every
validation report (``train.eval_every``) to Tune, so ASHA decides at its rungs while the
trial trains; trials ask for
``{"cpu": 0.1}`` themselves and their training workers ask for
``train.num_workers × train.cpus_per_worker``.

Space file (``tune_spaces/*.yaml``)::

    base: tiny                       # preset or YAML (``--config`` overrides it)
    overrides: [train.max_steps=40]  # fixed for every trial
    model: copl                      # the reward model the trials train
    metric: val_acc                  # reported by the training loop; mode max
    num_samples: 8
    scheduler: {max_t: 40, grace_period: 10, reduction_factor: 2}   # ASHA, in steps
    search:                          # key -> one distribution
      reward.num_experts: {choice: [2, 4, 8]}
      reward.temperature: {loguniform: [0.5, 2.0]}

Outputs in the sweep folder: ``results.csv``, ``results.md``, ``best_config.yaml``
(a full config, usable with ``--config``), ``ray/`` (Tune's state; ``--resume``) and
``trials/<trial id>/run`` (each trial's reward model; ``data``/``gnn`` link to the base run).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from copl_ray.artifacts import RunDir
from copl_ray.config import Config, ConfigError, config_from_dict, load_config
from copl_ray.variants import COPL, REGISTRY

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint", "qrandint")
DATA_CPU_RESERVE = 1.0  # Ray Data read/tokenise tasks need one free CPU (docs/stack-notes.md S6)


@dataclass
class SweepSpace:
    base: str = "tiny"
    overrides: list[str] = field(default_factory=list)
    model: str = COPL
    metric: str = "val_acc"
    mode: str = "max"
    num_samples: int = 4
    scheduler: dict[str, Any] = field(default_factory=dict)
    search: dict[str, dict[str, Any]] = field(default_factory=dict)
    name: str = "sweep"


def load_space(path: str | Path) -> SweepSpace:
    """Read and validate a space file; ConfigError names the file and key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--space {path}: no such file")
    raw = yaml.safe_load(path.read_text()) or {}
    known = set(SweepSpace.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown} (known: {sorted(known)})")
    raw.setdefault("name", path.stem)
    space = SweepSpace(**raw)
    if not space.search:
        raise ConfigError(f"{path}: search: at least one key to sweep")
    probe = load_config(space.base, space.overrides)  # validates base + overrides
    for key, dist in space.search.items():
        if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
            raise ConfigError(f"{path}: search.{key}: expected one of {DISTRIBUTIONS}: values")
        _set(probe.to_dict(), key, None, where=f"{path}: search.{key}")  # key must exist
    if space.mode not in ("max", "min"):
        raise ConfigError(f"{path}: mode: expected max or min, got {space.mode!r}")
    return space


def _set(tree: dict, dotted: str, value: Any, where: str = "") -> None:
    node = tree
    keys = dotted.split(".")
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            raise ConfigError(f"{where or dotted}: {k!r} is not a config section")
        node = node[k]
    if keys[-1] not in node:
        raise ConfigError(f"{where or dotted}: unknown config key")
    node[keys[-1]] = value


def param_space(space: SweepSpace) -> dict[str, Any]:
    from ray import tune

    out = {}
    for key, dist in space.search.items():
        ((kind, args),) = dist.items()
        if kind in ("choice", "grid"):
            out[key] = (tune.grid_search if kind == "grid" else tune.choice)(list(args))
        else:
            out[key] = getattr(tune, kind)(*args)
    return out


def trial_config(base: dict[str, Any], params: dict[str, Any], model: str | None) -> Config:
    """Base config tree + sampled params (→ validated Config); trains only ``model``."""
    tree = copy.deepcopy(base)
    for key, value in params.items():
        _set(tree, key, value.item() if hasattr(value, "item") else value)
    if model is not None:
        tree["reward"]["models"] = [model]
    return config_from_dict(tree)


def max_concurrent_trials(cfg: Config, cluster_cpus: float, cluster_gpus: float) -> int:
    """Trials that fit at once: workers' CPUs (+0.1 per trial), one CPU left for Ray Data."""
    tc = cfg.train
    if tc.use_gpu:
        return max(1, int(cluster_gpus // max(tc.num_workers, 1)))
    per_trial = tc.num_workers * tc.cpus_per_worker + 0.1
    return max(1, math.floor((cluster_cpus - DATA_CPU_RESERVE) / per_trial + 1e-9))


# -------------------------------------------------------------------------- trial
def _trial(
    params: dict[str, Any],
    *,
    base: dict,
    model: str,
    metric: str,
    base_root: str,
    trials: str,
    shared: dict,
):
    """One Tune trial: train ``model`` with the sampled config on the shared GNN artifact.

    The trial's run dir lives in ``<sweep>/trials/<trial id>/run``, outside Tune's trial
    folder: Tune uploads that folder to its storage and would copy the linked artifacts.
    """
    from ray import tune

    from copl_ray.reward.stage import train_reward_model

    cfg = trial_config(base, params, model)
    trial_root = Path(trials) / tune.get_context().get_trial_id() / "run"
    run = RunDir(trial_root)
    trial_root.mkdir(parents=True, exist_ok=True)
    for stage in ("data", "gnn"):  # read-only inputs: one artifact for every trial
        link = trial_root / stage
        if not link.exists():
            link.symlink_to(Path(base_root) / stage, target_is_directory=True)
    final = train_reward_model(
        cfg,
        run,
        job=model,
        variant=model,
        out_dir=run.reward(model),
        users=shared["users"],
        user_embeddings=shared["table"],
        tokenizer_dir=Path(shared["tokenizer_dir"]),
        lookups=shared["lookups"],
        callbacks=[metric_report_callback(metric)],
    )
    # The last validation is reported only now, with the model saved: ASHA stops a trial
    # that reaches max_t, and stopping it inside fit() would lose the trained model.
    tune.report(
        {
            "val_acc": final["val_accuracy"],
            "step": final["steps"],
            "total_steps": final["total_steps"],
        }
    )


def metric_report_callback(metric: str):
    """A ``TuneReportCallback`` that forwards only the Train reports carrying ``metric``.

    The worker loop reports at every ``train.log_every`` and ``train.eval_every`` step; only
    the validation reports hold ``val_acc``, and Tune rejects a result without the metric
    its scheduler needs. Forwarding each validation report as one Tune result is what lets
    ASHA compare trials at its rungs (``time_attr="step"``) and stop the weak ones while
    they train. The report of the last step is held back (the trial reports it after
    ``fit`` returns, see ``_trial``).
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    class MetricReportCallback(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            total = (run_context.train_loop_config or {}).get("total_steps")
            row = dict(metrics[0]) if metrics else {}
            if row.get(metric) is None or (total and row.get("step", 0) >= total):
                return
            row["total_steps"] = total
            super().after_report(run_context, [row], checkpoint)

    return MetricReportCallback()


def _trainable(cfg: Config, space: SweepSpace, run: RunDir, trials: Path):
    """The function trainable with its shared inputs in the object store."""
    from ray import tune

    from copl_ray.reward.shards import read_lookups
    from copl_ray.reward.stage import load_user_table, prepare_tokenizer

    users, table = load_user_table(cfg, run, REGISTRY[space.model].uses_graph)
    shared = {
        "users": users,
        "table": table,
        "tokenizer_dir": str(prepare_tokenizer(cfg, run).resolve()),
        "lookups": read_lookups(run.data, users),
    }
    fn = tune.with_parameters(
        _trial,
        base=cfg.to_dict(),
        model=space.model,
        metric=space.metric,
        base_root=str(run.root.resolve()),
        trials=str(trials),
        shared=shared,
    )
    return tune.with_resources(fn, {"cpu": 0.1})  # 0 is rejected (docs/stack-notes.md S7)


# -------------------------------------------------------------------------- sweep
def run_sweep(
    space: SweepSpace,
    cfg: Config,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Data + GNN once (reused when done), then the Tune sweep; returns output paths."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from copl_ray.console import log
    from copl_ray.pipeline import ensure_ray, run_pipeline

    if space.model not in REGISTRY or REGISTRY[space.model].per_group:
        raise ConfigError(f"space model: {space.model!r} cannot be swept (one model per trial)")
    out = Path(out_dir or Path(cfg.run.dir) / "tune" / space.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = ensure_ray(cfg)
    try:
        report = run_pipeline(cfg, ["data", "gnn"])  # the one GNN artifact of the sweep
        run = RunDir(report.parent)
        trainable = _trainable(cfg, space, run, out / "trials")
        storage, name = out / "ray", space.name
        if resume and tune.Tuner.can_restore(str(storage / name)):
            log(f"resuming sweep {storage / name}")
            tuner = tune.Tuner.restore(
                str(storage / name), trainable=trainable, resume_errored=True
            )
        else:
            if resume:
                log(f"nothing to resume at {storage / name}: starting the sweep")
            res = ray.cluster_resources()
            concurrency = max_concurrent_trials(cfg, res.get("CPU", 1), res.get("GPU", 0))
            sch = asha_settings(space, cfg)
            log(f"sweep {name}: {space.num_samples} samples, {concurrency} at once, ASHA {sch}")
            tuner = tune.Tuner(
                trainable,
                param_space=param_space(space),
                tune_config=tune.TuneConfig(
                    metric=space.metric,
                    mode=space.mode,
                    num_samples=space.num_samples,
                    scheduler=ASHAScheduler(time_attr="step", **sch),
                    max_concurrent_trials=concurrency,
                ),
                run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=1),
            )
        grid = tuner.fit()
        return write_results(grid, space, cfg, out)
    finally:
        if started:
            ray.shutdown()


def asha_settings(space: SweepSpace, cfg: Config) -> dict[str, Any]:
    """ASHA's ``max_t`` / ``grace_period`` / ``reduction_factor`` (in optimizer steps)."""
    return {
        "max_t": max(cfg.train.max_steps, 1),
        "grace_period": 1,
        "reduction_factor": 2,
        **space.scheduler,
    }


def write_results(grid, space: SweepSpace, cfg: Config, out: Path) -> dict[str, Any]:
    """results.csv / results.md (one row per trial, best first) and best_config.yaml.

    ``reports``: validation results the scheduler received from the trial; ``early_stop``:
    the trial ended without error before its last step (ASHA stopped it at a rung).
    """
    rows = []
    for r in grid:
        hist = r.metrics_dataframe
        vals = hist[space.metric].dropna() if hist is not None and space.metric in hist else []
        best = (max(vals) if space.mode == "max" else min(vals)) if len(vals) else None
        steps, total = (r.metrics or {}).get("step"), (r.metrics or {}).get("total_steps")
        rows.append(
            {
                "trial": (r.metrics or {}).get("trial_id") or Path(r.path).name,
                **{k: r.config.get(k) for k in space.search},
                f"last_{space.metric}": (r.metrics or {}).get(space.metric),
                f"best_{space.metric}": best,
                "steps": steps,
                "reports": len(vals),
                "early_stop": bool(not r.error and steps is not None and steps < total),
                "status": "ERROR" if r.error else "OK",
                "error": (str(r.error).strip().splitlines() or [repr(r.error)])[0][:200]
                if r.error
                else "",
            }
        )
    import pandas as pd

    key = f"best_{space.metric}"
    # ties go to the lower trial id: the grid's order is not stable (a resumed sweep lists
    # its trials in another order), the best config must be
    table = pd.DataFrame(rows).sort_values(
        [key, "trial"], ascending=[space.mode == "min", True], na_position="last"
    )
    table.to_csv(out / "results.csv", index=False)
    (out / "results.md").write_text(_markdown(table))
    ok = table[table[key].notna()]
    if ok.empty:
        raise RuntimeError(f"sweep {space.name}: no trial reported {space.metric}")
    best_params = {k: ok.iloc[0][k] for k in space.search}
    best = trial_config(cfg.to_dict(), best_params, None)
    best.name = f"{cfg.name}-{space.name}-best"
    best.run.dir = str(Path(cfg.run.dir).parent / best.name)
    header = (
        f"# Best of sweep {space.name} ({space.metric}={ok.iloc[0][key]:.4f});\n"
        f"# python jobs/full.py --config {out / 'best_config.yaml'}\n"
    )
    (out / "best_config.yaml").write_text(header + best.to_yaml())
    return {
        "results_csv": out / "results.csv",
        "results_md": out / "results.md",
        "best_config": out / "best_config.yaml",
        "best": {k: (v.item() if hasattr(v, "item") else v) for k, v in best_params.items()},
        "best_metric": float(ok.iloc[0][key]),
        "n_trials": len(table),
    }


def _markdown(table) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in table.iterrows():
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
