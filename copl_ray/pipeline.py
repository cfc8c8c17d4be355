"""The product run: data → GNN → reward → eval → report, into one run directory.

``run_pipeline(cfg, stages)`` executes the stages in order, reusing every stage whose
``_SUCCESS`` marker matches the config sections it depends on
(:data:`copl_ray.artifacts.STAGE_SECTIONS`) and whose upstream did not change:

* a requested stage with a valid marker is **reused** (``force=True`` reruns it);
* a stage *before* a requested one (a prerequisite) runs when its marker is missing or stale;
* once a stage runs, every later stage up to the last requested one runs too, and the
  markers of stages after it are removed (their inputs changed);
* a stage that starts writes ``<stage>/_STARTED`` (config hash + upstream markers). When it
  is rerun with the same started-record it **resumes** (stages resume their own training
  from checkpoints); otherwise its folder is wiped first, so no checkpoint of another
  config is ever resumed.

The run directory is a local path or a URI (``copl_ray.fsutil``): stages run in a local
mirror that is pushed after every stage. The report is rebuilt at the end of every run
from whatever the run directory holds.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from copl_ray import fsutil
from copl_ray.artifacts import RunDir
from copl_ray.config import Config, save_config
from copl_ray.env import setup_env
from copl_ray.raylog import QUIET_RAY_ENV, quiet_ray_data
from copl_ray.tracking import tensorboard_dir

STAGES: tuple[str, ...] = ("data", "gnn", "reward", "eval")
RAY_STAGES = frozenset({"gnn", "reward", "eval"})  # the data stage is plain pandas/pyarrow
# "report" may appear in cfg.run.stages / --stages; the report is always rebuilt at the end.
ALL_STAGE_NAMES: tuple[str, ...] = (*STAGES, "report")

_STAGE_FUNCS: dict[str, tuple[str, str]] = {
    "data": ("copl_ray.data.build", "run_data_stage"),
    "gnn": ("copl_ray.graph.stage", "run_gnn_stage"),
    "reward": ("copl_ray.reward.stage", "run_reward_stage"),
    "eval": ("copl_ray.eval.stage", "run_eval_stage"),
}


class PipelineError(RuntimeError):
    """The pipeline cannot proceed for a reason the user can fix; the message says how."""


def log(msg: str) -> None:
    print(f"[copl-ray {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_stage(name: str) -> Callable[[Config, RunDir], dict]:
    """Import a stage function lazily (stages pull heavy deps; a missing one fails clearly)."""
    if name not in _STAGE_FUNCS:
        raise PipelineError(f"unknown stage {name!r} (stages: {', '.join(ALL_STAGE_NAMES)})")
    module, attr = _STAGE_FUNCS[name]
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise PipelineError(
            f"stage {name!r} is not available: cannot load {module}.{attr} "
            f"({type(e).__name__}: {e})"
        ) from e


def stage_paths(run: RunDir, stage: str) -> list[Path]:
    """Folders a stage owns (wiped when it must start fresh)."""
    paths = {
        "data": [run.data],
        "gnn": [run.gnn],
        # the locally trained tokenizer is part of the reward stage's output
        "reward": [run.root / "reward", run.root / "tokenizer"],
        "eval": [run.eval],
    }
    # its TensorBoard curves too: a fresh stage must not draw over an older config's
    return [*paths[stage], tensorboard_dir(run.root, stage)]


def parse_stages(stages: str | Sequence[str] | None, cfg: Config) -> list[str]:
    """Validate a stage list (comma string or sequence); ``None`` = ``cfg.run.stages``."""
    if stages is None:
        stages = cfg.run.stages
    if isinstance(stages, str):
        stages = [s.strip() for s in stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in ALL_STAGE_NAMES]
    if unknown:
        raise PipelineError(
            f"--stages: unknown stage(s) {', '.join(unknown)} (choose from "
            f"{', '.join(ALL_STAGE_NAMES)})"
        )
    return [s for s in STAGES if s in stages]


# ------------------------------------------------------------------------------ Ray
def _job_env_keys() -> set[str]:
    """Env-var keys a submitted job's runtime_env already sets (ray.init must not repeat them)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return set()
    try:
        return set((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {})
    except (json.JSONDecodeError, AttributeError):
        return set()


def ensure_ray(cfg: Config) -> bool:
    """Connect to / start Ray unless initialised; True when this call started it.

    ``cfg.run.ray_address`` or ``RAY_ADDRESS`` (set by ``ray job submit``) connects to a
    cluster; otherwise a fresh local Ray starts (``address="local"``: never attach by
    accident to another cluster running on the same machine).
    """
    import ray

    if ray.is_initialized():
        return False
    env = setup_env()
    for k, v in QUIET_RAY_ENV.items():
        env[k] = os.environ.setdefault(k, v)  # the user's own setting wins
    quiet_ray_data()
    skip = _job_env_keys()
    runtime_env = {"env_vars": {k: v for k, v in env.items() if k not in skip}}
    # Ray libraries' INFO lines (one per reported metric) drown the stages' own progress
    # lines, which are printed; warnings and errors still show.
    quiet = ray.LoggingConfig(encoding="TEXT", log_level="WARNING")
    address = cfg.run.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        log(f"connecting to Ray at {address}")
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, logging_config=quiet)
    else:
        log(f"starting a local Ray ({cfg.run.num_cpus or os.cpu_count()} CPUs)")
        ray.init(
            address="local",
            num_cpus=cfg.run.num_cpus,
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=True,
            logging_config=quiet,
        )
    return True


