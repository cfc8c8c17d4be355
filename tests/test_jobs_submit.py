"""``ray start --head`` + ``ray job submit --working-dir . -- python jobs/full.py``.

A separate Ray cluster (own ports, own temp dir so no other ``ray.init()`` on this
machine attaches to it) is started in its own process group and torn down by killing
exactly that group (``ray stop`` would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
TINY_ARGS = [
    "--set",
    "data.n_users=40",
    "--set",
    "data.n_unseen_users=4",
    "--set",
    "data.synthetic.n_prompts=60",
    "--set",
    "gnn.epochs=5",
]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("RAY_ADDRESS", None)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the cluster's process group (ours, by id), SIGKILL what is left."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.5)


@pytest.fixture
def ray_cluster():
    """A 2-CPU head node with the job server; yields the dashboard (job API) address."""
    port, dash, agent, client = _free_ports(4)
    temp = tempfile.mkdtemp(prefix="crj", dir="/tmp")  # short: unix socket paths ≤ 107 chars
    log = open(Path(temp) / "head.log", "w")  # noqa: SIM115 - closed in teardown
    cmd = [
        RAY,
        "start",
        "--head",
        "--block",
        "--num-cpus",
        "2",
        "--port",
        str(port),
        "--node-ip-address",
        "127.0.0.1",
        "--include-dashboard",
        "true",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dash),
        "--dashboard-agent-listen-port",
        str(agent),
        "--ray-client-server-port",
        str(client),
        "--temp-dir",
        temp,
        "--disable-usage-stats",
    ]
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:  # the job API answers once head, dashboard and agent are up
            r = subprocess.run(
                [RAY, "job", "list", "--address", address],
                capture_output=True,
                text=True,
                env=_env(),
                timeout=60,
            )
            if r.returncode == 0:
                break
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"ray head did not come up:\n{(Path(temp) / 'head.log').read_text()}")
            time.sleep(2)
        yield address, Path(temp)
    finally:
        _kill_group(proc)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_data_and_gnn(ray_cluster, tmp_path, gnn_heldout_check):
    address, temp = ray_cluster
    run_dir = tmp_path / "run"
    cmd = [
        RAY,
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        ".",
        "--",
        "python",
        "jobs/full.py",
        "--stages",
        "data,gnn",
        "--run-dir",
        str(run_dir),
        *TINY_ARGS,
    ]
    deadline = time.time() + 60
    while True:  # the agent may register a few seconds after the job API answers
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_env(), timeout=600)
        if "No available agent" not in r.stdout + r.stderr or time.time() > deadline:
            break
        time.sleep(3)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "succeeded" in out, out[-3000:]
    # the job's own last line is the report path, and the report shows both stages ran
    report_path = run_dir / "report.json"
    assert str(report_path) in out
    rep = json.loads(report_path.read_text())
    assert rep["executed"] == ["data", "gnn"]
    assert rep["data"]["n_users_seen"] == 40
    gnn_heldout_check(run_dir, rep["data"]["n_annotations"]["val"])
    assert (run_dir / "gnn" / "user_embeddings.parquet").exists()
    assert "connecting to Ray at" in out  # it joined the cluster instead of starting one
