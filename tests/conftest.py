"""Shared fixtures: ONE Ray instance per test session, ONE tiny end-to-end run.

Ray: ``ray_session`` starts a local Ray with 2 logical CPUs once; every test that
needs Ray depends on it (never call ray.init in a test).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from copl_ray.artifacts import RunDir
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


@dataclass
class TinyJob:
    """README command (1) as a user runs it: where, what it printed, how it ended."""

    repo: Path  # the copy of the repository it ran in (its cwd)
    run: RunDir  # <repo>/runs/tiny: the default run directory
    returncode: int
    stdout: str
    stderr: str

    @property
    def console(self) -> list[str]:
        return (self.stdout + self.stderr).splitlines()


def copy_repository(dest: Path) -> Path:
    """The repository's files as a fresh clone has them (no venv, runs, caches or .git)."""
    ignore = shutil.ignore_patterns(
        ".git",
        ".venv",
        "runs",
        "__pycache__",
        "*.egg-info",
        ".pytest_cache",
        ".ruff_cache",
        "build",
        ".torch_extensions",
        ".whl",
        "gpu-logs",
    )
    shutil.copytree(REPO, dest, ignore=ignore)
    return dest


@pytest.fixture(scope="session")
def tiny_job(tmp_path_factory) -> TinyJob:
    """``python jobs/full.py`` — README command (1) verbatim, ONCE per session.

    It runs as a subprocess in a copy of the repository (cwd = the copy, default run
    directory ``runs/tiny``, no arguments), so a relative path that leaks into a Ray worker
    or a missing file fails here as it fails for a new user. It starts its own local Ray
    beside the session's (``ray_session``), as a user's run beside a ``serve run`` does.
    ``COPL_TINY_RUN_DIR`` reuses a run directory across sessions while developing (stages
    whose markers match are reused) and ``COPL_TINY_OVERRIDES`` ("a.b=c;d.e=f") shrinks
    it; neither is set in CI. Tests read their expectations from the run's config.yaml.
    """
    repo = copy_repository(tmp_path_factory.mktemp("fresh_clone") / "copl-ray")
    cmd = [sys.executable, "jobs/full.py"]
    for item in os.environ.get("COPL_TINY_OVERRIDES", "").split(";"):
        if item.strip():
            cmd += ["--set", item.strip()]
    run_dir = repo / "runs" / "tiny"
    if os.environ.get("COPL_TINY_RUN_DIR"):
        run_dir = Path(os.environ["COPL_TINY_RUN_DIR"]).resolve()
        cmd += ["--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONPATH": str(repo)}  # the copy's package, as a clone has it
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=3600)
    (repo / "console.log").write_text(proc.stdout + proc.stderr)
    job = TinyJob(repo, RunDir(run_dir), proc.returncode, proc.stdout, proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join(job.console[-40:])
        pytest.fail(f"README command (1) failed with exit {proc.returncode}:\n{tail}")
    return job


@pytest.fixture(scope="session")
def tiny_run(tiny_job) -> RunDir:
    """The run directory of README command (1) (``tiny_job``)."""
    return tiny_job.run


def _test_labels(data_dir: Path, seen: bool):
    """The run's test labels of seen (or unseen) users, with the user's group and the
    pair's controversial flag: the rows an accuracy record of that split counts."""
    import pandas as pd

    ann = pd.read_parquet(data_dir / "annotations.parquet")
    users = pd.read_parquet(data_dir / "users.parquet")
    pairs = pd.read_parquet(data_dir / "pairs.parquet", columns=["pair_id", "controversial"])
    test = ann[ann["split"] == "test"].merge(users, on="user_id").merge(pairs, on="pair_id")
    return test[test["seen"] == seen]


def check_accuracy_record(record: dict, data_dir: Path, seen: bool, what: object = "") -> None:
    """An accuracy record (``eval.metrics.accuracy_summary``) is backed by the run's data.

    Its ``n_pairs`` / ``n_users`` are the split's test labels / users in ``data_dir``, and
    each accuracy is a count of correct pairs over them: ``overall * n_pairs`` is a whole
    number ``c``, and the per-group and common/controversial accuracies, weighted by their
    pair counts read from the data, add up to the same ``c``. A value outside [0, 1], a
    mean over users instead of pairs, or a subset mixed up fails one of these. ``what``
    names the record in a failure.
    """
    test = _test_labels(data_dir, seen)
    n = len(test)
    counts = (n, test["user_id"].nunique())
    assert (record["n_pairs"], record["n_users"]) == counts, (what, record)
    correct = record["overall"] * n
    assert correct == pytest.approx(round(correct), abs=1e-6), (what, record)
    by_group = test["group"].value_counts()  # empty where the source has no groups
    assert set(record["by_group"]) == set(by_group.index), (what, record)
    by_group_correct = sum(record["by_group"][g] * k for g, k in by_group.items())
    assert not len(by_group) or by_group_correct == pytest.approx(correct), (what, record)
    split = test["controversial"].astype(bool).value_counts()
    parts = [(record["common"], split.get(False, 0)), (record["controversial"], split.get(True, 0))]
    assert sum(a * k for a, k in parts if k) == pytest.approx(correct), (what, record)


def check_gnn_heldout(run_root: Path, n_val_labels: int) -> None:
    """The GNN's held-out accuracy in ``report.json`` is its metrics.json value, over the val
    labels whose responses are graph nodes (the others counted as skipped): ``acc * n`` is a
    whole number (float32 accuracy: 1e-3 absolute on a few hundred pairs)."""
    import json

    run = RunDir(run_root)
    rep = json.loads(run.report_json.read_text())["gnn"]
    m = json.loads((run.gnn / "metrics.json").read_text())
    assert rep["heldout_accuracy"] == m["heldout_accuracy"] == m["val_accuracy"]
    assert m["n_heldout_pairs"] == m["n_val_pairs"] == n_val_labels - m["n_val_skipped"]
    correct = m["heldout_accuracy"] * m["n_heldout_pairs"]
    assert correct == pytest.approx(round(correct), abs=1e-3), m


@pytest.fixture(scope="session")
def accuracy_record_check():
    """:func:`check_accuracy_record` (a fixture so that tests in any folder reach it)."""
    return check_accuracy_record


@pytest.fixture(scope="session")
def gnn_heldout_check():
    """:func:`check_gnn_heldout` (a fixture so that tests in any folder reach it)."""
    return check_gnn_heldout