# ------------------------------------------------------------------------- markers
def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def _started_record(run: RunDir, cfg: Config, stage: str) -> dict[str, Any]:
    from copl_ray.artifacts import STAGE_SECTIONS

    upstream = STAGES[: STAGES.index(stage)]
    return {
        "config_hash": cfg.section_hash(*STAGE_SECTIONS[stage]),
        "upstream": {u: _read(run.root / u / "_SUCCESS") for u in upstream},
    }


def _prepare_stage(run: RunDir, cfg: Config, stage: str, fresh: bool) -> str:
    """Wipe or keep the stage's folders; return "fresh" or "resume"."""
    record = _started_record(run, cfg, stage)
    started = run.root / stage / "_STARTED"
    previous = _read(started)
    resumable = (
        not fresh and previous is not None and json.loads(previous) == record
    )  # same config, same upstream artifacts: an interrupted attempt of this very stage
    if not resumable:
        for p in stage_paths(run, stage):
            shutil.rmtree(p, ignore_errors=True)
    else:
        (run.root / stage / "_SUCCESS").unlink(missing_ok=True)
    started.parent.mkdir(parents=True, exist_ok=True)
    started.write_text(json.dumps(record))
    return "resume" if resumable else "fresh"


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}min"


# ------------------------------------------------------------------------ pipeline
def run_pipeline(
    cfg: Config,
    stages: str | Sequence[str] | None = None,
    *,
    force: bool = False,
    stage_funcs: dict[str, Callable[[Config, RunDir], dict]] | None = None,
) -> Path:
    """Run ``stages`` (default ``cfg.run.stages``) into ``cfg.run.dir``; return report.json.

    ``force`` reruns the requested stages even when their markers are valid.
    ``stage_funcs`` replaces stage functions by name (used by the Tune driver and tests
    that drive the real stages with different entry points).
    For a URI run dir the returned path is the local mirror's report.json; the same file
    is pushed to ``<uri>/report.json``.
    """
    requested = parse_stages(stages, cfg)
    target = cfg.run.dir
    uri = target if fsutil.is_uri(target) else None
    local = fsutil.staging_dir(uri) if uri else Path(target)
    if uri and fsutil.pull(uri, local):
        log(f"pulled existing run from {uri} into {local}")
    run = RunDir(local)
    run.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.root / "config.yaml")

    last = max((STAGES.index(s) for s in requested), default=-1)
    plan: list[tuple[str, str]] = []  # (stage, "run" | "reuse")
    upstream_runs = False
    for stage in STAGES[: last + 1]:
        valid = run.is_done(stage, cfg) and not upstream_runs
        if valid and not (force and stage in requested):
            plan.append((stage, "reuse"))
        else:
            plan.append((stage, "run"))
            upstream_runs = True
    later = STAGES[last + 1 :]
    log(
        f"run dir {uri or run.root.resolve()} | config {cfg.name} | plan: "
        + (", ".join(f"{s} ({a})" for s, a in plan) or "report only")
    )

    started_ray = False
    timings: dict[str, float] = {}
    t_total = time.perf_counter()
    try:
        for i, (stage, action) in enumerate(plan, 1):
            head = f"stage {i}/{len(plan)} [{stage}]"
            if action == "reuse":
                log(f"{head} reused (artifact matches config; {_fmt_s(run.stage_seconds(stage))})")
                continue
            fn = (stage_funcs or {}).get(stage) or load_stage(stage)
            if stage in RAY_STAGES and not started_ray:
                started_ray = ensure_ray(cfg)
            mode = _prepare_stage(run, cfg, stage, fresh=force and stage in requested)
            log(f"{head} running ({mode}) ...")
            t0 = time.perf_counter()
            fn(cfg, run)
            seconds = time.perf_counter() - t0
            run.mark_done(stage, cfg, seconds)
            timings[stage] = seconds
            log(f"{head} done in {_fmt_s(seconds)} (total {_fmt_s(time.perf_counter() - t_total)})")
            if uri:
                fsutil.push(run.root, uri)
        if upstream_runs:  # artifacts after the last requested stage are now stale
            for stage in later:
                (run.root / stage / "_SUCCESS").unlink(missing_ok=True)
    finally:
        if started_ray:
            import ray

            ray.shutdown()

    from copl_ray.report import build_report

    t0 = time.perf_counter()
    report_path = build_report(cfg, run, executed=timings)
    log(f"report written in {_fmt_s(time.perf_counter() - t0)}: {run.report_md}")
    if uri:
        fsutil.push(run.root, uri)
    return report_path


