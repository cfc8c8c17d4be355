"""Keep Ray's own chatter out of the run log so the stages' progress lines stay readable.

A run prints its progress itself (stage, epoch/step, loss, val acc, ETA). Measured on the
tiny and UKP runs, Ray 2.60 added per report and per second:

- Ray Data per-operator progress bars / status lines from every training run's
  ``SplitCoordinator`` (hundreds of lines per stage) -> ``RAY_DATA_DISABLE_PROGRESS_BARS``;
- Train V2 routing a worker's ``print`` through a logger AND the original stdout, so every
  progress line came twice -> ``RAY_TRAIN_ENABLE_PRINT_PATCH=0``;
- "Reporting training result N: TrainingReport(...)" per report and rank at INFO: Train
  V2 logs it under a logger named by the *file path* (``getLogger(__file__)``), which
  ``RunConfig(logging_config=LoggingConfig("WARNING"))`` does not reach, so the worker
  raises that one logger to WARNING (:func:`quiet_train_worker`);
- after a worker crash, Ray Train's controller logs "Graceful shutdown of backend failed.
  This is expected if one of the workers has crashed." as a WARNING with the ~20-line
  traceback of the dead worker's ``ActorDiedError``: the failure is already reported by
  Ray's one-line "A worker died" notice and the restarted worker's recovery line
  (:mod:`copl_ray.recovery`), so that one logger, which logs nothing else, drops records
  below ERROR in every worker process (:func:`quiet_expected_failure_warning`; a logger
  filter, because Ray Train's ``dictConfig`` resets the levels of ``ray.train.*`` loggers).

Warnings and errors are never hidden.
"""

from __future__ import annotations

import logging

QUIET_RAY_ENV = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
TRAIN_LOG_LEVEL = "WARNING"  # ray.train's own INFO lines (worker group start, checkpoints)


# Ray Data loggers whose INFO/WARNING lines are about the executor itself, printed on the
# console of whichever process runs a dataset (each training run's SplitCoordinator actor):
# "Progress bars disabled ..." (we disable them on purpose: the stages print their own
# progress) and "Dataset ... execution finished in N seconds", once per dataset and model.
RAY_DATA_EXECUTOR_LOGGERS = {
    "ray.data._internal.progress": logging.ERROR,
    "ray.data._internal.execution.streaming_executor": logging.WARNING,
}


def quiet_ray_data_loggers() -> None:
    """Set the levels of :data:`RAY_DATA_EXECUTOR_LOGGERS` in this process (no Ray Data
    import: Ray Data's own logging setup configures only its root ``ray.data`` logger, so
    these levels survive it). Runs in the driver and in every Ray worker (env.py hook)."""
    for name, level in RAY_DATA_EXECUTOR_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def quiet_ray_data() -> None:
    """No Ray Data progress bars or per-execution banners for datasets made in this process."""
    from ray.data import DataContext

    quiet_ray_data_loggers()

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False


def quiet_train_worker() -> None:
    """Call first in a Ray Train worker loop: drop the per-report INFO line (see above)."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray layout: nothing to quieten
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


BACKEND_SETUP_LOGGER = "ray.train.v2._internal.callbacks.backend_setup"


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def quiet_expected_failure_warning() -> None:
    """Drop Ray Train's "Graceful shutdown of backend failed ... expected" traceback (above)."""
    logger = logging.getLogger(BACKEND_SETUP_LOGGER)
    if _errors_only not in logger.filters:
        logger.addFilter(_errors_only)
