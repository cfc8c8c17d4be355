"""copl_ray/raylog.py without a running Ray: the env switches, the logger levels and the
filter that drops Ray Train's expected-failure warning (real ``logging`` records)."""

from __future__ import annotations

import logging

import pytest

from copl_ray.raylog import (
    BACKEND_SETUP_LOGGER,
    QUIET_RAY_ENV,
    RAY_DATA_EXECUTOR_LOGGERS,
    quiet_expected_failure_warning,
    quiet_ray_data,
    quiet_ray_data_loggers,
)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_quiet_env_turns_progress_bars_and_print_patch_off() -> None:
    assert QUIET_RAY_ENV == {
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    }


def test_ray_data_executor_loggers_get_their_levels() -> None:
    for name in RAY_DATA_EXECUTOR_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    quiet_ray_data_loggers()
    assert logging.getLogger("ray.data._internal.progress").level == logging.ERROR
    streaming = logging.getLogger("ray.data._internal.execution.streaming_executor")
    assert streaming.level == logging.WARNING
    assert not streaming.isEnabledFor(logging.INFO) and streaming.isEnabledFor(logging.WARNING)


def test_quiet_ray_data_switches_the_context_off() -> None:
    from ray.data import DataContext

    quiet_ray_data()
    ctx = DataContext.get_current()
    assert ctx.enable_progress_bars is False
    assert ctx.print_on_execution_start is False and ctx.verbose_stats_logs is False


@pytest.fixture
def backend_logger():
    logger = logging.getLogger(BACKEND_SETUP_LOGGER)
    saved = (list(logger.filters), list(logger.handlers), logger.level, logger.propagate)
    logger.filters.clear()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    sink = _Collect()
    logger.addHandler(sink)
    yield logger, sink
    logger.filters[:], logger.handlers[:], logger.level, logger.propagate = saved
    logger.setLevel(saved[2])


def test_expected_failure_warning_dropped_errors_kept(backend_logger) -> None:
    logger, sink = backend_logger
    logger.warning("before the filter")
    quiet_expected_failure_warning()
    quiet_expected_failure_warning()  # idempotent: one filter, however often the hook runs
    assert len(logger.filters) == 1
    logger.info("worker group started")
    logger.warning("Graceful shutdown of backend failed. This is expected ...")
    logger.error("backend setup failed")
    logger.critical("controller gone")
    assert sink.messages == ["before the filter", "backend setup failed", "controller gone"]


def test_filter_survives_a_level_reset(backend_logger) -> None:
    """Ray Train's dictConfig resets ray.train.* levels: the drop must not depend on them."""
    logger, sink = backend_logger
    quiet_expected_failure_warning()
    logger.setLevel(logging.NOTSET)
    logger.setLevel(logging.DEBUG)
    logger.warning("Graceful shutdown of backend failed.")
    logger.error("kept")
    assert sink.messages == ["kept"]
