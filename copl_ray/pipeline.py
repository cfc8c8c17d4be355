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

import argparse
import importlib
import json
import os
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from copl_ray import fsutil
from copl_ray.artifacts import STAGES, RunDir
from copl_ray.config import Config, save_config
from copl_ray.console import log
from copl_ray.env import RAY_WORKER_SETUP_HOOK, setup_env
from copl_ray.preflight import (
    check_cluster_resources,
    check_ray_request,
    check_with_data,
    preflight,
)
from copl_ray.raylog import QUIET_RAY_ENV, quiet_ray_data
from copl_ray.tracking import tensorboard_dir

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
    accident to another cluster running on the same machine). Every worker of the job
    pins its own cluster's address (:func:`copl_ray.env.ray_worker_setup`), and the local
    Ray runs its dashboard: Ray Train's placement-group cleaner asks the State API about
    the run's controller every second, and without the dashboard each ask failed with a
    console warning (~1 a second); :func:`local_ray_options` says what that costs.
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
    runtime_env["worker_process_setup_hook"] = RAY_WORKER_SETUP_HOOK
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
            runtime_env=runtime_env,
            log_to_driver=True,
            logging_config=quiet,
            **local_ray_options(),
        )
    warm_train_coordinator()
    return True


def warm_train_coordinator(timeout_s: float = 120.0) -> None:
    """Start Ray's autoscaling-coordinator actor now and wait until it is up.

    Every Ray Train run first registers its resources with this detached actor and waits
    5 s for the answer; the first run of a session also waits for the actor's process to
    start, which on a busy 2-core machine took longer: a WARNING with a 15-line
    ``GetTimeoutError`` traceback ("safe to ignore") in the console. Creating it here,
    where startup time is spent anyway, leaves Train's request only the call itself.
    Internal Ray API: on another Ray layout this does nothing.
    """
    import ray

    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )

        ray.get(get_or_create_autoscaling_coordinator().__ray_ready__.remote(), timeout=timeout_s)
    except Exception:  # a Ray without it, or slow: Train creates it itself
        pass


def local_ray_options() -> dict[str, Any]:
    """``ray.init`` options of a Ray this process starts for itself (also the tests' Ray).

    The dashboard (loopback only; another port if 8265 is taken) serves the State API that
    Ray Train V2's placement-group cleaner polls. Measured on the 2-core box: +11
    processes, +220 MB PSS, +1.4 CPU-s at start, ~1-3 s longer ``ray.init``, +2% of one
    core while idle (1.27 vs 0.66 CPU-s per 30 s). Ray Train's preemption watcher (one ``core_worker.cc`` error line per training
    run about its constructor arguments) watches for nodes being drained by an
    autoscaler, which a single-machine Ray never does: it is off here unless the user set
    ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER`` (read by the controller from the driver's env).
    """
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    return {"include_dashboard": True, "dashboard_host": "127.0.0.1"}


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


# ------------------------------------------------------------------------ run plan
def announce_run_plan(cfg: Config, run: RunDir, plan: list[tuple[str, str]]) -> None:
    """Print the run plan (pairs, steps per model, ETA, budget: copl_ray/plan.py) when the
    GNN or the reward stage will train; the plan writes run_dir/plan.json, which carries a
    budget's step cap to the reward stage."""
    if not any(s in ("gnn", "reward") and a == "run" for s, a in plan):
        return
    from copl_ray.plan import plan_run

    for line in plan_run(cfg, run).lines():
        log(f"plan: {line}")


# ---------------------------------------------------------------- run-dir lock
LOCK_FILE = ".lock"


