"""``run_gnn_stage(cfg, run)``: the GNN as a Ray Train job (``TorchTrainer``, one worker).

The worker trains with :class:`~copl_ray.graph.train.GNNTrainer` (one propagation per
optimisation step), reports metrics after every validation with a progress line
(epoch, loss, val acc, best, s/epoch, ETA; also appended to ``run.gnn/progress.log``)
and attaches a checkpoint (safetensors + JSON: model, best model, AdamW moments,
scheduler, RNG, curves) every ``gnn.ckpt_every`` epochs and at the end.

Resume: the Ray run lives in ``run.gnn/ray/<name>`` with a name derived from the hash of
the ``data`` and ``gnn`` config sections. A worker that dies is restarted by Ray from the
last checkpoint (``gnn.max_failures``); a stage that was interrupted (process killed,
failures exhausted) resumes from that checkpoint when it is called again with the same
config — Ray Train V2 restores the run's checkpoint list and ``ray.train.get_checkpoint()``
hands the latest one to the new worker. A changed config starts a fresh run.

Afterwards the driver loads the best weights from the final checkpoint and writes every
output with :func:`~copl_ray.graph.export.export_gnn`. Fault injection for tests: the
environment variable ``COPL_GNN_FAULT_AT_EPOCH=k`` makes a fresh (not resumed) worker raise
at the start of epoch ``k+1``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from copl_ray.artifacts import RunDir
from copl_ray.config import Config, config_from_dict
from copl_ray.data.tables import PreferenceTables
from copl_ray.raylog import TRAIN_LOG_LEVEL
from copl_ray.recovery import commit_checkpoint, new_attempts_file, restart_line, start_attempt

FAULT_ENV = "COPL_GNN_FAULT_AT_EPOCH"
STATE_TENSORS, STATE_META = "state.safetensors", "state.json"


def save_trainer_state(trainer, folder: str | Path) -> None:
    from safetensors.torch import save_file

    save_file(trainer.state_tensors(), str(Path(folder) / STATE_TENSORS))
    (Path(folder) / STATE_META).write_text(json.dumps(trainer.state_meta()))


def load_trainer_state(folder: str | Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / STATE_TENSORS)), json.loads(
        (Path(folder) / STATE_META).read_text()
    )


def gnn_train_loop(config: dict) -> None:
    """Ray Train worker: build the graph, (resume and) train, report, checkpoint."""
    import ray.train
    import ray.train.torch
    import torch

    from copl_ray.graph.export import prepare_inputs
    from copl_ray.graph.train import GNNTrainer, format_progress
    from copl_ray.raylog import quiet_train_worker

    quiet_train_worker()
    cfg = config_from_dict(config["cfg"])
    inputs = prepare_inputs(PreferenceTables.read(config["data_dir"]))
    device = ray.train.torch.get_device() if cfg.gnn.use_gpu else torch.device("cpu")
    trainer = GNNTrainer(inputs.graph, inputs.train, inputs.val, cfg.gnn, device)
    resumed_from = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.load_state(*load_trainer_state(folder))
        resumed_from = trainer.epoch
    progress = Path(config["progress_log"])

    def say(line: str) -> None:
        print(line, flush=True)
        with progress.open("a") as f:
            f.write(line + "\n")

    say(
        f"gnn: {inputs.graph.n_users} users, {inputs.graph.n_responses} responses, "
        f"{len(inputs.train)} survey pairs, {len(inputs.val)} val pairs, "
        f"{trainer.steps_per_epoch} step(s)/epoch on {device}, {cfg.gnn.init} init"
        + (f"; resumed after epoch {resumed_from}" if resumed_from else "")
    )
    attempt = start_attempt(config.get("attempts_file"), rank=0)  # one worker
    if attempt > 1:
        resumed = f"epoch {resumed_from}" if resumed_from else None
        say(restart_line("gnn", attempt, cfg.gnn.max_failures, resumed))
    fault_at = int(config.get("fault_at_epoch") or 0)
    while trainer.epoch < cfg.gnn.epochs:
        if fault_at and not resumed_from and trainer.epoch == fault_at:
            raise RuntimeError(f"{FAULT_ENV}={fault_at}: injected worker failure (test hook)")
        row = trainer.step_epoch()
        row["resumed_from_epoch"] = resumed_from
        last = trainer.epoch == cfg.gnn.epochs
        ckpt_due = trainer.epoch % max(1, cfg.gnn.ckpt_every) == 0 or last
        if row["val_accuracy"] is None and not ckpt_due:
            continue
        say(format_progress(row))
        metrics = {k: v for k, v in row.items() if v is not None}
        if row["seconds_per_epoch"]:  # throughput for the trackers (copl_ray/tracking.py)
            metrics["pairs_per_s"] = len(inputs.train) / row["seconds_per_epoch"]
        if ckpt_due:
            with tempfile.TemporaryDirectory() as tmp:
                save_trainer_state(trainer, tmp)
                meta = json.loads((Path(tmp) / STATE_META).read_text())
                meta["resumed_from_epoch"] = resumed_from
                (Path(tmp) / STATE_META).write_text(json.dumps(meta))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            if not last:  # a worker killed from here on restarts from this checkpoint
                commit_checkpoint()
        else:
            ray.train.report(metrics)


def run_gnn_stage(cfg: Config, run: RunDir) -> dict:
    """Train the GNN under Ray Train, then export embeddings, adaptation, metrics, t-SNE."""
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    from copl_ray import tracking
    from copl_ray.graph.export import export_gnn, prepare_inputs
    from copl_ray.graph.model import GNNShape

    t0 = time.perf_counter()
    if not (run.data / "annotations.parquet").exists():
        raise FileNotFoundError(
            f"gnn stage: {run.data}/annotations.parquet missing; run data first"
        )
    tables = PreferenceTables.read(run.data)
    run.gnn.mkdir(parents=True, exist_ok=True)
    progress_log = run.gnn / "progress.log"
    resources = {"CPU": cfg.gnn.cpus_per_worker} | ({"GPU": 1} if cfg.gnn.use_gpu else {})
    attempts = new_attempts_file(run.gnn / "ray")
    trainer = TorchTrainer(
        gnn_train_loop,
        train_loop_config={
            "cfg": cfg.to_dict(),
            "data_dir": str(run.data.resolve()),
            "progress_log": str(progress_log.resolve()),
            "fault_at_epoch": int(os.environ.get(FAULT_ENV, "0") or 0),
            "attempts_file": str(attempts),
        },
        scaling_config=ScalingConfig(
            num_workers=1, use_gpu=cfg.gnn.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=f"gnn-{cfg.section_hash('data', 'gnn')}",
            storage_path=str((run.gnn / "ray").resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=cfg.gnn.max_failures),
            # Ray Train's own INFO lines ("Reporting training result ...", "Checkpoint
            # successfully created ...") per report; the worker prints its progress itself.
            logging_config=LoggingConfig(log_level=TRAIN_LOG_LEVEL),
            callbacks=tracking.callbacks(cfg, run.root, "gnn", last_step=cfg.gnn.epochs),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # Ray wraps worker errors; keep the cause and say how to resume
        raise RuntimeError(
            f"gnn stage: training failed ({type(e).__name__}: {e}). Calling the stage again "
            f"with the same config resumes from the last checkpoint in {run.gnn / 'ray'}"
        ) from e
    finally:
        attempts.unlink(missing_ok=True)
    if result.checkpoint is None:
        raise RuntimeError(f"gnn stage: the Ray run in {run.gnn / 'ray'} left no checkpoint")
    with result.checkpoint.as_directory() as folder:
        tensors, meta = load_trainer_state(folder)
    best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")}
    inputs = prepare_inputs(tables)
    metrics = export_gnn(cfg, tables, inputs, GNNShape(**meta["shape"]), best, meta, run.gnn)
    metrics["stage_seconds"] = time.perf_counter() - t0
    (run.gnn / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
