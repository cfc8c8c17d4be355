"""Shared fixtures of the data tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest


@pytest.fixture(scope="session")
def data_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``python -m copl_ray.data build ARGS...`` in a fresh interpreter.

    Returns the finished process (``returncode``, text ``stdout``/``stderr``); a failing
    exit is left to the test to assert on (the CLI's bad-input path is under test too).
    """

    def build(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "copl_ray.data", "build", *args],
            capture_output=True,
            text=True,
            check=False,
        )

    return build