@contextmanager
def run_dir_lock(target: str) -> Iterator[Path]:
    """Hold the run directory's exclusive lock for a whole run; refuse if another holds it.

    Two runs on one run directory would interleave writes: the second "resumed" the
    first's in-flight stage, or wiped it when its config differed. The lock is
    ``fcntl.flock`` on ``RUN/.lock`` (for a URI run dir: on its local staging mirror, where
    the stages write), so the OS drops it when the holder exits in any way (no stale lock
    after ``kill -9``); the file names the holder (pid@host) for the refusal message.
    Yields the local directory the run writes.
    """
    import fcntl

    local = fsutil.staging_dir(target) if fsutil.is_uri(target) else Path(target)
    try:
        local.mkdir(parents=True, exist_ok=True)
        handle = open(local / LOCK_FILE, "a+")  # noqa: SIM115 - held for the whole run
    except OSError as e:
        raise PipelineError(f"run.dir {target}: cannot create {LOCK_FILE}: {e.strerror}") from e
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise PipelineError(
                f"run.dir {target} is in use by {holder}: wait for that run to finish, "
                "or give this one another --run-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()}@{socket.gethostname()} (since {since})\n")
        handle.flush()
        yield local
    finally:
        handle.close()  # releases the lock


# ------------------------------------------------------------------------ pipeline
def run_pipeline(
    cfg: Config,
    stages: str | Sequence[str] | None = None,
    *,
    force: bool = False,
    stage_funcs: dict[str, Callable[[Config, RunDir], dict]] | None = None,
) -> Path:
    """Run ``stages`` (default ``cfg.run.stages``) into ``cfg.run.dir``; return report.json.

    Before anything runs, :mod:`copl_ray.preflight` answers every misuse it can know
    from the config, the files and the cluster (one ConfigError naming the field).
    ``force`` reruns the requested stages even when their markers are valid.
    ``stage_funcs`` replaces stage functions by name (used by the Tune driver and tests
    that drive the real stages with different entry points).
    For a URI run dir the returned path is the local mirror's report.json; the same file
    is pushed to ``<uri>/report.json``. The run holds the run directory's lock
    (:func:`run_dir_lock`) from start to report.
    """
    requested = parse_stages(stages, cfg)
    last = max((STAGES.index(s) for s in requested), default=-1)
    preflight(cfg, STAGES[: last + 1])  # every misuse answered before any work is done
    with run_dir_lock(cfg.run.dir):
        return _run_locked(cfg, requested, force, stage_funcs)


def _run_locked(
    cfg: Config,
    requested: list[str],
    force: bool,
    stage_funcs: dict[str, Callable[[Config, RunDir], dict]] | None,
) -> Path:
    """:func:`run_pipeline`'s body, run while holding the run directory's lock."""
    target = cfg.run.dir
    uri = target if fsutil.is_uri(target) else None
    local = fsutil.staging_dir(uri) if uri else Path(target)
    if uri and fsutil.pull(uri, local):
        log(f"pulled existing run from {uri} into {local}")
    run = RunDir(local)
    run.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.root / "config.yaml")

    plan = _stage_plan(cfg, run, requested, force)
    log(
        f"run dir {uri or run.root.resolve()} | config {cfg.name} | plan: "
        + (", ".join(f"{s} ({a})" for s, a in plan) or "report only")
    )
    check_ray_request(cfg, [s for s, a in plan if a == "run"])
    timings = _execute_plan(cfg, run, plan, requested, force, stage_funcs, uri)

    from copl_ray.report import build_report

    t0 = time.perf_counter()
    report_path = build_report(cfg, run, executed=timings)
    log(f"report written in {_fmt_s(time.perf_counter() - t0)}: {run.report_md}")
    if uri:
        fsutil.push(run.root, uri)
    return report_path


def _stage_plan(
    cfg: Config, run: RunDir, requested: list[str], force: bool
) -> list[tuple[str, str]]:
    """``(stage, "run" | "reuse")`` for every stage up to the last requested one.

    A stage is reused when its artifact matches the config, no stage before it runs and
    it was not forced (``force`` reruns the requested stages only).
    """
    last = max((STAGES.index(s) for s in requested), default=-1)
    plan: list[tuple[str, str]] = []
    upstream_runs = False
    for stage in STAGES[: last + 1]:
        valid = run.is_done(stage, cfg) and not upstream_runs
        if valid and not (force and stage in requested):
            plan.append((stage, "reuse"))
        else:
            plan.append((stage, "run"))
            upstream_runs = True
    return plan


