"""Process environment every copl-ray entry point and Ray worker sets first.

CPU and GPU runs differ in config, not code: DeepSpeed picks its accelerator from
``DS_ACCELERATOR`` (cpu when no CUDA device is visible), nothing reaches a model hub,
and compiled DeepSpeed ops are cached inside the workspace.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from pathlib import Path


def _environment_tag() -> str:
    """The Python environment of this process (its prefix), as a short folder name. An op
    built against one environment's torch is stale in another, and torch rebuilds it on
    every switch: two environments sharing one folder rebuild each other's DeepSpeed ops
    at every run and collide on the build lock."""
    return hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]


# where torch JIT-builds extensions (DeepSpeed's CPU ops): one folder per Python
# environment, not the user's global cache
TORCH_EXTENSIONS_DIR = Path.home() / ".cache" / "copl_ray" / "torch_extensions" / _environment_tag()


def setup_env() -> dict[str, str]:
    """Set defaults (never overriding the user's) and return them for Ray runtime_env."""
    env: dict[str, str] = {}
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch always importable in practice
        has_cuda = False
    defaults = {
        "HF_HUB_OFFLINE": "1" if not os.environ.get("COPL_ALLOW_HUB") else "0",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_AUTH_MODE": "disabled",
        "TORCH_EXTENSIONS_DIR": str(TORCH_EXTENSIONS_DIR),
        "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
        # Serve kills its HTTP proxy if not ready in 5 s; a busy 2-core box needs longer.
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    }
    if not has_cuda:
        defaults["DS_ACCELERATOR"] = "cpu"
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
        env[k] = os.environ[k]
    clear_stale_build_locks()
    threading.excepthook = _thread_error_unless_ray_data_shutdown
    return env


# Ray runtime_env ``worker_process_setup_hook`` of every copl-ray job (:func:`ray_worker_setup`).
RAY_WORKER_SETUP_HOOK = "copl_ray.env.ray_worker_setup"


def ray_worker_setup() -> None:
    """Runs first in every Ray worker process of a copl-ray job (tasks, actors, Train
    workers and controllers, Ray's own helper actors): pin the job's Ray address, quiet
    Ray Train's expected-failure warning and Ray Data's executor chatter (:mod:`copl_ray.raylog`)."""
    from copl_ray.raylog import quiet_expected_failure_warning, quiet_ray_data_loggers

    pin_ray_address()
    quiet_expected_failure_warning()
    quiet_ray_data_loggers()
    sys.unraisablehook = _unraisable_unless_exit
    threading.excepthook = _thread_error_unless_ray_data_shutdown


def _unraisable_unless_exit(unraisable) -> None:
    """Ray stops a worker process with SIGTERM, whose handler raises ``SystemExit`` in
    whatever frame runs; when that is a finaliser (Ray Data's split coordinators of a
    Train attempt that failed and restarted, mid-iteration) Python prints "Exception
    ignored in ... __del__" with a traceback of the signal itself. The process is exiting
    as asked: nothing to report. Every other unraisable error is printed as usual."""
    if isinstance(unraisable.exc_value, SystemExit):
        return
    sys.__unraisablehook__(unraisable)


# ray/data/_internal/dynamic_work_queue.py names it "pool-<n>/completion-signaler"
RAY_DATA_SIGNALER_THREAD = "completion-signaler"


def _thread_error_unless_ray_data_shutdown(args) -> None:
    """Ray Data's dynamic work queue (file listing of a dataset, in the driver and in
    workers) shuts its pool down when the consumer is done; its "completion-signaler"
    thread, still blocked putting the end marker, then gets the queue's own
    ``InterruptedError`` (its interruption protocol) and Python prints "Exception in thread
    completion-signaler" with a traceback, though nothing failed (seen under load at the
    end of a reward model's data pipeline). Exactly that is dropped; every other thread
    error is printed as usual."""
    thread = getattr(args, "thread", None)
    if (
        issubclass(args.exc_type, InterruptedError)
        and thread is not None
        and thread.name.rsplit("/", 1)[-1] == RAY_DATA_SIGNALER_THREAD
    ):
        return
    threading.__excepthook__(args)


def pin_ray_address() -> None:
    """Set ``RAY_ADDRESS`` in a Ray worker process to the cluster it is connected to.

    Ray code that runs inside workers and needs "the" cluster resolves it from
    ``RAY_ADDRESS`` or else auto-detects from the processes on the machine: Ray Train V2's
    placement-group cleaner actor asks the State API that way every second. With a second
    Ray on the machine (a user's ``serve run``, another job) auto-detection fails with
    ``ConnectionError: Found multiple active Ray instances`` (the monitor thread dies) or,
    after a ``ray start``, picks that other cluster, where the controller is "not found",
    and the cleaner removes the live run's placement group. Pinning the worker's own GCS
    address makes every such lookup hit the job's own Ray. Used as the runtime_env
    ``worker_process_setup_hook`` step (runs in each worker once it is connected).
    """
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def clear_stale_build_locks(root: Path | None = None, max_age_s: float = 300.0) -> None:
    """A JIT build killed mid-way leaves ``<ext>/lock`` behind, and torch then waits on it
    forever (every later DeepSpeed init hangs: seen when a run was killed during DeepSpeed's
    first shm-comm op build). Remove a lock older than ``max_age_s`` unless a build is
    still running in its folder: torch runs ninja (and ninja the compiler) with the
    extension's folder as working directory, and on a loaded 2-core box a live build can
    outlast any fixed age (one took 8 minutes; removing its lock crashed it). Called at
    setup and again by each training worker right before DeepSpeed initialises, so a lock
    left while a job was queued is caught too."""
    import time

    if root is None:
        root = Path(os.environ.get("TORCH_EXTENSIONS_DIR", TORCH_EXTENSIONS_DIR))
    if not root.is_dir():
        return
    for lock in list(root.glob("*/lock")) + list(root.glob("*/*/lock")):
        try:
            if time.time() - lock.stat().st_mtime > max_age_s and not _building_in(lock.parent):
                lock.unlink()
        except OSError:
            pass


def _building_in(folder: Path) -> bool:
    """Whether a running process (ninja, the compiler) has ``folder`` as working directory."""
    import psutil

    target = str(folder.resolve())
    for proc in psutil.process_iter(["cwd"]):
        if proc.info.get("cwd") == target:
            return True
    return False
