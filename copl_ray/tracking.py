"""Metrics a user can watch while a run trains: TensorBoard, MLflow, Weights & Biases.

The one owner of where training scalars go and what they are called. Every stage's scalars
land in TensorBoard event files under ``<run dir>/tensorboard/<stage>[/<model>]``, so
``tensorboard --logdir <run dir>`` shows the GNN, every reward model and the eval side by
side (the same tag overlays across models). MLflow (``run.mlflow_tracking_uri``) and W&B
(``run.wandb_project``) are one config switch each, opened through Ray's own integrations
(``setup_mlflow`` / ``setup_wandb`` of ``ray.air.integrations``); their packages are the
optional ``tracking`` extra, checked before the first stage by :func:`check_tracking`.

Ray Train stages (gnn, reward) add :func:`callbacks` to their ``RunConfig``: a
``ray.train.UserCallback`` whose ``after_report`` runs on the Ray Train controller (an
actor Ray pins to the driver's node) after every ``ray.train.report``, so one writer logs
rank 0's report while the run trains. Its paths are absolute: the controller does not run
in the driver's working directory. The eval stage (no Ray Train) calls :func:`log_eval`.

A stage resumed from a checkpoint reports again the steps after that checkpoint: the
TensorBoard writer opens with ``purge_step`` = its first step, so TensorBoard hides the
interrupted attempt's events from there on (no doubled curve). A stage that starts fresh
has its folder wiped with the stage's other outputs (``copl_ray.pipeline.stage_paths``).
A sink that fails while training (a tracking server gone) says so in one line and is
turned off; training goes on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import netrc
import numbers
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from copl_ray.config import Config, ConfigError

TB_ROOT = "tensorboard"
TRACKING_EXTRA = 'pip install "copl-ray[tracking]"'
STEP_KEYS = {"gnn": "epoch", "reward": "step"}  # the x axis of each Ray Train stage

# Reported key -> scalar name (TensorBoard tag, MLflow metric, W&B key). Keys not named
# here (step, epoch, resumed_from_*) are not logged. A list value logs one scalar per item.
TAGS: dict[str, str] = {
    "loss": "loss/train",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "val_accuracy": "accuracy/val",
    "best_val_accuracy": "accuracy/best_val",
    "lr": "lr",
    "tokens_per_s": "throughput/tokens_per_s",
    "pairs_per_s": "throughput/pairs_per_s",
    "seconds_per_epoch": "throughput/seconds_per_epoch",
    "eta_s": "progress/eta_s",
    "eta_seconds": "progress/eta_s",
    # share of the samples routed to each expert since the previous report (MoLE gate)
    "expert_usage": "expert_usage/expert_{}",
}


# ------------------------------------------------------------------ config
def check_tracking(cfg: Config) -> None:
    """Before the first stage: a switch that is on has its package (and W&B a key).

    Raises :class:`ConfigError` naming the field and the pip command, instead of a sink
    that fails inside the Ray Train controller once the GNN has trained.
    """
    switches = (
        ("run.mlflow_tracking_uri", cfg.run.mlflow_tracking_uri, "mlflow"),
        ("run.wandb_project", cfg.run.wandb_project, "wandb"),
    )
    for path, value, module in switches:
        if value is None:
            continue
        if not value.strip():
            raise ConfigError(f"{path}: empty; null (the default) turns {module} off")
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{path}: set, but {module} is not installed: {TRACKING_EXTRA}")
    if cfg.run.tensorboard and importlib.util.find_spec("tensorboardX") is None:
        raise ConfigError(
            "run.tensorboard: tensorboardX is not installed: pip install tensorboardX"
        )
    if cfg.run.wandb_project and not _wandb_key_known():
        raise ConfigError(
            "run.wandb_project: no W&B API key: set WANDB_API_KEY, run `wandb login`, "
            "or WANDB_MODE=offline to keep the runs in the run directory"
        )


def _wandb_key_known() -> bool:
    if os.environ.get("WANDB_MODE") in ("offline", "disabled") or os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:  # `wandb login` stores the key in ~/.netrc
        return bool(host and netrc.netrc().authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


def tensorboard_dir(root: str | Path, stage: str, model: str | None = None) -> Path:
    """``<root>/tensorboard/<stage>[/<model>]``, absolute."""
    d = Path(root).resolve() / TB_ROOT / stage
    return d / model if model else d


def absolute_mlflow_uri(uri: str) -> str:
    """A plain or ``file:`` path made absolute (the controller has another cwd)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file" and not parsed.netloc:
        path = parsed.path
    elif parsed.scheme == "":
        path = uri
    else:
        return uri
    return Path(path).expanduser().resolve().as_uri()


