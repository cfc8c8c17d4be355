"""``python jobs/*.py`` as a user runs them: report path last, clear errors, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "--set",
    "data.n_users=40",
    "--set",
    "data.n_unseen_users=4",
    "--set",
    "data.synthetic.n_prompts=60",
]


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_full_py_data_stage_prints_report_path_last(tmp_path):
    """A subprocess that starts its own local Ray; the last stdout line is report.json."""
    r = _run("jobs/full.py", "--stages", "data", "--run-dir", str(tmp_path / "run"), *SMALL)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last == str((tmp_path / "run" / "report.json").resolve())
    rep = json.loads(Path(last).read_text())
    assert rep["executed"] == ["data"] and rep["data"]["n_users_seen"] == 40
    assert "stage 1/1 [data] running" in r.stdout
    assert (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "gnn.epochs=many"], "gnn.epochs: expected int, got 'many'"),
        (["--set", "gnn.epoch=3"], "gnn.epoch: unknown key"),
        (["--config", "no-such-preset"], "no such file or preset"),
        (["--stages", "data,trian"], "unknown stage(s) trian"),
        (["--data", "/nonexistent/prefs.csv"], "--data /nonexistent/prefs.csv: no such file"),
    ],
)
def test_bad_config_exits_2_without_traceback(tmp_path, args, message):
    r = _run("jobs/full.py", "--run-dir", str(tmp_path), *args, timeout=120)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def test_bad_own_data_file_names_the_row_and_exits_2(tmp_path):
    bad = tmp_path / "prefs.csv"
    bad.write_text("user_id,prompt,chosen,rejectd\nu1,hi,a,b\n")  # misspelt column
    r = _run(
        "jobs/full.py",
        "--data",
        str(bad),
        "--stages",
        "data",
        "--run-dir",
        str(tmp_path / "run"),
        timeout=300,
    )
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "prefs.csv" in r.stderr and "rejected" in r.stderr and "Traceback" not in r.stderr


def test_stage_jobs_share_the_arguments():
    for job in ("gnn", "reward", "eval", "full"):
        r = _run(f"jobs/{job}.py", "--help", timeout=60)
        assert r.returncode == 0
        for flag in ("--config", "--set", "--stages", "--run-dir", "--data", "--force"):
            assert flag in r.stdout, (job, flag)


def test_own_data_file_runs_into_its_own_run_dir(tmp_path):
    """``--data FILE`` = data.source=own + data.path=FILE; run dir defaults to runs/<stem>."""
    rows = ["user_id,prompt,chosen,rejected"]
    for u in range(12):
        for p in range(6):  # users of one half prefer the long answer, the others the short
            long, short = f"a long detailed answer {p}", f"short {p}"
            chosen, rejected = (long, short) if u % 2 else (short, long)
            rows.append(f"user{u},question {p}?,{chosen},{rejected}")
    prefs = tmp_path / "my_prefs.csv"
    prefs.write_text("\n".join(rows) + "\n")
    r = _run(
        "jobs/full.py",
        "--data",
        str(prefs),
        "--stages",
        "data",
        "--set",
        "data.n_unseen_users=2",
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rep = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    assert rep["data"]["source"] == "own"
    assert rep["data"]["n_users_seen"] + rep["data"]["n_users_unseen"] == 12
    assert rep["config"]["data"]["path"] == str(prefs.resolve())

    import argparse

    from copl_ray.pipeline import add_run_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--data", str(prefs)]))
    # never the preset's runs/tiny; absolute (Ray workers do not share the driver's cwd)
    assert cfg.run.dir == str(Path.cwd() / "runs" / "my_prefs")
