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
# Under load a raylet can take longer than the default to register.
os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")

REPO = Path(__file__).resolve().parents[1]
SHARED_UKP = REPO.parent / "shared" / "data" / "ukpconvarg1"


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from copl_ray.env import RAY_WORKER_SETUP_HOOK
    from copl_ray.pipeline import local_ray_options

    if not ray.is_initialized():
        ray.init(
            address="local",  # never attach to another Ray running on this machine
            num_cpus=int(os.environ.get("COPL_TEST_CPUS", "2")),
            log_to_driver=False,
            # the product's local-Ray settings: workers pin this Ray's address, the
            # dashboard serves the State API Ray Train's placement-group cleaner polls
            runtime_env={
                "env_vars": setup_env(),
                "worker_process_setup_hook": RAY_WORKER_SETUP_HOOK,
            },
            **local_ray_options(),
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


@pytest.fixture(scope="session")
def tiny_run(ray_session, tmp_path_factory):
    """The full tiny pipeline (data → gnn → reward → eval → report), run ONCE per session.

    Returns the :class:`copl_ray.artifacts.RunDir`; reuses the session's Ray. Set
    ``COPL_TINY_RUN_DIR`` to reuse an existing run directory across sessions (stages whose
    markers match the config are reused, so a finished run costs nothing) and
    ``COPL_TINY_OVERRIDES`` ("a.b=c;d.e=f") to shrink the run while developing; tests read
    their expectations from the run's own config.yaml.
    """
    from copl_ray.artifacts import RunDir
    from copl_ray.config import load_config
    from copl_ray.pipeline import run_pipeline

    root = os.environ.get("COPL_TINY_RUN_DIR") or str(tmp_path_factory.mktemp("tiny_run"))
    extra = [o for o in os.environ.get("COPL_TINY_OVERRIDES", "").split(";") if o.strip()]
    cfg = load_config("tiny", [*extra, f"run.dir={root}"])
    run_pipeline(cfg)
    return RunDir(root)