# ------------------------------------------------------------------ what is logged
def _number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """A reported metrics dict -> ``{scalar name: value}`` (:data:`TAGS`)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        tag = TAGS.get(key)
        if tag is None or value is None:
            continue
        if isinstance(value, (list, tuple)):
            out.update({tag.format(i): float(v) for i, v in enumerate(value) if _number(v)})
        elif _number(value):
            out[tag] = float(value)
    return out


def eval_scalars(results: dict[str, Any]) -> list[tuple[int, dict[str, float]]]:
    """``(step, scalars)`` rows of the eval results (``run.eval/results.json``).

    Step 0: accuracy (overall / common / controversial) per model and split, adaptation
    variants, expert usage; the labels curve uses the number of labels as its step, the
    onboarding curves (one per selector) the number of answers.
    """
    head: dict[str, float] = {}
    for model, splits in results.get("models", {}).items():
        for split, s in splits.items():
            for kind in ("overall", "common", "controversial"):
                if isinstance(s, dict) and _number(s.get(kind)):
                    name = "accuracy" if kind == "overall" else f"accuracy_{kind}"
                    head[f"{name}/{split}/{model}"] = float(s[kind])
    for variant, r in results.get("adaptation", {}).items():
        if _number(r.get("unseen", {}).get("overall")):
            head[f"adaptation/unseen/{variant}"] = float(r["unseen"]["overall"])
    for split, u in results.get("expert_usage", {}).items():
        for i, share in enumerate(u.get("share", []) if isinstance(u, dict) else []):
            head[f"expert_usage/{split}/expert_{i}"] = float(share)
    rows = [(0, head)] if head else []
    curve = results.get("labels_curve") or {}
    acc = curve.get("accuracy") or []
    series = acc if isinstance(acc, dict) else {None: acc}  # one curve, or one per model
    for model, values in series.items():
        key = "labels_curve/unseen_accuracy" + (f"/{model}" if model else "")
        for k, a in zip(curve.get("counts", []), values):
            if _number(a):
                rows.append((int(k), {key: float(a)}))
    for selector, c in ((results.get("onboarding") or {}).get("selectors") or {}).items():
        for n, a in zip(c.get("answers", []), c.get("accuracy", [])):
            if _number(a):
                rows.append((int(n), {f"onboarding/unseen_accuracy/{selector}": float(a)}))
    return rows


# ------------------------------------------------------------------ where it goes
@dataclass(frozen=True)
class TrackingSpec:
    """Where one stage's (or one model's) scalars go. Plain data: it is pickled to the Ray
    Train controller, which opens the sinks itself at the first report."""

    stage: str
    model: str | None
    root: str  # absolute run directory
    tensorboard: bool
    mlflow_uri: str | None
    wandb_project: str | None
    name: str  # MLflow experiment / W&B group
    run_id: str  # W&B run id: stable per (run dir, stage, model, config), so a resume continues
    params: dict[str, Any]  # the config sections the stage depends on
    last_step: int | None = None  # the report at this step is the last: sinks close there
    # WANDB_* / MLFLOW_* of the driver, for a controller started elsewhere (never logged)
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def run_name(self) -> str:
        return f"{self.stage}/{self.model}" if self.model else self.stage


def tracking_spec(
    cfg: Config, root: str | Path, stage: str, model: str | None = None, *, last_step=None
) -> TrackingSpec | None:
    """The spec of one stage/model, or None when every sink is off."""
    from copl_ray.artifacts import STAGE_SECTIONS

    r = cfg.run
    if not (r.tensorboard or r.mlflow_tracking_uri or r.wandb_project):
        return None
    root = Path(root).resolve()
    sections = STAGE_SECTIONS.get(stage, ())
    key = [str(root), stage, model, cfg.section_hash(*sections)] if stage in STEP_KEYS else None
    run_id = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16] if key else None
    params = {s: v for s, v in cfg.to_dict().items() if s in sections}
    return TrackingSpec(
        stage=stage,
        model=model,
        root=str(root),
        tensorboard=r.tensorboard,
        mlflow_uri=absolute_mlflow_uri(r.mlflow_tracking_uri) if r.mlflow_tracking_uri else None,
        wandb_project=r.wandb_project,
        name=r.tracking_name or root.name,
        run_id=run_id or uuid.uuid4().hex[:16],  # eval: a new run each time
        params=params,
        last_step=last_step,
        env={k: v for k, v in os.environ.items() if k.startswith(("WANDB_", "MLFLOW_"))},
    )


class _TensorBoard:
    """Synchronous event-file writer: every report is on disk when ``log`` returns.

    Why not ``tensorboardX.SummaryWriter``: it queues events to a thread and its ``flush()``
    does not drain that queue, so a running ``tensorboard`` (or a stage that crashes) misses
    the latest reports. The file gets the SummaryWriter's format: version header, a
    ``SessionLog.START`` at ``first_step`` (TensorBoard's purge of a resumed attempt's
    overlap), one simple-value summary per scalar.
    """

    def __init__(self, spec: TrackingSpec, first_step: int) -> None:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        logdir = tensorboard_dir(spec.root, spec.stage, spec.model)
        logdir.mkdir(parents=True, exist_ok=True)
        # files are named by the second; a nanosecond suffix keeps two attempts of one
        # second apart (else the second truncates the first) and in the order they ran
        self.writer = EventsWriter(str(logdir / "events"), f".{time.time_ns()}")
        start = SessionLog(status=SessionLog.START)
        self.writer.write_event(Event(wall_time=time.time(), step=first_step, session_log=start))
        self.writer.flush()

    def log(self, values: dict[str, float], step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar

        now = time.time()
        for tag, v in values.items():
            self.writer.write_event(Event(wall_time=now, step=step, summary=scalar(tag, v)))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, spec: TrackingSpec, first_step: int) -> None:
        from ray.air.integrations.mlflow import setup_mlflow

        if spec.mlflow_uri.startswith("file:"):
            # MLflow >= 3 refuses its file store unless asked; a file: URI in the config is
            # that request (a database store needs the full mlflow package)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.mlflow = setup_mlflow(
            config=spec.params,
            tracking_uri=spec.mlflow_uri,
            experiment_name=spec.name,
            run_name=spec.run_name,
            create_experiment_if_not_exists=True,
            tags={
                "copl.stage": spec.stage,
                "copl.model": spec.model or "",
                "copl.run_dir": spec.root,
            },
            rank_zero_only=False,  # the controller is no Train worker; it has no rank
        )
        self.run_id = self.mlflow.active_run().info.run_id
        self.client = self.mlflow.tracking.MlflowClient(spec.mlflow_uri)

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, v, ts, step) for k, v in values.items()]
        )

    def close(self) -> None:
        active = self.mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            self.mlflow.end_run()
        else:
            self.client.set_terminated(self.run_id)


class _Wandb:
    def __init__(self, spec: TrackingSpec, first_step: int) -> None:
        from ray.air.integrations.wandb import setup_wandb

        self.run = setup_wandb(
            config=spec.params,
            rank_zero_only=False,  # the controller is no Train worker; it has no rank
            project=spec.wandb_project,
            group=spec.name,
            trial_id=spec.run_id,
            trial_name=spec.run_name,
            dir=spec.root,  # offline runs: <run dir>/wandb/offline-run-*
            resume="allow",
        )

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class Tracker:
    """The sinks of one spec, opened at the first :meth:`log` in the process that logs."""

    def __init__(self, spec: TrackingSpec) -> None:
        self.spec = spec
        self.sinks: dict[str, Any] | None = None
        self.closed = False

    def _open(self, first_step: int) -> None:
        for k, v in self.spec.env.items():
            os.environ.setdefault(k, v)
        self.sinks = {}
        wanted = (
            ("tensorboard", self.spec.tensorboard, _TensorBoard),
            ("mlflow", self.spec.mlflow_uri, _MLflow),
            ("wandb", self.spec.wandb_project, _Wandb),
        )
        for name, on, cls in wanted:
            if on:
                try:
                    self.sinks[name] = cls(self.spec, first_step)
                except Exception as e:  # noqa: BLE001 - reported, the training goes on
                    self._off(name, e)

    def _off(self, name: str, error: Exception) -> None:
        """A tracking failure must not kill the training: one line, that sink off."""
        self.sinks.pop(name, None)
        print(
            f"[tracking] {self.spec.run_name}: {name} turned off for this run "
            f"({type(error).__name__}: {str(error)[:300]})",
            flush=True,
        )

    def log(self, values: dict[str, float], step: int) -> None:
        if self.closed or not values:
            return
        if self.sinks is None:
            self._open(step)
        for name, sink in list(self.sinks.items()):
            try:
                sink.log(values, step)
            except Exception as e:  # noqa: BLE001
                self._off(name, e)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for name, sink in list((self.sinks or {}).items()):
            try:
                sink.close()
            except Exception as e:  # noqa: BLE001
                self._off(name, e)


# ------------------------------------------------------------------ stage entry points
def callbacks(
    cfg: Config, root: str | Path, stage: str, model: str | None = None, *, last_step=None
) -> list:
    """``RunConfig(callbacks=...)`` of a Ray Train stage: [] when every sink is off.

    ``last_step``: the step (``step`` for reward, ``epoch`` for the GNN) of the run's last
    report, where the sinks close (MLflow marks the run finished, W&B syncs).
    """
    spec = tracking_spec(cfg, root, stage, model, last_step=last_step)
    return [] if spec is None else [_report_callback(spec, STEP_KEYS[stage])]


def _report_callback(spec: TrackingSpec, step_key: str):
    from ray.train import UserCallback

    class TrackingCallback(UserCallback):
        """Logs rank 0's report on the Ray Train controller after every report."""

        def __init__(self) -> None:
            self.spec, self.tracker = spec, None

        def __setstate__(self, state: dict) -> None:
            # unpickled on the controller before training starts: import the sinks' modules
            # now, so the first report does not hold the controller's poll loop for seconds
            self.__dict__.update(state)
            preload(self.spec)

        def after_report(self, run_context, metrics, checkpoint) -> None:
            row = metrics[0] if metrics else {}
            step = row.get(step_key)
            if not _number(step):
                return
            if self.tracker is None:
                self.tracker = Tracker(self.spec)
            self.tracker.log(scalars(row), int(step))
            if self.spec.last_step is not None and step >= self.spec.last_step:
                self.tracker.close()

    return TrackingCallback()


def preload(spec: TrackingSpec) -> None:
    """Import the modules of the sinks that are on (a missing one is reported at open)."""
    modules = [
        ("tensorboardX.summary", spec.tensorboard),
        ("mlflow", spec.mlflow_uri),
        ("wandb", spec.wandb_project),
    ]
    for module, on in modules:
        if on:
            try:
                importlib.import_module(module)
            except ImportError:
                pass


def log_eval(cfg: Config, root: str | Path, results: dict[str, Any]) -> None:
    """Log the eval stage's results (:func:`eval_scalars`) from the calling process."""
    spec = tracking_spec(cfg, root, "eval")
    if spec is None:
        return
    tracker = Tracker(spec)
    try:
        for step, values in eval_scalars(results):
            tracker.log(values, step)
    finally:
        tracker.close()
