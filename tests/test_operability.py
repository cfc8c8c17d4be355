"""Operability of ``python jobs/full.py`` as a user meets it, each run a real subprocess.

* the run directory's lock: a second run on it refuses at once (pid@host, exit 2), and a
  run killed with ``kill -9`` leaves no stale lock;
* Ctrl-C (SIGINT to the process group, as a terminal sends it) and SIGTERM during a
  stage: exit 130 / 143 and ONE line naming the stage, what it saved and the command
  that resumes; the same command then resumes;
* a Ray Train worker killed mid-stage (GNN, then a reward model): Ray Train restarts it
  from the last committed checkpoint and the console says so in one line;
* a job that starts its own local Ray beside another Ray on the machine (here one
  started with ``ray start``): no traceback, no ``placement_group_cleaner`` warnings.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.test_jobs_submit import ray_cluster  # noqa: F401 - the one "another Ray" fixture

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "--set",
    "data.n_users=120",
    "--set",
    "data.n_unseen_users=12",
    "--set",
    "gnn.dim=32",
    "--set",
    "gnn.tsne=false",
    "--set",
    "gnn.eval_every=20",
    "--set",
    "gnn.ckpt_every=100",
]
# one small reward model with a checkpoint every 10 of its 40 steps
REWARD = [
    "--set",
    "reward.models=[uniform]",
    "--set",
    "train.max_steps=40",
    "--set",
    "train.ckpt_every=10",
    "--set",
    "train.eval_every=10",
    "--set",
    "train.log_every=10",
]
NOISE = ("Traceback", "Aborted", "ConnectionError", "placement_group_cleaner")


class Job:
    """``python jobs/full.py ARGS`` in its own session (so a signal can go to its group)."""

    def __init__(self, tmp: Path, name: str, args: list[str]):
        self.out, self.err = tmp / f"{name}.out", tmp / f"{name}.err"
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "jobs/full.py", *args],
            cwd=REPO,
            env=env,
            start_new_session=True,
            stdout=self.out.open("w"),
            stderr=self.err.open("w"),
        )

    def console(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def signal(self, sig: int, group: bool = False) -> None:
        """Send ``sig`` (to the whole process group, as a terminal's Ctrl-C does)."""
        self.err_at_signal = len(self.err.read_text())
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def err_after_signal(self) -> list[str]:
        """stderr lines written after :meth:`signal` (Ray Data prints to stderr before)."""
        return self.err.read_text()[self.err_at_signal :].strip().splitlines()

    def wait_for(self, text: str, timeout: float = 300) -> None:
        end = time.time() + timeout
        while text not in self.console():
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.console()}"
            assert time.time() < end, f"no {text!r} after {timeout}s:\n{self.console()}"
            time.sleep(0.2)

    def wait(self, timeout: float = 300) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)


def assert_quiet(console: str) -> None:
    found = [n for n in NOISE if n in console]
    assert not found, f"{found} in the console:\n{console}"


def committed(storage: Path, key: str) -> int:
    """The epoch/step of the latest checkpoint Ray Train registered under ``storage``."""
    best = 0
    for snap in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            metrics = json.loads(snap.read_text())["latest_checkpoint_result"]["metrics"]
        except (ValueError, KeyError, TypeError, OSError):
            continue
        best = max(best, int(metrics.get(key) or 0))
    return best


def kill_train_worker(job: Job) -> int:
    """SIGKILL one Ray Train worker process of the job's own local Ray."""
    workers = [
        p
        for p in psutil.Process(job.proc.pid).children(recursive=True)
        if p.name().startswith("ray::RayTrainWorker")
    ]
    assert workers, "no Ray Train worker found"
    os.kill(workers[0].pid, signal.SIGKILL)
    return workers[0].pid


def test_second_run_on_a_locked_run_dir_refuses_and_kill_9_leaves_no_stale_lock(tmp_path):
    """Two processes on one run dir: the second exits 2 at once naming pid@host; the lock
    dies with its holder (kill -9), so the next run proceeds."""
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom copl_ray.pipeline import run_dir_lock\n"
            f"with run_dir_lock({str(run)!r}):\n    print('held', flush=True)\n    time.sleep(120)",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        second = Job(tmp_path, "second", ["--run-dir", str(run), "--stages", "data", *SMALL])
        assert second.wait(120) == 2
        err = second.err.read_text().strip().splitlines()
        assert len(err) == 1, second.console()
        assert f"pid {holder.pid}@{socket.gethostname()}" in err[0] and "in use" in err[0]
        assert not (run / "data").exists() and "Traceback" not in second.console()
        assert "running" not in second.out.read_text()  # refused before any stage
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs in the holder
        holder.wait()
    after = Job(tmp_path, "after", ["--run-dir", str(run), "--stages", "data", *SMALL])
    assert after.wait(300) == 0, after.console()
    assert (run / "data" / "_SUCCESS").exists()


