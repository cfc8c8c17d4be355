# TEMPORARY dev override (removed before hand-off)
import pytest


@pytest.fixture(scope="session")
def tiny_run():
    from copl_ray.artifacts import RunDir

    return RunDir("/tmp/serve_dev/tiny")
