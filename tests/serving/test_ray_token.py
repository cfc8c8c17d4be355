"""serve_app/README.md "Ray's auth token" (issue 17 §5.13), reproduced with the commands
it gives: once ``~/.ray/auth_token`` exists (the first local ``serve run`` writes it), a
``ray start --head`` with ``RAY_AUTH_MODE`` unset runs with token authentication, a
``serve`` command that reaches it by address is refused unless ``RAY_AUTH_MODE=token``,
and with it succeeds.

Isolated from any other Ray on the machine: a private ``HOME`` (the token file), a
private ``RAY_TMPDIR`` (``ray_current_cluster``), free ports, and a ``ray start --block``
child that takes its processes down when terminated (never ``ray stop``, which stops
every Ray on the machine).
"""

from __future__ import annotations

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

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def token_cluster(tmp_path):
    """A head node started as the README's second recipe does, with a token file present."""
    short = Path(tempfile.mkdtemp(prefix="rtok", dir="/tmp"))  # Unix socket paths stay short
    env = {**os.environ, "HOME": str(tmp_path), "RAY_TMPDIR": str(short)}
    for key in ("RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    gen = _run([str(BIN / "ray"), "get-auth-token", "--generate"], env)
    assert (tmp_path / ".ray" / "auth_token").is_file(), gen.stdout + gen.stderr
    dash = _free_port()
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--num-cpus=1",
            f"--port={_free_port()}",
            f"--dashboard-port={dash}",
            f"--ray-client-server-port={_free_port()}",
            "--dashboard-host=127.0.0.1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield env, f"http://127.0.0.1:{dash}"
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(short, ignore_errors=True)


def test_address_commands_need_token_mode_after_the_token_file_exists(token_cluster):
    env, dashboard = token_cluster
    status = [str(BIN / "serve"), "status", "-a", dashboard]
    token_env = {**env, "RAY_AUTH_MODE": "token"}
    deadline, ok = time.time() + 120, None
    while time.time() < deadline:  # the head node's dashboard comes up
        ok = _run(status, token_env)
        if ok.returncode == 0:
            break
        time.sleep(2)
    assert ok is not None and ok.returncode == 0, ok.stdout + ok.stderr
    refused = _run(status, env)  # RAY_AUTH_MODE unset, as in a fresh shell
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "RAY_AUTH_MODE" in out, out[-2000:]