def test_ctrl_c_and_sigterm_exit_130_143_with_one_line_and_the_same_command_resumes(tmp_path):
    run = tmp_path / "run"
    args = ["--run-dir", str(run), "--stages", "reward", *SMALL, "--set", "gnn.epochs=400", *REWARD]
    first = Job(tmp_path, "first", args)
    first.wait_for("gnn epoch 120/400")  # the epoch-100 checkpoint is committed by then
    # a second run of the same command while the first holds the run dir: refused at once
    second = Job(tmp_path, "second", args)
    assert second.wait(120) == 2, second.console()
    assert f"pid {first.proc.pid}@" in second.err.read_text()
    first.signal(signal.SIGINT, group=True)  # what a terminal's Ctrl-C does
    assert first.wait(120) == 130, first.console()
    lines = first.err_after_signal()
    assert len(lines) == 1, first.console()
    assert (
        lines[0].startswith("interrupted during stage gnn (epoch ")
        and "checkpoint saved" in lines[0]
    )
    assert lines[0].endswith(shlex.join(["python", "jobs/full.py", *args]))
    assert_quiet(first.console())

    again = Job(tmp_path, "again", args)
    again.wait_for("[uniform] step 20/40")  # the step-10 checkpoint is committed by then
    again.signal(signal.SIGTERM)  # timeout, ray job stop, a preempted node
    assert again.wait(120) == 143, again.console()
    lines = again.err_after_signal()
    assert len(lines) == 1 and "interrupted during stage reward (checkpoints saved in" in lines[0]
    assert "uniform step " in lines[0] and "to resume" in lines[0]
    assert_quiet(again.console())
    out = again.out.read_text()
    assert "[gnn] running (resume)" in out and "resumed after epoch 100" in out

    third = Job(tmp_path, "third", args)
    third.wait_for("[uniform] resumed from checkpoint at step")
    assert "[reward] running (resume)" in third.out.read_text()
    third.signal(signal.SIGINT, group=True)
    assert third.wait(120) == 130, third.console()
    assert len(third.err_after_signal()) == 1, third.console()


def test_killed_train_worker_restarts_from_its_last_checkpoint_with_one_line(tmp_path):
    """One run: a GNN worker killed after the epoch-100 checkpoint, then a reward worker
    after the step-10 one; both resume there (not from 0) and the run succeeds."""
    run = tmp_path / "run"
    args = ["--run-dir", str(run), "--stages", "reward", *SMALL, *REWARD]
    args += ["--set", "gnn.epochs=200", "--set", "gnn.eval_every=50", "--set", "train.max_steps=30"]
    job = Job(tmp_path, "job", args)
    gnn_storage, reward_storage = run / "gnn" / "ray", run / "reward" / "_ray"
    end = time.time() + 300
    while committed(gnn_storage, "epoch") < 100:
        assert job.proc.poll() is None and time.time() < end, job.console()
        time.sleep(0.2)
    kill_train_worker(job)
    job.wait_for("worker failure in gnn:")
    while committed(reward_storage, "step") < 10:
        assert job.proc.poll() is None and time.time() < end + 300, job.console()
        time.sleep(0.2)
    kill_train_worker(job)
    assert job.wait(600) == 0, job.console()
    console = job.console()
    assert "worker failure in gnn: restarted from the epoch 100 checkpoint (attempt 2/3)" in console
    assert "worker failure in reward/uniform: restarted from the step 10 checkpoint" in console
    assert console.count("worker failure in") == 2
    assert_quiet(console)
    gnn = json.loads((run / "gnn" / "metrics.json").read_text())
    reward = json.loads((run / "reward" / "uniform" / "metrics.json").read_text())
    assert gnn["resumed_from_epoch"] == 100 and gnn["epochs"] == 200
    assert reward["resumed_from_step"] == 10 and reward["steps"] == 30


@pytest.mark.usefixtures("ray_cluster")
def test_job_starting_its_own_ray_runs_beside_another_ray(tmp_path):
    """``ray_cluster``: a second Ray on this machine with a dashboard, as a user's
    ``ray start --head`` (or ``serve run``) leaves it; torn down after."""
    job = Job(tmp_path, "job", ["--run-dir", str(tmp_path / "run"), "--stages", "gnn", *SMALL])
    assert job.wait(600) == 0, job.console()
    console = job.console()
    assert_quiet(console)
    assert "Found multiple active Ray instances" not in console
    # a quiet run: the pipeline's own lines, the GNN's progress, the report path; no Ray line
    lines = console.strip().splitlines()
    assert all(line.startswith(("[copl-ray ", "gnn")) for line in lines[:-1]), console
    assert json.loads((tmp_path / "run" / "gnn" / "metrics.json").read_text())["epochs"] == 100


def test_interrupt_line_and_exit_code_name_stage_saved_and_resume_command(capsys, monkeypatch):
    from copl_ray.pipeline import Interrupted, main_with_errors

    monkeypatch.setattr(sys, "argv", ["jobs/full.py", "--run-dir", "/r x", "--force"])

    def body() -> int:
        raise Interrupted(signal.SIGTERM, "gnn", "epoch 40 checkpoint saved in /r x/gnn")

    assert main_with_errors(body) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "interrupted during stage gnn (epoch 40 checkpoint saved in /r x/gnn); "
        "to resume, rerun: python jobs/full.py --run-dir '/r x'"
    ]  # --force dropped: it would wipe the interrupted stage instead of resuming it
