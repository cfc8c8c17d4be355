"""Shared fixtures: ONE Ray instance per test session, ONE tiny end-to-end run.

Ray: ``ray_session`` starts a local Ray with 2 logical CPUs once; every test that
needs Ray depends on it (never call ray.init in a test).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from copl_ray.env import setup_env

setup_env()

REPO = Path(__file__).resolve().parents[1]
SHARED_UKP = REPO.parent / "shared" / "data" / "ukpconvarg1"


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=int(os.environ.get("COPL_TEST_CPUS", "2")),
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": setup_env()},
        )
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


@pytest.fixture(scope="session")
def ukp_path() -> Path:
    if not (SHARED_UKP / "judgments.jsonl.gz").exists():
        pytest.skip(
            f"UKPConvArg1 not found at {SHARED_UKP} (it ships in ../shared beside the checkout)"
        )
    return SHARED_UKP