def report_location(cfg: Config, local_report: Path) -> str:
    """What to print for the user: the URI's report.json for URI runs, else the local path."""
    if fsutil.is_uri(cfg.run.dir):
        return fsutil.uri_join(cfg.run.dir, "report.json")
    return str(local_report.resolve())


def user_error(exc: BaseException) -> BaseException | None:
    """The user-fixable error behind ``exc`` (config, data, run dir), else None.

    By convention every ``ValueError`` subclass defined in ``copl_ray`` (ConfigError, data
    validation errors, RunDirError) and PipelineError is user-facing; Ray wraps errors
    raised in workers, so ``cause`` / ``__cause__`` chains are followed.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        mod = type(e).__module__ or ""
        if isinstance(e, PipelineError) or (
            isinstance(e, ValueError) and mod.startswith("copl_ray")
        ):
            return e
        if isinstance(e, FileNotFoundError):
            return e
        e = getattr(e, "cause", None) or e.__cause__
    return None


def main_with_errors(fn: Callable[[], int]) -> int:
    """Run a job body: user errors → message on stderr + exit 2, Ctrl-C → 130.

    SIGTERM (``timeout``, ``ray job stop``, a preempted node) unwinds like Ctrl-C, so the
    local Ray this process started is shut down and the next run resumes cleanly.
    """

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    try:
        return fn()
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        err = user_error(exc)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------- job arguments
def add_run_arguments(parser, default_stages: str | None = None) -> None:
    """The arguments every ``jobs/*.py`` shares (argparse parser)."""
    parser.add_argument("--config", default="tiny", help="preset name or YAML path (default: tiny)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="config override, e.g. --set gnn.epochs=50 (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--stages", default=default_stages,
        help=f"comma list of {','.join(ALL_STAGE_NAMES)} (default: {default_stages or 'config'})",
    )  # fmt: skip
    parser.add_argument("--run-dir", help="run directory: local path or pyarrow.fs URI")
    parser.add_argument(
        "--data", metavar="FILE",
        help="your own user_id,prompt,chosen,rejected[,split] file (sets data.source=own)",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="rerun the named stages")


def config_from_args(args) -> Config:
    """Preset/YAML + ``--data`` + ``--set`` overrides + ``--run-dir`` → validated Config."""
    from copl_ray.config import load_config

    overrides: list[str] = []
    if args.data:
        data = Path(args.data)
        if not data.exists():
            raise PipelineError(f"--data {args.data}: no such file")
        overrides += ["data.source=own", f"data.path={data.resolve()}"]
    overrides += list(args.overrides)
    cfg = load_config(args.config, overrides)
    if args.run_dir:
        cfg.run.dir = args.run_dir
    elif args.data and not any(o.startswith("run.dir=") for o in args.overrides):
        cfg.run.dir = str(Path("runs") / Path(args.data).stem)  # never clobber the preset's run
    return cfg


def run_job(args) -> int:
    """Body of every ``jobs/*.py``: config from args, run, print report.json last."""

    def body() -> int:
        cfg = config_from_args(args)
        report = run_pipeline(cfg, args.stages, force=args.force)
        print(report_location(cfg, report), flush=True)
        return 0

    return main_with_errors(body)