def _execute_plan(
    cfg: Config,
    run: RunDir,
    plan: list[tuple[str, str]],
    requested: list[str],
    force: bool,
    stage_funcs: dict[str, Callable[[Config, RunDir], dict]] | None,
    uri: str | None,
) -> dict[str, float]:
    """Run the plan's "run" stages in order (Ray started before the first Ray stage and
    shut down after); return their wall seconds. When any stage ran, the markers of the
    stages after the plan are removed: their artifacts are stale."""
    planned = STAGES[: len(plan)]
    started_ray = False
    timings: dict[str, float] = {}
    t_total = time.perf_counter()
    try:
        for i, (stage, action) in enumerate(plan, 1):
            if stage == "gnn":  # the data stage ran or was reused; nothing has trained yet
                check_with_data(cfg, run, planned)
                announce_run_plan(cfg, run, plan)
            head = f"stage {i}/{len(plan)} [{stage}]"
            if action == "reuse":
                log(f"{head} reused (artifact matches config; {_fmt_s(run.stage_seconds(stage))})")
                continue
            fn = (stage_funcs or {}).get(stage) or load_stage(stage)
            if stage in RAY_STAGES and not started_ray:
                with keep_signal_handlers():  # ray.init replaces SIGTERM's
                    started_ray = ensure_ray(cfg)
                check_cluster_resources(cfg, [s for s, a in plan if a == "run"])
            mode = _prepare_stage(run, cfg, stage, fresh=force and stage in requested)
            log(f"{head} running ({mode}) ...")
            t0 = time.perf_counter()
            run_stage_interruptibly(fn, cfg, run, stage)
            seconds = time.perf_counter() - t0
            run.mark_done(stage, cfg, seconds)
            timings[stage] = seconds
            log(f"{head} done in {_fmt_s(seconds)} (total {_fmt_s(time.perf_counter() - t_total)})")
            if uri:
                fsutil.push(run.root, uri)
        if any(a == "run" for _, a in plan):  # artifacts after the last planned stage: stale
            for stage in STAGES[len(plan) :]:
                (run.root / stage / "_SUCCESS").unlink(missing_ok=True)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return timings


# -------------------------------------------------------------------- interrupts
class Interrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM: which signal, the stage it stopped and what that stage saved."""

    def __init__(self, signum: int, stage: str | None = None, saved: str | None = None):
        super().__init__(f"signal {signum}")
        self.signum, self.stage, self.saved = signum, stage, saved


_interrupted = threading.Event()  # set by the first signal; a second one exits at once


def _on_signal(signum: int, frame) -> None:
    if _interrupted.is_set():  # a second Ctrl-C while unwinding: stop now, no traceback
        os._exit(128 + signum)
    _interrupted.set()
    raise Interrupted(signum)


def install_interrupt_handlers() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread."""
    if threading.current_thread() is threading.main_thread():
        _interrupted.clear()
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)


@contextmanager
def keep_signal_handlers() -> Iterator[None]:
    """Restore the SIGINT/SIGTERM handlers the block found when it ends.

    ``ray.init`` installs its own SIGTERM handler (``sys.exit(15)``, raised wherever the
    main thread is, inside Ray's C++ calls too: the old exit 134 with abort stack lines);
    a stage's :func:`run_stage_interruptibly` installs ours only for the stage.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


def run_stage_interruptibly(
    fn: Callable[[Config, RunDir], dict], cfg: Config, run: RunDir, stage: str
) -> dict | None:
    """Run one stage in a worker thread while the main thread waits for signals.

    Ray Train's ``fit()`` replaces the process's SIGINT handler with its own (it aborts
    the run and ``sys.exit``s: Ctrl-C ended with exit 1 and no message) but only when it
    runs in the main thread (as under Ray Tune), and a handler raising inside Ray's
    blocking calls can abort the process. Here the main thread only joins the stage
    thread, so a signal always reaches :func:`_on_signal` in plain Python; it becomes
    :class:`Interrupted` naming the stage and what it saved, the caller's ``finally``
    shuts the local Ray down (ending the stage's workers) and the daemon thread dies with
    the process. Off the main thread (Tune trials) the stage simply runs inline.
    """
    if threading.current_thread() is not threading.main_thread():
        return fn(cfg, run)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(cfg, run)
        except BaseException as e:  # handed to the main thread below
            box["error"] = e

    worker = threading.Thread(target=target, name=f"copl-stage-{stage}", daemon=True)
    with keep_signal_handlers():
        install_interrupt_handlers()
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.5)
        except KeyboardInterrupt as e:
            signum = getattr(e, "signum", signal.SIGINT)
            raise Interrupted(signum, stage, saved_progress(run, stage)) from None
    if "error" in box:
        raise box["error"]
    return box.get("result")


def _latest_checkpoints(storage: Path) -> dict[str, dict[str, Any]]:
    """Ray Train run name -> metrics of its latest *registered* checkpoint under ``storage``
    (from Ray Train's ``checkpoint_manager_snapshot.json``: what a rerun restores)."""
    found: dict[str, dict[str, Any]] = {}
    for snap in sorted(storage.glob("*/checkpoint_manager_snapshot.json")):
        try:
            latest = json.loads(snap.read_text()).get("latest_checkpoint_result") or {}
        except (OSError, ValueError):
            continue
        if latest.get("metrics"):
            found[snap.parent.name] = latest["metrics"]
    return found


def saved_progress(run: RunDir, stage: str) -> str:
    """What an interrupted stage leaves for the rerun, in words (for the one-line notice)."""
    if stage == "gnn":
        epochs = [m["epoch"] for m in _latest_checkpoints(run.gnn / "ray").values() if "epoch" in m]
        if epochs:
            return f"epoch {max(epochs)} checkpoint saved in {run.gnn}"
        return f"no checkpoint yet in {run.gnn}"
    if stage == "reward":
        reward = run.root / "reward"
        jobs = {
            name.rsplit("-", 1)[0]: m["step"]
            for name, m in _latest_checkpoints(reward / "_ray").items()
            if "step" in m
        }
        if jobs:
            steps = ", ".join(f"{job} step {step}" for job, step in sorted(jobs.items()))
            return f"checkpoints saved in {reward}: {steps}"
        return f"no checkpoint yet in {reward}"
    if stage == "data":
        return "the data stage reruns in seconds"
    return f"the {stage} stage reruns from its start; earlier stages are kept"


def resume_command(argv: Sequence[str] | None = None) -> str:
    """The command line that resumes this run: the same one, minus ``--force`` (which would
    wipe the interrupted stage instead of resuming it)."""
    args = [a for a in (sys.argv if argv is None else argv) if a != "--force"]
    return shlex.join(["python", *args])


def interrupt_message(exc: BaseException) -> str:
    """The one line printed when a run is interrupted."""
    stage, saved = getattr(exc, "stage", None), getattr(exc, "saved", None)
    where = f"interrupted during stage {stage} ({saved})" if stage else "interrupted"
    return f"{where}; to resume, rerun: {resume_command()}"


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
    """Run a job body: user errors → message on stderr + exit 2; Ctrl-C → 130, SIGTERM → 143.

    SIGTERM (``timeout``, ``ray job stop``, a preempted node) unwinds like Ctrl-C, so the
    local Ray this process started is shut down and the next run resumes cleanly; either
    prints ONE line: the stage, what it saved, and the command that resumes.
    """
    install_interrupt_handlers()
    try:
        return fn()
    except KeyboardInterrupt as e:
        print(interrupt_message(e), file=sys.stderr, flush=True)
        return 128 + int(getattr(e, "signum", signal.SIGINT))
    except Exception as exc:
        err = user_error(exc)
        if err is None:
            raise
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2


def one_line(message: str, limit: int = 2000) -> str:
    """A user error as one stderr line (YAML parser messages span several), capped: the
    values it quotes are already cut (config.short_repr); this is the last guard."""
    text = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


# ------------------------------------------------------------------- job arguments
def add_run_arguments(parser, default_stages: str | None = None) -> None:
    """The arguments every ``jobs/*.py`` shares (argparse parser)."""
    parser.add_argument("--config", default="tiny", help="preset name or YAML path (default: tiny)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. --set gnn.epochs=50 (repeatable)",
    )
    parser.add_argument(
        "--stages",
        default=default_stages,
        help=f"comma list of {','.join(ALL_STAGE_NAMES)} (default: {default_stages or 'config'})",
    )
    parser.add_argument("--run-dir", help="run directory: local path or pyarrow.fs URI")
    parser.add_argument(
        "--data",
        metavar="FILE",
        help="your own user_id,prompt,chosen,rejected[,split] file (sets data.source=own)",
    )
    parser.add_argument("--force", action="store_true", help="rerun the named stages")
    parser.add_argument(
        "--seeds",
        metavar="S,S,...",
        help="one complete run per seed into RUN/seed-<s>/ (every stage's seed), then "
        "RUN/report.{json,md} with every cell as mean ± sd, e.g. --seeds 0,1,2",
    )


def config_from_args(args) -> Config:
    """Preset/YAML + ``--data`` + ``--set`` overrides + ``--run-dir`` → validated Config."""
    from copl_ray.config import load_config, resolve_paths

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
        cfg.explicit = cfg.explicit | {"run.dir"}
    elif args.data and not any(o.startswith("run.dir=") for o in args.overrides):
        cfg.run.dir = str(Path("runs") / Path(args.data).stem)  # never clobber the preset's run
    return resolve_paths(cfg)  # the run dirs set here become absolute too


def run_job(args) -> int:
    """Body of every ``jobs/*.py``: config from args, run, print report.json last."""

    def body() -> int:
        if getattr(args, "seeds", None) is not None:
            return run_seeds_job(args)
        cfg = config_from_args(args)
        report = run_pipeline(cfg, args.stages, force=args.force)
        print(report_location(cfg, report), flush=True)
        return 0

    return main_with_errors(body)


# --------------------------------------------------------------------------- seeds
def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]``: at least two distinct integers ≥ 0 (a mean ± sd needs two)."""
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise PipelineError(f"--seeds {text!r}: expected a comma list of integers >= 0, e.g. 0,1,2")
    seeds = [int(p) for p in parts]
    if len(set(seeds)) != len(seeds) or len(seeds) < 2:
        raise PipelineError(f"--seeds {text!r}: give at least two distinct seeds, e.g. 0,1,2")
    return seeds


def seed_configs(args, seeds: list[int]) -> tuple[Config, dict[int, Config]]:
    """The run's config and one per seed (every ``seed`` field set, run dir ``RUN/seed-<s>``).

    A ``--set`` of a seed field beside ``--seeds`` is refused: which seed would win is
    ambiguous. Every config is built (and validated) before any stage runs.
    """
    from copl_ray.config import seed_paths

    fields = set(seed_paths())
    clash = [o for o in args.overrides if o.split("=", 1)[0].strip() in fields]
    if clash:
        raise PipelineError(
            f"--set {clash[0]}: ambiguous beside --seeds, which sets {', '.join(sorted(fields))} "
            "per seed; drop one of the two"
        )
    base = config_from_args(args)
    root = base.run.dir
    per_seed = {}
    for seed in seeds:
        sub = f"seed-{seed}"
        one = argparse.Namespace(
            **{
                **vars(args),
                "overrides": [*args.overrides, *(f"{f}={seed}" for f in sorted(fields))],
                "run_dir": fsutil.uri_join(root, sub)
                if fsutil.is_uri(root)
                else str(Path(root) / sub),
            }
        )
        per_seed[seed] = config_from_args(one)
    return base, per_seed


def run_seeds_job(args) -> int:
    """``--seeds``: one normal run per seed (each with its own lock, resume and report),
    then the aggregate report (:mod:`copl_ray.report_seeds`) in the run directory, which
    this holds locked throughout. A rerun reuses the finished seeds' stages."""
    from copl_ray.report_seeds import build_seeds_report, gap_lines

    seeds = parse_seeds(args.seeds)
    base, configs = seed_configs(args, seeds)
    root = base.run.dir
    with run_dir_lock(root) as local:
        reports = {}
        for i, (seed, cfg) in enumerate(configs.items(), 1):
            log(f"seed {seed} ({i}/{len(seeds)}): {cfg.run.dir}")
            reports[seed] = run_pipeline(cfg, args.stages, force=args.force)
        path = build_seeds_report(local, root, {s: f"seed-{s}" for s in seeds}, reports)
        for line in gap_lines(json.loads(path.read_text())):
            log(line)
        log(f"seeds report written: {local / 'report.md'}")
        if fsutil.is_uri(root):
            fsutil.push(local, root)
    print(report_location(base, path), flush=True)
    return 0
